"""``aiinfra demo``: the walking skeleton, every stage of the lifecycle connected.

generate data -> ingest it through the gate (validate, quarantine, profile, version) ->
point-in-time training set from the feature store -> fit features -> train (DDP, 2 workers) -> evaluate ->
register -> alias -> materialize the online store -> serve on Ray Serve -> predict over HTTP
(with the features in the request, and by entity id from the online store) -> report -> shut down.
"""

from __future__ import annotations

import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from aiinfra.config import ENV, PlatformConfig, load_config
from aiinfra.data.synthetic import CATEGORICAL, LABEL, NUMERIC, make_customers
from aiinfra.demo.configs import training_config, validation_spec
from aiinfra.demo.scenario import print_timeline, run_loop
from aiinfra.identity.tokens import read_token_file
from aiinfra.pipelines.ingest import ingest
from aiinfra.pipelines.progress import StageLog
from aiinfra.pipelines.train import run_training
from aiinfra.platform import connect

__all__ = ["run_demo"]

MODEL_NAME = "churn"
DATASET_NAME = "customers"
FEATURE_VIEW = "customer_profile"


def _shutdown_serve(serve: Any) -> None:
    """Serve's own shutdown, in this thread: Serve bounds it itself (it waits 30 s for its controller,
    then logs a warning and returns), and stopping the embedded Ray afterwards ends every replica and proxy
    anyway. Not in a helper thread with a timeout of our own: CI saw such a thread still inside Serve when
    the main thread stopped Ray, and Ray's core worker then ended the process with exit status 1."""
    t0 = time.monotonic()
    try:
        serve.shutdown()
    except Exception as exc:  # noqa: BLE001 - stopping the embedded Ray anyway
        print(f"Serve's shutdown failed ({type(exc).__name__}: {exc}); stopping the embedded Ray anyway", flush=True)
        return
    print(f"Serve shut down in {time.monotonic() - t0:.1f}s", flush=True)


def run_demo(config: PlatformConfig | None = None, *, rows: int = 20_000, epochs: int = 5, seed: int = 0,
             keep_serving: bool = False, loop: bool = True) -> dict[str, Any]:
    config = config or load_config()
    # start, ingest, the pipeline's 5 stages, serve, predict; then the monitoring loop's 5
    log = StageLog(total=14 if loop else 9)
    summary: dict[str, Any] = {"home": str(config.home)}
    print(f"aiinfra demo: state in {config.home}", flush=True)

    with log.stage("start the platform (Ray, registry)"):
        platform = connect(config)  # first: it settles Ray's auth mode before Ray is imported
        # Ray (and the Serve app, which imports it) only now: Ray reads RAY_AUTH_MODE once, when imported.
        from ray import serve

        from aiinfra.serving.app import build_app
        from aiinfra.serving.grpc_oip import start_options

        log.note(f"Ray {'started here' if platform.started_ray else 'joined'}; registry actor 'registry' in namespace {config.namespace!r}")
    try:
        with log.stage("generate customer data and ingest it through the gate"):
            raw = make_customers(rows, seed=seed)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "customers.csv"
                raw.to_csv(path, index=False)
                with open(path, "a") as f:  # what real exports contain: a few broken rows
                    f.write("100,2026-03-01T00:00:00,not-a-number,50.0,1,basic,north,0\n")
                    f.write("101,2026-03-01T00:00:00,12.0,50.0,1,platinum,north,0\n")
                result = ingest(config, DATASET_NAME, str(path), spec=validation_spec())
            dataset = result.version
            dataset_version = dataset.ref
            log.note(f"{dataset.ref}: {dataset.row_count:,} rows kept, {dataset.quarantined_count} quarantined "
                     f"({'; '.join(dataset.quarantine_reasons)}){'' if result.created else ' (already ingested)'}")
            df = platform.datasets.load(dataset).to_pandas()
            log.note(f"churn rate {df[LABEL].mean():.1%}; profile and reference sample stored with the version")

        # The training pipeline, as `aiinfra train jobs/configs/churn.yaml` runs it: point-in-time
        # features -> split -> fit transforms -> DDP training -> evaluation -> gate -> register -> alias.
        # (jobs/configs/churn.yaml, on the version just ingested; see aiinfra.demo.configs for the demo's gate)
        cfg = training_config(dataset_version, epochs=epochs, seed=seed)
        trained = run_training(platform, cfg, log=log)
        metrics = trained.metrics
        alias = trained.alias
        holdout = trained.holdout_sample
        log.note(f"run {trained.run_id}: `aiinfra runs show {trained.run_id}`; report {trained.reports['report_html']}")

        with log.stage("materialize features online and deploy the champion on Ray Serve"):
            report = platform.features.materialize(FEATURE_VIEW)
            log.note(f"{report.entities_written:,} customers' latest profiles in the online store ({report.batches} batch(es))")
            serve.start(**start_options(config))
            serve.run(build_app(config, f"{MODEL_NAME}@champion"), name="aiinfra", route_prefix="/")
            base = f"http://{config.serve.host}:{config.serve.port}"
            token = ENV.API_TOKEN.get() or read_token_file(config.token_file)
            if not token:
                raise RuntimeError("no API token: set AIINFRA_API_TOKEN or create one with `aiinfra token create --role predict`")
            auth = {"Authorization": f"Bearer {token}"}
            log.note(f"serving {MODEL_NAME}@champion at {base}/predict/{MODEL_NAME}")

        with log.stage("predict over HTTP"):
            features = NUMERIC + CATEGORICAL
            sample = holdout.head(5)
            instances = [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in sample[features].to_dict("records")]
            t0 = time.perf_counter()
            resp = httpx.post(f"{base}/predict/{MODEL_NAME}", json={"instances": instances}, headers=auth, timeout=30)
            latency_ms = (time.perf_counter() - t0) * 1000
            if resp.status_code != 200:
                raise RuntimeError(f"the served model answered {resp.status_code}: {resp.text}")
            answer = resp.json()
            for inst, pred, truth in zip(instances, answer["predictions"], sample[LABEL]):
                log.note(f"{answer['model']}@{answer['version']}: {json.dumps(inst)} -> churn p={pred['probability']:.3f} (label {pred['label']}, truth {truth})")
            log.note(f"request {answer['request_id']} answered in {latency_ms:.0f} ms")
            ids = [int(i) for i in holdout["customer_id"].head(3)]
            by_id = httpx.post(f"{base}/predict/{MODEL_NAME}", json={"entity_ids": ids}, headers=auth, timeout=30)
            if by_id.status_code != 200:
                raise RuntimeError(f"the served model answered {by_id.status_code}: {by_id.text}")
            for entity, pred in zip(ids, by_id.json()["predictions"]):
                log.note(f"{answer['model']}@{answer['version']}: customer {entity} (features from the online store) -> churn p={pred['probability']:.3f}")
            bad = httpx.post(f"{base}/predict/{MODEL_NAME}", json={"instances": [{"tenure_months": "long"}]}, headers=auth, timeout=30)
            log.note(f"a malformed request gets {bad.status_code}: {bad.json()['error'][:100]}...")

        summary.update({
            "dataset_version": dataset_version, "run_id": trained.run_id, "model": trained.model, "alias": alias,
            "gate": trained.verdict, "report_html": trained.reports.get("report_html"),
            "metrics": metrics, "serve_url": base, "predictions": answer, "predictions_by_entity": by_id.json(),
            "bad_request_status": bad.status_code,
            "timeline": log.timeline,
        })
        if loop:
            # The retrain job reads the same recipe from a file, on the latest data of the dataset.
            recipe = cfg.model_dump(mode="json", exclude_none=True)
            recipe["data"]["dataset"] = DATASET_NAME
            recipe_path = config.home / "demo" / "churn_training.yaml"
            recipe_path.parent.mkdir(parents=True, exist_ok=True)
            recipe_path.write_text(json.dumps(recipe, indent=2))  # JSON is YAML
            summary["loop"] = run_loop(platform, base=base, auth=auth, reference=df, training_config=str(recipe_path),
                                       log=log, seed=seed)
            print_timeline(summary["loop"]["timeline"])
            print(f"loop report: {summary['loop']['report_html']}", flush=True)
        config.reports_dir.mkdir(parents=True, exist_ok=True)
        (config.reports_dir / "demo.json").write_text(json.dumps(summary, indent=2, default=str))
        print(f"report: {config.reports_dir / 'demo.json'}", flush=True)
        if keep_serving and platform.started_ray:
            print(f"serving at {base} (Ray dashboard http://127.0.0.1:8265); press Ctrl-C to stop", flush=True)

            def stop(signum: int, frame: Any) -> None:
                raise KeyboardInterrupt

            # Ctrl-C must reach this loop whatever ran before: put Python's own SIGINT handler back (a
            # library may have replaced it), unblock both signals here, and sleep in short steps, so that a
            # signal the kernel handed to another thread is still acted on within a second (CI saw a demo
            # that never printed "stopping" after SIGINT while sleeping an hour at a time).
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, stop)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                while True:
                    time.sleep(1.0)
            except KeyboardInterrupt:
                print("stopping", flush=True)
    finally:
        if platform.started_ray:
            _shutdown_serve(serve)
            platform.close()
            print("shut down: Serve and the embedded Ray are stopped", flush=True)
        else:
            platform.close()  # disconnect this driver; the cluster and its Serve app stay up
            print(f"left running on the cluster: Serve app 'aiinfra' at {summary.get('serve_url')}", flush=True)
    return summary
