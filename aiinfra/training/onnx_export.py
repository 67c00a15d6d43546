"""Our models as ONNX graphs, and int8 variants of them.

A platform-trained model exports to one graph over the **preprocessed** inputs (the version's fitted transforms
stay in preprocess.json beside it, so the exported version is served by the same Predictor): torch modules through
``torch.onnx.export`` (the dynamo exporter, a free row dimension) answering logits, XGBoost and LightGBM boosters
through onnxmltools answering probabilities (or the standardized prediction, mapped back as the booster's is).
Quantization is onnxruntime's dynamic int8 quantization: weights stored as int8, activations quantized per call,
so no calibration set is needed; it applies to the matrix products and convolutions, which tree ensembles have none of.
One consequence: the activations' scale is computed per call over the whole batch, so a row's int8 answer moves
slightly (about 1e-4 in a probability) with the rows it is batched with.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

from aiinfra.errors import InvalidInput
from aiinfra.training.model_dir import ModelSpec
from aiinfra.training.onnx_format import inspect_graph
from aiinfra.training.runtimes import ONNX_FAMILY, BoosterModel, TorchModel, TrainedModel

__all__ = ["QUANTIZABLE_OPS", "export_to_onnx", "quantize_int8"]

INPUT = "input"
# onnxmltools' converters for the tree libraries go up to this opset (their own limit, older than torch's).
TREE_OPSET = 15
QUANTIZABLE_OPS = {"MatMul", "Gemm", "Conv"}


def _export_torch(model: TorchModel, spec: ModelSpec) -> tuple[bytes, str, str]:
    import torch

    # The exporter logs a warning per torchvision operator it cannot register (torchvision is not installed, and
    # our families use none of them): noise in every `aiinfra models export`.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    module = model.module.cpu().eval()
    example = (torch.zeros(2, spec.input_dim),)  # 2 rows: torch.export specializes a dimension of size 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notes about its own internals
        program = torch.onnx.export(module, example, dynamo=True, input_names=[INPUT], output_names=["scores"],
                                    dynamic_shapes=({0: torch.export.Dim("rows")},), verbose=False, optimize=True)
    kind = "values" if spec.task == "regression" else "logits"
    return program.model_proto.SerializeToString(), "scores", kind


def _export_booster(model: BoosterModel, spec: ModelSpec) -> tuple[bytes, str, str]:
    from onnxmltools.convert import convert_lightgbm, convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    types = [(INPUT, FloatTensorType([None, spec.input_dim]))]
    if spec.family == "xgboost":
        graph = convert_xgboost(model.booster, initial_types=types, target_opset=TREE_OPSET)
    else:
        graph = convert_lightgbm(model.booster, initial_types=types, target_opset=TREE_OPSET, zipmap=False)
    if spec.task == "regression":
        return graph.SerializeToString(), "variable", "values"
    return graph.SerializeToString(), "probabilities", "probabilities"


def export_to_onnx(spec: ModelSpec, model: TrainedModel, *, method: str) -> tuple[ModelSpec, bytes]:
    """The spec and graph of ``model`` as family "onnx", with the same task, classes and target scaling."""
    if spec.family == ONNX_FAMILY:
        raise InvalidInput("this version is already an ONNX model; it can be quantized, not exported again")
    try:
        if isinstance(model, TorchModel):
            raw, output, kind = _export_torch(model, spec)
        elif isinstance(model, BoosterModel):
            raw, output, kind = _export_booster(model, spec)
        else:
            raise InvalidInput(f"a {spec.family} model cannot be exported to ONNX")
    except InvalidInput:
        raise
    except Exception as e:  # noqa: BLE001 - each exporter raises its own types
        raise InvalidInput(f"exporting the {spec.family} model to ONNX failed: {str(e).splitlines()[0][:300]}") from None
    info = inspect_graph(raw, what=f"the exported {spec.family} model")
    params = {"input": info.input, "input_dtype": info.input_dtype, "output": output, "scores": kind,
              "producer": info.producer, "opsets": info.opsets, "source": method, "parent_family": spec.family}
    return spec.model_copy(update={"family": ONNX_FAMILY, "params": params}), raw


def quantize_int8(spec: ModelSpec, raw: bytes) -> tuple[ModelSpec, bytes]:
    """Dynamic int8 quantization of an ONNX model's weights; InvalidInput when it has nothing to quantize."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = {n.op_type for n in onnx.load_model_from_string(raw).graph.node}
    if not ops & QUANTIZABLE_OPS:
        raise InvalidInput(f"int8 quantization applies to {sorted(QUANTIZABLE_OPS)}; this graph has none "
                           f"(its operators: {sorted(ops)[:8]}); tree ensembles are already compact")
    with tempfile.TemporaryDirectory(prefix="aiinfra-quantize-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(raw)
        try:
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        except Exception as e:  # noqa: BLE001 - the quantizer raises plain exceptions from deep inside onnx
            raise InvalidInput(f"int8 quantization failed: {str(e).splitlines()[0][:300]}") from None
        quantized = dst.read_bytes()
    info = inspect_graph(quantized, what="the int8 model")
    params: dict[str, Any] = {**spec.params, "producer": info.producer, "opsets": info.opsets, "source": "quantize:int8",
                              "input": info.input, "input_dtype": info.input_dtype}
    return spec.model_copy(update={"params": params}), quantized
