"""Start-up time of the command line: `mstools --help` and `mstools <command> --help`.

Each is run as a fresh process several times; the median wall time and the median CPU
time (user + system, which a busy machine does not inflate) are printed, with a bare
`python -c pass` for scale. Target (issue 14): at most 0.5 s on a quiet
machine. A benchmark, not a test: timings depend on the machine and its load.

    python benchmarks/cli_startup.py [--repeats 7] [--mstools PATH]
    python benchmarks/cli_startup.py --mstools "env PYTHONPATH=/old/checkout python -m cli.main"   # another version
"""

from __future__ import annotations

import argparse
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ["simulate", "preprocess", "apply-transform", "subtract", "filter", "refine", "register", "warp",
            "segment", "train", "evaluate", "run", "batch", "report", "import-open-ms"]


def median_seconds(argv: list[str], repeats: int) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system) of the child process: on a busy
    machine the CPU time is what the wall time would be on a quiet one (start-up is one thread)."""
    walls, cpus = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--mstools", default=None, help="the mstools command (default: the executable beside this "
                                                        "Python); a command line is split as a shell would")
    args = parser.parse_args()
    if args.mstools:
        exe = shlex.split(args.mstools)
    else:
        found = Path(sys.executable).parent / "mstools"
        exe = [str(found) if found.exists() else (shutil.which("mstools") or "mstools")]
    wall, cpu = median_seconds([sys.executable, "-c", "pass"], args.repeats)
    print(f"{'':<32s} {'wall':>7s} {'cpu':>7s}")
    print(f"{'python -c pass':<32s} {wall:6.3f}s {cpu:6.3f}s")
    rows = [("mstools --help", [*exe, "--help"])] + [(f"mstools {c} --help", [*exe, c, "--help"]) for c in COMMANDS]
    worst_wall = worst_cpu = 0.0
    for name, argv in rows:
        wall, cpu = median_seconds(argv, args.repeats)
        worst_wall, worst_cpu = max(worst_wall, wall), max(worst_cpu, cpu)
        print(f"{name:<32s} {wall:6.3f}s {cpu:6.3f}s")
    print(f"{'slowest':<32s} {worst_wall:6.3f}s {worst_cpu:6.3f}s   (target: <= 0.5 s on a quiet machine)")

if __name__ == "__main__":
    main()
