"""Sweep each subtraction rule's main parameter on simulated cases; print detection figures.

The defaults in mstools/detect/subtraction.py that the papers do not fix (or that depend on a
preprocessing chain we do not reproduce) were chosen from this script's output.

Run: python benchmarks/calibrate_subtract.py CASE_DIR [CASE_DIR ...]
(make cases with: mstools simulate sims/cal --cases 8 --seed 500)
"""

from __future__ import annotations

import sys
from pathlib import Path


from mstools import case_layout as layout
from mstools.io import read_image, read_mask
from mstools.metrics import evaluate_case
from mstools.detect.subtraction import detect

SWEEPS = {
    "prados": ("k", (2.5, 3.0, 3.5, 4.0, 4.5)),
    "larosa": ("threshold", (0.8, 1.0, 1.25, 1.5, 2.0)),
    "hamzaoui": ("ratio_threshold", (1.15, 1.3)),
}


def main(folders: list[Path]) -> None:
    cases = []
    for folder in folders:
        baseline = read_image(folder / layout.BASELINE)
        cases.append((folder.name, baseline, read_image(folder / layout.FOLLOWUP).data,
                      read_mask(folder / layout.BRAIN_MASK).data > 0, read_mask(folder / layout.GROUND_TRUTH).data))
    print(f"{len(cases)} cases: {', '.join(c[0] for c in cases)}")
    print("rule      parameter         lesion_sens  detected/gt  fp_per_case  lesion_F1(pooled)")
    for rule, (name, values) in SWEEPS.items():
        for value in values:
            detected = truth = false_pos = predicted_true = predicted = 0
            nmis = []
            for _, baseline, followup, brain, gt in cases:
                result = detect(baseline.data, followup, brain, affine=baseline.affine, rule=rule, **{name: value})
                m = evaluate_case(result.detections.mask, gt, affine=baseline.affine).metrics
                detected += m["msseg2_detected"]
                truth += m["gt_lesions"]
                false_pos += m["msseg2_fp"]
                predicted_true += m["msseg2_tp_pred"]
                predicted += m["pred_lesions"]
                if "nmi" in result.details:
                    nmis.append(result.details["nmi"])
            sens = detected / truth if truth else float("nan")
            ppv = predicted_true / predicted if predicted else 0.0
            f1 = 2 * sens * ppv / (sens + ppv) if sens + ppv > 0 else 0.0
            print(f"{rule:9s} {name}={value:<12} {sens:10.2f}  {detected:4d}/{truth:<4d}  "
                  f"{false_pos / len(cases):10.1f}  {f1:10.3f}")
            if nmis:
                print(f"{'':9s} NMI per case: {' '.join(f'{v:.3f}' for v in nmis)}")


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]])
