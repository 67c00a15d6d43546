"""Variants of a registered version: ONNX exports of torch and tree models that answer as the original does, and
int8 quantization gated on the parent's holdout rows (real torch, onnxruntime and onnxmltools; no Ray)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_wine

from aiinfra.data.transforms import FeatureSpec, fit_features
from aiinfra.errors import InvalidInput
from aiinfra.inference.predictor import Predictor
from aiinfra.monitoring.profile import build_profile, write_profile
from aiinfra.pipelines.variants import export_version, optimize_version
from aiinfra.platform import open_local
from aiinfra.training.model_dir import ModelSpec, load_model_dir, save_model_dir
from aiinfra.training.models import build_model, seed_everything
from aiinfra.training.tabular import class_labels_for, encode_labels, predict_scores, signature_for

pytest.importorskip("onnxruntime")


def _table(task: str) -> tuple[pd.DataFrame, str]:
    if task == "multiclass":
        data = load_wine(as_frame=True)
        frame = data.frame.rename(columns=lambda c: c.replace("/", "_"))
        return frame.rename(columns={"target": "cultivar"}), "cultivar"
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" ", "_"))
    if task == "regression":
        return frame.drop(columns="target"), "worst_area"
    return frame.rename(columns={"target": "diagnosis"}), "diagnosis"


def _register(platform, tmp_path, task: str, family: str, hidden: tuple[int, ...] = (32, 16)) -> str:
    """A model trained in-process (plain torch or xgboost), registered with its profile as training would."""
    frame, label = _table(task)
    features = [c for c in frame.columns if c != label][:12]
    spec = FeatureSpec.model_validate({"features": [{"column": c, "steps": [{"op": "standardize"}]} for c in features]})
    rng = np.random.default_rng(0)
    order = rng.permutation(len(frame))
    train, holdout = frame.iloc[order[:-120]], frame.iloc[order[-120:]]
    pre = fit_features(train, spec)
    x = pre.transform(train)
    labels = class_labels_for(task, train[label])
    mean, std = (float(train[label].mean()), float(train[label].std())) if task == "regression" else (0.0, 1.0)
    y = encode_labels(task, train[label], labels, mean, std)
    k = len(labels) if task == "multiclass" else 1
    mspec = ModelSpec(family="tabular_mlp" if family == "mlp" else family, params={"hidden": list(hidden)} if family == "mlp" else {}, input_dim=x.shape[1],
                      output_dim=k, task=task, class_labels=labels, target_mean=mean, target_std=std)
    if family == "mlp":
        seed_everything(0)
        module = build_model("tabular_mlp", x.shape[1], k, mspec.params)
        opt = torch.optim.Adam(module.parameters(), lr=0.01)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        loss_fn = {"binary": torch.nn.BCEWithLogitsLoss(), "multiclass": torch.nn.CrossEntropyLoss(),
                   "regression": torch.nn.MSELoss()}[task]
        for _ in range(150):
            opt.zero_grad()
            out = module(xt)
            loss = loss_fn(out if task == "multiclass" else out.squeeze(-1), yt)
            loss.backward()
            opt.step()
        weights = module.state_dict()
    else:
        import xgboost

        objective = {"binary": "binary:logistic", "multiclass": "multi:softprob", "regression": "reg:squarederror"}[task]
        extra = {"num_class": k} if task == "multiclass" else {}
        booster = xgboost.train({"objective": objective, "max_depth": 3, **extra}, xgboost.DMatrix(x, y), 30)
        weights = bytes(booster.save_raw("ubj"))
    model_dir = tmp_path / f"{task}-{family}"
    save_model_dir(model_dir, mspec, weights, pre)
    _, model, _ = load_model_dir(model_dir)
    hx = pre.transform(holdout)
    truth = encode_labels(task, holdout[label], labels) if task != "regression" else holdout[label].to_numpy()
    sig = signature_for(pre, task, labels)
    write_profile(build_profile(holdout, sig.inputs, task=task, class_labels=labels, outputs=model.scores(hx),
                                labels=np.asarray(truth, dtype=np.float64), source="holdout"), model_dir)
    name = f"{task}-{family}"
    return platform.registry.register(name, model_dir, signature=sig, lineage={"dataset_version": "d@abcd"}).ref


@pytest.fixture
def local(config):
    with open_local(config) as p:
        yield p


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("family", ["mlp", "xgboost"])
def test_an_export_answers_as_the_original_and_is_registered_with_its_parent(local, tmp_path, task, family):
    ref = _register(local, tmp_path, task, family)
    out = export_version(local, ref, out=tmp_path / "exported", register=True)
    assert out.max_abs_difference <= 1e-4 and out.rows == 120
    assert out.variant_metric == pytest.approx(out.parent_metric, abs=1e-3)
    version = local.registry.get(out.model)
    assert version.version == 2 and version.lineage.parent_version == 1
    assert version.lineage.model_extra["method"] == "export:onnx" and version.params["family"] == "onnx"
    assert {"model.onnx", "preprocess.json", "reference_profile.parquet"} <= set(version.files)
    assert (tmp_path / "exported" / "model.onnx").exists()
    # Served by the same Predictor, one row or many, with the same answers as the parent.
    parent = local.registry.get(ref)
    a = Predictor(parent, local.registry.download(parent, tmp_path / "a"))
    b = Predictor(version, local.registry.download(version, tmp_path / "b"))
    frame, label = _table(task)
    rows = frame[[f.name for f in parent.signature.inputs]].head(7).to_dict("records")
    for batch in (rows[:1], rows):
        left, right = a.predict(batch), b.predict(batch)
        key = "value" if task == "regression" else "probability"
        np.testing.assert_allclose([r[key] for r in right], [r[key] for r in left], rtol=1e-4, atol=1e-4)
        if task != "regression":
            assert [r["label"] for r in right] == [r["label"] for r in left]


def test_int8_quantization_is_gated_on_the_parents_holdout(local, tmp_path):
    ref = _register(local, tmp_path, "binary", "mlp", hidden=(256, 128))  # big enough for int8 weights to shrink it
    out = optimize_version(local, ref, quantize="int8")
    assert out.model == "binary-mlp@2" and out.parent_metric - out.variant_metric <= 0.01
    version = local.registry.get(out.model)
    assert version.lineage.model_extra["method"] == "quantize:int8"
    assert version.lineage.model_extra["size_bytes"]["variant"] < version.lineage.model_extra["size_bytes"]["parent"]
    assert out.variant_latency_ms > 0 and out.parent_latency_ms > 0
    # A variant of the export (already ONNX) quantizes the graph itself.
    exported = export_version(local, ref, register=True).model
    assert optimize_version(local, exported, quantize="int8").model == "binary-mlp@4"
    with pytest.raises(InvalidInput, match="max_loss must be at least 0"):
        optimize_version(local, ref, quantize="int8", max_loss=-0.1)


def test_a_variant_that_loses_accuracy_is_refused_and_nothing_is_registered(local, tmp_path, monkeypatch):
    import onnx
    from onnx import numpy_helper

    from aiinfra.pipelines import variants

    def broken(spec, raw):  # a real, runnable graph whose last layer's weights are negated: the scores invert
        model = onnx.load_model_from_string(raw)
        last = model.graph.initializer[-2]
        last.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(last), last.name))
        return spec, model.SerializeToString()

    ref = _register(local, tmp_path, "binary", "mlp")
    monkeypatch.setattr(variants, "quantize_int8", broken)
    with pytest.raises(InvalidInput, match=r"refused, nothing registered: roc_auc 0\.\d+ vs parent 0\.9\d+ \(loss allowed 0\.01\)"):
        optimize_version(local, ref, quantize="int8")
    assert len(local.registry.list_versions("binary-mlp")) == 1


def test_what_cannot_be_varied_is_refused(local, tmp_path):
    ref = _register(local, tmp_path, "binary", "xgboost")
    with pytest.raises(InvalidInput, match="tree ensembles are already compact"):
        optimize_version(local, ref, quantize="int8")
    with pytest.raises(InvalidInput, match="say where the export goes"):
        export_version(local, ref)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    with pytest.raises(InvalidInput, match="is not an empty directory"):
        export_version(local, ref, out=tmp_path / "taken")
    with pytest.raises(InvalidInput, match="unknown metric|metric 'nope'"):
        optimize_version(local, _register(local, tmp_path, "binary", "mlp"), quantize="int8", metric="nope")
    exported = export_version(local, ref, register=True).model
    with pytest.raises(InvalidInput, match="already an ONNX model"):
        export_version(local, exported, register=True)
    with pytest.raises(InvalidInput, match="is not supported; use int8"):
        optimize_version(local, ref, quantize="int4")


# -- distillation and pruning: trained on the parent's training rows, read again from its recipe -------------------
def _trained_here(platform, tmp_path, task: str = "binary", hidden=(64, 32)) -> str:
    """A parent as the training pipeline leaves it: its dataset in the catalog and its recipe beside the weights."""
    import io
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from aiinfra.data.catalog import DatasetVersion
    from aiinfra.data.profile import DatasetProfile

    frame, label = _table(task)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf)
    platform.store.write_bytes("staging/t/part-0.parquet", buf.getvalue())
    manifest = DatasetVersion(name="table", version="abcd0002", created_at=0.0, source_uri="memory://t", source_format="parquet",
                              schema=[], row_count=len(frame), rows_in=len(frame), quarantined_count=0, files={},
                              profile=DatasetProfile(row_count=len(frame), sample_rows=0, columns={}))
    dataset = platform.datasets.commit(manifest, {"part-0.parquet": "staging/t/part-0.parquet"}, {}).ref
    ref = _register(platform, tmp_path, task, "mlp", hidden=hidden)
    version = platform.registry.get(ref)
    local = platform.registry.download(version, tmp_path / "recipe")
    features = [f.name for f in version.signature.inputs]
    recipe = {"name": version.name, "task": task,
              "data": {"dataset": dataset, "label": label, "split": {"holdout_fraction": 0.2},
                       "features": {"features": [{"column": c, "steps": [{"op": "standardize"}]} for c in features]}},
              "model": {"family": "tabular_mlp", "params": {"hidden": list(hidden)}},
              "trainer": {"epochs": 100, "batch_size": 32, "lr": 0.01, "patience": 10}}
    (local / "training_config.json").write_text(json.dumps(recipe))
    return platform.registry.register(version.name, local, signature=version.signature, lineage={"dataset_version": dataset}).ref


def test_a_pruned_mlp_is_really_smaller_and_gated(local, tmp_path):
    ref = _trained_here(local, tmp_path)
    out = optimize_version(local, ref, prune=0.5)
    version = local.registry.get(out.model)
    assert version.lineage.model_extra["method"] == "prune:0.5" and version.lineage.parent_version == 2
    assert version.params["family"] == "tabular_mlp" and version.params["hidden"] == [32, 16]
    assert out.variant_bytes < 0.6 * out.parent_bytes  # neurons cut out, not zeroed
    assert out.parent_metric - out.variant_metric <= 0.01
    spec, model, _ = load_model_dir(local.registry.download(version, tmp_path / "pruned"))
    assert [m.out_features for m in model.module if isinstance(m, torch.nn.Linear)] == [32, 16, 1]


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_a_distilled_student_learns_from_the_teacher_and_is_gated(local, tmp_path, task):
    ref = _trained_here(local, tmp_path, task)
    out = optimize_version(local, ref, distill=True, student={"hidden": [16]})
    version = local.registry.get(out.model)
    assert version.lineage.model_extra["method"] == "distill" and version.params["hidden"] == [16]
    assert out.variant_bytes < out.parent_bytes / 4
    assert out.parent_metric - out.variant_metric <= 0.01


def test_distillation_and_pruning_need_a_recipe_and_one_method(local, tmp_path):
    ref = _register(local, tmp_path, "binary", "mlp")  # no training_config.json: as an imported model
    with pytest.raises(InvalidInput, match="no training_config.json"):
        optimize_version(local, ref, distill=True)
    with pytest.raises(InvalidInput, match="exactly one of quantize, distill and prune"):
        optimize_version(local, ref, quantize="int8", prune=0.3)
    with pytest.raises(InvalidInput, match="prune amount must be between 0 and 1"):
        optimize_version(local, _trained_here(local, tmp_path), prune=1.5)


def test_the_image_cnn_exports_and_quantizes_its_convolutions():
    from aiinfra.training.onnx_export import export_to_onnx, quantize_int8
    from aiinfra.training.onnx_format import OnnxModel
    from aiinfra.training.runtimes import TorchModel

    seed_everything(0)
    spec = ModelSpec(family="image_cnn", params={"channels": [8, 16]}, input_dim=64, output_dim=10, task="multiclass",
                     class_labels=list(range(10)))
    torch_model = TorchModel(build_model("image_cnn", 64, 10, spec.params).eval(), spec)
    x = np.random.default_rng(0).random((33, 64)).astype(np.float32)
    onnx_spec, raw = export_to_onnx(spec, torch_model, method="export:onnx")
    exported = OnnxModel(raw, onnx_spec)
    np.testing.assert_allclose(exported.scores(x), torch_model.scores(x), atol=1e-5)
    np.testing.assert_allclose(exported.scores(x[:1]), torch_model.scores(x[:1]), atol=1e-5)  # one row: a free dimension
    int8_spec, int8 = quantize_int8(onnx_spec, raw)
    import onnx

    assert "ConvInteger" in {n.op_type for n in onnx.load_model_from_string(int8).graph.node}
    quantized = OnnxModel(int8, int8_spec)
    assert np.abs(quantized.scores(x) - torch_model.scores(x)).max() < 0.05
    assert int8_spec.params["source"] == "quantize:int8"


def test_a_wide_and_deep_mlp_learns_a_linear_truth_prunes_its_deep_part_and_exports():
    from aiinfra.training.compress import fit, prune_mlp
    from aiinfra.training.onnx_export import export_to_onnx
    from aiinfra.training.onnx_format import OnnxModel
    from aiinfra.training.runtimes import TorchModel

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 6)).astype(np.float32)
    y = (x @ np.array([2.0, -1.0, 0.5, 0, 0, 1.5]) > 0).astype(np.float32)
    seed_everything(0)
    module = build_model("tabular_mlp", 6, 1, {"hidden": [16, 8], "wide": True})
    assert {k.split(".")[0] for k in module.state_dict()} == {"deep", "wide"}
    module, history = fit(module, "binary", x[:2500], y[:2500], x[2500:], y[2500:], epochs=15, lr=0.01)
    spec = ModelSpec(family="tabular_mlp", params={"hidden": [16, 8], "wide": True}, input_dim=6, output_dim=1)
    scores = predict_scores(module, spec, x[2500:])
    assert ((scores > 0.5) == (y[2500:] > 0.5)).mean() > 0.95
    pruned, widths = prune_mlp(module, 0.5)
    assert widths == [8, 4] and pruned.wide.weight.shape == (1, 6)
    onnx_spec, raw = export_to_onnx(spec, TorchModel(module, spec), method="export:onnx")
    np.testing.assert_allclose(OnnxModel(raw, onnx_spec).scores(x[:50]), predict_scores(module, spec, x[:50]), atol=1e-5)
    with pytest.raises(InvalidInput, match="wide must be true or false"):
        build_model("tabular_mlp", 6, 1, {"wide": "yes"})


def test_the_default_student_halves_the_widths_and_keeps_the_teachers_other_settings():
    from aiinfra.pipelines.variants import _default_student

    wide = ModelSpec(family="tabular_mlp", params={"hidden": [16], "wide": True, "dropout": 0.1}, input_dim=8, output_dim=1)
    assert _default_student(wide) == {"family": "tabular_mlp", "hidden": [8], "wide": True, "dropout": 0.1}
    plain = ModelSpec(family="tabular_mlp", params={}, input_dim=8, output_dim=1)
    assert _default_student(plain) == {"family": "tabular_mlp", "hidden": [16, 8]}
    trees = ModelSpec(family="xgboost", params={"max_depth": 3}, input_dim=8, output_dim=1)
    assert _default_student(trees) == {"family": "tabular_mlp", "hidden": [32]}
