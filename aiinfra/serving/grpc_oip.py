"""The Open Inference Protocol v2 over gRPC: KServe's and Triton's ``inference.GRPCInferenceService``.

Ray Serve's gRPC proxy serves it (``serve.grpc_port``; the proxy registers the service with
``SERVICER_FUNCTION``) and calls the ingress's methods of the same names (``ModelInfer``, ``ModelMetadata``, ...)
with the request message. The service's definition and generated messages are Triton's
(``tritonclient.grpc.service_pb2``, BSD-3-Clause, maintained by NVIDIA): a superset of KServe's
``grpc_predict_v2.proto`` with the same package and service names, so ``tritonclient.grpc`` and KServe's
``InferenceGRPCClient`` both speak to it unchanged.

Here, without Ray: a ``ModelInferRequest`` to the same body the REST route decodes (typed contents, or
``raw_input_contents`` through the binary extension's decoder), an answer back to a ``ModelInferResponse``,
the metadata messages, and each platform error's gRPC status. The bearer token travels as the
``authorization`` metadata entry, as HTTP's header does.
"""

from __future__ import annotations

import struct
import sys
from typing import Any

import grpc
import numpy as np

from aiinfra.errors import AiInfraError, InvalidInput
from aiinfra.registry.types import Signature
from aiinfra.serving.oip import tensor_metadata
from aiinfra.serving.oip_binary import decode_binary_request

__all__ = ["SERVICER_FUNCTION", "grpc_code", "infer_body", "infer_response", "metadata_response", "pb",
           "start_options", "token_of"]

SERVICER_FUNCTION = "aiinfra.serving.grpc_oip.add_inference_service"

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE,
}

# Where each datatype's values live in InferTensorContents.
_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def start_options(config: Any) -> dict[str, Any]:
    """``serve.start``'s arguments for the platform's config: the HTTP proxy, and the gRPC proxy with the
    inference service where ``serve.grpc_port`` is set. Serve reads them once, when it starts: a change needs
    `serve shutdown` (or a new cluster)."""
    sv = config.serve
    options: dict[str, Any] = {"http_options": {"host": sv.host, "port": sv.port, "request_timeout_s": sv.request_timeout_s}}
    if sv.grpc_port is not None:
        options["grpc_options"] = {"port": sv.grpc_port, "grpc_servicer_functions": [SERVICER_FUNCTION],
                                   "request_timeout_s": sv.request_timeout_s}
    return options


def pb() -> Any:
    """The generated messages, importable under the module name their classes carry.

    Triton's generated classes say they live in ``grpc_service_pb2`` (the proto file's name), which is not
    where tritonclient puts them, and Serve pickles each request from its gRPC proxy to the replica: pickle
    finds a class by that module name, so both processes alias it (this runs in both, see below).
    """
    from tritonclient.grpc import model_config_pb2, service_pb2

    sys.modules.setdefault("grpc_service_pb2", service_pb2)
    sys.modules.setdefault("model_config_pb2", model_config_pb2)
    return service_pb2


def add_inference_service(servicer: Any, server: Any) -> None:
    """What Serve's gRPC proxy calls (``grpc_servicer_functions``) to register the inference service."""
    pb()
    from tritonclient.grpc import service_pb2_grpc

    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)


def grpc_code(error: AiInfraError) -> grpc.StatusCode:
    return _CODES.get(error.status_code, grpc.StatusCode.INTERNAL)


def token_of(metadata: Any) -> str | None:
    """The ``authorization`` entry of a call's invocation metadata (keys are lower-case in gRPC)."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def _text(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"input {name!r}: BYTES values must be UTF-8 text") from None


def infer_body(request: Any) -> dict[str, Any]:
    """A ``ModelInferRequest`` as the OIP body ``decode_infer_request`` checks (the REST route's JSON)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; give one "
                           "per input, in the inputs' order")
    inputs: list[dict[str, Any]] = []
    for i, t in enumerate(request.inputs):
        tensor: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": [int(d) for d in t.shape]}
        if raw:
            tensor["parameters"] = {"binary_data_size": len(raw[i])}
        else:
            field = _CONTENTS.get(t.datatype)
            if field is None:
                raise InvalidInput(f"input {t.name!r}: datatype {t.datatype!r} is not an OIP datatype")
            values = list(getattr(t.contents, field))
            tensor["data"] = [_text(v, t.name) for v in values] if t.datatype == "BYTES" else values
        inputs.append(tensor)
    body: dict[str, Any] = {"inputs": inputs}
    if request.id:
        body["id"] = request.id
    if request.outputs:
        body["outputs"] = [{"name": o.name} for o in request.outputs]
    return decode_binary_request(body, b"".join(raw)) if raw else body


_NUMPY = {"BOOL": "<?", "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "UINT8": "<u1",
          "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "FP32": "<f4", "FP64": "<f8"}


def _raw(datatype: str, values: list[Any]) -> bytes:
    """A tensor's values as the protocol's raw bytes: little-endian numbers, or length-prefixed UTF-8 texts."""
    if datatype == "BYTES":
        texts = [str(v).encode("utf-8") for v in values]
        return b"".join(struct.pack("<I", len(t)) + t for t in texts)
    return np.asarray(values, dtype=_NUMPY[datatype]).tobytes()


def infer_response(response: dict[str, Any]) -> Any:
    """The REST route's answer (``encode_infer_response``) as a ``ModelInferResponse``: each output's values in
    ``raw_output_contents``, in the outputs' order, as Triton answers (and what its client reads)."""
    messages = pb()
    out = messages.ModelInferResponse(model_name=response["model_name"], model_version=response["model_version"],
                                      id=response.get("id") or "")
    for o in response["outputs"]:
        out.outputs.add(name=o["name"], datatype=o["datatype"], shape=o["shape"])
        out.raw_output_contents.append(_raw(o["datatype"], o["data"]))
    return out


def metadata_response(name: str, version: int, signature: Signature, platform: str) -> Any:
    messages = pb()

    def tensors(fields: list[Any]) -> list[Any]:
        return [messages.ModelMetadataResponse.TensorMetadata(**tensor_metadata(f)) for f in fields]

    return messages.ModelMetadataResponse(name=name, versions=[str(version)], platform=platform,
                                          inputs=tensors(signature.inputs), outputs=tensors(signature.outputs))
