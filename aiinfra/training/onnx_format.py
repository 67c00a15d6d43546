"""ONNX graphs: what the platform accepts, how it checks one, and how it runs one with onnxruntime.

A graph the platform serves takes **one tensor input of shape (rows, inputs)**, float32 or float64, with a free
row dimension (serving batches requests) and a fixed width that matches the signature: the shape every
converter makes for a table of numbers (skl2onnx with ``initial_types=[("input", FloatTensorType([None, n]))]``,
onnxmltools for XGBoost and LightGBM, ``torch.onnx.export`` with a dynamic batch axis). Its answer is read from
one output: class probabilities ((rows, classes), (rows,) for the positive class, or skl2onnx's ZipMap
sequence of maps), logits, or the predicted values.

A graph may instead take **one input per column** (a scikit-learn ColumnTransformer over strings and numbers:
skl2onnx's ``StringTensorType([None, 1])`` / ``FloatTensorType([None, 1])`` per column), each named as the
signature's field. Its rows travel through serving as an object array of the raw values (``RawColumns``), split
into the graph's inputs here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aiinfra.errors import InvalidInput, ServiceUnavailable

__all__ = ["GraphInfo", "OnnxModel", "ONNX_FILE", "inspect_graph", "onnx_session", "pick_output", "scores_from_output"]

ONNX_FILE = "model.onnx"
# onnxruntime runs opsets from 7 on; the newest is whatever the installed onnx package defines (the runtime may
# lag it by a release, which the session's own error then names).
MIN_OPSET = 7
# Operator domains onnxruntime implements: the standard one, the classic-ML one (trees, linear models,
# ZipMap) and Microsoft's contrib ops (what the quantizer and the optimizers emit).
KNOWN_DOMAINS = {"": "ai.onnx", "ai.onnx": "ai.onnx", "ai.onnx.ml": "ai.onnx.ml", "com.microsoft": "com.microsoft"}
MAX_ONNX_BYTES = 2 * 1024**3 - 1  # protobuf's limit; larger models keep their weights outside, which we do not take


@dataclass(frozen=True)
class OutputInfo:
    name: str
    kind: str  # "tensor" | "map-sequence" (skl2onnx's ZipMap) | "other"
    dtype: str | None  # numpy name of a tensor's elements
    shape: tuple[int | str | None, ...]


@dataclass(frozen=True)
class InputInfo:
    name: str
    dtype: str  # numpy's name; "object" for strings
    rank: int


@dataclass(frozen=True)
class GraphInfo:
    input: str  # the matrix layout's one input ("" for the columns layout)
    input_dtype: str  # "float32" | "float64" (the matrix layout)
    width: int  # the matrix's width, or the number of column inputs
    outputs: tuple[OutputInfo, ...]
    opsets: dict[str, int]
    producer: str
    layout: str = "matrix"  # "matrix": one (rows, inputs) tensor; "columns": one input per column
    inputs: tuple[InputInfo, ...] = ()

    def output(self, name: str) -> OutputInfo:
        for o in self.outputs:
            if o.name == name:
                return o
        raise InvalidInput(f"the graph has no output {name!r}; its outputs: {', '.join(o.name for o in self.outputs)}")


def _dims(type_proto: Any) -> tuple[int | str | None, ...]:
    shape = type_proto.tensor_type.shape
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim)


def _elem_dtype(elem_type: int) -> str | None:
    import onnx

    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError):
        return None


def inspect_graph(raw: bytes, *, what: str = "the ONNX model") -> GraphInfo:
    """Parse and check a serialized graph; InvalidInput naming the first thing the platform cannot serve."""
    import onnx

    if len(raw) > MAX_ONNX_BYTES:
        raise InvalidInput(f"{what} is {len(raw):,} bytes, over protobuf's 2 GiB limit")
    try:
        model = onnx.load_model_from_string(raw)
    except Exception as e:  # noqa: BLE001 - protobuf raises its DecodeError, or others for truncated input
        raise InvalidInput(f"{what} is not an ONNX model (it does not parse: {str(e)[:200] or type(e).__name__})") from None
    if not model.graph.node and not model.graph.output:
        raise InvalidInput(f"{what} is not an ONNX model: it has no graph")
    if _external_tensors(model):
        # An external tensor names a file to read the weights from: a path an imported model must not choose
        # (it could point anywhere on the serving host). One self-contained file only.
        raise InvalidInput(f"{what} keeps weights in external files ({', '.join(_external_tensors(model)[:3])}); "
                           "save it as one file: onnx.save_model(model, path, save_as_external_data=False)")
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - onnx.checker.ValidationError, or a C++ error for a malformed graph
        raise InvalidInput(f"{what} fails ONNX's model checker: {str(e).splitlines()[0][:300]}") from None

    opsets = {KNOWN_DOMAINS.get(o.domain, o.domain): int(o.version) for o in model.opset_import}
    unknown = sorted(d for d in opsets if d not in KNOWN_DOMAINS.values())
    if unknown:
        raise InvalidInput(f"{what} uses operator domain(s) {unknown} that onnxruntime does not implement "
                           "(custom operators are not supported)")
    newest = onnx.defs.onnx_opset_version()
    core = opsets.get("ai.onnx")
    if core is not None and not MIN_OPSET <= core <= newest:
        raise InvalidInput(f"{what} uses opset {core}; supported: {MIN_OPSET} to {newest}. "
                           "Convert it again with a target_opset in that range")

    initializers = {i.name for i in model.graph.initializer}  # old opsets list the weights as inputs too
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if not inputs:
        raise InvalidInput(f"{what} has no inputs")
    for entry in inputs:
        if not entry.type.HasField("tensor_type"):
            raise InvalidInput(f"{what}'s input {entry.name!r} is not a tensor")
    columns: tuple[InputInfo, ...] = ()
    if len(inputs) == 1:
        name, dtype, width = _matrix_input(inputs[0], what)
        layout = "matrix"
    else:
        columns = tuple(_column_input(entry, what) for entry in inputs)
        name, dtype, width, layout = "", "", len(columns), "columns"
    outputs = []
    for o in model.graph.output:
        if o.type.HasField("tensor_type"):
            outputs.append(OutputInfo(o.name, "tensor", _elem_dtype(o.type.tensor_type.elem_type), _dims(o.type)))
        elif o.type.HasField("sequence_type") and o.type.sequence_type.elem_type.HasField("map_type"):
            outputs.append(OutputInfo(o.name, "map-sequence", None, ()))
        else:
            outputs.append(OutputInfo(o.name, "other", None, ()))
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p) or "unknown"
    return GraphInfo(name, dtype, int(width), tuple(outputs), opsets, producer, layout, columns)


def _matrix_input(entry: Any, what: str) -> tuple[str, str, int]:
    dtype = _elem_dtype(entry.type.tensor_type.elem_type)
    if dtype not in ("float32", "float64"):
        raise InvalidInput(f"{what}'s input {entry.name!r} holds {dtype or 'an unknown type'}; it must be float32 or float64")
    dims = _dims(entry.type)
    if len(dims) != 2:
        raise InvalidInput(f"{what}'s input {entry.name!r} has shape {list(dims)}; it must be 2-D: (rows, inputs)")
    rows, width = dims
    if isinstance(rows, int) and rows > 0:
        raise InvalidInput(f"{what}'s input {entry.name!r} takes exactly {rows} row(s) per call; export it with a "
                           "free (dynamic) first dimension so that requests can be batched")
    if not isinstance(width, int) or width <= 0:
        raise InvalidInput(f"{what}'s input {entry.name!r} has a dynamic width ({width!r}); the signature can only be "
                           "checked against a fixed number of inputs: export it with the width fixed")
    return entry.name, dtype, width


COLUMN_DTYPES = ("float32", "float64", "int32", "int64", "bool", "object")


def _column_input(entry: Any, what: str) -> InputInfo:
    dtype = _elem_dtype(entry.type.tensor_type.elem_type)
    if dtype not in COLUMN_DTYPES:
        raise InvalidInput(f"{what}'s input {entry.name!r} holds {dtype or 'an unknown type'}; a column input holds "
                           "floats, integers, booleans or strings")
    dims = _dims(entry.type)
    if len(dims) not in (1, 2) or (len(dims) == 2 and dims[1] not in (1, None)) and not isinstance(dims[1], str):
        raise InvalidInput(f"{what}'s input {entry.name!r} has shape {list(dims)}; with one input per column each "
                           "must be (rows, 1) or (rows,)")
    if isinstance(dims[0], int) and dims[0] > 0:
        raise InvalidInput(f"{what}'s input {entry.name!r} takes exactly {dims[0]} row(s) per call; export it with a "
                           "free (dynamic) first dimension so that requests can be batched")
    return InputInfo(entry.name, dtype, len(dims))


def _external_tensors(model: Any) -> list[str]:
    import onnx

    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors += [a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
    return [t.name or "(unnamed)" for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]


def pick_output(info: GraphInfo, task: str, classes: int, name: str | None = None) -> str:
    """The output holding the scores: ``name``, or the one output that can hold them for ``task``."""
    if name is not None:
        found = info.output(name)
        if found.kind == "other" or (found.kind == "tensor" and found.dtype not in ("float32", "float64")):
            raise InvalidInput(f"output {name!r} holds {found.dtype or found.kind}, not scores: name a float output")
        return name

    def fits(o: OutputInfo) -> bool:
        if o.kind == "map-sequence":
            return task != "regression"
        if o.kind != "tensor" or o.dtype not in ("float32", "float64"):
            return False
        width = o.shape[1] if len(o.shape) == 2 else 1
        if task == "multiclass":
            return len(o.shape) == 2 and (width in (classes, None) or isinstance(width, str))
        return len(o.shape) in (1, 2) and (width in (1, 2, None) or isinstance(width, str))

    candidates = [o for o in info.outputs if fits(o)]
    if len(candidates) > 1:  # a classifier's label and probabilities: the probabilities (float) already won
        named = [o for o in candidates if "prob" in o.name.lower()]
        candidates = named if len(named) == 1 else candidates
    if len(candidates) != 1:
        listed = ", ".join(f"{o.name} ({o.dtype or o.kind} {list(o.shape)})" for o in info.outputs)
        raise InvalidInput(f"cannot tell which output holds the {task} scores ({listed}): name it with `output:` "
                           "in the signature file")
    return candidates[0].name


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def scores_from_output(out: Any, *, task: str, classes: int, kind: str, class_labels: Sequence[Any],
                       target_mean: float = 0.0, target_std: float = 1.0) -> np.ndarray:
    """A graph's answer as the platform's scores: P(class 1) (n,), probabilities (n, k), or values (n,).

    ``kind``: "probabilities", "logits" or "values". ZipMap's list of {class: probability} is read in
    ``class_labels`` order.
    """
    if isinstance(out, list):  # ZipMap: one dict per row, keyed by the classes the converter saw
        keys = list(out[0]) if out else []
        by_text = {str(k): k for k in keys}
        try:
            order = [by_text[str(c)] for c in class_labels]
        except KeyError:
            raise InvalidInput(f"the graph's classes {keys} are not the signature's class_labels {list(class_labels)}") from None
        out = np.array([[row[k] for k in order] for row in out], dtype=np.float64).reshape(len(out), len(order))
    out = np.asarray(out, dtype=np.float64)
    n = out.shape[0] if out.ndim else 0
    if task == "regression":
        return out.reshape(n) * target_std + target_mean
    if task == "multiclass":
        out = out.reshape(n, -1)
        if out.shape[1] != classes:
            raise InvalidInput(f"the graph answered {out.shape[1]} scores per row; the signature has {classes} classes")
        return _softmax(out) if kind == "logits" else out
    out = out.reshape(n, -1)
    if out.shape[1] == 2:  # both classes' probabilities (or logits)
        return _softmax(out)[:, 1] if kind == "logits" else out[:, 1]
    if out.shape[1] != 1:
        raise InvalidInput(f"the graph answered {out.shape[1]} scores per row for a binary task; expected 1 or 2")
    return _sigmoid(out[:, 0]) if kind == "logits" else out[:, 0]


def onnx_session(raw: bytes, *, device: str = "cpu", what: str = "the ONNX model") -> Any:
    """An onnxruntime session for ``raw``; InvalidInput naming why the runtime cannot run it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: converters' harmless shape notes otherwise flood the replica logs
    # One thread per session, not spinning: a replica is one of several Ray workers on a few cores, and ORT's default
    # (a spinning pool as wide as the machine) takes CPU from the others; Serve scales by replicas instead.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if device == "cpu":
        providers = ["CPUExecutionProvider"]
    elif "CUDAExecutionProvider" in ort.get_available_providers():
        index = device.partition(":")[2] or "0"
        providers = [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    else:
        raise ServiceUnavailable(f"this onnxruntime build has no CUDA provider (it has {ort.get_available_providers()}); "
                                 "install onnxruntime-gpu on the GPU nodes or set serve.model_gpus: 0")
    try:
        return ort.InferenceSession(raw, sess_options=options, providers=providers)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail / InvalidGraph / NotImplemented
        message = str(e).splitlines()[0][:400]
        hint = " (an opset or operator newer than this onnxruntime supports?)" if "opset" in message.lower() or \
            "not implemented" in message.lower() else ""
        raise InvalidInput(f"onnxruntime cannot run {what}: {message}{hint}") from None


class OnnxModel:
    """An ONNX graph as a TrainedModel: the preprocessed rows in, the platform's scores out.

    model.json's params say how to read it: ``input``, ``input_dtype``, ``output`` and ``scores``
    ("probabilities", "logits" or "values").
    """

    def __init__(self, raw: bytes, spec: Any, *, device: str = "cpu") -> None:
        self.raw, self.spec = raw, spec
        params = spec.params
        self.input, self.output = params.get("input", ""), params["output"]
        # The columns layout: [{"name", "dtype", "rank"}] in the order of the RawColumns' columns.
        self.columns: list[dict[str, Any]] | None = params.get("inputs") if params.get("layout") == "columns" else None
        self.kind = params.get("scores", "values" if spec.task == "regression" else "probabilities")
        self.dtype = np.dtype(params.get("input_dtype", "float32"))
        self.session = onnx_session(raw, device=device)

    def scores(self, x: np.ndarray) -> np.ndarray:
        spec = self.spec
        if len(x) == 0:
            return np.zeros((0, spec.output_dim) if spec.task == "multiclass" else (0,))
        feed = self._feed(x) if self.columns is not None else {self.input: np.ascontiguousarray(x, dtype=self.dtype)}
        (out,) = self.session.run([self.output], feed)
        return scores_from_output(out, task=spec.task, classes=spec.output_dim, kind=self.kind,
                                  class_labels=spec.class_labels, target_mean=spec.target_mean,
                                  target_std=spec.target_std)

    def _feed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """An object array of raw values (rows, columns) as the graph's column inputs."""
        feed = {}
        for j, inp in enumerate(self.columns or []):
            column = x[:, j]
            if inp["dtype"] == "object":
                values = np.array(["" if v is None else str(v) for v in column], dtype=object)
            elif inp["dtype"].startswith("float"):
                values = np.array([np.nan if v is None else v for v in column], dtype=inp["dtype"])
            else:
                if any(v is None for v in column):
                    raise InvalidInput(f"{inp['name']}: a missing value cannot be given to the graph's {inp['dtype']} "
                                       "input; send a value")
                values = np.array(list(column), dtype=inp["dtype"])
            feed[inp["name"]] = values.reshape(-1, 1) if inp["rank"] == 2 else values
        return feed

    def to(self, device: str) -> None:
        if device != "cpu":
            self.session = onnx_session(self.raw, device=device)
