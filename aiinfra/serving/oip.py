"""Open Inference Protocol v2 (KServe, Triton, MLServer) tensors <-> the model's rows.

An infer request carries one tensor per input; each has a ``shape`` whose first dimension is
the batch and flat, row-major ``data``. The model's signature says which inputs exist and
their types; anything that does not fit is an InvalidInput naming the tensor.
"""

from __future__ import annotations

import math
from typing import Any

from aiinfra.errors import InvalidInput
from aiinfra.inference.columns import Columns
from aiinfra.inference.predictor import MAX_INSTANCES
from aiinfra.registry.types import FieldSpec, Signature

__all__ = ["DATATYPES", "MAX_ID_CHARS", "decode_infer_request", "encode_infer_response", "tensor_metadata"]

# The body's `id` is the request id: held with the rows the monitor samples and echoed in the answer, so
# it is capped as the X-Request-ID header is.
MAX_ID_CHARS = 200

DATATYPES = {"float32": "FP32", "float64": "FP64", "int32": "INT32", "int64": "INT64", "bool": "BOOL",
             "string": "BYTES", "timestamp": "BYTES"}
# Which request datatypes each field type accepts: a float field takes integers too.
ACCEPTS = {
    "float32": {"FP32", "FP64", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"},
    "float64": {"FP32", "FP64", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"},
    "int32": {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32"},
    "int64": {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"},
    "bool": {"BOOL"},
    "string": {"BYTES"},
    "timestamp": {"BYTES"},
}


def tensor_metadata(f: FieldSpec) -> dict[str, Any]:
    return {"name": f.name, "datatype": DATATYPES[f.dtype], "shape": [-1, *f.shape]}


def decode_infer_request(body: Any, signature: Signature) -> tuple[Any, str | None, list[str] | None]:
    """(rows, request id, requested output names) from an OIP v2 infer body; the rows as ``Columns`` (a sequence
    of row views over the tensors' values)."""
    if not isinstance(body, dict):
        raise InvalidInput("an infer request must be a JSON object with 'inputs'")
    unknown_keys = set(body) - {"id", "inputs", "outputs", "parameters"}
    if unknown_keys:
        raise InvalidInput(f"unknown field(s) in infer request: {', '.join(sorted(unknown_keys))}")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    fields = {f.name: f for f in signature.inputs}
    columns: dict[str, list[Any]] = {}
    rows_n: int | None = None
    for i, t in enumerate(inputs):
        if not isinstance(t, dict):
            raise InvalidInput(f"inputs[{i}] must be an object with name, shape, datatype and data")
        name = t.get("name")
        if name not in fields:
            raise InvalidInput(f"inputs[{i}]: unknown input {name!r}; this model takes {', '.join(fields)}")
        if name in columns:
            raise InvalidInput(f"input {name!r} appears twice")
        field = fields[name]
        datatype, shape, data = t.get("datatype"), t.get("shape"), t.get("data")
        if datatype not in ACCEPTS[field.dtype]:
            raise InvalidInput(f"input {name!r}: datatype {datatype!r} does not fit {field.dtype} "
                               f"(expected {DATATYPES[field.dtype]})")
        if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers")
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise InvalidInput(f"input {name!r}: shape {shape} is not [N] or [N, 1]; each input is one value per row")
        if math.prod(shape) > MAX_INSTANCES:  # refused before its data is walked
            raise InvalidInput(f"input {name!r}: at most {MAX_INSTANCES} rows per request, shape {shape} holds "
                               f"{math.prod(shape)}")
        flat = _flatten(data, name)
        if math.prod(shape) != len(flat):
            raise InvalidInput(f"input {name!r}: shape {shape} holds {math.prod(shape)} values but data has {len(flat)}")
        if rows_n is not None and shape[0] != rows_n:
            raise InvalidInput(f"input {name!r}: {shape[0]} rows, other inputs have {rows_n}")
        rows_n = shape[0]
        columns[name] = flat
    missing = [n for n, f in fields.items() if n not in columns and not f.nullable]
    if missing:
        raise InvalidInput(f"missing input tensor(s): {', '.join(missing)}")
    outputs = body.get("outputs")
    wanted = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
            raise InvalidInput("'outputs' must be a list of objects with a name")
        known = {f.name for f in signature.outputs}
        wanted = [o["name"] for o in outputs]
        bad = [w for w in wanted if w not in known]
        if bad:
            raise InvalidInput(f"unknown output(s) {bad}; this model gives {sorted(known)}")
    request_id = body.get("id")
    if request_id is not None:
        if len(str(request_id)) > MAX_ID_CHARS:
            raise InvalidInput(f"'id' must be at most {MAX_ID_CHARS} characters")
        try:
            str(request_id).encode("utf-8")  # it is echoed in the answer
        except UnicodeEncodeError:
            raise InvalidInput("'id' must be valid Unicode text (it holds a lone surrogate)") from None
    # Column by column, as the tensors came: the predictor checks and transforms whole columns (no dict per row).
    rows = Columns(columns) if rows_n else []
    return rows, (str(request_id) if request_id is not None else None), wanted


def _flatten(data: Any, name: str) -> list[Any]:
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: data must be a list")
    out: list[Any] = []
    stack = [data]
    while stack:  # nested lists are allowed by the protocol; keep row-major order
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def encode_infer_response(
    predictions: list[dict[str, Any]], signature: Signature, *, model: str, version: int, request_id: str,
    wanted: list[str] | None,
) -> dict[str, Any]:
    outputs = []
    for f in signature.outputs:
        if wanted is not None and f.name not in wanted:
            continue
        outputs.append({"name": f.name, "datatype": DATATYPES[f.dtype], "shape": [len(predictions)],
                        "data": [p[f.name] for p in predictions]})
    return {"model_name": model, "model_version": str(version), "id": request_id, "outputs": outputs}
