"""Sweep the peak condition (``--min-peak-sd``) of subtract's rules and of register; print
lesion-wise figures per level.

Each rule runs once per case with the condition off (every other setting at the command's
default), then its candidates are kept or dropped per level from their peak in the
subtraction (``mstools.detect.subtraction.keep_peaked``), as the commands do. Register is
scored from its outputs already written (``--register W/{case}/register``: the prefix of
``mstools register`` for each case folder's name), its candidates recomputed with the
condition off. The defaults ``MIN_PEAK_SD`` (subtraction.py) and ``DEFAULT_MIN_PEAK_SD``
(registration/detection.py) were chosen from this script's output on development cases.

Run:
  python benchmarks/candidate_peak.py CASE [CASE ...] [--levels 4 4.5 5 5.5] [--register 'W/{case}/register']
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mstools import case_layout as layout
from mstools.case import read_pair, resolve_case_inputs
from mstools.detect import subtraction
from mstools.detect.registration import detection
from mstools.io import read_image, read_mask
from mstools.lesions import label_components
from mstools.metrics.case import evaluate_case

KEYS = ("lesion_f1", "ltpr", "lfpr", "dice", "pred_lesions")


def scores_by_level(labels: np.ndarray, units: np.ndarray, truth, levels) -> dict:
    """level -> metrics of the candidates that peak at or above it (None: all of them)."""
    found = {}
    for level in (None, *levels):
        kept = labels if level is None else subtraction.keep_peaked(labels, units, level)
        metrics = evaluate_case(kept > 0, truth.data > 0, affine=truth.affine).metrics
        found[level] = [float(metrics[k]) for k in KEYS]
    return found


def subtract_rows(case: Path, rule: str, levels) -> dict:
    baseline, followup, brain = read_pair(*resolve_case_inputs(case, None, None, None))
    inside = brain.data > 0
    result = subtraction.detect(baseline.data, followup.data, inside, affine=baseline.affine, rule=rule,
                                min_peak_sd=0.0)
    units = subtraction.peak_units(result.subtraction, inside)
    return scores_by_level(result.detections.labels, units, read_mask(case / layout.GROUND_TRUTH), levels)


def register_rows(case: Path, prefix: Path, levels) -> dict:
    truth = read_mask(case / layout.GROUND_TRUTH)
    brain = read_mask(case / layout.BRAIN_MASK).data > 0
    followup = read_image(case / layout.FOLLOWUP).data
    difference = read_image(Path(str(prefix) + "_subtraction.nii.gz")).data
    min_voxels = detection.min_voxels_for(detection.DEFAULT_MIN_MM3, truth.voxel_volume_mm3)
    mask = detection.candidate_mask(difference, brain, threshold=detection.DEFAULT_THRESHOLD, min_voxels=min_voxels,
                                    followup=followup, hyperintense_sd=detection.DEFAULT_HYPERINTENSE_SD)
    labels, _ = label_components(mask, connectivity=detection.CANDIDATE_CONNECTIVITY)
    return scores_by_level(labels, subtraction.peak_units(difference, brain), truth, levels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", type=Path, help="Case folders with a ground truth.")
    parser.add_argument("--levels", nargs="+", type=float, default=[4.0, 4.5, 5.0, 5.5, 6.0])
    parser.add_argument("--rules", nargs="+", default=list(subtraction.RULES))
    parser.add_argument("--register", default=None, help="Prefix of each case's register outputs, with {case}.")
    args = parser.parse_args()
    table: dict = {}
    for case in args.cases:
        runs = {rule: subtract_rows(case, rule, args.levels) for rule in args.rules}
        if args.register:
            prefix = Path(args.register.format(case=case.name))
            if Path(str(prefix) + "_subtraction.nii.gz").is_file():
                runs["register"] = register_rows(case, prefix, args.levels)
        for name, by_level in runs.items():
            for level, values in by_level.items():
                table.setdefault((name, level), []).append(values)
        print(f"{case.name}: done", flush=True)
    print("\nmeans over cases (lesion F1, LTPR, LFPR by the library's evaluate_case; level None = off)")
    for (name, level), rows in table.items():
        mean = np.nanmean(np.array(rows, dtype=float), axis=0)
        figures = " ".join(f"{k}={v:.3f}" for k, v in zip(KEYS, mean))
        print(f"{name:9s} peak>={str(level):5s} n={len(rows):3d} {figures}")


if __name__ == "__main__":
    main()
