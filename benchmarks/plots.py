"""PNG plots over time of a load-generator run (one sample per second in ``result["series"]``).

:func:`render` draws one run, one PNG per panel that has data (a panel without any data is
skipped, e.g. a run against the bare server has no queues, funnel or ministries):

``{prefix}-rate.png``
    Offered load (registrations scheduled per second, first attempts), and the answers received
    per second: accepted (``202``), shed (``503``), errors (timeouts, connection errors, other
    ``5xx``) and, when any, invalid (``4xx``, the expected refusals of bad forms). Accepted
    following offered means the system keeps up; shed rising instead of errors is the intended
    way of giving in.
``{prefix}-latency.png``
    Latency percentiles (p50, p90, p99, and the maximum as a thin line) of the answers received
    in each second, in ms, measured from each request's *scheduled* send time (so a generator
    that falls behind shows up as latency); log y axis.
``{prefix}-queues.png``
    Depth of each RabbitMQ queue over time, only the queues that were ever non-empty. A depth
    that keeps growing is a stage that does not keep up; one that returns to zero drained.
``{prefix}-funnel.png``
    Cumulative registrations at each stage of the verification funnel (PostgreSQL): registered,
    email/phone/NIK/photo verified, verified, rejected, sent to review.
``{prefix}-ministries.png``
    Each simulated ministry's goodput (calls served per second: the difference of consecutive
    cumulative ``served`` counters divided by the time between the samples), solid, and calls
    it rejected per second, dashed, in the same colour.

:func:`compare` draws several runs side by side: ``{prefix}-accepted.png`` (accepted answers
per second of each run over time) and ``{prefix}-latency.png`` (p99 latency of each run, log
y axis).

Figures are 10 x 4 inches at 100 dpi (1000 x 400 pixels), drawn with matplotlib's
object-oriented API on the Agg canvas: no pyplot, no global figure state.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from core.funnel import STAGES

__all__ = ["compare", "rates", "render", "values"]

FIGSIZE_IN = (10.0, 4.0)
DPI = 100
TIME_LABEL = "time since first scheduled request (s)"

# Funnel stages in the order a registration goes through them; unknown stages follow.
FUNNEL_STAGES = STAGES

Series = Sequence[Mapping[str, Any]]


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, null, not a number, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _lookup(sample: Mapping[str, Any], key_path: Sequence[str]) -> float | None:
    """The number at ``key_path`` in ``sample`` (e.g. ``("latency_ms", "p99")``), or None."""
    node: Any = sample
    for key in key_path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return _number(node)


def _samples(series: Series) -> list[tuple[float, Mapping[str, Any]]]:
    """The samples that have a time, sorted by it."""
    timed = []
    for sample in series:
        if isinstance(sample, Mapping):
            t = _number(sample.get("t"))
            if t is not None:
                timed.append((t, sample))
    timed.sort(key=lambda item: item[0])
    return timed


def values(series: Series, key_path: Sequence[str]) -> tuple[list[float], list[float]]:
    """``(t, value)`` of the samples that have a number at ``key_path`` (the others skipped)."""
    ts: list[float] = []
    vs: list[float] = []
    for t, sample in _samples(series):
        value = _lookup(sample, key_path)
        if value is not None:
            ts.append(t)
            vs.append(value)
    return ts, vs


def rates(series: Series, key_path: Sequence[str]) -> tuple[list[float], list[float]]:
    """Per-second rate of the cumulative counter at ``key_path``.

    Between consecutive samples that have the counter (samples without it are skipped, so a gap
    in t spreads the increase over the whole gap): ``(v2 - v1) / (t2 - t1)``, placed at ``t2``.
    A counter that went down (a restarted process) gives no point for that interval.
    """
    ts, vs = values(series, key_path)
    out_t: list[float] = []
    out_rate: list[float] = []
    for (t1, v1), (t2, v2) in itertools.pairwise(zip(ts, vs, strict=True)):
        dt = t2 - t1
        dv = v2 - v1
        if dt <= 0 or dv < 0:
            continue
        out_t.append(t2)
        out_rate.append(dv / dt)
    return out_t, out_rate


def _positive(ts: list[float], vs: list[float]) -> tuple[list[float], list[float]]:
    """Only the points a log axis can show."""
    kept = [(t, v) for t, v in zip(ts, vs, strict=True) if v > 0]
    return [t for t, _ in kept], [v for _, v in kept]


def _new_axes(title: str, ylabel: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.4)
    return fig, ax


def _save(fig: Figure, ax: Axes, path: Path, *, legend_columns: int = 1) -> Path:
    ax.legend(loc="upper left", fontsize="small", ncols=legend_columns, framealpha=0.8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    fig.clear()  # no pyplot, so nothing global to close; free the artists now
    return path


def _run_name(result: Mapping[str, Any], default: str) -> str:
    name = result.get("name")
    return str(name) if name else default


def _rate_panel(series: Series, name: str, path: Path) -> Path | None:
    lines = [("offered", "offered"), ("accepted", "accepted (202)")]
    lines += [("shed", "shed (503)"), ("errors", "errors (timeouts, 5xx)")]
    _, invalid = values(series, ("invalid",))
    if any(v != 0 for v in invalid):
        lines.append(("invalid", "invalid (4xx)"))
    data = [(label, *values(series, (key,))) for key, label in lines]
    if not any(ts for _, ts, _ in data):
        return None
    fig, ax = _new_axes(f"{name}: requests per second", "requests / s")
    for label, ts, vs in data:
        if ts:
            ax.plot(ts, vs, label=label, linewidth=1.2)
    ax.set_ylim(bottom=0)
    return _save(fig, ax, path)


def _latency_panel(series: Series, name: str, path: Path) -> Path | None:
    data = []
    for key in ("p50", "p90", "p99", "max"):
        ts, vs = _positive(*values(series, ("latency_ms", key)))
        data.append((key, ts, vs))
    if not any(ts for _, ts, _ in data):
        return None
    fig, ax = _new_axes(f"{name}: latency from scheduled send time", "latency (ms, log)")
    for key, ts, vs in data:
        if ts:
            thin = key == "max"
            ax.plot(
                ts,
                vs,
                label=key,
                linewidth=0.6 if thin else 1.2,
                alpha=0.6 if thin else 1.0,
            )
    ax.set_yscale("log")
    ax.grid(True, which="minor", alpha=0.15)
    return _save(fig, ax, path)


def _names(series: Series, key: str) -> list[str]:
    """Every name under the mapping ``key`` of any sample, in order of first appearance."""
    seen: dict[str, None] = {}
    for sample in series:
        if isinstance(sample, Mapping):
            node = sample.get(key)
            if isinstance(node, Mapping):
                seen.update((str(name), None) for name in node)
    return list(seen)


def _queues_panel(series: Series, name: str, path: Path) -> Path | None:
    data = []
    for queue in sorted(_names(series, "queues")):
        ts, vs = values(series, ("queues", queue))
        if any(v != 0 for v in vs):
            data.append((queue, ts, vs))
    if not data:
        return None
    fig, ax = _new_axes(f"{name}: RabbitMQ queue depth", "messages in queue")
    for queue, ts, vs in data:
        ax.plot(ts, vs, label=queue, linewidth=1.2)
    ax.set_ylim(bottom=0)
    return _save(fig, ax, path, legend_columns=2 if len(data) > 6 else 1)


def _funnel_panel(series: Series, name: str, path: Path) -> Path | None:
    present = _names(series, "funnel")
    stages = [s for s in FUNNEL_STAGES if s in present]
    stages += [s for s in present if s not in FUNNEL_STAGES]
    data = [(stage, *values(series, ("funnel", stage))) for stage in stages]
    data = [(stage, ts, vs) for stage, ts, vs in data if ts]
    if not data:
        return None
    fig, ax = _new_axes(f"{name}: verification funnel (cumulative)", "registrations")
    for stage, ts, vs in data:
        ax.plot(ts, vs, label=stage.replace("_", " "), linewidth=1.2)
    ax.set_ylim(bottom=0)
    return _save(fig, ax, path, legend_columns=2 if len(data) > 6 else 1)


def _ministries_panel(series: Series, name: str, path: Path) -> Path | None:
    data = []
    for ministry in sorted(_names(series, "ministries")):
        served = rates(series, ("ministries", ministry, "served"))
        rejected = rates(series, ("ministries", ministry, "rejected"))
        if served[0] or rejected[0]:
            data.append((ministry, served, rejected))
    if not data:
        return None
    fig, ax = _new_axes(f"{name}: ministry goodput and rejections", "calls / s")
    for index, (ministry, served, rejected) in enumerate(data):
        colour = f"C{index % 10}"
        if served[0]:
            ax.plot(*served, color=colour, linewidth=1.2, label=f"{ministry} served")
        if rejected[0]:
            ax.plot(
                *rejected, color=colour, linewidth=1.0, linestyle="--", label=f"{ministry} rejected"
            )
    ax.set_ylim(bottom=0)
    return _save(fig, ax, path, legend_columns=2 if len(data) > 3 else 1)


def render(result: Mapping[str, Any], out_dir: Path, prefix: str) -> list[Path]:
    """Write one PNG per panel of ``result`` that has data; return the paths written.

    Panels, in this order: ``{prefix}-rate.png``, ``-latency.png``, ``-queues.png``,
    ``-funnel.png``, ``-ministries.png`` (see the module docstring).
    """
    series: Series = result.get("series") or []
    name = _run_name(result, prefix)
    panels = (
        ("rate", _rate_panel),
        ("latency", _latency_panel),
        ("queues", _queues_panel),
        ("funnel", _funnel_panel),
        ("ministries", _ministries_panel),
    )
    written = []
    for suffix, panel in panels:
        path = panel(series, name, Path(out_dir) / f"{prefix}-{suffix}.png")
        if path is not None:
            written.append(path)
    return written


def compare(runs: Mapping[str, Mapping[str, Any]], out_dir: Path, prefix: str) -> list[Path]:
    """Several runs side by side, e.g. ``{"edge": result1, "naive": result2}``.

    Writes ``{prefix}-accepted.png`` (accepted per second of each run) and
    ``{prefix}-latency.png`` (p99 of each run, log y); a plot no run has data for is skipped.
    Returns the paths written.
    """
    title_runs = " vs ".join(runs) or prefix
    written = []

    accepted = [
        (label, *values(run.get("series") or [], ("accepted",))) for label, run in runs.items()
    ]
    accepted = [(label, ts, vs) for label, ts, vs in accepted if ts]
    if accepted:
        fig, ax = _new_axes(f"{title_runs}: accepted (202) per second", "accepted / s")
        for label, ts, vs in accepted:
            ax.plot(ts, vs, label=label, linewidth=1.2)
        ax.set_ylim(bottom=0)
        written.append(_save(fig, ax, Path(out_dir) / f"{prefix}-accepted.png"))

    p99 = [
        (label, *_positive(*values(run.get("series") or [], ("latency_ms", "p99"))))
        for label, run in runs.items()
    ]
    p99 = [(label, ts, vs) for label, ts, vs in p99 if ts]
    if p99:
        fig, ax = _new_axes(f"{title_runs}: p99 latency", "p99 latency (ms, log)")
        for label, ts, vs in p99:
            ax.plot(ts, vs, label=label, linewidth=1.2)
        ax.set_yscale("log")
        ax.grid(True, which="minor", alpha=0.15)
        written.append(_save(fig, ax, Path(out_dir) / f"{prefix}-latency.png"))

    return written
