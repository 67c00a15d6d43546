"""The retraining pipeline: recent labelled production rows + the reference data -> a challenger.

What the autopilot submits as a Ray job (``jobs/retrain.py``), and what a person can run by hand::

    labelled production rows (the monitor's, features + label + serving time)
      + the most recent ``reference_rows`` of the training dataset
      -> a trusted holdout: the newest labelled rows whose labels came from a token that may label any request
         (labeller, admin), or, with fewer than ``min_trusted_holdout`` of those, the newest reference rows
      -> a new version of that dataset from the rest (validated by its own spec; lineage names every part),
         with the rows labelled by ``feedback`` tokens (a client reporting its own outcomes) capped at
         ``max_untrusted_share`` of it
      -> the training pipeline on that version, judged on the trusted holdout (its gate compares the result
         with the champion on the same rows)
      -> a registered version, NOT aliased: the autopilot starts its canary.

Why the holdout is trusted: the gate is what stands between a retrain and a canary. Judged on the newest
production rows, it would be judged on the labels a client sent, so whoever sends the labels would also
write the exam. A client's own labels may still teach the model (capped), never grade it.

Production rows carry only the model's inputs; the dataset's other columns are filled so that the
training config's point-in-time feature lookup finds each row's own features: a fresh entity id
per row, and the serving time as the event time. The result (the registered version, the gate's
verdict) is written to ``result_key`` in the artifact store, where the autopilot reads it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aiinfra.autopilot.retrain_result import RetrainResult, write_retrain_result
from aiinfra.data.spec import ValidationSpec
from aiinfra.errors import InvalidInput
from aiinfra.monitoring.client import MonitorClient
from aiinfra.pipelines.ingest import ingest
from aiinfra.pipelines.progress import StageLog
from aiinfra.pipelines.train import run_training
from aiinfra.storage import open_metadata_db
from aiinfra.training.config import load_train_config

__all__ = ["TrainingWindow", "production_frame", "run_retrain", "split_production_rows"]


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


def label_is_trusted(row: Mapping[str, Any]) -> bool:
    """Whether a labelled row's label came from a token that may label any request (or an open endpoint).
    Rows from a monitor older than the flag count as trusted only when no token labelled them."""
    trusted = row.get("label_trusted")
    return row.get("labelled_by") is None if trusted is None else bool(trusted)


@dataclass(frozen=True)
class TrainingWindow:
    """How a retrain's labelled production rows are used: ``holdout`` judges, ``train`` teaches."""

    train: list[dict[str, Any]]
    holdout: list[dict[str, Any]]
    trusted: int  # labelled by a labeller / admin token (or an open endpoint)
    untrusted: int  # labelled by the token that made the request (a feedback token)
    untrusted_left_out: int  # past max_untrusted_share

    @property
    def holdout_source(self) -> str:
        return "trusted production rows" if self.holdout else "reference rows"


def trusted_holdout_rows(trusted: int, holdout_fraction: float, min_trusted_holdout: int) -> int:
    """How many of ``trusted`` trusted labelled rows judge the retrain: ``holdout_fraction`` of them, or 0 (the
    reference rows judge) when that is fewer than ``min_trusted_holdout``."""
    n = int(trusted * holdout_fraction)
    return n if n >= min_trusted_holdout else 0


def split_production_rows(rows: Sequence[Mapping[str, Any]], *, reference_rows: int, holdout_fraction: float,
                          min_trusted_holdout: int, max_untrusted_share: float) -> TrainingWindow:
    """Which production rows judge the retrain (the newest ``holdout_fraction`` of the trusted ones, when that is
    at least ``min_trusted_holdout`` rows; else none, and the caller holds out reference rows) and which train it:
    the other trusted rows, and the newest untrusted ones up to ``max_untrusted_share`` of everything trained on.

    ``reference_rows``: the reference rows that will train beside them (after any reference holdout)."""
    ordered = sorted(rows, key=lambda r: float(r.get("served_at") or 0.0))  # oldest first, stable
    trusted = [dict(r) for r in ordered if label_is_trusted(r)]
    untrusted = [dict(r) for r in ordered if not label_is_trusted(r)]
    n_holdout = trusted_holdout_rows(len(trusted), holdout_fraction, min_trusted_holdout)
    holdout: list[dict[str, Any]] = []
    if n_holdout:
        trusted, holdout = trusted[:len(trusted) - n_holdout], trusted[len(trusted) - n_holdout:]
    others = reference_rows + len(trusted)
    # untrusted <= share * (others + untrusted)  <=>  untrusted <= share / (1 - share) * others
    cap = len(untrusted) if max_untrusted_share >= 1.0 else int(max_untrusted_share / (1.0 - max_untrusted_share) * others)
    kept = untrusted[len(untrusted) - cap:] if cap < len(untrusted) else untrusted
    train = sorted(trusted + kept, key=lambda r: float(r.get("served_at") or 0.0))
    return TrainingWindow(train=train, holdout=holdout, trusted=len(trusted) + len(holdout), untrusted=len(untrusted),
                          untrusted_left_out=len(untrusted) - len(kept))


def run_retrain(platform: Any, model: str, training_config: str | Path, *, recent_rows: int = 5000,
                reference_rows: int | None = None, result_key: str | None = None,
                min_trusted_holdout: int = 100, max_untrusted_share: float = 0.3,
                log: StageLog | None = None) -> RetrainResult:
    """Retrain ``model`` on recent labelled production rows plus its reference data, judged on a trusted holdout
    (the module's note); register, do not alias.

    Raises:
        InvalidInput: the config trains another model, or production rows do not fit its dataset.
    """
    config = platform.config
    log = log or StageLog(total=8)
    if not log.total:  # the CLI's log: this pipeline says how many stages it runs
        log.total = 8
    cfg = load_train_config(training_config)
    if cfg.name != model:
        raise InvalidInput(f"{training_config} trains {cfg.name!r}, not {model!r}")
    if not 0.0 <= max_untrusted_share <= 1.0:
        raise InvalidInput(f"max_untrusted_share is a share of the training rows, 0 to 1; got {max_untrusted_share}")
    catalog = platform.datasets
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

    with log.stage("choose the trusted holdout and cap the clients' own labels"):
        fraction = cfg.data.split.holdout_fraction
        n_reference_holdout = max(1, int(len(reference) * fraction))
        held_reference = reference.iloc[0:0]
        if not trusted_holdout_rows(sum(map(label_is_trusted, rows)), fraction, min_trusted_holdout):
            # too few trusted labels: the newest reference rows (the curated data) judge
            held_reference, reference = reference.tail(n_reference_holdout), reference.iloc[:len(reference) - n_reference_holdout]
        window = split_production_rows(rows, reference_rows=len(reference), holdout_fraction=fraction,
                                       min_trusted_holdout=min_trusted_holdout, max_untrusted_share=max_untrusted_share)
        holdout_rows = len(window.holdout) or len(held_reference)
        log.note(f"holdout: {holdout_rows:,} {window.holdout_source}; production rows: {window.trusted:,} labelled by a "
                 f"trusted role, {window.untrusted:,} by the client that made the request"
                 + (f" ({window.untrusted_left_out:,} left out: at most {max_untrusted_share:.0%} of the training rows)"
                    if window.untrusted_left_out else ""))

    keys = tuple((base_version.spec or {}).get("key") or ())
    spec = ValidationSpec.model_validate(base_version.spec) if base_version.spec else None
    lineage = {"parents": [base_version.ref], "model": model, "holdout": window.holdout_source,
               "trusted_rows": window.trusted, "untrusted_rows": window.untrusted,
               "untrusted_left_out": window.untrusted_left_out}
    # One frame for every production row, so the fresh entity ids and keys are unique across train and holdout.
    prod = production_frame([*window.train, *window.holdout], base, label=cfg.data.label, entity=entity,
                            timestamp=timestamp, keys=keys) if rows else base.iloc[0:0]
    train_prod, holdout_prod = prod.iloc[:len(window.train)], prod.iloc[len(window.train):]
    holdout = holdout_prod if window.holdout else held_reference
    if not len(holdout):
        raise InvalidInput(
            f"nothing to judge the retrain of {model} on: no reference rows (reference_rows={reference_rows}) and "
            f"{window.trusted} row(s) labelled by a trusted role, fewer than min_trusted_holdout "
            f"{min_trusted_holdout} / holdout_fraction {fraction:g}; keep some reference rows or label with a "
            "labeller token")

    with log.stage(f"version the holdout and the training window as new versions of {base_version.name}"):
        # The holdout is a version of its own: the gate's rows, apart from what trains. It is a version of the
        # same dataset, so that a feature view whose source is that dataset finds the holdout rows' features in
        # the holdout itself, as the training rows find theirs in the window. Its size is what it is: the
        # dataset's row bounds do not apply to it. The window is versioned last, so it is the dataset's latest.
        holdout_spec = spec.model_copy(update={"min_rows": 1, "max_rows": None}) if spec is not None else None
        holdout_version = _ingest_frame(config, base_version.name, holdout.reset_index(drop=True), holdout_spec,
                                        who=f"autopilot:{model}", lineage={**lineage, "role": "holdout",
                                                                           "rows": len(holdout)})
        train_version = _ingest_frame(config, base_version.name, pd.concat([reference, train_prod], ignore_index=True),
                                      spec, who=f"autopilot:{model}", lineage={
                                          **lineage, "role": "training", "production_rows": len(train_prod),
                                          "reference_rows": len(reference), "holdout_version": holdout_version.ref})
        log.note(f"{train_version.ref}: {train_version.row_count:,} rows to train on; "
                 f"{holdout_version.ref}: {holdout_version.row_count:,} to judge on")

    split = cfg.data.split.model_copy(update={"holdout_dataset": holdout_version.ref})
    data = cfg.data.model_copy(update={"dataset": train_version.ref, "split": split})
    cfg = cfg.model_copy(update={"data": data})
    outcome = run_training(platform, cfg, log=log, set_alias=False, lineage={"retrain": {
        "production_rows": len(train_prod), "reference_rows": len(reference), "holdout": window.holdout_source,
        "holdout_rows": len(holdout), "untrusted_left_out": window.untrusted_left_out}})
    passed = bool(outcome.verdict and outcome.verdict.get("passed"))
    out = RetrainResult(
        model=outcome.model, version=int(outcome.model.split("@")[1]) if outcome.model else None,
        challenger=outcome.model if passed else None, gate=outcome.verdict, metrics=outcome.metrics,
        run_id=outcome.run_id, dataset_version=train_version.ref, production_rows=len(train_prod),
        reference_rows=len(reference), holdout=window.holdout_source, holdout_dataset=holdout_version.ref,
        holdout_rows=len(holdout), trusted_rows=window.trusted, untrusted_rows=window.untrusted,
        untrusted_left_out=window.untrusted_left_out, seconds=round(outcome.seconds, 2),
    )
    if result_key:
        db = open_metadata_db(config.metadata_url)
        try:
            write_retrain_result(platform.store, db, result_key, out)
        finally:
            db.close()
    return out


def _ingest_frame(config: Any, name: str, frame: pd.DataFrame, spec: ValidationSpec | None, *, who: str,
                  lineage: dict[str, Any]) -> Any:
    """``frame`` through the ingestion gate as a new version of dataset ``name``; the version."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.parquet"
        frame.to_parquet(path, index=False)
        return ingest(config, name, str(path), spec=spec, who=who, lineage=lineage).version
