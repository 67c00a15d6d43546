"""Drift quality, measured: detection delay, missed detections and false alarms on synthetic streams with known
change points, for each detector and backend; and CBPE's estimation error. No Ray.

(1) Window detectors (``DriftDetector``: the default scipy + MMD, scipy per input only, alibi-detect): streams
of ``--windows`` windows of 1,000 rows (15 numeric, 5 categorical inputs; reference 5,000 rows) that change at
the middle window: sudden (x0's mean moves 0.2 sd), gradual (it moves 0.05 sd more each window), categorical
(one category's share goes from 0.4 to 0.3), joint (x0 and x1 become correlated, 0.6, margins unchanged).
Delay is counted in windows from the change (0: the first changed window is flagged); a change still unflagged
at the end of the stream is missed. False alarms: flagged windows per 10,000 stationary ones.

(2) The error stream (ADWIN, ``ErrorStreamDetector``): per-row errors at rate 0.2 that change at row
``--change-row``: sudden to 0.3, gradual (0.2 to 0.35 over 5,000 rows). Delay in labelled rows and in 1,000-row
windows; false alarms per 10,000 stationary windows of 1,000 rows.

(3) CBPE on the demo's customers (``aiinfra.data.synthetic``), with a logistic regression standing in for the
demo's MLP: reference = a holdout, windows of 1,000 rows from the same world, with covariate drift only
(higher charges, more support calls, labels from the same coefficients), and with the demo's drift (the same
inputs, and the churn relation changes too: concept drift, which CBPE by design does not see). Mean absolute
error of estimated against realised accuracy; target at most 0.03 on calibrated models without concept drift.

    .venv/bin/python benchmarks/drift_quality.py [--repeats 10] [--null-windows 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_NUMERIC, N_CATEGORICAL, N_REFERENCE, N_WINDOW = 15, 5, 5000, 1000
CATEGORY_P = [0.4, 0.3, 0.2, 0.1]
DETECTORS = {
    "scipy + MMD (default)": {"backend": "scipy", "multivariate": True},
    "scipy, per input": {"backend": "scipy", "multivariate": False},
    "alibi-detect (opt-in)": {"backend": "alibi", "multivariate": False},
}


def make_rows(rng: np.random.Generator, n: int, *, shift: float = 0.0, cat_p: list[float] | None = None,
              corr: float = 0.0) -> pd.DataFrame:
    data = {f"x{i}": rng.normal(0.0, 1.0, n) for i in range(N_NUMERIC)}
    data["x0"] = data["x0"] + shift
    if corr:
        data["x1"] = corr * (data["x0"] - shift) + np.sqrt(1 - corr**2) * data["x1"]
    for i in range(N_CATEGORICAL):
        data[f"c{i}"] = rng.choice(["a", "b", "c", "d"], size=n, p=cat_p if (cat_p and i == 0) else CATEGORY_P)
    return pd.DataFrame(data)


SCENARIOS = {  # name -> rows of the k-th changed window (k = 0, 1, ...)
    "sudden: x0 +0.2 sd": lambda rng, k: make_rows(rng, N_WINDOW, shift=0.2),
    "gradual: x0 +0.05 sd per window": lambda rng, k: make_rows(rng, N_WINDOW, shift=0.05 * (k + 1)),
    "categorical: c0 share 0.4 -> 0.3": lambda rng, k: make_rows(rng, N_WINDOW, cat_p=[0.3, 0.35, 0.25, 0.1]),
    "joint: x0, x1 correlated 0.6": lambda rng, k: make_rows(rng, N_WINDOW, corr=0.6),
}


def window_detectors(args: argparse.Namespace) -> list[str]:
    from aiinfra.monitoring import DriftDetector

    rng = np.random.default_rng(args.seed)
    reference = make_rows(rng, N_REFERENCE)
    numeric = [f"x{i}" for i in range(N_NUMERIC)]
    categorical = [f"c{i}" for i in range(N_CATEGORICAL)]
    detectors = {name: DriftDetector(reference, numeric=numeric, categorical=categorical, **opts)
                 for name, opts in DETECTORS.items()}
    half = args.windows // 2
    out = ["| change | detector | mean delay (windows) | max delay | missed |", "| --- | --- | ---: | ---: | ---: |"]
    for scenario, changed in SCENARIOS.items():
        print(f"  {scenario} ...", flush=True)
        streams = [[changed(rng, k) for k in range(args.windows - half)] for _ in range(args.repeats)]
        for name, d in detectors.items():
            delays, missed = [], 0
            for stream in streams:
                delay = next((k for k, w in enumerate(stream) if d.check(w).drift), None)
                if delay is None:
                    missed += 1
                else:
                    delays.append(delay)
            mean = f"{np.mean(delays):.1f}" if delays else "-"
            worst = f"{max(delays)}" if delays else "-"
            out.append(f"| {scenario} | {name} | {mean} | {worst} | {missed} of {args.repeats} |")
    print(f"  {args.null_windows} stationary windows per detector ...", flush=True)
    stationary = [make_rows(rng, N_WINDOW) for _ in range(args.null_windows)]
    out += ["", "| detector | stationary windows | false alarms | per 10,000 windows |", "| --- | ---: | ---: | ---: |"]
    for name, d in detectors.items():
        alarms = sum(d.check(w).drift for w in stationary)
        out.append(f"| {name} | {args.null_windows} | {alarms} | {alarms / args.null_windows * 10_000:.0f} |")
    return out


def error_stream(args: argparse.Namespace) -> list[str]:
    from aiinfra.monitoring.concept import ErrorStreamDetector

    rng = np.random.default_rng(args.seed + 1)
    change = args.change_row
    ramps = {
        "sudden: error 0.2 -> 0.3": lambda n: np.full(n, 0.3),
        "gradual: 0.2 -> 0.35 over 5,000 rows": lambda n: 0.2 + 0.15 * np.minimum(np.arange(1, n + 1) / 5000, 1.0),
    }
    out = ["| change | mean delay (rows) | mean delay (1,000-row windows) | max delay (rows) | missed |",
           "| --- | ---: | ---: | ---: | ---: |"]
    after = 10_000
    for name, rate in ramps.items():
        delays, missed = [], 0
        for _ in range(args.repeats):
            d = ErrorStreamDetector("binary")
            d.update((rng.random(change) < 0.2).astype(float))
            found = d.update((rng.random(after) < rate(after)).astype(float))
            if found:
                delays.append(found[0]["at_row"] - change)
            else:
                missed += 1
        mean = np.mean(delays) if delays else float("nan")
        out.append(f"| {name} | {mean:.0f} | {mean / 1000:.2f} | {max(delays) if delays else '-'} | "
                   f"{missed} of {args.repeats} |")
    rows = args.null_windows * N_WINDOW
    d = ErrorStreamDetector("binary")
    t0 = time.perf_counter()
    alarms = len(d.update((rng.random(rows) < 0.2).astype(float)))
    per_row_us = (time.perf_counter() - t0) / rows * 1e6
    out += ["", f"Stationary error stream (rate 0.2), {rows:,} rows = {args.null_windows} windows: {alarms} false "
            f"alarm(s), {alarms / args.null_windows * 10_000:.0f} per 10,000 windows; ADWIN costs {per_row_us:.1f} us a row."]
    return out


def cbpe(args: argparse.Namespace) -> list[str]:
    from sklearn.linear_model import LogisticRegression

    from aiinfra.data import synthetic
    from aiinfra.monitoring.estimation import PerformanceEstimator

    def matrix(frame: pd.DataFrame) -> np.ndarray:
        x = frame[["tenure_months", "monthly_charges", "support_calls"]].to_numpy(dtype=np.float64)
        plans = np.stack([(frame["plan"] == p).to_numpy() for p in synthetic.PLANS], axis=1)
        return np.hstack([x, plans])

    def relabel(frame: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
        """Labels from the pre-drift coefficients: the same concept on whatever inputs."""
        c = synthetic.TRUE_COEFFICIENTS
        logit = (c["intercept"] + c["tenure_months"] * frame["tenure_months"] + c["monthly_charges"] * (frame["monthly_charges"] - 70.0)
                 + c["support_calls"] * frame["support_calls"] + np.where(frame["plan"] == "basic", c["plan=basic"], 0.0)
                 + np.where(frame["plan"] == "premium", c["plan=premium"], 0.0))
        return (rng.random(len(frame)) < 1 / (1 + np.exp(-logit.to_numpy()))).astype(np.int64)

    rng = np.random.default_rng(args.seed + 2)
    train = synthetic.make_customers(20_000, seed=args.seed + 3)
    holdout = synthetic.make_customers(5_000, seed=args.seed + 4)
    model = LogisticRegression(max_iter=2000).fit(matrix(train), train[synthetic.LABEL])
    ref_scores = model.predict_proba(matrix(holdout))[:, 1]
    estimator = PerformanceEstimator("binary", ref_scores, holdout[synthetic.LABEL].to_numpy())
    worlds = {
        "no drift": lambda s: (lambda f: (f, f[synthetic.LABEL].to_numpy()))(synthetic.make_customers(N_WINDOW, seed=s)),
        "covariate drift only": lambda s: (lambda f: (f, relabel(f, rng)))(synthetic.make_customers(N_WINDOW, seed=s, drifted=True)),
        "the demo's drift (covariate + concept)": lambda s: (lambda f: (f, f[synthetic.LABEL].to_numpy()))(
            synthetic.make_customers(N_WINDOW, seed=s, drifted=True)),
    }
    out = [f"Reference: 5,000 holdout rows; calibration error (cross-fitted ECE) {estimator.calibration_error:.3f}, "
           f"raw {estimator.raw_calibration_error:.3f}.", "",
           "| windows | n | realised accuracy (mean) | estimated (mean) | MAE | band covers realised |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, make in worlds.items():
        realised, estimated, covered = [], [], 0
        for i in range(args.cbpe_windows):
            frame, labels = make(1000 + i)
            scores = model.predict_proba(matrix(frame))[:, 1]
            est = estimator.estimate(scores).metrics["accuracy"]
            acc = float(np.mean((scores >= 0.5) == (labels == 1)))
            realised.append(acc)
            estimated.append(est.value)
            covered += est.low <= acc <= est.high
        mae = float(np.mean(np.abs(np.array(estimated) - np.array(realised))))
        out.append(f"| {name} | {args.cbpe_windows} | {np.mean(realised):.3f} | {np.mean(estimated):.3f} | {mae:.3f} | "
                   f"{covered / args.cbpe_windows:.0%} |")
    return out


def cbpe_multiclass(args: argparse.Namespace) -> list[str]:
    """CBPE from every class's probability: a multinomial logistic regression on a synthetic 4-class concept,
    windows without drift and with covariate drift (the inputs shift, the concept holds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, roc_auc_score

    from aiinfra.monitoring.estimation import PerformanceEstimator

    rng = np.random.default_rng(args.seed + 5)
    weights = rng.normal(0, 1.2, (6, 4))

    def draw(n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(0, 1, (n, 6)) + np.array([shift, shift / 2, 0, 0, 0, 0])
        logits = x @ weights
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return x, (rng.random((n, 1)) > np.cumsum(p, axis=1)[:, :-1]).sum(axis=1)

    model = LogisticRegression(max_iter=2000).fit(*draw(20_000))
    x, y = draw(5_000)
    ref = model.predict_proba(x)
    estimator = PerformanceEstimator("multiclass", ref.max(axis=1), y, reference_predicted=ref.argmax(axis=1),
                                     reference_probabilities=ref)
    out = [f"A multinomial logistic regression on a synthetic 4-class concept (6 inputs); reference 5,000 holdout "
           f"rows, calibration error {estimator.calibration_error:.3f}.", "",
           "| windows | n | metric | realised (mean) | estimated (mean) | MAE | band covers realised |",
           "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for name, shift in (("no drift", 0.0), ("covariate drift only (two inputs shifted 1 and 0.5 sd)", 1.0)):
        got: dict[str, list[tuple[float, float, bool]]] = {"accuracy": [], "f1_macro": [], "roc_auc_macro": []}
        for _ in range(args.cbpe_windows):
            x, y = draw(N_WINDOW, shift)
            p = model.predict_proba(x)
            est = estimator.estimate(p.max(axis=1), p).metrics
            realised = {"accuracy": float(np.mean(p.argmax(axis=1) == y)),
                        "f1_macro": float(f1_score(y, p.argmax(axis=1), average="macro")),
                        "roc_auc_macro": float(roc_auc_score(y, p, multi_class="ovr", average="macro"))}
            for metric, value in realised.items():
                e = est[metric]
                got[metric].append((value, e.value, e.low <= value <= e.high))
        for metric, values in got.items():
            r, e, c = (np.array(v, dtype=np.float64) for v in zip(*values))
            out.append(f"| {name} | {args.cbpe_windows} | {metric} | {r.mean():.3f} | {e.mean():.3f} | "
                       f"{np.mean(np.abs(e - r)):.3f} | {c.mean():.0%} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="streams per change")
    parser.add_argument("--windows", type=int, default=20, help="windows per stream (the change at the middle)")
    parser.add_argument("--null-windows", type=int, default=1000)
    parser.add_argument("--change-row", type=int, default=5000)
    parser.add_argument("--cbpe-windows", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.perf_counter()
    print("window detectors ...", flush=True)
    windows = window_detectors(args)
    print("error stream (ADWIN) ...", flush=True)
    errors = error_stream(args)
    print("CBPE ...", flush=True)
    estimates = cbpe(args)
    multiclass = cbpe_multiclass(args)
    import scipy

    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"scipy {scipy.__version__}, numpy {np.__version__}; date: {time.strftime('%Y-%m-%d')}; "
          f"{time.perf_counter() - t0:.0f} s")
    print()
    print(f"### Window detectors ({args.repeats} streams per change, windows of {N_WINDOW} rows, 20 inputs, alpha 0.05)")
    print()
    print("\n".join(windows))
    print()
    print(f"### Error stream (ADWIN, delta 0.002; {args.repeats} streams per change, change at row {args.change_row:,})")
    print()
    print("\n".join(errors))
    print()
    print(f"### CBPE: estimated against realised accuracy, windows of {N_WINDOW} rows")
    print()
    print("\n".join(estimates))
    print()
    print(f"### CBPE for a multiclass model, from every class's probability (windows of {N_WINDOW} rows)")
    print()
    print("\n".join(multiclass))


if __name__ == "__main__":
    main()
