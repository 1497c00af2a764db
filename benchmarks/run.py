"""``make bench``: every benchmark, one after the other, each in its own process.

Each benchmark prints its markdown table on stdout and writes its JSON to ``results/``; this
runner stops at the first one that fails (a lost registration fails a benchmark, a slow run
does not).
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS: tuple[tuple[str, list[str]], ...] = (
    ("edge", ["--access-log"]),
    ("persist", []),
    ("verification", []),
    ("backpressure", []),
)


def main() -> int:
    for name, args in BENCHMARKS:
        print(f"\n## {name}\n", flush=True)
        done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args], check=False)
        if done.returncode != 0:
            print(f"benchmark {name} failed with exit code {done.returncode}", file=sys.stderr)
            return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
