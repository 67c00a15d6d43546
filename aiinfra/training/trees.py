"""The gradient-boosted tree families, ``xgboost`` and ``lightgbm``: their hyperparameters and what the libraries get.

One hyperparameter vocabulary for both (the names XGBoost's and LightGBM's scikit-learn APIs share), validated
like any other config field so that a typo or an out-of-range value is refused before a worker starts; this
module maps it to each library's own parameter names. Plain functions: the Ray Train loop that runs them is
``aiinfra.training.tree_loop``; the trained boosters are served by ``aiinfra.training.runtimes``.

The tasks map to the libraries' objectives (binary logistic, multiclass softmax, squared error), and the
``val_loss`` every family reports means the same thing: mean cross-entropy for classification, mean squared error
of the standardized target for regression, as the torch families' losses do.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aiinfra.errors import InvalidInput

__all__ = ["TREE_FAMILIES", "LightGBMParams", "TreeParams", "XGBoostParams", "is_tree_family", "library_params", "loss_of",
           "tree_params"]


class TreeParams(BaseModel):
    """``model.params`` of a tree family."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_boost_round: int = Field(300, ge=1, le=100_000, description="the most boosting rounds (trees per class)")
    early_stopping_rounds: int | None = Field(
        20, ge=1, description="stop after this many rounds without a better validation loss; the model keeps the "
                              "best round's trees (null: train every round)")
    learning_rate: float = Field(0.1, gt=0.0, le=1.0)
    max_depth: int = Field(6, ge=0, le=64, description="0: no limit (LightGBM then bounds trees by num_leaves)")
    min_child_weight: float = Field(1.0, ge=0.0, description="the least hessian sum in a leaf")
    subsample: float = Field(1.0, gt=0.0, le=1.0, description="the share of rows each tree sees")
    colsample_bytree: float = Field(1.0, gt=0.0, le=1.0, description="the share of inputs each tree sees")
    reg_lambda: float = Field(1.0, ge=0.0, description="L2 on leaf weights")
    reg_alpha: float = Field(0.0, ge=0.0, description="L1 on leaf weights")
    max_bin: int = Field(256, ge=2, le=65_535, description="histogram bins per input")
    checkpoint_every: int = Field(10, ge=1, le=100_000, description="rounds between checkpoints (and reports to Tune)")


class XGBoostParams(TreeParams):
    pass


class LightGBMParams(TreeParams):
    max_depth: int = Field(0, ge=0, le=64, description="0: no limit (trees are bounded by num_leaves)")
    num_leaves: int = Field(31, ge=2, le=131_072)
    min_child_samples: int = Field(20, ge=1, description="the least rows in a leaf")


_SCHEMAS: dict[str, type[TreeParams]] = {"xgboost": XGBoostParams, "lightgbm": LightGBMParams}
TREE_FAMILIES = tuple(_SCHEMAS)


def is_tree_family(family: str) -> bool:
    return family in _SCHEMAS


def tree_params(family: str, params: dict[str, Any] | None) -> TreeParams:
    """The validated hyperparameters; InvalidInput names each bad one."""
    try:
        return _SCHEMAS[family].model_validate(params or {})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'params'}: {err['msg']}" for err in e.errors())
        raise InvalidInput(f"invalid hyperparameters for {family}: {problems}") from None


def library_params(family: str, params: TreeParams, *, task: str, num_classes: int, seed: int, threads: int,
                   use_gpu: bool = False) -> dict[str, Any]:
    """The parameter dict ``xgboost.train`` or ``lightgbm.train`` gets (without the distributed set-up)."""
    if family == "xgboost":
        objective, metric = {"binary": ("binary:logistic", "logloss"), "multiclass": ("multi:softprob", "mlogloss"),
                             "regression": ("reg:squarederror", "rmse")}[task]
        out: dict[str, Any] = {
            "objective": objective, "eval_metric": metric, "tree_method": "hist", "eta": params.learning_rate,
            "max_depth": params.max_depth, "min_child_weight": params.min_child_weight, "subsample": params.subsample,
            "colsample_bytree": params.colsample_bytree, "lambda": params.reg_lambda, "alpha": params.reg_alpha,
            "max_bin": params.max_bin, "nthread": threads, "seed": seed, "verbosity": 1,
        }
        if task == "multiclass":
            out["num_class"] = num_classes
        if use_gpu:
            out["device"] = "cuda"
        return out
    assert isinstance(params, LightGBMParams)
    objective, metric = {"binary": ("binary", "binary_logloss"), "multiclass": ("multiclass", "multi_logloss"),
                         "regression": ("regression", "l2")}[task]
    out = {
        "objective": objective, "metric": metric, "learning_rate": params.learning_rate,
        "num_leaves": params.num_leaves, "max_depth": params.max_depth or -1,
        "min_sum_hessian_in_leaf": params.min_child_weight, "min_data_in_leaf": params.min_child_samples,
        "bagging_fraction": params.subsample, "bagging_freq": 1 if params.subsample < 1.0 else 0,
        "feature_fraction": params.colsample_bytree, "lambda_l2": params.reg_lambda, "lambda_l1": params.reg_alpha,
        "max_bin": params.max_bin, "num_threads": threads, "seed": seed,
        # The same model from the same data and seed, run after run (what `aiinfra reproduce` checks).
        "deterministic": True, "force_row_wise": True, "verbose": -1,
    }
    if task == "multiclass":
        out["num_class"] = num_classes
    return out


def loss_of(family: str, task: str, value: float) -> float:
    """The library's validation metric as ``val_loss``: XGBoost's rmse squared, so regression's loss is the MSE."""
    return value * value if family == "xgboost" and task == "regression" else value
