"""Variants of a registered version: the same model as ONNX, or compressed, made and judged against its parent.

    download the parent -> make the variant's model directory (export, quantize) -> score parent and variant on
    the parent's holdout rows (its reference profile: up to 5,000 rows the model never trained on, with labels)
    -> the check: an export must give the parent's answers (within a stated tolerance); a compressed variant may
    lose at most ``max_loss`` of the gate metric -> size and single-row latency of both, measured here, in one
    run -> registered as the next version of the same model, its lineage naming the parent and the method.

A variant that fails its check is refused with the numbers, and nothing is registered. No alias is set: the
variant serves once someone (or a canary) promotes it, like any challenger.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aiinfra.errors import InvalidInput
from aiinfra.inference.predictor import Predictor, rows_from_frame
from aiinfra.monitoring.profile import PROFILE, PROFILE_META, build_profile, load_profile, write_profile
from aiinfra.pipelines.progress import StageLog
from aiinfra.training.compress import fit, prune_mlp, soft_targets
from aiinfra.training.evaluation import evaluate_predictions
from aiinfra.training.gate import GateConfig, promotion_gate
from aiinfra.training.metrics import higher_is_better
from aiinfra.training.model_dir import ModelSpec, load_model_dir, save_model_dir
from aiinfra.training.models import build_model
from aiinfra.training.onnx_export import export_to_onnx, quantize_int8
from aiinfra.training.runtimes import ONNX_FAMILY, WEIGHTS_FILE, TorchModel
from aiinfra.training.tabular import encode_labels

__all__ = ["EXPORT_TOLERANCE", "VariantOutcome", "export_version", "optimize_version"]

# An export computes the same function in another runtime: float32 kernels that sum in another order differ in
# the last bits. 1e-4 on a probability (or on a prediction, per unit of the target's standard deviation) is
# far above that noise and far below any difference that could change a decision.
EXPORT_TOLERANCE = 1e-4
DEFAULT_METRIC = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "rmse"}
LATENCY_CALLS = 300
# The files a variant takes from its parent as they are (its recipe too: a retrain from a variant trains the
# parent's family again, and is gated against the variant like any challenger).
KEPT = ("training_config.json",)


@dataclass
class VariantOutcome:
    parent: str
    method: str
    model: str | None  # the registered version; None when only written out
    metric: str
    parent_metric: float
    variant_metric: float
    max_abs_difference: float
    parent_bytes: int
    variant_bytes: int
    parent_latency_ms: float
    variant_latency_ms: float
    rows: int
    directory: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def _weights(directory: Path, spec: ModelSpec) -> Path:
    return directory / WEIGHTS_FILE["torch" if spec.family not in WEIGHTS_FILE else spec.family]


def _single_row_ms(predictors: list[Predictor], row: dict[str, Any]) -> list[float]:
    """Median milliseconds of one-row predict() for each predictor, calls interleaved so both see the same machine."""
    times: list[list[float]] = [[] for _ in predictors]
    for p in predictors:  # warm up: first calls allocate
        for _ in range(10):
            p.predict([row])
    for _ in range(LATENCY_CALLS):
        for i, p in enumerate(predictors):
            t0 = time.perf_counter()
            p.predict([row])
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) * 1000 for t in times]


def _make_variant(platform: Any, ref: str, method: str,
                  build: Callable[[ModelSpec, Any, Path], tuple[ModelSpec, dict[str, Any] | bytes]],
                  judge: Callable[[ModelSpec, dict[str, float], dict[str, float], float], tuple[bool, str]], *,
                  metric: str | None, register: bool, out: Path | None, log: StageLog) -> VariantOutcome:
    registry = platform.registry
    parent = registry.get(ref)
    workdir = Path(tempfile.mkdtemp(prefix="aiinfra-variant-"))
    try:
        with log.stage(f"load {parent.ref} and its holdout rows"):
            parent_dir = registry.download(parent, workdir / "parent")
            spec, model, pre = load_model_dir(parent_dir)
            if not (parent_dir / PROFILE).exists():
                raise InvalidInput(f"{parent.ref} has no reference profile ({PROFILE}), so there are no holdout rows to "
                                   "judge a variant on; register it through training or `aiinfra models import`")
            profile = load_profile((parent_dir / PROFILE).read_bytes(), (parent_dir / PROFILE_META).read_bytes())
            if profile.labels is None:
                raise InvalidInput(f"{parent.ref}'s reference profile has no labels to judge a variant on")
            frame = profile.frame
            x = pre.transform_columns({c: frame[c] for c in frame.columns}, len(frame))
            labels = profile.labels if spec.task == "regression" else profile.labels.astype(np.int64)
            log.note(f"{spec.family} model, {len(frame):,} holdout rows from {profile.source}")

        with log.stage(f"make the variant ({method})"):
            variant_dir = workdir / "variant"
            variant_spec, weights = build(spec, model, parent_dir)
            save_model_dir(variant_dir, variant_spec, weights, pre)
            for name in KEPT:
                if (parent_dir / name).exists():
                    shutil.copy2(parent_dir / name, variant_dir / name)
            _, variant, _ = load_model_dir(variant_dir)
            log.note(f"{_weights(parent_dir, spec).name} {_weights(parent_dir, spec).stat().st_size:,} B -> "
                     f"{_weights(variant_dir, variant_spec).name} {_weights(variant_dir, variant_spec).stat().st_size:,} B")

        with log.stage("judge it against the parent on the same rows"):
            metric = metric or DEFAULT_METRIC[spec.task]
            higher_is_better(metric)  # an unknown metric is named before anything is scored
            p_scores, v_scores = model.scores(x), variant.scores(x)
            scale = spec.target_std if spec.task == "regression" else 1.0
            diff = float(np.max(np.abs(p_scores - v_scores)) / scale) if len(x) else 0.0
            labels_list = list(spec.class_labels) or None
            p_metrics = evaluate_predictions(spec.task, labels, p_scores, class_labels=labels_list).metrics  # type: ignore[arg-type]
            v_metrics = evaluate_predictions(spec.task, labels, v_scores, class_labels=labels_list).metrics  # type: ignore[arg-type]
            if metric not in v_metrics:
                raise InvalidInput(f"metric {metric!r} is not measured for {spec.task}; measured: {', '.join(sorted(v_metrics))}")
            passed, reason = judge(spec, p_metrics, v_metrics, diff)
            log.note(f"{'PASS' if passed else 'FAIL'}: {reason}")
            if not passed:
                raise InvalidInput(f"the {method} variant of {parent.ref} is refused, nothing registered: {reason}")
            row = rows_from_frame(frame.head(1), parent.signature.inputs)[0] if parent.signature else None
            latency = [float("nan")] * 2
            if row is not None:
                latency = _single_row_ms([Predictor(parent, parent_dir), Predictor(parent, variant_dir)], row)
            p_bytes, v_bytes = _weights(parent_dir, spec).stat().st_size, _weights(variant_dir, variant_spec).stat().st_size
            log.note(f"single-row predict {latency[0]:.3f} ms -> {latency[1]:.3f} ms (median of {LATENCY_CALLS}); "
                     f"size {p_bytes:,} B -> {v_bytes:,} B")
            write_profile(build_profile(frame, [f for f in (parent.signature.inputs if parent.signature else [])
                                                if f.name in frame.columns],
                                        task=spec.task, class_labels=list(spec.class_labels), outputs=v_scores,
                                        labels=profile.labels, source=profile.source), variant_dir)

        outcome = VariantOutcome(parent=parent.ref, method=method, model=None, metric=metric,
                                 parent_metric=p_metrics[metric], variant_metric=v_metrics[metric], max_abs_difference=diff,
                                 parent_bytes=p_bytes, variant_bytes=v_bytes, parent_latency_ms=latency[0],
                                 variant_latency_ms=latency[1], rows=len(frame))
        if out is not None:
            out = Path(out)
            if out.exists() and any(out.iterdir()):
                raise InvalidInput(f"{out} exists and is not empty; name a new directory")
            shutil.copytree(variant_dir, out, dirs_exist_ok=True)
            outcome.directory = str(out)
        if register:
            with log.stage("register the variant with its lineage"):
                digest = hashlib.sha256(_weights(variant_dir, variant_spec).read_bytes()).hexdigest()
                lineage = {**{k: v for k, v in parent.lineage.model_dump().items() if k in
                              ("dataset_version", "feature_view", "run_id", "code_version")},
                           "parent_version": parent.version, "parent": parent.ref, "method": method,
                           "check": {"passed": True, "reason": reason, "rows": len(frame), "metric": metric,
                                     "parent": p_metrics[metric], "variant": v_metrics[metric],
                                     "max_abs_difference": diff},
                           "size_bytes": {"parent": p_bytes, "variant": v_bytes},
                           "single_row_ms": {"parent": round(latency[0], 4), "variant": round(latency[1], 4)}}
                version = registry.register(parent.name, variant_dir, metrics=v_metrics,
                                            params={**parent.params, "family": variant_spec.family,
                                                    **variant_spec.params, "method": method},
                                            signature=parent.signature, lineage=lineage,
                                            idempotency_key=f"variant-{parent.ref}-{method}-{digest[:24]}")
                outcome.model = version.ref
                log.note(f"registered {version.ref} (parent {parent.ref}, {method}); no alias set: "
                         f"`aiinfra models alias {parent.name} {version.version} challenger` to canary it")
        return outcome
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def export_version(platform: Any, ref: str, *, out: str | Path | None = None, register: bool = False,
                   tolerance: float = EXPORT_TOLERANCE, log: StageLog | None = None) -> VariantOutcome:
    """``ref`` as an ONNX model: written to ``out`` (a model directory) and/or registered; its answers on the
    parent's holdout rows must match the parent's within ``tolerance``."""
    if out is None and not register:
        raise InvalidInput("say where the export goes: an output directory, or register it as a version")
    if out is not None and Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise InvalidInput(f"{out} exists and is not an empty directory; name a new one")  # before any work
    log = log or StageLog(total=4 if register else 3)

    def build(spec: ModelSpec, model: Any, _: Path) -> tuple[ModelSpec, bytes]:
        return export_to_onnx(spec, model, method="export:onnx")

    def judge(spec: ModelSpec, p: dict[str, float], v: dict[str, float], diff: float) -> tuple[bool, str]:
        unit = " (per target standard deviation)" if spec.task == "regression" else ""
        ok = diff <= tolerance
        return ok, f"largest difference from the parent's scores {diff:.2e}{unit} {'<=' if ok else '>'} {tolerance:.0e}"

    return _make_variant(platform, ref, "export:onnx", build, judge, metric=None, register=register,
                         out=None if out is None else Path(out), log=log)


def _training_rows(platform: Any, parent_dir: Path, spec: ModelSpec, pre: Any) -> dict[str, np.ndarray]:
    """The parent's training and validation rows, through its fitted transforms: read again from the dataset
    versions its recipe pins (training_config.json), split as training split them."""
    from aiinfra.pipelines.train import TRAINING_CONFIG, prepare_data
    from aiinfra.training.config import load_train_config

    recipe = parent_dir / TRAINING_CONFIG
    if not recipe.exists():
        raise InvalidInput("distillation and pruning train on the parent's training rows, and this version has no "
                           f"{TRAINING_CONFIG} (it was imported, not trained here); quantize it instead")
    cfg = load_train_config(json.loads(recipe.read_text()))
    # The student trains in this process: the rows come here whatever engine built the parent's table
    # (both engines split alike, so these are the rows the parent trained on).
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"engine": "memory"})})
    data, _, _, _ = prepare_data(platform, cfg)

    def encoded(frame: Any) -> np.ndarray:
        return encode_labels(spec.task, frame[data.label], spec.class_labels, spec.target_mean, spec.target_std)

    return {"x": pre.transform(data.train), "y": encoded(data.train), "x_val": pre.transform(data.val),
            "y_val": encoded(data.val), "lr": cfg.trainer.lr, "batch_size": cfg.trainer.batch_size,
            "epochs": cfg.trainer.epochs, "seed": cfg.trainer.seed, "patience": cfg.trainer.patience or cfg.trainer.epochs}


def _default_student(spec: ModelSpec) -> dict[str, Any]:
    """Half the teacher's widths and its other settings (a wide & deep teacher gets a wide & deep student; an MLP
    or CNN teacher), else a small MLP."""
    if spec.family == "tabular_mlp":
        return {"family": "tabular_mlp", **{k: v for k, v in spec.params.items() if k != "hidden"},
                "hidden": [max(1, h // 2) for h in spec.params.get("hidden", [32, 16])]}
    if spec.family == "image_cnn":
        return {"family": "image_cnn", **{k: v for k, v in spec.params.items() if k != "channels"},
                "channels": [max(1, c // 2) for c in spec.params.get("channels", [16, 32])]}
    return {"family": "tabular_mlp", "hidden": [32]}


def optimize_version(platform: Any, ref: str, *, quantize: str | None = None, distill: bool = False,
                     student: dict[str, Any] | None = None, prune: float | None = None, alpha: float = 0.5,
                     max_loss: float | None = None, metric: str | None = None,
                     log: StageLog | None = None) -> VariantOutcome:
    """A compressed variant of ``ref``, registered when it loses at most ``max_loss`` of ``metric`` (default: 0.01
    for AUC or accuracy, 1% of the parent's RMSE for regression) on the parent's holdout rows.

    Exactly one method: ``quantize="int8"`` (onnxruntime's dynamic quantization of its ONNX form), ``distill``
    (a ``student`` (family and hyperparameters; default: half the widths) trained on the parent's answers on its
    training rows, ``alpha`` the teacher's weight against the true labels) or ``prune`` (that share of each hidden
    layer's neurons removed from a tabular_mlp, then fine-tuned on the training rows).
    """
    chosen = [m for m, on in (("quantize", quantize is not None), ("distill", distill), ("prune", prune is not None)) if on]
    if len(chosen) != 1:
        raise InvalidInput(f"choose exactly one of quantize, distill and prune (got {', '.join(chosen) or 'none'})")
    if quantize is not None and quantize != "int8":
        raise InvalidInput(f"quantize: {quantize!r} is not supported; use int8")
    if max_loss is not None and not max_loss >= 0:
        raise InvalidInput(f"max_loss must be at least 0 (the most of the metric the variant may lose), got {max_loss}")
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInput(f"alpha (the teacher's weight in the student's loss) must be in [0, 1], got {alpha}")
    if student is not None and not distill:
        raise InvalidInput("student applies to distill")
    log = log or StageLog(total=4)
    method = "quantize:int8" if quantize else "distill" if distill else f"prune:{prune:g}"

    def build(spec: ModelSpec, model: Any, parent_dir: Path) -> tuple[ModelSpec, dict[str, Any] | bytes]:
        if quantize:
            if spec.family == ONNX_FAMILY:
                onnx_spec, raw = spec, (parent_dir / WEIGHTS_FILE[ONNX_FAMILY]).read_bytes()
            else:
                onnx_spec, raw = export_to_onnx(spec, model, method=method)
            return quantize_int8(onnx_spec, raw)
        _, _, pre = load_model_dir(parent_dir)
        rows = _training_rows(platform, parent_dir, spec, pre)
        budget = {k: rows[k] for k in ("epochs", "batch_size", "lr", "seed", "patience")}
        if prune is not None:
            if spec.family != "tabular_mlp" or not isinstance(model, TorchModel):
                raise InvalidInput(f"pruning applies to tabular_mlp models; this one is {spec.family} (quantize or distill it)")
            pruned, widths = prune_mlp(model.module, prune)
            log.note(f"hidden widths {spec.params.get('hidden', [32, 16])} -> {widths}; fine-tuning on "
                     f"{len(rows['x']):,} training rows")
            tuned, history = fit(pruned, spec.task, rows["x"], rows["y"], rows["x_val"], rows["y_val"],
                                 **{**budget, "epochs": max(3, budget["epochs"] // 2), "lr": budget["lr"] / 3})
            log.note(f"fine-tune: {len(history)} epoch(s), best val_loss {min(h['val_loss'] for h in history):.4f}")
            return spec.model_copy(update={"params": {**spec.params, "hidden": widths}}), tuned.state_dict()
        chosen_student = dict(student) if student is not None else _default_student(spec)
        family = chosen_student.pop("family", "tabular_mlp")
        module = build_model(family, spec.input_dim, spec.output_dim, chosen_student)
        teacher = model.scores(rows["x"])
        soft = soft_targets(spec.task, teacher, spec.target_mean, spec.target_std)
        log.note(f"student {family} {chosen_student} ({sum(p.numel() for p in module.parameters()):,} parameters), "
                 f"trained on the teacher's answers on {len(rows['x']):,} training rows (alpha {alpha})")
        trained, history = fit(module, spec.task, rows["x"], rows["y"], rows["x_val"], rows["y_val"], soft=soft,
                               alpha=alpha, **budget)
        log.note(f"{len(history)} epoch(s), best val_loss {min(h['val_loss'] for h in history):.4f}")
        return spec.model_copy(update={"family": family, "params": chosen_student}), trained.state_dict()

    def judge(spec: ModelSpec, p: dict[str, float], v: dict[str, float], diff: float) -> tuple[bool, str]:
        name = metric or DEFAULT_METRIC[spec.task]
        allowed = max_loss if max_loss is not None else (0.01 * p[name] if name in ("rmse", "mae") else 0.01)
        verdict = promotion_gate(_Report(v), _Report(p), GateConfig(metric=name, min_improvement=-allowed,  # type: ignore[arg-type]
                                                                    max_slice_regression=None))
        return verdict.passed, f"{name} {v[name]:.4f} vs parent {p[name]:.4f} (loss allowed {allowed:.4g}); " \
                               f"largest score difference {diff:.3g}"

    return _make_variant(platform, ref, method, build, judge, metric=metric, register=True, out=None, log=log)


@dataclass
class _Report:
    """The part of an EvaluationReport the gate reads: overall metrics (the variant check has no slices)."""

    metrics: dict[str, float]
    slices: dict[str, Any] = field(default_factory=dict)
