"""``make bench``: the whole benchmark suite, one benchmark after the other, each in its own
process, all results of the run in one folder, then a summary of the figures that matter.

Each benchmark prints its progress on stderr and its markdown table on stdout, and writes its
JSON (and the wave's plots) into ``results/bench-<UTC time>/``; this runner then writes
``summary.md`` and ``summary.json`` there: the edge against the bare aiohttp ceiling, the edge
against the naive synchronous design under a slow ministry, adaptive against fixed lanes, the
``day`` profile's time to the last registration stored, goodput past capacity (the edge and
the naive designs under one CPU quota), the reused-selfie look-up among 1.5 million photos,
the photo analysis on one core, and every loss audit of the run. A benchmark that fails (a lost
registration fails it; a slow run does not) is reported and the suite goes on; the exit code says
whether any failed.

    python -m benchmarks.run                 # everything (about an hour on 2 cores)
    python -m benchmarks.run --only wave-ci,versus
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._support import REPO_ROOT, machine_info, markdown_table

# (name, module, arguments, the results file's prefix)
BENCHMARKS: tuple[tuple[str, str, list[str], str], ...] = (
    ("edge", "edge", ["--access-log"], "edge"),
    ("persist", "persist", [], "persist"),
    ("verification", "verification", [], "verification"),
    ("photo-lookup", "photo_lookup", [], "photo_lookup"),
    ("photo-analysis", "photo_analysis", [], "photo_analysis"),
    ("versus", "versus", [], "versus"),
    ("backpressure", "backpressure", [], "backpressure"),
    ("overload", "overload", [], "overload"),
    ("wave-ci", "wave", ["--profile=ci"], "wave-ci"),
    ("wave-peak", "wave", ["--profile=peak", "--edges=2"], "wave-peak"),
    ("wave-opening", "wave", ["--profile=opening", "--edges=2"], "wave-opening"),
    ("wave-day", "wave", ["--profile=day", "--edges=2"], "wave-day"),
)


def _load(folder: Path, prefix: str) -> dict[str, Any] | None:
    """The newest ``prefix-<time>.json`` of the run's folder."""
    found = sorted(folder.glob(f"{prefix}-2*.json"))
    return json.loads(found[-1].read_text()) if found else None


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _num(value: Any, digits: int = 0, suffix: str = "") -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def summarise(folder: Path, exit_codes: dict[str, int]) -> tuple[str, dict[str, Any]]:
    """The summary tables of one run, and their figures."""
    edge = _load(folder, "edge")
    versus = _load(folder, "versus")
    backpressure = _load(folder, "backpressure")
    day = _load(folder, "wave-day")
    overload = _load(folder, "overload")
    photo_lookup = _load(folder, "photo_lookup")
    photo_analysis = _load(folder, "photo_analysis")
    figures: dict[str, Any] = {"machine": machine_info(), "exit_codes": exit_codes}
    sections: list[str] = []

    rows = []
    if edge is not None:
        medians = edge.get("accepted_per_s_median", {})
        figures["edge_over_bare"] = edge.get("ratio_edge_over_bare")
        rows.append(
            [
                "edge / bare aiohttp, accepted per second on one core (wrk, medians of rounds)",
                f"{_num(medians.get('edge'))} / {_num(medians.get('bare'))}",
                f"**{_num(edge.get('ratio_edge_over_bare'), 2)}**",
            ]
        )
    naive = _get(versus, "parts", "naive")
    if naive is not None:
        ratios = naive.get("ratios", {})
        figures["edge_over_naive"] = ratios
        rows.append(
            [
                "edge / naive synchronous design, slow ministry: accepted per second, steady",
                f"{_num(_get(naive, 'edge', 'accepted_per_s_steady'), 1)} / "
                f"{_num(_get(naive, 'naive', 'accepted_per_s_steady'), 1)}",
                f"**{_num(ratios.get('accepted_per_s_steady_edge_over_naive'), 1)} x** "
                "(goal >= 20 x)",
            ]
        )
        rows.append(
            [
                "the same: p99 of every registrant's final answer (ms)",
                f"{_num(_get(naive, 'edge', 'final_answer_latency_ms', 'p99'), 1)} / "
                f"{_num(_get(naive, 'naive', 'final_answer_latency_ms', 'p99'), 1)}",
                f"{_num(ratios.get('final_answer_p99_edge_over_naive'), 3)} (goal < 1)",
            ]
        )
    lanes = _get(backpressure, "parts", "A")
    if lanes is not None:
        for key in ("adaptive", "fixed_high", "fixed_low"):
            lane = lanes.get(key, {})
            rows.append(
                [
                    f"lanes, {lane.get('limit', key)}: goodput / ministry capacity; rejected",
                    f"{_num(lane.get('goodput_share'), 3)}; {_num(lane.get('rejected_share'), 4)}",
                    "adaptive: goal >= 0.95; <= 0.01" if key == "adaptive" else "",
                ]
            )
    if overload is not None:
        ratios = overload.get("ratios", {})
        figures["overload_goodput_over_1x"] = ratios
        for design, by_load in ratios.items():
            worst_p99 = max(
                (r["first_answer_ms"]["p99"] or 0.0 for r in overload["designs"][design]["runs"]),
                default=None,
            )
            rows.append(
                [
                    f"overload, {design} on {_num(100 * overload['quota_of_one_core'])} % of a "
                    "core: goodput at 2x and 5x / the edge's at 1x; worst first-answer p99",
                    f"{_num(by_load.get('2x'), 2)}, {_num(by_load.get('5x'), 2)}; "
                    f"{_num(worst_p99, 0, ' ms')}",
                    "edge: goal >= 0.9; <= 1 s" if design == "edge" else "",
                ]
            )
    if day is not None:
        seconds = _get(day, "figures", "first_request_to_last_stored_s")
        figures["day_first_request_to_last_stored_s"] = seconds
        rows.append(
            [
                f"`day`: {_num(_get(day, 'generator', 'accepted'))} registrations, first request "
                "→ last stored",
                f"{_num(seconds, 1, ' s')} ({_num(_get(day, 'figures', 'stored_per_s'))}/s)",
                "goal ≤ 240 s (6,000/s)",
            ]
        )
    if photo_lookup is not None:
        chunks = _get(photo_lookup, "results", "vacuumed") or {}
        scan = _get(photo_lookup, "results", "scan") or {}
        figures["photo_lookup_p50_p99_ms"] = [chunks.get("p50_ms"), chunks.get("p99_ms")]
        rows.append(
            [
                f"reused-selfie look-up among {_num(_get(photo_lookup, 'config', 'count'))} "
                "photos: chunks p50 / p99; the replaced scan p50",
                f"{_num(chunks.get('p50_ms'), 2)} / {_num(chunks.get('p99_ms'), 2)} ms; "
                f"{_num(scan.get('p50_ms'), 0)} ms",
                "goal ≤ 5 ms",
            ]
        )
    if photo_analysis is not None:
        figures["photo_analysis_per_s"] = photo_analysis.get("photos_per_s")
        rows.append(
            [
                "photos analysed per second on one core (512 px selfies, analyse() in a loop)",
                f"{_num(photo_analysis.get('photos_per_s'), 1)}/s "
                f"({_num(photo_analysis.get('ms_per_photo'), 1, ' ms')} a photo)",
                "goal ≥ 40/s",
            ]
        )
    if rows:
        sections.append(markdown_table(["comparison", "measured", "ratio / goal"], rows))

    audits = []
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("summary"):
            continue
        data = json.loads(path.read_text())
        for where, audit in _audits(data):
            audits.append(
                [
                    f"{path.stem} {where}".strip(),
                    _num(audit.get("accepted")),
                    _num(audit.get("stored")),
                    str(audit.get("missing", "-")),
                    "**verified**" if audit.get("verified") else "**FAILED**",
                ]
            )
    figures["audits"] = audits
    if audits:
        sections.append(
            markdown_table(["loss audit", "accepted (202)", "stored", "missing", "result"], audits)
        )
    failed = {name: code for name, code in exit_codes.items() if code != 0}
    sections.append(
        "benchmarks that failed: " + (", ".join(f"{n} ({c})" for n, c in failed.items()) or "none")
    )
    return "\n\n".join(sections) + "\n", figures


def _audits(data: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every ``audit`` dict in a result, with where it was found."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(data, dict):
        if isinstance(data.get("audit"), dict) and "verified" in data["audit"]:
            found.append((where, data["audit"]))
        for key, value in data.items():
            if key not in ("audit", "series", "samples", "progress"):
                found += _audits(value, f"{where} {key}".strip() if where or key else "")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    names = [name for name, *_ in BENCHMARKS]
    parser.add_argument("--only", default="", help=f"comma-separated subset of {names}")
    args = parser.parse_args(argv)
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(only) - set(names)
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; choose from {names}")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = REPO_ROOT / "results" / f"bench-{stamp}"
    folder.mkdir(parents=True)
    env = {**os.environ, "INTAKE_BENCH_RESULTS": str(folder)}
    exit_codes: dict[str, int] = {}
    for name, module, extra, _prefix in BENCHMARKS:
        if only and name not in only:
            continue
        print(f"\n## {name}\n", flush=True)
        done = subprocess.run(
            [sys.executable, "-m", f"benchmarks.{module}", *extra], env=env, check=False
        )
        exit_codes[name] = done.returncode
        if done.returncode != 0:
            print(f"benchmark {name} failed with exit code {done.returncode}", file=sys.stderr)
    text, figures = summarise(folder, exit_codes)
    (folder / "summary.md").write_text(f"# Benchmarks, {stamp}\n\n{text}")
    (folder / "summary.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(f"\n## summary\n\n{text}\nresults: {folder}")
    return 0 if all(code == 0 for code in exit_codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
