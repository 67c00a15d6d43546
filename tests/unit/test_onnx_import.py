"""Bring your own ONNX model: the graph checks, the scores read from each converter's outputs, and the import
pipeline end to end on the local stores (a real onnxruntime, real skl2onnx / onnxmltools graphs; no Ray)."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from aiinfra.data.catalog import DatasetVersion
from aiinfra.data.profile import DatasetProfile
from aiinfra.errors import InvalidInput
from aiinfra.inference.predictor import Predictor
from aiinfra.pipelines.model_import import import_onnx, load_import_signature
from aiinfra.platform import open_local
from aiinfra.training.onnx_format import inspect_graph, pick_output, scores_from_output

skl2onnx = pytest.importorskip("skl2onnx")
from skl2onnx.common.data_types import FloatTensorType  # noqa: E402

COLUMNS = ["mean radius", "mean texture", "mean smoothness", "worst area"]


def _table() -> pd.DataFrame:
    data = load_breast_cancer(as_frame=True)
    frame = data.frame[COLUMNS].rename(columns=lambda c: c.replace(" ", "_")).astype("float64")
    frame["diagnosis"] = data.target.astype("int64")
    return frame


def _graph(model, width: int, *, zipmap: bool = False, rows=None, opset: int = 17) -> bytes:
    options = {id(model): {"zipmap": False}} if not zipmap and hasattr(model, "predict_proba") else None
    onx = skl2onnx.to_onnx(model, initial_types=[("input", FloatTensorType([rows, width]))], options=options,
                           target_opset=opset)
    return onx.SerializeToString()


def _signature(task: str = "binary", n: int = 4, **extra) -> dict:
    names = [c.replace(" ", "_") for c in COLUMNS][:n]
    sig = {"task": task, "inputs": [{"name": c, "dtype": "float64", "nullable": c == "mean_texture"} for c in names]}
    if task != "regression":
        sig["class_labels"] = [0, 1]
    return {**sig, **extra}


@pytest.fixture
def table() -> pd.DataFrame:
    return _table()


@pytest.fixture
def classifier(table):
    x, y = table.drop(columns="diagnosis").to_numpy(np.float32), table["diagnosis"]
    return make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)


def _commit(catalog, name: str, frame: pd.DataFrame, version: str = "abcd0001") -> str:
    """A dataset version in the catalog, as ingestion would leave it (ingestion itself runs on Ray Data)."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf)
    catalog.store.write_bytes(f"staging/{name}/part-0.parquet", buf.getvalue())
    manifest = DatasetVersion(name=name, version=version, created_at=0.0, source_uri="memory://test", source_format="parquet",
                              schema=[], row_count=len(frame), rows_in=len(frame), quarantined_count=0, files={},
                              profile=DatasetProfile(row_count=len(frame), sample_rows=0, columns={}))
    return catalog.commit(manifest, {"part-0.parquet": f"staging/{name}/part-0.parquet"}, {}).ref


@pytest.fixture
def local(config, table):
    with open_local(config) as p:
        p.holdout = _commit(p.datasets, "cancer", table)
        yield p


# -- the graph checks ---------------------------------------------------------------------------------------------
def test_a_skl2onnx_pipeline_is_inspected(classifier):
    info = inspect_graph(_graph(classifier, 4))
    assert (info.input, info.input_dtype, info.width) == ("input", "float32", 4)
    assert [o.name for o in info.outputs] == ["label", "probabilities"]
    assert info.producer.startswith("skl2onnx") and "ai.onnx.ml" in info.opsets
    assert pick_output(info, "binary", 1) == "probabilities"


@pytest.mark.parametrize("raw, message", [
    (b"", "has no graph"),
    (b"\x00\x01garbage" * 10, "is not an ONNX model"),
])
def test_a_file_that_is_not_onnx_is_refused(raw, message):
    with pytest.raises(InvalidInput, match=message):
        inspect_graph(raw, what="m.onnx")


def test_graphs_the_platform_cannot_serve_are_refused_with_the_reason(classifier):
    import onnx

    with pytest.raises(InvalidInput, match="exactly 1 row"):
        inspect_graph(_graph(classifier, 4, rows=1))
    model = onnx.load_model_from_string(_graph(classifier, 4))
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "width"
    with pytest.raises(InvalidInput, match="dynamic width"):
        inspect_graph(model.SerializeToString())
    model = onnx.load_model_from_string(_graph(classifier, 4))
    for o in model.opset_import:
        if o.domain == "":
            o.version = 99
    with pytest.raises(InvalidInput, match="opset 99; supported: 7 to"):
        inspect_graph(model.SerializeToString())
    two = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["a", "b"], ["y"])], "two",
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [None, 3]) for n in "ab"],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 3])]),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    with pytest.raises(InvalidInput, match=r"with one input per column each must be \(rows, 1\)"):
        inspect_graph(two.SerializeToString())
    ints = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "ints",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.INT64, [None, 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.INT64, [None, 3])]),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    with pytest.raises(InvalidInput, match="holds int64; it must be float32 or float64"):
        inspect_graph(ints.SerializeToString())


@pytest.mark.parametrize("task, out, kind, want", [
    ("binary", np.array([[0.8, 0.2], [0.1, 0.9]]), "probabilities", [0.2, 0.9]),
    ("binary", np.array([[0.0], [2.0]]), "logits", [0.5, 1 / (1 + np.exp(-2.0))]),
    ("binary", [{0: 0.7, 1: 0.3}, {0: 0.4, 1: 0.6}], "probabilities", [0.3, 0.6]),
    ("regression", np.array([[1.5], [-2.0]]), "values", [1.5 * 2 + 10, -2.0 * 2 + 10]),
])
def test_each_converters_output_becomes_the_platforms_scores(task, out, kind, want):
    got = scores_from_output(out, task=task, classes=1, kind=kind, class_labels=[0, 1], target_mean=10.0 if task == "regression" else 0.0,
                             target_std=2.0 if task == "regression" else 1.0)
    np.testing.assert_allclose(got, want)


def test_multiclass_zipmap_is_read_in_class_label_order():
    rows = [{"b": 0.1, "a": 0.7, "c": 0.2}]
    np.testing.assert_allclose(scores_from_output(rows, task="multiclass", classes=3, kind="probabilities",
                                                  class_labels=["a", "b", "c"]), [[0.7, 0.1, 0.2]])
    with pytest.raises(InvalidInput, match="not the signature's class_labels"):
        scores_from_output(rows, task="multiclass", classes=3, kind="probabilities", class_labels=["a", "b", "z"])


# -- the signature file ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"class_labels": None}, "needs class_labels"),
    ({"class_labels": [0, 1, 2]}, "exactly 2 class_labels"),
    ({"inputs": [{"name": "a", "dtype": "float64"}, {"name": "a", "dtype": "float64"}]}, "more than once"),
    ({"inputs": [{"name": "signup", "dtype": "timestamp"}]}, "inputs.0.dtype"),
    ({"task": "ranking"}, "task"),
])
def test_a_bad_signature_file_is_refused_naming_the_field(change, message):
    with pytest.raises(InvalidInput, match=message):
        load_import_signature({**_signature(), **change})


# -- the import pipeline -----------------------------------------------------------------------------------------
def test_an_imported_classifier_is_scored_gated_registered_and_served(local, classifier, table, tmp_path):
    path = tmp_path / "cancer.onnx"
    path.write_bytes(_graph(classifier, 4, zipmap=True))  # skl2onnx's default ZipMap output, as most users export
    out = import_onnx(local, "cancer", path, _signature(), holdout=local.holdout, label="diagnosis")
    assert out.model == "cancer@1" and out.alias == "champion" and out.metrics["roc_auc"] > 0.95
    version = local.registry.get("cancer@champion")
    assert version.lineage.model_extra["imported_from"] == "cancer.onnx"
    assert version.lineage.model_extra["holdout_dataset"] == local.holdout
    assert {"model.onnx", "model.json", "preprocess.json", "reference_profile.parquet"} <= set(version.files)
    assert version.params["family"] == "onnx" and version.signature.inputs[1].nullable

    # Served through the same Predictor as a trained model: same answers as scikit-learn's, missing value as NaN.
    served = Predictor(version, local.registry.download(version, tmp_path / "served"))
    rows = table.drop(columns="diagnosis").head(5).to_dict("records")
    rows[0]["mean_texture"] = None
    answers = served.predict(rows)
    x = table.drop(columns="diagnosis").head(5).to_numpy(np.float32)
    x[0, 1] = np.nan
    np.testing.assert_allclose([a["probability"] for a in answers], classifier.predict_proba(x)[:, 1], atol=1e-5)
    with pytest.raises(InvalidInput, match="mean_radius: missing"):
        served.predict([{"mean_texture": 1.0}])

    # A second, weaker model is gated against the champion on the same holdout rows, and refused.
    weak = make_pipeline(SimpleImputer(), LogisticRegression()).fit(
        table[["mean_smoothness"]].to_numpy(np.float32)[:, :1].repeat(4, axis=1), table["diagnosis"])
    path2 = tmp_path / "weak.onnx"
    path2.write_bytes(_graph(weak, 4))
    out2 = import_onnx(local, "cancer", path2, _signature(), holdout=local.holdout, label="diagnosis")
    assert out2.model == "cancer@2" and out2.alias is None and not out2.verdict["passed"]
    assert "vs champion cancer@1" in out2.verdict["reason"]
    # Importing the same file again returns the version the first import made.
    assert import_onnx(local, "cancer", path, _signature(), holdout=local.holdout, label="diagnosis").model == "cancer@1"


def test_an_imported_regressor_reports_rmse(local, table, tmp_path):
    x = table[[c for c in table.columns if c not in ("diagnosis", "worst_area")]].to_numpy(np.float32)
    reg = LinearRegression().fit(x, table["worst_area"])
    path = tmp_path / "area.onnx"
    path.write_bytes(_graph(reg, 3))
    sig = {"task": "regression", "inputs": [{"name": c, "dtype": "float64"} for c in ("mean_radius", "mean_texture", "mean_smoothness")]}
    out = import_onnx(local, "area", path, sig, holdout=local.holdout, label="worst_area")
    assert out.alias == "champion" and 0 < out.metrics["rmse"] < table["worst_area"].std()


@pytest.mark.parametrize("bad, message", [
    ("width", "takes 4 inputs per row"),
    ("label", "has no column(s) nope"),
    ("logits", "is not probabilities"),
    ("output", "no output 'nope'"),
])
def test_a_bad_import_is_refused_and_nothing_is_registered(local, classifier, tmp_path, bad, message):
    path = tmp_path / "m.onnx"
    path.write_bytes(_graph(classifier, 4))
    sig, label = _signature(), "diagnosis"
    if bad == "width":
        sig = _signature(n=3)
    elif bad == "label":
        label = "nope"
    elif bad == "logits":  # the label output named as the scores: integers, not probabilities
        sig = _signature(output="label")
        message = "holds int64, not scores"
    elif bad == "output":
        sig = _signature(output="nope")
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_onnx(local, "cancer", path, sig, holdout=local.holdout, label=label)
    assert local.registry.list_models() == []


def test_a_graph_answering_logits_unannounced_is_refused(local, tmp_path):
    import onnx

    w = onnx.numpy_helper.from_array(np.full((4, 1), 3.0, np.float32), "w")
    graph = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["input", "w"], ["logit"])], "lin",
                                   [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [None, 4])],
                                   [onnx.helper.make_tensor_value_info("logit", onnx.TensorProto.FLOAT, [None, 1])], [w])
    path = tmp_path / "lin.onnx"
    path.write_bytes(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]).SerializeToString())
    # A probe of zeros answers 0, which is a fine probability: the holdout's answers (far outside [0, 1]) are what
    # give it away, so the import is refused when scoring it.
    with pytest.raises(InvalidInput, match="scores: logits"):
        import_onnx(local, "lin", path, _signature(), holdout=local.holdout, label="diagnosis")
    out = import_onnx(local, "lin", path, _signature(scores="logits"), holdout=local.holdout, label="diagnosis")
    assert out.model == "lin@1"
    assert json.loads(local.registry.download("lin@1", tmp_path / "d").joinpath("model.json").read_text())["params"]["scores"] == "logits"


def test_a_graph_with_external_weights_is_refused():
    import onnx

    w = onnx.numpy_helper.from_array(np.ones((4, 1), np.float32), "w")
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["input", "w"], ["y"])], "lin",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [None, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 1])], [w]),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../../etc/passwd"
    with pytest.raises(InvalidInput, match="keeps weights in external files"):
        inspect_graph(model.SerializeToString(), what="m.onnx")


# -- one input per column: a ColumnTransformer over strings and numbers -------------------------------------------
@pytest.fixture
def customers():
    from aiinfra.data.synthetic import make_customers

    return make_customers(3_000, seed=5)


def _column_graph(customers) -> tuple[bytes, object]:
    from skl2onnx.common.data_types import Int64TensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder

    numbers, texts = ["tenure_months", "monthly_charges"], ["plan", "region"]
    model = make_pipeline(ColumnTransformer([("num", make_pipeline(SimpleImputer(), StandardScaler()), numbers),
                                             ("cat", OneHotEncoder(handle_unknown="ignore"), texts),
                                             ("calls", "passthrough", ["support_calls"])]),
                          LogisticRegression(max_iter=1000))
    model.fit(customers[[*numbers, *texts, "support_calls"]], customers["churned"])
    types = [(c, FloatTensorType([None, 1])) for c in numbers] + [(c, StringTensorType([None, 1])) for c in texts] \
        + [("support_calls", Int64TensorType([None, 1]))]
    onx = skl2onnx.to_onnx(model, initial_types=types, target_opset=17, options={id(model.steps[-1][1]): {"zipmap": False}})
    return onx.SerializeToString(), model


def _column_signature(**changes) -> dict:
    inputs = [{"name": "tenure_months", "dtype": "float64"}, {"name": "monthly_charges", "dtype": "float64", "nullable": True},
              {"name": "plan", "dtype": "string", "nullable": True}, {"name": "region", "dtype": "string"},
              {"name": "support_calls", "dtype": "int64"}]
    return {"task": "binary", "class_labels": [0, 1], "inputs": inputs, **changes}


def test_a_column_transformer_graph_is_imported_and_served_with_string_inputs(local, customers, tmp_path):
    raw, model = _column_graph(customers)
    info = inspect_graph(raw)
    assert info.layout == "columns" and {i.name: i.dtype for i in info.inputs}["plan"] == "object"
    path = tmp_path / "ct.onnx"
    path.write_bytes(raw)
    holdout = _commit(local.datasets, "customers", customers.tail(800).reset_index(drop=True), version="abcd0003")
    out = import_onnx(local, "churn-ct", path, _column_signature(), holdout=holdout, label="churned", slices=["plan"])
    assert out.alias == "champion" and out.metrics["roc_auc"] > 0.7
    version = local.registry.get(out.model)
    assert [f.dtype for f in version.signature.inputs][2] == "string"
    served = Predictor(version, local.registry.download(version, tmp_path / "served"))
    rows = customers[["tenure_months", "monthly_charges", "plan", "region", "support_calls"]].head(6).to_dict("records")
    got = [a["probability"] for a in served.predict(rows)]
    np.testing.assert_allclose(got, model.predict_proba(pd.DataFrame(rows))[:, 1], atol=1e-5)
    # A missing category is the empty string to the graph, which its one-hot encoder ignores as unknown.
    answer = served.predict([{**rows[0], "plan": None, "monthly_charges": None}])
    assert 0.0 <= answer[0]["probability"] <= 1.0
    with pytest.raises(InvalidInput, match="region: must be a string"):
        served.predict([{**rows[0], "region": 3}])


@pytest.mark.parametrize("change, message", [
    ({"inputs": _column_signature()["inputs"][:4]}, "no field for the graph's input 'support_calls'"),
    ({"inputs": [*_column_signature()["inputs"][:4], {"name": "support_calls", "dtype": "string"}]},
     "support_calls: the signature says string, the graph's input holds int64"),
    ({"inputs": [*_column_signature()["inputs"][:4], {"name": "support_calls", "dtype": "int64", "nullable": True}]},
     "nullable, but the graph's int64 input cannot hold a missing value"),
])
def test_a_column_graph_whose_inputs_do_not_match_the_signature_is_refused(local, customers, tmp_path, change, message):
    raw, _ = _column_graph(customers)
    path = tmp_path / "ct.onnx"
    path.write_bytes(raw)
    with pytest.raises(InvalidInput, match=message):
        import_onnx(local, "churn-ct", path, _column_signature(**change), holdout=local.holdout, label="diagnosis")
    assert local.registry.list_models() == []


def test_a_string_field_cannot_reach_a_one_tensor_graph(local, classifier, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(_graph(classifier, 4))
    sig = _signature()
    sig["inputs"][3] = {"name": "worst_area", "dtype": "string"}
    with pytest.raises(InvalidInput, match="string field\\(s\\) worst_area cannot reach it"):
        import_onnx(local, "cancer", path, sig, holdout=local.holdout, label="diagnosis")
