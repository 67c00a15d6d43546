"""The tree families without Ray: hyperparameters, config checks, the stored model, the best-round cut, serving."""

from __future__ import annotations

from pathlib import Path

import lightgbm
import numpy as np
import pytest
import xgboost
import yaml

from aiinfra.data.synthetic import LABEL, make_customers
from aiinfra.data.transforms import fit_features, load_feature_spec
from aiinfra.errors import InvalidInput
from aiinfra.inference.predictor import Predictor
from aiinfra.registry.types import FileDigest, ModelVersion
from aiinfra.training.config import TrainConfig, load_train_config
from aiinfra.training.model_dir import ModelSpec, load_model_dir, save_model_dir
from aiinfra.training.ray_train import planned_reports
from aiinfra.training.runtimes import tree_model_from_bytes
from aiinfra.training.search import _most_reports
from aiinfra.training.tabular import encode_labels, signature_for
from aiinfra.training.tree_loop import TreeState, best_model_bytes, load_tree_checkpoint, save_tree_checkpoint
from aiinfra.training.trees import library_params, loss_of, tree_params

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"
FAMILIES = ["xgboost", "lightgbm"]


def _raw(family: str, params: dict | None = None, **extra) -> dict:
    return {
        "name": "churn-gbt", "task": "binary",
        "data": {"dataset": "customers", "label": LABEL,
                 "features": yaml.safe_load((CONFIGS / "customers_features.yaml").read_text())},
        "model": {"family": family, "params": params or {}}, **extra,
    }


@pytest.fixture(scope="module")
def customers():
    return make_customers(800, seed=3)


@pytest.fixture(scope="module")
def pre(customers):
    return fit_features(customers, load_feature_spec(CONFIGS / "customers_features.yaml"))


def _booster(family: str, x: np.ndarray, y: np.ndarray, task: str, rounds: int = 12, classes: int = 2):
    """A small booster trained in this process with the parameters the Ray Train loop would use."""
    lib = library_params(family, tree_params(family, {"max_depth": 3}), task=task, num_classes=classes, seed=0, threads=1)
    if family == "xgboost":
        return xgboost.train(lib, xgboost.DMatrix(x, label=y), num_boost_round=rounds)
    return lightgbm.train(lib, lightgbm.Dataset(x, label=y), num_boost_round=rounds)


def _raw_bytes(family: str, booster) -> bytes:
    return bytes(booster.save_raw("ubj")) if family == "xgboost" else booster.model_to_string().encode()


# ---------------------------------------------------------------------------------------- hyperparameters
@pytest.mark.parametrize("family", FAMILIES)
def test_bad_tree_hyperparameters_are_refused_naming_each(family):
    with pytest.raises(InvalidInput) as info:
        load_train_config(_raw(family, {"learning_rate": 0, "max_dept": 3, "num_boost_round": 0}))
    message = info.value.message
    assert "learning_rate" in message and "max_dept" in message and "num_boost_round" in message
    assert family in message


def test_an_unknown_family_names_the_tree_families_too():
    with pytest.raises(InvalidInput, match="unknown model family 'gbdt'.*lightgbm.*xgboost"):
        load_train_config(_raw("gbdt"))


def test_a_search_space_that_could_draw_a_bad_tree_value_is_refused():
    raw = _raw("xgboost", tune={"search_space": {"model.params.subsample": {"uniform": [0.5, 1.5]},
                                                   "model.params.max_depth": {"randint": [2, 8]}}})
    with pytest.raises(InvalidInput) as info:
        load_train_config(raw)
    assert "model.params.subsample = 1.5" in info.value.message and "max_depth" not in info.value.message


def test_lightgbm_on_gpu_is_refused_before_anything_starts():
    with pytest.raises(InvalidInput, match="lightgbm trains on CPU"):
        load_train_config(_raw("lightgbm", trainer={"use_gpu": True}))


def test_library_params_map_one_vocabulary_to_each_library():
    p = tree_params("lightgbm", {"subsample": 0.8, "max_depth": 0, "reg_lambda": 2.0, "min_child_samples": 5})
    lgb = library_params("lightgbm", p, task="multiclass", num_classes=4, seed=7, threads=2)
    assert lgb["objective"] == "multiclass" and lgb["num_class"] == 4 and lgb["metric"] == "multi_logloss"
    assert lgb["bagging_fraction"] == 0.8 and lgb["bagging_freq"] == 1 and lgb["max_depth"] == -1
    assert lgb["lambda_l2"] == 2.0 and lgb["min_data_in_leaf"] == 5 and lgb["deterministic"] and lgb["seed"] == 7
    xgb = library_params("xgboost", tree_params("xgboost", {}), task="regression", num_classes=0, seed=1, threads=1,
                         use_gpu=True)
    assert xgb["objective"] == "reg:squarederror" and xgb["eval_metric"] == "rmse" and xgb["device"] == "cuda"
    assert "num_class" not in xgb and xgb["tree_method"] == "hist"
    assert loss_of("xgboost", "regression", 0.5) == 0.25 and loss_of("lightgbm", "regression", 0.5) == 0.5


def test_reports_planned_follow_rounds_and_checkpoint_spacing():
    cfg = TrainConfig.model_validate(_raw("xgboost", {"num_boost_round": 95, "checkpoint_every": 10}))
    assert planned_reports(cfg) == 10
    tuned = load_train_config(_raw("lightgbm", {"num_boost_round": 50},
                                   tune={"search_space": {"model.params.num_boost_round": {"choice": [40, 200]},
                                                          "model.params.checkpoint_every": {"choice": [5, 20]}}}))
    assert _most_reports(tuned) == 40  # 200 rounds every 5: ASHA must not end such a trial early


# ---------------------------------------------------------------------------------------- stored models
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_a_saved_tree_model_scores_as_the_booster_did(family, task, customers, pre, tmp_path):
    x = pre.transform(customers)
    if task == "binary":
        y, labels, k, mean, std = customers[LABEL].to_numpy(), [0, 1], 1, 0.0, 1.0
    elif task == "multiclass":
        y, labels, k, mean, std = customers["support_calls"].clip(0, 2).to_numpy(), [0, 1, 2], 3, 0.0, 1.0
    else:
        target = customers["monthly_charges"].to_numpy()
        mean, std, labels, k = float(target.mean()), float(target.std()), [], 1
        y = (target - mean) / std
    booster = _booster(family, x, y, task, classes=max(k, 2))
    spec = ModelSpec(family=family, input_dim=pre.output_dim, output_dim=k, task=task, class_labels=labels,
                     target_mean=mean, target_std=std)
    save_model_dir(tmp_path / "m", spec, _raw_bytes(family, booster), pre)
    weights = {"xgboost": "model.ubj", "lightgbm": "model.txt"}[family]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", weights, "preprocess.json"]
    spec2, model, pre2 = load_model_dir(tmp_path / "m")
    assert spec2 == spec
    scores = model.scores(pre2.transform(customers.head(40)))
    raw = booster.inplace_predict(x[:40]) if family == "xgboost" else booster.predict(x[:40])
    if task == "regression":
        np.testing.assert_allclose(scores, np.asarray(raw) * std + mean, rtol=1e-6)
        assert abs(scores.mean() - customers["monthly_charges"].head(40).mean()) < 0.5 * std
    else:
        np.testing.assert_allclose(scores, np.asarray(raw).reshape(scores.shape), rtol=1e-6)
        assert scores.shape == ((40, 3) if task == "multiclass" else (40,))
    assert model.scores(x[:0]).shape == ((0, 3) if task == "multiclass" else (0,))
    model.to("cuda")  # a GPU deployment: the booster still scores, on the CPU
    np.testing.assert_array_equal(model.scores(pre2.transform(customers.head(40))), scores)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_corrupt_tree_model_is_refused_not_half_loaded(family, pre, tmp_path):
    spec = ModelSpec(family=family, input_dim=pre.output_dim, output_dim=1)
    save_model_dir(tmp_path / "m", spec, b"{not a model", pre)
    with pytest.raises(InvalidInput, match=f"stored {family} model cannot be read"):
        load_model_dir(tmp_path / "m")
    with pytest.raises(TypeError):
        save_model_dir(tmp_path / "n", spec, {}, pre)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_best_round_cut_keeps_exactly_the_trees_up_to_it(family, customers, pre, tmp_path):
    x, y = pre.transform(customers), customers[LABEL].to_numpy()
    booster = _booster(family, x, y, "binary", rounds=10)
    state = TreeState(family=family, rounds=10, best_round=3, best_val_loss=0.4, history=[{"epoch": 0}])
    save_tree_checkpoint(tmp_path / "ckpt", _raw_bytes(family, booster), state)
    raw, again = load_tree_checkpoint(tmp_path / "ckpt")
    assert again == state
    spec = ModelSpec(family=family, input_dim=pre.output_dim, output_dim=1)
    save_model_dir(tmp_path / "m", spec, best_model_bytes(raw, state), pre)
    _, model, _ = load_model_dir(tmp_path / "m")
    if family == "xgboost":
        expected = booster.inplace_predict(x[:20], iteration_range=(0, 4))
        assert model.booster.num_boosted_rounds() == 4
    else:
        expected = booster.predict(x[:20], num_iteration=4)
        assert model.booster.num_trees() == 4
    np.testing.assert_allclose(model.scores(x[:20]), expected, rtol=1e-6)
    every = TreeState(family=family, rounds=10, best_round=3, cut_to_best=False)  # no early stopping: all rounds
    kept = tree_model_from_bytes(family, best_model_bytes(raw, every))
    assert (kept.num_boosted_rounds() if family == "xgboost" else kept.num_trees()) == 10


@pytest.mark.parametrize("family", FAMILIES)
def test_a_predictor_serves_a_tree_model_with_the_same_validation(family, customers, pre, tmp_path):
    x, y = pre.transform(customers), encode_labels("binary", customers[LABEL], [0, 1])
    booster = _booster(family, x, y, "binary")
    spec = ModelSpec(family=family, input_dim=pre.output_dim, output_dim=1)
    save_model_dir(tmp_path / "m", spec, _raw_bytes(family, booster), pre)
    version = ModelVersion(name="gbt", version=1, status="active", created_at=0.0, created_by="t", artifact_uri="x",
                           files={"model.json": FileDigest("0" * 64, 1)}, signature=signature_for(pre))
    predictor = Predictor(version, tmp_path / "m")
    rows = [{"tenure_months": 2.0, "monthly_charges": 150.0, "support_calls": 6, "plan": "basic", "region": "north"},
            {"tenure_months": 60.0, "monthly_charges": 20.0, "support_calls": 0, "plan": "premium", "region": "south"}]
    out = predictor.predict(rows)
    expected = booster.inplace_predict(pre.transform_rows(rows)) if family == "xgboost" else booster.predict(pre.transform_rows(rows))
    assert [round(o["probability"], 5) for o in out] == [round(float(p), 5) for p in expected]
    assert out[0]["probability"] > out[1]["probability"]  # the short-tenure, many-calls customer churns more
    with pytest.raises(InvalidInput, match=r"instances\[0\]\.support_calls: must be an integer"):
        predictor.predict([{**rows[0], "support_calls": "many"}])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_regression_model_is_evaluated_against_the_label_in_its_own_units(family, customers, pre, tmp_path):
    """The holdout's truth is the label as stored, the scores are mapped back from the standardized target: an
    RMSE in the target's units (this once compared scores with a truth standardized the wrong way round)."""
    from aiinfra.pipelines.train import _holdout_outputs

    target = customers["monthly_charges"].to_numpy()
    mean, std = float(target.mean()), float(target.std())
    booster = _booster(family, pre.transform(customers), (target - mean) / std, "regression", rounds=30)
    spec = ModelSpec(family=family, input_dim=pre.output_dim, output_dim=1, task="regression", class_labels=[],
                     target_mean=mean, target_std=std)
    save_model_dir(tmp_path / "m", spec, _raw_bytes(family, booster), pre)
    cfg = TrainConfig.model_validate({**_raw(family), "task": "regression",
                                      "data": {**_raw(family)["data"], "label": "monthly_charges"}})
    _, scores, y_true = _holdout_outputs(tmp_path / "m", customers, cfg)
    np.testing.assert_array_equal(y_true, target)
    rmse = float(np.sqrt(np.mean((scores - y_true) ** 2)))
    assert rmse < 0.5 * std, (rmse, std)  # monthly_charges is among the inputs: a good fit, in dollars


@pytest.mark.parametrize("family", FAMILIES)
def test_a_tree_model_asked_for_another_task_or_width_is_refused(family, customers, pre, tmp_path):
    x = pre.transform(customers)
    multiclass = _booster(family, x, customers["support_calls"].clip(0, 2).to_numpy(), "multiclass", classes=3)
    raw = _raw_bytes(family, multiclass)
    as_binary = ModelSpec(family=family, input_dim=pre.output_dim, output_dim=1, task="binary")
    save_model_dir(tmp_path / "a", as_binary, raw, pre)
    with pytest.raises(InvalidInput, match="trained for multiclass, model.json says binary"):
        load_model_dir(tmp_path / "a")
    four = ModelSpec(family=family, input_dim=pre.output_dim, output_dim=4, task="multiclass", class_labels=[0, 1, 2, 3])
    save_model_dir(tmp_path / "b", four, raw, pre)
    with pytest.raises(InvalidInput, match="predicts 3 classes, model.json says 4"):
        load_model_dir(tmp_path / "b")
    wider = ModelSpec(family=family, input_dim=pre.output_dim + 2, output_dim=3, task="multiclass", class_labels=[0, 1, 2])
    save_model_dir(tmp_path / "c", wider, raw, pre)
    with pytest.raises(InvalidInput, match=f"takes {pre.output_dim} inputs"):
        load_model_dir(tmp_path / "c")


def test_the_run_log_summarises_hundreds_of_rounds_and_names_a_resume():
    from aiinfra.pipelines.train import _history_note

    cfg = TrainConfig.model_validate(_raw("xgboost"))
    history = [{"epoch": i, "val_loss": 1.0 / (i + 1) if i < 120 else 0.01 + i / 1e4, "start_epoch": 0 if i < 50 else 50}
               for i in range(150)]
    note = _history_note(cfg, history, 3.2)
    assert note.startswith("150 round(s) in 3.2s") and "best 0.0083 at round 120" in note
    assert "resumed from round 50 after a failure" in note and note.count(",") < 10  # not 150 values
    mlp = TrainConfig.model_validate({**_raw("tabular_mlp"), "model": {"family": "tabular_mlp"}})
    assert _history_note(mlp, history[:3], 1.0) == "3 epoch(s) in 1.0s; val_loss by epoch: 1.0000, 0.5000, 0.3333"


def test_a_tree_search_over_an_integer_default_or_a_torch_setting_is_refused():
    with pytest.raises(InvalidInput) as info:
        load_train_config(_raw("xgboost", tune={"search_space": {"model.params.max_depth": {"uniform": [2, 10]},
                                                                 "trainer.lr": {"loguniform": [0.001, 0.1]}}}))
    message = info.value.message
    assert "model.params.max_depth: uniform draws fractions" in message
    assert "trainer.lr: xgboost does not use trainer.lr" in message
