"""The router of one served model, in plain Python: who may ask, what is admitted, which version answers.

It holds the routing state (the versions the reference, ``NAME@challenger`` and ``NAME@shadow`` name
now) and makes every decision on a request: the caller's token and role, the in-flight limit, the
request id, the role and version that answer (the canary by a stable hash of the request id, the
shadow's mirror likewise), the features for entity ids, what is sampled for the drift monitor, and
which version a failure counts against. The Serve ingress (``ingress.py``) parses HTTP, calls it and
maps its errors; the model deployments, the registry, the feature store and the monitor are reached
through what it is given, so unit tests build it with fakes.

Alias following is one ``refresh()`` step, called every ``FOLLOW_INTERVAL_S`` from the ingress's thread:
a version an alias newly names is warmed (loaded in the role's deployment, or here for the champion
in the router) before one assignment swaps it in. Each request reads the routing once, so a request
in flight finishes on the version it started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from aiinfra.config import PlatformConfig
from aiinfra.errors import AiInfraError, AtCapacity, InvalidInput, NotFound, ServiceUnavailable
from aiinfra.identity.roles import LABEL_ANY
from aiinfra.identity.tokens import Principal
from aiinfra.inference.predictor import MAX_INSTANCES
from aiinfra.inference.scores import score_of
from aiinfra.registry.types import ModelVersion, parse_ref
from aiinfra.serving.feedback import FeedbackBatcher
from aiinfra.serving.routing import goes_to_challenger, stable_fraction
from aiinfra.serving.sampling import MonitorSampler
from aiinfra.serving.shadow import ShadowComparer

__all__ = ["FOLLOW_INTERVAL_S", "ROLES", "Admission", "ModelDeployments", "Monitor", "Router"]

log = logging.getLogger("aiinfra.serving")

ROLES = ("champion", "challenger", "shadow")
FOLLOW_INTERVAL_S = 2.0
# A monitor that could not be reached is not asked again for this long: the rows sampled meanwhile are
# dropped, and serving goes on.
MONITOR_RETRY_S = 60.0

Rows = list[dict[str, Any]]


class ModelDeployments(Protocol):
    """The model deployments of the served roles, as the router reaches them (Serve handles in the app).

    ``answer`` raises AiInfraErrors for what the deployment refused or could not do (at capacity, a
    replica gone: ServiceUnavailable; the version's own checks: InvalidInput).
    """

    roles: frozenset[str]  # the roles that have a deployment (the champion may be answered in the router)

    async def answer(self, role: str, version: ModelVersion, rows: Rows) -> Rows: ...

    def answer_blocking(self, role: str, version: ModelVersion, rows: Rows) -> Rows:
        """``answer`` from a thread that is not on an event loop (the shadow comparer's)."""
        ...

    def warm(self, role: str, version: ModelVersion) -> None:
        """Return once the role's deployment has ``version`` loaded (blocking)."""
        ...


class Monitor(Protocol):
    """The served model's drift monitor (blocking calls; the router makes them off the event loop)."""

    def observe(self, rows: Rows, scores: Any, request_ids: Any, labels: Any, versions: Any, errors: dict[int, int],
                tokens: Any, *, probabilities: Any = None) -> Any: ...

    def feedback(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Counts, and ``outcomes``: each item's (matched, unknown or invalid) in order."""
        ...


class Local(Protocol):
    """The champion's versions loaded in the router's own process (``LoadedVersions``)."""

    def loaded(self, version: int) -> Any: ...

    def get(self, version: int) -> Any: ...


class Admission:
    """The in-flight limit of one serving process, shared by the routers of all the models it serves.

    Past ``limit`` inference requests in flight, a 503 at once. All run on the replica's event loop, so a
    plain counter is safe. The message names no model: the limit is the replica's, not any one model's.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit, self.inflight = limit, 0

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        if self.limit is not None and self.inflight >= self.limit:
            raise AtCapacity(f"this replica is at capacity ({self.limit} requests in flight); retry with backoff")
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1


class _ShadowCall:
    """What ShadowComparer calls from its thread: the shadow's deployment, with the version it mirrors to."""

    def __init__(self, models: ModelDeployments, version: ModelVersion) -> None:
        self.models, self.version = models, version

    def predict(self, rows: Rows) -> Rows:
        return self.models.answer_blocking("shadow", self.version, rows)


class Router:
    """Routes requests for the model ``model_ref`` names (``churn@champion``).

    Args:
        registry: resolves references (``get``); ``NAME@alias`` is asked on every ``refresh``.
        tokens: checks bearer tokens (``verify(authorization) -> Principal``).
        models: the deployments of the roles that have one.
        local: the champion's versions in this process (``serve.champion_in_router``), else None.
        features: the online feature store (``get_online_features(view, entity_ids)``) for entity ids.
        monitor: the model's drift monitor: the sampled requests go there, and /feedback.
        canary_share: the challenger's share when its alias carries none (default: ``serve.canary_share``).
        clock: monotonic seconds.
        background: start the sampler's shipping thread (tests ship by hand with ``sampler.flush()``).
        admission: the process's in-flight limit, shared with the routers of the other models it serves
            (default: one of its own, with the limit below).
    """

    FOLLOW_INTERVAL_S = FOLLOW_INTERVAL_S

    def __init__(self, config: PlatformConfig, model_ref: str, *, registry: Any, tokens: Any,
                 models: ModelDeployments, monitor: Monitor, features: Any = None, local: Local | None = None,
                 canary_share: Callable[[], float] | None = None, clock: Callable[[], float] = time.monotonic,
                 background: bool = True, admission: Admission | None = None) -> None:
        self.config = config
        self.model_ref = model_ref
        self.follows = parse_ref(model_ref).version is None  # an alias (or "newest"): it can move
        self._registry, self._tokens, self._models, self._local = registry, tokens, models, local
        self._features, self._monitor, self._clock = features, monitor, clock
        self._default_canary_share = canary_share or (lambda: config.serve.canary_share)
        self.primary: ModelVersion = registry.get(model_ref)
        self.name = self.primary.name
        if local is not None:
            local.get(self.primary.version)  # else its deployment loads it on the first request
        # Load shedding when the router answers the champion: past this many inference requests in flight
        # (the model deployment's own limits), a 503 at once. Serve's limit on the router sits above it,
        # so its plain-text 503 stays the exception (build_app).
        self.admission = admission or Admission(config.serve.max_ongoing_requests + config.serve.max_queued_requests
                                                if local is not None else None)
        self.challenger: ModelVersion | None = None  # the canary's version, while a `challenger` alias exists
        self.shadow: ModelVersion | None = None  # mirrored (compared, never returned) while a `shadow` alias exists
        self.canary_share = config.serve.canary_share
        self._shadow = ShadowComparer()
        self._monitor_retry_at = 0.0
        self._feedback = FeedbackBatcher(monitor.feedback)
        self._routing_key: bytes = tokens.routing_key()  # the same on every replica: see serving/routing.py
        self.sampler: MonitorSampler | None = None
        if config.monitoring.enabled and config.monitoring.sample_rate > 0:
            self.sampler = MonitorSampler(self._ship, rate=config.monitoring.sample_rate, start=background)

    # -- who may ask, and what is admitted ---------------------------------------------------------------

    def authorize(self, authorization: str | None, action: str) -> Principal:
        """The bearer token in ``authorization`` may ``action`` on this router's model (else Unauthorized /
        Forbidden: a token scoped to another model is refused here); who it is."""
        principal = self._tokens.verify(authorization)
        principal.require(action, model=self.name)
        return principal

    def check_name(self, name: str) -> None:
        if name != self.name:
            raise NotFound(f"model {name!r} is not served here (this deployment serves {self.name!r})")

    def admitted(self) -> contextlib.AbstractContextManager[None]:
        """One inference request in flight (``Admission``)."""
        return self.admission.admitted()

    @staticmethod
    def request_id(given: str | None) -> str:
        """The client's id (``X-Request-ID``: a retry with the same id reaches the same version), else a new one."""
        given = (given or "").strip()
        if given:
            if len(given) > 200:
                raise InvalidInput("X-Request-ID must be at most 200 characters")
            return given
        return uuid.uuid4().hex

    # -- which version answers ---------------------------------------------------------------------------

    def route(self, request_id: str) -> tuple[str, ModelVersion]:
        """The role and version that answer this request (read once: the whole request uses them)."""
        challenger = self.challenger
        if challenger is not None and goes_to_challenger(self.name, request_id, self.canary_share, self._routing_key):
            return "challenger", challenger
        return "champion", self.primary

    async def answer(self, role: str, version: ModelVersion, rows: Rows) -> Rows:
        """The role's deployment (or, for the champion in the router, this process) answers with ``version``;
        server-side failures count against that version, back-pressure (503: at capacity, retry) does not:
        a challenger given more traffic than its replicas take is busy, not broken, and a load spike must not
        roll it back."""
        try:
            if role == "champion" and self._local is not None:
                # In this process: a small model's forward pass costs less than the hop to another replica.
                predictor = (self._local.loaded(version.version)
                             or await asyncio.to_thread(self._local.get, version.version))
                return predictor.predict(rows)
            return await self._models.answer(role, version, rows)
        except AtCapacity:
            raise
        except AiInfraError as e:
            if e.status_code >= 500:
                self._failed(version)
            raise
        except Exception:
            self._failed(version)
            raise

    def answered(self, request_id: str, rows: Rows, predictions: Rows, version: ModelVersion,
                 token_id: str | None = None) -> None:
        """After an answer: its rows offered to the monitor's sampler (with the id of the token that asked:
        who may label it), and mirrored to the shadow for its share."""
        if self.sampler is not None:
            probabilities = [p["probabilities"] for p in predictions] if predictions and "probabilities" in predictions[0] \
                else None  # a multiclass model's answers: every class's, for the monitor's estimate
            self.sampler.offer(rows, [score_of(p) for p in predictions], request_id,
                               [p.get("label", p.get("value")) for p in predictions], version.version, token_id,
                               probabilities)
        shadow = self.shadow
        shadow_pick = stable_fraction(f"shadow:{self.name}:{request_id}", self._routing_key)
        if shadow is not None and shadow_pick < self.config.serve.shadow_share:
            self._shadow.mirror(_ShadowCall(self._models, shadow), rows, predictions)

    def _failed(self, version: ModelVersion) -> None:
        if self.sampler is not None:
            self.sampler.offer_error(version.version)

    # -- features and feedback ---------------------------------------------------------------------------

    @property
    def feature_view(self) -> str | None:
        """The view the served version was trained from: where features for `entity_ids` come from."""
        return self.primary.lineage.feature_view

    def features_for(self, version: ModelVersion, entity_ids: Sequence[Any]) -> Rows:
        """One online-store call for all the entities; each must have current features."""
        view = version.lineage.feature_view
        if view is None:
            raise InvalidInput(f"{version.ref} was not trained from a feature view, so it cannot look up entity_ids; "
                               "send instances")
        if not entity_ids or len(entity_ids) > MAX_INSTANCES:
            raise InvalidInput(f"entity_ids must hold 1 to {MAX_INSTANCES} ids")
        if any(isinstance(e, (dict, list)) or e is None for e in entity_ids):
            raise InvalidInput("entity_ids must be strings or numbers")
        rows = self._features.get_online_features(view, list(entity_ids))
        unknown = [r["entity"] for r in rows if r["status"] != "ok"]
        if unknown:
            raise InvalidInput(
                f"no current features in view {view!r} for entity id(s) {unknown[:20]}"
                + (" (and more)" if len(unknown) > 20 else "")
            )
        assert version.signature is not None  # a served version has one (the Predictor refuses it otherwise)
        inputs = [f.name for f in version.signature.inputs]
        return [{k: r["features"].get(k) for k in inputs} for r in rows]

    def feedback(self, items: list[dict[str, Any]], principal: Principal | None = None) -> dict[str, Any]:
        """Ground truth for served requests, relayed to the monitor (blocking: call it off the event loop).

        With ``principal`` (the HTTP caller), each label carries its provenance: the token's id, and whether its
        role may label any request (``LABEL_ANY``); else the monitor accepts it only for the token's own requests.
        """
        if principal is not None:
            items = [{**item, "by": principal.token_id, "trusted": principal.role in LABEL_ANY} for item in items]
        try:
            result = self._feedback.submit(items)  # with the other requests' feedback in flight: one monitor call
        except Exception as e:  # noqa: BLE001 - the monitor is a separate service: say it is unavailable
            raise ServiceUnavailable(
                f"the monitor for {self.name!r} is not available ({type(e).__name__}); retry later") from None
        return {"model": self.name, "accepted": result["matched"], "unknown_request_ids": result["unknown"],
                "invalid": result["invalid"], "refused": result["refused"]}

    def _ship(self, rows: Rows, scores: Any, request_ids: Any, labels: Any, versions: Any, errors: dict[int, int],
              tokens: Any, probabilities: Any = None) -> None:
        """On the sampler's thread: one call to the monitor (its failure is counted by the sampler)."""
        if self._clock() < self._monitor_retry_at:
            return  # the monitor could not be reached a moment ago; these rows are dropped, serving goes on
        try:
            extra = {} if probabilities is None else {"probabilities": probabilities}
            self._monitor.observe(rows, scores, request_ids, labels, versions, errors, tokens, **extra)
        except Exception:
            self._monitor_retry_at = self._clock() + MONITOR_RETRY_S
            raise

    # -- following the aliases ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """One step of following the aliases (the ingress's thread calls it every FOLLOW_INTERVAL_S).

        Never raises: on a failure (the registry unreachable, a warm that failed) the router keeps serving
        what it has, and the next step tries again.
        """
        try:
            current = self._registry.get(self.model_ref)
            if current.version != self.primary.version:
                previous = self.primary.ref
                self._warm("champion", current)
                self.primary = current  # one assignment: the swap is atomic
                log.info("%s moved from %s to %s; now serving it", self.model_ref, previous, current.ref)
            self._follow_challenger()
            self._follow_shadow()
        except Exception:  # noqa: BLE001 - keep serving what we have; try again next step
            log.exception("could not refresh %s; still serving %s", self.model_ref, self.primary.ref)

    def _follow_challenger(self) -> None:
        wanted = self._named("challenger")
        shares = wanted.alias_shares if wanted is not None else {}
        # The share the alias carries (the autopilot's, for its canary), else the default.
        self.canary_share = shares["challenger"] if "challenger" in shares else self._default_canary_share()
        challenger = self._follow("challenger", self.challenger, wanted, self.canary_share,
                                  skip_version=self.primary.version)
        if challenger is not self.challenger:
            self.challenger = challenger
            log.info("canary of %s: %s at %.0f%%", self.name, "ended" if challenger is None else challenger.ref,
                     100 * self.canary_share)

    def _follow_shadow(self) -> None:
        share = self.config.serve.shadow_share
        if share <= 0:
            return
        shadow = self._follow("shadow", self.shadow, self._named("shadow"), share)
        if shadow is not self.shadow:
            self.shadow = shadow
            log.info("shadow of %s: %s at %.0f%%", self.name, "ended" if shadow is None else shadow.ref, 100 * share)

    def _named(self, alias: str) -> ModelVersion | None:
        try:
            return self._registry.get(f"{self.name}@{alias}")
        except NotFound:
            return None

    def _follow(self, role: str, current: ModelVersion | None, wanted: ModelVersion | None, share: float,
                skip_version: int | None = None) -> ModelVersion | None:
        """What the role serves next: ``current`` when unchanged (or given no share), else ``wanted`` once warm."""
        if share <= 0:
            return current
        if wanted is None or wanted.version == skip_version:
            return None
        if current is not None and current.version == wanted.version:
            return current
        self._warm(role, wanted)
        return wanted

    def _warm(self, role: str, version: ModelVersion) -> None:
        """Block until the role has ``version`` loaded (on the follower's thread)."""
        if role == "champion" and self._local is not None:
            self._local.get(version.version)
            return
        self._models.warm(role, version)

    # -- what is served ----------------------------------------------------------------------------------

    def served(self) -> dict[str, Any]:
        """What this application serves (for `aiinfra status`; not an HTTP route)."""
        v, c, sh = self.primary, self.challenger, self.shadow
        return {"model": v.name, "version": v.version, "ref": self.model_ref, "feature_view": self.feature_view,
                "deployments": {role: f"ModelVersions ({role})" if role in self._models.roles
                                else "ModelServer (in the router)" for role in ROLES},
                "canary": None if c is None else {"version": c.version, "share": self.canary_share},
                "shadow": None if sh is None else {"version": sh.version, "share": self.config.serve.shadow_share,
                                                   **self._shadow.summary()}}

    def close(self) -> None:
        """Stop the threads this router started (its model is no longer served here)."""
        if self.sampler is not None:
            self.sampler.close()
        self._shadow.close()
