"""The retraining pipeline: recent labelled production rows + the reference data -> a challenger.

What the autopilot submits as a Ray job (``jobs/retrain.py``), and what a person can run by hand::

    labelled production rows (the monitor's, features + label + serving time)
      + the most recent ``reference_rows`` of the training dataset
      -> a new version of that dataset (validated by its own spec; lineage names both parts)
      -> the training pipeline on that version (its gate compares the result with the champion on
         the same held-out rows, which, split by time, are the newest production rows)
      -> a registered version, NOT aliased: the autopilot starts its canary.

Production rows carry only the model's inputs; the dataset's other columns are filled so that the
training config's point-in-time feature lookup finds each row's own features: a fresh entity id
per row, and the serving time as the event time. The result (the registered version, the gate's
verdict) is written to ``result_key`` in the artifact store, where the autopilot reads it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aiinfra.autopilot.retrain_result import RetrainResult, write_retrain_result
from aiinfra.data.catalog import DatasetCatalog
from aiinfra.data.spec import ValidationSpec
from aiinfra.errors import InvalidInput
from aiinfra.monitoring.client import MonitorClient
from aiinfra.pipelines.ingest import ingest
from aiinfra.pipelines.progress import StageLog
from aiinfra.pipelines.train import run_training
from aiinfra.training.config import load_train_config

__all__ = ["production_frame", "run_retrain"]


def production_frame(rows: list[dict[str, Any]], base: pd.DataFrame, *, label: str, entity: str | None,
                     timestamp: str | None, keys: tuple[str, ...] = ()) -> pd.DataFrame:
    """Labelled production rows shaped like ``base``: same columns, same dtypes where they convert.

    The entity and the dataset's ``keys`` (its spec's unique key) get new ids past the dataset's: a served
    request carries neither when the model's inputs are the features themselves, and the ingestion gate
    quarantines a row whose key is missing or repeats one.

    Raises:
        InvalidInput: a column of ``base`` the rows cannot fill (not a model input, label, entity, key or time).
    """
    frame = pd.DataFrame.from_records(rows)
    out = pd.DataFrame(index=range(len(frame)))
    for column in base.columns:
        if column == label:
            out[column] = frame["label"]
        elif column in frame.columns:
            out[column] = frame[column]
        elif column == entity or column in keys:
            ids = base[column]
            if pd.api.types.is_integer_dtype(ids):
                start = int(ids.max()) + 1 if len(ids) else 0
                out[column] = np.arange(start, start + len(frame), dtype=np.int64)
            else:
                out[column] = [f"production-{int(time.time())}-{i}" for i in range(len(frame))]
        elif column == timestamp:
            served = pd.to_datetime(frame["served_at"], unit="s", utc=True)
            tz = getattr(base[column].dtype, "tz", None)
            out[column] = served.dt.tz_convert(tz) if tz is not None else served.dt.tz_localize(None)
        else:
            raise InvalidInput(
                f"production rows cannot fill column {column!r} of the training dataset: it is not a model input, "
                f"the label {label!r}, the entity, a key of the dataset or the event time"
            )
    for column in base.columns:  # keep the dataset's types (a label sent as "1" is the integer 1 here)
        try:
            out[column] = out[column].astype(base[column].dtype)
        except (TypeError, ValueError):
            pass
    return out


def run_retrain(platform: Any, model: str, training_config: str | Path, *, recent_rows: int = 5000,
                reference_rows: int | None = None, result_key: str | None = None,
                log: StageLog | None = None) -> RetrainResult:
    """Retrain ``model`` on recent labelled production rows plus its reference data; register, do not alias.

    Raises:
        InvalidInput: the config trains another model, or production rows do not fit its dataset.
    """
    config = platform.config
    log = log or StageLog(total=7)
    if not log.total:  # the CLI's log: this pipeline says how many stages it runs
        log.total = 7
    cfg = load_train_config(training_config)
    if cfg.name != model:
        raise InvalidInput(f"{training_config} trains {cfg.name!r}, not {model!r}")
    catalog = DatasetCatalog(platform.store)
    base_version = catalog.get(cfg.data.dataset)

    with log.stage(f"collect labelled production rows of {model} and the reference rows of {base_version.ref}"):
        monitor = MonitorClient.if_running(config, model)
        rows = monitor.labelled_rows(recent_rows) if monitor is not None and recent_rows else []
        if monitor is None:
            log.note(f"no monitor is running for {model}: no production rows to add")
        base = catalog.load(base_version).to_pandas()
        fv = cfg.data.feature_view
        entity = getattr(fv, "entity", None)
        timestamp = getattr(fv, "timestamp", None) or cfg.data.split.time_column
        if timestamp is not None and timestamp in base.columns:
            base = base.sort_values(timestamp, kind="stable")
        reference = base if reference_rows is None else base.tail(reference_rows)
        log.note(f"{len(rows):,} labelled production row(s); {len(reference):,} of {len(base):,} reference row(s)")

    dataset_ref = base_version.ref
    if rows:
        with log.stage(f"version the training window as a new version of {base_version.name}"):
            keys = tuple((base_version.spec or {}).get("key") or ())
            prod = production_frame(rows, base, label=cfg.data.label, entity=entity, timestamp=timestamp, keys=keys)
            window = pd.concat([reference, prod], ignore_index=True)
            spec = ValidationSpec.model_validate(base_version.spec) if base_version.spec else None
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{base_version.name}-retrain.parquet"
                window.to_parquet(path, index=False)
                result = ingest(config, base_version.name, str(path), spec=spec, who=f"autopilot:{model}",
                                lineage={"parents": [base_version.ref], "production_rows": len(prod),
                                         "reference_rows": len(reference), "model": model})
            dataset_ref = result.version.ref
            log.note(f"{dataset_ref}: {result.version.row_count:,} rows ({result.version.quarantined_count} quarantined)")
    data = cfg.data.model_copy(update={"dataset": dataset_ref})
    cfg = cfg.model_copy(update={"data": data})
    outcome = run_training(platform, cfg, log=log, set_alias=False,
                           lineage={"retrain": {"production_rows": len(rows), "reference_rows": len(reference)}})
    passed = bool(outcome.verdict and outcome.verdict.get("passed"))
    out = RetrainResult(
        model=outcome.model, version=int(outcome.model.split("@")[1]) if outcome.model else None,
        challenger=outcome.model if passed else None, gate=outcome.verdict, metrics=outcome.metrics,
        run_id=outcome.run_id, dataset_version=dataset_ref, production_rows=len(rows),
        reference_rows=len(reference), seconds=round(outcome.seconds, 2),
    )
    if result_key:
        write_retrain_result(platform.store, result_key, out)
    return out

