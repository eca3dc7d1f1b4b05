"""Accuracy of the default chain behind different preprocessings of the same raw pairs.

The issue "Speed on real grids" changed `preprocess` for speed: the common grid of two 2D
scans is the follow-up's voxel size (was isotropic at the finest edge: 6x more voxels along
3-4 mm slices), registration on brain-cropped scans with fewer samples, a middle space cut
to the brains plus 10 mm. This script measures what those changes cost in accuracy: each
raw pair is preprocessed by each VARIANT, today's default chain (``mstools run CASE``) runs
on every result, and the final mask is scored against the ground truth carried by that
variant's own transform (``preprocess --followup-lesions``): MSSEG-2 lesion F1, LTPR, LFPR
(any overlap), Dice.

Variants:

* ``today``: today's ``mstools preprocess`` (the grid policy of today);
* ``isotropic``: today's ``preprocess --spacing-mm`` at the finest voxel edge (the former grid);
* ``iso1mm``: today's ``preprocess --spacing-mm 1`` (1 mm isotropic, the detectors' home grid);
* ``followup``: today's ``preprocess --spacing-mm`` at the follow-up's own voxel size (thick
  slices stay thick, so the run's thick-slice rules apply);
* ``before``: ``--before CMD``, another version's command, e.g. the checkout at the start of
  the speed work: ``--before "env PYTHONPATH=/old python -m cli.main"`` (run in /old).

Pairs: development patient 01 (``data_samples/real-p01``), simulated clinical pairs on the
Ljubljana database's protocols (``simulate --baseline-acquisition/--followup-acquisition``)
and simulated 1 mm pairs misaligned by 3 mm / 3 degrees. Held-out real patients never run here.

  python benchmarks/preprocess_accuracy.py --work W [--clinical-seeds ...] [--raw1mm-seeds ...]
      [--before CMD --before-cwd DIR]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
#: Protocol pairs (baseline, follow-up) of the Ljubljana database's 2D FLAIRs, as in
#: benchmarks/build_mixed_domain.sh; clinical seeds cycle through them.
PROTOCOLS = (("2d:0.72x0.72x4,axial", "2d:0.72x0.72x3,axial"),
             ("2d:0.57x0.57x3.3,axial", "2d:0.72x0.72x3,axial"),
             ("2d:0.9x0.9x3,axial", "2d:0.9x0.9x3,axial,gap=0.3"))
METRICS = ("lesion_f1", "ltpr", "lfpr", "dice")


def _simulate(case: Path, seed: int, *options: str) -> None:
    if not (case / "ground_truth.nii.gz").exists():
        subprocess.run(["mstools", "-q", "simulate", str(case), "--seed", str(seed), *options, "--force"],
                       check=True, stdout=subprocess.DEVNULL)


def _pairs(work: Path, clinical: list[int], raw1mm: list[int]) -> dict[str, tuple[str, Path, Path, Path]]:
    """name -> (domain, raw baseline, raw follow-up, ground truth on the raw follow-up's grid)."""
    real = REPO / "data_samples" / "real-p01"
    pairs = {"real-p01": ("real patient 01", real / "flair_time01_raw.nii.gz", real / "flair_time02_raw.nii.gz",
                          real / "ground_truth_on_followup_raw.nii.gz")}
    for n, seed in enumerate(clinical):
        baseline, followup = PROTOCOLS[n % len(PROTOCOLS)]
        case = work / "cases" / f"clinical-{seed}"
        _simulate(case, seed, "--baseline-acquisition", baseline, "--followup-acquisition", followup)
        pairs[case.name] = ("simulated clinical", case / "flair_time01_raw.nii.gz", case / "flair_time02_raw.nii.gz",
                            case / "ground_truth.nii.gz")
    for seed in raw1mm:
        case = work / "cases" / f"raw1mm-{seed}"
        _simulate(case, seed, "--misalign-mm", "3", "--misalign-deg", "3")
        pairs[case.name] = ("simulated 1 mm", case / "flair_time01_on_middle_space.nii.gz",
                            case / "flair_time02_on_middle_space.nii.gz", case / "ground_truth.nii.gz")
    return pairs


def _voxel_size(path: Path) -> tuple[float, ...]:
    import nibabel as nib

    return tuple(float(v) for v in nib.load(str(path)).header.get_zooms()[:3])


def _finest_edge(*paths: Path) -> float:
    import nibabel as nib

    return float(min(min(nib.load(str(p)).header.get_zooms()[:3]) for p in paths))


def _preprocess(command: list[str], cwd: Path | None, baseline: Path, followup: Path, truth: Path, out: Path,
                extra: list[str]) -> float:
    done_file = out / "preprocess.seconds"
    if done_file.exists():
        return float(done_file.read_text())
    start = time.perf_counter()
    subprocess.run([*command, "-q", "preprocess", str(baseline), str(followup), str(out), "--followup-lesions",
                    str(truth), "--force", *extra], check=True, stdout=subprocess.DEVNULL, cwd=cwd)
    seconds = time.perf_counter() - start
    done_file.write_text(f"{seconds:.2f}")
    return seconds


def _chain(case: Path, out: Path) -> dict:
    from mstools.io import read_mask
    from mstools.metrics.case import evaluate_case

    if not (out / "run.json").exists():
        subprocess.run(["mstools", "-q", "run", str(case), "-o", str(out)], check=True, stdout=subprocess.DEVNULL)
    final, truth = read_mask(out / "new_lesions_mask.nii.gz"), read_mask(case / "lesions_time02.nii.gz")
    grid = json.loads((case / "preprocess_report.json").read_text()).get("grid", {})
    return {**evaluate_case(final.data > 0, truth.data > 0, affine=final.affine).metrics,
            "grid": "x".join(f"{v:.2f}" for v in grid.get("spacing_mm", final.header.get_zooms()[:3]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--clinical-seeds", type=int, nargs="*", default=[9100, 9101, 9102, 9103, 9104, 9105])
    parser.add_argument("--raw1mm-seeds", type=int, nargs="*", default=[2000, 2001, 2002, 2003, 2004])
    parser.add_argument("--before", default=None, help="Command of another mstools version (its preprocess).")
    parser.add_argument("--before-cwd", type=Path, default=None, help="Folder to run --before in.")
    parser.add_argument("--variants", nargs="+", default=["today", "isotropic", "before"])
    args = parser.parse_args()
    args.work = args.work.resolve()
    variants = [v for v in args.variants if v != "before" or args.before]
    rows: dict[tuple[str, str], list[dict]] = {}
    print("| pair | variant | common grid (mm) | preprocess | lesion F1 | LTPR | LFPR | Dice |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (domain, baseline, followup, truth) in _pairs(args.work, args.clinical_seeds, args.raw1mm_seeds).items():
        for variant in variants:
            case = args.work / variant / name
            command, cwd, extra = ["mstools"], None, []
            if variant == "before":
                command, cwd = shlex.split(args.before), args.before_cwd
            if variant == "isotropic":
                extra = ["--spacing-mm", f"{_finest_edge(baseline, followup):.6g}"]
            if variant == "iso1mm":
                extra = ["--spacing-mm", "1"]
            if variant == "followup":
                extra = ["--spacing-mm", ",".join(f"{v:.6g}" for v in _voxel_size(followup))]
            seconds = _preprocess(command, cwd, baseline, followup, truth, case, extra)
            m = _chain(case, args.work / variant / f"run-{name}")
            rows.setdefault((domain, variant), []).append(m)
            print(f"| {name} | {variant} | {m['grid']} | {seconds:.1f} s | {m['lesion_f1']:.3f} | {m['ltpr']:.3f} | "
                  f"{m['lfpr']:.3f} | {m['dice']:.3f} |", flush=True)
    print("\n| pairs | variant | n | lesion F1 | LTPR | LFPR | Dice |\n|---|---|---|---|---|---|---|")
    for (domain, variant), found in rows.items():
        mean = {k: statistics.fmean(float(r[k]) for r in found if not np.isnan(float(r[k]))) for k in METRICS}
        print(f"| {domain} | {variant} | {len(found)} | " + " | ".join(f"{mean[k]:.3f}" for k in METRICS) + " |")


if __name__ == "__main__":
    main()
