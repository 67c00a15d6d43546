"""The Open Inference Protocol's binary tensor extension over HTTP (KServe v2, Triton's ``binary_data``).

A request may carry its tensors as raw bytes after the JSON: the ``Inference-Header-Content-Length``
header says how long the JSON part is, and each input sent this way has
``parameters.binary_data_size`` (its byte count) and no ``data``; the inputs' bytes follow the JSON in
the order of the inputs. Numbers are little-endian in row-major order, BOOL one byte each, and BYTES
each element as a 4-byte little-endian length followed by its bytes. An answer is binary for each output
asked for with ``parameters.binary_data: true``, or for every output when the request's
``parameters.binary_data_output`` is true (what ``tritonclient`` asks when it names no outputs).

Here: splitting such a body into its JSON and its inputs' values (``decode_binary_request``), checked
against the tensors' shapes and datatypes before a byte is read as a value, and encoding an answer's
outputs the same way (``encode_binary_response``). Every mistake is an InvalidInput naming the tensor.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np

from aiinfra.errors import InvalidInput
from aiinfra.inference.predictor import MAX_INSTANCES

__all__ = ["HEADER", "binary_outputs", "decode_binary_request", "encode_binary_response", "split_body"]

HEADER = "inference-header-content-length"

# Fixed-size datatypes and how numpy reads them (little-endian).
FIXED = {"BOOL": "?", "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "UINT8": "<u1",
         "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}


def split_body(raw: bytes, header_length: str) -> tuple[bytes, bytes]:
    """The JSON part and the binary part of a body whose JSON is ``header_length`` bytes long."""
    text = header_length.strip()
    if not text.isdigit():
        raise InvalidInput(f"Inference-Header-Content-Length must be a byte count, got {header_length[:40]!r}")
    n = int(text)
    if n > len(raw):
        raise InvalidInput(f"Inference-Header-Content-Length {n} is past the end of the {len(raw)}-byte body")
    return raw[:n], raw[n:]


def decode_binary_request(body: Any, binary: bytes) -> Any:
    """``body`` (the JSON part, parsed) with each binary input's values put in its ``data``, read from
    ``binary``; a body that is not an infer request is returned as it is (its checks come later)."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        if binary:
            raise InvalidInput("binary data after the JSON header, but the request has no 'inputs' to carry it")
        return body
    offset = 0
    inputs = []
    for i, tensor in enumerate(body["inputs"]):
        params = tensor.get("parameters") if isinstance(tensor, dict) else None
        if not isinstance(params, dict) or "binary_data_size" not in params:
            inputs.append(tensor)
            continue
        name = tensor.get("name", f"inputs[{i}]")
        size = params["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"input {name!r}: binary_data_size must be a non-negative integer")
        if "data" in tensor:
            raise InvalidInput(f"input {name!r}: both 'data' and binary_data_size; send its values one way")
        if offset + size > len(binary):
            raise InvalidInput(f"input {name!r}: binary_data_size {size} goes past the {len(binary)} bytes after "
                               f"the JSON header (at byte {offset})")
        values = _values(name, tensor.get("datatype"), tensor.get("shape"), binary[offset:offset + size])
        offset += size
        rest = {k: v for k, v in params.items() if k != "binary_data_size"}
        inputs.append({**{k: v for k, v in tensor.items() if k != "parameters"}, "data": values,
                       **({"parameters": rest} if rest else {})})
    if offset != len(binary):
        raise InvalidInput(f"the inputs' binary_data_size add up to {offset} bytes, but {len(binary)} follow the "
                           "JSON header")
    return {**body, "inputs": inputs}


def _values(name: str, datatype: Any, shape: Any, data: bytes) -> list[Any]:
    """The flat values of one binary tensor, after its byte count is checked against its shape."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers")
    count = math.prod(shape)
    if count > MAX_INSTANCES:  # refused before its bytes are read
        raise InvalidInput(f"input {name!r}: at most {MAX_INSTANCES} values per request, shape {shape} holds {count}")
    if datatype in FIXED:
        dtype = np.dtype(FIXED[datatype])
        if len(data) != count * dtype.itemsize:
            raise InvalidInput(f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
                               f"binary_data_size is {len(data)}")
        values = np.frombuffer(data, dtype=dtype)
        if datatype == "BOOL" and not np.isin(np.frombuffer(data, dtype=np.uint8), (0, 1)).all():
            raise InvalidInput(f"input {name!r}: a BOOL is one byte, 0 or 1")
        return values.tolist()
    if datatype == "BYTES":
        return _bytes_elements(name, data, count)
    raise InvalidInput(f"input {name!r}: datatype {datatype!r} cannot be sent as binary data")


def _bytes_elements(name: str, data: bytes, count: int) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise InvalidInput(f"input {name!r}: a BYTES element's 4-byte length is cut off at byte {pos}")
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if pos + n > len(data):
            raise InvalidInput(f"input {name!r}: a BYTES element of {n} bytes goes past the tensor's "
                               f"{len(data)} bytes")
        try:
            out.append(data[pos:pos + n].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"input {name!r}: element {len(out)} is not UTF-8 text") from None
        pos += n
        if len(out) > count:
            break
    if len(out) != count:
        raise InvalidInput(f"input {name!r}: shape holds {count} BYTES elements, the binary data {len(out)}"
                           + (" or more" if pos < len(data) else ""))
    return out


def binary_outputs(body: Any) -> set[str] | bool:
    """Which outputs the answer carries as binary: True for all (the request's
    ``parameters.binary_data_output`` and no outputs named), else the names whose ``parameters.binary_data`` is
    true, or not given where ``binary_data_output`` is (empty: none)."""
    if not isinstance(body, dict):
        return False
    params = body.get("parameters")
    default = isinstance(params, dict) and params.get("binary_data_output") is True
    named = [o for o in body.get("outputs") or [] if isinstance(o, dict) and isinstance(o.get("name"), str)]
    if not named:
        return default
    chosen = set()
    for o in named:
        flag = o.get("parameters", {}).get("binary_data") if isinstance(o.get("parameters"), dict) else None
        if flag is True or (flag is None and default):
            chosen.add(o["name"])
    return chosen


def encode_binary_response(response: dict[str, Any], which: set[str] | bool) -> tuple[bytes, int]:
    """The answer's body with the chosen outputs' data as bytes after the JSON, and the JSON's length (the
    ``Inference-Header-Content-Length`` to send). An output with a null value stays in the JSON."""
    blobs: list[bytes] = []
    outputs = []
    for out in response["outputs"]:
        blob = None
        if which is True or (which and out["name"] in which):  # type: ignore[operator]
            blob = _encode(out["datatype"], out["data"])
        if blob is None:
            outputs.append(out)
            continue
        blobs.append(blob)
        outputs.append({**{k: v for k, v in out.items() if k != "data"},
                        "parameters": {**out.get("parameters", {}), "binary_data_size": len(blob)}})
    header = json.dumps({**response, "outputs": outputs}, separators=(",", ":")).encode()
    return header + b"".join(blobs), len(header)


def _encode(datatype: str, data: list[Any]) -> bytes | None:
    if any(v is None for v in data):
        return None
    if datatype in FIXED:
        return np.asarray(data, dtype=np.dtype(FIXED[datatype])).tobytes()
    if datatype == "BYTES":
        parts = []
        for v in data:
            raw = v if isinstance(v, bytes) else str(v).encode("utf-8")
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    return None
