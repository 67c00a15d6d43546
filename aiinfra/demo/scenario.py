"""The demo's monitoring loop: drift -> retrain -> canary -> promote, with no person in the loop.

Once the first model serves, production traffic turns: a price rise shifts charges and support
calls (covariate drift) and the premium plan starts to churn (concept drift). Clients send it over
HTTP and report the true outcome through ``/feedback``. The drift monitor closes windows, the
``autopilot`` actor sees the drift, submits the retraining job to the cluster, canaries the new
version on live traffic, and promotes it when it is not worse than the champion; a background
client keeps calling the model the whole time and counts every failed request.

Ends with a timeline and an HTML report (data profile, training curves, evaluation, drift over
time, canary) under ``$AIINFRA_HOME/reports/``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from aiinfra.autopilot.actor import get_autopilot_actor
from aiinfra.data.synthetic import CATEGORICAL, NUMERIC, make_customers
from aiinfra.demo.clients import MODEL, BackgroundLoad, ProductionClient
from aiinfra.demo.report import render_loop_report
from aiinfra.identity.tokens import TokenStore
from aiinfra.monitoring.client import MonitorClient
from aiinfra.monitoring.core import read_estimates, read_reports
from aiinfra.pipelines.progress import StageLog
from aiinfra.storage import open_metadata_db

# Ray is imported inside the functions: the CLI imports demo.run, which imports this module, before
# connect() sets RAY_AUTH_MODE, and Ray reads that once, when it is imported.

__all__ = ["demo_policy", "print_timeline", "run_loop"]


def demo_policy(training_config: str, *, reference_rows: int) -> dict[str, Any]:
    """The demo's autopilot policy: small counts, so the loop closes in a minute or two."""
    return {
        "model": MODEL,
        # Drift on 2 features in 2 windows in a row; the performance trigger backs it up later.
        "trigger": {"drift_features_min": 2, "consecutive_windows": 2, "performance_metric": "accuracy",
                    "performance_drop": 0.1, "min_labelled": 3000},
        "cooldown_s": 600, "max_retrains_per_day": 3,
        "retrain": {"training_config": training_config, "recent_rows": 5000, "reference_rows": reference_rows},
        "canary": {"share": 0.3, "min_requests": 100, "min_labelled": 150, "max_duration_s": 600},
        "promotion": {"metric": "accuracy", "margin": 0.02, "alpha": 0.05},
        "rollback": {"max_error_rate": 0.02, "max_regression": 0.1, "min_labelled": 50},
    }


def _status(autopilot: Any) -> dict[str, Any]:
    import ray  # inside: see the note at the top (RAY_AUTH_MODE)

    return ray.get(autopilot.status.remote(MODEL, 50), timeout=60)["models"][MODEL]


def run_loop(platform: Any, *, base: str, auth: dict[str, str], reference: pd.DataFrame, training_config: str,
             log: StageLog, seed: int = 0, timeout_s: float = 900.0) -> dict[str, Any]:
    """The loop on a serving champion; returns its summary (and writes the HTML report)."""
    import ray  # inside: see the note at the top (RAY_AUTH_MODE)

    config = platform.config
    db = open_metadata_db(config.metadata_url)
    features = NUMERIC + CATEGORICAL
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s

    def event(what: str, kind: str = "traffic") -> None:
        events.append({"at": time.time(), "what": what, "kind": kind})

    def wait_for(states: tuple[str, ...], what: str, *, traffic: Any = None) -> dict[str, Any]:
        while True:
            st = _status(autopilot)
            if st["state"]["state"] in states:
                return st
            if time.monotonic() > deadline:
                raise RuntimeError(f"the loop did not reach {what} within {timeout_s:.0f}s; autopilot: "
                                   f"{json.dumps(st['state'])}; last error: {st['last_error']}")
            if traffic is not None:
                traffic()
            else:
                time.sleep(1.0)

    # The labels come with a token of their own: `auth` may be a predict token, and a predict token may
    # not label. Scoped to the demo's model and expiring once the loop's deadline has passed; revoked
    # when the loop ends.
    tokens = TokenStore(db, background=False)  # it checks no token: nothing to record as used
    labeller = tokens.issue("labeller", who="aiinfra demo", model=MODEL, expires_in_s=timeout_s + 600)
    client = ProductionClient(base, auth, features, feedback_auth={"Authorization": f"Bearer {labeller.token}"})
    world = make_customers(40_000, seed=seed + 1, drifted=True, first_id=50_000_000)
    cursor = {"i": 0}

    def next_rows(n: int) -> pd.DataFrame:
        i = cursor["i"]
        cursor["i"] = (i + n) % (len(world) - n)
        return world.iloc[i:i + n]

    with log.stage("start the autopilot and drive churn by its policy"):
        autopilot = get_autopilot_actor(config, poll_interval_s=1.0)
        policy = demo_policy(training_config, reference_rows=500)
        ray.get(autopilot.watch.remote(policy), timeout=120)
        event("autopilot watches churn", "stage")
        t = policy["trigger"]
        log.note(f"actor 'autopilot': retrain after {t['consecutive_windows']} windows in a row with >= "
                 f"{t['drift_features_min']} drifted features; canary {policy['canary']['share']:.0%}; promote when "
                 f"not worse by {policy['promotion']['margin']} (one-sided z-test, alpha {policy['promotion']['alpha']})")

    drift_started = time.time()
    with log.stage("production traffic drifts (prices up, premium customers leave); clients send feedback"):
        event("drifted production traffic starts")
        shown = 0

        def drift_traffic() -> None:
            nonlocal shown
            client.send(next_rows(500), rows_per_request=10)
            for r in sorted(read_reports(db, MODEL, 50), key=lambda r: r.window_id):
                if r.window_id > shown:
                    shown = r.window_id
                    drifted = (r.result.drifted_features if r.result else []) or []
                    log.note(f"window {r.window_id}: {r.rows} rows, {r.status}"
                             + (f" ({', '.join(drifted)})" if drifted else f" ({r.reason})"))
                    event(f"drift window {r.window_id}: {r.status}", "drift")

        st = wait_for(("retraining", "canary"), "a retrain decision", traffic=drift_traffic)
        retrain = next(d for d in st["decisions"] if d["action"] == "retrain")
        log.note(f"decision {retrain['seq']}: {retrain['reason']}")
        event("retrain decided", "decision")

    with log.stage("retrain as a Ray job: recent labelled production rows + reference data"):
        # Production does not pause for a retrain: traffic and labels keep coming.
        st = wait_for(("canary", "watching"), "the end of the retrain",
                      traffic=lambda: (client.send(next_rows(250), rows_per_request=10), time.sleep(0.5)))
        job = st["state"]["job_id"] or next((d["evidence"].get("job_id") for d in st["decisions"]
                                             if d["action"] in ("start_canary", "abort")), None)
        ended = st["decisions"][0]
        log.note(f"job {job}: {ended['reason']}")
        if ended["action"] == "abort":
            raise RuntimeError(f"the retrain did not produce a challenger: {ended['evidence'].get('error')}")
        challenger = int(ended["evidence"]["challenger_version"])
        event(f"canary of version {challenger} starts", "decision")

    champion_version = platform.registry.get(f"{MODEL}@champion").version  # the canary's other arm
    with BackgroundLoad(client, world.iloc[:2000]) as load:
        with log.stage(f"canary: {policy['canary']['share']:.0%} of live traffic to churn@{challenger}"):
            st = wait_for(("watching",), "the canary's end",
                          traffic=lambda: client.send(next_rows(500), rows_per_request=5))
            decision = st["decisions"][0]
            arms = {k: decision["evidence"].get(k) for k in ("champion", "challenger")}
            log.note(f"decision {decision['seq']}: {decision['reason']}")
            for arm in ("champion", "challenger"):
                a = arms[arm] or {}
                if a.get("labelled"):
                    log.note(f"{arm}: {a['requests']} requests, {a['errors']} errors, accuracy "
                             f"{a['correct'] / a['labelled']:.3f} on {a['labelled']} labelled rows")
            event(f"canary ends: {decision['action']}", "decision")
        promoted = decision["action"] == "promote"
        with log.stage("the served version switches" if promoted else "the champion keeps serving"):
            # Done when 30 answers in a row come from the new champion: a canary-routed answer from it
            # before the router has followed the promotion does not count.
            wanted = challenger if promoted else None
            until = time.monotonic() + 60
            while wanted is not None and not (load.last_version == wanted and load.streak >= 30) \
                    and time.monotonic() < until:
                time.sleep(0.2)
        log.note(f"background client: {sum(load.statuses.values())} requests, {load.failed} failed; versions "
                 f"served {dict(sorted(load.versions.items()))}")
        event(f"serving churn@{load.last_version}", "stage")

    onset_to_promotion = time.time() - drift_started
    summary = {
        "decisions": list(reversed(st["decisions"])), "promoted": promoted, "challenger_version": challenger,
        "champion_version": champion_version,
        "served_version": load.last_version, "background_requests": sum(load.statuses.values()),
        "background_failed": load.failed, "traffic_statuses": dict(client.statuses),
        "drift_onset_to_decision_s": round(onset_to_promotion, 1),
    }
    path, timeline = _write_report(platform, db, summary, events, reference, world.iloc[:cursor["i"] or 2000],
                                   features, log)
    summary.update(report_html=str(path), timeline=timeline)
    tokens.revoke(labeller.id)
    return summary


def _write_report(platform: Any, db: Any, summary: dict[str, Any], events: list[dict[str, Any]],
                  reference: pd.DataFrame, production: pd.DataFrame, features: list[str],
                  log: StageLog) -> tuple[Path, list[dict[str, Any]]]:
    registry = platform.registry
    decisions = summary["decisions"]
    runs, evaluations = [], {}
    for v in registry.list_versions(MODEL):
        run_id = getattr(v.lineage, "run_id", None) or (v.lineage.model_extra or {}).get("run_id")
        label = f"{v.ref}" + (" (initial)" if v.version == 1 else " (retrained)")
        evaluations[label] = dict(v.metrics)
        if run_id:
            run = registry.get_run(run_id)
            runs.append({"label": label, "epochs": [{"epoch": e.step, **e.metrics} for e in run.epochs]})
    timeline = [{"at": s["ended_at"], "what": f"{s['stage']} ({s['seconds']:.1f}s)", "kind": "stage"}
                for s in log.timeline if "ended_at" in s]
    timeline += [{"at": d["at"], "kind": "decision",
                  "what": f"autopilot: {d['reason']}" if d["reason"].startswith(d["action"])
                  else f"autopilot {d['action']}: {d['reason']}"} for d in decisions]
    timeline += events
    timeline.sort(key=lambda e: e["at"])
    end = next((d for d in reversed(decisions) if d["action"] in ("promote", "rollback")), None)
    canary = None
    if end is not None:
        ev = end["evidence"]
        canary = {"champion": {**(ev.get("champion") or {}), "version": summary["champion_version"]},
                  "challenger": {**(ev.get("challenger") or {}), "version": ev.get("challenger_version")},
                  "decision": {"action": end["action"], "reason": end["reason"], "evidence": ev}}
    sample = min(2000, len(reference), len(production))
    profile = {f: {"reference": reference[f].sample(sample, random_state=0).tolist(),
                   "production": production[f].sample(sample, random_state=0).tolist()} for f in features}
    data = {
        "summary": {"promoted": summary["promoted"], "served version": summary["served_version"],
                    "background requests": summary["background_requests"],
                    "failed requests": summary["background_failed"],
                    "drift onset to the canary's end (s)": summary["drift_onset_to_decision_s"]},
        "timeline": timeline, "profile": profile, "runs": runs, "evaluations": evaluations,
        "drift_reports": [r.model_dump(mode="json") for r in read_reports(db, MODEL, 200)][::-1],
        "estimates": _estimates(platform, db),
        "alpha": platform.config.monitoring.alpha,
        "markers": [{"at": d["at"], "label": d["action"]} for d in decisions], "canary": canary,
    }
    reports = platform.config.reports_dir
    reports.mkdir(parents=True, exist_ok=True)
    path = reports / "loop.html"
    path.write_text(render_loop_report(data, title="aiinfra demo: drift -> retrain -> canary -> promote"))
    (reports / "loop.json").write_text(json.dumps({**summary, "timeline": timeline}, indent=2, default=str))
    return path, timeline


def _estimates(platform: Any, db: Any) -> list[dict[str, Any]]:
    """Each window's CBPE estimate beside its realised accuracy, the labels that arrived checked just now."""
    monitor = MonitorClient.if_running(platform.config, MODEL)
    if monitor is not None:
        try:
            monitor.check_estimates(200)
        except Exception:  # noqa: BLE001 - the report shows what was last stored instead
            pass
    return [c.model_dump(mode="json") for c in read_estimates(db, MODEL, 200)][::-1]


def print_timeline(timeline: list[dict[str, Any]], out: Any = None) -> None:
    """The loop's timeline: wall time (UTC), seconds since the first event, what happened."""
    out = out or sys.stdout
    if not timeline:
        return
    t0 = timeline[0]["at"]
    print("timeline:", file=out)
    for e in timeline:
        stamp = time.strftime("%H:%M:%S", time.gmtime(e["at"]))
        print(f"  {stamp}  +{e['at'] - t0:7.1f}s  {e['what'][:160]}", file=out)
    out.flush()
