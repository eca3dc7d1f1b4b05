"""The default `mstools run` from real raw 2D FLAIR pairs (preprocess included), lesion-wise.

For each longitudinal patient of a local open_ms_data clone (Lesjak et al., CC-BY) whose two
raw FLAIRs are stored: ``mstools import-open-ms`` gives the increase-only ground truth on the
database's common grid, carried onto the raw follow-up's grid (inverse of study2's transform,
nearest neighbour, as ``data_samples/real-p01``); ``mstools run --baseline --followup`` runs on
the two raw scans; its final mask on the raw follow-up's grid (``new_lesions_mask_native``) is
scored (MSSEG-2 sensitivity / PPV / F1, LTPR / LFPR by any overlap, Dice). Development and
held-out patients are printed separately; run the held-out ones only once the choices are made.

  python benchmarks/real_raw_pairs.py CLONE --work W --patients 01 [03 12 19]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
from pathlib import Path

import numpy as np

COLUMNS = ("gt_lesions", "pred_lesions", "lesion_sensitivity", "lesion_ppv", "lesion_f1", "ltpr", "lfpr", "dice")


def _truth_on_raw_followup(clone: Path, case: Path, out: Path):
    import nibabel as nib

    from mstools.datasets.open_ms_data import read_database_transform
    from mstools.io import read_image, read_mask
    from mstools.preprocess.rigid import Grid, resample

    raw = clone / "longitudinal" / "raw" / case.name
    followup = read_image(raw / "study2_FLAIR.nii.gz")
    truth = read_mask(case / "ground_truth.nii.gz")
    to_raw = read_database_transform(raw / "study2_FLAIR_to_common_space.txt")  # common point -> raw point
    carried = resample(truth.data.astype(np.uint8), truth.affine, Grid(followup.shape, followup.affine),
                       np.linalg.inv(to_raw), interpolation="nearest") > 0
    nib.save(nib.Nifti1Image(carried.astype(np.uint8), followup.affine), str(out))
    return carried, followup.affine


def main() -> None:
    from mstools.datasets.open_ms_data import HELD_OUT_PATIENTS
    from mstools.io import read_mask
    from mstools.metrics.case import evaluate_case

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clone", type=Path)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--patients", nargs="+", default=["01"])
    args = parser.parse_args()
    args.work = args.work.resolve()
    groups: dict[str, list[dict]] = {}
    print("| patient | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS))
    for patient in args.patients:
        case = args.work / "cases" / f"patient{patient}"
        if not (case / "ground_truth.nii.gz").exists():
            subprocess.run(["mstools", "-q", "import-open-ms", str(args.clone), "-o", str(args.work / "cases"),
                            "--patient", patient], check=True, stdout=subprocess.DEVNULL)
        truth_path = args.work / f"ground_truth_raw_{patient}.nii.gz"
        truth, affine = _truth_on_raw_followup(args.clone, case, truth_path)
        raw = args.clone / "longitudinal" / "raw" / f"patient{patient}"
        out = args.work / f"run-{patient}"
        if not (out / "run.json").exists():
            subprocess.run(["mstools", "-q", "run", "--baseline", str(raw / "study1_FLAIR.nii.gz"), "--followup",
                            str(raw / "study2_FLAIR.nii.gz"), "--ground-truth", str(truth_path), "-o", str(out)],
                           check=True, stdout=subprocess.DEVNULL)
        m = evaluate_case(read_mask(out / "new_lesions_mask_native.nii.gz").data > 0, truth, affine=affine).metrics
        held_out = patient in HELD_OUT_PATIENTS
        groups.setdefault("held-out" if held_out else "development", []).append(m)
        print(f"| {patient}{' (held-out)' if held_out else ''} | " + " | ".join(f"{float(m[k]):.3g}" for k in COLUMNS)
              + " |", flush=True)
    for group, rows in groups.items():
        mean = {k: statistics.fmean(float(r[k]) for r in rows if not np.isnan(float(r[k]))) for k in COLUMNS}
        print(f"| mean, {group} ({len(rows)}) | " + " | ".join(f"{mean[k]:.3f}" for k in COLUMNS) + " |")


if __name__ == "__main__":
    main()
