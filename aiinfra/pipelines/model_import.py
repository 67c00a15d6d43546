"""Bring your own model: register an ONNX graph trained anywhere, judged like one trained here.

    check the file (parse, ONNX checker, opset; one (rows, inputs) float input, or one input per column, that
    matches the signature) -> a model directory (model.onnx + the signature's fields passed through as they are)
    -> onnxruntime loads it and answers a probe -> scored on your labelled holdout dataset (evaluation, slices)
    -> the promotion gate against the champion on the same rows -> the monitor's reference profile
    -> registered with lineage (file name, SHA-256, producer, holdout version) -> champion or challenger alias

Every check runs before anything is uploaded, so a refused file leaves nothing half-registered.
The signature file (YAML or JSON):

    task: binary                         # binary | multiclass | regression
    class_labels: [0, 1]                 # classifiers: the classes in the graph's output order
    inputs:                              # the graph's input columns, in order (strings: one input per column)
      - {name: tenure_months, dtype: float64}
      - {name: monthly_charges, dtype: float64, nullable: true}   # null -> NaN for the graph
    output: probabilities                # optional: which output holds the scores
    scores: probabilities                # or logits (sigmoid / softmax applied here)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aiinfra.config import read_yaml, validate_as
from aiinfra.data.transforms import Feature, FeaturePipeline, FeatureSpec, Passthrough, RawColumns
from aiinfra.errors import InvalidInput, NotFound
from aiinfra.monitoring.profile import build_profile, write_profile
from aiinfra.pipelines.judging import gate_against_champion, holdout_outputs, report_on
from aiinfra.pipelines.progress import StageLog
from aiinfra.provenance import environment
from aiinfra.registry.approvals import AliasRequest
from aiinfra.registry.types import FieldSpec, Signature, validate_name
from aiinfra.training.gate import GateConfig
from aiinfra.training.model_dir import ModelSpec, load_model_dir, save_model_dir
from aiinfra.training.onnx_format import GraphInfo, inspect_graph, pick_output

__all__ = ["ImportOutcome", "ImportSignature", "import_onnx", "load_import_signature"]

EVALUATION = "evaluation.json"
DEFAULT_GATE_METRIC = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "rmse"}


class ImportField(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    # Numbers and booleans for a graph over one float tensor; strings too for a graph with one input per column.
    dtype: Literal["float32", "float64", "int32", "int64", "bool", "string"]
    nullable: bool = False
    description: str | None = None


class ImportSignature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Literal["binary", "multiclass", "regression"]
    inputs: list[ImportField] = Field(min_length=1)
    class_labels: list[int | str] | None = None
    output: str | None = None
    scores: Literal["probabilities", "logits"] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ImportSignature:
        names = [f.name for f in self.inputs]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"input(s) {dups} are listed more than once")
        labels = self.class_labels
        if self.task == "regression":
            if labels:
                raise ValueError("a regression model has no class_labels")
            if self.scores is not None:
                raise ValueError("scores: applies to classifiers; a regression model's output is its prediction")
        else:
            if not labels:
                raise ValueError(f"a {self.task} model needs class_labels, in the order of the graph's outputs")
            if len(set(map(str, labels))) != len(labels):
                raise ValueError(f"class_labels {labels} has duplicates")
            if self.task == "binary" and len(labels) != 2:
                raise ValueError(f"a binary model has exactly 2 class_labels, got {len(labels)}")
        return self

    @property
    def classes(self) -> int:
        return len(self.class_labels or []) if self.task == "multiclass" else 1

    def signature(self) -> Signature:
        if self.task == "regression":
            outputs = [FieldSpec(name="value", dtype="float64")]
        else:
            label_dtype = "string" if any(isinstance(c, str) for c in self.class_labels or []) else "int64"
            outputs = [FieldSpec(name="label", dtype=label_dtype), FieldSpec(name="probability", dtype="float64")]
        return Signature(inputs=[FieldSpec(name=f.name, dtype=f.dtype, nullable=f.nullable, description=f.description)
                                 for f in self.inputs], outputs=outputs)


def load_import_signature(source: str | Path | dict[str, Any]) -> ImportSignature:
    if isinstance(source, dict):
        return validate_as(ImportSignature, source, "signature")
    return validate_as(ImportSignature, read_yaml(source, "signature file"), f"signature file {source}")


@dataclass
class ImportOutcome:
    model: str
    metrics: dict[str, float]
    verdict: dict[str, Any]
    alias: str | None
    holdout: str
    sha256: str
    producer: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "metrics": self.metrics, "gate": self.verdict, "alias": self.alias,
                "holdout": self.holdout, "sha256": self.sha256, "producer": self.producer}


# Which tensor element types a signature's field may feed, in the columns layout.
_FITS = {"string": ("object",), "bool": ("bool",), "int32": ("int32", "int64", "float32", "float64"),
         "int64": ("int64", "float32", "float64"), "float32": ("float32", "float64"), "float64": ("float32", "float64")}


def _column_inputs(info: GraphInfo, sig: ImportSignature, what: str) -> list[dict[str, Any]]:
    """The graph's column inputs in the signature's order; InvalidInput naming any mismatch."""
    graph = {i.name: i for i in info.inputs}
    fields = {f.name: f for f in sig.inputs}
    problems = [f"the graph has no input {n!r}" for n in fields if n not in graph]
    problems += [f"the signature has no field for the graph's input {n!r}" for n in graph if n not in fields]
    for name, f in fields.items():
        i = graph.get(name)
        if i is not None and i.dtype not in _FITS[f.dtype]:
            problems.append(f"{name}: the signature says {f.dtype}, the graph's input holds "
                            f"{'strings' if i.dtype == 'object' else i.dtype}")
        if i is not None and f.nullable and i.dtype not in ("object", "float32", "float64"):
            problems.append(f"{name}: nullable, but the graph's {i.dtype} input cannot hold a missing value")
    if problems:
        raise InvalidInput(f"{what}'s inputs do not match the signature: " + "; ".join(problems))
    return [{"name": n, "dtype": graph[n].dtype, "rank": graph[n].rank} for n in fields]


def _passthrough(sig: ImportSignature) -> FeaturePipeline:
    """The signature's fields in order, as numbers, missing ones as NaN: the graph does its own preprocessing."""
    spec = FeatureSpec(features=[Feature(column=f.name, steps=[Passthrough(op="passthrough")]) for f in sig.inputs])
    return FeaturePipeline(spec=spec, input_dtypes={f.name: f.dtype for f in sig.inputs}, keep_missing=True)


def _probe(model_dir: Path, sig: ImportSignature) -> None:
    """The graph answers two rows of zeros (empty strings, false) with the scores the task needs; InvalidInput
    naming what it gave."""
    spec, model, pre = load_model_dir(model_dir)
    if isinstance(pre, RawColumns):
        zero = {"string": "", "bool": False}
        x = pre.transform_rows([{f.name: zero.get(f.dtype, 0) for f in sig.inputs}] * 2)
    else:
        x = np.zeros((2, spec.input_dim), dtype=np.float32)
    out = model.scores(x)
    want = (2, sig.classes) if sig.task == "multiclass" else (2,)
    if out.shape != want:
        raise InvalidInput(f"the graph answered scores of shape {list(out.shape)} for 2 rows; a {sig.task} model "
                           f"answers {list(want)}")
    _check_scores(out, spec, "a row of zeros")


def _check_scores(scores: np.ndarray, spec: ModelSpec, rows: str) -> None:
    if not np.isfinite(scores).all():
        raise InvalidInput(f"the graph answered non-finite scores for {rows}")
    if spec.task != "regression" and spec.params["scores"] == "probabilities" and ((scores < -1e-6) | (scores > 1 + 1e-6)).any():
        outside = scores[(scores < 0) | (scores > 1)].ravel()[:3].round(4).tolist()
        raise InvalidInput(f"output {spec.params['output']!r} is not probabilities (it answered {outside} for {rows}); "
                           "if it holds logits, say scores: logits in the signature file")


def import_onnx(platform: Any, name: str, path: str | Path, signature: ImportSignature | str | Path | dict[str, Any], *,
                holdout: str, label: str, slices: list[str] | None = None, gate: GateConfig | None = None,
                log: StageLog | None = None) -> ImportOutcome:
    """Register ``path`` (an .onnx file) as the next version of ``name``; see the module docstring."""
    log = log or StageLog(total=4)
    validate_name("model name", name)
    sig = signature if isinstance(signature, ImportSignature) else load_import_signature(signature)
    path = Path(path)
    slices = list(slices or [])
    gate = gate or GateConfig(metric=DEFAULT_GATE_METRIC[sig.task])
    workdir = Path(tempfile.mkdtemp(prefix="aiinfra-import-"))
    try:
        return _import(platform, name, path, sig, workdir, holdout=holdout, label=label, slices=slices, gate=gate, log=log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _import(platform: Any, name: str, path: Path, sig: ImportSignature, workdir: Path, *, holdout: str, label: str,
            slices: list[str], gate: GateConfig, log: StageLog) -> ImportOutcome:
    with log.stage(f"check {path.name} against the signature"):
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise InvalidInput(f"cannot read {path}: {e.strerror}") from None
        info = inspect_graph(raw, what=path.name)
        params: dict[str, Any] = {"layout": info.layout}
        if info.layout == "matrix":
            if info.width != len(sig.inputs):
                raise InvalidInput(f"{path.name} takes {info.width} inputs per row ({info.input!r}); the signature lists "
                                   f"{len(sig.inputs)} fields ({', '.join(f.name for f in sig.inputs)})")
            strings = [f.name for f in sig.inputs if f.dtype == "string"]
            if strings:
                raise InvalidInput(f"{path.name} takes one float tensor, so the signature's string field(s) "
                                   f"{', '.join(strings)} cannot reach it: encode them in the graph (one input per "
                                   "column) or before export")
            params.update(input=info.input, input_dtype=info.input_dtype)
            pre: FeaturePipeline | RawColumns = _passthrough(sig)
            shape = f"input {info.input!r} ({info.input_dtype}, {info.width} wide)"
        else:
            params["inputs"] = _column_inputs(info, sig, path.name)
            pre = RawColumns(columns=[f.name for f in sig.inputs], input_dtypes={f.name: f.dtype for f in sig.inputs})
            shape = f"{info.width} column inputs"
        output = pick_output(info, sig.task, sig.classes, sig.output)
        kind = "values" if sig.task == "regression" else (sig.scores or "probabilities")
        sha256 = hashlib.sha256(raw).hexdigest()
        params.update(output=output, scores=kind, producer=info.producer, opsets=info.opsets, source="import")
        spec = ModelSpec(family="onnx", input_dim=info.width, output_dim=sig.classes, task=sig.task,
                         class_labels=list(sig.class_labels or []), params=params)
        model_dir = workdir / "model"
        save_model_dir(model_dir, spec, raw, pre)
        _probe(model_dir, sig)
        log.note(f"{info.producer}, opsets {info.opsets}; {shape}, scores from {output!r} ({kind}); "
                 f"sha256 {sha256[:16]}...")

    with log.stage(f"score the holdout {holdout}"):
        catalog = platform.datasets
        hv = catalog.get(holdout)
        frame = catalog.load(hv).to_pandas()
        missing = [c for c in [*(f.name for f in sig.inputs), label, *slices] if c not in frame.columns]
        if missing:
            raise InvalidInput(f"holdout {hv.ref} has no column(s) {', '.join(missing)}; it has "
                               f"{', '.join(map(str, frame.columns))}")
        frame = frame.dropna(subset=[label]).reset_index(drop=True)
        if not len(frame):
            raise InvalidInput(f"holdout {hv.ref} has no rows with a {label!r} label")
        outputs = holdout_outputs(model_dir, frame, label)
        _check_scores(outputs[1], spec, f"the rows of {hv.ref}")
        report = report_on(outputs, frame, slices)
        if gate.metric not in report.metrics:
            raise InvalidInput(f"gate metric {gate.metric!r} is not measured for {sig.task}; measured: "
                               f"{', '.join(sorted(report.metrics))}")
        (model_dir / EVALUATION).write_text(report.model_dump_json(indent=2))
        _, scores, y_true = outputs
        write_profile(build_profile(frame, sig.signature().inputs, task=sig.task, class_labels=spec.class_labels,
                                    outputs=scores, labels=y_true, source=f"holdout {hv.ref}"), model_dir)
        log.note(f"{len(frame):,} rows: " + ", ".join(f"{k} {v:.4f}" for k, v in report.metrics.items()))

    with log.stage("promotion gate against the champion on the same rows"):
        verdict = gate_against_champion(platform, name, gate, report, frame, label, slices, workdir)
        log.note(f"{'PASS' if verdict.passed else 'FAIL'}: {verdict.reason}")

    with log.stage("register with lineage and alias"):
        registry = platform.registry
        lineage = {"imported_from": path.name, "onnx_sha256": sha256, "producer": info.producer,
                   "holdout_dataset": hv.ref, "label": label, "environment": environment(),
                   "gate": {"passed": verdict.passed, "reason": verdict.reason}}
        key = hashlib.sha256(json.dumps([sha256, sig.model_dump(mode="json"), hv.ref, label]).encode()).hexdigest()[:32]
        version = registry.register(name, model_dir, metrics=report.metrics,
                                    params={"family": "onnx", "producer": info.producer, "output": output, "scores": kind},
                                    signature=sig.signature(), lineage=lineage, idempotency_key=f"import-{key}")
        try:
            champion = registry.get(f"{name}@champion")
        except NotFound:
            champion = None
        alias, note = None, " without an alias: the gate refused it"
        if verdict.passed and (champion is None or champion.version != version.version):
            wanted = "champion" if champion is None else "challenger"
            moved = registry.alias_or_request(name, version.version, wanted, reason=f"imported {path.name}, gate passed")
            if isinstance(moved, AliasRequest):
                note = f"; alias {wanted} is protected: request {moved.id} needs {moved.needed} approval(s)"
            else:
                alias = wanted
        elif champion is not None and champion.version == version.version:
            alias = "champion"  # the same file imported again: the registry returned the version it made the first time
        log.note(f"registered {version.ref}" + (f", alias {alias}" if alias else note))
    return ImportOutcome(model=version.ref, metrics=report.metrics, verdict=verdict.model_dump(mode="json"), alias=alias,
                         holdout=hv.ref, sha256=sha256, producer=info.producer)
