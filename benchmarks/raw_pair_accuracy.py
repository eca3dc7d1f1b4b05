"""Lesion-wise accuracy of the default `mstools run` from raw scans (preprocess included).

Simulated 1 mm pairs whose follow-up is misaligned (``mstools simulate --misalign-mm 3
--misalign-deg 3``) go through ``mstools run --baseline --followup``; the run's final mask
(halfway space) is scored against the simulator's ground truth, which lies in the
follow-up's frame (the new lesions are drawn before the follow-up is moved), carried into
the halfway space with the run's own follow-up transform. So preprocessing (brain
extraction, N4, registration, resampling, harmonisation) is judged with the detectors.

  python benchmarks/raw_pair_accuracy.py --work /tmp/raw_acc [--seeds 2000 2001 ...]
      [--mstools "env PYTHONPATH=/old/checkout python -m cli.main"]   # another version

Prints one row per case and the means (MSSEG-2 lesion F1, LTPR, LFPR, Dice) and the
run's wall time.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np


def _simulate(folder: Path, seed: int) -> None:
    if not (folder / "ground_truth.nii.gz").exists():
        subprocess.run(["mstools", "-q", "simulate", str(folder), "--seed", str(seed), "--misalign-mm", "3",
                        "--misalign-deg", "3", "--force"], check=True, stdout=subprocess.DEVNULL)


def _score(case: Path, run: Path) -> dict:
    from mstools.io import read_mask, read_transform
    from mstools.metrics.case import evaluate_case
    from mstools.preprocess.rigid import grid_of, resample_mask

    final = read_mask(run / "new_lesions_mask.nii.gz")
    truth = read_mask(case / "ground_truth.nii.gz")
    to_followup = read_transform(run / "case" / "time02_to_middle_space.tfm")
    carried = resample_mask(truth.data, truth.affine, grid_of(final.shape, final.affine), to_followup)
    return evaluate_case(final.data > 0, carried > 0, affine=final.affine).metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2000, 2001, 2002, 2003, 2004])
    parser.add_argument("--mstools", default="mstools", help="Command that runs mstools (default: mstools).")
    parser.add_argument("--tag", default="run", help="Name of the run folders (one per version).")
    args = parser.parse_args()
    command = shlex.split(args.mstools)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    print("| case | lesion F1 | LTPR | LFPR | Dice | wall |")
    print("|---|---|---|---|---|---|")
    for seed in args.seeds:
        case = args.work / f"sim-{seed}"
        _simulate(case, seed)
        out = args.work / f"{args.tag}-{seed}"
        start = time.perf_counter()
        subprocess.run([*command, "-q", "run", "--baseline", str(case / "flair_time01_on_middle_space.nii.gz"),
                        "--followup", str(case / "flair_time02_on_middle_space.nii.gz"), "-o", str(out)],
                       check=True, stdout=subprocess.DEVNULL, cwd=args.work)  # the cwd leads sys.path under `-m`
        wall = time.perf_counter() - start
        m = _score(case, out)
        rows.append({**m, "wall": wall})
        print(f"| sim-{seed} | {m['lesion_f1']:.3f} | {m['ltpr']:.3f} | {m['lfpr']:.3f} | {m['dice']:.3f} | "
              f"{wall:.1f} s |", flush=True)
    mean = {k: statistics.fmean(float(r[k]) for r in rows if not np.isnan(float(r[k])))
            for k in ("lesion_f1", "ltpr", "lfpr", "dice", "wall")}
    print(f"| mean | {mean['lesion_f1']:.3f} | {mean['ltpr']:.3f} | {mean['lfpr']:.3f} | {mean['dice']:.3f} | "
          f"{mean['wall']:.1f} s |")


if __name__ == "__main__":
    main()
