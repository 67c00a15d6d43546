"""The quality table: each example config's holdout metric beside scikit-learn baselines on the same split.

    .venv/bin/python benchmarks/quality.py [--only churn,wine]

For every shipped example config the training pipeline runs as `aiinfra train` would (Ray Train, the config's
family and features; nothing registered), on its own throwaway platform home. The baselines are fitted on the
same rows: the pipeline's own split (`prepare_data`, the same seed), trained on its training and validation rows
together and scored on its holdout rows:

- a standardized linear model: StandardScaler + LogisticRegression (classification) or Ridge (regression),
  on the model inputs the pipeline's fitted transforms produce (one-hot categories, imputed numbers);
- LightGBM with its default parameters, on the same inputs.

Metrics: ROC-AUC (binary), accuracy (multiclass), RMSE (regression, lower is better).
"""

from __future__ import annotations

import argparse
import platform as host
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# config -> the example dataset it trains on
EXAMPLES = {
    "churn.yaml": "customers", "churn_gbt.yaml": "customers", "digits_cnn.yaml": "digits",
    "breast_cancer.yaml": "breast_cancer", "diabetes.yaml": "diabetes", "wine.yaml": "wine",
}
METRIC = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "rmse"}


def _baselines(task: str, x_fit: np.ndarray, y_fit: np.ndarray, x_hold: np.ndarray, y_hold: np.ndarray) -> dict[str, float]:
    import lightgbm
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, mean_squared_error, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task == "regression":
        linear = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x_fit, y_fit)
        gbm = lightgbm.LGBMRegressor(verbose=-1).fit(x_fit, y_fit)
        return {name: float(np.sqrt(mean_squared_error(y_hold, m.predict(x_hold)))) for name, m in
                (("linear", linear), ("lightgbm", gbm))}
    linear = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_fit, y_fit)
    gbm = lightgbm.LGBMClassifier(verbose=-1).fit(x_fit, y_fit)
    if task == "binary":
        return {name: float(roc_auc_score(y_hold, m.predict_proba(x_hold)[:, 1])) for name, m in
                (("linear", linear), ("lightgbm", gbm))}
    return {name: float(accuracy_score(y_hold, m.predict(x_hold))) for name, m in (("linear", linear), ("lightgbm", gbm))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated config names (without .yaml)")
    args = ap.parse_args()
    only = {f"{n}.yaml" for n in args.only.split(",")} if args.only else None

    import ray

    from aiinfra.config import load_config
    from aiinfra.data.spec import load_spec
    from aiinfra.data.synthetic import EXAMPLES as FRAMES
    from aiinfra.pipelines.ingest import ingest
    from aiinfra.pipelines.progress import StageLog
    from aiinfra.pipelines.train import prepare_data, run_training
    from aiinfra.platform import connect
    from aiinfra.training.config import load_train_config
    from aiinfra.training.tabular import encode_labels

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as home:
        config = load_config(environ={}, home=home)
        with connect(config) as platform:
            ingested: set[str] = set()
            for name, dataset in EXAMPLES.items():
                if only and name not in only:
                    continue
                if dataset not in ingested:
                    csv = Path(home) / f"{dataset}.csv"
                    FRAMES[dataset]().to_csv(csv, index=False)
                    spec = load_spec(ROOT / "jobs/configs/customers_spec.yaml") if dataset == "customers" else None
                    ingest(config, dataset, str(csv), spec=spec)
                    ingested.add(dataset)
                cfg = load_train_config(ROOT / "jobs/configs" / name).model_copy(update={"register_model": False})
                print(f"== {name}: {cfg.model.family}, {cfg.task}", flush=True)
                t0 = time.perf_counter()
                outcome = run_training(platform, cfg, log=StageLog(total=3, out=open("/dev/null", "w")))  # noqa: SIM115
                seconds = time.perf_counter() - t0
                # The baselines on the pipeline's own split, with the transforms it fitted (the resolved config).
                data, holdout, _, _ = prepare_data(platform, outcome.config)
                fit = pd.concat([data.train, data.val], ignore_index=True)

                def encode(y, task=cfg.task, labels=data.class_labels):  # noqa: ANN001, ANN202
                    if task == "regression":
                        return y.to_numpy(dtype=np.float64)
                    return encode_labels(task, y, labels).astype(np.int64)

                base = _baselines(cfg.task, data.pre.transform(fit), encode(fit[cfg.data.label]),
                                  data.pre.transform(holdout), encode(holdout[cfg.data.label]))
                metric = METRIC[cfg.task]
                rows.append((name, cfg.model.family, cfg.task, metric, outcome.metrics[metric], base["linear"],
                             base["lightgbm"], len(holdout), seconds))
                print(f"   {metric}: aiinfra {outcome.metrics[metric]:.4f}, linear {base['linear']:.4f}, "
                      f"lightgbm {base['lightgbm']:.4f} ({len(holdout)} holdout rows, {seconds:.0f}s)", flush=True)
    ray.shutdown()

    print(f"\nmachine: {host.machine()}, {host.system()}; {time.strftime('%Y-%m-%d')}")
    print("| config | family | task | metric | aiinfra | linear (sklearn) | LightGBM default | holdout rows | at or above linear |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |")
    for name, family, task, metric, ours, linear, gbm, n, _ in rows:
        better = ours <= linear if metric == "rmse" else ours >= linear
        print(f"| {name} | {family} | {task} | {metric} | {ours:.4f} | {linear:.4f} | {gbm:.4f} | {n} | {'yes' if better else 'no'} |")


if __name__ == "__main__":
    main()
