"""The Ray Serve application: a thin FastAPI ingress over the router, in front of model deployments that answer.

The graph of one endpoint, whatever the number of models it serves::

    HTTP, gRPC -> ModelServer (the ingress: HTTP and gRPC in and out, over one Router per served model:
                  auth, admission, feature lookup, canary / shadow routing, alias following, monitor
                  sampling, /feedback)
               -> champion | challenger | shadow   (ModelVersions deployments, one per served role, each
                  with its own replicas and autoscaling, shared by all the models: versions are Serve's
                  multiplexed models, loaded on demand up to serve.max_models_per_replica; @serve.batch
                  runs concurrent requests through each version in one forward pass)

Models are added to a running endpoint and removed from it without a redeploy (``endpoint.py``,
``aiinfra serve deploy`` / ``serve remove``): each replica starts or stops that model's router on its
follower's next step, and the other models' routers are not touched.

With ``serve.champion_in_router`` (the default) the router answers the champion in its own process
and the graph has no champion deployment: for a small model the hop to another replica costs more
than the model (BENCHMARKS.md). The router reaches the model deployments over Serve's gRPC transport
(``serve.model_transport``).

The router resolves aliases through the registry and names the version in every call, so a model
deployment answers with exactly the version the router chose: when an alias moves, the router has
the new version loaded in its deployment (``warm``) before it sends a request there, and requests
in flight finish on the version they started with.

Routes follow the HTTP contract (README.md, "The HTTP API"): Open Inference Protocol v2 health and model
metadata, and ``POST /predict/{name}``. Every error is JSON, ``{"error": message}``, with the
status of its AiInfraError (``http.py``); a client's mistake is never a 500, and overload is a 503 at once.

``app_builder`` is what ``serve_configs/*.yaml`` import; ``build_app`` is the Python entry.
"""

# No `from __future__ import annotations` here: Serve rewrites the route signatures and FastAPI
# must see real classes (Request), not strings.

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from fastapi import Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel
from ray import serve

import aiinfra
from aiinfra.cluster_access import require_shared_state
from aiinfra.config import PlatformConfig, load_config
from aiinfra.errors import AiInfraError, InvalidInput, NotFound
from aiinfra.features.client import FeatureStoreClient
from aiinfra.identity.tokens import Principal, TokenStore
from aiinfra.inference.versions import LoadedModels
from aiinfra.monitoring.client import MonitorClient
from aiinfra.registry.client import RegistryClient
from aiinfra.registry.types import parse_ref
from aiinfra.serving.deployments import REPLICA_ENV, DeploymentHandles, ModelVersions
from aiinfra.serving.endpoint import ServedModels
from aiinfra.serving.grpc_oip import grpc_code, infer_body, infer_response, metadata_response, pb, token_of
from aiinfra.serving.http import (
    FeedbackItem,
    FeedbackRequest,
    PredictRequest,
    api,
    json_body,
    parse_body,
    parse_json,
    raw_body,
)
from aiinfra.serving.metrics import record_request
from aiinfra.serving.oip import decode_infer_request, encode_infer_response, tensor_metadata
from aiinfra.serving.oip_binary import (
    HEADER,
    binary_outputs,
    decode_binary_request,
    encode_binary_response,
    split_body,
)
from aiinfra.serving.router import Admission, Router
from aiinfra.storage import open_metadata_db

__all__ = ["ModelServer", "ModelVersions", "app_builder", "build_app"]

log = logging.getLogger("aiinfra.serving")


# -- the ingress -----------------------------------------------------------------------------------------

def _app_name() -> str:
    """The Serve application this replica belongs to: the key of the models added to it (``ServedModels``)."""
    return serve.get_replica_context().app_name


@serve.deployment(ray_actor_options={"num_cpus": 0.1, "runtime_env": {"env_vars": REPLICA_ENV}},
                  max_ongoing_requests=64, max_queued_requests=256)
@serve.ingress(api)
class ModelServer:
    """Serves the models its application declared and those added to it since: HTTP and gRPC in and out,
    one ``Router`` per model for the decisions.

    A background thread, every ``FOLLOW_INTERVAL_S``: starts a router for a model added to the application
    (``ServedModels``, written by ``aiinfra serve deploy``), stops the router of one removed, and calls
    each router's ``refresh`` (the versions its reference, ``NAME@challenger`` and ``NAME@shadow`` name now
    are warmed and swapped in). The routers are one dict, replaced whole (copy-on-write): a request reads
    it once, and a model added or removed never pauses the others.
    """

    FOLLOW_INTERVAL_S = Router.FOLLOW_INTERVAL_S
    RETRY_S = 30.0  # an added model whose router could not start (a deleted version, no signature) is retried

    def __init__(self, config: PlatformConfig, models: tuple[str, ...], champion: Any, challenger: Any,
                 shadow: Any) -> None:
        self.config = config
        pb()  # gRPC requests arrive pickled from Serve's gRPC proxy: their classes' module must be importable here
        require_shared_state(config)  # a replica on one node must not serve from another node's local state
        # create=True: a RayService's router may start before anything made the registry actor.
        self._registry = RegistryClient.on_cluster(config, create=True)
        self._db = open_metadata_db(config.metadata_url, create=False)
        self._tokens = TokenStore(self._db)
        self._added = ServedModels(self._db)
        self._app = _app_name()
        self._declared = {parse_ref(ref).name: ref for ref in models}
        self._deployments = DeploymentHandles(config, {"champion": champion, "challenger": challenger, "shadow": shadow})
        sv = config.serve
        # serve.champion_in_router: the champions answer here, in this process (no hop to a deployment), from
        # one cache of loaded versions over all the models; the router then sheds load itself, past the
        # model deployment's own limits, for all its models together.
        self._local = LoadedModels(self._registry, keep=sv.max_models_per_replica) if champion is None else None
        self._admission = Admission(sv.max_ongoing_requests + sv.max_queued_requests if champion is None else None)
        self._features = FeatureStoreClient.on_cluster(config, create=True)
        # A declared model that cannot be served fails the deployment; an added one is reported (``_sync``).
        self.routers: dict[str, Router] = {name: self._router(ref) for name, ref in self._declared.items()}
        self._problems: dict[str, dict[str, Any]] = {}  # name -> why its router could not start, and when
        self._sync()
        self._stop = threading.Event()
        threading.Thread(target=self._follow, name=f"follow-{self._app}", daemon=True).start()

    def _router(self, ref: str) -> Router:
        name = parse_ref(ref).name
        return Router(
            self.config, ref, registry=self._registry, tokens=self._tokens, models=self._deployments,
            local=None if self._local is None else self._local.of(name), admission=self._admission,
            # The monitor starts on the first rows sampled to it.
            features=self._features, monitor=MonitorClient.for_model(self.config, name),
        )

    def _sync(self) -> None:
        """Start the routers of models added to the application, stop those of models removed (never raises)."""
        try:
            wanted = {**self._added.of(self._app), **self._declared}  # a declared model is never replaced
        except Exception:  # noqa: BLE001 - the metadata DB away for a moment: keep serving what we have
            log.exception("could not read the models added to %s; serving %s", self._app, sorted(self.routers))
            return
        now = time.monotonic()
        for name, ref in wanted.items():
            current = self.routers.get(name)
            if current is not None and current.model_ref == ref:
                continue
            problem = self._problems.get(name)
            if problem is not None and problem["ref"] == ref and now < problem["retry_at"]:
                continue
            try:
                router = self._router(ref)
            except Exception as e:  # noqa: BLE001 - one model that cannot start must not stop the others
                message = e.message if isinstance(e, AiInfraError) else f"{type(e).__name__}: {e}"
                self._problems[name] = {"ref": ref, "error": message, "retry_at": now + self.RETRY_S}
                log.error("cannot serve %s on %s: %s (retrying every %.0f s)", ref, self._app, message, self.RETRY_S)
                continue
            self._problems.pop(name, None)
            self.routers = {**self.routers, name: router}  # one assignment: requests see the old dict or the new
            log.info("%s: now serving %s%s", self._app, ref, "" if current is None else f" (was {current.model_ref})")
            if current is not None:
                current.close()
        for name in set(self.routers) - set(wanted):
            gone = self.routers[name]
            self.routers = {n: r for n, r in self.routers.items() if n != name}
            gone.close()  # requests in flight on it finish: they hold the router itself
            log.info("%s: stopped serving %s", self._app, gone.model_ref)
        for name in set(self._problems) - set(wanted):
            del self._problems[name]

    def _follow(self) -> None:
        while not self._stop.wait(self.FOLLOW_INTERVAL_S):
            self._sync()
            for router in self.routers.values():
                if router.follows:
                    router.refresh()

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

    def served(self) -> dict[str, Any]:
        """What this application serves (for `aiinfra status`; not an HTTP route): each model's router's
        account, whether the application declared it (else it was added, and may be removed), the models
        added that could not start, with why, and the versions loaded in this replica (least recent first)."""
        return {
            "models": {name: {**router.served(), "declared": name in self._declared}
                       for name, router in sorted(self.routers.items())},
            "problems": {name: {"ref": p["ref"], "error": p["error"]} for name, p in self._problems.items()},
            "loaded": None if self._local is None else [f"{n}@{v}" for n, v in self._local.keys],
        }

    def _router_for(self, name: str, authorization: str | None, action: str) -> tuple[Router, Principal]:
        """The caller may ``action`` on ``name`` and this app serves it (else 401/403, then 404).

        The token first: a caller without one learns nothing of which models are served, and only a name
        found served here tags the request's metrics (``Measure``), so made-up names make no series.
        """
        principal = self._tokens.verify(authorization)
        principal.require(action, model=name)
        router = self.routers.get(name)
        if router is None:
            served = sorted(self.routers)
            # Only a token that may act on any model learns which are served (a scoped one was refused above).
            listed = f"; this endpoint serves {served[:20]}" + (" and more" if len(served) > 20 else "")
            raise NotFound(f"model {name!r} is not served here" + (listed if principal.model is None else ""))
        return router, principal

    def _served(self, name: str, request: Request, *, action: str) -> Router:
        router, request.state.principal = self._router_for(name, request.headers.get("authorization"), action)
        request.state.model = name
        return router

    async def _parsed(self, model: type[BaseModel], what: str, name: str, request: Request, *,
                      action: str) -> tuple[Router, Any]:
        """The caller may ``action`` on this model, and the JSON body is a valid ``model`` (else 4xx)."""
        router = self._served(name, request, action=action)
        return router, parse_body(model, what, await json_body(request, self.config.serve.max_body_bytes))

    def _docs(self) -> None:
        """The docs routes answer only where ``serve.docs`` is set; else as any path without a route (404)."""
        if not self.config.serve.docs:
            raise NotFound("Not Found")

    @api.get("/openapi.json", include_in_schema=False)
    def openapi(self) -> dict[str, Any]:
        self._docs()
        return api.openapi()

    @api.get("/docs", include_in_schema=False)
    def docs(self, request: Request) -> HTMLResponse:
        self._docs()
        return get_swagger_ui_html(openapi_url=request.scope.get("root_path", "") + "/openapi.json", title=api.title)

    @api.get("/redoc", include_in_schema=False)
    def redoc(self, request: Request) -> HTMLResponse:
        self._docs()
        return get_redoc_html(openapi_url=request.scope.get("root_path", "") + "/openapi.json", title=api.title)

    @api.get("/v2/health/live")
    def live(self) -> dict[str, bool]:
        return {"live": True}

    @api.get("/v2/health/ready")
    def ready(self) -> dict[str, bool]:
        return {"ready": True}

    @api.get("/v2/models/{name}")
    def metadata(self, name: str, request: Request) -> dict[str, Any]:
        router = self._served(name, request, action="predict")
        version = router.primary
        sig = version.signature
        return {
            "name": router.name,
            "versions": [str(version.version)],
            "platform": "aiinfra-torch",
            "inputs": [tensor_metadata(f) for f in sig.inputs],
            "outputs": [tensor_metadata(f) for f in sig.outputs],
        }

    @api.get("/v2/models/{name}/ready")
    def model_ready(self, name: str, request: Request) -> dict[str, Any]:
        self._served(name, request, action="predict")  # as the metadata: it says which names are served
        return {"name": name, "ready": True}

    @api.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request) -> Any:
        with self._admission.admitted():
            router = self._served(name, request, action="predict")
            # OIP clients may send JSON without a JSON Content-Type: the body is parsed regardless. With the
            # binary extension the JSON is the first Inference-Header-Content-Length bytes, tensors after it.
            raw = await raw_body(request, self.config.serve.max_body_bytes)
            header_length = request.headers.get(HEADER)
            if header_length is None:
                body = parse_json(raw)
            else:
                head, binary = split_body(raw, header_length)
                body = decode_binary_request(parse_json(head), binary)
            rows, request_id, wanted = decode_infer_request(body, router.primary.signature)
            request_id = request_id or router.request_id(request.headers.get("x-request-id"))
            role, version = router.route(request_id)  # read once: an alias move mid-request does not mix versions
            predictions = await router.answer(role, version, rows)
            request.state.version, request.state.rows = version.version, len(predictions)
            router.answered(request_id, rows, predictions, version, request.state.principal.token_id)
            response = encode_infer_response(predictions, version.signature, model=version.name,
                                             version=version.version, request_id=request_id, wanted=wanted)
            which = binary_outputs(body)
            if not which:
                return response
            content, length = encode_binary_response(response, which)
            return Response(content, media_type="application/octet-stream", headers={HEADER: str(length)})

    # -- OIP v2 over gRPC (grpc_oip.py): Serve's gRPC proxy calls these by the service's method names --------
    def _grpc_served(self, name: str, grpc_context: Any) -> tuple[Router, Principal]:
        """As ``_served``: the token first (from the call's metadata), then the model name."""
        return self._router_for(name, token_of(grpc_context.invocation_metadata()), "predict")

    @staticmethod
    def _grpc_error(grpc_context: Any, error: AiInfraError, empty: Any) -> Any:
        grpc_context.set_code(grpc_code(error))
        grpc_context.set_details(error.message)
        return empty

    def ServerLive(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802 - the protocol's method names
        return pb().ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        return pb().ServerReadyResponse(ready=True)

    def ServerMetadata(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        return pb().ServerMetadataResponse(name="aiinfra", version=aiinfra.__version__, extensions=[])

    def ModelReady(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        try:
            self._grpc_served(request.name, grpc_context)
        except AiInfraError as e:
            return self._grpc_error(grpc_context, e, pb().ModelReadyResponse())
        return pb().ModelReadyResponse(ready=True)

    def ModelMetadata(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        try:
            router, _ = self._grpc_served(request.name, grpc_context)
        except AiInfraError as e:
            return self._grpc_error(grpc_context, e, pb().ModelMetadataResponse())
        version = router.primary
        return metadata_response(router.name, version.version, version.signature, "aiinfra")

    async def ModelInfer(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        """The REST infer route's path, from the same checks to the same monitor and canary hooks; measured as
        the HTTP routes are (route ``grpc:ModelInfer``, the status its HTTP twin would have)."""
        start = time.perf_counter()
        status, model, version_tag, rows_n = 200, "(unknown)", "", 0
        try:
            with self._admission.admitted():
                router, principal = self._grpc_served(request.model_name, grpc_context)
                model = router.name  # only a name found served tags a metric
                rows, request_id, wanted = decode_infer_request(infer_body(request), router.primary.signature)
                request_id = request_id or router.request_id(None)
                role, version = router.route(request_id)
                predictions = await router.answer(role, version, rows)
                version_tag, rows_n = str(version.version), len(predictions)
                router.answered(request_id, rows, predictions, version, principal.token_id)
                return infer_response(encode_infer_response(predictions, version.signature, model=version.name,
                                                            version=version.version, request_id=request_id,
                                                            wanted=wanted))
        except AiInfraError as e:
            status = e.status_code
            return self._grpc_error(grpc_context, e, pb().ModelInferResponse())
        except Exception:
            status = 500
            raise
        finally:
            record_request(model=model, version=version_tag, route="grpc:ModelInfer", status=status,
                           latency_ms=(time.perf_counter() - start) * 1000, rows=rows_n)

    @api.post("/predict/{name}")
    async def predict(self, name: str, request: Request) -> dict[str, Any]:
        with self._admission.admitted():
            router, req = await self._parsed(PredictRequest, "predict request", name, request, action="predict")
            if (req.instances is None) == (req.entity_ids is None):
                raise InvalidInput("send exactly one of 'instances' (feature objects) or 'entity_ids'")
            request_id = router.request_id(request.headers.get("x-request-id"))
            role, version = router.route(request_id)  # read once: an alias move mid-request does not mix versions
            instances = req.instances if req.instances is not None else router.features_for(version, req.entity_ids)
            predictions = await router.answer(role, version, instances)
            request.state.version, request.state.rows = version.version, len(predictions)
            router.answered(request_id, instances, predictions, version, request.state.principal.token_id)
            return {"predictions": predictions, "model": version.name, "version": version.version, "request_id": request_id}

    @api.post("/feedback/{name}")
    async def feedback(self, name: str, request: Request) -> dict[str, Any]:
        """Ground truth for served requests, by the request_id each answer carried."""
        router, req = await self._parsed(FeedbackRequest, "feedback", name, request, action="feedback")
        if (req.items is None) == (req.request_id is None):
            raise InvalidInput("send either 'request_id' with 'label' (or 'labels'), or 'items': a list of those")
        items = req.items or [FeedbackItem.model_validate(req.model_dump(exclude={"items"}, exclude_unset=True))]
        for i, item in enumerate(items):
            if ("label" in item.model_fields_set) == (item.labels is not None):
                raise InvalidInput(f"feedback item {i}: give exactly one of 'label' or 'labels'")
        # The monitor's call blocks: off the event loop, as every other request goes on meanwhile.
        result = await asyncio.to_thread(router.feedback, [it.model_dump(exclude_unset=True) for it in items],
                                         request.state.principal)
        request.state.rows = len(items)
        return result


def build_app(config: PlatformConfig, models: str | Sequence[str] = ()) -> serve.Application:
    """The Serve application serving ``models`` (references, ``NAME@ALIAS`` or ``NAME@VERSION``, one per
    model name), and whatever ``aiinfra serve deploy`` adds to it later (``ServedModels``)."""
    refs = (models,) if isinstance(models, str) else tuple(models)
    names = [parse_ref(ref).name for ref in refs]  # a bad reference fails here, not inside a replica
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidInput(f"an endpoint serves one reference per model; {twice} named more than once")
    require_shared_state(config)  # and a cluster of several nodes on one node's state, too
    sv = config.serve
    if sv.max_replicas < sv.min_replicas:
        raise InvalidInput(f"serve.max_replicas ({sv.max_replicas}) is below serve.min_replicas ({sv.min_replicas})")
    scaling: dict[str, Any] = (
        {"autoscaling_config": {"min_replicas": sv.min_replicas, "max_replicas": sv.max_replicas,
                                "target_ongoing_requests": sv.target_ongoing_requests}}
        if sv.max_replicas > sv.min_replicas else {"num_replicas": sv.min_replicas}
    )
    if sv.model_gpus > 0 and sv.champion_in_router:
        raise InvalidInput("serve.model_gpus needs serve.champion_in_router: false (the router has no GPU: the "
                           "champion must have its own model deployment to run on one)")
    limits: dict[str, Any] = {"max_ongoing_requests": sv.max_ongoing_requests, "max_queued_requests": sv.max_queued_requests}
    if sv.model_gpus > 0:
        limits["ray_actor_options"] = {**ModelVersions.ray_actor_options, "num_gpus": sv.model_gpus}
    # The champion's deployment scales with traffic; the challenger and shadow get a share of it, one replica each.
    # With serve.champion_in_router the router answers the champion itself, and its replicas scale instead.
    # Each serves every model of the endpoint (multiplexed: serve.max_models_per_replica versions loaded).
    champion = None if sv.champion_in_router else ModelVersions.options(name="champion", **limits, **scaling).bind(config)
    challenger = ModelVersions.options(name="challenger", **limits, num_replicas=1).bind(config)
    shadow = ModelVersions.options(name="shadow", **limits, num_replicas=1).bind(config)
    # The router does little per request: it gets a deeper queue than the models behind it.
    # A router that answers the champion does the model's work too: it reserves the model deployment's CPU
    # share, and sheds load itself (a JSON 503 past the model's limits, Router.admitted), so Serve's
    # own limit is set above that, with room for health checks, metadata and feedback.
    cpus = ModelServer.ray_actor_options["num_cpus"] + (
        ModelVersions.ray_actor_options["num_cpus"] if sv.champion_in_router else 0.0)
    # Its queue gets the same headroom: under a burst the proxy assigns requests more slowly than they come
    # (its queue-length probes time out when the CPUs are busy), and past a small queue it would answer
    # the plain-text 503 itself (the integration test's burst met it with a queue of 4).
    headroom = 64 if sv.champion_in_router else 0
    ongoing = sv.max_ongoing_requests + sv.max_queued_requests + headroom if sv.champion_in_router else 4 * sv.max_ongoing_requests
    return ModelServer.options(ray_actor_options={**ModelServer.ray_actor_options, "num_cpus": cpus},
                               max_ongoing_requests=ongoing,
                               max_queued_requests=4 * sv.max_queued_requests + headroom, **scaling).bind(
        config, refs, champion, challenger, shadow)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Entry for Serve config files: ``import_path: aiinfra.serving.app:app_builder``, with ``args`` naming
    what the endpoint serves: ``{model: NAME@ALIAS}``, or ``{models: [NAME@ALIAS, ...]}`` (an empty list:
    only the models ``aiinfra serve deploy`` adds)."""
    if ("model" in args) == ("models" in args):
        raise InvalidInput("serve config args must name what to serve: model: churn@champion, or "
                           "models: [churn@champion, ...]")
    models = args["models"] if "models" in args else [args["model"]]
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise InvalidInput(f"serve config args.models must be a list of references like churn@champion, got {models!r}")
    return build_app(load_config(), models)
