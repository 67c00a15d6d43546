"""The demo's loop report: one self-contained HTML page that tells the story of the monitoring loop.

``render_loop_report`` takes plain, JSON-like data gathered by the scenario (a timeline of what
happened, the reference vs production data profile, training curves, evaluations, drift reports
per window, the canary's counts and decision) and returns an HTML page with the plots embedded
as base64 PNGs, so the page can be mailed, attached to a run or opened offline.

Every section is optional: a missing or empty key gives a one-line "no data" note, and a section
that still fails to render says so instead of losing the whole page. Values may be None or NaN.
No Ray here. The page and its figures go through ``aiinfra.reports`` (templates, autoescaped; figures
off-screen, no pyplot state); the builders below only turn the data into its blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

# matplotlib is imported at the top: this module exists to draw, and only the demo's loop imports it.
import matplotlib.dates as mdates
import matplotlib.ticker as mticker
import numpy as np
from matplotlib.figure import Figure

from aiinfra.reports.figures import data_uri, new_figure
from aiinfra.reports.html import Block, Cell, Image, Paragraph, Section, Table, note, render_page

__all__ = ["render_loop_report"]

_STATUS_COLOURS = {"ok": "tab:green", "drift": "tab:red", "skipped": "tab:gray"}
_ARM_COLOURS = {"champion": "tab:blue", "challenger": "tab:orange"}
_MAX_PROFILE_PLOTS = 24  # more would make one unreadably tall figure; the table still lists all
_MAX_CATEGORIES = 12
_MAX_PVALUE_LEGEND = 12
_MIN_PVALUE = 1e-16  # p-values of exactly 0 cannot sit on a log axis; clip them here
_WILSON_Z = 1.959963984540054  # two-sided 95%


# --------------------------------------------------------------------------- small helpers


def _num(value: Any) -> float | None:
    """A finite float, or None for None/NaN/inf/bool/anything not a number."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return None
    if not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _fmt(value: Any, digits: int = 4) -> str:
    """Text for a table cell: numbers rounded, missing as a dash."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}" if math.isfinite(value) else "—"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v, digits) for v in value)
    return str(value)


def _count(value: Any) -> int | None:
    number = _num(value)
    return int(number) if number is not None and number >= 0 else None


def _hms(ts: Any) -> str:
    number = _num(ts)
    if number is None:
        return "—"
    return datetime.fromtimestamp(number, tz=timezone.utc).strftime("%H:%M:%S")


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def _plain(text: Any) -> str:
    # Matplotlib parses text between "$" as mathtext, which can raise on arbitrary names.
    return str(text).replace("$", r"\$")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool] = ()) -> Table:
    """Cells formatted with ``_fmt``; ``numeric`` right-aligns columns."""
    return Table(header, [[Cell(_fmt(cell), i < len(numeric) and numeric[i]) for i, cell in enumerate(row)]
                          for row in rows])


def _new_figure(width: float, height: float) -> Figure:
    # Constrained layout fits labels and outside legends in one pass; bbox_inches="tight" would
    # draw every figure twice, which is most of the render time.
    return new_figure(width, height, dpi=100, layout="constrained")


def _img(fig: Figure, alt: str) -> Image:
    return Image(data_uri(fig), alt)


def _draw_markers(axes: Sequence[Any], markers: Sequence[tuple[float, str]]) -> None:
    """Vertical lines for events such as "retrain decided" on plots whose x axis is UTC time."""
    for i, ax in enumerate(axes):
        for at, label in markers:
            ax.axvline(_utc(at), color="tab:purple", linestyle=":", linewidth=1.2)
            if i == 0:  # label once, on the top plot, so stacked plots stay readable
                ax.annotate(
                    _plain(label), xy=(_utc(at), 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, -2), textcoords="offset points", rotation=90, va="top",
                    fontsize=8, color="tab:purple",
                )


def _valid_markers(raw: Any) -> list[tuple[float, str]]:
    out = []
    for marker in raw or []:
        if isinstance(marker, Mapping) and (at := _num(marker.get("at"))) is not None:
            out.append((at, str(marker.get("label") or "")))
    return out


# --------------------------------------------------------------------------- 7. header


def _header(summary: Any) -> list[Block]:
    generated = datetime.now(tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts: list[Block] = [Paragraph(f"Generated at {generated}", css="meta")]
    if isinstance(summary, Mapping) and summary:
        parts.append(_table(["", "value"], [(k, v) for k, v in summary.items()]))
    return parts


# --------------------------------------------------------------------------- 1. timeline


def _timeline(events: Any) -> list[Block]:
    rows = [e for e in events if isinstance(e, Mapping) and _num(e.get("at")) is not None]
    if not rows:
        return [note("No timeline events with a valid time.")]
    rows.sort(key=lambda e: _num(e["at"]))
    t0 = _num(rows[0]["at"])
    table = _table(
        ["#", "UTC", "+s", "kind", "what"],
        [(i + 1, _hms(e["at"]), round(_num(e["at"]) - t0, 1), e.get("kind") or "", e.get("what") or "")
         for i, e in enumerate(rows)],
        numeric=[True, False, True],
    )
    return [_timeline_plot(rows, t0), table]


def _timeline_plot(rows: list[Mapping[str, Any]], t0: float) -> Image:
    # One lane per kind keeps stages, decisions and traffic apart on the same time axis.
    lanes: list[str] = []
    for event in rows:
        kind = str(event.get("kind") or "event")
        if kind not in lanes:
            lanes.append(kind)
    fig = _new_figure(10, 1.2 + 0.9 * len(lanes))
    ax = fig.add_subplot()
    for i, event in enumerate(rows):
        x = _num(event["at"]) - t0
        y = lanes.index(str(event.get("kind") or "event"))
        ax.plot([x], [y], "o", color=f"C{y % 10}")
        # The event's number in the table below, not its text: sentences printed on the plot overlap.
        # Alternate the offset so neighbouring numbers stay apart.
        ax.annotate(str(i + 1), xy=(x, y), xytext=(0, 7 if i % 2 == 0 else -13), textcoords="offset points",
                    fontsize=7, ha="center")
    ax.set_yticks(range(len(lanes)), [_plain(k) for k in lanes])
    ax.set_ylim(-0.7, len(lanes) - 0.3)
    ax.set_xlabel(f"seconds since {_hms(t0)} UTC")
    ax.grid(axis="x", alpha=0.3)
    return _img(fig, "timeline")


# --------------------------------------------------------------------------- 2. data profile


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and not math.isfinite(value))


def _split_feature(values: Any) -> list[Any]:
    if values is None or isinstance(values, (str, bytes)):
        return []
    return [v for v in list(values) if not _is_missing(v)]


def _feature_kind(reference: list[Any], production: list[Any]) -> str | None:
    values = reference + production
    if not values:
        return None
    if all(_num(v) is not None for v in values):
        return "numeric"
    return "categorical"


def _shares(values: list[Any]) -> dict[str, float]:
    if not values:
        return {}
    labels, counts = np.unique([str(v) for v in values], return_counts=True)
    return {str(label): count / len(values) for label, count in zip(labels, counts)}


def _profile(profile: Any) -> list[Block]:
    features = []
    for name, sides in profile.items():
        sides = sides if isinstance(sides, Mapping) else {}
        reference = _split_feature(sides.get("reference"))
        production = _split_feature(sides.get("production"))
        raw = [sides.get("reference"), sides.get("production")]
        missing = [len(list(r)) - len(v) if r is not None and not isinstance(r, (str, bytes)) else 0
                   for r, v in zip(raw, [reference, production])]
        features.append((str(name), _feature_kind(reference, production), reference, production, missing))
    plotted = [f for f in features if f[1] is not None][:_MAX_PROFILE_PLOTS]
    parts: list[Block] = [_profile_plot(plotted)] if plotted else [note("No feature has any values to plot.")]
    if len([f for f in features if f[1] is not None]) > _MAX_PROFILE_PLOTS:
        parts.append(note(f"Only the first {_MAX_PROFILE_PLOTS} features are plotted; the table lists all."))
    parts.append(_table(
        ["feature", "kind", "reference n", "production n", "missing (ref / prod)", "reference", "production"],
        [(name, kind or "no values", len(ref), len(prod), f"{miss[0]} / {miss[1]}",
          _describe(kind, ref), _describe(kind, prod)) for name, kind, ref, prod, miss in features],
        numeric=[False, False, True, True],
    ))
    return parts


def _describe(kind: str | None, values: list[Any]) -> str:
    """A one-cell summary: mean ± std for numbers, the top category's share for categories."""
    if not values:
        return "—"
    if kind == "numeric":
        arr = np.asarray([_num(v) for v in values], dtype=float)
        return f"mean {arr.mean():.4g} ± {arr.std():.4g}"
    top, share = max(_shares(values).items(), key=lambda kv: kv[1])
    return f"top {top!s} ({share:.0%})"


def _profile_plot(features: list[tuple[str, str | None, list[Any], list[Any], list[int]]]) -> Image:
    ncols = min(3, len(features))
    nrows = math.ceil(len(features) / ncols)
    fig = _new_figure(4.2 * ncols, 3.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, kind, reference, production, _missing) in zip(axes, features):
        if kind == "numeric":
            _histograms(ax, reference, production)
        else:
            _category_bars(ax, reference, production)
        ax.set_title(_plain(name), fontsize=10)
        ax.tick_params(labelsize=7)
    for ax in axes[len(features):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    return _img(fig, "reference vs production profile")


def _histograms(ax: Any, reference: list[Any], production: list[Any]) -> None:
    ref = np.asarray([_num(v) for v in reference], dtype=float)
    prod = np.asarray([_num(v) for v in production], dtype=float)
    both = np.concatenate([ref, prod])
    low, high = float(both.min()), float(both.max())
    if low == high:  # a constant feature still needs a non-empty bin range
        low, high = low - 0.5, high + 0.5
    # Shared bins so the two densities are comparable bar for bar.
    bins = np.linspace(low, high, int(min(30, max(5, math.sqrt(len(both))))) + 1)
    for values, label, colour in ((ref, "reference", "tab:blue"), (prod, "production", "tab:orange")):
        if values.size:
            # "stepfilled" draws one patch per histogram instead of one per bin: much faster to render.
            ax.hist(values, bins=bins, density=True, histtype="stepfilled", alpha=0.5, label=label, color=colour)
    ax.set_ylabel("density", fontsize=8)


def _category_bars(ax: Any, reference: list[Any], production: list[Any]) -> None:
    ref, prod = _shares(reference), _shares(production)
    # Order by the reference's shares, then new production-only categories, and keep the top few.
    order = sorted(ref, key=lambda c: -ref[c]) + sorted((c for c in prod if c not in ref), key=lambda c: -prod[c])
    order = order[:_MAX_CATEGORIES]
    x = np.arange(len(order))
    ax.bar(x - 0.2, [ref.get(c, 0.0) for c in order], width=0.4, label="reference", color="tab:blue")
    ax.bar(x + 0.2, [prod.get(c, 0.0) for c in order], width=0.4, label="production", color="tab:orange")
    ax.set_xticks(x, [_plain(c) for c in order], rotation=30, ha="right")
    ax.set_ylabel("share", fontsize=8)


# --------------------------------------------------------------------------- 3. training curves


def _training(runs: Any) -> list[Block]:
    fig = _new_figure(8, 4)
    ax = fig.add_subplot()
    rows, drawn = [], 0
    for i, run in enumerate(r for r in runs if isinstance(r, Mapping)):
        label = str(run.get("label") or f"run {i + 1}")
        epochs = [e for e in run.get("epochs") or [] if isinstance(e, Mapping)]
        for metric, style in (("train_loss", "-"), ("val_loss", "--")):
            points = [(_num(e.get("epoch", j)), _num(e.get(metric))) for j, e in enumerate(epochs)]
            points = [(x, y) for x, y in points if x is not None and y is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, style, marker=".", color=f"C{i % 10}", label=_plain(f"{label} {metric}"))
                drawn += 1
        val = [v for v in (_num(e.get("val_loss")) for e in epochs) if v is not None]
        train = [v for v in (_num(e.get("train_loss")) for e in epochs) if v is not None]
        rows.append((label, len(epochs), train[-1] if train else None, min(val) if val else None))
    if not drawn:
        return [note("No loss values to plot.")]
    ax.xaxis.set_major_locator(mticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    table = _table(["run", "epochs", "final train loss", "best val loss"], rows, numeric=[False, True, True, True])
    return [_img(fig, "training curves"), table]


# --------------------------------------------------------------------------- 4. evaluation


def _evaluation(evaluations: Any) -> list[Block]:
    labels = [str(k) for k, v in evaluations.items() if isinstance(v, Mapping)]
    scores = {str(k): v for k, v in evaluations.items() if isinstance(v, Mapping)}
    if not labels:
        return [note("No evaluation metrics.")]
    metrics: list[str] = []
    for label in labels:
        metrics += [str(m) for m in scores[label] if str(m) not in metrics]
    table = _table(["metric", *labels], [(m, *(scores[lb].get(m) for lb in labels)) for m in metrics],
                   numeric=[False, *([True] * len(labels))])
    # A bar needs a number for every label, else the groups would not compare like with like.
    common = [m for m in metrics if all(_num(scores[lb].get(m)) is not None for lb in labels)]
    if not common:
        return [table, note("No metric has a value for every evaluation, so no chart.")]
    return [_evaluation_plot(labels, scores, common), table]


def _evaluation_plot(labels: list[str], scores: Mapping[str, Mapping[str, Any]], metrics: list[str]) -> Image:
    fig = _new_figure(max(6, 1.2 * len(metrics) * max(1, len(labels)) / 2), 3.6)
    ax = fig.add_subplot()
    x = np.arange(len(metrics))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        heights = [_num(scores[label].get(m)) for m in metrics]
        ax.bar(x - 0.4 + width * (i + 0.5), heights, width=width, label=_plain(label), color=f"C{i % 10}")
    ax.set_xticks(x, [_plain(m) for m in metrics], rotation=20, ha="right")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: bars reach the top
    return _img(fig, "evaluation metrics")


# --------------------------------------------------------------------------- 5. drift over time


def _drift(reports: Any, alpha: Any, markers: Any) -> list[Block]:
    reports = [r for r in reports if isinstance(r, Mapping)]
    if not reports:
        return [note("No drift reports.")]
    # Plot against time when every window has an end time: then the loop's markers line up.
    by_time = all(_num(r.get("window_end")) is not None for r in reports)
    key = (lambda r: _num(r.get("window_end"))) if by_time else (lambda r: _num(r.get("window_id")) or 0.0)
    reports = sorted(reports, key=key)
    xs = [_utc(key(r)) if by_time else key(r) for r in reports]
    alpha = _num(alpha)
    if alpha is None:  # fall back to the alpha the detector itself recorded
        alpha = next((_num(r["result"].get("alpha")) for r in reports if isinstance(r.get("result"), Mapping)), None)
    plot = _drift_plot(reports, xs, by_time, alpha, _valid_markers(markers) if by_time else [])
    rows = []
    for r in reports:
        result = r.get("result") if isinstance(r.get("result"), Mapping) else {}
        drifted = [str(f) for f in result.get("drifted_features") or []]
        rows.append((r.get("window_id"), _hms(r.get("window_end")), r.get("rows"), r.get("status") or "—",
                     result.get("share_drifted"), ", ".join(drifted) if drifted else r.get("reason") or ""))
    table = _table(["window", "end (UTC)", "rows", "status", "share drifted", "drifted features / reason"],
                   rows, numeric=[True, False, True, False, True])
    return [plot, table]


def _estimates(checks: Any) -> list[Block]:
    """Each window's estimated accuracy (CBPE, from scores alone) with its band, beside what its labels showed."""
    checks = [c for c in checks if isinstance(c, Mapping) and isinstance(c.get("estimate"), Mapping)]
    if not checks:
        return [note("No window was estimated (the served version has no reference profile).")]
    ids, values, lows, highs, realised, rows = [], [], [], [], [], []
    for c in checks:
        acc = ((c["estimate"].get("metrics") or {}).get("accuracy") or {})
        value, low, high = _num(acc.get("value")), _num(acc.get("low")), _num(acc.get("high"))
        seen = _num((c.get("realised") or {}).get("accuracy"))
        ids.append(_num(c.get("window_id")) or 0.0)
        values.append(value)
        lows.append(low)
        highs.append(high)
        realised.append(seen)
        error = None if seen is None or value is None else abs(value - seen)
        rows.append((c.get("window_id"), c["estimate"].get("rows"), _fmt(value, 3),
                     f"{_fmt(low, 3)} to {_fmt(high, 3)}", c.get("labelled"), _fmt(seen, 3), _fmt(error, 3),
                     "yes" if c["estimate"].get("reliable") else f"no: {c['estimate'].get('reason', '')}"))
    fig = _new_figure(8.0, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    band = [(x, lo, hi) for x, lo, hi in zip(ids, lows, highs) if lo is not None and hi is not None]
    if band:
        ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band], alpha=0.25,
                        color="tab:blue", label="95% band")
    ax.plot([x for x, v in zip(ids, values) if v is not None], [v for v in values if v is not None], "o-",
            color="tab:blue", label="estimated (no labels)")
    seen_points = [(x, v) for x, v in zip(ids, realised) if v is not None]
    if seen_points:
        ax.plot([p[0] for p in seen_points], [p[1] for p in seen_points], "s", color="tab:orange",
                label="realised (from /feedback labels)")
    ax.set_xlabel("drift window")
    ax.set_ylabel("accuracy")
    ax.xaxis.set_major_locator(mticker.MaxNLocator(integer=True))
    ax.legend(loc="lower left", fontsize=8)
    errors = [abs(v - r) for v, r in zip(values, realised) if v is not None and r is not None]
    lead = Paragraph(
        f"Confidence-based performance estimation: {len(checks)} window(s) estimated from the model's scores alone; "
        + (f"mean |estimated - realised| accuracy {np.mean(errors):.3f} over {len(errors)} with labels. "
           if errors else "no labels yet. ")
        + "CBPE assumes the relation between inputs and label holds: where the concept drifts, the estimate and "
          "the realised accuracy part, and the error stream's detector is what sees it.")
    table = _table(["window", "rows", "estimated", "95% band", "labelled", "realised", "|error|", "reliable"],
                   rows, numeric=[True, True, True, False, True, True, True, False])
    return [lead, _img(fig, "estimated and realised accuracy per window"), table]


def _drift_plot(reports: list[Mapping[str, Any]], xs: list[Any], by_time: bool, alpha: float | None,
                markers: list[tuple[float, str]]) -> Image:
    fig = _new_figure(10, 6)
    share_ax, p_ax = fig.subplots(2, 1, sharex=True)
    results = [r.get("result") if isinstance(r.get("result"), Mapping) else {} for r in reports]
    shares = [_num(res.get("share_drifted")) for res in results]
    tested = [(x, s) for x, s in zip(xs, shares) if s is not None]
    if tested:
        share_ax.plot(*zip(*tested), color="lightgray", zorder=1)
    for status, colour in _STATUS_COLOURS.items():
        points = [
            (x, s)
            for x, s, r in zip(xs, shares, reports)
            if r.get("status") == status and (s is not None or status == "skipped")
        ]
        if points:
            # A skipped window has no share: show it at 0 with a cross, so the gap is visible.
            share_ax.scatter([x for x, _ in points], [s if s is not None else 0.0 for _, s in points],
                             color=colour, marker="x" if status == "skipped" else "o", zorder=2, label=status)
    share_ax.set_ylabel("share of features drifted")
    share_ax.set_ylim(-0.05, 1.05)
    share_ax.grid(alpha=0.3)
    share_ax.legend(fontsize=8, loc="upper left")
    _pvalue_lines(p_ax, results, xs, alpha)
    if by_time:
        p_ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=timezone.utc))
        p_ax.set_xlabel("window end (UTC)")
        _draw_markers([share_ax, p_ax], markers)
    else:
        p_ax.xaxis.set_major_locator(mticker.MaxNLocator(integer=True))
        p_ax.set_xlabel("window id")
    return _img(fig, "drift over time")


def _pvalue_lines(ax: Any, results: list[Mapping[str, Any]], xs: list[Any], alpha: float | None) -> None:
    series: dict[str, list[tuple[Any, float, bool]]] = {}
    for x, result in zip(xs, results):
        for feature in result.get("features") or []:
            if not isinstance(feature, Mapping) or (p := _num(feature.get("p_value"))) is None:
                continue
            series.setdefault(str(feature.get("feature")), []).append(
                (x, max(p, _MIN_PVALUE), bool(feature.get("drifted"))))
    for i, (name, points) in enumerate(series.items()):
        ax.plot([x for x, _, _ in points], [p for _, p, _ in points], marker=".", color=f"C{i % 10}",
                label=_plain(name) if i < _MAX_PVALUE_LEGEND else None)
        drifted = [(x, p) for x, p, d in points if d]
        if drifted:  # ring the windows where the corrected test called this feature drifted
            ax.scatter(*zip(*drifted), s=80, facecolors="none", edgecolors="tab:red", zorder=3)
    if alpha is not None:
        ax.axhline(alpha, color="tab:red", linestyle="--", linewidth=1, label=f"alpha = {alpha:g}")
    if not series:
        ax.text(0.5, 0.5, "no per-feature p-values", transform=ax.transAxes, ha="center", color="gray")
    ax.set_yscale("log")
    # Plain "1e-08" labels: the default mathtext ones cost most of this section's render time.
    ax.yaxis.set_major_formatter(mticker.LogFormatter(labelOnlyBase=True))
    ax.yaxis.set_minor_formatter(mticker.NullFormatter())
    ax.set_ylabel("p-value (log)")
    ax.grid(alpha=0.3, which="both")
    if series or alpha is not None:
        ax.legend(fontsize=7, ncol=2, loc="lower left")


# --------------------------------------------------------------------------- 6. canary


def _wilson(correct: int, n: int, z: float = _WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval: unlike p ± z·se it stays inside [0, 1] for small n or p near 0/1."""
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _arm_stats(arm: Mapping[str, Any]) -> dict[str, Any]:
    counts = {k: _count(arm.get(k)) for k in ("requests", "errors", "labelled", "correct")}
    labelled, correct = counts["labelled"], counts["correct"]
    accuracy = interval = None
    if labelled and correct is not None and correct <= labelled:
        accuracy, interval = correct / labelled, _wilson(correct, labelled)
    error_rate = counts["errors"] / counts["requests"] if counts["requests"] and counts["errors"] is not None else None
    return {**counts, "version": arm.get("version"), "accuracy": accuracy, "interval": interval,
            "error_rate": error_rate}


def _canary(canary: Any) -> list[Block]:
    arms = [(name, _arm_stats(canary[name])) for name in ("champion", "challenger")
            if isinstance(canary.get(name), Mapping)]
    parts: list[Block] = []
    if arms:
        measured = [(name, s) for name, s in arms if s["accuracy"] is not None]
        parts.append(_canary_plot(measured) if measured else note("No labelled requests yet, so no accuracy."))
        parts.append(_table(
            ["arm", "version", "requests", "errors", "error rate", "labelled", "correct", "accuracy", "95% CI"],
            [(name, s["version"], s["requests"], s["errors"], s["error_rate"], s["labelled"], s["correct"],
              s["accuracy"], f"{s['interval'][0]:.4f} – {s['interval'][1]:.4f}" if s["interval"] else None)
             for name, s in arms],
            numeric=[False, True, True, True, True, True, True, True],
        ))
    else:
        parts.append(note("No champion or challenger counts."))
    parts += _decision(canary.get("decision"))
    return parts


def _canary_plot(arms: list[tuple[str, dict[str, Any]]]) -> Image:
    fig = _new_figure(5, 3.4)
    ax = fig.add_subplot()
    x = np.arange(len(arms))
    accuracy = [s["accuracy"] for _, s in arms]
    errors = [[a - s["interval"][0] for a, (_, s) in zip(accuracy, arms)],
              [s["interval"][1] - a for a, (_, s) in zip(accuracy, arms)]]
    colours = [_ARM_COLOURS[name] for name, _ in arms]
    ax.bar(x, accuracy, yerr=errors, capsize=8, color=colours, width=0.5)
    ax.set_xticks(x, [_plain(f"{name} v{s['version']}\nn={s['labelled']} labelled") for name, s in arms])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (95% Wilson CI)")
    ax.grid(axis="y", alpha=0.3)
    return _img(fig, "canary accuracy")


def _decision(decision: Any) -> list[Block]:
    if not isinstance(decision, Mapping) or not decision:
        return [note("No decision yet.")]
    parts: list[Block] = [Paragraph(f"— {decision.get('reason') or ''}",
                                    strong=f"Decision: {decision.get('action') or '—'}")]
    evidence = decision.get("evidence")
    if isinstance(evidence, Mapping) and evidence:
        parts.append(_table(["evidence", "value"], list(evidence.items())))
    return parts


# --------------------------------------------------------------------------- the page


def _section(title: str, value: Any, build: Callable[[Any], list[Block]], empty: str) -> Section:
    """A titled section: a note when there is no data, and a note (not a crash) when rendering fails."""
    if value is None or (isinstance(value, (Sequence, Mapping)) and not isinstance(value, str) and not value):
        return Section(title, [note(empty)])
    try:
        return Section(title, build(value))
    except Exception as exc:  # one odd section must not cost the reader the rest of the page
        return Section(title, [note(f"Could not render this section: {type(exc).__name__}: {exc}")])


def render_loop_report(data: Mapping[str, Any], *, title: str = "aiinfra: the monitoring loop") -> str:
    """Render ``data`` (see the module docstring and the section builders) as one HTML page."""
    data = data if isinstance(data, Mapping) else {}
    sections = [
        _section("Timeline", data.get("timeline"), _timeline, "No timeline data."),
        _section("Data profile: reference vs production", data.get("profile"), _profile, "No profile data."),
        _section("Training curves", data.get("runs"), _training, "No training runs."),
        _section("Evaluation", data.get("evaluations"), _evaluation, "No evaluation data."),
        _section("Drift over time", data.get("drift_reports"),
                 lambda reports: _drift(reports, data.get("alpha"), data.get("markers")), "No drift reports."),
        _section("Performance before labels (CBPE)", data.get("estimates"), _estimates, "No performance estimates."),
        _section("Canary", data.get("canary"), _canary, "No canary data."),
    ]
    return render_page(title=title, stylesheet="loop.css", lead=_header(data.get("summary")), sections=sections)
