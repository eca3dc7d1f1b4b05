"""Start-up time of the command line: `mstools --help` and `mstools <command> --help`.

Each is run as a fresh process several times; the median wall time is printed (seconds),
with a bare `python -c pass` for scale. Target (issue 14): at most 0.5 s on a quiet
machine. A benchmark, not a test: timings depend on the machine and its load.

    python benchmarks/cli_startup.py [--repeats 7] [--mstools PATH]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ["simulate", "preprocess", "apply-transform", "subtract", "filter", "refine", "register", "warp",
            "segment", "train", "evaluate", "run", "batch", "report", "import-open-ms"]


def median_seconds(argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--mstools", default=None, help="the mstools executable (default: beside this Python)")
    args = parser.parse_args()
    exe = args.mstools or str(Path(sys.executable).parent / "mstools")
    if not Path(exe).exists():
        exe = shutil.which("mstools") or exe
    print(f"{'python -c pass':<28s} {median_seconds([sys.executable, '-c', 'pass'], args.repeats):6.3f} s")
    rows = [("mstools --help", [exe, "--help"])] + [(f"mstools {c} --help", [exe, c, "--help"]) for c in COMMANDS]
    worst = 0.0
    for name, argv in rows:
        seconds = median_seconds(argv, args.repeats)
        worst = max(worst, seconds)
        print(f"{name:<28s} {seconds:6.3f} s")
    print(f"{'slowest':<28s} {worst:6.3f} s (target <= 0.5 s)")


if __name__ == "__main__":
    main()
