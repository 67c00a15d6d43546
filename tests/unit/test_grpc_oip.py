"""OIP v2 over gRPC without a server: Triton's messages to the REST body and back, statuses, start options."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from aiinfra.config import load_config
from aiinfra.errors import InvalidInput, NotFound, ServiceUnavailable, Unauthorized
from aiinfra.registry.types import FieldSpec, Signature
from aiinfra.serving.grpc_oip import (
    SERVICER_FUNCTION,
    grpc_code,
    infer_body,
    infer_response,
    metadata_response,
    pb,
    start_options,
    token_of,
)
from aiinfra.serving.oip import decode_infer_request

SIG = Signature(inputs=[FieldSpec(name="x", dtype="float64"), FieldSpec(name="plan", dtype="string"),
                        FieldSpec(name="n", dtype="int64")],
                outputs=[FieldSpec(name="label", dtype="int64"), FieldSpec(name="probability", dtype="float64")])


def _request(raw: bool = False):
    messages = pb()
    req = messages.ModelInferRequest(model_name="m", id="r-1")
    values = {"x": ("FP64", [1.5, 2.5]), "plan": ("BYTES", ["basic", "prémium"]), "n": ("INT64", [3, 4])}
    for name, (datatype, data) in values.items():
        t = req.inputs.add(name=name, datatype=datatype, shape=[2])
        if raw:
            if datatype == "BYTES":
                req.raw_input_contents.append(b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in data))
            else:
                req.raw_input_contents.append(np.array(data, dtype=np.float64 if datatype == "FP64" else np.int64).tobytes())
        elif datatype == "BYTES":
            t.contents.bytes_contents.extend(v.encode() for v in data)
        else:
            getattr(t.contents, "fp64_contents" if datatype == "FP64" else "int64_contents").extend(data)
    req.outputs.add(name="probability")
    return req


@pytest.mark.parametrize("raw", [False, True])
def test_a_model_infer_request_decodes_as_the_rest_body_would(raw):
    rows, request_id, wanted = decode_infer_request(infer_body(_request(raw)), SIG)
    assert request_id == "r-1" and wanted == ["probability"]
    assert [dict(r) for r in rows] == [{"x": 1.5, "plan": "basic", "n": 3}, {"x": 2.5, "plan": "prémium", "n": 4}]


def test_raw_contents_that_do_not_match_the_inputs_are_refused():
    req = _request(raw=True)
    req.raw_input_contents.pop()
    with pytest.raises(InvalidInput, match="raw_input_contents has 2 entries for 3 inputs"):
        infer_body(req)
    req = _request(raw=True)
    req.raw_input_contents[0] = b"\x00" * 12  # 1.5 float64s for a shape of 2
    with pytest.raises(InvalidInput, match="'x'"):
        infer_body(req)
    bad = pb().ModelInferRequest(model_name="m")
    bad.inputs.add(name="plan", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"\xff\xfe")
    with pytest.raises(InvalidInput, match="UTF-8"):
        infer_body(bad)


def test_the_answer_becomes_typed_contents_and_metadata_names_the_tensors():
    response = infer_response({"model_name": "m", "model_version": "3", "id": "r-1", "outputs": [
        {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 1]},
        {"name": "probability", "datatype": "FP64", "shape": [2], "data": [0.25, 0.75]},
        {"name": "plan", "datatype": "BYTES", "shape": [1], "data": ["basic"]}]})
    assert response.model_version == "3" and response.id == "r-1"
    from tritonclient.grpc import InferResult  # the client's own reading of an answer

    result = InferResult(response)
    assert result.as_numpy("label").tolist() == [0, 1] and result.as_numpy("probability").tolist() == [0.25, 0.75]
    assert result.as_numpy("plan").tolist() == [b"basic"]
    meta = metadata_response("m", 3, SIG, "aiinfra")
    assert meta.versions == ["3"] and [(t.name, t.datatype, list(t.shape)) for t in meta.inputs][1] == ("plan", "BYTES", [-1])


def test_errors_map_to_grpc_statuses_and_the_token_comes_from_metadata():
    assert grpc_code(InvalidInput("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_code(Unauthorized("x")) == grpc.StatusCode.UNAUTHENTICATED
    assert grpc_code(NotFound("x")) == grpc.StatusCode.NOT_FOUND
    assert grpc_code(ServiceUnavailable("x")) == grpc.StatusCode.UNAVAILABLE
    assert token_of([("application", "a"), ("Authorization", "Bearer t")]) == "Bearer t"
    assert token_of([]) is None


def test_serve_starts_the_grpc_proxy_only_where_a_port_is_set():
    off = start_options(load_config(environ={}))
    assert "grpc_options" not in off and off["http_options"]["port"] == 8000
    on = start_options(load_config(environ={"AIINFRA_SERVE_GRPC_PORT": "9100"}))
    assert on["grpc_options"] == {"port": 9100, "grpc_servicer_functions": [SERVICER_FUNCTION], "request_timeout_s": 30.0}
    module, _, function = SERVICER_FUNCTION.rpartition(".")
    import importlib

    assert callable(getattr(importlib.import_module(module), function))  # the proxy imports it by this path


def test_fuzzed_infer_requests_decode_or_get_a_named_invalid_input():
    """Any ModelInferRequest a client can build (names, datatypes, shapes, contents, raw bytes) is decoded or
    refused with InvalidInput: never another exception, which a replica would answer as INTERNAL."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    datatypes = st.sampled_from(["FP64", "FP32", "INT64", "INT32", "BYTES", "BOOL", "UINT8", "FP16", "BF16", "", "X"])
    names = st.sampled_from(["x", "plan", "n", "", "other"])
    tensors = st.lists(st.tuples(names, datatypes, st.lists(st.integers(-2, 5), max_size=3),
                                 st.lists(st.floats(allow_nan=True), max_size=4), st.binary(max_size=24)), max_size=4)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(tensors, st.booleans(), st.text(max_size=8))
    def check(spec, raw, request_id):
        req = pb().ModelInferRequest(model_name="m", id=request_id)
        for name, datatype, shape, numbers, blob in spec:
            t = req.inputs.add(name=name, datatype=datatype, shape=shape)
            if raw:
                req.raw_input_contents.append(blob)
            elif datatype == "BYTES":
                t.contents.bytes_contents.append(blob)
            elif datatype in ("FP64",):
                t.contents.fp64_contents.extend(numbers)
            elif datatype == "INT64":
                t.contents.int64_contents.extend(int(v) for v in numbers if v == v and abs(v) < 2**62)
        try:
            decode_infer_request(infer_body(req), SIG)
        except InvalidInput:
            pass

    check()
