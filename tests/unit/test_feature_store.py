"""Feature views, point-in-time joins on hand-built cases, and the online store core."""

from __future__ import annotations

import pandas as pd
import pytest

from aiinfra.errors import InvalidInput, NotFound
from aiinfra.features.offline import FOUND, NONE_BEFORE, NULL_KEY, point_in_time_join
from aiinfra.features.online import OnlineStore
from aiinfra.features.views import FeatureView, load_feature_views, parse_duration
from aiinfra.storage import open_metadata_db

# The store suite: `make test` runs it on SQLite and again on a Postgres server it starts (AIINFRA_TEST_METADATA).
pytestmark = pytest.mark.store

VIEW = FeatureView.model_validate({
    "name": "usage", "entity": "customer_id", "timestamp": "event_ts", "features": ["calls", "spend"],
    "ttl": "2d", "source": "usage_events",
})


def ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s)


def test_durations_and_view_validation(tmp_path):
    assert parse_duration("90m") == 5400 and parse_duration("2d") == 172800 and parse_duration(30) == 30
    assert VIEW.ttl_s == 172800
    f = tmp_path / "views.yaml"
    f.write_text("feature_views:\n  - {name: v, entity: e, timestamp: t, features: [a, a], ttl: soon, source: '../x'}\n")
    with pytest.raises(InvalidInput) as exc:
        load_feature_views(f)
    for needle in ("features", "ttl", "source"):
        assert needle in str(exc.value)


SOURCE = pd.DataFrame({
    "customer_id": [1, 1, 1, 2],
    "event_ts": [ts("2026-01-01 00:00"), ts("2026-01-02 00:00"), ts("2026-01-05 00:00"), ts("2026-01-01 12:00")],
    "calls": [1, 2, 3, 10],
    "spend": [10.0, 20.0, 30.0, 100.0],
})


def test_point_in_time_never_sees_the_future_and_honours_ttl():
    entities = pd.DataFrame({
        "customer_id": [1, 1, 1, 1, 2, 2, 3],
        "event_ts": [
            ts("2026-01-01 23:59"),  # after the first value only
            ts("2026-01-02 00:00"),  # exactly at the second value's time: it counts
            ts("2026-01-04 23:59"),  # the t+1 value (Jan 5) must not leak; Jan 2 is 2d23h old -> expired
            ts("2025-12-31 00:00"),  # before any value
            ts("2026-01-03 11:00"),  # 1d23h after entity 2's value: still valid
            ts("2026-01-03 13:00"),  # 2d1h after: expired
            ts("2026-01-02 00:00"),  # unknown entity
        ],
        "label": [0, 1, 0, 1, 1, 0, 1],
    })
    out = point_in_time_join(entities, VIEW, SOURCE)
    assert list(out["label"]) == [0, 1, 0, 1, 1, 0, 1]  # rows keep their order and their columns
    calls = [None if pd.isna(v) else int(v) for v in out["calls"]]
    assert calls == [1, 2, None, None, 10, None, None]


def test_point_in_time_without_ttl_and_bad_frames():
    forever = VIEW.model_copy(update={"ttl_s": None})
    entities = pd.DataFrame({"customer_id": [1], "event_ts": [ts("2026-03-01")]})
    assert point_in_time_join(entities, forever, SOURCE)["calls"].tolist() == [3]
    with pytest.raises(InvalidInput, match="entity frame lacks"):
        point_in_time_join(entities.drop(columns=["event_ts"]), VIEW, SOURCE)
    with pytest.raises(InvalidInput, match="already has"):
        point_in_time_join(entities.assign(calls=1), VIEW, SOURCE)


@pytest.fixture
def store(metadata_url):
    clock = {"now": ts("2026-01-03 00:00", ).tz_localize("UTC").timestamp()}
    s = OnlineStore(open_metadata_db(metadata_url), clock=lambda: clock["now"])
    s.register_view(VIEW)
    return s, clock, metadata_url


def test_online_latest_value_wins_whatever_the_push_order(store):
    s, _, _ = store
    assert s.push("usage", [{"customer_id": 1, "event_ts": "2026-01-02", "calls": 2, "spend": 20.0}]) == 1
    # an older value arriving late (or a retried push) does not move time back
    assert s.push("usage", [{"customer_id": 1, "event_ts": "2026-01-01", "calls": 1, "spend": 10.0}]) == 0
    assert s.push("usage", [{"customer_id": "1", "event_ts": "2026-01-02", "calls": 2, "spend": 20.0}]) == 1  # same time: idempotent
    [hit] = s.get_online_features("usage", [1])
    assert hit["status"] == "ok" and hit["features"] == {"calls": 2, "spend": 20.0}


def test_online_unknown_and_expired_are_nulls_flagged(store):
    s, clock, _ = store
    s.push("usage", [{"customer_id": 1, "event_ts": "2026-01-02", "calls": 2, "spend": float("nan")}])
    got = s.get_online_features("usage", [1, 99])
    assert got[0]["features"] == {"calls": 2, "spend": None}
    assert got[1] == {"entity": 99, "status": "missing", "event_ts": None, "features": {"calls": None, "spend": None}}
    clock["now"] += 3 * 86400
    assert s.get_online_features("usage", [1])[0]["status"] == "expired"


def test_online_store_reloads_everything_acknowledged(store):
    s, clock, metadata_url = store
    s.push("usage", [{"customer_id": i, "event_ts": "2026-01-02", "calls": i, "spend": 1.0} for i in range(100)],
           materialized_until=123.0)
    again = OnlineStore(open_metadata_db(metadata_url), clock=lambda: clock["now"])
    assert again.entity_count("usage") == 100 and again.materialized_until("usage") == 123.0
    assert again.get_online_features("usage", [42])[0]["features"]["calls"] == 42


def test_online_bad_pushes_write_nothing(store):
    s, _, _ = store
    with pytest.raises(InvalidInput, match="row 1 lacks spend"):
        s.push("usage", [{"customer_id": 1, "event_ts": "2026-01-02", "calls": 2, "spend": 1.0},
                         {"customer_id": 2, "event_ts": "2026-01-02", "calls": 2}])
    with pytest.raises(InvalidInput, match="invalid timestamp"):
        s.push("usage", [{"customer_id": 1, "event_ts": "yesterday-ish", "calls": 2, "spend": 1.0}])
    assert s.entity_count("usage") == 0
    with pytest.raises(NotFound, match="'nope'"):
        s.get_online_features("nope", [1])


def test_point_in_time_across_timestamp_resolutions():
    """Parquet brings microseconds, pandas makes nanoseconds: the join must not care."""
    source = SOURCE.assign(event_ts=SOURCE["event_ts"].astype("datetime64[us]"))
    entities = pd.DataFrame({"customer_id": [1], "event_ts": pd.to_datetime(["2026-01-02 01:00"]).astype("datetime64[ns]")})
    assert point_in_time_join(entities, VIEW, source)["calls"].tolist() == [2]


def test_null_keys_and_times_get_null_features_flagged_and_never_match_each_other():
    source = pd.concat([SOURCE, pd.DataFrame({"customer_id": [None, 2.0], "event_ts": [ts("2026-01-01"), pd.NaT],
                                              "calls": [99, 98], "spend": [990.0, 980.0]})], ignore_index=True)
    assert source["customer_id"].dtype == "float64"  # a null made the key floats
    entities = pd.DataFrame({
        "customer_id": [1, None, 2, 1, 7],
        "event_ts": [ts("2026-01-01 23:00"), ts("2026-01-02"), ts("2026-01-02"), pd.NaT, ts("2026-01-02")],
    })
    out = point_in_time_join(entities, VIEW, source, status_column="pit")
    # The null key is not joined to the source's null-key row (99); the source's row without a time (98) is
    # ignored; the int key 1 matches the float key 1.0.
    assert [None if pd.isna(v) else int(v) for v in out["calls"]] == [1, None, 10, None, None]
    assert out["pit"].tolist() == [FOUND, NULL_KEY, FOUND, NULL_KEY, NONE_BEFORE]
    assert out["customer_id"].isna().tolist() == [False, True, False, False, False]  # the rows as they came
    with pytest.raises(InvalidInput, match="status column 'calls'"):
        point_in_time_join(entities, VIEW, source, status_column="calls")


def test_keys_compare_by_value_across_numeric_types_and_fractions_never_match_integers():
    entities = pd.DataFrame({"customer_id": [1.0, 1.5], "event_ts": [ts("2026-01-03"), ts("2026-01-03")]})
    out = point_in_time_join(entities, VIEW, SOURCE, status_column="pit")
    assert out["calls"].tolist()[0] == 2 and pd.isna(out["calls"].tolist()[1])
    assert out["pit"].tolist() == [FOUND, NONE_BEFORE]
    text = pd.DataFrame({"customer_id": ["1"], "event_ts": [ts("2026-01-03")]})
    assert point_in_time_join(text, VIEW, SOURCE)["calls"].tolist() == [2]  # compared as text


def test_times_in_mixed_zones_compare_in_utc_and_non_times_are_named():
    # 2026-01-02 00:30 in Berlin is 2026-01-01 23:30 UTC: before customer 1's second value (Jan 2, 00:00 UTC).
    mixed = pd.DataFrame({"customer_id": [1, 1], "event_ts": pd.Series(
        [pd.Timestamp("2026-01-02 00:30", tz="Europe/Berlin"), pd.Timestamp("2026-01-02 00:30")], dtype=object)})
    assert point_in_time_join(mixed, VIEW, SOURCE)["calls"].tolist() == [1, 2]  # the naive one is taken as UTC
    with pytest.raises(InvalidInput, match="entity frame column 'event_ts' must hold timestamps"):
        point_in_time_join(pd.DataFrame({"customer_id": [1], "event_ts": ["not a time"]}), VIEW, SOURCE)
