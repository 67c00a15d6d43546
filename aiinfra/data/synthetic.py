"""A seeded tabular dataset with a known relationship between features and label.

Customers with an entity id and an event timestamp, numeric and categorical features, and a
churn label drawn from a logistic model whose coefficients are fixed below, so a trained
model has something real to find and its quality can be judged against the truth.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["CATEGORICAL", "DRIFTED_COEFFICIENTS", "LABEL", "NUMERIC", "TRUE_COEFFICIENTS", "make_customers"]

NUMERIC = ["tenure_months", "monthly_charges", "support_calls"]
CATEGORICAL = ["plan", "region"]
LABEL = "churned"
PLANS = ["basic", "standard", "premium"]
REGIONS = ["north", "south", "east", "west"]

# Log-odds of churn: short tenure, high charges, many support calls and the basic plan raise it.
TRUE_COEFFICIENTS = {
    "intercept": -0.4,
    "tenure_months": -0.06,
    "monthly_charges": 0.025,
    "support_calls": 0.45,
    "plan=basic": 0.8,
    "plan=premium": -0.7,
}


# The world after the demo's drift: a price rise (charges up, more support calls: covariate drift) and
# customers who now leave the premium plan and no longer signal churn by calling (concept drift).
DRIFTED_COEFFICIENTS = {
    "intercept": -0.9,
    "tenure_months": -0.06,
    "monthly_charges": 0.025,
    "support_calls": -0.35,
    "plan=basic": -0.8,
    "plan=premium": 1.6,
}


def make_customers(n: int = 20_000, *, seed: int = 0, start: str = "2026-01-01", days: int = 180,
                   drifted: bool = False, first_id: int = 100_000) -> pd.DataFrame:
    """``n`` rows: customer_id, event_ts, the features, and the label ``churned``.

    ``drifted=True`` draws from the world after the drift (``DRIFTED_COEFFICIENTS``, higher charges
    and more support calls): what the demo's production traffic turns into.
    """
    rng = np.random.default_rng(seed)
    tenure = rng.gamma(shape=2.0, scale=12.0, size=n).round(1)
    charges = rng.normal(95.0 if drifted else 70.0, 25.0, size=n).clip(10, 200).round(2)
    calls = rng.poisson(3.0 if drifted else 1.5, size=n)
    plan = rng.choice(PLANS, size=n, p=[0.5, 0.3, 0.2])
    region = rng.choice(REGIONS, size=n)
    c = DRIFTED_COEFFICIENTS if drifted else TRUE_COEFFICIENTS
    logit = (
        c["intercept"]
        + c["tenure_months"] * tenure
        + c["monthly_charges"] * (charges - 70.0)
        + c["support_calls"] * calls
        + np.where(plan == "basic", c["plan=basic"], 0.0)
        + np.where(plan == "premium", c["plan=premium"], 0.0)
    )
    label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    seconds = np.sort(rng.integers(0, days * 86_400, size=n))
    return pd.DataFrame(
        {
            "customer_id": rng.permutation(n).astype(np.int64) + first_id,
            "event_ts": pd.Timestamp(start) + pd.to_timedelta(seconds, unit="s"),
            "tenure_months": tenure,
            "monthly_charges": charges,
            "support_calls": calls.astype(np.int64),
            "plan": plan,
            "region": region,
            LABEL: label,
        }
    )


DIGITS_LABEL = "digit"


def make_digits() -> pd.DataFrame:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images) as a table: one column per pixel.

    Columns ``image_id``, ``px_0`` .. ``px_63`` (row-major, values 0..16) and the label ``digit``.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    frame = pd.DataFrame(bunch.data.astype(np.float64), columns=[f"px_{i}" for i in range(bunch.data.shape[1])])
    frame.insert(0, "image_id", np.arange(len(frame), dtype=np.int64))
    frame[DIGITS_LABEL] = bunch.target.astype(np.int64)
    return frame


def _sklearn_table(loader: str, label: str, target: Any = None) -> pd.DataFrame:
    """One of scikit-learn's bundled tables, with column names a config can spell (``mean radius`` ->
    ``mean_radius``), a ``row_id`` and the label last."""
    import re

    from sklearn import datasets

    bunch = getattr(datasets, loader)()
    names = [re.sub(r"[^a-z0-9]+", "_", n.lower()).strip("_") for n in bunch.feature_names]
    frame = pd.DataFrame(bunch.data.astype(np.float64), columns=names)
    frame.insert(0, "row_id", np.arange(len(frame), dtype=np.int64))
    frame[label] = bunch.target if target is None else target(bunch.target)
    return frame


def make_breast_cancer() -> pd.DataFrame:
    """Wisconsin breast cancer (569 rows, 30 measurements); label ``malignant`` (1: malignant, 0: benign)."""
    return _sklearn_table("load_breast_cancer", "malignant", lambda t: (t == 0).astype(np.int64))


def make_diabetes() -> pd.DataFrame:
    """Diabetes progression (442 rows, 10 baseline measurements, scaled); regression label ``progression``."""
    return _sklearn_table("load_diabetes", "progression", lambda t: t.astype(np.float64))


def make_wine() -> pd.DataFrame:
    """Wine recognition (178 rows, 13 chemical measurements); label ``cultivar`` (0, 1, 2)."""
    return _sklearn_table("load_wine", "cultivar", lambda t: t.astype(np.int64))


EXAMPLES = {"customers": make_customers, "digits": make_digits, "breast_cancer": make_breast_cancer,
            "diabetes": make_diabetes, "wine": make_wine}
