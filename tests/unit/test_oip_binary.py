"""The binary tensor extension of the Open Inference Protocol over HTTP: bodies built byte by byte here,
the way tritonclient builds them (tests/integration/test_serving_http.py sends them with tritonclient)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from aiinfra.errors import InvalidInput
from aiinfra.registry.types import Signature
from aiinfra.serving.oip import decode_infer_request, encode_infer_response
from aiinfra.serving.oip_binary import (
    binary_outputs,
    decode_binary_request,
    encode_binary_response,
    split_body,
)

SIGNATURE = Signature.model_validate({
    "inputs": [{"name": "x", "dtype": "float32"}, {"name": "n", "dtype": "int64"}, {"name": "ok", "dtype": "bool"},
               {"name": "plan", "dtype": "string"}, {"name": "w", "dtype": "float64"}],
    "outputs": [{"name": "probability", "dtype": "float64"}, {"name": "label", "dtype": "string"}],
})


def strings(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def body(tensors: list[tuple[str, str, list[int], bytes]], **extra) -> tuple[bytes, str]:
    """A request whose every input is binary: (JSON + the inputs' bytes, its JSON length)."""
    header = {"inputs": [{"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}}
                         for n, d, s, b in tensors], **extra}
    head = json.dumps(header).encode()
    return head + b"".join(b for *_, b in tensors), str(len(head))


def decode(raw: bytes, length: str):
    head, binary = split_body(raw, length)
    return decode_binary_request(json.loads(head), binary)


TENSORS = [
    ("x", "FP32", [3], np.array([0.5, -1.25, 2.0], dtype="<f4").tobytes()),
    ("n", "INT64", [3, 1], np.array([[1], [2], [3]], dtype="<i8").tobytes()),
    ("ok", "BOOL", [3], np.array([True, False, True]).tobytes()),
    ("plan", "BYTES", [3], strings(["basic", "premium", "é"])),
    ("w", "FP64", [3], np.array([1e300, 0.0, -2.5], dtype="<f8").tobytes()),
]


def test_binary_inputs_decode_to_the_same_rows_as_json():
    rows, _, _ = decode_infer_request(decode(*body(TENSORS)), SIGNATURE)
    assert rows == [{"x": 0.5, "n": 1, "ok": True, "plan": "basic", "w": 1e300},
                    {"x": -1.25, "n": 2, "ok": False, "plan": "premium", "w": 0.0},
                    {"x": 2.0, "n": 3, "ok": True, "plan": "é", "w": -2.5}]
    as_json = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [0.5, -1.25, 2.0]},
                          {"name": "n", "datatype": "INT64", "shape": [3, 1], "data": [[1], [2], [3]]},
                          {"name": "ok", "datatype": "BOOL", "shape": [3], "data": [True, False, True]},
                          {"name": "plan", "datatype": "BYTES", "shape": [3], "data": ["basic", "premium", "é"]},
                          {"name": "w", "datatype": "FP64", "shape": [3], "data": [1e300, 0.0, -2.5]}]}
    assert decode_infer_request(as_json, SIGNATURE)[0] == rows


def test_json_and_binary_inputs_mix_in_one_request():
    raw, length = body(TENSORS[:1])
    head = json.loads(raw[:int(length)])
    head["inputs"].append({"name": "plan", "datatype": "BYTES", "shape": [3], "data": ["a", "b", "c"]})
    text = json.dumps(head).encode()
    decoded = decode(text + raw[int(length):], str(len(text)))
    assert [t.get("data") for t in decoded["inputs"]] == [[0.5, -1.25, 2.0], ["a", "b", "c"]]
    assert "parameters" not in decoded["inputs"][0]


@pytest.mark.parametrize("tensors, needle", [
    ([("x", "FP32", [4], np.zeros(3, "<f4").tobytes())], "needs 16 bytes, binary_data_size is 12"),
    ([("plan", "BYTES", [2], strings(["a"]))], "shape holds 2 BYTES elements, the binary data 1"),
    ([("plan", "BYTES", [1], strings(["a", "b"]))], "shape holds 1 BYTES elements, the binary data 2"),
    ([("plan", "BYTES", [1], struct.pack("<I", 9) + b"abc")], "goes past the tensor's 7 bytes"),
    ([("plan", "BYTES", [1], b"\x01\x00")], "4-byte length is cut off"),
    ([("plan", "BYTES", [1], strings(["a"])[:-1] + b"\xff")], "not UTF-8"),
    ([("ok", "BOOL", [1], b"\x07")], "a BOOL is one byte, 0 or 1"),
    ([("x", "FP8", [1], b"\x00")], "cannot be sent as binary"),
    ([("x", "FP32", [10_000_000], b"")], "at most"),
])
def test_bad_binary_tensors_are_named(tensors, needle):
    with pytest.raises(InvalidInput, match=needle):
        decode(*body(tensors))


def test_lengths_that_do_not_add_up_are_refused():
    raw, length = body(TENSORS[:1])
    with pytest.raises(InvalidInput, match="add up to 12 bytes, but 13 follow"):
        decode(raw + b"x", length)
    with pytest.raises(InvalidInput, match="goes past the 11 bytes"):
        decode(raw[:-1], length)
    with pytest.raises(InvalidInput, match="past the end"):
        split_body(raw, str(len(raw) + 1))
    with pytest.raises(InvalidInput, match="byte count"):
        split_body(raw, "-3")
    head = json.loads(raw[:int(length)])
    head["inputs"][0]["data"] = [1.0, 2.0, 3.0]
    with pytest.raises(InvalidInput, match="both 'data' and binary_data_size"):
        decode_binary_request(head, raw[int(length):])
    with pytest.raises(InvalidInput, match="no 'inputs'"):
        decode_binary_request([1, 2], b"xx")


def test_outputs_are_binary_where_asked_and_read_back():
    predictions = [{"probability": 0.25, "label": "no"}, {"probability": 0.75, "label": "yes"}]
    response = encode_infer_response(predictions, SIGNATURE, model="m", version=3, request_id="r", wanted=None)
    assert binary_outputs({"parameters": {"binary_data_output": True}}) is True  # tritonclient naming no outputs
    asked = {"outputs": [{"name": "probability", "parameters": {"binary_data": True}}, {"name": "label"}]}
    assert binary_outputs(asked) == {"probability"} and binary_outputs({"inputs": []}) is False
    content, length = encode_binary_response(response, True)
    header = json.loads(content[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes == [16, 4 + 2 + 4 + 3] and all("data" not in o for o in header["outputs"])
    blob = content[length:]
    assert np.frombuffer(blob[:16], "<f8").tolist() == [0.25, 0.75] and blob[16:] == strings(["no", "yes"])
    content, length = encode_binary_response(response, {"label"})
    header = json.loads(content[:length])
    assert header["outputs"][0]["data"] == [0.25, 0.75] and content[length:] == strings(["no", "yes"])
    # A null value cannot be sent as binary: that output stays in the JSON.
    response["outputs"][0]["data"] = [None, 0.5]
    content, length = encode_binary_response(response, True)
    assert json.loads(content[:length])["outputs"][0]["data"] == [None, 0.5]
