"""``aiinfra monitor``: drift monitoring of served models."""

from __future__ import annotations

import argparse
from typing import Any

from aiinfra.cli import common  # cluster_running looked up at call time: the tests replace it
from aiinfra.cli.common import print_json, when
from aiinfra.cluster_access import running_cluster
from aiinfra.config import load_config


def _monitor_status(args: argparse.Namespace) -> None:
    config = load_config()
    status: dict[str, Any] | None = None
    if common.cluster_running(config):
        # Ray inside, after cluster_running() set RAY_AUTH_MODE: Ray reads it once, when imported.
        import ray

        # Inside: the monitor's modules load pandas and pyarrow; `aiinfra --help` must not pay for them.
        from aiinfra.monitoring.client import MonitorClient

        ray.init(address=running_cluster(config), namespace=config.namespace, log_to_driver=False)
        try:
            monitor = MonitorClient.if_running(config, args.name)
            status = monitor.status(args.limit) if monitor is not None else None  # None: read what is stored
        finally:
            ray.shutdown()
    if status is None:
        # Inside: pandas and pyarrow; `aiinfra --help` must not pay for them.
        from aiinfra.monitoring.core import read_reports
        from aiinfra.storage import open_metadata_db

        db = open_metadata_db(config.metadata_url)
        try:
            reports = [r.model_dump(mode="json") for r in read_reports(db, args.name, args.limit)]
        finally:
            db.close()
        status = {"model": args.name, "running": False, "reports": reports}
    else:
        status["running"] = True
    if args.json:
        return print_json(status)
    print_status(args.name, status)


def print_status(name: str, status: dict[str, Any]) -> None:
    """``monitor status`` for a person: what the monitor received, how it tests, its estimates, the windows."""
    if status["running"]:
        st = status["stats"]
        print(f"monitor:{name} watching {status['version']} against {status['reference']} "
              f"({len(status['features']['numeric'])} numeric, {len(status['features']['categorical'])} categorical inputs)")
        print(f"  rows received {st['rows_seen']:,} (dropped {st['rows_dropped']:,}); open window {st['open_window_rows']:,} "
              f"of {status['settings']['window_rows']:,}; windows closed {st['windows_closed']} (skipped {st['windows_skipped']})")
        settings = status["settings"]
        if settings.get("min_window_seconds"):
            print(f"  windows: at most one per {settings['min_window_seconds']:g} s, each testing a sample of "
                  f"{settings['window_rows']:,} of its rows ({st.get('rows_sampled_out', 0):,} rows outside the samples so far)")
        if (status.get("shards") or 1) > 1:
            print(f"  shards: {status['shards']} actors join the predictions and labels; this one (shard 0) reports them")
        detector = status.get("detector") or {}
        joint = " + MMD on all inputs" if detector.get("multivariate") else ""
        print(f"  detector: {detector.get('backend', '?')} (KS / chi-squared per input{joint})")
        if detector.get("licence"):
            print(f"  licence: {detector['licence']}")
        for note in detector.get("notes") or []:
            print(f"  note: {note}")
        estimation = status.get("estimation") or {}
        if estimation.get("available"):
            flag = "" if estimation["reliable"] else f" -- UNRELIABLE: {estimation['problem']}"
            print(f"  performance before labels (CBPE): calibration error {estimation['calibration_error']:.3f} "
                  f"on the reference{flag}")
            error = estimation.get("error") or {}
            if error.get("mae") is not None:
                print(f"  estimation error: mean |estimated - realised| {error['metric']} {error['mae']:.3f} "
                      f"over {error['windows']} window(s) with labels")
        else:
            print(f"  performance before labels: not estimated ({estimation.get('problem') or 'no estimator'})")
        concept = status.get("concept") or {}
        if concept:
            latest = (concept.get("reports") or [None])[0]
            print(f"  concept drift (ADWIN on the error stream, {concept['rows']:,} labelled rows): "
                  + (f"detection {latest['detection_id']} {when(latest['created_at'])}: {latest['reason']}" if latest
                     else "none found"))
    else:
        print(f"no monitor is running for {name}; stored windows:")
    if not status["reports"]:
        print("  no windows yet: a window closes after window_rows served rows or window_seconds")
    for r in status["reports"]:
        drifted = (r.get("result") or {}).get("drifted_features") or []
        accuracy = ((r.get("estimate") or {}).get("metrics") or {}).get("accuracy")
        estimate = f"  est. accuracy {accuracy['value']:.3f} [{accuracy['low']:.3f}, {accuracy['high']:.3f}]" if accuracy else ""
        seen = f" of {r['rows_seen']:,}" if r.get("rows_seen") and r["rows_seen"] > r["rows"] else ""
        print(f"  window {r['window_id']:>4}  {when(r['window_end'])}  {r['rows']:>6} rows{seen}  {r['status']:<7}  "
              f"{', '.join(drifted) if drifted else r['reason']}{estimate}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    monitor = sub.add_parser("monitor", help="drift monitoring of served models").add_subparsers(dest="monitor_command", required=True)
    mstatus = monitor.add_parser("status", help="the latest drift windows of NAME and what its monitor has received")
    mstatus.add_argument("name")
    mstatus.add_argument("--limit", type=int, default=10)
    mstatus.add_argument("--json", action="store_true")
    mstatus.set_defaults(func=_monitor_status)
