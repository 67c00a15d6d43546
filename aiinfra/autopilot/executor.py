"""The autopilot's decisions, carried out: the executing half of its state machine (no Ray).

One executor drives every model with a stored policy (``watch`` stores it; a restarted actor reloads
them all). Each ``tick`` steps every model once:

- watching: new drift reports (from the metadata DB, in window order) and the monitor's rolling
  performance go to the state machine (``Autopilot``); a ``retrain`` decision submits
  ``aiinfra retrain`` as a Ray job;
- retraining: the job's state; when it ends, the version it registered (its ``RetrainResult``) ends
  the retrain: a canary starts (the monitor's arms are reset, the ``challenger`` alias is set with the
  policy's traffic share, which the router reads with the alias) or the cycle aborts;
- canary: each arm's counters from the monitor go to the state machine; ``promote`` moves ``champion``
  to the challenger, removes ``challenger`` and rebases the monitor on the new champion; ``rollback``
  removes ``challenger``.

Every decision is committed with its evidence before it is acted on. If the process dies between the
two, the restarted executor repeats the last decision's action once (``_reconcile``): aliases are set,
never toggled, so repeating is harmless. A failing retrain job aborts the cycle and the champion keeps
serving; the failure and the job's message are in the decision log.

Its effects go through ports (``ports.py``): the registry's alias calls, the monitors, the job server;
the clock is injected too, so promote, roll back, reconcile after a restart and a failed job are unit
tests with fakes.
"""

from __future__ import annotations

import logging
import shlex
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from aiinfra.autopilot.core import Autopilot, Decision, load_policies, remove_policy, save_policy
from aiinfra.autopilot.policy import load_policy
from aiinfra.autopilot.ports import Aliases, Jobs, Monitors
from aiinfra.autopilot.retrain_result import read_retrain_result, retrain_result_key
from aiinfra.errors import Forbidden, InvalidInput, NotFound
from aiinfra.monitoring.concept import ConceptDrift
from aiinfra.monitoring.core import DriftReport, read_concept_drift, read_reports
from aiinfra.registry.approvals import AliasRequest
from aiinfra.storage import ArtifactStore, MetadataDB

__all__ = ["AutopilotExecutor"]

log = logging.getLogger("aiinfra.autopilot")
_NO_ARM = {"requests": 0, "errors": 0, "labelled": 0, "correct": 0}


class AutopilotExecutor:
    """Args:
    db: the metadata DB (policies, state and decisions; drift reports are read from it).
    store: the artifact store (retrain jobs' results).
    registry, monitors, jobs: the ports its actions go through.
    poll_interval_s: seconds between ticks of the thread ``start`` runs.
    clock: seconds since the epoch.
    python: the interpreter a retrain job runs (the cluster's, which has aiinfra installed).
    """

    def __init__(self, db: MetadataDB, store: ArtifactStore, *, registry: Aliases, monitors: Monitors, jobs: Jobs,
                 poll_interval_s: float = 5.0, clock: Callable[[], float] = time.time,
                 python: str = sys.executable) -> None:
        self._db = db
        self._store = store
        self._registry = registry
        self._monitors = monitors
        self._jobs = jobs
        self.poll_interval_s = poll_interval_s
        self._clock = clock
        self._python = python
        self._pilots: dict[str, Autopilot] = {p.model: self._pilot(p) for p in load_policies(db)}
        self._since = {m: self._watched_since(m) for m in self._pilots}
        self._reconciled: set[str] = set()
        self._events: deque[dict[str, Any]] = deque(maxlen=500)
        self._errors: dict[str, str] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()

    def _pilot(self, policy: Any) -> Autopilot:
        return Autopilot(self._db, policy, clock=self._clock)

    def start(self) -> None:
        """Tick every ``poll_interval_s`` on a thread of its own until ``stop``."""
        threading.Thread(target=self._run, name="autopilot", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            self.tick()

    # -- the API ---------------------------------------------------------------------------------
    def watch(self, policy: dict[str, Any]) -> dict[str, Any]:
        """Drive ``policy["model"]`` by this policy from now on (stored; replaces an earlier one)."""
        parsed = load_policy(policy)
        with self._lock:
            save_policy(self._db, parsed)
            self._pilots[parsed.model] = self._pilot(parsed)
            self._since[parsed.model] = self._watched_since(parsed.model)
            self._reconciled.add(parsed.model)
            return self._pilots[parsed.model].state()

    def unwatch(self, model: str) -> bool:
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
        """One pass over every model; the decisions taken."""
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

    # -- one model's step --------------------------------------------------------------------------
    def _step(self, pilot: Autopilot) -> list[Decision]:
        model = pilot.model
        if model not in self._reconciled:
            self._reconcile(pilot)
            self._reconciled.add(model)
        st = pilot.state()
        taken: list[Decision] = []
        if st["state"] == "watching":
            for report in self._new_reports(model, st["last_window_id"]):
                d = pilot.on_drift_report(report)
                taken += self._act(pilot, d)
                if d.action == "retrain":
                    return taken
            for concept in self._new_concept_drift(model, st.get("last_concept_id")):
                d = pilot.on_concept_drift(concept.model_dump())
                taken += self._act(pilot, d)
                if d.action == "retrain":
                    return taken
            snapshot = self._monitors.performance_snapshot(model)
            if snapshot is not None:
                taken += self._act(pilot, pilot.on_performance(snapshot))
        elif st["state"] == "retraining":
            if st["job_id"] is None:
                taken += self._submit(pilot)
            else:
                taken += self._check_job(pilot, st["job_id"])
        elif st["state"] == "awaiting_approval":
            request = self._registry.get_request(st["approval_request"])
            taken += self._act(pilot, pilot.approval_resolved(request.id, request.status, request.decided_by))
        elif st["state"] == "canary":
            arms = self._monitors.arm_stats(model).get("arms", {})
            champion = self._registry.get(f"{model}@champion").version
            taken += self._act(pilot, pilot.on_canary_stats(arms.get(str(champion), _NO_ARM),
                                                            arms.get(str(st["challenger_version"]), _NO_ARM)))
        return taken

    def _new_reports(self, model: str, last_window_id: int | None) -> list[DriftReport]:
        # Only the windows not yet counted (or, before the first, those since the policy was stored): each
        # tick reads what is new, not the model's whole history.
        since = self._since[model] if last_window_id is None else None
        return list(reversed(read_reports(self._db, model, limit=200, after_window_id=last_window_id, since=since)))

    def _new_concept_drift(self, model: str, last_id: int | None) -> list[ConceptDrift]:
        """Concept-drift detections not yet seen: since the policy was stored, before the first."""
        found = reversed(read_concept_drift(self._db, model, limit=50, after_id=last_id))
        since = self._since[model] if last_id is None else float("-inf")
        return [c for c in found if c.created_at >= since]

    def _watched_since(self, model: str) -> float:
        rows = self._db.query("SELECT updated_at FROM autopilot_policies WHERE model = ?", (model,))
        return float(rows[0]["updated_at"]) if rows else self._clock()

    # -- actions -----------------------------------------------------------------------------------
    def _act(self, pilot: Autopilot, decision: Decision) -> list[Decision]:
        if decision.action == "none":
            return []
        model, ev = pilot.model, decision.evidence
        self._event(model, decision.action, decision.reason, decision.seq)
        if decision.action == "retrain":
            return [decision, *self._submit(pilot)]
        elif decision.action == "start_canary":
            self._monitors.reset_arms(model)
            try:
                self._start_canary(pilot, int(ev["challenger_version"]))
            except Forbidden as e:  # a protected `challenger`: the autopilot may not put it on traffic by itself
                ended = pilot.canary_not_started(
                    f"{e}; the autopilot canaries through the `challenger` alias, which must not be protected "
                    "(protect `champion` instead: the promotion then waits for its approvals)")
                self._event(model, ended.action, ended.reason, ended.seq)
                return [decision, ended]
        elif decision.action == "promote":
            request = self._promote(model, int(ev["challenger_version"]))
            if request is not None:
                return [decision, pilot.approval_requested(request.id, request.version, request.needed)]
        elif decision.action == "approved":
            self._monitors.rebase(model)  # the new champion's data is the reference now
        elif decision.action == "rollback":
            self._remove_challenger(model)
        return [decision]

    def _start_canary(self, pilot: Autopilot, version: int) -> None:
        # The share travels with the alias: the router reads both in one registry call.
        self._registry.set_alias(pilot.model, version, "challenger", share=pilot.policy.canary.share)

    def _promote(self, model: str, version: int) -> AliasRequest | None:
        """Move ``champion``; where it is protected, the registry's request for the move instead (None: moved)."""
        moved = self._registry.alias_or_request(model, version, "champion",
                                                reason="the autopilot's canary passed its non-inferiority test")
        self._remove_challenger(model)
        if isinstance(moved, AliasRequest):
            # A protected champion (approvals.py): the canary ends, the champion keeps serving, and the move waits
            # for its approvers (`aiinfra models approve`); a retried promote finds the same pending request.
            return moved
        self._monitors.rebase(model)  # the new champion's data is the reference now
        return None

    def _remove_challenger(self, model: str) -> None:
        try:
            self._registry.remove_alias(model, "challenger")
        except NotFound:
            pass
        except Forbidden as e:  # a protected challenger was put there through its approvers: theirs to remove
            log.warning("%s@challenger is protected and stays: %s", model, e)

    def _reconcile(self, pilot: Autopilot) -> None:
        """Repeat the last logged decision's action once (the process may have died right after deciding)."""
        last = pilot.decisions(limit=1)
        if not last:
            return
        d = last[0]
        version = d.evidence.get("challenger_version")
        if d.action == "start_canary" and pilot.state()["state"] == "canary":
            self._start_canary(pilot, int(version))
        elif d.action == "promote":
            request = self._promote(pilot.model, int(version))
            if request is not None:
                pilot.approval_requested(request.id, request.version, request.needed)
        elif d.action in ("rollback", "abort"):
            self._remove_challenger(pilot.model)

    def _submit(self, pilot: Autopilot) -> list[Decision]:
        """Send the retrain job; the decisions that follows from it (an abort, when no node could hold it)."""
        policy = pilot.policy
        model = policy.model
        job_id = f"retrain-{model}-{uuid.uuid4().hex[:8]}"
        retrain = policy.retrain
        args = [self._python, "-m", "aiinfra.cli", "retrain", model, "--config", retrain.training_config,
                "--recent-rows", str(retrain.recent_rows), "--result-key", retrain_result_key(model, job_id),
                "--min-trusted-holdout", str(retrain.min_trusted_holdout),
                "--max-untrusted-share", str(retrain.max_untrusted_share)]
        if retrain.reference_rows is not None:
            args += ["--reference-rows", str(retrain.reference_rows)]
        try:
            memory = self._jobs.retrain_memory(retrain)
        except InvalidInput as e:  # no node could hold its driver: said now, not by a job killed halfway
            return self._act(pilot, pilot.retrain_finished(False, error=f"not submitted: {e}"))
        self._jobs.submit(shlex.join(args), submission_id=job_id, metadata={"autopilot_model": model},
                          entrypoint_memory=memory)
        pilot.retrain_submitted(job_id)
        asked = f"; its driver asks for {memory / (1 << 30):.2f} GiB" if memory else ""
        self._event(model, "submitted", f"retrain job {job_id}: {shlex.join(args[1:])}{asked}")
        return []

    def _check_job(self, pilot: Autopilot, job_id: str) -> list[Decision]:
        job = self._jobs.state(job_id)
        if not job.finished:
            return []
        if job.status == "SUCCEEDED":
            key = retrain_result_key(pilot.model, job_id)
            try:
                result = read_retrain_result(self._store, self._db, key)
            except InvalidInput as e:
                return self._act(pilot, pilot.retrain_finished(False, error=f"job {job_id}: {e}"))
            if result is None:
                d = pilot.retrain_finished(False, error=f"job {job_id} succeeded but wrote no result at {key}")
            else:
                d = pilot.retrain_finished(True, result.version if result.challenger else None,
                                           error=None if result.challenger else result.refusal,
                                           judged_on=result.judged_on)
        else:
            tail = self._jobs.logs(job_id)[-2000:]
            d = pilot.retrain_finished(False, error=f"job {job_id} {job.status}: {job.message}; log tail: {tail}")
        return self._act(pilot, d)

    def _event(self, model: str, action: str, reason: str, seq: int | None = None) -> None:
        at = self._clock()
        self._events.append({"at": at, "model": model, "action": action, "reason": reason, "seq": seq})
        print(f"[autopilot {time.strftime('%H:%M:%S', time.localtime(at))}] {model}: {action}: {reason}", flush=True)
