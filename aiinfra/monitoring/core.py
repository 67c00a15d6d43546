"""The drift monitor of one model: served rows in, one stored ``DriftReport`` per window out.

A plain class over a MetadataDB (schema component ``monitoring``); a Ray actor named
``monitor:<model>`` wraps it later, and serving replicas send it the rows they served (feature
dicts) with the model's scores, one call per batch. No Ray here.

Windows: rows accumulate in the open window, which closes when it holds ``window_rows`` rows or
when ``window_seconds`` have passed since its first row (checked on every ``observe`` and on
``tick``, the actor's timer). A closed window is tested against the reference, unless it has
fewer than ``min_rows`` rows (then it is stored as ``skipped``), and its report is committed in
one transaction before any caller sees it. ``window_id`` counts 1, 2, ... per model and continues
from the stored maximum, so a restarted monitor (the actor's constructor running again) neither
reuses an id nor loses a stored report; only the rows of the window that was open are lost.

At high traffic (``settings.min_window_seconds``): a window that holds ``window_rows`` rows before it
has been open ``min_window_seconds`` stays open, and keeps a uniform sample of ``window_rows`` of all the
rows that arrived in its span (each row draws a random priority; the window keeps the lowest), so a
check runs at most once per ``min_window_seconds`` on as many rows as at low traffic. Its report says
how many rows it tested (``rows``) out of how many arrived (``rows_seen``).

Overload never becomes the caller's error: a call brings at most ``max_buffer_rows`` rows into
the monitor (counting the open window); the rest are dropped and counted in ``stats()``.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from aiinfra.config import MonitoringSettings
from aiinfra.errors import InvalidInput
from aiinfra.inference.columns import Columns
from aiinfra.monitoring.concept import ConceptDrift
from aiinfra.monitoring.detectors import DriftDetector, DriftResult
from aiinfra.monitoring.estimation import PerformanceEstimate, PerformanceEstimator
from aiinfra.registry.types import validate_name
from aiinfra.storage import MetadataDB, Migration

__all__ = ["COMPONENT", "MAX_BUFFER_ROWS", "MIGRATIONS", "DriftMonitor", "DriftReport", "EstimateCheck",
           "MonitoringSettings", "ReportStatus", "estimation_error", "load_arms", "read_concept_drift", "read_estimates",
           "record_realised", "save_arms", "save_concept_drift"]

ReportStatus = Literal["ok", "drift", "skipped"]
MAX_REPORTS = 1000

COMPONENT = "monitoring"

MIGRATIONS = (
    Migration(
        1,
        (
            """CREATE TABLE drift_reports (
                model TEXT NOT NULL,
                window_id INTEGER NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                window_start DOUBLE PRECISION NOT NULL,
                window_end DOUBLE PRECISION NOT NULL,
                rows INTEGER NOT NULL,
                status TEXT NOT NULL,
                report TEXT NOT NULL,
                PRIMARY KEY (model, window_id)
            )""",
        ),
    ),
    # A canary's arms (requests, errors, labelled and correct rows per version) outlive a monitor restart.
    Migration(
        2,
        (
            """CREATE TABLE monitor_arms (
                model TEXT PRIMARY KEY,
                since DOUBLE PRECISION NOT NULL,
                arms TEXT NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
        ),
    ),
    # Each window's performance estimate (CBPE) beside what its labels showed once they arrived.
    Migration(
        3,
        (
            """CREATE TABLE performance_estimates (
                model TEXT NOT NULL,
                window_id INTEGER NOT NULL,
                window_start DOUBLE PRECISION NOT NULL,
                window_end DOUBLE PRECISION NOT NULL,
                estimate TEXT NOT NULL,
                labelled INTEGER NOT NULL,
                realised TEXT,
                updated_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (model, window_id)
            )""",
        ),
    ),
    # Concept drift found on the error stream (aiinfra.monitoring.concept), one row per detection.
    Migration(
        4,
        (
            """CREATE TABLE concept_reports (
                model TEXT NOT NULL,
                detection_id INTEGER NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                report TEXT NOT NULL,
                PRIMARY KEY (model, detection_id)
            )""",
        ),
    ),
    # Per arm, the labels each client token gave its own requests (PerformanceTracker.arm_tokens): a restarted
    # monitor still caps one client's share of a canary.
    Migration(5, ("ALTER TABLE monitor_arms ADD COLUMN tokens TEXT",)),
)


MAX_BUFFER_ROWS = 50_000


class DriftReport(BaseModel):
    """One closed window. ``window_start``/``window_end``: arrival times of its first and last rows.

    ``status`` is ``drift`` when a feature drifted after the correction or the prediction test
    flagged the scores; ``reason`` says which, or why the window was skipped.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    window_id: int
    created_at: float
    window_start: float
    window_end: float
    rows: int  # tested
    status: ReportStatus
    reason: str
    result: DriftResult | None = None
    # The window's estimated performance from the model's scores alone (CBPE), before any label.
    estimate: PerformanceEstimate | None = None
    # Rows that arrived in the window's span, of which ``rows`` (a uniform sample) were tested; None in
    # reports stored before windows could sample (they tested every row).
    rows_seen: int | None = None


def _frame(rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    if isinstance(rows, pd.DataFrame):
        return rows
    if isinstance(rows, Mapping) or isinstance(rows, (str, bytes)):
        raise InvalidInput("rows must be a sequence of mappings (one per row) or a DataFrame")
    rows = list(rows)
    if not all(isinstance(r, Mapping) for r in rows):
        raise InvalidInput("every row must be a mapping of feature name to value")
    return pd.DataFrame.from_records(rows) if rows else pd.DataFrame()


class _Batch:
    """The rows of one ``observe`` call, only the tested columns, made into frames where a window needs them:
    rows shipped as ``Columns`` are never made into one frame whole (most of a sampled window's are not kept)."""

    def __init__(self, rows: Any, columns: Sequence[str], model: str) -> None:
        self._columns = list(columns)
        if isinstance(rows, Columns):
            self.n = len(rows)
            missing = [c for c in self._columns if c not in rows.columns]
            self._values: dict[str, Sequence[Any]] | None = {c: rows.columns[c] for c in self._columns if c in rows.columns}
            self._frame: pd.DataFrame | None = None
        else:
            frame = _frame(rows)
            self.n = len(frame)
            missing = [c for c in self._columns if c not in frame.columns]
            self._values = None
            self._frame = frame.loc[:, self._columns].reset_index(drop=True) if self.n and not missing else frame
        if self.n and missing:
            raise InvalidInput(f"rows for model {model!r} lack the feature columns {missing}")

    def rows(self, start: int, end: int) -> pd.DataFrame:
        if self._values is None:
            return self._frame.iloc[start:end]  # type: ignore[union-attr]
        return pd.DataFrame({c: v[start:end] for c, v in self._values.items()}, columns=self._columns)

    def pick_arrays(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """The rows at ``positions``, a numpy array per tested column (no frame: a sampled window's few new rows)."""
        if self._values is None:
            return {c: self._frame[c].to_numpy()[positions] for c in self._columns}  # type: ignore[index]
        out: dict[str, np.ndarray] = {}
        picked = positions.tolist()
        for c, v in self._values.items():
            if isinstance(v, np.ndarray):
                out[c] = v[positions]
            else:
                out[c] = np.empty(len(picked), dtype=object)
                out[c][:] = [v[i] for i in picked]
        return out



def _verdict(result: DriftResult) -> tuple[ReportStatus, str]:
    parts = []
    if result.drifted_features:
        parts.append(
            f"features drifted ({result.correction}, alpha {result.alpha:g}): {', '.join(result.drifted_features)}"
        )
    if result.multivariate is not None and result.multivariate.drifted and not result.drifted_features:
        parts.append(f"inputs drifted jointly (MMD p={result.multivariate.p_value:.2g})")
    if result.prediction is not None and result.prediction.drifted:
        parts.append(f"prediction drifted (KS p={result.prediction.p_value:.2g})")
    if parts:
        return "drift", "; ".join(parts)
    return "ok", f"no drift in {len(result.features)} features" + (
        " or the prediction" if result.prediction else ""
    )


class DriftMonitor:
    """Collects one model's served rows into windows, tests each and stores its report.

    Args:
        db: the metadata DB; this class owns the table created by ``MIGRATIONS``.
        model: the model's registry name (reports are keyed by it).
        reference: rows the model was trained or validated on; see ``DriftDetector``.
        numeric, categorical: the feature columns to test; other columns in served rows are ignored.
        settings: the platform's ``monitoring:`` section: window sizes and the test's alpha and correction
            (``enabled`` and ``sample_rate`` concern the replicas, not this class).
        max_buffer_rows: the most rows one call brings in, the open window included; at least ``window_rows``.
        reference_scores: the model's outputs on reference rows; enables prediction drift.
        estimator: estimates each window's performance from its scores (CBPE), stored with its report.
        clock: seconds since the epoch; injectable for tests.
    """

    def __init__(
        self,
        db: MetadataDB,
        model: str,
        reference: pd.DataFrame,
        *,
        numeric: Sequence[str],
        categorical: Sequence[str],
        settings: MonitoringSettings = MonitoringSettings(),
        max_buffer_rows: int = MAX_BUFFER_ROWS,
        reference_scores: np.ndarray | Sequence[float] | None = None,
        estimator: PerformanceEstimator | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_buffer_rows < settings.window_rows:
            raise InvalidInput(
                f"max_buffer_rows {max_buffer_rows} < window_rows {settings.window_rows}: no window could fill"
            )
        self.db = db
        self.model = validate_name("model", model)
        self.settings = settings
        self.max_buffer_rows = max_buffer_rows
        self._clock = clock
        self._detector = DriftDetector(
            reference,
            numeric=numeric,
            categorical=categorical,
            alpha=settings.alpha,
            correction=settings.correction,
            reference_scores=reference_scores,
            backend=settings.detector,
            multivariate=settings.multivariate,
        )
        self._has_scores = reference_scores is not None
        self.estimator = estimator if estimator is not None and estimator.available else None
        # Multiclass with every class's probability: a window keeps them beside each row's score (its score
        # chunks are then (rows, 1 + classes): the score, then the probabilities), for the estimate's macro F1
        # and ROC-AUC.
        self._classes = self.estimator.classes if self.estimator is not None else 0
        db.ensure_schema(COMPONENT, MIGRATIONS)

        self._chunks: list[pd.DataFrame] = []
        # A full window that samples (min_window_seconds) keeps its rows as an array per column instead: each
        # call's few new rows replace some of its rows, which cost milliseconds a call as frames (pandas).
        self._sample_cols: dict[str, np.ndarray] | None = None
        self._score_chunks: list[np.ndarray] = []
        self._priority_chunks: list[np.ndarray] = []  # each open row's draw, when windows may sample
        self._sampling = settings.min_window_seconds > 0
        self._rng = np.random.default_rng(zlib.crc32(self.model.encode()))
        self._span_rows = 0  # rows that entered the open window's span (sampled or not)
        self._rows_sampled_out = 0
        self._open_rows = 0
        self._opened_at = 0.0
        self._last_row_at = 0.0
        self._rows_seen = 0
        self._rows_dropped = 0
        self._rows_over_quota = 0
        cap = settings.max_token_share * settings.window_rows
        self._token_cap: float | None = None if settings.max_token_share >= 1.0 else cap
        self._token_rows: dict[str, int] = {}  # rows of the open window per API token
        self._windows_closed = 0
        self._windows_skipped = 0
        newest = self.reports(limit=1)
        self._last_status: ReportStatus | None = newest[0].status if newest else None

    # -- intake ---------------------------------------------------------------------------
    def observe(
        self, rows: Sequence[Mapping[str, Any]] | pd.DataFrame, scores: Sequence[float] | None = None,
        *, at: float | None = None, tokens: Sequence[str | None] | None = None,
        probabilities: Any = None,
    ) -> list[DriftReport]:
        """Add served rows (and the model's scores on them) to the open window.

        Returns the reports of the windows this call closed, each already stored: an expired
        time window first, then one per ``window_rows`` rows filled. ``at``: the rows' arrival time
        (default: now), which the window's span records; ``tokens``: the API token id of each row's
        request, for the per-token share of a window (``settings.max_token_share``); ``probabilities``: a
        multiclass model's every class's probability per row (rows, classes), for the window's estimate.

        Raises:
            InvalidInput: the batch lacks a feature column, or ``scores`` has another length
                than ``rows``. Nothing of a rejected batch is kept.
        """
        batch = _Batch(rows, self._detector.columns, self.model)
        n = batch.n
        score_values = self._scores(scores, n)
        if self._classes:
            score_values = np.column_stack([score_values, self._probabilities(probabilities, n)])

        now = self._clock() if at is None else at
        reports = []
        expired = self._expired(now)
        if expired is not None:
            reports.append(expired)
        self._rows_seen += n
        keep = min(n, max(self.max_buffer_rows - self._open_rows, 0))
        self._rows_dropped += n - keep

        pos = 0
        k = self.settings.window_rows
        while pos < keep or self._open_rows >= k:
            if self._open_rows >= k:
                if now - self._opened_at >= self.settings.min_window_seconds:
                    reports.append(self._close())
                    continue
                # Full, but open for less than min_window_seconds: the rest of this call is sampled into it.
                self._sample_in(batch, pos, keep, score_values[pos:keep],
                                None if tokens is None else tokens[pos:keep], now)
                break
            if self._open_rows == 0:
                self._opened_at = now
            take = min(k - self._open_rows, keep - pos)
            chunk, chunk_scores = batch.rows(pos, pos + take), score_values[pos : pos + take]
            if tokens is not None and self._token_cap is not None:
                allowed = self._within_quota(tokens[pos : pos + take])
                chunk, chunk_scores = chunk[allowed], chunk_scores[allowed]
            pos += take
            if len(chunk) == 0:
                continue
            self._chunks.append(chunk)
            self._score_chunks.append(chunk_scores)
            if self._sampling:
                self._priority_chunks.append(self._rng.random(len(chunk)))
            self._open_rows += len(chunk)
            self._span_rows += len(chunk)
            self._last_row_at = now
        return reports

    def _sample_in(self, batch: _Batch, start: int, end: int, scores: np.ndarray,
                   tokens: Sequence[str | None] | None, now: float) -> None:
        """Rows ``start:end`` of ``batch``, arriving while a full window waits out ``min_window_seconds``: the
        window keeps the ``window_rows`` rows of lowest priority (uniform draws) among all of its span's, in
        arrival order. Only a new row drawing below the window's highest kept priority can enter it, and only
        those few are made into a frame (a sampled window's rows cost a draw each, not a frame's row)."""
        allowed = np.ones(end - start, dtype=bool)
        if tokens is not None and self._token_cap is not None:
            # The same cap as while filling, over the whole span: a token brings at most max_token_share x
            # window_rows rows into it, so it makes up at most that share of any sample of window_rows.
            allowed = self._within_quota(tokens)
        admitted = int(allowed.sum())
        if admitted == 0:
            return
        self._span_rows += admitted
        self._rows_sampled_out += admitted  # the window stays at window_rows: each admitted row pushes one out
        self._last_row_at = now
        drawn = self._rng.random(end - start)
        kept_priority = np.concatenate(self._priority_chunks)
        candidates = np.flatnonzero(allowed & (drawn < kept_priority.max()))
        if candidates.size == 0:
            return
        if self._sample_cols is None:
            frame = pd.concat(self._chunks, ignore_index=True) if len(self._chunks) > 1 else self._chunks[0]
            self._sample_cols = {c: frame[c].to_numpy() for c in frame.columns}
            self._chunks = []
        new = batch.pick_arrays(start + candidates)
        window = {c: np.concatenate([v, new[c]]) for c, v in self._sample_cols.items()}
        all_scores = np.concatenate([*self._score_chunks, scores[candidates]])
        priority = np.concatenate([kept_priority, drawn[candidates]])
        k = self.settings.window_rows
        kept = np.sort(np.argpartition(priority, k - 1)[:k])
        self._sample_cols = {c: v[kept] for c, v in window.items()}
        self._score_chunks, self._priority_chunks = [all_scores[kept]], [priority[kept]]
        self._open_rows = k

    @property
    def rows_over_quota(self) -> int:
        """Rows left out of windows because their token had sent its share (``max_token_share``) already."""
        return self._rows_over_quota

    def _within_quota(self, tokens: Sequence[str | None]) -> np.ndarray:
        """Which of these rows the open window takes: at most ``max_token_share`` of it from any one token
        (one client must not make a window drift, or look calm, by itself); the rest are counted, not kept."""
        allowed = np.ones(len(tokens), dtype=bool)
        for i, token in enumerate(tokens):
            if token is None:
                continue
            if self._token_rows.get(token, 0) >= self._token_cap:
                allowed[i] = False
                self._rows_over_quota += 1
            else:
                self._token_rows[token] = self._token_rows.get(token, 0) + 1
        return allowed

    def _probabilities(self, probabilities: Any, n: int) -> np.ndarray:
        """(n, classes): the rows' class probabilities; NaN where they were not given or do not fit the model."""
        if probabilities is not None:
            try:
                values = np.asarray(probabilities, dtype=np.float64)
            except (TypeError, ValueError):
                values = None
            if values is not None and values.shape == (n, self._classes):
                return values
        return np.full((n, self._classes), np.nan)

    def _scores(self, scores: Sequence[float] | None, n: int) -> np.ndarray:
        """Scores aligned with the rows; NaN where none was given."""
        if scores is None:
            return np.full(n, np.nan)
        if isinstance(scores, np.ndarray) and scores.dtype.kind == "f":  # a replica's shipment: already numbers
            if len(scores) != n:
                raise InvalidInput(f"got {len(scores)} scores for {n} rows")
            return scores.astype(np.float64, copy=False)
        values = pd.to_numeric(pd.Series(np.asarray(scores, dtype=object).reshape(-1)), errors="coerce")
        if len(values) != n:
            raise InvalidInput(f"got {len(values)} scores for {n} rows")
        return values.to_numpy(dtype=np.float64)

    # -- closing windows --------------------------------------------------------------------
    def _expired(self, now: float) -> DriftReport | None:
        seconds = self.settings.window_seconds
        if self._open_rows and seconds is not None and now - self._opened_at >= seconds:
            return self._close()
        return None

    def tick(self) -> DriftReport | None:
        """Close the open window if its time is up, or if it is full and has been open ``min_window_seconds``
        (for the actor's timer); its report, or None."""
        now = self._clock()
        if (self._sampling and self._open_rows >= self.settings.window_rows
                and now - self._opened_at >= self.settings.min_window_seconds):
            return self._close()
        return self._expired(now)

    def flush(self) -> DriftReport | None:
        """Close the open window now, whatever its size; its report, or None when it is empty."""
        return self._close() if self._open_rows else None

    def _close(self) -> DriftReport:
        """Test the open window and store its report.

        The buffer is emptied only once the report is committed: if the DB write fails, the
        rows stay and the next call tries again.
        """
        if self._sample_cols is not None:
            window = pd.DataFrame(self._sample_cols)
        else:
            window = pd.concat(self._chunks, ignore_index=True) if len(self._chunks) > 1 else self._chunks[0]
        scores = np.concatenate(self._score_chunks)
        probabilities = None
        if self._classes:
            scores, probabilities = scores[:, 0], scores[:, 1:]
            if not np.isfinite(probabilities).all():
                probabilities = None  # some rows came without them: the estimate reads the top class's alone
        rows = len(window)
        result: DriftResult | None = None
        estimate: PerformanceEstimate | None = None
        top_token, top_rows = max(self._token_rows.items(), key=lambda kv: kv[1], default=(None, 0))
        if rows < self.settings.min_rows:
            status: ReportStatus = "skipped"
            reason = f"{rows} rows < min_rows {self.settings.min_rows}"
        elif self._token_cap is not None and top_rows > self.settings.max_token_share * self._span_rows + 1e-9:
            # A window that closed on time before it filled: one client's capped rows may still be most of it,
            # and one client must not make a window drift (or look calm) by itself.
            status, reason = "skipped", (
                f"one API token ({top_token}) sent {top_rows} of its {self._span_rows} rows, more than "
                f"monitoring.max_token_share {self.settings.max_token_share:g}: not tested")
        else:
            window_scores = None
            if self._has_scores:
                finite = scores[np.isfinite(scores)]
                window_scores = finite if finite.size >= self.settings.min_rows else None
            try:
                result = self._detector.check(window, window_scores)
            except InvalidInput as e:  # the window, not the caller, is at fault: record and go on
                status, reason = "skipped", f"not tested: {e}"
            else:
                status, reason = _verdict(result)
            if self.estimator is not None and window_scores is not None:
                estimate = self.estimator.estimate(scores, probabilities)
                if self._span_rows > rows:
                    estimate = estimate.model_copy(update={"rows_seen": self._span_rows})

        created_at = self._clock()
        with self.db.transaction() as tx:
            # The id is taken inside the write transaction, so it is the stored maximum + 1 even
            # after a restart or with an old instance of the actor still finishing a call.
            top = tx.query("SELECT MAX(window_id) AS top FROM drift_reports WHERE model = ?", (self.model,))
            window_id = int(top[0]["top"] or 0) + 1
            report = DriftReport(
                model=self.model,
                window_id=window_id,
                created_at=created_at,
                window_start=self._opened_at,
                window_end=self._last_row_at,
                rows=rows,
                status=status,
                reason=reason,
                result=result,
                estimate=estimate,
                rows_seen=self._span_rows,
            )
            tx.execute(
                "INSERT INTO drift_reports (model, window_id, created_at, window_start, window_end, rows, status, report)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self.model,
                    window_id,
                    created_at,
                    report.window_start,
                    report.window_end,
                    rows,
                    status,
                    report.model_dump_json(),
                ),
            )
            if estimate is not None:
                tx.execute(
                    "INSERT INTO performance_estimates (model, window_id, window_start, window_end, estimate, labelled,"
                    " realised, updated_at) VALUES (?, ?, ?, ?, ?, 0, NULL, ?)",
                    (self.model, window_id, report.window_start, report.window_end, estimate.model_dump_json(),
                     created_at),
                )
        self._chunks, self._score_chunks, self._priority_chunks, self._open_rows = [], [], [], 0
        self._sample_cols = None
        self._span_rows = 0
        self._token_rows = {}
        self._windows_closed += 1
        self._windows_skipped += status == "skipped"
        self._last_status = status
        return report

    # -- reading ----------------------------------------------------------------------------
    def reports(self, limit: int = 20) -> list[DriftReport]:
        """The model's stored reports, newest first (including those of earlier instances)."""
        if not 1 <= limit <= MAX_REPORTS:
            raise InvalidInput(f"limit must be between 1 and {MAX_REPORTS}, got {limit}")
        rows = self.db.query(
            "SELECT report FROM drift_reports WHERE model = ? ORDER BY window_id DESC LIMIT ?",
            (self.model, limit),
        )
        return [DriftReport.model_validate_json(r["report"]) for r in rows]

    @property
    def features(self) -> dict[str, list[str]]:
        """The inputs this monitor tests, by kind."""
        return {"numeric": list(self._detector.numeric), "categorical": list(self._detector.categorical)}

    @property
    def detector(self) -> dict[str, Any]:
        """Which statistics this monitor runs: the backend, its licence when a user must know it, and what it leaves out."""
        d = self._detector
        return {"backend": d.backend, "licence": d.licence, "multivariate": self.settings.multivariate,
                "notes": list(d.notes)}

    def stats(self) -> dict[str, Any]:
        """Counters of this instance (since it started); ``last_status`` also reads stored reports.

        ``rows_seen`` counts every row received, ``rows_dropped`` those over ``max_buffer_rows``,
        ``rows_over_quota`` those over one token's share of a window, ``rows_sampled_out`` those that arrived
        while a full window waited out ``min_window_seconds`` and were not in its sample;
        ``windows_closed`` includes the ``windows_skipped``.
        """
        return {
            "model": self.model,
            "rows_seen": self._rows_seen,
            "rows_dropped": self._rows_dropped,
            "rows_over_quota": self._rows_over_quota,
            "rows_sampled_out": self._rows_sampled_out,
            "windows_closed": self._windows_closed,
            "windows_skipped": self._windows_skipped,
            "open_window_rows": self._open_rows,
            "last_status": self._last_status,
        }


def read_reports(db: MetadataDB, model: str, limit: int = 20, *, after_window_id: int | None = None,
                 since: float | None = None) -> list[DriftReport]:
    """A model's stored reports, newest first, without a running monitor (for the CLI and the autopilot).

    ``after_window_id`` / ``since``: only windows with a larger id / created at or after that time.
    """
    db.ensure_schema(COMPONENT, MIGRATIONS)
    rows = db.query(
        "SELECT report FROM drift_reports WHERE model = ? AND window_id > ? AND created_at >= ? "
        "ORDER BY window_id DESC LIMIT ?",
        (model, -1 if after_window_id is None else after_window_id, float("-inf") if since is None else since, limit),
    )
    return [DriftReport.model_validate_json(r["report"]) for r in rows]


def save_arms(db: MetadataDB, model: str, stats: Mapping[str, Any]) -> None:
    """Store a model's canary arms (``PerformanceTracker.arm_stats()``), replacing what was stored."""
    db.ensure_schema(COMPONENT, MIGRATIONS)
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO monitor_arms (model, since, arms, tokens, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (model) DO UPDATE SET since = excluded.since, arms = excluded.arms, "
            "tokens = excluded.tokens, updated_at = excluded.updated_at",
            (model, float(stats["since"]), json.dumps(stats["arms"], sort_keys=True),
             json.dumps(stats.get("tokens") or {}, sort_keys=True), time.time()),
        )


def load_arms(db: MetadataDB, model: str) -> dict[str, Any] | None:
    """The arms last stored for ``model`` (the shape of ``arm_stats()``), or None."""
    db.ensure_schema(COMPONENT, MIGRATIONS)
    rows = db.query("SELECT since, arms, tokens FROM monitor_arms WHERE model = ?", (model,))
    if not rows:
        return None
    return {"since": float(rows[0]["since"]), "arms": json.loads(rows[0]["arms"]),
            "tokens": json.loads(rows[0]["tokens"] or "{}")}


class EstimateCheck(BaseModel):
    """A window's estimate beside what its labels showed: ``error`` is |estimated - realised| per metric;
    ``rows``: the rows of the window's span (all of them, where it tested a sample)."""

    model_config = ConfigDict(extra="forbid")

    window_id: int
    window_start: float
    window_end: float
    rows: int
    estimate: PerformanceEstimate
    labelled: int
    realised: dict[str, float] | None
    error: dict[str, float]


def read_estimates(db: MetadataDB, model: str, limit: int = 20) -> list[EstimateCheck]:
    """A model's latest window estimates with their realised metrics so far, newest first."""
    db.ensure_schema(COMPONENT, MIGRATIONS)
    rows = db.query(
        "SELECT window_id, window_start, window_end, estimate, labelled, realised FROM performance_estimates "
        "WHERE model = ? ORDER BY window_id DESC LIMIT ?", (model, limit))
    out = []
    for r in rows:
        estimate = PerformanceEstimate.model_validate_json(r["estimate"])
        realised = json.loads(r["realised"]) if r["realised"] else None
        error = {k: abs(estimate.metrics[k].value - v) for k, v in (realised or {}).items() if k in estimate.metrics}
        out.append(EstimateCheck(window_id=int(r["window_id"]), window_start=float(r["window_start"]),
                                 window_end=float(r["window_end"]), rows=estimate.rows_seen or estimate.rows, estimate=estimate,
                                 labelled=int(r["labelled"]), realised=realised, error=error))
    return out


def record_realised(db: MetadataDB, model: str, window_id: int, labelled: int, realised: Mapping[str, float]) -> None:
    """Store what a window's labels show so far (replacing what was stored)."""
    with db.transaction() as tx:
        tx.execute("UPDATE performance_estimates SET labelled = ?, realised = ?, updated_at = ? "
                   "WHERE model = ? AND window_id = ?",
                   (int(labelled), json.dumps(dict(realised), sort_keys=True), time.time(), model, int(window_id)))


def estimation_error(checks: Sequence[EstimateCheck], metric: str = "accuracy", *, min_coverage: float = 0.5) -> dict[str, Any]:
    """Mean absolute error of the estimates of ``metric`` over windows at least ``min_coverage`` labelled."""
    errors = [c.error[metric] for c in checks if metric in c.error and c.labelled >= min_coverage * c.rows]
    return {"metric": metric, "windows": len(errors), "mae": float(np.mean(errors)) if errors else None}


def save_concept_drift(db: MetadataDB, model: str, detection: Mapping[str, Any], *, metric: str,
                       clock: Callable[[], float] = time.time) -> ConceptDrift:
    """Store one error-stream detection (``ErrorStreamDetector.update``'s item) as the model's next concept report."""
    db.ensure_schema(COMPONENT, MIGRATIONS)
    with db.transaction() as tx:
        top = tx.query("SELECT MAX(detection_id) AS top FROM concept_reports WHERE model = ?", (model,))
        report = ConceptDrift(
            model=model, detection_id=int(top[0]["top"] or 0) + 1, created_at=clock(), metric=metric,
            before=detection["before"], after=detection["after"], at_row=detection["at_row"],
            recent_rows=detection["recent_rows"],
            reason=(f"{metric.replace('_', ' ')} rose from {detection['before']:.3f} to {detection['after']:.3f} "
                    f"over the latest {detection['recent_rows']} labelled rows (ADWIN)"))
        tx.execute("INSERT INTO concept_reports (model, detection_id, created_at, report) VALUES (?, ?, ?, ?)",
                   (model, report.detection_id, report.created_at, report.model_dump_json()))
    return report


def read_concept_drift(db: MetadataDB, model: str, limit: int = 20, *, after_id: int | None = None) -> list[ConceptDrift]:
    """A model's stored concept-drift detections, newest first (``after_id``: only later ones)."""
    db.ensure_schema(COMPONENT, MIGRATIONS)
    rows = db.query("SELECT report FROM concept_reports WHERE model = ? AND detection_id > ? "
                    "ORDER BY detection_id DESC LIMIT ?", (model, -1 if after_id is None else after_id, limit))
    return [ConceptDrift.model_validate_json(r["report"]) for r in rows]
