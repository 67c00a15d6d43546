"""``features: auto``: feature transforms inferred from a table's schema and profile.

One set of rules for both callers: ``aiinfra features suggest DATASET`` (from the version's stored profile, for a
user to read and edit) and a training run with ``data.features: auto`` (from the profile of its training rows,
written into the resolved config that is registered with the model, so ``reproduce`` and the user see exactly
what was used). Every column left out is named with the reason.

    numeric     impute (median) + standardize; impute only for tree families, which do not need the scaling
    boolean     impute (most frequent)
    categorical one-hot up to ``max_one_hot`` distinct values, else ordinal
    timestamp   its parts (day of week, hour, month)
    left out    the label, the dataset's key columns, columns named as excluded, columns always null, constant
                columns, id-like columns (a string with a distinct value in nearly every row, or an integer
                named ``id`` / ``*_id``), and types no transform takes
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from aiinfra.data.profile import ColumnProfile, DatasetProfile, finalize, profile_batch
from aiinfra.data.transforms import FeatureSpec
from aiinfra.errors import InvalidInput

__all__ = ["MAX_ONE_HOT", "Suggestion", "profile_frame", "suggest_features"]

MAX_ONE_HOT = 20
# A string column with distinct values in at least this share of its rows names rows, it does not describe them.
ID_LIKE_SHARE = 0.9
_ID_NAME = re.compile(r"(^|_)(id|uuid|guid)$", re.IGNORECASE)


@dataclass
class Suggestion:
    spec: FeatureSpec
    left_out: dict[str, str] = field(default_factory=dict)  # column -> why

    def to_yaml(self) -> str:
        import yaml

        body = yaml.safe_dump({"features": self.spec.model_dump(mode="json", exclude_none=True)["features"]},
                              sort_keys=False, default_flow_style=None, width=110)
        notes = "".join(f"# left out: {c}: {why}\n" for c, why in self.left_out.items())
        return "# Suggested by `features: auto` (aiinfra/data/suggest.py); edit freely.\n" + notes + body


def _kind(type_: str) -> str:
    t = type_.lower()
    if t.startswith("timestamp") or t.startswith("date"):
        return "timestamp"
    if t in ("bool", "boolean"):
        return "boolean"
    if t.startswith(("int", "uint")):
        return "integer"
    if t in ("float", "double", "halffloat") or t.startswith(("float", "decimal")):
        return "numeric"
    if t in ("string", "large_string", "utf8", "large_utf8") or t.startswith("dictionary"):
        return "categorical"
    return "other"


def _why_not(name: str, kind: str, col: ColumnProfile) -> str | None:
    if col.count == 0 or col.type == "null":
        return "always null"
    if kind == "other":
        return f"type {col.type} has no transform"
    if kind in ("integer", "numeric") and col.min is not None and col.min == col.max:
        return f"constant ({col.min:g} in every row)"
    if kind in ("categorical", "boolean") and col.distinct is not None and col.distinct <= 1:
        return "constant (one value in every row)"
    # Numeric too: pandas turns an integer column with a null into floats.
    if kind in ("integer", "numeric") and _ID_NAME.search(name):
        return "id-like (a number named like an identifier)"
    if kind == "categorical" and col.distinct is not None and not col.approximate and col.count >= 20 \
            and col.distinct >= ID_LIKE_SHARE * col.count:
        return f"id-like ({col.distinct:,} distinct values in {col.count:,} rows)"
    if kind == "categorical" and col.approximate and col.distinct is not None and col.distinct >= 0.5 * col.count:
        return f"id-like (at least {col.distinct:,} distinct values in {col.count:,} rows)"
    return None


def profile_frame(frame: pd.DataFrame) -> DatasetProfile:
    """The profile ingestion computes, of an in-memory table (a training run's rows)."""
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        bad = []
        for name in frame.columns:
            try:
                pa.array(frame[name], from_pandas=True)
            except (pa.ArrowTypeError, pa.ArrowInvalid):
                kinds = sorted({type(v).__name__ for v in frame[name].dropna()})
                bad.append(f"{name} ({', '.join(kinds[:4])})")
        raise InvalidInput(f"column(s) {', '.join(bad) or '?'} mix value types, so no one type can be inferred for "
                           "them: clean them, or ingest the table with a spec that types them") from None
    return finalize(profile_batch(table, np.arange(len(frame), dtype=np.uint64)), table.schema)


def suggest_features(profile: DatasetProfile, *, label: str | None, keys: Sequence[str] = (),
                     exclude: dict[str, str] | None = None, for_trees: bool = False,
                     max_one_hot: int = MAX_ONE_HOT, source: str = "the table") -> Suggestion:
    """The suggested spec and the columns left out; InvalidInput when no column is usable."""
    left_out: dict[str, str] = {}
    features: list[dict] = []
    skip = {**({label: "the label"} if label else {}), **{k: "a key column of the dataset" for k in keys}, **(exclude or {})}
    for name, col in profile.columns.items():
        if name in skip:
            left_out[name] = skip[name]
            continue
        kind = _kind(col.type)
        why = _why_not(name, kind, col)
        if why:
            left_out[name] = why
            continue
        if kind == "timestamp":
            # A date has no time of day: its hour would be 0 in every row.
            parts = ["dayofweek", "month"] if col.type.lower().startswith("date") else ["dayofweek", "hour", "month"]
            steps: list[dict] = [{"op": "datetime_parts", "parts": parts}]
        elif kind == "boolean":
            steps = [{"op": "impute", "strategy": "most_frequent"}]
        elif kind == "categorical":
            few = col.distinct is not None and not col.approximate and col.distinct <= max_one_hot
            steps = [{"op": "one_hot", "max_categories": max_one_hot}] if few else [{"op": "ordinal"}]
        else:
            steps = [{"op": "impute", "strategy": "median"}] + ([] if for_trees else [{"op": "standardize"}])
        features.append({"column": name, "steps": steps})
    if not features:
        reasons = "; ".join(f"{c}: {why}" for c, why in left_out.items()) or "it has no columns"
        raise InvalidInput(f"features: auto found no usable column in {source} ({reasons}); "
                           "name the features in data.features instead")
    return Suggestion(spec=FeatureSpec.model_validate({"features": features}), left_out=left_out)
