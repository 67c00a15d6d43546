"""Judging a saved model directory on labelled rows: its scores there, its evaluation report, the promotion gate
against the current champion on the same rows.

One implementation for every way a version is made (trained, imported, exported, quantized), so they are all
scored, reported and gated the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aiinfra.errors import InvalidInput, NotFound
from aiinfra.training.evaluation import EvaluationReport, evaluate_predictions
from aiinfra.training.gate import GateConfig, GateVerdict, promotion_gate
from aiinfra.training.model_dir import ModelSpec, load_model_dir
from aiinfra.training.tabular import encode_labels

__all__ = ["gate_against_champion", "holdout_outputs", "report_on"]


def holdout_outputs(model_dir: Path, holdout: pd.DataFrame, label: str) -> tuple[ModelSpec, np.ndarray, np.ndarray]:
    """(spec, the saved model's outputs on ``holdout``, the true labels: class indexes or values)."""
    spec, model, pre = load_model_dir(model_dir)
    if label not in holdout.columns:
        raise InvalidInput(f"the holdout rows have no label column {label!r}")
    scores = model.scores(pre.transform(holdout))
    # Regression: the label as it is (in the target's units, as the scores are), not standardized.
    y = encode_labels(spec.task, holdout[label], spec.class_labels)
    y_true = holdout[label].to_numpy(dtype=np.float64) if spec.task == "regression" else y.astype(np.int64)
    return spec, scores, y_true


def report_on(outputs: tuple[ModelSpec, np.ndarray, np.ndarray], holdout: pd.DataFrame,
              slices: Sequence[str] = ()) -> EvaluationReport:
    """The evaluation report of ``outputs`` (from ``holdout_outputs``), per slice of ``holdout``'s columns."""
    spec, scores, y_true = outputs
    by = {c: holdout[c].astype(str).to_numpy() for c in slices if c in holdout.columns}
    return evaluate_predictions(spec.task, y_true, scores, class_labels=list(spec.class_labels) or None,  # type: ignore[arg-type]
                                slices=by)


def gate_against_champion(platform: Any, name: str, gate: GateConfig, report: EvaluationReport, holdout: pd.DataFrame,
                          label: str, slices: Sequence[str], workdir: Path) -> GateVerdict:
    """``gate``'s verdict on ``report`` against ``name@champion`` scored on the same rows (or alone, when there
    is no champion, or it cannot be scored on them)."""
    try:
        champion = platform.registry.get(f"{name}@champion")
    except NotFound:
        return promotion_gate(report, None, gate)
    champion_dir = platform.registry.download(champion, workdir / "champion")
    try:
        champion_report = report_on(holdout_outputs(champion_dir, holdout, label), holdout, slices)
    except InvalidInput as e:
        verdict = promotion_gate(report, None, gate)
        return verdict.model_copy(update={"reason": f"champion {champion.ref} cannot be scored on these rows ({e.message}); "
                                                    "the candidate passes on its own"})
    verdict = promotion_gate(report, champion_report, gate)
    return verdict.model_copy(update={"reason": f"vs champion {champion.ref}: {verdict.reason}"})
