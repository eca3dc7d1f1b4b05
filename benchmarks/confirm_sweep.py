"""Two detectors agreeing: the chain's lesions kept only where a network's score reaches T.

For each case folder (with ``ground_truth.nii.gz``) the chain's final lesions (CASE/NAME_mask.nii.gz,
e.g. the learned filter's output written by benchmarks/train_mixed_domain.py) are kept when the
maximum of a segmentation network's score inside them reaches each threshold, as
``mstools filter --confirm`` does, and scored lesion-wise as benchmarks/real_scans.py scores
(mean over cases). The network's score maps are made with ``mstools segment`` into WORK when
they are not there yet. Give only cases that neither the chain's models nor the network's
weights were trained on (their cards list the training cases).

Run:
  python benchmarks/confirm_sweep.py CASE ... --chain filterlearned --model multitask --work W \
      [--thresholds 0 0.05 0.1 0.2 0.3 0.5]
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np

KEYS = ("lesion_f1", "ltpr", "lfpr", "dice")


def score_map(case: Path, model: str, work: Path) -> Path:
    prefix = work / case.name / model
    path = Path(str(prefix) + "_score.nii.gz")
    if not path.is_file():
        (work / case.name).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mstools", "-q", "segment", str(case), "--model", model, "-o", str(prefix)], check=True,
                       stdout=subprocess.DEVNULL)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", type=Path)
    parser.add_argument("--chain", default="filterlearned", help="The chain's output name in each case folder.")
    parser.add_argument("--model", default="multitask", help="The confirming network (mstools segment --model).")
    parser.add_argument("--work", type=Path, required=True, help="Where the network's score maps go.")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.3, 0.5])
    args = parser.parse_args()

    from scipy import ndimage

    from mstools.io import read_image, read_mask
    from mstools.metrics.case import evaluate_case

    results = {t: [] for t in args.thresholds}
    for case in args.cases:
        truth = read_mask(case / "ground_truth.nii.gz")
        chain = read_mask(case / f"{args.chain}_mask.nii.gz").data > 0
        score = read_image(score_map(case, args.model, args.work)).data
        labels, count = ndimage.label(chain, np.ones((3, 3, 3), bool))
        highest = ndimage.maximum(score, labels, index=np.arange(count + 1)) if count else np.zeros(1)
        for t in args.thresholds:
            keep = np.asarray(highest) >= t
            keep[0] = False
            metrics = evaluate_case(keep[labels], truth.data > 0, affine=truth.affine).metrics
            results[t].append({k: metrics[k] for k in KEYS})
            print(f"{case.name:40s} T={t:<5g} " + " ".join(f"{k}={metrics[k]:.3f}" for k in KEYS), flush=True)
    print(f"\n{len(args.cases)} cases, chain {args.chain} confirmed by {args.model} (mean over cases; T=0: unconfirmed)")
    print("| T | lesion F1 | LTPR | LFPR | Dice |\n|---|---|---|---|---|")
    for t, rows in results.items():
        mean = {k: float(np.nanmean([r[k] for r in rows])) for k in KEYS}
        print(f"| {t:g} | {mean['lesion_f1']:.3f} | {mean['ltpr']:.3f} | {mean['lfpr']:.3f} | {mean['dice']:.3f} |")


if __name__ == "__main__":
    main()
