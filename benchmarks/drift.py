"""Drift detection: the cost of testing one window, and detection power against shift size. No Ray.

(1) ``DriftDetector.check`` on a 1,000 x 20 window (15 numeric, 5 categorical features; reference
5,000 rows), median and p95 over ``--runs`` calls, for each detector: the default (scipy's KS and
chi-squared per input, effect sizes, and the MMD test on all inputs; target p50 <= 50 ms), the same
without MMD, and the opt-in alibi-detect backend. Baseline in the same run: scipy's ``ks_2samp`` /
``chi2_contingency`` looped over the 20 features (no encoding, no effect sizes). The alibi-detect
import and each detector's construction are timed apart: they happen once per monitor, not per window.

(2) Share of ``--windows`` windows of 1,000 rows flagged (Bonferroni, alpha 0.05) when one of the
20 features has its mean shifted by 0 to 0.5 standard deviations (0 = the false-alarm rate, which
50 windows pin down only roughly, so ``--null-windows`` more stationary windows measure it again),
per detector, on the same windows.

    .venv/bin/python benchmarks/drift.py [--runs 30] [--windows 50] [--null-windows 500]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_NUMERIC, N_CATEGORICAL, N_REFERENCE, N_WINDOW = 15, 5, 5000, 1000
CATEGORY_P = [0.4, 0.3, 0.2, 0.1]
SHIFTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)


def make_rows(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    data: dict[str, np.ndarray] = {f"x{i}": rng.normal(0.0, 1.0, n) for i in range(N_NUMERIC)}
    data["x0"] = data["x0"] + shift
    for i in range(N_CATEGORICAL):
        data[f"c{i}"] = rng.choice(["a", "b", "c", "d"], size=n, p=CATEGORY_P)
    return pd.DataFrame(data)


def scipy_baseline(
    reference: pd.DataFrame, window: pd.DataFrame, numeric: list[str], categorical: list[str]
) -> int:
    """The same tests, hand-looped with scipy: the floor of the work."""
    from scipy.stats import chi2_contingency, ks_2samp

    alpha = 0.05 / (len(numeric) + len(categorical))
    flagged = 0
    for col in numeric:
        flagged += ks_2samp(reference[col].to_numpy(), window[col].to_numpy(), method="asymp").pvalue < alpha
    for col in categorical:
        cats, codes = np.unique(np.r_[reference[col].to_numpy(), window[col].to_numpy()], return_inverse=True)
        table = np.vstack(
            [
                np.bincount(codes[: len(reference)], minlength=cats.size),
                np.bincount(codes[len(reference) :], minlength=cats.size),
            ]
        )
        flagged += chi2_contingency(table)[1] < alpha
    return flagged


def wilson(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a binomial share: 50 windows pin a rate only to a few hundredths."""
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((share * (1 - share) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def stats_ms(samples: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in samples)
    return statistics.median(ms), ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]


DETECTORS = {  # name -> DriftDetector options
    "scipy + MMD (default)": {"backend": "scipy", "multivariate": True},
    "scipy, per input only": {"backend": "scipy", "multivariate": False},
    "alibi-detect (opt-in)": {"backend": "alibi", "multivariate": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--windows", type=int, default=50)
    parser.add_argument(
        "--null-windows", type=int, default=500, help="stationary windows for the false-alarm rate"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    numeric = [f"x{i}" for i in range(N_NUMERIC)]
    categorical = [f"c{i}" for i in range(N_CATEGORICAL)]
    rng = np.random.default_rng(args.seed)
    reference = make_rows(rng, N_REFERENCE)

    print("importing alibi-detect (for the opt-in backend) ...", flush=True)
    t0 = time.perf_counter()
    import alibi_detect  # noqa: F401  (timed here so the detector's construction below excludes it)

    import_s = time.perf_counter() - t0
    from aiinfra.monitoring import DriftDetector

    detectors, build_s = {}, {}
    for name, options in DETECTORS.items():
        t0 = time.perf_counter()
        detectors[name] = DriftDetector(reference, numeric=numeric, categorical=categorical, **options)
        build_s[name] = time.perf_counter() - t0

    print(f"timing checks on {N_WINDOW} x {N_NUMERIC + N_CATEGORICAL} windows, {args.runs} runs ...", flush=True)
    windows = [make_rows(rng, N_WINDOW) for _ in range(args.runs)]
    for d in detectors.values():
        d.check(windows[0])  # warm-up
    scipy_baseline(reference, windows[0], numeric, categorical)
    check_s: dict[str, list[float]] = {name: [] for name in detectors}
    base_s = []
    for w in windows:  # interleaved, so drift in the machine's speed hits every detector alike
        for name, d in detectors.items():
            t0 = time.perf_counter()
            d.check(w)
            check_s[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        scipy_baseline(reference, w, numeric, categorical)
        base_s.append(time.perf_counter() - t0)

    print(f"detection power: {len(SHIFTS)} shifts x {args.windows} windows ...", flush=True)
    t0 = time.perf_counter()
    power: dict[str, dict[float, tuple[float, float]]] = {name: {} for name in detectors}
    for shift in SHIFTS:
        shifted = [make_rows(rng, N_WINDOW, shift) for _ in range(args.windows)]
        for name, d in detectors.items():
            results = [d.check(w) for w in shifted]
            power[name][shift] = (sum(r.drift for r in results) / len(results),
                                  sum(r.drifted_features == ["x0"] for r in results) / len(results))
    print(f"false-alarm rate: {args.null_windows} stationary windows ...", flush=True)
    stationary = [make_rows(rng, N_WINDOW) for _ in range(args.null_windows)]
    null_rate = {name: sum(d.check(w).drift for w in stationary) / max(args.null_windows, 1)
                 for name, d in detectors.items()}
    power_s = time.perf_counter() - t0

    import alibi_detect as ad
    import scipy

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"alibi-detect {ad.__version__}, scipy {scipy.__version__}, numpy {np.__version__}; "
        f"date: {time.strftime('%Y-%m-%d')}"
    )
    print()
    print(f"### One window check ({N_WINDOW} x {N_NUMERIC + N_CATEGORICAL}, reference {N_REFERENCE} rows)")
    print()
    print("| operation | n | p50 ms | p95 ms | construction ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    b50, b95 = stats_ms(base_s)
    for name in detectors:
        p50, p95 = stats_ms(check_s[name])
        print(f"| DriftDetector.check, {name} | {args.runs} | {p50:.1f} | {p95:.1f} | {build_s[name] * 1000:.0f} |")
    print(f"| scipy ks_2samp / chi2_contingency loop (baseline) | {len(base_s)} | {b50:.1f} | {b95:.1f} | |")
    print(f"| import alibi_detect (once per process, opt-in backend only) | 1 | {import_s * 1000:.0f} | | |")
    print()
    default = next(iter(detectors))
    p50, _ = stats_ms(check_s[default])
    verdict = "meets" if p50 <= 50 else "MISSES"
    print(f"default check p50 {p50:.1f} ms {verdict} the 50 ms target; {p50 / b50:.2f}x the scipy loop.")
    print()
    print(f"### Detection power at n = {N_WINDOW} (mean shift on x0 of 20 features; Bonferroni, alpha 0.05)")
    print()
    print("| shift (sd) | windows | " + " | ".join(f"flagged: {n}" for n in detectors) + " | only x0 named (scipy) |")
    print("| ---: | ---: | " + " | ".join("---:" for _ in detectors) + " | ---: |")
    for shift in SHIFTS:
        cells = []
        for name in detectors:
            flagged, _ = power[name][shift]
            low, high = wilson(flagged, args.windows)
            cells.append(f"{flagged:.2f} ({low:.2f}-{high:.2f})")
        print(f"| {shift:g} | {args.windows} | " + " | ".join(cells) + f" | {power[default][shift][1]:.2f} |")
    print()
    for name, rate in null_rate.items():
        low, high = wilson(rate, max(args.null_windows, 1))
        print(f"False-alarm rate, {name}, over {args.null_windows} more stationary windows: {rate:.3f} "
              f"(95% interval {low:.3f} to {high:.3f})")
    print(f"{len(detectors) * (len(SHIFTS) * args.windows + args.null_windows)} checks in {power_s:.1f} s.")


if __name__ == "__main__":
    main()
