"""Fitted tabular preprocessing: standardized numerics and one-hot categoricals.

Fitted once on training data, stored as JSON (never pickled), and applied by the same
function to a batch in Ray Data and to request rows in serving, so training and serving
see identical features.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from aiinfra.errors import InvalidInput

__all__ = ["TabularPreprocessor", "fit_preprocessor"]

UNKNOWN = "__unknown__"


class NumericState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    mean: float
    std: float


class CategoricalState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    categories: list[str]  # the last slot of the one-hot vector is the unknown bucket


class TabularPreprocessor(BaseModel):
    """The fitted state; ``transform`` turns a DataFrame into a float32 feature matrix."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    numeric: list[NumericState]
    categorical: list[CategoricalState]

    @property
    def input_columns(self) -> list[str]:
        return [n.name for n in self.numeric] + [c.name for c in self.categorical]

    @property
    def output_dim(self) -> int:
        return len(self.numeric) + sum(len(c.categories) + 1 for c in self.categorical)

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.input_columns if c not in df.columns]
        if missing:
            raise InvalidInput(f"missing feature column(s): {', '.join(missing)}")
        out = np.zeros((len(df), self.output_dim), dtype=np.float32)
        col = 0
        for n in self.numeric:
            try:
                values = pd.to_numeric(df[n.name], errors="raise").astype("float64").to_numpy()
            except (ValueError, TypeError):
                raise InvalidInput(f"feature {n.name!r} must be numeric") from None
            # Impute a missing value with the training mean, i.e. 0 after standardizing.
            out[:, col] = np.nan_to_num((values - n.mean) / n.std, nan=0.0)
            col += 1
        for c in self.categorical:
            index = {v: i for i, v in enumerate(c.categories)}
            codes = df[c.name].map(lambda v, index=index, k=len(c.categories): index.get(v, k)).to_numpy()
            out[np.arange(len(df)), col + codes.astype(np.int64)] = 1.0
            col += len(c.categories) + 1
        return out

    def transform_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The serving path: request rows through exactly the batch function."""
        return self.transform(pd.DataFrame.from_records(list(rows), columns=self.input_columns))

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> TabularPreprocessor:
        return cls.model_validate(json.loads(text))


def fit_preprocessor(df: pd.DataFrame, *, numeric: Sequence[str], categorical: Sequence[str]) -> TabularPreprocessor:
    num = []
    for name in numeric:
        values = df[name].astype("float64")
        std = float(values.std(ddof=0))
        num.append(NumericState(name=name, mean=float(values.mean()), std=std if std > 0 and math.isfinite(std) else 1.0))
    cat = [CategoricalState(name=name, categories=sorted(map(str, df[name].dropna().unique()))) for name in categorical]
    return TabularPreprocessor(numeric=num, categorical=cat)
