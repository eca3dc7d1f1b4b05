"""Two code trees run alternately on one raw pair: per-stage wall and CPU time, peak RSS.

For relative comparisons on a machine that is not quiet (issue 17): the trees take turns
(A B, B A, A B ...) under the same load, and CPU time (all threads of the process) is
reported beside wall time. Each run is a fresh process running ``mstools -q run --baseline
B --followup F`` with TREE's ``mstools`` and ``cli`` folders first on the path; inside it,
each stage (and the carry back to the raw grid, and the final steps) is timed by wrapping
``mstools.pipeline.run._call``; preprocess's own steps come from its report.

The pair is the simulated 1 mm pair of ``bench_run_real.py`` (seed 7, 3 mm / 3 degrees apart).

  python benchmarks/bench_run_interleaved.py --work W --tree main=/path/to/main --tree branch=. --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_run_real import simulated_1mm_pair

#: The child: times each stage of one run and writes the clocks as JSON (argv: tree, shim, out json, run args).
CHILD = r"""
import json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
tree, shim, out = sys.argv[1:4]
sys.path[:0] = [tree, shim]
sys.argv = ["mstools", "-q", "run", *sys.argv[4:]]
import mstools.pipeline.run as run
clocks = {}
call = run._call
def timed(stage, job, *, verbose, command):
    t, c = time.perf_counter(), time.process_time()
    try:
        return call(stage, job, verbose=verbose, command=command)
    finally:
        key = stage if command != "apply-transform" else "carry to raw grid"
        w, cpu = clocks.get(key, (0.0, 0.0))
        clocks[key] = (w + time.perf_counter() - t, cpu + time.process_time() - c)
run._call = timed
finish = run._finish
def timed_finish(*args, **kwargs):
    t, c = time.perf_counter(), time.process_time()
    try:
        return finish(*args, **kwargs)
    finally:
        clocks["final steps (with carry)"] = (time.perf_counter() - t, time.process_time() - c)
run._finish = timed_finish
from mstools_cli.main import main
try:
    main()
except SystemExit as exc:
    if exc.code:
        raise
clocks["whole process"] = (time.perf_counter() - t0, time.process_time() - c0)
import resource
clocks["peak RSS (GB)"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2,) * 2
json.dump(clocks, open(out, "w"))
"""


def _one_run(tree: Path, shim: Path, baseline: Path, followup: Path, out: Path) -> dict:
    subprocess.run(["rm", "-rf", str(out)], check=True)
    clocks = out.with_suffix(".clocks.json")
    subprocess.run([sys.executable, "-c", CHILD, str(tree), str(shim), str(clocks), "--baseline", str(baseline),
                    "--followup", str(followup), "-o", str(out)], check=True, stdout=subprocess.DEVNULL)
    record = json.loads(clocks.read_text())
    steps = json.loads((out / "case" / "preprocess_report.json").read_text())
    for step, seconds in steps["seconds"].items():
        record[f"  preprocess: {step}"] = (seconds, steps["cpu_seconds"][step])
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH of a checkout (twice).")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    trees = dict(item.split("=", 1) for item in args.tree)
    if len(trees) != 2:
        parser.error("give two --tree NAME=PATH")
    args.work.mkdir(parents=True, exist_ok=True)
    baseline, followup = simulated_1mm_pair(args.work)
    shims = {}
    for name, path in trees.items():   # the cli folder is imported as mstools_cli
        shims[name] = args.work / f"shim-{name}"
        shims[name].mkdir(exist_ok=True)
        link = shims[name] / "mstools_cli"
        link.unlink(missing_ok=True)
        link.symlink_to(Path(path).resolve() / "cli")
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    names = list(trees)
    for repeat in range(args.repeats):
        for name in (names if repeat % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            runs[name].append(_one_run(Path(trees[name]).resolve(), shims[name], baseline, followup,
                                       args.work / f"run-{name}"))
            print(f"{name} run {repeat + 1}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    a, b = names
    print(f"| step (median of {args.repeats}) | {a} wall | {b} wall | {a} CPU | {b} CPU | CPU {b} / {a} |")
    print("|---|---|---|---|---|---|")
    for key in runs[a][0]:
        if not all(key in r for r in runs[a] + runs[b]):
            continue
        wall = [statistics.median(r[key][0] for r in runs[n]) for n in names]
        cpu = [statistics.median(r[key][1] for r in runs[n]) for n in names]
        ratio = f"{cpu[1] / cpu[0]:.2f}" if cpu[0] > 0 else ""
        print(f"| {key} | {wall[0]:.2f} | {wall[1]:.2f} | {cpu[0]:.2f} | {cpu[1]:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
