"""The default chain on a case folder as it is against on a 1 mm isotropic copy of it.

A thick-slice case folder (e.g. the Ljubljana database's 0.72 x 0.72 x 3 mm grid) is resampled
to 1 mm (FLAIRs cubic B-spline, masks linear >= 0.5, same axes and field of view); the default
``mstools run`` runs on both; the 1 mm run's final mask is carried back onto the case grid and
both are scored against the case's ground truth (MSSEG-2 lesion F1, LTPR, LFPR, Dice). It asks
whether detecting at 1 mm helps a case that is already on a thick-slice grid (2026-12-07: no).

  python benchmarks/detection_grid_accuracy.py CASE ... --work W
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
from pathlib import Path

import numpy as np

IMAGES = ("flair_time01_on_middle_space", "flair_time02_on_middle_space")
MASKS = ("brain_mask", "ground_truth", "lesions_time01")
METRICS = ("lesion_f1", "ltpr", "lfpr", "dice")


def _copy_at_1mm(case: Path, out: Path) -> None:
    import nibabel as nib

    from mstools.io import read_image, read_mask
    from mstools.preprocess.rigid import grid_of, regrid, resample, resample_mask

    reference = read_image(case / f"{IMAGES[1]}.nii.gz")
    grid = regrid(grid_of(reference.shape, reference.affine), (1.0, 1.0, 1.0))
    out.mkdir(parents=True, exist_ok=True)
    for name in IMAGES:
        image = read_image(case / f"{name}.nii.gz")
        data = resample(image.data, image.affine, grid, np.eye(4)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, grid.affine), str(out / f"{name}.nii.gz"))
    for name in MASKS:
        if (case / f"{name}.nii.gz").exists():
            mask = read_mask(case / f"{name}.nii.gz")
            nib.save(nib.Nifti1Image(resample_mask(mask.data > 0, mask.affine, grid, np.eye(4)), grid.affine),
                     str(out / f"{name}.nii.gz"))


def main() -> None:
    from mstools.io import read_mask
    from mstools.metrics.case import evaluate_case
    from mstools.preprocess.rigid import grid_of, resample_mask

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", type=Path)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {"as it is": [], "1 mm copy": []}
    print("| case | grid | lesion F1 | LTPR | LFPR | Dice |\n|---|---|---|---|---|---|")
    for case in args.cases:
        name = f"{case.parent.name}-{case.name}"
        copy = args.work / name / "case1mm"
        if not (copy / "ground_truth.nii.gz").exists():
            _copy_at_1mm(case, copy)
        truth = read_mask(case / "ground_truth.nii.gz")
        for label, folder, out in (("as it is", case, args.work / name / "run"),
                                   ("1 mm copy", copy, args.work / name / "run1mm")):
            if not (out / "run.json").exists():
                subprocess.run(["mstools", "-q", "run", str(folder), "-o", str(out)], check=True,
                               stdout=subprocess.DEVNULL)
            final = read_mask(out / "new_lesions_mask.nii.gz")
            predicted = final.data > 0
            if label == "1 mm copy":
                predicted = resample_mask(predicted, final.affine, grid_of(truth.shape, truth.affine), np.eye(4)) > 0
            m = evaluate_case(predicted, truth.data > 0, affine=truth.affine).metrics
            rows[label].append(m)
            print(f"| {name} | {label} | " + " | ".join(f"{float(m[k]):.3f}" for k in METRICS) + " |", flush=True)
    for label, found in rows.items():
        mean = [statistics.fmean(float(r[k]) for r in found if not np.isnan(float(r[k]))) for k in METRICS]
        print(f"| mean of {len(found)} | {label} | " + " | ".join(f"{v:.3f}" for v in mean) + " |")


if __name__ == "__main__":
    main()
