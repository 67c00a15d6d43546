"""Ray Train XGBoost (aiinfra's tree loop) against plain single-process ``xgboost.train`` on the same data.

    .venv/bin/python benchmarks/trees.py [--rows 1000000] [--rounds 60] [--family xgboost]

Both get the same transformed rows (the customers table through the example feature spec), the same
parameters and rounds, early stopping off, and the same number of threads in all: the plain run one process
with 2 threads, aiinfra 2 Ray Train workers with 1 thread each (data-parallel: each holds half the rows, the
histograms are all-reduced every level). Reported:

1. time per round, median over rounds after the first (aiinfra's rounds include its checkpoints and reports to
   Ray Train every ``--checkpoint-every`` rounds, as a real run does), and the ratio. Target: at most 1.3x.
2. start-up: aiinfra's wall time less its rounds (Ray Train's worker group, the dataset shards, DMatrix);
   the plain run's DMatrix construction.
3. the holdout ROC-AUC of both models. Target: within 0.005.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="training rows (validation and holdout: 10%% each on top)")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--checkpoint-every", type=int, default=20)
    ap.add_argument("--family", choices=["xgboost", "lightgbm"], default="xgboost")
    args = ap.parse_args()

    import ray
    from sklearn.metrics import roc_auc_score

    from aiinfra.data.synthetic import LABEL, make_customers
    from aiinfra.data.transforms import fit_features, load_feature_spec
    from aiinfra.demo.configs import example_config
    from aiinfra.training.config import TrainConfig
    from aiinfra.training.ray_train import PreparedData, fit
    from aiinfra.training.runtimes import tree_model_from_bytes
    from aiinfra.training.trees import library_params, tree_params

    features = load_feature_spec(example_config("customers_features.yaml"))
    n_val = n_hold = args.rows // 10
    print(f"making {args.rows + n_val + n_hold:,} rows ...", flush=True)
    df = make_customers(args.rows + n_val + n_hold, seed=1)
    train, val, hold = df.iloc[:args.rows], df.iloc[args.rows:args.rows + n_val], df.iloc[args.rows + n_val:]
    pre = fit_features(train, features)
    params = {"num_boost_round": args.rounds, "early_stopping_rounds": None, "learning_rate": 0.1, "max_depth": 6,
              "checkpoint_every": args.checkpoint_every}
    x_hold, y_hold = pre.transform(hold), hold[LABEL].to_numpy()

    # -- plain: one process, 2 threads -------------------------------------------------------------
    x_tr, y_tr = pre.transform(train), train[LABEL].to_numpy()
    x_va, y_va = pre.transform(val), val[LABEL].to_numpy()
    lib = library_params(args.family, tree_params(args.family, params), task="binary", num_classes=2, seed=0, threads=2)
    print(f"plain {args.family}.train, 2 threads, {args.rounds} rounds ...", flush=True)
    stamps: list[float] = []
    t0 = time.perf_counter()
    if args.family == "xgboost":
        import xgboost

        dtrain, dval = xgboost.DMatrix(x_tr, label=y_tr), xgboost.DMatrix(x_va, label=y_va)
        plain_setup = time.perf_counter() - t0

        class Stamp(xgboost.callback.TrainingCallback):
            def after_iteration(self, model, epoch, evals_log):  # noqa: ANN001, ANN201
                stamps.append(time.perf_counter())
                return False

        t_start = time.perf_counter()
        booster = xgboost.train(lib, dtrain, num_boost_round=args.rounds, evals=[(dtrain, "train"), (dval, "val")],
                                verbose_eval=False, callbacks=[Stamp()])
        plain_scores = booster.inplace_predict(x_hold)
    else:
        import lightgbm

        dtrain = lightgbm.Dataset(x_tr, label=y_tr, free_raw_data=False)
        dval = lightgbm.Dataset(x_va, label=y_va, reference=dtrain)
        dtrain.construct()
        plain_setup = time.perf_counter() - t0
        t_start = time.perf_counter()
        booster = lightgbm.train(lib, dtrain, num_boost_round=args.rounds, valid_sets=[dtrain, dval],
                                 valid_names=["train", "val"], callbacks=[lambda env: stamps.append(time.perf_counter())])
        plain_scores = booster.predict(x_hold)
    plain_rounds = np.diff([t_start, *stamps])
    plain_round = statistics.median(plain_rounds[1:])
    plain_auc = roc_auc_score(y_hold, plain_scores)
    del x_tr, x_va

    # -- aiinfra: Ray Train, 2 workers x 1 thread ---------------------------------------------------
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    cfg = TrainConfig.model_validate({
        "name": "bench-trees", "task": "binary", "data": {"dataset": "customers", "label": LABEL, "features": features},
        "model": {"family": args.family, "params": params},
        "trainer": {"num_workers": 2, "cpus_per_worker": 1, "seed": 0},
    })
    data = PreparedData(train=train.reset_index(drop=True), val=val.reset_index(drop=True), pre=pre, label=LABEL,
                        task="binary", class_labels=[0, 1])
    print(f"aiinfra {args.family} on Ray Train, 2 workers x 1 thread ...", flush=True)
    with tempfile.TemporaryDirectory() as root:
        result = fit(cfg, data, storage_root=root, run_name=f"bench-trees-{uuid.uuid4().hex[:8]}")
    rounds = [h["epoch_time_s"] for h in result.history]
    ray_round = statistics.median(rounds[1:])
    ray_startup = result.wall_s - sum(rounds)
    booster = tree_model_from_bytes(args.family, result.best_state)
    ray_scores = booster.inplace_predict(x_hold) if args.family == "xgboost" else booster.predict(x_hold)
    ray_auc = roc_auc_score(y_hold, ray_scores)
    ray.shutdown()

    print(f"\nmachine: {platform.machine()}, {platform.system()}, {__import__('os').cpu_count()} CPUs; "
          f"{args.rows:,} training rows x {pre.output_dim} inputs, {args.rounds} rounds, max_depth 6")
    print(f"{'':28}{'plain':>12}{'aiinfra':>12}{'ratio':>8}")
    print(f"{'time per round (median)':28}{plain_round * 1000:>10.1f}ms{ray_round * 1000:>10.1f}ms{ray_round / plain_round:>7.2f}x")
    print(f"{'mean per round':28}{statistics.fmean(plain_rounds) * 1000:>10.1f}ms"
          f"{statistics.fmean(rounds) * 1000:>10.1f}ms{statistics.fmean(rounds) / statistics.fmean(plain_rounds):>7.2f}x")
    print(f"{'start-up':28}{plain_setup:>11.1f}s{ray_startup:>11.1f}s")
    print(f"{'holdout ROC-AUC':28}{plain_auc:>12.4f}{ray_auc:>12.4f}  difference {ray_auc - plain_auc:+.4f}")


if __name__ == "__main__":
    main()
