"""The fitted transforms give the same numbers through Ray Data batches as through serving's row path."""

from __future__ import annotations

import numpy as np
import ray

from aiinfra.data.synthetic import CATEGORICAL, NUMERIC, make_customers
from aiinfra.data.transforms import FeaturePipeline, fit_features, load_feature_spec
from aiinfra.demo.configs import example_config


def test_ray_data_batches_equal_request_rows(ray_session):
    df = make_customers(3_000, seed=11)
    df.loc[:20, "monthly_charges"] = np.nan  # imputed on both paths
    pipe = fit_features(df, load_feature_spec(example_config("customers_features.yaml")))
    restored = FeaturePipeline.from_json(pipe.to_json())  # what serving loads

    def to_features(batch):
        return {"x": pipe.transform(batch), "customer_id": batch["customer_id"].to_numpy()}

    ds = ray.data.from_pandas(df, override_num_blocks=4).map_batches(to_features, batch_format="pandas", batch_size=512)
    out = ds.to_pandas().sort_values("customer_id")
    batch_x = np.vstack(out["x"].to_numpy())

    rows = df.sort_values("customer_id")[NUMERIC + CATEGORICAL].astype(object)
    rows = rows.where(rows.notna(), None).to_dict("records")
    row_x = np.vstack([restored.transform_rows([r]) for r in rows])
    np.testing.assert_array_equal(batch_x, row_x)
