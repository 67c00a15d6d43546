"""Training building blocks without Ray: config, checkpoints, model families, tabular I/O, model dirs."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from pydantic import ValidationError
from torch import nn

from aiinfra.data.synthetic import DIGITS_LABEL, LABEL, make_customers, make_digits
from aiinfra.data.transforms import fit_features, load_feature_spec
from aiinfra.errors import InvalidInput
from aiinfra.inference.predictor import Predictor
from aiinfra.registry.types import ModelVersion
from aiinfra.storage import FileDigest
from aiinfra.training.checkpoints import (
    TrainingState,
    epoch_seed,
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
)
from aiinfra.training.config import (
    SearchDistribution,
    TrainerSettings,
    TuneSettings,
    check_search_space,
    config_hash,
    get_path,
    load_train_config,
    set_path,
)
from aiinfra.training.ddp import LoopConfig, loss_function, make_optimizer
from aiinfra.training.model_dir import ModelSpec, load_model_dir, save_model_dir
from aiinfra.training.models import build_model
from aiinfra.training.ray_train import PreparedData, loop_config, storage_path
from aiinfra.training.tabular import (
    class_labels_for,
    encode_labels,
    postprocess,
    predict_scores,
    signature_for,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "jobs" / "configs"


def _base(**overrides):
    """A small valid config as a dict (features inline: the example file's)."""
    features = yaml.safe_load((CONFIGS / "customers_features.yaml").read_text())
    raw = {
        "name": "churn",
        "task": "binary",
        "data": {"dataset": "customers", "label": LABEL, "features": features},
        "model": {"family": "tabular_mlp", "params": {"hidden": [8]}},
        "trainer": {"epochs": 2, "lr": 0.01},
    }
    raw.update(overrides)
    return raw


def _with_space(space, raw=None):
    raw = raw or _base()
    raw["tune"] = {"search_space": space}
    return raw


def _problems(message: str) -> list[str]:
    """The "path = value" part of each problem in a search-space error."""
    body = message.removeprefix("invalid training config: ")
    return [part.split(": ", 1)[0] for part in body.split("; ")]


def _error(fn, *args) -> str:
    with pytest.raises(InvalidInput) as info:
        fn(*args)
    return info.value.message


@pytest.fixture(scope="module")
def customers():
    return make_customers(500, seed=3)


@pytest.fixture(scope="module")
def customers_pre(customers):
    return fit_features(customers, load_feature_spec(CONFIGS / "customers_features.yaml"))


@pytest.fixture(scope="module")
def digits():
    return make_digits()


@pytest.fixture(scope="module")
def digits_pre(digits):
    return fit_features(digits, load_feature_spec(CONFIGS / "digits_features.yaml"))


# --------------------------------------------------------------------------------------------- config


def test_churn_yaml_reads_features_relative_to_the_config_file(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the relative features path must not depend on the working directory
    cfg = load_train_config(CONFIGS / "churn.yaml")
    assert cfg.data.features == load_feature_spec(CONFIGS / "customers_features.yaml")
    assert cfg.data.feature_view_name == "customer_profile"
    assert cfg.experiment_name == "churn"
    assert cfg.trainer.epochs == 8 and cfg.model.params["wide"] is True and cfg.data.slices == ["plan", "region"]

    # A copy somewhere else resolves against its own directory.
    sub = tmp_path / "configs"
    sub.mkdir()
    shutil.copy(CONFIGS / "churn.yaml", sub / "churn.yaml")
    shutil.copy(CONFIGS / "customers_features.yaml", sub / "customers_features.yaml")
    assert load_train_config(sub / "churn.yaml") == cfg
    (sub / "customers_features.yaml").unlink()
    assert "customers_features.yaml" in _error(load_train_config, sub / "churn.yaml")


def test_dict_config_resolves_features_path_against_cwd(tmp_path, monkeypatch):
    shutil.copy(CONFIGS / "customers_features.yaml", tmp_path / "f.yaml")
    monkeypatch.chdir(tmp_path)
    raw = _base()
    raw["data"]["features"] = "f.yaml"
    cfg = load_train_config(raw)
    assert [f.column for f in cfg.data.features.features] == [
        "tenure_months", "monthly_charges", "support_calls", "plan", "region"]
    assert raw["data"]["features"] == "f.yaml"  # the caller's dict is not modified


@pytest.mark.parametrize("task,metric", [("binary", "roc_auc"), ("multiclass", "accuracy"), ("regression", "rmse")])
def test_default_gate_metric_follows_task(task, metric):
    cfg = load_train_config(_base(task=task))
    assert cfg.gate is not None and cfg.gate.metric == metric


def test_explicit_gate_is_kept():
    cfg = load_train_config(_base(task="multiclass", gate={"metric": "log_loss"}))
    assert cfg.gate.metric == "log_loss"


def test_several_bad_fields_give_one_error_naming_each():
    raw = _base(trainer={"epochs": 0, "lr": -1.0, "optimizer": "adam"})
    msg = _error(load_train_config, raw)
    assert "trainer.epochs" in msg and "trainer.lr" in msg
    assert "trainer.optimizer" not in msg


@pytest.mark.parametrize("raw_patch,needle", [
    ({"bogus": 1}, "bogus"),
    ({"name": "../evil"}, "name"),
    ({"task": "ranking"}, "task"),
    ({"trainer": {"optimizer": "rmsprop"}}, "trainer.optimizer"),
])
def test_invalid_top_level_fields_are_named(raw_patch, needle):
    assert needle in _error(load_train_config, _base(**raw_patch))


def test_missing_features_file_is_reported(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_base(data={"dataset": "d", "label": "y", "features": "nope.yaml"})))
    msg = _error(load_train_config, tmp_path / "c.yaml")
    assert "nope.yaml" in msg


def test_search_space_bounds_out_of_range_are_refused_together():
    raw = _with_space({
        "model.params.dropout": {"uniform": [0.0, 1.5]},
        "trainer.lr": {"uniform": [-1, 1]},
    })
    assert _problems(_error(load_train_config, raw)) == [
        "tune.search_space.model.params.dropout = 1.5", "tune.search_space.trainer.lr = -1.0"]


def test_search_space_choice_and_randint_extremes():
    # randint [lo, hi) draws at most hi - 1: epochs may go up to 10_000.
    ok = load_train_config(_with_space({"trainer.epochs": {"randint": [1, 10_001]}}))
    assert ok.tune.search_space["trainer.epochs"].extremes() == [1, 10_000]
    msg = _error(load_train_config, _with_space({"trainer.epochs": {"randint": [1, 10_002]}}))
    assert _problems(msg) == ["tune.search_space.trainer.epochs = 10001"]
    # Every listed value is checked, not only the first and last.
    msg = _error(load_train_config, _with_space({"model.params.hidden": {"choice": [[8], [-1], [16]]}}))
    assert _problems(msg) == ["tune.search_space.model.params.hidden = [-1]"]
    # A hyperparameter the family does not have is refused.
    assert "nonsense" in _error(load_train_config, _with_space({"model.params.nonsense": {"choice": [1]}}))
    # A field the trainer does not have is refused.
    assert "trainer.nonsense" in _error(load_train_config, _with_space({"trainer.nonsense": {"grid": [1, 2]}}))


def test_churn_tune_yaml_is_valid():
    cfg = load_train_config(CONFIGS / "churn_tune.yaml")
    assert set(cfg.tune.search_space) == {"trainer.lr", "model.params.hidden"}
    assert cfg.tune.search_space["trainer.lr"].kind == "loguniform"
    check_search_space(cfg)  # idempotent on an accepted config


@pytest.mark.parametrize("kwargs,needle", [
    ({}, "exactly one"),
    ({"uniform": (0, 1), "choice": [1]}, "exactly one"),
    ({"uniform": (1, 1)}, "low bound"),
    ({"randint": (5, 2)}, "low bound"),
    ({"loguniform": (0, 1)}, "positive"),
    ({"choice": []}, "at least one"),
])
def test_search_distribution_refuses(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        SearchDistribution(**kwargs)


def test_search_distribution_extremes():
    assert SearchDistribution(uniform=(0.1, 0.5)).extremes() == [0.1, 0.5]
    assert SearchDistribution(randint=(2, 6)).extremes() == [2, 5]
    assert SearchDistribution(grid=["a", "b", "c"]).extremes() == ["a", "b", "c"]
    assert SearchDistribution(choice=[[1], [2]]).kind == "choice"


@pytest.mark.parametrize("path,needle", [
    ("data.label", "only trainer.* and model.params.*"),
    ("model.family", "only trainer.* and model.params.*"),
    ("trainer.seed", "cannot be searched"),
    ("trainer.num_workers", "cannot be searched"),
])
def test_tune_settings_refuse_paths(path, needle):
    with pytest.raises(ValueError, match=needle):
        TuneSettings(search_space={path: {"choice": [1]}})
    msg = _error(load_train_config, _with_space({path: {"choice": [1]}}))
    assert path in msg


def test_tune_settings_need_a_search_space():
    assert "tune.search_space" in _error(load_train_config, _with_space({}))


def test_config_hash_is_stable_across_key_order():
    raw = _base()
    reordered = {k: raw[k] for k in reversed(list(raw))}
    reordered["trainer"] = {"lr": 0.01, "epochs": 2}
    reordered["data"] = {k: raw["data"][k] for k in reversed(list(raw["data"]))}
    a, b = load_train_config(raw), load_train_config(reordered)
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 64
    changed = copy.deepcopy(raw)
    changed["trainer"]["lr"] = 0.02
    assert config_hash(load_train_config(changed)) != config_hash(a)


def test_get_and_set_path():
    data = {"trainer": {"lr": 0.1}}
    set_path(data, "model.params.hidden", [4])
    set_path(data, "trainer.lr", 0.5)
    assert data == {"trainer": {"lr": 0.5}, "model": {"params": {"hidden": [4]}}}
    assert get_path(data, "model.params.hidden") == [4]
    with pytest.raises(KeyError):
        get_path(data, "model.params.dropout")


def test_image_cnn_with_image_shape_can_be_tuned():
    raw = yaml.safe_load((CONFIGS / "digits_cnn.yaml").read_text())
    raw["data"]["features"] = str(CONFIGS / "digits_features.yaml")
    raw["tune"] = {"search_space": {"trainer.lr": {"loguniform": [0.001, 0.01]}}}
    cfg = load_train_config(raw)
    assert cfg.model.params["image_shape"] == [1, 8, 8]


def test_uniform_over_an_integer_field_is_refused():
    with pytest.raises(InvalidInput, match="trainer.epochs"):
        load_train_config(_with_space({"trainer.epochs": {"uniform": [1, 10]}}))


def test_invalid_model_params_are_refused_without_tune():
    raw = _base(model={"family": "tabular_mlp", "params": {"dropout": 1.5}})
    with pytest.raises(InvalidInput, match="dropout"):
        load_train_config(raw)


# ---------------------------------------------------------------------------------------- checkpoints


def _train_steps(model, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x).squeeze(-1), y).backward()
        opt.step()


def _mlp(seed=0):
    torch.manual_seed(seed)
    return build_model("tabular_mlp", 5, 1, {"hidden": [6]})


class _DDPLike(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.module = inner

    def forward(self, x):
        return self.module(x)


def test_checkpoint_round_trip_resumes_adam_exactly(tmp_path):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 5, generator=g), torch.randn(32, generator=g)
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    _train_steps(model, opt, x, y, 3)
    best = {k: v.clone() + 1.0 for k, v in model.state_dict().items()}
    state = TrainingState(epoch=2, best_val_loss=0.25, best_epoch=1, bad_epochs=1,
                          history=[{"epoch": 0, "val_loss": 0.3}], seed=7)
    save_checkpoint(tmp_path / "ckpt", _DDPLike(model), {f"module.{k}": v for k, v in best.items()}, opt, state)

    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["best.safetensors", "model.safetensors", "optimizer.safetensors", "state.json"]
    assert all(p.suffix in (".safetensors", ".json") for p in (tmp_path / "ckpt").iterdir())

    weights, best_back, opt_state, state_back = load_checkpoint(tmp_path / "ckpt")
    assert set(weights) == set(model.state_dict())  # "module." stripped
    for k, v in model.state_dict().items():
        assert torch.equal(weights[k], v)
        assert torch.equal(best_back[k], best[k])
    assert state_back == state
    assert json.loads((tmp_path / "ckpt" / "state.json").read_text())["rng"].startswith("reseeded")

    resumed = _mlp(seed=99)
    resumed.load_state_dict(weights)
    opt2 = torch.optim.Adam(resumed.parameters(), lr=0.05)
    opt2.load_state_dict(opt_state)
    assert [float(s["step"]) for s in opt2.state_dict()["state"].values()] == [3.0] * 4
    _train_steps(model, opt, x, y, 1)
    _train_steps(resumed, opt2, x, y, 1)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_without_best_stores_current_weights(tmp_path):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # no state at all before a step
    save_checkpoint(tmp_path, model, None, opt, TrainingState())
    weights, best, opt_state, state = load_checkpoint(tmp_path)
    assert all(torch.equal(weights[k], best[k]) for k in weights)
    assert opt_state["state"] == {} and state.epoch == -1 and state.best_val_loss is None


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.Adam(p, lr=0.01),
    lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
    lambda p: torch.optim.SGD(p, lr=0.01),
])
def test_optimizer_flat_round_trip(make):
    model = _mlp()
    opt = make(model.parameters())
    _train_steps(model, opt, torch.randn(8, 5), torch.randn(8), 2)
    original = opt.state_dict()
    tensors, meta = optimizer_to_flat(original)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    meta = json.loads(json.dumps(meta))  # it must survive JSON
    back = optimizer_from_flat(tensors, meta)
    assert set(back["state"]) == set(original["state"])
    for idx, per_param in original["state"].items():
        assert set(back["state"][idx]) == set(per_param)
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(back["state"][idx][key], value)
            else:
                assert back["state"][idx][key] == value
    fresh = make(_mlp(seed=5).parameters())
    fresh.load_state_dict(back)
    assert fresh.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_epoch_seed_is_deterministic_and_distinct():
    seeds = {(r, e): epoch_seed(42, r, e) for r in range(16) for e in range(100)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= s < 2**31 for s in seeds.values())
    assert epoch_seed(42, 3, 7) == seeds[(3, 7)]
    assert epoch_seed(43, 0, 0) != epoch_seed(42, 0, 0)
    assert epoch_seed(2**31 - 1, 1023, 9_999) < 2**31


# ---------------------------------------------------------------------------------------------- models


def test_tabular_mlp_shapes_and_layers():
    default = build_model("tabular_mlp", 7, 3)
    assert default(torch.randn(5, 7)).shape == (5, 3)
    linears = [m for m in default.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(7, 32), (32, 16), (16, 3)]
    rich = build_model("tabular_mlp", 4, 1, {"hidden": [6, 6], "dropout": 0.2, "batch_norm": True})
    assert sum(isinstance(m, nn.BatchNorm1d) for m in rich.modules()) == 2
    assert sum(isinstance(m, nn.Dropout) for m in rich.modules()) == 2
    linear = build_model("tabular_mlp", 4, 1, {"hidden": []})
    assert len([m for m in linear.modules() if isinstance(m, nn.Linear)]) == 1


def test_image_cnn_infers_square_image():
    model = build_model("image_cnn", 64, 10)
    assert model.image_shape == (1, 8, 8)
    assert model(torch.randn(5, 64)).shape == (5, 10)
    rgb = build_model("image_cnn", 48, 4, {"image_shape": [3, 4, 4], "channels": [8]})
    assert rgb(torch.randn(2, 48)).shape == (2, 4)
    tall = build_model("image_cnn", 64, 2, {"image_shape": [1, 4, 16], "channels": [4, 4, 4]})
    assert tall(torch.randn(3, 64)).shape == (3, 2)


@pytest.mark.parametrize("family,input_dim,params,needles", [
    ("image_cnn", 60, {"image_shape": [1, 8, 8]}, ["image_shape", "64", "60"]),
    ("image_cnn", 10, {}, ["image_shape", "10"]),
    ("image_cnn", 64, {"image_shape": [8, 8]}, ["image_shape"]),
    ("image_cnn", 64, {"channels": []}, ["channels"]),
    ("image_cnn", 64, {"channels": [0]}, ["channels"]),
    ("image_cnn", 64, {"dropout": 1.0}, ["dropout"]),
    ("tabular_mlp", 4, {"hidden": [8, -1]}, ["hidden", "-1"]),
    ("tabular_mlp", 4, {"hidden": [2.5]}, ["hidden"]),
    ("tabular_mlp", 4, {"dropout": 1.0}, ["dropout"]),
    ("tabular_mlp", 4, {"dropout": -0.1}, ["dropout"]),
    ("tabular_mlp", 4, {"widths": [3]}, ["tabular_mlp", "widths"]),
    ("transformer", 4, {}, ["transformer", "image_cnn", "tabular_mlp"]),
])
def test_build_model_names_the_problem(family, input_dim, params, needles):
    msg = _error(build_model, family, input_dim, 2, params)
    for needle in needles:
        assert needle in msg


# --------------------------------------------------------------------------------------------- tabular


def test_class_labels_for():
    assert class_labels_for("binary", pd.Series([1, 0, 1, np.nan])) == [0, 1]
    assert class_labels_for("binary", pd.Series(np.array([1, 0], dtype=np.int64))) == [0, 1]
    assert all(type(v) is int for v in class_labels_for("binary", pd.Series(np.array([1, 0], dtype=np.int64))))
    assert class_labels_for("multiclass", pd.Series(["b", "c", "a", "b"])) == ["a", "b", "c"]
    assert class_labels_for("regression", pd.Series([1.0, 2.0])) == []
    assert "exactly 2" in _error(class_labels_for, "binary", pd.Series([0, 1, 2]))
    assert "exactly 2" in _error(class_labels_for, "binary", pd.Series([1, 1]))
    assert "at least 2" in _error(class_labels_for, "multiclass", pd.Series(["x", "x"]))


def test_encode_labels():
    codes = encode_labels("multiclass", pd.Series(["c", "a", "b"]), ["a", "b", "c"])
    assert codes.dtype == np.int64 and codes.tolist() == [2, 0, 1]
    binary = encode_labels("binary", pd.Series(["yes", "no"]), ["no", "yes"])
    assert binary.dtype == np.float32 and binary.tolist() == [1.0, 0.0]
    msg = _error(encode_labels, "multiclass", pd.Series(["a", "zebra"]), ["a", "b"])
    assert "'zebra'" in msg and "not seen in training" in msg
    assert "missing" in _error(encode_labels, "binary", pd.Series([0, None]), [0, 1])
    reg = encode_labels("regression", pd.Series([1.0, 3.0, 5.0]), [], target_mean=3.0, target_std=2.0)
    assert reg.dtype == np.float32 and reg.tolist() == [-1.0, 0.0, 1.0]


def test_predict_scores_by_task():
    x = np.random.default_rng(0).normal(size=(37, 5)).astype(np.float64)
    torch.manual_seed(0)
    binary = build_model("tabular_mlp", 5, 1, {"hidden": [4]})
    p = predict_scores(binary, ModelSpec(family="tabular_mlp", input_dim=5, output_dim=1), x)
    assert p.shape == (37,) and ((p >= 0) & (p <= 1)).all()
    small_batches = predict_scores(binary, ModelSpec(family="tabular_mlp", input_dim=5, output_dim=1), x, batch_size=8)
    np.testing.assert_allclose(small_batches, p, rtol=1e-6)

    multi = build_model("tabular_mlp", 5, 4, {"hidden": [4]})
    spec = ModelSpec(family="tabular_mlp", input_dim=5, output_dim=4, task="multiclass", class_labels=list("abcd"))
    probs = predict_scores(multi, spec, x)
    assert probs.shape == (37, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert predict_scores(multi, spec, x[:0]).shape == (0, 4)

    reg = build_model("tabular_mlp", 5, 1, {"hidden": [4]})
    rspec = ModelSpec(family="tabular_mlp", input_dim=5, output_dim=1, task="regression", class_labels=[],
                      target_mean=100.0, target_std=10.0)
    with torch.no_grad():
        raw = reg(torch.from_numpy(x.astype(np.float32))).squeeze(-1).double().numpy()
    np.testing.assert_allclose(predict_scores(reg, rspec, x), raw * 10.0 + 100.0, rtol=1e-9)
    assert predict_scores(reg, rspec, x[:1]).shape == (1,)


def test_postprocess_uses_class_labels():
    spec = ModelSpec(family="tabular_mlp", input_dim=1, output_dim=1, class_labels=["stay", "leave"])
    rows = postprocess(spec, np.array([0.2, 0.5, 0.9]))
    assert [r["label"] for r in rows] == ["stay", "leave", "leave"]
    assert [r["probability"] for r in rows] == [0.2, 0.5, 0.9]
    mspec = ModelSpec(family="tabular_mlp", input_dim=1, output_dim=3, task="multiclass", class_labels=[7, 8, 9])
    rows = postprocess(mspec, np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]))
    assert [r["label"] for r in rows] == [9, 7]
    assert rows[0]["probability"] == 0.7 and rows[0]["probabilities"] == [0.1, 0.2, 0.7]
    rspec = ModelSpec(family="tabular_mlp", input_dim=1, output_dim=1, task="regression", class_labels=[])
    assert postprocess(rspec, np.array([1.5, -2.0])) == [{"value": 1.5}, {"value": -2.0}]


def test_signature_for(customers_pre):
    sig = signature_for(customers_pre)
    inputs = {f.name: f for f in sig.inputs}
    assert list(inputs) == ["tenure_months", "monthly_charges", "support_calls", "plan", "region"]
    assert inputs["support_calls"].dtype == "int64" and inputs["tenure_months"].dtype == "float64"
    assert inputs["plan"].dtype == "string" and inputs["plan"].categories == ["basic", "premium", "standard"]
    assert inputs["tenure_months"].categories is None
    assert [(f.name, f.dtype) for f in sig.outputs] == [("label", "int64"), ("probability", "float64")]
    strings = signature_for(customers_pre, "multiclass", ["a", "b", "c"])
    assert [(f.name, f.dtype) for f in strings.outputs] == [("label", "string"), ("probability", "float64")]
    reg = signature_for(customers_pre, "regression", [])
    assert [(f.name, f.dtype) for f in reg.outputs] == [("value", "float64")]


# ------------------------------------------------------------------------------------------- model dir


def test_model_dir_round_trip(tmp_path, customers, customers_pre):
    torch.manual_seed(0)
    spec = ModelSpec(family="tabular_mlp", params={"hidden": [8], "dropout": 0.1}, input_dim=customers_pre.output_dim,
                     output_dim=1, class_labels=[0, 1])
    module = build_model(spec.family, spec.input_dim, spec.output_dim, spec.params)
    wrapped = {f"module.{k}": v for k, v in module.state_dict().items()}  # as DDP names them
    save_model_dir(tmp_path / "m", spec, wrapped, customers_pre)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "preprocess.json", "weights.safetensors"]

    spec2, loaded, pre2 = load_model_dir(tmp_path / "m")
    module2 = loaded.module
    assert spec2 == spec and pre2 == customers_pre
    assert not module2.training  # loaded for inference
    for k, v in module.state_dict().items():
        assert torch.equal(module2.state_dict()[k], v)
    x = pre2.transform(customers.head(50))
    np.testing.assert_array_equal(x, customers_pre.transform(customers.head(50)))
    np.testing.assert_array_equal(predict_scores(module2, spec2, x), predict_scores(module, spec, x))


def test_load_model_dir_refuses_a_non_model_dir(tmp_path):
    (tmp_path / "model.json").write_text("{}")
    msg = _error(load_model_dir, tmp_path / "nothing")
    assert "not a model directory" in msg and "model.json" in msg


# ---------------------------------------------------------------------------------------------- loop


def test_loss_function_sums():
    bce = loss_function("binary")
    assert isinstance(bce, nn.BCEWithLogitsLoss) and bce.reduction == "sum"
    assert math.isclose(float(bce(torch.zeros(4), torch.tensor([0.0, 1.0, 1.0, 0.0]))), 4 * math.log(2), rel_tol=1e-6)
    ce = loss_function("multiclass")
    assert isinstance(ce, nn.CrossEntropyLoss) and ce.reduction == "sum"
    assert math.isclose(float(ce(torch.zeros(3, 5), torch.tensor([0, 1, 4]))), 3 * math.log(5), rel_tol=1e-6)
    mse = loss_function("regression")
    assert isinstance(mse, nn.MSELoss) and float(mse(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))) == 5.0


def test_loop_config_carries_the_typed_trainer_settings(customers, customers_pre):
    cfg = load_train_config(_base(trainer={"lr": 0.02}))
    data = PreparedData(train=customers, val=customers.head(0), pre=customers_pre, label=LABEL, task="binary",
                        class_labels=[0, 1])
    run = loop_config(cfg, data)
    assert (run.input_dim, run.output_dim, run.has_val, run.family) == (customers_pre.output_dim, 1, False, "tabular_mlp")
    # Through Ray Train's dict boundary and back, unchanged: TrainerSettings' defaults are the only ones.
    back = LoopConfig.model_validate(run.model_dump())
    assert back == run and back.trainer == cfg.trainer
    assert (back.trainer.lr, back.trainer.epochs) == (0.02, TrainerSettings().epochs)
    assert (run.train_rows, run.val_rows) == (len(customers), 0)  # for the shard-cache decision
    with pytest.raises(ValidationError):
        LoopConfig.model_validate({**run.model_dump(), "epochs": 3})  # a trainer field belongs under trainer
    with pytest.raises(ValidationError):
        LoopConfig.model_validate({**run.model_dump(), "trainer": {"epochs": 0}})


def test_a_worker_caches_its_shard_only_when_twice_it_fits_the_budget():
    from aiinfra.training.ddp import shard_bytes, should_cache

    # 1,001 rows over 2 workers: the larger share, 501 rows of 10 float32 inputs and a float32 label.
    assert shard_bytes(1_001, 2, 10, "binary") == 501 * 44
    assert shard_bytes(1_000, 1, 10, "multiclass") == 1_000 * 48  # class labels are int64
    need = shard_bytes(1_000_000, 2, 25, "binary")
    assert should_cache("auto", need, 2 * need) and not should_cache("auto", need, 2 * need - 1)
    assert should_cache(True, need, 0) and not should_cache(False, 0, 10**12)
    assert should_cache("auto", 0, 0)  # rows not known: cached, as before


def test_the_default_cache_budget_is_a_quarter_of_the_node_shared_by_its_workers():
    import psutil

    from aiinfra.training.ddp import node_memory_bytes, shard_cache_budget

    memory = node_memory_bytes()
    assert 0 < memory <= psutil.virtual_memory().total
    assert shard_cache_budget(None, 2) == memory // 4 // 2
    assert shard_cache_budget(123, 2) == 123  # as configured


def test_cache_shards_takes_true_false_or_auto():
    assert TrainerSettings().cache_shards == "auto"
    assert TrainerSettings.model_validate({"cache_shards": False}).cache_shards is False
    with pytest.raises(ValidationError, match="cache_shards"):
        TrainerSettings.model_validate({"cache_shards": "sometimes"})
    with pytest.raises(ValidationError, match="shard_cache_bytes"):
        TrainerSettings.model_validate({"shard_cache_bytes": -1})


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                      ("sgd", torch.optim.SGD)])
def test_make_optimizer(name, cls):
    opt = make_optimizer(name, _mlp().parameters(), 0.003, 0.01)
    assert type(opt) is cls
    assert opt.param_groups[0]["lr"] == 0.003 and opt.param_groups[0]["weight_decay"] == 0.01


# ------------------------------------------------------------------------------------ multiclass serving


def test_predictor_serves_a_multiclass_cnn(tmp_path, digits, digits_pre):
    labels = class_labels_for("multiclass", digits[DIGITS_LABEL])
    assert labels == list(range(10))
    torch.manual_seed(0)
    spec = ModelSpec(family="image_cnn", params={"channels": [4]}, input_dim=digits_pre.output_dim,
                     output_dim=len(labels), task="multiclass", class_labels=labels)
    module = build_model(spec.family, spec.input_dim, spec.output_dim, spec.params)
    save_model_dir(tmp_path / "m", spec, module.state_dict(), digits_pre)
    version = ModelVersion(
        name="digits", version=1, status="active", created_at=0.0, created_by="t", artifact_uri="x",
        files={"weights.safetensors": FileDigest("0" * 64, 1)}, signature=signature_for(digits_pre, "multiclass", labels),
    )
    predictor = Predictor(version, tmp_path / "m")
    rows = digits[digits_pre.input_columns].head(5).to_dict("records")
    out = predictor.predict(rows)
    expected = predict_scores(module, spec, digits_pre.transform(digits.head(5)))
    assert len(out) == 5
    for row, probs in zip(out, expected):
        assert row["label"] == labels[int(probs.argmax())]
        assert len(row["probabilities"]) == 10 and math.isclose(sum(row["probabilities"]), 1.0, abs_tol=1e-5)
        assert row["probability"] == max(row["probabilities"])
    bad = dict(rows[0])
    del bad["px_3"]
    bad["px_5"] = "dark"
    msg = _error(predictor.predict, [bad])
    assert "instances[0].px_3: missing" in msg and "instances[0].px_5" in msg


def test_train_and_tune_storage_paths_keep_the_roots_query_at_the_end():
    assert storage_path("/data/home/", "checkpoints") == "/data/home/checkpoints"
    assert (storage_path("s3://lake/p?endpoint_override=127.0.0.1:9000&scheme=http&region=us-east-1", "tune")
            == "s3://lake/p/tune?endpoint_override=127.0.0.1:9000&scheme=http&region=us-east-1")
