"""Whole default `mstools run` from two raw scans: per-stage wall time, common grid, peak RSS.

Rows (issue "Speed on real grids"):

* a simulated 1 mm pair, follow-up misaligned by 3 mm / 3 degrees (`mstools simulate`);
* development patient 01's raw 2D FLAIRs (`data_samples/real-p01`, 0.72 x 0.72 x 4 and x 3 mm);
* a simulated clinical pair on the grids of a held-out patient (0.57 x 0.57 x 3.3 mm baseline,
  0.72 x 0.72 x 3 mm follow-up; `mstools simulate --baseline-acquisition/--followup-acquisition`).

Each run is a fresh `mstools run` process (as a user runs it); its peak RSS is the
largest resident size of the child processes. Run on a quiet machine:

  python benchmarks/bench_run_real.py --work /tmp/bench_run_real [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = ("preprocess", "subtract", "segment", "refine", "filter", "activity")


def simulated_1mm_pair(work: Path) -> tuple[Path, Path]:
    """The first row's pair (made once in WORK/sim1mm): seed 7, follow-up 3 mm / 3 degrees off."""
    sim = work / "sim1mm"
    if not (sim / "flair_time02_on_middle_space.nii.gz").exists():
        subprocess.run(["mstools", "-q", "simulate", str(sim), "--seed", "7", "--misalign-mm", "3",
                        "--misalign-deg", "3", "--force"], check=True, stdout=subprocess.DEVNULL)
    return sim / "flair_time01_on_middle_space.nii.gz", sim / "flair_time02_on_middle_space.nii.gz"


def _pairs(work: Path) -> dict[str, tuple[Path, Path]]:
    sim = simulated_1mm_pair(work)
    clinical = work / "clinical"
    if not (clinical / "flair_time02_raw.nii.gz").exists():
        subprocess.run(["mstools", "-q", "simulate", str(clinical), "--seed", "8",
                        "--baseline-acquisition", "2d:0.57x0.57x3.3,axial",
                        "--followup-acquisition", "2d:0.72x0.72x3,axial", "--force"],
                       check=True, stdout=subprocess.DEVNULL)
    real = REPO / "data_samples" / "real-p01"
    return {
        "simulated 1 mm (3 mm / 3 deg apart)": sim,
        "real patient 01 (0.72x0.72x4 / x3 mm)": (real / "flair_time01_raw.nii.gz", real / "flair_time02_raw.nii.gz"),
        "simulated clinical (0.57x0.57x3.3 / 0.72x0.72x3 mm)": (clinical / "flair_time01_raw.nii.gz",
                                                                clinical / "flair_time02_raw.nii.gz"),
    }


def _one_run(baseline: Path, followup: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(["mstools", "-q", "run", "--baseline", str(baseline), "--followup", str(followup), "-o", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    record = json.loads((out / "run.json").read_text())
    grid = json.loads((out / "case" / "preprocess_report.json").read_text()).get("grid", {})
    return {"wall": wall, **{s: record["stages"][s].get("seconds", 0.0) for s in STAGES},
            "grid": "x".join(str(v) for v in grid.get("shape", [])),
            "spacing": "x".join(f"{v:g}" for v in grid.get("spacing_mm", []))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=1, help="Runs per pair (the median is printed).")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print("| pair | common grid (mm) | voxels | preprocess | subtract | segment | refine | filter | activity | "
          "whole run | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (baseline, followup) in _pairs(args.work).items():
        runs = [_one_run(baseline, followup, args.work / "run") for _ in range(args.repeats)]
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
        median = {k: statistics.median(r[k] for r in runs) for k in ("wall", *STAGES)}
        print(f"| {name} | {runs[0]['spacing']} | {runs[0]['grid']} | {median['preprocess']:.1f} s | "
              f"{median['subtract']:.1f} s | {median['segment']:.1f} s | {median['refine']:.1f} s | {median['filter']:.1f} s | "
              f"{median['activity']:.1f} s | "
              f"{median['wall']:.1f} s | {peak_gb:.2f} GB (largest so far) |", flush=True)


if __name__ == "__main__":
    main()
