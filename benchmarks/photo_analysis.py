"""The photo lane's analysis on one core: photos per second through
:func:`verifiers.imaging.analyse` in a plain loop, one process, no queue and no database, so the
figure is the analysis alone (``verification.py --photos`` measures the whole lane).

The photos are the demo's compositions of 512 px (``demo.selfies.compose``, JPEG quality 85):
``--count`` of them, four in five with one face, one in ten with two, one in ten with none. The
first composition of each seed is taken as it is, not the one :func:`demo.selfies.selfie` would
pick after analysing it, so that the bytes do not depend on the detector being measured and two
versions of it can be compared on the same photos. The process is pinned to one CPU
(``--cpu``) and OpenCV runs one thread, as in the photo worker's pool. After a warm-up,
``--rounds`` passes over all the photos; the figure is the median pass. The outcomes of one
pass are reported per kind (about one composition in 200 fools the detector).

    .venv/bin/python -m benchmarks.photo_analysis [--count 200] [--rounds 5] [--cpu 0]
"""

from __future__ import annotations

import argparse
import collections
import os
import time
from typing import Any

from benchmarks._support import machine_info, markdown_table, median, progress, run_benchmark
from demo.selfies import compose
from verifiers.imaging import PhotoLimits, analyse, init_worker_process

_KINDS = ("one_face",) * 8 + ("two_faces", "no_face")
_WARM_UP = 10


def photos(count: int) -> list[tuple[str, bytes]]:
    """``count`` photos, the kinds in the proportions above, each seed its own composition."""
    return [
        (_KINDS[seed % len(_KINDS)], compose(_KINDS[seed % len(_KINDS)], seed))
        for seed in range(count)
    ]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pinned = hasattr(os, "sched_setaffinity")
    if pinned:
        os.sched_setaffinity(0, {args.cpu})
    init_worker_process()
    limits = PhotoLimits()
    progress(f"composing {args.count} photos")
    batch = photos(args.count)
    for _, photo in batch[:_WARM_UP]:
        analyse(photo, limits)
    passes: list[float] = []
    outcomes: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for round_ in range(args.rounds):
        progress(f"pass {round_ + 1} of {args.rounds}")
        started = time.perf_counter()
        results = [analyse(photo, limits) for _, photo in batch]
        passes.append(time.perf_counter() - started)
        if round_ == 0:
            for (kind, _), result in zip(batch, results, strict=True):
                outcomes[kind][result.outcome] += 1
    per_s = [args.count / seconds for seconds in passes]
    return {
        "benchmark": "photo_analysis",
        "machine": machine_info(),
        "config": {
            "count": args.count,
            "rounds": args.rounds,
            "cpu": args.cpu if pinned else None,
            "photo_bytes_mean": round(sum(len(photo) for _, photo in batch) / len(batch)),
        },
        "photos_per_s": round(median(per_s), 1),
        "photos_per_s_passes": [round(value, 1) for value in per_s],
        "ms_per_photo": round(1000 / median(per_s), 2),
        "outcomes": {kind: dict(counter) for kind, counter in outcomes.items()},
    }


def report(results: dict[str, Any]) -> str:
    config = results["config"]
    where = "unpinned" if config["cpu"] is None else f"pinned to CPU {config['cpu']}"
    rows = [
        [
            "**photos analysed/s**, one process, " + where,
            f"**{results['photos_per_s']:,.1f}**",
            f"{results['ms_per_photo']:.2f} ms a photo; median of {config['rounds']} passes "
            f"{results['photos_per_s_passes']}",
        ],
        [
            "outcomes by kind (one pass)",
            str(config["count"]),
            "; ".join(f"{kind}: {counts}" for kind, counts in results["outcomes"].items()),
        ],
    ]
    return markdown_table(["measure", "value", "notes"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=200, help="photos in a pass")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes; the median counts")
    parser.add_argument("--cpu", type=int, default=0, help="the CPU the process is pinned to")
    args = parser.parse_args(argv)
    if args.count < 1 or args.rounds < 1:
        parser.error("--count and --rounds must be at least 1")
    code, _ = run_benchmark("photo_analysis", lambda: run(args), report)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
