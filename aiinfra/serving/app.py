"""The Ray Serve application: a FastAPI ingress that routes, in front of model deployments that answer.

The graph, per served model::

    HTTP -> ModelServer (ingress + router: auth, body limits, request parsing, feature lookup,
            canary / shadow routing, monitor sampling, /feedback)
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

Routes follow the HTTP contract in DESIGN.md: Open Inference Protocol v2 health and model
metadata, and ``POST /predict/{name}``. Every error is JSON, ``{"error": message}``, with the
status of its AiInfraError; a client's mistake is never a 500, and overload is a 503 at once.

``app_builder`` is what ``serve_configs/*.yaml`` import; ``build_app`` is the Python entry.
"""

# No `from __future__ import annotations` here: Serve rewrites the route signatures and FastAPI
# must see real classes (Request), not strings.

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from aiinfra.config import PlatformConfig, format_validation_error, load_config
from aiinfra.errors import AiInfraError, InvalidInput, NotFound, PayloadTooLarge, ServiceUnavailable
from aiinfra.inference.predictor import MAX_INSTANCES
from aiinfra.registry.types import parse_ref

__all__ = ["ModelServer", "app_builder", "build_app"]

api = FastAPI(title="aiinfra inference", version="0.1.0")
log = logging.getLogger("aiinfra.serving")



_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")

# What may tag a metric: a name a model can have (Ray encodes tags as ASCII; anything else is one tag).
_MODEL_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _utf8(text: str) -> str:
    """``text`` as UTF-8 can carry it: a lone surrogate from a JSON escape (\\ud800) becomes a visible escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@api.exception_handler(AiInfraError)
async def _platform_error(request: Request, exc: AiInfraError) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content={"error": _utf8(exc.message)})


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """No route for the path (404) or the method (405): the contract's error shape, not FastAPI's {"detail": ...}."""
    return JSONResponse(status_code=exc.status_code, content={"error": _utf8(str(exc.detail))}, headers=exc.headers)


@api.exception_handler(RequestValidationError)
async def _request_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return JSONResponse(status_code=422, content={"error": _utf8("invalid request: " + "; ".join(parts))})


class _Measure:
    """Requests, errors and latency per model, version and route (health checks are not counted).

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) runs each request
    through an extra task and stream, which costs a noticeable share of a fast request's time.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route and not route.startswith("/v2/health"):
                from aiinfra.serving.metrics import record_request

                name = str(scope.get("path_params", {}).get("name", ""))
                state = scope.get("state") or {}  # what the routes put on request.state
                record_request(
                    model=name if status[0] != 404 and _MODEL_TAG.fullmatch(name) else "(unknown)",
                    version=str(state.get("version", "")), route=route, status=status[0],
                    latency_ms=(time.perf_counter() - start) * 1000, rows=int(state.get("rows", 0)),
                )


api.add_middleware(_Measure)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[Any] | None = None
    entity_ids: list[Any] | None = None


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=200)
    label: Any = None
    labels: list[Any] | None = Field(None, max_length=MAX_INSTANCES)


class FeedbackRequest(BaseModel):
    """One label (``request_id`` + ``label``, or ``labels`` per row) or many (``items``)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str | None = Field(None, min_length=1, max_length=200)
    label: Any = None
    labels: list[Any] | None = Field(None, max_length=MAX_INSTANCES)
    items: list[FeedbackItem] | None = Field(None, min_length=1, max_length=MAX_INSTANCES)


def _request_id(request: Request) -> str:
    """The client's ``X-Request-ID`` (a retry with the same id reaches the same version), else a new one."""
    given = request.headers.get("x-request-id", "").strip()
    if given:
        if len(given) > 200:
            raise InvalidInput("X-Request-ID must be at most 200 characters")
        return given
    return uuid.uuid4().hex


async def _json_body(request: Request, max_bytes: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the {max_bytes}-byte limit")
    raw = b""
    async for chunk in request.stream():  # a body without Content-Length is counted as it arrives
        raw += chunk
        if len(raw) > max_bytes:
            raise PayloadTooLarge(f"request body is over the {max_bytes}-byte limit")
    try:
        body = json.loads(raw)
        # A JSON escape can make a lone UTF-16 surrogate (\\ud800), which no UTF-8 text can carry: refused here,
        # before it reaches an error message or a model deployment (whose worker cannot even serialize it).
        if _SURROGATE_ESCAPE.search(raw):
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        return body
    except UnicodeEncodeError:
        raise InvalidInput("request body holds a lone UTF-16 surrogate (an escape \\ud800 to \\udfff without its "
                           "pair), which is not valid Unicode text") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidInput("request body is not valid JSON: nested too deeply") from None


ROLES = ("champion", "challenger", "shadow")

# Serve runs a replica's user code on an event loop in a thread of its own. On a small machine every
# request then crosses threads (and the GIL) once more: running it on the replica's main loop took
# about 15% more throughput at 16 clients here (BENCHMARKS.md). Read when the replica's process imports
# Serve, hence runtime_env. Not RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0 as well: it makes a handle's
# `.result()` refuse every caller, and the router's alias follower and shadow comparer call the model
# deployments from their own threads with it.
_REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}


def _registry_client(config: PlatformConfig) -> Any:
    from aiinfra.registry.actor import get_registry_actor
    from aiinfra.registry.client import RegistryClient
    from aiinfra.service import ActorBackend
    from aiinfra.storage import open_artifact_store

    return RegistryClient(ActorBackend(lambda: get_registry_actor(config, create=False)),
                          open_artifact_store(config.storage_root))


def _transport(handle: Any, config: PlatformConfig) -> Any:
    """The handle over the configured transport (``serve.model_transport``)."""
    if config.serve.model_transport == "grpc":
        # Pickle, not cloudpickle: rows and answers are plain JSON values, and pickle is the faster of the two.
        return handle.options(_by_reference=False, request_serialization="pickle", response_serialization="pickle")
    return handle


@serve.deployment(ray_actor_options={"num_cpus": 0.2, "runtime_env": {"env_vars": _REPLICA_ENV}},
                  max_ongoing_requests=32, max_queued_requests=128)
class ModelVersions:
    """Answers one model's requests with the version each names; concurrent requests share a forward pass.

    Versions are loaded on first use (download hash-checked) and the two most recently used are
    kept, so the old and the new version both answer while an alias moves (``LoadedVersions``).
    """

    def __init__(self, config: PlatformConfig, name: str) -> None:
        from aiinfra.inference.versions import LoadedVersions

        self.name = name
        device = "cuda" if config.serve.model_gpus > 0 else "cpu"
        self._versions = LoadedVersions(_registry_client(config), name, device=device)

    async def warm(self, version: int) -> int:
        """Load ``version`` now, before any request needs it."""
        await asyncio.to_thread(self._versions.get, version)
        return version

    async def predict(self, rows: list[dict[str, Any]], version: int) -> list[dict[str, Any]]:
        predictor = self._versions.loaded(version) or await asyncio.to_thread(self._versions.get, version)
        x = predictor.prepare(rows)  # a client's mistake fails this request alone, before batching
        return predictor.answer(await self._forward(predictor, x))

    # No waiting for a batch to fill: a lone request goes at once, and requests that arrive while a
    # forward pass runs are queued and go together in the next.
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
    async def _forward(self, predictors: list[Any], xs: list[Any]) -> list[Any]:
        import numpy as np

        out: list[Any] = [None] * len(xs)
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(predictors):  # mixed versions happen only while an alias moves
            groups.setdefault(id(p), []).append(i)
        for idx in groups.values():
            scores = predictors[idx[0]].forward(np.concatenate([xs[i] for i in idx]))
            start = 0
            for i in idx:
                out[i] = scores[start:start + len(xs[i])]
                start += len(xs[i])
        return out


class _ShadowCall:
    """What ShadowComparer calls: the shadow deployment, from the comparer's thread."""

    def __init__(self, handle: Any, version: Any) -> None:
        self.handle, self.version = handle, version

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.handle.predict.remote(rows, self.version.version).result(timeout_s=60)


@serve.deployment(ray_actor_options={"num_cpus": 0.1, "runtime_env": {"env_vars": _REPLICA_ENV}},
                  max_ongoing_requests=64, max_queued_requests=256)
@serve.ingress(api)
class ModelServer:
    """Routes requests for the model a reference names (``churn@champion``), and follows the alias.

    A background thread asks the registry every ``FOLLOW_INTERVAL_S`` which versions the reference,
    ``NAME@challenger`` and ``NAME@shadow`` name now; a new version is warmed in its deployment and
    then swapped in with one assignment. Each request reads the routing once, so a request in
    flight finishes on the version it started with: no request fails because an alias moved.
    """

    FOLLOW_INTERVAL_S = 2.0

    def __init__(self, config: PlatformConfig, model_ref: str, champion: Any, challenger: Any, shadow: Any) -> None:
        from aiinfra.inference.versions import LoadedVersions
        from aiinfra.serving.auth import TokenStore
        from aiinfra.serving.shadow import ShadowComparer
        from aiinfra.storage import open_metadata_db

        self.config = config
        self.model_ref = model_ref
        self._slots = {role: _transport(h, config) for role, h in
                       (("champion", champion), ("challenger", challenger), ("shadow", shadow)) if h is not None}
        self._registry = _registry_client(config)
        self.primary = self._registry.get(model_ref)
        self.name = self.primary.name
        # serve.champion_in_router: the champion answers here, in this process (no hop to a deployment).
        self._local = LoadedVersions(self._registry, self.name) if champion is None else None
        if self._local is not None:
            self._local.get(self.primary.version)  # else its deployment loads it on the first request
        # Load shedding when the router answers the champion: past this many inference requests in flight
        # (the model deployment's own limits), a JSON 503 at once. Serve's limit on this deployment sits
        # above it, so its plain-text 503 stays the exception (build_app).
        self._admit_limit = (config.serve.max_ongoing_requests + config.serve.max_queued_requests
                             if self._local is not None else None)
        self._inflight = 0
        self.challenger: Any = None  # the canary's version, while the model has a `challenger` alias
        self.shadow: Any = None  # a version mirrored (compared, never returned) while a `shadow` alias exists
        self._shadow = ShadowComparer()
        self._db = open_metadata_db(config.metadata_url)
        self.tokens = TokenStore(self._db)
        self.canary_share = config.serve.canary_share  # the autopilot's policy share while it runs a canary
        self._feature_store: Any = None
        self._stop = threading.Event()
        if parse_ref(model_ref).version is None:  # an alias (or "newest"): it can move
            threading.Thread(target=self._follow, name=f"follow-{model_ref}", daemon=True).start()
        self._sampler = None
        self._monitor: Any = None
        self._monitor_retry_at = 0.0
        if config.monitoring.enabled and config.monitoring.sample_rate > 0:
            from aiinfra.serving.sampling import MonitorSampler

            self._sampler = MonitorSampler(self._send_to_monitor, rate=config.monitoring.sample_rate)

    def _warm(self, role: str, version: Any) -> None:
        """Block until the role's deployment has ``version`` loaded (on the follower thread, or at start)."""
        if role == "champion" and self._local is not None:
            self._local.get(version.version)
            return
        self._slots[role].warm.remote(version.version).result(timeout_s=300)

    def _send_to_monitor(self, rows: list[dict[str, Any]], scores: list[float], request_ids: list[str],
                         labels: list[Any], versions: list[int | None], errors: dict[int, int]) -> None:
        """On the sampler's thread: one call to ``monitor:<model>`` (started on first use)."""
        import ray

        from aiinfra.monitoring.actor import get_monitor_actor

        if time.monotonic() < self._monitor_retry_at:
            return  # the monitor could not start a moment ago; these rows are dropped, serving goes on
        try:
            if self._monitor is None:
                self._monitor = get_monitor_actor(self.config, self.name)
            ray.get(self._monitor.observe.remote(rows, scores, request_ids, labels, versions, errors), timeout=60)
        except Exception:
            self._monitor = None
            self._monitor_retry_at = time.monotonic() + 60.0
            raise

    def _sample(self, rows: list[dict[str, Any]], predictions: list[dict[str, Any]], request_id: str,
                version: int) -> None:
        if self._sampler is not None:
            from aiinfra.inference.scores import score_of

            self._sampler.offer(rows, [score_of(p) for p in predictions], request_id,
                                [p.get("label", p.get("value")) for p in predictions], version)

    @contextlib.contextmanager
    def _admitted(self) -> Any:
        """One inference request in flight (all run on this replica's event loop: a plain counter is safe)."""
        if self._admit_limit is not None and self._inflight >= self._admit_limit:
            raise ServiceUnavailable(f"{self.name} is at capacity ({self._admit_limit} requests in flight on "
                                     "this replica); retry with backoff")
        self._inflight += 1
        try:
            yield
        finally:
            self._inflight -= 1

    def _failed(self, version: Any) -> None:
        if self._sampler is not None:
            self._sampler.offer_error(version.version)

    async def _answer(self, role: str, version: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The role's deployment (or, for the champion with champion_in_router, this process) answers with
        ``version``; server-side failures count against that version."""
        from ray.exceptions import RayActorError, RayTaskError
        from ray.serve.exceptions import BackPressureError

        try:
            if role == "champion" and self._local is not None:
                # In this process: a small model's forward pass costs less than the hop to another replica.
                predictor = (self._local.loaded(version.version)
                             or await asyncio.to_thread(self._local.get, version.version))
                return predictor.predict(rows)
            return await self._slots[role].predict.remote(rows, version.version)
        except BackPressureError:
            self._failed(version)
            raise ServiceUnavailable(f"{version.ref} is at capacity; retry with backoff") from None
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, AiInfraError):
                if cause.status_code >= 500:
                    self._failed(version)
                raise cause from None
            self._failed(version)
            raise
        except AiInfraError as e:
            if e.status_code >= 500:
                self._failed(version)
            raise
        except RayActorError:
            self._failed(version)
            raise ServiceUnavailable(f"a replica serving {version.ref} went away; retry") from None
        except Exception:
            self._failed(version)
            raise

    def _follow(self) -> None:
        while not self._stop.wait(self.FOLLOW_INTERVAL_S):
            try:
                current = self._registry.get(self.model_ref)
                if current.version != self.primary.version:
                    previous = self.primary.ref
                    self._warm("champion", current)
                    self.primary = current  # one assignment: the swap is atomic
                    log.info("%s moved from %s to %s; now serving it", self.model_ref, previous, current.ref)
                self._follow_challenger()
                self._follow_shadow()
            except Exception:  # noqa: BLE001 - keep serving what we have; try again next tick
                log.exception("could not refresh %s; still serving %s", self.model_ref, self.primary.ref)

    def _follow_challenger(self) -> None:
        from aiinfra.autopilot.core import live_canary

        canary = live_canary(self._db, self.name)  # the autopilot's share while it runs this canary
        self.canary_share = canary["share"] if canary else self.config.serve.canary_share
        challenger = self._follow_alias("challenger", self.challenger, self.canary_share,
                                        skip_version=self.primary.version)
        if challenger is not self.challenger:
            self.challenger = challenger
            log.info("canary of %s: %s at %.0f%%", self.name, "ended" if challenger is None else challenger.ref,
                     100 * self.canary_share)

    def _follow_shadow(self) -> None:
        shadow = self._follow_alias("shadow", self.shadow, self.config.serve.shadow_share)
        if shadow is not self.shadow:
            self.shadow = shadow
            log.info("shadow of %s: %s at %.0f%%", self.name, "ended" if shadow is None else shadow.ref,
                     100 * self.config.serve.shadow_share)

    def _follow_alias(self, alias: str, current: Any, share: float, skip_version: int | None = None) -> Any:
        """The version ``NAME@alias`` names now (warmed in its deployment): ``current`` when unchanged, else None."""
        if share <= 0:
            return current
        try:
            wanted = self._registry.get(f"{self.name}@{alias}")
        except NotFound:
            return None
        if wanted.version == skip_version:
            return None
        if current is not None and current.version == wanted.version:
            return current
        self._warm(alias, wanted)
        return wanted

    def _mirror(self, request_id: str, rows: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> None:
        from aiinfra.serving.routing import stable_fraction

        shadow = self.shadow
        if shadow is not None and stable_fraction(f"shadow:{self.name}:{request_id}") < self.config.serve.shadow_share:
            self._shadow.mirror(_ShadowCall(self._slots["shadow"], shadow), rows, predictions)

    def _route(self, request_id: str) -> tuple[str, Any]:
        """The role and version that answer this request (read once: the whole request uses them)."""
        from aiinfra.serving.routing import goes_to_challenger

        challenger = self.challenger
        if challenger is not None and goes_to_challenger(self.name, request_id, self.canary_share):
            return "challenger", challenger
        return "champion", self.primary

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

    @property
    def feature_view(self) -> str | None:
        """The view the served version was trained from: where features for `entity_ids` come from."""
        return (self.primary.lineage.model_extra or {}).get("feature_view")

    def served(self) -> dict[str, Any]:
        """What this application serves (for `aiinfra status`; not an HTTP route)."""
        v, c, sh = self.primary, self.challenger, self.shadow
        return {"model": v.name, "version": v.version, "ref": self.model_ref, "feature_view": self.feature_view,
                "deployments": {role: f"ModelVersions ({role})" if role in self._slots else "ModelServer (in the router)"
                                for role in ROLES},
                "canary": None if c is None else {"version": c.version, "share": self.canary_share},
                "shadow": None if sh is None else {"version": sh.version, "share": self.config.serve.shadow_share,
                                                   **self._shadow.summary()}}

    def _authorize(self, request: Request, action: str) -> None:
        self.tokens.verify(request.headers.get("authorization")).require(action)

    async def _request_as(self, model: Any, what: str, name: str, request: Request, *, action: str) -> Any:
        """The caller may ``action`` on this model, and the JSON body is a valid ``model`` (else 4xx)."""
        self._authorize(request, action)
        self._check_name(name)
        body = await _json_body(request, self.config.serve.max_body_bytes)
        try:
            return model.model_validate(body)
        except ValidationError as e:
            raise InvalidInput(format_validation_error(what, e)) from None

    def _check_name(self, name: str) -> None:
        if name != self.name:
            raise NotFound(f"model {name!r} is not served here (this deployment serves {self.name!r})")

    @api.get("/v2/health/live")
    def live(self) -> dict[str, bool]:
        return {"live": True}

    @api.get("/v2/health/ready")
    def ready(self) -> dict[str, bool]:
        return {"ready": True}

    @api.get("/v2/models/{name}")
    def metadata(self, name: str, request: Request) -> dict[str, Any]:
        from aiinfra.serving.oip import tensor_metadata as tensor

        self._authorize(request, "predict")
        self._check_name(name)
        version = self.primary
        sig = version.signature
        return {
            "name": self.name,
            "versions": [str(version.version)],
            "platform": "aiinfra-torch",
            "inputs": [tensor(f) for f in sig.inputs],
            "outputs": [tensor(f) for f in sig.outputs],
        }

    @api.get("/v2/models/{name}/ready")
    def model_ready(self, name: str) -> dict[str, Any]:
        self._check_name(name)
        return {"name": name, "ready": True}

    @api.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request) -> dict[str, Any]:
        with self._admitted():
            from aiinfra.serving.oip import decode_infer_request, encode_infer_response

            self._authorize(request, "predict")
            self._check_name(name)
            # OIP clients may send JSON without a JSON Content-Type: the body is parsed regardless.
            body = await _json_body(request, self.config.serve.max_body_bytes)
            rows, request_id, wanted = decode_infer_request(body, self.primary.signature)
            request_id = request_id or _request_id(request)
            role, version = self._route(request_id)  # read once: an alias move mid-request does not mix versions
            predictions = await self._answer(role, version, rows)
            request.state.version, request.state.rows = version.version, len(predictions)
            self._sample(rows, predictions, request_id, version.version)
            self._mirror(request_id, rows, predictions)
            return encode_infer_response(predictions, version.signature, model=version.name, version=version.version,
                                         request_id=request_id, wanted=wanted)

    @api.post("/predict/{name}")
    async def predict(self, name: str, request: Request) -> dict[str, Any]:
        with self._admitted():
            req = await self._request_as(PredictRequest, "predict request", name, request, action="predict")
            if (req.instances is None) == (req.entity_ids is None):
                raise InvalidInput("send exactly one of 'instances' (feature objects) or 'entity_ids'")
            request_id = _request_id(request)
            role, version = self._route(request_id)  # read once: an alias move mid-request does not mix versions
            instances = req.instances if req.instances is not None else self._features_for(version, req.entity_ids)
            predictions = await self._answer(role, version, instances)
            request.state.version, request.state.rows = version.version, len(predictions)
            self._sample(instances, predictions, request_id, version.version)
            self._mirror(request_id, instances, predictions)
            return {"predictions": predictions, "model": version.name, "version": version.version, "request_id": request_id}

    @api.post("/feedback/{name}")
    async def feedback(self, name: str, request: Request) -> dict[str, Any]:
        """Ground truth for served requests, by the request_id each answer carried."""
        req = await self._request_as(FeedbackRequest, "feedback", name, request, action="feedback")
        if (req.items is None) == (req.request_id is None):
            raise InvalidInput("send either 'request_id' with 'label' (or 'labels'), or 'items': a list of those")
        items = req.items or [FeedbackItem.model_validate(req.model_dump(exclude={"items"}, exclude_unset=True))]
        for i, item in enumerate(items):
            if ("label" in item.model_fields_set) == (item.labels is not None):
                raise InvalidInput(f"feedback item {i}: give exactly one of 'label' or 'labels'")
        from aiinfra.monitoring.actor import get_monitor_actor

        try:
            monitor = get_monitor_actor(self.config, self.name)
            result = await monitor.feedback.remote([it.model_dump(exclude_unset=True) for it in items])
        except Exception as e:  # noqa: BLE001 - the monitor is a separate service: say it is unavailable
            raise ServiceUnavailable(f"the monitor for {self.name!r} is not available ({type(e).__name__}); retry later") from None
        request.state.rows = len(items)
        return {"model": self.name, "accepted": result["matched"], "unknown_request_ids": result["unknown"],
                "invalid": result["invalid"]}

    def _features_for(self, version: Any, entity_ids: list[Any]) -> list[dict[str, Any]]:
        """One online-store call for all the entities; each must have current features."""
        view = (version.lineage.model_extra or {}).get("feature_view")
        if view is None:
            raise InvalidInput(f"{version.ref} was not trained from a feature view, so it cannot look up entity_ids; "
                               "send instances")
        if not entity_ids or len(entity_ids) > MAX_INSTANCES:
            raise InvalidInput(f"entity_ids must hold 1 to {MAX_INSTANCES} ids")
        if any(isinstance(e, (dict, list)) or e is None for e in entity_ids):
            raise InvalidInput("entity_ids must be strings or numbers")
        if self._feature_store is None:
            from aiinfra.features.actor import get_feature_store_actor
            from aiinfra.features.client import FeatureStoreClient
            from aiinfra.service import ActorBackend
            from aiinfra.storage import open_artifact_store

            backend = ActorBackend(lambda: get_feature_store_actor(self.config, create=False), service="feature_store")
            self._feature_store = FeatureStoreClient(backend, open_artifact_store(self.config.storage_root))
        rows = self._feature_store.get_online_features(view, entity_ids)
        unknown = [r["entity"] for r in rows if r["status"] != "ok"]
        if unknown:
            raise InvalidInput(
                f"no current features in view {view!r} for entity id(s) {unknown[:20]}"
                + (" (and more)" if len(unknown) > 20 else "")
            )
        inputs = [f.name for f in version.signature.inputs]
        return [{k: r["features"].get(k) for k in inputs} for r in rows]


def build_app(config: PlatformConfig, model_ref: str) -> serve.Application:
    parse_ref(model_ref)  # a bad reference fails here, not inside a replica
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
    # share, and sheds load itself (a JSON 503 past the model's limits, ModelServer._admitted), so Serve's
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
