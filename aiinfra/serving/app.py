"""The Ray Serve application: a thin FastAPI ingress over the router, in front of model deployments that answer.

The graph, per served model::

    HTTP -> ModelServer (the ingress: HTTP in and out, over a Router: auth, admission, feature lookup,
            canary / shadow routing, alias following, monitor sampling, /feedback)
         -> champion | challenger | shadow   (ModelVersions deployments, one per served role, each with
            its own replicas and autoscaling; @serve.batch runs concurrent requests through the model
            in one forward pass)

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
import threading
import time
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
from aiinfra.inference.versions import LoadedVersions
from aiinfra.monitoring.client import MonitorClient
from aiinfra.registry.client import RegistryClient
from aiinfra.registry.types import parse_ref
from aiinfra.serving.auth import TokenStore
from aiinfra.serving.deployments import REPLICA_ENV, DeploymentHandles, ModelVersions
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
from aiinfra.serving.router import Router
from aiinfra.storage import open_metadata_db

__all__ = ["ModelServer", "ModelVersions", "app_builder", "build_app"]


# -- the ingress -----------------------------------------------------------------------------------------

@serve.deployment(ray_actor_options={"num_cpus": 0.1, "runtime_env": {"env_vars": REPLICA_ENV}},
                  max_ongoing_requests=64, max_queued_requests=256)
@serve.ingress(api)
class ModelServer:
    """Serves the model a reference names (``churn@champion``): HTTP in and out, the decisions in ``Router``.

    A background thread calls ``Router.refresh`` every ``FOLLOW_INTERVAL_S`` while the reference is an
    alias: the versions it, ``NAME@challenger`` and ``NAME@shadow`` name now are warmed and swapped in.
    """

    FOLLOW_INTERVAL_S = Router.FOLLOW_INTERVAL_S

    def __init__(self, config: PlatformConfig, model_ref: str, champion: Any, challenger: Any, shadow: Any) -> None:
        self.config = config
        pb()  # gRPC requests arrive pickled from Serve's gRPC proxy: their classes' module must be importable here
        require_shared_state(config)  # a replica on one node must not serve from another node's local state
        # create=True: a RayService's router may start before anything made the registry actor.
        registry = RegistryClient.on_cluster(config, create=True)
        name = parse_ref(model_ref).name
        self._db = open_metadata_db(config.metadata_url, create=False)
        self.router = Router(
            config, model_ref, registry=registry, tokens=TokenStore(self._db),
            models=DeploymentHandles(config, {"champion": champion, "challenger": challenger, "shadow": shadow}),
            # serve.champion_in_router: the champion answers here, in this process (no hop to a deployment).
            local=LoadedVersions(registry, name) if champion is None else None,
            # The monitor starts on the first rows sampled to it.
            features=FeatureStoreClient.on_cluster(config, create=True), monitor=MonitorClient.for_model(config, name),
        )
        self._stop = threading.Event()
        if self.router.follows:
            threading.Thread(target=self._follow, name=f"follow-{model_ref}", daemon=True).start()

    def _follow(self) -> None:
        while not self._stop.wait(self.FOLLOW_INTERVAL_S):
            self.router.refresh()

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

    def served(self) -> dict[str, Any]:
        """What this application serves (for `aiinfra status`; not an HTTP route)."""
        return self.router.served()

    def _served(self, name: str, request: Request, *, action: str) -> None:
        """The caller may ``action`` and this app serves ``name`` (else 401/403, then 404).

        The token first: a caller without one learns nothing of which models are served, and only a name
        found served here tags the request's metrics (``Measure``), so made-up names make no series.
        """
        request.state.principal = self.router.authorize(request.headers.get("authorization"), action)
        self.router.check_name(name)
        request.state.model = name

    async def _parsed(self, model: type[BaseModel], what: str, name: str, request: Request, *, action: str) -> Any:
        """The caller may ``action`` on this model, and the JSON body is a valid ``model`` (else 4xx)."""
        self._served(name, request, action=action)
        return parse_body(model, what, await json_body(request, self.config.serve.max_body_bytes))

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
        router = self.router
        self._served(name, request, action="predict")
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
        router = self.router
        with router.admitted():
            self._served(name, request, action="predict")
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
    def _grpc_served(self, name: str, grpc_context: Any) -> Any:
        """As ``_served``: the token first (from the call's metadata), then the model name."""
        principal = self.router.authorize(token_of(grpc_context.invocation_metadata()), "predict")
        self.router.check_name(name)
        return principal

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
            self._grpc_served(request.name, grpc_context)
        except AiInfraError as e:
            return self._grpc_error(grpc_context, e, pb().ModelMetadataResponse())
        version = self.router.primary
        return metadata_response(self.router.name, version.version, version.signature, "aiinfra")

    async def ModelInfer(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        """The REST infer route's path, from the same checks to the same monitor and canary hooks; measured as
        the HTTP routes are (route ``grpc:ModelInfer``, the status its HTTP twin would have)."""
        router, start = self.router, time.perf_counter()
        status, model, version_tag, rows_n = 200, "(unknown)", "", 0
        try:
            with router.admitted():
                principal = self._grpc_served(request.model_name, grpc_context)
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
        router = self.router
        with router.admitted():
            req = await self._parsed(PredictRequest, "predict request", name, request, action="predict")
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
        req = await self._parsed(FeedbackRequest, "feedback", name, request, action="feedback")
        if (req.items is None) == (req.request_id is None):
            raise InvalidInput("send either 'request_id' with 'label' (or 'labels'), or 'items': a list of those")
        items = req.items or [FeedbackItem.model_validate(req.model_dump(exclude={"items"}, exclude_unset=True))]
        for i, item in enumerate(items):
            if ("label" in item.model_fields_set) == (item.labels is not None):
                raise InvalidInput(f"feedback item {i}: give exactly one of 'label' or 'labels'")
        # The monitor's call blocks: off the event loop, as every other request goes on meanwhile.
        result = await asyncio.to_thread(self.router.feedback, [it.model_dump(exclude_unset=True) for it in items],
                                         request.state.principal)
        request.state.rows = len(items)
        return result


def build_app(config: PlatformConfig, model_ref: str) -> serve.Application:
    parse_ref(model_ref)  # a bad reference fails here, not inside a replica
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
    name = parse_ref(model_ref).name
    limits: dict[str, Any] = {"max_ongoing_requests": sv.max_ongoing_requests, "max_queued_requests": sv.max_queued_requests}
    if sv.model_gpus > 0:
        limits["ray_actor_options"] = {**ModelVersions.ray_actor_options, "num_gpus": sv.model_gpus}
    # The champion's deployment scales with traffic; the challenger and shadow get a share of it, one replica each.
    # With serve.champion_in_router the router answers the champion itself, and its replicas scale instead.
    champion = None if sv.champion_in_router else ModelVersions.options(name="champion", **limits, **scaling).bind(config, name)
    challenger = ModelVersions.options(name="challenger", **limits, num_replicas=1).bind(config, name)
    shadow = ModelVersions.options(name="shadow", **limits, num_replicas=1).bind(config, name)
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
        config, model_ref, champion, challenger, shadow)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Entry for Serve config files: ``import_path: aiinfra.serving.app:app_builder``, ``args: {model: NAME@ALIAS}``."""
    if "model" not in args:
        raise InvalidInput("serve config args must name the model to serve, e.g. model: churn@champion")
    return build_app(load_config(), str(args["model"]))
