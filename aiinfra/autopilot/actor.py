"""The named actor ``autopilot`` (namespace ``aiinfra``): the decisions of ``Autopilot``, carried out.

One actor for every model with a stored policy (``watch`` stores it; a restarted actor reloads
them all). A thread polls each model every ``poll_interval_s``:

- watching: new drift reports (from the metadata DB, in window order) and the monitor's rolling
  performance go to the state machine; a ``retrain`` decision submits ``aiinfra retrain`` as a Ray
  job (``JobSubmissionClient`` against this cluster's dashboard);
- retraining: the job's status; when it ends, the version it registered (the job writes its result
  to the artifact store) ends the retrain: a canary starts (the monitor's arms are reset, the
  ``challenger`` alias is set, and the router sends the policy's share to it) or the cycle aborts;
- canary: each arm's counters from the monitor go to the state machine; ``promote`` moves
  ``champion`` to the challenger, removes ``challenger`` and rebases the monitor on the new
  champion; ``rollback`` removes ``challenger``.

Every decision is committed with its evidence before it is acted on. If the actor dies between the
two, the restarted actor repeats the last decision's action once (``_reconcile``): aliases are set,
never toggled, so repeating is harmless. A failing retrain job aborts the cycle and the champion
keeps serving; the failure and the job's message are in the decision log.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import threading
import time
import uuid
from collections import deque
from typing import Any

import ray

from aiinfra.config import PlatformConfig

__all__ = ["AUTOPILOT_ACTOR", "AutopilotService", "get_autopilot_actor"]

AUTOPILOT_ACTOR = "autopilot"
log = logging.getLogger("aiinfra.autopilot")
_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class AutopilotService:
    def __init__(self, config: PlatformConfig, poll_interval_s: float = 5.0) -> None:
        from aiinfra.autopilot.core import Autopilot, load_policies
        from aiinfra.registry.actor import get_registry_actor
        from aiinfra.registry.client import RegistryClient
        from aiinfra.service import ActorBackend
        from aiinfra.storage import open_artifact_store, open_metadata_db

        self.config = config
        self.poll_interval_s = poll_interval_s
        self._db = open_metadata_db(config.metadata_url)
        self._store = open_artifact_store(config.storage_root)
        self._registry = RegistryClient(ActorBackend(lambda: get_registry_actor(config, create=False)), self._store,
                                        who="autopilot")
        self._pilots: dict[str, Any] = {p.model: Autopilot(self._db, p) for p in load_policies(self._db)}
        self._since = {m: self._watched_since(m) for m in self._pilots}
        self._reconciled: set[str] = set()
        self._events: deque[dict[str, Any]] = deque(maxlen=500)
        self._errors: dict[str, str] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="autopilot", daemon=True).start()

    # -- the API ---------------------------------------------------------------------------------
    def watch(self, policy: dict[str, Any]) -> dict[str, Any]:
        """Drive ``policy["model"]`` by this policy from now on (stored; replaces an earlier one)."""
        from aiinfra.autopilot.core import Autopilot, save_policy
        from aiinfra.autopilot.policy import load_policy

        parsed = load_policy(policy)
        with self._lock:
            save_policy(self._db, parsed)
            self._pilots[parsed.model] = Autopilot(self._db, parsed)
            self._since[parsed.model] = self._watched_since(parsed.model)
            self._reconciled.add(parsed.model)
        return self._pilots[parsed.model].state()

    def unwatch(self, model: str) -> bool:
        from aiinfra.autopilot.core import remove_policy

        with self._lock:
            self._pilots.pop(model, None)
            return remove_policy(self._db, model)

    def status(self, model: str | None = None, limit: int = 20) -> dict[str, Any]:
        with self._lock:
            models = [model] if model is not None else sorted(self._pilots)
            out = {}
            for m in models:
                pilot = self._pilots.get(m)
                if pilot is None:
                    continue
                out[m] = {"state": pilot.state(), "policy": pilot.policy.model_dump(mode="json"),
                          "decisions": [d.model_dump(mode="json") for d in pilot.decisions(limit)],
                          "last_error": self._errors.get(m)}
            return {"poll_interval_s": self.poll_interval_s, "models": out,
                    "events": [e for e in self._events if model is None or e["model"] == model][-limit:]}

    def tick(self) -> list[dict[str, Any]]:
        """One pass over every model (the thread runs this every ``poll_interval_s``); the decisions taken."""
        decisions: list[dict[str, Any]] = []
        with self._lock:
            for model, pilot in list(self._pilots.items()):
                try:
                    decisions += [d.model_dump(mode="json") for d in self._step(pilot)]
                    self._errors.pop(model, None)
                except Exception as e:  # noqa: BLE001 - one model's trouble must not stop the others
                    message = f"{type(e).__name__}: {e}"
                    if self._errors.get(model) != message:
                        log.exception("autopilot of %s: %s", model, message)
                    self._errors[model] = message
        return decisions

    def pid(self) -> int:
        import os

        return os.getpid()

    # -- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            self.tick()

    def _step(self, pilot: Any) -> list[Any]:
        model = pilot.model
        if model not in self._reconciled:
            self._reconcile(pilot)
            self._reconciled.add(model)
        st = pilot.state()
        taken: list[Any] = []
        if st["state"] == "watching":
            for report in self._new_reports(model, st["last_window_id"]):
                d = pilot.on_drift_report(report)
                taken += self._act(pilot, d)
                if d.action == "retrain":
                    return taken
            snapshot = self._monitor_call(model, "performance_snapshot")
            if snapshot is not None:
                taken += self._act(pilot, pilot.on_performance(snapshot))
        elif st["state"] == "retraining":
            if st["job_id"] is None:
                self._submit(pilot)
            else:
                taken += self._check_job(pilot, st["job_id"])
        elif st["state"] == "canary":
            arms = self._monitor_call(model, "arm_stats", create=True) or {"arms": {}}
            champion = self._registry.get(f"{model}@champion").version
            zero = {"requests": 0, "errors": 0, "labelled": 0, "correct": 0}
            taken += self._act(pilot, pilot.on_canary_stats(arms["arms"].get(str(champion), zero),
                                                            arms["arms"].get(str(st["challenger_version"]), zero)))
        return taken

    def _new_reports(self, model: str, last_window_id: int | None) -> list[Any]:
        from aiinfra.monitoring.core import read_reports

        # Only the windows not yet counted (or, before the first, those since the policy was stored): each
        # tick reads what is new, not the model's whole history.
        since = self._since[model] if last_window_id is None else None
        return list(reversed(read_reports(self._db, model, limit=200, after_window_id=last_window_id, since=since)))

    def _watched_since(self, model: str) -> float:
        rows = self._db.query("SELECT updated_at FROM autopilot_policies WHERE model = ?", (model,))
        return float(rows[0]["updated_at"]) if rows else time.time()

    # -- actions ---------------------------------------------------------------------------------
    def _act(self, pilot: Any, decision: Any) -> list[Any]:
        if decision.action == "none":
            return []
        model, ev = pilot.model, decision.evidence
        self._event(model, decision.action, decision.reason, decision.seq)
        if decision.action == "retrain":
            self._submit(pilot)
        elif decision.action == "start_canary":
            self._monitor_call(model, "reset_arms", create=True)
            self._registry.set_alias(model, int(ev["challenger_version"]), "challenger")
        elif decision.action == "promote":
            self._promote(model, int(ev["challenger_version"]))
        elif decision.action == "rollback":
            self._remove_challenger(model)
        return [decision]

    def _promote(self, model: str, version: int) -> None:
        self._registry.set_alias(model, version, "champion")
        self._remove_challenger(model)
        self._monitor_call(model, "rebase")  # the new champion's data is the reference now

    def _remove_challenger(self, model: str) -> None:
        from aiinfra.errors import NotFound

        try:
            self._registry.remove_alias(model, "challenger")
        except NotFound:
            pass

    def _reconcile(self, pilot: Any) -> None:
        """Repeat the last logged decision's action once (the actor may have died right after deciding)."""
        last = pilot.decisions(limit=1)
        if not last:
            return
        d = last[0]
        version = d.evidence.get("challenger_version")
        if d.action == "start_canary" and pilot.state()["state"] == "canary":
            self._registry.set_alias(pilot.model, int(version), "challenger")
        elif d.action == "promote":
            self._promote(pilot.model, int(version))
        elif d.action in ("rollback", "abort"):
            self._remove_challenger(pilot.model)

    def _monitor_call(self, model: str, method: str, *args: Any, create: bool = False) -> Any:
        """Call the model's monitor; None when it is not running (and ``create`` is False)."""
        from aiinfra.monitoring.actor import get_monitor_actor

        try:
            handle = get_monitor_actor(self.config, model, create=create)
        except ValueError:
            return None
        return ray.get(getattr(handle, method).remote(*args), timeout=60)

    def _job_client(self) -> Any:
        from ray._private.services import get_webui_url_from_internal_kv  # private: Ray is pinned exactly
        from ray.job_submission import JobSubmissionClient

        url = get_webui_url_from_internal_kv()
        if not url:
            from aiinfra.errors import ServiceUnavailable

            raise ServiceUnavailable("this cluster has no dashboard, so no job server to submit the retrain to; "
                                     "start Ray with the dashboard (aiinfra up does)")
        return JobSubmissionClient(url if url.startswith("http") else f"http://{url}")

    def _submit(self, pilot: Any) -> None:
        policy = pilot.policy
        model = policy.model
        job_id = f"retrain-{model}-{uuid.uuid4().hex[:8]}"
        result_key = f"autopilot/{model}/{job_id}.json"
        retrain = policy.retrain
        args = [sys.executable, "-m", "aiinfra.cli", "retrain", model, "--config", retrain.training_config,
                "--recent-rows", str(retrain.recent_rows), "--result-key", result_key]
        if retrain.reference_rows is not None:
            args += ["--reference-rows", str(retrain.reference_rows)]
        c = self.config
        env = {"AIINFRA_HOME": str(c.home), "AIINFRA_STORAGE_ROOT": c.storage_root, "AIINFRA_METADATA_URL": c.metadata_url}
        self._job_client().submit_job(entrypoint=shlex.join(args), submission_id=job_id,
                                      runtime_env={"env_vars": env}, metadata={"autopilot_model": model})
        pilot.retrain_submitted(job_id)
        self._event(model, "submitted", f"retrain job {job_id}: {shlex.join(args[1:])}")

    def _check_job(self, pilot: Any, job_id: str) -> list[Any]:
        client = self._job_client()
        info = client.get_job_info(job_id)
        status = str(getattr(info.status, "value", info.status))
        if status not in _TERMINAL:
            return []
        key = f"autopilot/{pilot.model}/{job_id}.json"
        if status == "SUCCEEDED":
            if not self._store.exists(key):
                d = pilot.retrain_finished(False, error=f"job {job_id} succeeded but wrote no result at {key}")
            else:
                result = json.loads(self._store.read_bytes(key))
                challenger = result.get("version") if result.get("challenger") else None
                d = pilot.retrain_finished(True, challenger,
                                           error=None if challenger else f"gate refused {result.get('model')}: "
                                                 f"{(result.get('gate') or {}).get('reason')}")
        else:
            tail = client.get_job_logs(job_id)[-2000:]
            d = pilot.retrain_finished(False, error=f"job {job_id} {status}: {info.message or ''}; log tail: {tail}")
        return self._act(pilot, d)

    def _event(self, model: str, action: str, reason: str, seq: int | None = None) -> None:
        event = {"at": time.time(), "model": model, "action": action, "reason": reason, "seq": seq}
        self._events.append(event)
        print(f"[autopilot {time.strftime('%H:%M:%S')}] {model}: {action}: {reason}", flush=True)


def get_autopilot_actor(config: PlatformConfig, *, create: bool = True, poll_interval_s: float = 5.0) -> Any:
    """The ``autopilot`` actor (started, detached and restartable, when ``create`` and missing).

    Raises:
        ValueError: not running and ``create`` is False.
    """
    if not create:
        return ray.get_actor(AUTOPILOT_ACTOR, namespace=config.namespace)
    return (
        ray.remote(AutopilotService)
        .options(name=AUTOPILOT_ACTOR, namespace=config.namespace, lifetime="detached", get_if_exists=True,
                 num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=8)
        .remote(config, poll_interval_s)
    )
