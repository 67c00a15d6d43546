"""Drift detection: the cost of testing one window, and detection power against shift size. No Ray.

(1) ``DriftDetector.check`` on a 1,000 x 20 window (15 numeric, 5 categorical features; reference
5,000 rows), median and p95 over ``--runs`` calls; target p50 <= 100 ms. Baseline in the same run:
scipy's ``ks_2samp`` / ``chi2_contingency`` looped over the 20 features (no encoding, no PSI).
The alibi-detect import and the detector's construction are timed apart: they happen once per
monitor, not per window.

(2) Share of ``--windows`` windows of 1,000 rows flagged (Bonferroni, alpha 0.05) when one of the
20 features has its mean shifted by 0 to 0.5 standard deviations (0 = the false-alarm rate, which
50 windows pin down only roughly, so ``--null-windows`` more stationary windows measure it again).

    .venv/bin/python benchmarks/drift.py [--runs 30] [--windows 50]
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
        flagged += ks_2samp(reference[col].to_numpy(), window[col].to_numpy(), mode="asymp").pvalue < alpha
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

    print("importing alibi-detect ...", flush=True)
    t0 = time.perf_counter()
    import alibi_detect  # noqa: F401  (timed here so the detector's construction below excludes it)

    import_s = time.perf_counter() - t0
    from aiinfra.monitoring import DriftDetector

    t0 = time.perf_counter()
    detector = DriftDetector(reference, numeric=numeric, categorical=categorical)
    build_s = time.perf_counter() - t0

    print(
        f"timing check on {N_WINDOW} x {N_NUMERIC + N_CATEGORICAL} windows, {args.runs} runs ...", flush=True
    )
    windows = [make_rows(rng, N_WINDOW) for _ in range(args.runs)]
    detector.check(windows[0])  # warm-up
    scipy_baseline(reference, windows[0], numeric, categorical)
    check_s, base_s = [], []
    for w in windows:
        t0 = time.perf_counter()
        detector.check(w)
        check_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        scipy_baseline(reference, w, numeric, categorical)
        base_s.append(time.perf_counter() - t0)

    print(f"detection power: {len(SHIFTS)} shifts x {args.windows} windows ...", flush=True)
    t0 = time.perf_counter()
    power: dict[float, tuple[float, float]] = {}
    for shift in SHIFTS:
        results = [detector.check(make_rows(rng, N_WINDOW, shift)) for _ in range(args.windows)]
        flagged = sum(r.drift for r in results) / len(results)
        named = sum(r.drifted_features == ["x0"] for r in results) / len(results)
        power[shift] = (flagged, named)
    print(f"false-alarm rate: {args.null_windows} stationary windows ...", flush=True)
    null_flagged = sum(detector.check(make_rows(rng, N_WINDOW)).drift for _ in range(args.null_windows))
    null_rate = null_flagged / max(args.null_windows, 1)
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
    print("| operation | n | p50 ms | p95 ms |")
    print("| --- | ---: | ---: | ---: |")
    p50, p95 = stats_ms(check_s)
    print(
        f"| DriftDetector.check (alibi TabularDrift + encoding + PSI) | {len(check_s)} | {p50:.1f} | {p95:.1f} |"
    )
    b50, b95 = stats_ms(base_s)
    print(f"| scipy ks_2samp / chi2_contingency loop (baseline) | {len(base_s)} | {b50:.1f} | {b95:.1f} |")
    print(f"| import alibi_detect (once per process) | 1 | {import_s * 1000:.0f} | |")
    print(f"| DriftDetector construction (once per reference) | 1 | {build_s * 1000:.1f} | |")
    print()
    verdict = "meets" if p50 <= 100 else "MISSES"
    print(f"check p50 {p50:.1f} ms {verdict} the 100 ms target; {p50 / b50:.2f}x the scipy loop.")
    print()
    print(f"### Detection power at n = {N_WINDOW} (mean shift on x0 of 20 features; Bonferroni, alpha 0.05)")
    print()
    print("| shift (sd) | windows | share flagged | 95% interval | share flagged with only x0 named |")
    print("| ---: | ---: | ---: | :---: | ---: |")
    for shift, (flagged, named) in power.items():
        low, high = wilson(flagged, args.windows)
        print(f"| {shift:g} | {args.windows} | {flagged:.2f} | {low:.2f} to {high:.2f} | {named:.2f} |")
    print()
    low, high = wilson(null_rate, max(args.null_windows, 1))
    print(
        f"False-alarm rate (shift 0) over {args.null_windows} more windows: {null_rate:.3f} "
        f"(95% interval {low:.3f} to {high:.3f}); {len(SHIFTS) * args.windows + args.null_windows} windows "
        f"tested in {power_s:.1f} s."
    )


if __name__ == "__main__":
    main()
