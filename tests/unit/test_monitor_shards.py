"""A model's monitor as several shards answers as one monitor over the same traffic would.

No Ray: the shards are the plain services their actors host, over one real metadata DB; each later
shard hands off to shard 0 in-process (``peer``), as its ticker does to shard 0's actor.
"""

from __future__ import annotations

import numpy as np
import pytest
from monitored import rows

from aiinfra.inference.columns import to_columns
from aiinfra.monitoring.client import MonitorClient
from aiinfra.monitoring.service import MonitorService, monitor_actor_name
from aiinfra.monitoring.shards import shard_of, split_observe

pytestmark = pytest.mark.store


def with_shards(config, n):
    return config.model_copy(update={"monitoring": config.monitoring.model_copy(update={"shards": n})})


def drive(client: MonitorClient, version: int, hand_off=lambda: None) -> list:
    """Three windows of traffic (two rows a request, the last window shifted), every request labelled, one
    unknown label, a few failed requests; what each feedback call answered."""
    rng = np.random.default_rng(5)
    answers = []
    for batch in range(3):
        frame, p, labels = rows(rng, 1000, shift=1.0 if batch == 2 else 0.0)
        ids = [f"b{batch}-{i // 2}" for i in range(1000)]
        client.observe(to_columns(frame.to_dict(orient="records")), p.tolist(), ids, [int(v >= 0.5) for v in p],
                       [version] * 1000, {version: 3} if batch == 0 else None, None)
        items = [{"request_id": f"b{batch}-{j}", "labels": [int(labels[2 * j]), int(labels[2 * j + 1])]}
                 for j in range(500)]
        answers.append(client.feedback([*items, {"request_id": "nobody", "label": 1}]))
        hand_off()
    return answers


def test_two_shards_answer_as_one_monitor(config, registered):
    db, store, version = registered
    one = MonitorService(config, "m", db=db, store=store, ticker=False)
    single = drive(MonitorClient.in_process(one), version.version)
    expected = {"status": one.status(), "arms": one.arm_stats(), "rows": one.labelled_rows(),
                "estimates": one.check_estimates()}

    sharded = with_shards(config, 2)
    zero = MonitorService(sharded, "m", db=db, store=store, ticker=False)
    later = MonitorService(sharded, "m", db=db, store=store, ticker=False, shard=1, peer=zero.absorb)
    zero.reset_arms()  # the arms the single monitor stored (same model) are read back; count afresh
    answers = drive(MonitorClient.in_process(zero, [later]), version.version, later.hand_off)

    assert [{k: a[k] for k in ("matched", "unknown", "outcomes")} for a in answers] == \
        [{k: a[k] for k in ("matched", "unknown", "outcomes")} for a in single]
    assert answers[0]["matched"] == 500 and answers[0]["unknown"] == 1
    status = zero.status()
    # Drift windows: shard 0 cut them from every row, so the same windows and verdicts.
    new, old = status["reports"][:3], expected["status"]["reports"][:3]
    assert [(r["rows"], r["status"], r["reason"]) for r in new] == [(r["rows"], r["status"], r["reason"]) for r in old]
    assert [r["result"]["features"] for r in new] == [r["result"]["features"] for r in old]
    # The joins happened on both shards and reached shard 0: arms, counts, labelled rows, estimates' realised.
    assert zero.arm_stats()["arms"] == expected["arms"]["arms"]
    counts = status["performance"]["counts"]
    assert {k: counts[k] for k in ("recorded", "matched", "unknown")} == \
        {k: expected["status"]["performance"]["counts"][k] for k in ("recorded", "matched", "unknown")}
    key = lambda r: (r["x"], r["plan"], r["label"], r["version"])  # noqa: E731
    assert sorted(map(key, zero.labelled_rows())) == sorted(map(key, expected["rows"]))
    assert [(c.labelled, c.realised) for c in zero.check_estimates()[:3]] == \
        [(c.labelled, c.realised) for c in expected["estimates"][:3]]
    assert status["concept"]["rows"] == expected["status"]["concept"]["rows"] == 3000  # one error stream
    assert status["performance"]["labelled"] == expected["status"]["performance"]["labelled"]
    assert later.performance.snapshot()["pending"] == 0 and later.handoffs["failed"] == 0


def test_a_handoff_shard_zero_did_not_take_is_sent_later(config, registered):
    db, store, version = registered
    sharded = with_shards(config, 2)
    zero = MonitorService(sharded, "m", db=db, store=store, ticker=False)
    away = {"on": True}

    def peer(handoff):
        if away["on"]:
            raise ConnectionError("shard 0 restarting")
        return zero.absorb(handoff)

    later = MonitorService(sharded, "m", db=db, store=store, ticker=False, shard=1, peer=peer)
    ids = [f"r{i}" for i in range(200) if shard_of(f"r{i}", 2) == 1]
    later.observe([{"x": 0.5, "plan": "basic"}] * len(ids), [0.7] * len(ids), ids, [1] * len(ids),
                  [version.version] * len(ids))
    later.feedback([{"request_id": r, "label": 1} for r in ids])
    assert later.hand_off() == 0 and later.handoffs["failed"] == 1
    away["on"] = False
    assert later.hand_off() == 1
    assert zero.arm_stats()["arms"][str(version.version)] == {"requests": len(ids), "errors": 0,
                                                              "labelled": len(ids), "correct": len(ids)}
    assert zero.status()["concept"]["rows"] == len(ids)
    # A handoff of counts alone (a label for a request this shard never saw) reaches shard 0 too.
    unknown = zero.performance.counts["unknown"]
    later.feedback([{"request_id": "never-served", "label": 1}])
    assert later.hand_off() == 1 and zero.performance.counts["unknown"] == unknown + 1


def test_requests_are_split_by_their_id_and_shard_zero_sees_every_row():
    ids = [f"q{i // 3}" for i in range(30)]  # 10 requests of 3 rows
    calls = dict(split_observe(3, [{"x": i} for i in range(30)], list(range(30)), ids, None, None, {1: 2}, None))
    assert len(calls[0][0]) == 30 and calls[0][5] == {1: 2}  # every row, and the failed requests
    for k, (_rows, _, ids_k, *_rest) in calls.items():
        assert all(shard_of(r, 3) == k for r in ids_k if r is not None)
    assert sum(len([r for r in c[2] if r is not None]) for c in calls.values()) == 30
    assert monitor_actor_name("churn", 0) == "monitor:churn" and monitor_actor_name("churn", 2) == "monitor:churn#2"
    # Ids shipped once per request (Runs) and scores as an array split the same way.
    import numpy as np

    from aiinfra.inference.columns import Runs, to_columns

    runs = dict(split_observe(3, to_columns([{"x": i} for i in range(30)]), np.arange(30.0), Runs.of(ids), None,
                              Runs.of([1] * 30), {1: 2}, Runs.of(["t"] * 30)))
    assert runs.keys() == calls.keys()
    for k in calls:
        assert list(runs[k][2]) == list(calls[k][2]) and list(runs[k][1]) == list(calls[k][1])
        assert runs[k][0] == calls[k][0]


def test_a_shard_beyond_the_configured_count_is_refused(config):
    with pytest.raises(ValueError, match="shard 1 of a monitor with monitoring.shards 1"):
        MonitorService(config, "m", shard=1)
