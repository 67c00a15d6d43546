"""One model's monitor as several actors, above one actor's intake (``monitoring.shards``).

Shard ``k`` of ``n`` is the actor ``monitor:<model>#k`` (shard 0 keeps the plain ``monitor:<model>``
name). A request belongs to the shard its id hashes to (``shard_of``): its sampled prediction and its
label go there, so the join happens on one shard without coordination. What each join produces
(labelled predictions, the error stream, labelled rows, arm counts) is handed to shard 0 every
``HANDOFF_S`` (``MonitorService.hand_off``), so shard 0 answers everything the monitor is asked
(performance, estimates against labels, concept drift, canary arms, labelled rows) as one actor over
all the traffic would, at most ``HANDOFF_S`` later. Shard 0 also cuts the drift windows, from every
sampled row: windows are order-dependent, and rows shipped column by column into sampled windows
(``min_window_seconds``) are cheap next to the per-request join that the shards divide.

The split is done by the client (``MonitorClient``), so the replicas' sampler and the router's
``/feedback`` batching do not change.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from aiinfra.inference.columns import Columns, Runs
from aiinfra.monitoring.performance import OUTCOMES

__all__ = ["HANDOFF_S", "shard_of", "split_feedback", "split_observe"]

HANDOFF_S = 0.5

def shard_of(request_id: Any, shards: int) -> int:
    """The shard of a request: stable across processes and restarts (unlike ``hash``)."""
    return zlib.crc32(str(request_id).encode("utf-8", "backslashreplace")) % shards if shards > 1 else 0


def _take(values: Any, positions: Sequence[int]) -> Any:
    if values is None:
        return None
    if isinstance(values, (Columns, np.ndarray)):
        return values.take(positions) if isinstance(values, Columns) else values[np.asarray(positions, dtype=np.intp)]
    return [values[i] for i in positions]


def split_observe(shards: int, rows: Any, scores: Any, request_ids: Sequence[Any] | None, labels: Any,
                  versions: Any, errors: Any, tokens: Any) -> list[tuple[int, tuple[Any, ...]]]:
    """One ``observe`` call per shard: shard 0 gets every row (its drift windows) with the ids of its own
    requests only (None for the others') and the failed requests; shard k its own rows."""
    if shards <= 1 or request_ids is None:
        return [(0, (rows, scores, request_ids, labels, versions, errors, tokens))]
    if isinstance(request_ids, Runs):  # once per request, as a replica ships them
        which = [w for r, k in zip(request_ids.values, request_ids.lengths.tolist()) for w in [shard_of(r, shards)] * k]
        mine: Any = Runs([r if shard_of(r, shards) == 0 else None for r in request_ids.values], request_ids.lengths)
    else:
        which = [shard_of(r, shards) for r in request_ids]
        mine = [r if w == 0 else None for r, w in zip(request_ids, which)]
    calls = [(0, (rows, scores, mine, labels, versions, errors, tokens))]
    for k in range(1, shards):
        positions = [i for i, w in enumerate(which) if w == k]
        if positions:
            calls.append((k, tuple(_take(v, positions) for v in (rows, scores, request_ids, labels, versions))
                          + (None, _take(tokens, positions))))
    return calls


def split_feedback(shards: int, items: Sequence[Mapping[str, Any]],
                   send: Callable[[int, list[dict[str, Any]]], Mapping[str, Any]]) -> dict[str, Any]:
    """Each item to its request's shard (one ``send(shard, items)`` each), the answers put back together:
    the counts summed, ``outcomes`` in the items' order, the concept drift found (shard 0 finds it)."""
    groups: dict[int, list[int]] = {}
    for pos, item in enumerate(items):
        groups.setdefault(shard_of(item.get("request_id"), shards), []).append(pos)
    outcomes: list[str] = [""] * len(items)
    concept: list[Any] = []
    for k, positions in sorted(groups.items()):
        reply = send(k, [dict(items[p]) for p in positions])
        got = list(reply.get("outcomes") or [])
        if len(got) != len(positions):
            raise RuntimeError(f"monitor shard {k} answered {len(got)} outcomes for {len(positions)} items")
        for p, outcome in zip(positions, got):
            outcomes[p] = outcome
        concept.extend(reply.get("concept_drift") or [])
    return {**{k: outcomes.count(k) for k in OUTCOMES}, "outcomes": outcomes, "concept_drift": concept}
