"""Performance monitoring: ground-truth labels from ``/feedback`` joined to the served predictions.

Predictions are held by request id (bounded: the oldest are forgotten first) until their label
arrives, however late; then they join a rolling window of the most recent labelled predictions,
whose accuracy / ROC-AUC (classification) or RMSE / MAE (regression) is compared with the model's
evaluation baseline (the metrics it was registered with). Feedback for an unknown or forgotten
request id is counted as unknown; a label that does not fit the model is counted as invalid.

A label can also arrive before its prediction: replicas ship their samples every second or so,
and a client may report the outcome at once. Feedback for an unknown id is therefore held for
``hold_s`` seconds (at most ``max_held`` of them); if the prediction is recorded meanwhile the two
are joined (``matched_late``), otherwise it expires (``expired``).

Two more things come out of the same join, for the autopilot:

- Arms: requests, errors, labelled and correct rows per served version since ``reset_arms``, so a
  canary compares the champion and the challenger on the same live traffic. A row is correct when
  its predicted class is the true one; for regression, when its absolute error is at most the
  model's baseline RMSE.
- Labelled production rows: the served feature rows with their true labels and serving times
  (the most recent ``max_labelled_rows``), which a retrain adds to its training data.

A sharded monitor (``monitoring.shards``, aiinfra.monitoring.shards) runs one tracker per shard, each
joining the requests whose id hashes to it; every shard but the first hands what its joins produced
(``handoff``: labelled predictions, the error stream, labelled rows, arm counts) to the first, which
``absorb``s it: the first shard's tracker then reads as one tracker over all the traffic would.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np

from aiinfra.inference.columns import Columns, RowSpan, Runs, flatten, gather, plain
from aiinfra.monitoring.labelled import LabelledRows, Table
from aiinfra.monitoring.sizes import approx_bytes
from aiinfra.monitoring.statistics import roc_auc

__all__ = ["OUTCOMES", "PerformanceTracker", "judged_arms"]

# What ``judge`` says of each label, in order.
OUTCOMES = ("matched", "unknown", "invalid", "refused")


# Client tokens counted per canary arm; past it, the rest share one count (see _count_token).
MAX_ARM_TOKENS = 10_000
OTHER_TOKENS = "(other tokens)"


def judged_arms(stats: Mapping[str, Any], max_share: float) -> dict[str, Any]:
    """``arm_stats()`` as a canary is judged on: on each arm, the labels any one client token gave its own
    requests count for at most ``max_share`` of the arm's counted labels (labels from labeller/admin tokens are
    not capped). A capped token's correct count is scaled with its labelled count. Each arm keeps what was
    counted before the cap as ``labelled_all``/``correct_all`` and names the capped tokens (``capped_tokens``)
    where any was capped.

    Why: a client that may report its own outcomes could otherwise decide a canary alone, labelling the
    challenger's answers right and the champion's wrong. With ``max_share`` 1 nothing is capped."""
    arms = {v: dict(c) for v, c in stats.get("arms", {}).items()}
    tokens = stats.get("tokens") or {}
    for version, arm in arms.items():
        per = {t: (int(n[0]), int(n[1])) for t, n in (tokens.get(version) or {}).items() if int(n[0]) > 0}
        if max_share >= 1.0 or not per:
            continue
        free_n = arm.get("labelled", 0) - sum(n for n, _ in per.values())  # labeller/admin/open labels
        free_c = arm.get("correct", 0) - sum(c for _, c in per.values())
        cap = _share_cap([n for n, _ in per.values()], free_n, max_share)
        capped = sorted(t for t, (n, _) in per.items() if n > cap + 1e-6)
        if not capped:
            continue
        kept = {t: min(n, int(cap + 1e-6)) for t, (n, _) in per.items()}  # bisection ends a hair below an integer
        arm["labelled_all"], arm["correct_all"], arm["capped_tokens"] = arm.get("labelled", 0), arm.get("correct", 0), capped
        arm["labelled"] = free_n + sum(kept.values())
        arm["correct"] = free_c + sum(int(round(c * kept[t] / n)) for t, (n, c) in per.items())
    return {**stats, "arms": arms}


def _share_cap(counts: Sequence[int], free: int, share: float) -> float:
    """The largest C with C <= share * (free + sum(min(n, C))): what one token may count for so that no token is
    more than ``share`` of what is counted. The right side less C is concave in C and not negative at 0, so the
    C that satisfy it are an interval from 0 and bisection finds its end."""
    top = float(max(counts))
    if top <= share * (free + sum(counts)):
        return top
    lo, hi = 0.0, top
    for _ in range(60):
        mid = (lo + hi) / 2
        if mid <= share * (free + sum(min(n, mid) for n in counts)):
            lo = mid
        else:
            hi = mid
    return lo


class PerformanceTracker:
    """Args:
    task: binary, multiclass or regression.
    class_labels: the model's labels (index i is class i); empty for regression.
    baseline: the model's evaluation metrics (``accuracy``, ``roc_auc``, ``rmse``, ...).
    window: how many of the latest labelled predictions the rolling metrics cover.
    max_pending: requests held while waiting for labels.
    max_pending_bytes: the feature rows those requests keep (``approx_bytes``), at most; the oldest go first.
    max_labelled_rows: labelled production rows kept for retraining.
    """

    def __init__(self, task: str, class_labels: Sequence[Any], baseline: Mapping[str, float], *, window: int = 500,
                 max_pending: int = 100_000, max_pending_bytes: int = 256 * 2**20, max_labelled_rows: int = 50_000,
                 hold_s: float = 300.0, max_held: int = 100_000, hands_off: bool = False) -> None:
        self.task = task
        self.class_labels = list(class_labels)
        self._index = {str(v): i for i, v in enumerate(self.class_labels)}
        self.baseline = {k: float(v) for k, v in baseline.items()}
        self.window = window
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self._pending_bytes: dict[str, int] = {}  # request id -> approximate bytes its entry keeps
        self._pending_token: dict[str, str | None] = {}  # request id -> the API token it was made with
        self.pending_bytes = 0
        self.changes = 0  # counts every change to what export_state() returns, so a checkpoint knows when to write
        # request id -> (served values, version, feature rows or None, served at)
        self._pending: OrderedDict[str, tuple[list[float], int | None, list[dict[str, Any]] | None, float]] = OrderedDict()
        # What the joins keep, a chunk per join (aiinfra.monitoring.labelled):
        self._labelled = Table(2, window)  # (score or prediction, truth): the rolling metrics
        # (served at, score or prediction, truth) of the latest labelled rows: what a window's realised
        # performance is measured on, to set beside its estimate.
        self._labelled_at = Table(3, max_labelled_rows)
        # (correct, absolute error) per row joined since the last drain_errors(), in join order: the error stream
        # the concept-drift detector reads. Bounded like the labelled rows, should nobody drain it.
        self._errors = Table(2, max_labelled_rows)
        self._rows = LabelledRows(max_labelled_rows)
        self._truth_of: dict[tuple[type, Any], float | None] = {}  # classification: label -> class index (memo)
        self.arms: dict[int, dict[str, int]] = {}
        # Per arm, the labels (labelled, correct) each token gave its own requests with: a client reporting its
        # own outcomes, whose share of an arm's judgement ``judged_arms`` caps. Labels from a token that may label
        # any request (labeller, admin) or from an open endpoint are not in here: they are not capped.
        self.arm_tokens: dict[int, dict[str, list[int]]] = {}
        self.arms_since = time.time()
        self.hold_s, self.max_held = hold_s, max_held
        self._held: OrderedDict[str, tuple[Mapping[str, Any], float]] = OrderedDict()  # early labels
        self._late: OrderedDict[str, None] = OrderedDict()  # ids joined from held labels: a client's retry is no news
        # forgotten: pending requests dropped over max_pending or max_pending_bytes before their label came.
        # refused: labels from a token that may not label that request (see _join).
        self.counts = {"recorded": 0, "forgotten": 0, "matched": 0, "unknown": 0, "invalid": 0, "refused": 0,
                       "matched_late": 0, "expired": 0}
        # A shard but the first: what its joins produce since the last handoff (bounded like the labelled rows).
        self.hands_off = hands_off
        self._out_labelled = Table(3, max_labelled_rows)
        self._out_rows = LabelledRows(max_labelled_rows)
        self._arms_handed: dict[int, dict[str, int]] = {}
        self._tokens_handed: dict[int, dict[str, list[int]]] = {}
        self._counts_handed: dict[str, int] = {}

    def carry_over(self, old: PerformanceTracker) -> None:
        """Keep ``old``'s labelled production rows and canary arms (the monitor rebased on a new champion)."""
        self._rows, self.arms, self.arms_since = old._rows, old.arms, old.arms_since
        self.arm_tokens = old.arm_tokens
        self._labelled_at = old._labelled_at

    @property
    def held_count(self) -> int:
        """Labels waiting for their predictions."""
        return len(self._held)

    def _arm(self, version: int) -> dict[str, int]:
        arm = self.arms.get(version)
        if arm is None:
            arm = self.arms[int(version)] = {"requests": 0, "errors": 0, "labelled": 0, "correct": 0}
        return arm

    def record(self, request_ids: Sequence[str], scores: Sequence[float], predicted: Sequence[Any] | None = None, *,
               versions: Sequence[int | None] | None = None, rows: Sequence[Mapping[str, Any]] | None = None,
               served_at: float | None = None, tokens: Sequence[str | None] | None = None) -> None:
        """Served rows in order: consecutive rows with the same request id form one request; rows whose id is
        None are not recorded (another shard's).

        ``versions``: the version that answered each row (for the arms); ``rows``: the feature rows
        (kept until labelled, for retraining); ``tokens``: the id of the API token each request was made
        with (a label from another token is refused unless that token may label anyone's requests).
        """
        now = time.time() if served_at is None else served_at
        n = min(len(request_ids), len(scores))
        if n == 0:
            return
        if self.task == "multiclass" and predicted is not None:
            values = [float(self._index.get(str(p), -1)) for p in predicted[:n]]
        elif isinstance(scores, np.ndarray):
            values = scores[:n].astype(np.float64).tolist()
        else:
            values = [float(v) for v in scores[:n]]
        # Rows shipped as columns share their fields: all sized by the first, and each request keeps its rows
        # as one span of views (a view's values are slow to walk; a view per row is slow to make).
        columnar = isinstance(rows, Columns) and len(rows) > 0
        row_size = 0
        if columnar:
            row_size = 32 + approx_bytes(plain(rows[0]))  # type: ignore[index]
            columns = rows.columns  # type: ignore[union-attr]
        # A request is a run of rows with the same id: shipped as Runs (once per request), or found in one
        # vectorized pass over the per-row ids.
        if isinstance(request_ids, Runs) and len(request_ids) == n:
            starts = request_ids.starts().tolist()
            ends = [a + k for a, k in zip(starts, request_ids.lengths.tolist())]
            run_ids = request_ids.values
        else:
            ids = np.empty(n, dtype=object)
            ids[:] = list(request_ids[:n])
            starts = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist()]
            ends = [*starts[1:], n]
            run_ids = ids[starts].tolist()
        lengths = [b - a for a, b in zip(starts, ends)]

        def per_run(values: Sequence[Any]) -> Sequence[Any]:
            if isinstance(values, Runs):
                return values.values if values.lengths.tolist() == lengths else values.at(starts)
            return [values[a] for a in starts]

        run_versions = None if versions is None else per_run(versions)
        run_tokens = None if tokens is None else per_run(tokens)
        pending, pending_bytes = self._pending, self._pending_bytes
        added = recorded = 0
        seen: set[str] = set()
        for j, (a, b) in enumerate(zip(starts, ends)):
            rid = run_ids[j]
            if rid is None or a == b:  # another shard's request (a sharded monitor's first shard sees every row)
                continue
            rid = str(rid)
            seen.add(rid)
            recorded += b - a
            entry = pending.get(rid)
            if entry is None:
                version = None if run_versions is None or run_versions[j] is None else int(run_versions[j])
                entry = ([], version, [] if rows is not None else None, now)
                pending[rid] = entry
                self._pending_token[rid] = None if run_tokens is None else run_tokens[j]
                if version is not None:
                    self._arm(version)["requests"] += 1
            entry[0].extend(values[a:b])
            if entry[2] is not None and rows is not None:
                # Not copied (views, for rows shipped as Columns): the join copies them into the labelled rows.
                if columnar:
                    entry[2].append(RowSpan(columns, a, b))
                    size = row_size * (b - a)
                else:
                    entry[2].extend(rows[a:b])
                    size = (32 + approx_bytes(rows[a])) * (b - a)  # the request's rows have its first's fields
            else:
                size = 32 * (b - a)
            pending_bytes[rid] = pending_bytes.get(rid, 64) + size
            added += size
        self.pending_bytes += added
        self.counts["recorded"] += recorded
        while self._pending and (len(self._pending) > self.max_pending or self.pending_bytes > self.max_pending_bytes):
            rid, _ = self._pending.popitem(last=False)
            self._forget(rid)
            self.counts["forgotten"] += 1
        self.changes += 1
        self._join_held(now, seen)

    def _forget(self, rid: str) -> None:
        """What is kept beside a pending request, once it left ``_pending``."""
        self.pending_bytes -= self._pending_bytes.pop(rid, 0)
        self._pending_token.pop(rid, None)

    def _join_held(self, now: float, recorded: set[str] | None = None) -> None:
        """Join held labels whose predictions were just ``recorded``; drop those held too long."""
        while self._held:
            rid, (_, at) = next(iter(self._held.items()))
            if now - at <= self.hold_s and len(self._held) <= self.max_held:
                break
            del self._held[rid]
            self.counts["expired"] += 1
        if not self._held or not recorded:
            return
        ready = [(rid, self._held.pop(rid)[0]) for rid in recorded if rid in self._held and rid in self._pending]
        for (rid, _), outcome in zip(ready, self._join_all(ready)):
            if outcome == "matched":
                self.counts["matched_late"] += 1
                self._late[rid] = None
                if len(self._late) > self.max_held:
                    self._late.popitem(last=False)
            else:
                self.counts[outcome] += 1

    def record_errors(self, errors: Mapping[Any, int]) -> None:
        """Failed requests (server errors) per version: a canary arm that fails is rolled back."""
        for version, n in errors.items():
            self._arm(int(version))["errors"] += int(n)

    def reset_arms(self) -> None:
        """Start counting the arms afresh (a canary begins)."""
        self.arms = {}
        self.arm_tokens = {}
        self._arms_handed = {}
        self._tokens_handed = {}
        self.arms_since = time.time()

    def arm_stats(self) -> dict[str, Any]:
        """The arms as counted (``judged_arms`` caps one client's share of them), and the labels per client token."""
        return {"since": self.arms_since, "arms": {str(v): dict(c) for v, c in self.arms.items()},
                "tokens": {str(v): {t: list(n) for t, n in per.items()} for v, per in self.arm_tokens.items()}}

    def _count_token(self, version: int, token: str, labelled: int, correct: int) -> None:
        per = self.arm_tokens.setdefault(int(version), {})
        if token not in per and len(per) >= MAX_ARM_TOKENS:
            token = OTHER_TOKENS  # bounded: the rest are capped as one client, which only caps them more
        counts = per.setdefault(token, [0, 0])
        counts[0] += labelled
        counts[1] += correct

    def restore_arms(self, stats: Mapping[str, Any]) -> None:
        """Continue counting from stored ``arm_stats()`` (the monitor restarted mid-canary)."""
        self.arms = {int(v): {k: int(c.get(k, 0)) for k in ("requests", "errors", "labelled", "correct")}
                     for v, c in stats["arms"].items()}
        self.arm_tokens = {int(v): {str(t): [int(n[0]), int(n[1])] for t, n in per.items()}
                           for v, per in (stats.get("tokens") or {}).items()}
        self.arms_since = float(stats["since"])

    def labelled_rows(self, limit: int | None = None, *, max_share: float = 1.0) -> list[dict[str, Any]]:
        """The most recent labelled production rows (oldest first): features, ``label``, ``served_at``,
        ``version``, ``labelled_by``, ``label_trusted`` (the label came from a token that may label any request, or
        from an open endpoint); with ``max_share`` below 1, at most that share of ``limit`` (or of all)
        from any one labelling token, the newest of its rows first."""
        rows = self._rows.rows()
        if max_share < 1.0:
            cap = max_share * (limit if limit is not None else len(rows))
            per: dict[Any, int] = {}
            kept = []
            for row in reversed(rows):
                by = row.get("labelled_by")
                if by is not None and per.get(by, 0) >= cap:
                    continue
                per[by] = per.get(by, 0) + 1
                kept.append(row)
            rows = kept[::-1]
        return rows if limit is None else rows[max(0, len(rows) - limit):]

    def _truth(self, label: Any) -> float | None:
        if self.task == "regression":
            try:
                value = float(label)
            except (TypeError, ValueError):
                return None
            return value if math.isfinite(value) else None
        index = self._index.get(str(label))
        return None if index is None else float(index)

    def feedback(self, items: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """Each item ``{"request_id": ..., "label": ...}`` (``labels``: one per row of that request)."""
        out = {"matched": 0, "unknown": 0, "invalid": 0, "refused": 0}
        for outcome in self.judge(items):
            out[outcome] += 1
        return out

    def judge(self, items: Sequence[Mapping[str, Any]]) -> list[str]:
        """``feedback``, with each item's outcome in order (matched, unknown, invalid or refused): what lets a replica
        send the feedback of many requests in one call and answer each request its own counts."""
        outcomes: list[str] = []
        now = time.time()
        joining: dict[str, tuple[int, Mapping[str, Any]]] = {}  # joined together, once all are read

        def join() -> None:
            for (at, _), outcome in zip(joining.values(), self._join_all([(r, i) for r, (_, i) in joining.items()])):
                outcomes[at] = outcome
            joining.clear()

        for item in items:
            rid = str(item.get("request_id"))
            if rid in joining:  # the same request twice in one call: the first is joined (or not) first
                join()
            if rid in self._late:
                outcomes.append("matched")  # its label was held and joined already; not counted twice
                continue
            if rid not in self._pending:
                outcomes.append("unknown")
                self._held[rid] = (dict(item), now)  # its prediction may still be on its way
                self._held.move_to_end(rid)
                continue
            joining[rid] = (len(outcomes), item)
            outcomes.append("")
        join()
        for outcome in outcomes:
            self.counts[outcome] += 1
        self.changes += 1
        self._join_held(now)  # expiry only
        return outcomes

    def _truths(self, labels: Sequence[Any]) -> list[float] | None:
        """Each label as what the model's outputs are compared with (class index, or value); None if one does not fit."""
        if self.task == "regression":
            truths = [self._truth(v) for v in labels]
            return None if any(t is None for t in truths) else truths  # type: ignore[return-value]
        memo, out = self._truth_of, []
        for label in labels:
            try:
                key = (type(label), label)
                truth = memo[key]
            except KeyError:
                truth = self._truth(label)
                if len(memo) < 4096:
                    memo[key] = truth
            except TypeError:  # unhashable: never a class label
                truth = self._truth(label)
            if truth is None:
                return None
            out.append(truth)
        return out

    def _join_all(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
        """Join each (request id, feedback item) whose prediction is pending; each one's outcome. Each item is
        checked on its own; what the accepted ones add (labelled predictions, errors, arms, rows) is added once
        for all of them, a few array operations per call instead of several Python objects per row."""
        outcomes: list[str] = []
        accepted = []
        for rid, item in items:
            served, version, kept, served_at = self._pending[rid]
            labels = item.get("labels", [item.get("label")] * len(served) if "label" in item else None)
            if not isinstance(labels, list) or len(labels) != len(served):
                outcomes.append("invalid")
                continue
            truths = self._truths(labels)
            if truths is None:
                outcomes.append("invalid")
                continue
            if not item.get("trusted", True) and item.get("by") != self._pending_token.get(rid):
                # Label provenance: only a token that may label anyone's requests (labeller, admin) labels a
                # request another token made; else anyone holding a token could steer the retrain and the canary.
                outcomes.append("refused")
                continue
            del self._pending[rid]
            self._forget(rid)
            accepted.append((served, version, kept, served_at, labels, truths, item.get("by"),
                             bool(item.get("trusted", True))))
            outcomes.append("matched")
        if accepted:
            self._add_joined(accepted)
        return outcomes

    def _add_joined(self, accepted: list[tuple[Any, ...]]) -> None:
        lengths = [len(a[0]) for a in accepted]
        n = sum(lengths)
        served = np.fromiter(chain.from_iterable(a[0] for a in accepted), dtype=np.float64, count=n)
        truth = np.fromiter(chain.from_iterable(a[5] for a in accepted), dtype=np.float64, count=n)
        at = np.repeat(np.array([a[3] for a in accepted], dtype=np.float64), lengths)
        self._labelled.append(np.column_stack([served, truth]))
        stamped = np.column_stack([at, served, truth])
        self._labelled_at.append(stamped)
        if self.hands_off:
            self._out_labelled.append(stamped)
        correct = self._correct_all(served, truth)
        self._errors.append(np.column_stack([correct, np.abs(served - truth)]))
        per_request = np.add.reduceat(correct.astype(np.int64), np.cumsum([0, *lengths[:-1]]))
        for a, k, right in zip(accepted, lengths, per_request.tolist()):
            version, by, trusted = a[1], a[6], a[7]
            if version is not None:
                arm = self._arm(version)
                arm["labelled"] += k
                arm["correct"] += right
                if by is not None and not trusted:
                    self._count_token(version, by, k, right)
        kept = [a for a in accepted if a[2] is not None]
        if kept:
            rows = gather([part for a in kept for part in a[2]])
            extra = {"label": [v for a in kept for v in a[4]],
                     "served_at": [a[3] for a in kept for _ in a[4]],
                     "version": [a[1] for a in kept for _ in a[4]],
                     "labelled_by": [a[6] for a in kept for _ in a[4]],
                     "label_trusted": [a[7] for a in kept for _ in a[4]]}
            self._rows.append(rows, extra)
            if self.hands_off:
                self._out_rows.append(rows, extra)

    def _correct_all(self, values: np.ndarray, truths: np.ndarray) -> np.ndarray:
        if self.task == "binary":
            return (values >= 0.5) == (truths == 1)
        if self.task == "multiclass":
            return values == truths
        tolerance = self.baseline.get("rmse")
        if tolerance is None:
            return np.zeros(len(values), dtype=bool)
        return np.abs(values - truths) <= tolerance

    def export_state(self) -> dict[str, Any]:
        """What a restarted monitor must not lose: predictions waiting for labels, and labels waiting for
        predictions (JSON-ready; ``import_state`` takes it back)."""
        return {"pending": [[rid, values, version, None if rows is None else _export_rows(rows), at,
                             self._pending_token.get(rid)]
                            for rid, (values, version, rows, at) in self._pending.items()],
                "held": [[rid, dict(item), at] for rid, (item, at) in self._held.items()]}

    def import_state(self, state: Mapping[str, Any]) -> int:
        """Take back ``export_state()`` (from a checkpoint) before any traffic; the entries restored."""
        for rid, values, version, rows, at, *token in state.get("pending", []):
            if isinstance(rows, dict):  # {"columns": {field: values}}: a request's rows as columns
                columns = Columns(rows["columns"])
                rows = [RowSpan(columns.columns, 0, len(columns))] if len(columns) else []
            self._pending[str(rid)] = ([float(v) for v in values], None if version is None else int(version),
                                       rows, float(at))
            self._pending_token[str(rid)] = token[0] if token else None
            kept = flatten(rows or [])
            size = 64 + 32 * len(values) + (approx_bytes(plain(kept[0])) * len(kept) if kept else 0)
            self._pending_bytes[str(rid)] = size
            self.pending_bytes += size
        for rid, item, at in state.get("held", []):
            self._held[str(rid)] = (item, float(at))
        while self._pending and (len(self._pending) > self.max_pending or self.pending_bytes > self.max_pending_bytes):
            rid, _ = self._pending.popitem(last=False)
            self._forget(rid)
        return len(self._pending) + len(self._held)

    def handoff(self) -> dict[str, Any]:
        """What this shard's joins produced since the last handoff, for the first shard to ``absorb``: the
        labelled predictions (served at, score, truth), the error stream, the labelled rows, and what the arms'
        and the join's counts grew by since (JSON-ready)."""
        arms = {}
        for version, counts in self.arms.items():
            before = self._arms_handed.get(version, {})
            delta = {k: n - before.get(k, 0) for k, n in counts.items() if n != before.get(k, 0)}
            if delta:
                arms[str(version)] = delta
        tokens: dict[str, dict[str, list[int]]] = {}
        for version, per in self.arm_tokens.items():
            before = self._tokens_handed.get(version, {})
            for token, (n, right) in per.items():
                was = before.get(token, [0, 0])
                if (n, right) != tuple(was):
                    tokens.setdefault(str(version), {})[token] = [n - was[0], right - was[1]]
        counts = {k: n - self._counts_handed.get(k, 0) for k, n in self.counts.items() if n != self._counts_handed.get(k, 0)}
        errors = self.drain_errors()
        out = {"labelled": self._out_labelled.array().tolist(),
               "errors": [[bool(c), e] for c, e in zip(errors[:, 0].tolist(), errors[:, 1].tolist())],
               "rows": self._out_rows.rows(), "arms": arms, "arm_tokens": tokens, "counts": counts}
        self._out_labelled.clear()
        self._out_rows.clear()
        self._arms_handed = {v: dict(c) for v, c in self.arms.items()}
        self._tokens_handed = {v: {t: list(n) for t, n in per.items()} for v, per in self.arm_tokens.items()}
        self._counts_handed = dict(self.counts)
        return out

    def absorb(self, handoff: Mapping[str, Any]) -> int:
        """Another shard's ``handoff``, as if its joins had happened here; the labelled rows it brought."""
        labelled = handoff.get("labelled") or []
        if labelled:
            table = np.asarray(labelled, dtype=np.float64).reshape(-1, 3)
            self._labelled.append(table[:, 1:])
            self._labelled_at.append(table)
        errors = handoff.get("errors") or []
        if errors:
            self._errors.append(np.asarray(errors, dtype=np.float64).reshape(-1, 2))
        self._rows.extend(handoff.get("rows") or [])
        for version, delta in (handoff.get("arms") or {}).items():
            arm = self._arm(int(version))
            for k, n in delta.items():
                if k in arm:
                    arm[k] += int(n)
        for version, per in (handoff.get("arm_tokens") or {}).items():
            for token, (n, right) in per.items():
                self._count_token(int(version), str(token), int(n), int(right))
        for k, n in (handoff.get("counts") or {}).items():
            if k in self.counts:
                self.counts[k] += int(n)
        return len(labelled)

    def drain_errors(self) -> np.ndarray:
        """(correct as 0 or 1, absolute error) of each row joined since the last call, in join order: (n, 2)."""
        out = self._errors.array()
        self._errors.clear()
        return out

    def realised_in(self, spans: Sequence[tuple[float, float]]) -> list[dict[str, Any]]:
        """What the labels of the rows served in each [start, end] show: ``labelled`` rows and their ``metrics``
        (the labelled rows read into arrays once for all the spans)."""
        if not spans:
            return []
        table = self._labelled_at.array()
        out = []
        for start, end in spans:
            picked = table[(table[:, 0] >= start) & (table[:, 0] <= end)]
            out.append({"labelled": len(picked), "metrics": self._metrics(picked[:, 1], picked[:, 2])} if len(picked)
                       else {"labelled": 0, "metrics": {}})
        return out

    def _metrics(self, scores: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.task == "binary":
            predicted = scores >= 0.5
            positive = truth == 1
            metrics["accuracy"] = float(np.mean(predicted == positive))
            tp, fp, fn = (int(np.sum(predicted & positive)), int(np.sum(predicted & ~positive)),
                          int(np.sum(~predicted & positive)))
            if 2 * tp + fp + fn:
                metrics["f1"] = 2 * tp / (2 * tp + fp + fn)
            if positive.any() and not positive.all():
                metrics["roc_auc"] = roc_auc(positive, scores)
        elif self.task == "multiclass":
            metrics["accuracy"] = float(np.mean(scores == truth))
            # Macro F1 over the classes seen (true or predicted), as scikit-learn's average="macro" counts them.
            f1 = []
            for k in np.union1d(truth, scores[scores >= 0]):
                tp, fp = int(np.sum((scores == k) & (truth == k))), int(np.sum((scores == k) & (truth != k)))
                fn = int(np.sum((scores != k) & (truth == k)))
                f1.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0)
            if f1:
                metrics["f1_macro"] = float(np.mean(f1))
        else:
            err = scores - truth
            metrics["rmse"] = float(np.sqrt(np.mean(err**2)))
            metrics["mae"] = float(np.mean(np.abs(err)))
        return metrics

    def snapshot(self) -> dict[str, Any]:
        """Rolling metrics over the latest labelled predictions, against the baseline."""
        metrics: dict[str, float] = {}
        if len(self._labelled):
            table = self._labelled.array()
            metrics = self._metrics(table[:, 0], table[:, 1])
        delta = {k: v - self.baseline[k] for k, v in metrics.items() if k in self.baseline}
        return {"labelled": len(self._labelled), "pending": len(self._pending), "pending_bytes": self.pending_bytes,
                "held": len(self._held), "metrics": metrics,
                "baseline": {k: self.baseline[k] for k in metrics if k in self.baseline}, "delta": delta,
                "counts": dict(self.counts)}


def _export_rows(kept: Sequence[Any]) -> list[dict[str, Any]] | dict[str, Any]:
    """A pending request's kept rows for the checkpoint: as ``{"columns": {field: values}}`` when they are spans
    of columns with the same fields (a slice per column, not a dict per row: a checkpoint holds every pending
    request), else as a list of rows."""
    if kept and all(type(p) is RowSpan for p in kept):
        fields = kept[0]._columns.keys()
        if all(p._columns.keys() == fields for p in kept):
            columns: dict[str, list[Any]] = {f: [] for f in fields}
            for p in kept:
                for f, values in p._columns.items():
                    part = values[p._start:p._end]
                    columns[f].extend(part.tolist() if isinstance(part, np.ndarray) else part)
            return {"columns": columns}
    return [plain(r) for r in flatten(kept)]
