"""Offline evaluation of a model's predictions: metrics, per-slice metrics, plot data and an HTML report.

The promotion gate (``aiinfra.training.gate``) compares two ``EvaluationReport`` objects, and the registry
stores them next to a model version, so a report is plain data: JSON-safe floats (never NaN or inf) and
lists. A metric that is undefined on the data (ROC AUC with one class present, precision with no positive
prediction) is left out rather than stored as NaN, so a consumer can tell "not computable" from a number.

Everything here works on numpy arrays already in memory; no Ray, so it is unit-tested without a cluster.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from aiinfra.errors import InvalidInput
from aiinfra.reports.html import Cell, Image, Paragraph, Section, Table, render_page
from aiinfra.training.metrics import METRIC_DIRECTION

__all__ = [
    "EvaluationReport",
    "Task",
    "evaluate_predictions",
    "render_html",
]

Task = Literal["binary", "multiclass", "regression"]
TASKS: tuple[str, ...] = ("binary", "multiclass", "regression")

# Probabilities are clipped away from 0 and 1 before log_loss so one confident mistake costs a large but
# finite amount instead of inf, which JSON cannot carry.
_PROB_EPS = 1e-15
_SUM_TOLERANCE = 1e-3
_MAX_ROC_POINTS = 200
_MAX_SCATTER_POINTS = 500
_RESIDUAL_BINS = 20


class EvaluationReport(BaseModel):
    """Overall metrics, per-slice metrics and plot data for one set of predictions."""

    model_config = ConfigDict(extra="forbid")

    task: Task
    rows: int
    metrics: dict[str, float]
    # column -> slice value (as str) -> {"rows": n, metric: value, ...}
    slices: dict[str, dict[str, dict[str, float]]]
    curves: dict[str, Any]
    class_labels: list[Any] | None = None


# --------------------------------------------------------------------------------------------- validation


def _as_array(name: str, values: Any, dtype: Any = None) -> np.ndarray:
    try:
        return np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{name} is not numeric: {e}") from None


def _class_indexes(y_true: Any, k: int, task: str) -> np.ndarray:
    """y_true as int64 class indexes in [0, k); floats are accepted only when they hold whole numbers."""
    y = _as_array("y_true", y_true)
    if y.ndim != 1:
        raise InvalidInput(f"{task} y_true must be 1-D class indexes; got shape {y.shape}")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number):
        raise InvalidInput(f"{task} y_true must hold integer class indexes; got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise InvalidInput(f"{task} y_true must hold integer class indexes; found non-integer values")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= k)
    if bad.any():
        raise InvalidInput(
            f"{task} y_true class indexes must be in range 0..{k - 1}; found {int(y[bad][0])}"
        )
    return y


def _check_probabilities(p: np.ndarray) -> None:
    if not np.all(np.isfinite(p)):
        raise InvalidInput("y_score probabilities must be finite; found NaN or inf")
    if p.min() < 0.0 or p.max() > 1.0:
        raise InvalidInput(
            f"y_score probabilities must be within [0, 1]; found values in [{p.min():g}, {p.max():g}]"
        )


def _validate(
    task: str, y_true: Any, y_score: Any, class_labels: list | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (y_true, y_score, n_classes) as clean arrays, or raise InvalidInput naming the problem."""
    if task not in TASKS:
        raise InvalidInput(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    score = _as_array("y_score", y_score, dtype=float)
    if np.ndim(y_true) == 0 or score.ndim == 0:
        raise InvalidInput("y_true and y_score must be arrays with one entry per row, not scalars")
    n_true = len(y_true)
    if n_true == 0 or score.shape[0] == 0:
        raise InvalidInput("y_true and y_score must not be empty")
    if score.shape[0] != n_true:
        raise InvalidInput(f"length mismatch: y_true has {n_true} rows, y_score has {score.shape[0]}")

    if task == "regression":
        if class_labels is not None:
            raise InvalidInput("class_labels is only meaningful for binary or multiclass tasks")
        y = _as_array("y_true", y_true, dtype=float)
        if y.ndim != 1 or score.ndim != 1:
            raise InvalidInput(
                f"regression y_true and y_score must be 1-D; got shapes {y.shape} and {score.shape}"
            )
        if not (np.all(np.isfinite(y)) and np.all(np.isfinite(score))):
            raise InvalidInput("regression y_true and y_score must be finite; found NaN or inf")
        return y, score, 0

    if task == "binary":
        if score.ndim != 1:
            raise InvalidInput(f"binary y_score must be P(class 1) with shape (n,); got shape {score.shape}")
        k = 2
    else:
        if score.ndim != 2 or score.shape[1] < 2:
            raise InvalidInput(
                f"multiclass y_score must be probabilities with shape (n, k>=2); got shape {score.shape}"
            )
        k = score.shape[1]
    _check_probabilities(score)
    if task == "multiclass":
        sums = score.sum(axis=1)
        worst = int(np.argmax(np.abs(sums - 1.0)))
        if abs(sums[worst] - 1.0) > _SUM_TOLERANCE:
            raise InvalidInput(
                f"multiclass y_score rows must sum to 1 (tolerance {_SUM_TOLERANCE:g}); "
                f"row {worst} sums to {sums[worst]:.6g}"
            )
    if class_labels is not None and len(class_labels) != k:
        raise InvalidInput(f"class_labels has {len(class_labels)} entries; the {task} task has {k} classes")
    return _class_indexes(y_true, k, task), score, k


def _slice_keys(slices: Mapping[str, Any] | None, n: int) -> dict[str, np.ndarray]:
    """Each slice column as an object array of str(value), the key its rows are grouped by."""
    out: dict[str, np.ndarray] = {}
    for column, values in (slices or {}).items():
        if isinstance(values, (str, bytes)) or np.ndim(values) != 1:
            raise InvalidInput(f"slice column {column!r} must be a 1-D sequence of per-row values")
        keys = np.asarray([str(v) for v in values], dtype=object)
        if len(keys) != n:
            raise InvalidInput(f"slice column {column!r} has {len(keys)} values; expected {n} (one per row)")
        out[str(column)] = keys
    return out


# ------------------------------------------------------------------------------------------------ metrics


def _put(metrics: dict[str, float], name: str, value: Any) -> None:
    """Store a metric as a plain float, dropping it when it is not finite (undefined on this data)."""
    v = float(value)
    if math.isfinite(v):
        metrics[name] = v


def _calibration_bins(
    confidence: np.ndarray, hit: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-width bins over [0, 1]: (count, mean confidence, mean hit) for the non-empty bins only."""
    # A confidence of exactly 1.0 belongs to the last bin, not to a bin n_bins that does not exist.
    idx = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=confidence, minlength=n_bins)
    hit_sum = np.bincount(idx, weights=hit.astype(float), minlength=n_bins)
    keep = count > 0
    return count[keep], conf_sum[keep] / count[keep], hit_sum[keep] / count[keep]


def _ece(confidence: np.ndarray, hit: np.ndarray, n_bins: int) -> float:
    count, mean_conf, mean_hit = _calibration_bins(confidence, hit, n_bins)
    return float(np.sum(count / len(confidence) * np.abs(mean_hit - mean_conf)))


def _binary_metrics(y: np.ndarray, p: np.ndarray, n_bins: int) -> dict[str, float]:
    # sklearn inside: ~0.5 s to import; every config read (training.config -> gate -> here) would pay it.
    from sklearn.metrics import (
        accuracy_score,
        brier_score_loss,
        f1_score,
        log_loss,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    pred = (p >= 0.5).astype(np.int64)
    tp = int(np.sum((pred == 1) & (y == 1)))
    fp = int(np.sum((pred == 1) & (y == 0)))
    fn = int(np.sum((pred == 0) & (y == 1)))
    m: dict[str, float] = {}
    _put(m, "accuracy", accuracy_score(y, pred))
    # Each ratio is computed only when its denominator is non-zero; otherwise it is undefined, not 0.
    if tp + fp:
        _put(m, "precision", precision_score(y, pred, zero_division=0.0))
    if tp + fn:
        _put(m, "recall", recall_score(y, pred, zero_division=0.0))
    if tp + fp + fn:
        _put(m, "f1", f1_score(y, pred, zero_division=0.0))
    if 0 < y.sum() < len(y):
        _put(m, "roc_auc", roc_auc_score(y, p))
    _put(m, "log_loss", log_loss(y, np.clip(p, _PROB_EPS, 1 - _PROB_EPS), labels=[0, 1]))
    _put(m, "ece", _ece(p, y, n_bins))
    _put(m, "brier", brier_score_loss(y, p, labels=[0, 1]))
    return m


def _multiclass_metrics(y: np.ndarray, p: np.ndarray, n_bins: int) -> dict[str, float]:
    # sklearn inside: ~0.5 s to import; every config read (training.config -> gate -> here) would pay it.
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    k = p.shape[1]
    # Rows are accepted within 1e-3 of summing to 1, but scikit-learn checks far tighter; renormalise.
    clipped = np.clip(p, _PROB_EPS, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    pred = np.argmax(p, axis=1)
    m: dict[str, float] = {}
    _put(m, "accuracy", accuracy_score(y, pred))
    # Macro over the classes seen in y_true or predicted: every such class has a defined F1.
    _put(m, "f1_macro", f1_score(y, pred, average="macro", zero_division=0.0))
    _put(m, "log_loss", log_loss(y, clipped, labels=list(range(k))))
    _put(m, "ece", _ece(p.max(axis=1), pred == y, n_bins))
    if len(np.unique(y)) == k:
        auc = roc_auc_score(y, clipped, multi_class="ovr", average="macro", labels=list(range(k)))
        _put(m, "roc_auc_ovr", auc)
    return m


def _regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    # sklearn inside: ~0.5 s to import; every config read (training.config -> gate -> here) would pay it.
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    m: dict[str, float] = {}
    _put(m, "rmse", math.sqrt(mean_squared_error(y, pred)))
    _put(m, "mae", mean_absolute_error(y, pred))
    # R^2 divides by the variance of y_true; with a constant target it is undefined (scikit-learn would
    # quietly report 0 or 1 instead).
    if len(y) >= 2 and np.ptp(y) > 0:
        _put(m, "r2", r2_score(y, pred))
    return m


def _metrics(task: str, y: np.ndarray, score: np.ndarray, n_bins: int) -> dict[str, float]:
    if task == "binary":
        return _binary_metrics(y, score, n_bins)
    if task == "multiclass":
        return _multiclass_metrics(y, score, n_bins)
    return _regression_metrics(y, score)


# ------------------------------------------------------------------------------------------------- curves


def _downsample(n: int, limit: int) -> np.ndarray:
    """At most ``limit`` evenly spaced indexes in [0, n), always keeping the first and last."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def _calibration_curve(confidence: np.ndarray, hit: np.ndarray, n_bins: int, keys: tuple[str, str]) -> dict:
    count, mean_conf, mean_hit = _calibration_bins(confidence, hit, n_bins)
    return {keys[0]: mean_conf.tolist(), keys[1]: mean_hit.tolist(), "count": count.tolist()}


def _classification_curves(task: str, y: np.ndarray, p: np.ndarray, k: int, n_bins: int) -> dict[str, Any]:
    # sklearn inside: ~0.5 s to import; every config read (training.config -> gate -> here) would pay it.
    from sklearn.metrics import confusion_matrix, roc_curve

    curves: dict[str, Any] = {}
    if task == "binary":
        pred = (p >= 0.5).astype(np.int64)
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, p)
            keep = _downsample(len(fpr), _MAX_ROC_POINTS)
            curves["roc"] = {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}
        curves["calibration"] = _calibration_curve(p, y, n_bins, ("mean_predicted", "fraction_positive"))
    else:
        pred = np.argmax(p, axis=1)
        # Top-label calibration: confidence of the predicted class against whether it was right.
        curves["calibration"] = _calibration_curve(
            p.max(axis=1), pred == y, n_bins, ("mean_confidence", "accuracy")
        )
    curves["confusion_matrix"] = confusion_matrix(y, pred, labels=list(range(k))).tolist()
    return curves


def _regression_curves(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    counts, edges = np.histogram(y - pred, bins=_RESIDUAL_BINS)
    # A fixed seed keeps the sample, and so the report, identical across runs on the same predictions.
    if len(y) > _MAX_SCATTER_POINTS:
        idx = np.sort(np.random.default_rng(0).choice(len(y), _MAX_SCATTER_POINTS, replace=False))
    else:
        idx = np.arange(len(y))
    return {
        "residuals": {"edges": edges.tolist(), "counts": counts.tolist()},
        "pred_vs_true": {"true": y[idx].tolist(), "pred": pred[idx].tolist()},
    }


# ------------------------------------------------------------------------------------------------- slices


def _slice_metrics(
    task: str, y: np.ndarray, score: np.ndarray, columns: dict[str, np.ndarray], min_rows: int, n_bins: int
) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for column, keys in columns.items():
        groups: dict[str, dict[str, float]] = {}
        for key in sorted(set(keys.tolist())):
            mask = keys == key
            n = int(mask.sum())
            entry = {"rows": float(n)}
            # Metrics on a handful of rows are noise; the gate would react to it, so small slices are
            # reported by size only.
            if n >= min_rows:
                entry.update(_metrics(task, y[mask], score[mask], n_bins))
            groups[key] = entry
        out[column] = groups
    return out


def _json_label(label: Any) -> Any:
    # numpy scalars (np.int64, np.str_) are not JSON-serialisable by pydantic; their Python value is.
    return label.item() if isinstance(label, np.generic) else label


def evaluate_predictions(
    task: Task,
    y_true: Sequence[Any] | np.ndarray,
    y_score: Sequence[Any] | np.ndarray,
    *,
    class_labels: list | None = None,
    slices: Mapping[str, Sequence[Any] | np.ndarray] | None = None,
    min_slice_rows: int = 30,
    n_bins: int = 10,
) -> EvaluationReport:
    """Score predictions for ``task`` overall and per slice, with plot data; see the module docstring.

    binary: y_true 0/1, y_score P(class 1) of shape (n,). multiclass: y_true 0..k-1, y_score (n, k)
    probabilities. regression: y_true and y_score (the predictions) floats of shape (n,).
    """
    if isinstance(min_slice_rows, bool) or not isinstance(min_slice_rows, int) or min_slice_rows < 1:
        raise InvalidInput(f"min_slice_rows must be an integer >= 1; got {min_slice_rows!r}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise InvalidInput(f"n_bins must be an integer >= 1; got {n_bins!r}")
    y, score, k = _validate(task, y_true, y_score, class_labels)
    columns = _slice_keys(slices, len(y))
    if task == "regression":
        curves = _regression_curves(y, score)
    else:
        curves = _classification_curves(task, y, score, k, n_bins)
    return EvaluationReport(
        task=task,
        rows=len(y),
        metrics=_metrics(task, y, score, n_bins),
        slices=_slice_metrics(task, y, score, columns, min_slice_rows, n_bins),
        curves=curves,
        class_labels=None if class_labels is None else [_json_label(c) for c in class_labels],
    )


# --------------------------------------------------------------------------------------------------- HTML
# The page goes through aiinfra.reports (templates and one figure helper). Its figures module imports
# matplotlib, which costs a few hundred ms; the gate and the training workers import this module and never
# draw, so it is imported where the plots are drawn.

_FIGSIZE = (4.0, 3.0)
_DPI = 80


def _figure() -> tuple[Any, Any]:
    # matplotlib inside: see the note above on the figures module.
    from aiinfra.reports.figures import new_figure

    fig = new_figure(*_FIGSIZE, dpi=_DPI, layout="tight")
    return fig, fig.add_subplot(1, 1, 1)


def _image(fig: Any, caption: str) -> Image:
    # matplotlib inside: see the note above on the figures module.
    from aiinfra.reports.figures import data_uri

    return Image(data_uri(fig), alt=caption, caption=caption)


def _plot_confusion(matrix: list[list[int]], labels: list[str]) -> Image:
    fig, ax = _figure()
    cm = np.asarray(matrix)
    ax.imshow(cm, cmap="Blues")
    ticks = range(len(labels))
    ax.set_xticks(list(ticks), labels=labels, rotation=45 if len(labels) > 4 else 0)
    ax.set_yticks(list(ticks), labels=labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    # Cell counts are written only when readable; a large k would be a wall of overlapping numbers.
    if len(labels) <= 12:
        threshold = cm.max() / 2 if cm.size else 0
        for i in ticks:
            for j in ticks:
                color = "white" if cm[i, j] > threshold else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8, color=color)
    return _image(fig, "Confusion matrix")


def _plot_roc(roc: Mapping[str, list[float]]) -> Image:
    fig, ax = _figure()
    ax.plot(roc["fpr"], roc["tpr"], label="model")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right", fontsize=8)
    return _image(fig, "ROC curve")


def _plot_calibration(cal: Mapping[str, list[float]], task: str) -> Image:
    fig, ax = _figure()
    if task == "binary":
        x, y = cal["mean_predicted"], cal["fraction_positive"]
        xlabel, ylabel = "mean P(class 1)", "fraction positive"
    else:
        x, y = cal["mean_confidence"], cal["accuracy"]
        xlabel, ylabel = "mean top-label confidence", "accuracy"
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.plot(x, y, marker="o")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _image(fig, "Reliability diagram")


def _plot_residuals(hist: Mapping[str, list[float]]) -> Image:
    fig, ax = _figure()
    edges = np.asarray(hist["edges"])
    ax.bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge", edgecolor="white")
    ax.set_xlabel("residual (true - predicted)")
    ax.set_ylabel("rows")
    return _image(fig, "Residuals")


def _plot_pred_vs_true(points: Mapping[str, list[float]]) -> Image:
    fig, ax = _figure()
    ax.scatter(points["true"], points["pred"], s=6, alpha=0.6)
    lo = min(min(points["true"]), min(points["pred"]))
    hi = max(max(points["true"]), max(points["pred"]))
    ax.plot([lo, hi], [lo, hi], linestyle="--", color="grey")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    return _image(fig, "Predicted vs true")


def _plot_history(history: Sequence[Mapping[str, Any]]) -> Image | None:
    keys = [k for k in ("train_loss", "val_loss") if any(k in row for row in history)]
    if not keys:
        return None
    fig, ax = _figure()
    for key in keys:
        rows = [(row.get("epoch", i), row[key]) for i, row in enumerate(history) if row.get(key) is not None]
        ax.plot([r[0] for r in rows], [float(r[1]) for r in rows], marker=".", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    return _image(fig, "Loss curves")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) and abs(value) < 1e6 else f"{value:.6g}"
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    """Numbers (not bools) are right-aligned."""
    return Table(header, [[Cell(_fmt(cell), isinstance(cell, (int, float)) and not isinstance(cell, bool))
                           for cell in row] for row in rows])


def _slice_table(report: EvaluationReport) -> Table:
    names = list(report.metrics)
    rows: list[list[Any]] = []
    for column, groups in report.slices.items():
        for value, entry in groups.items():
            rows.append([column, value, int(entry.get("rows", 0))] + [entry.get(m, "—") for m in names])
    return _table(["column", "value", "rows", *names], rows)


def _plots(report: EvaluationReport, history: Sequence[Mapping[str, Any]] | None) -> list[Image]:
    curves = report.curves
    plots: list[Image] = []
    if "confusion_matrix" in curves:
        labels = [str(c) for c in report.class_labels] if report.class_labels else [
            str(i) for i in range(len(curves["confusion_matrix"]))
        ]
        plots.append(_plot_confusion(curves["confusion_matrix"], labels))
    if "roc" in curves:
        plots.append(_plot_roc(curves["roc"]))
    if "calibration" in curves:
        plots.append(_plot_calibration(curves["calibration"], report.task))
    if "residuals" in curves:
        plots.append(_plot_residuals(curves["residuals"]))
    if curves.get("pred_vs_true", {}).get("true"):
        plots.append(_plot_pred_vs_true(curves["pred_vs_true"]))
    if history:
        loss = _plot_history(history)
        if loss:
            plots.append(loss)
    return plots


def render_html(
    report: EvaluationReport,
    *,
    title: str,
    history: Sequence[Mapping[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """One self-contained HTML page (no external resources; plots are embedded PNGs) for ``report``.

    ``history`` is the per-epoch list of dicts from training (``epoch``, ``train_loss``, ``val_loss``);
    ``extra`` is shown as a key/value table (run id, dataset version, gate verdict, ...).
    """
    sections = []
    if extra:
        sections.append(Section("Details", [_table(["key", "value"], [[str(k), v] for k, v in extra.items()])]))
    metric_rows = [[name, value, METRIC_DIRECTION.get(name, "")] for name, value in report.metrics.items()]
    sections.append(Section("Metrics", [_table(["metric", "value", "better"], metric_rows)]))
    if report.slices:
        sections.append(Section("Slices", [_slice_table(report)]))
    plots = _plots(report, history)
    if plots:
        sections.append(Section("Plots", plots))
    return render_page(title=title, stylesheet="evaluation.css",
                       lead=[Paragraph(f"Task: {report.task}; rows: {report.rows}")], sections=sections)
