"""The learned filter's threshold swept over finished `mstools run` folders, at no recomputation.

Each run's ``filter/filter_features.tsv`` holds every candidate's probability; keeping the
candidates at or above P (instead of the card's threshold) gives the filter's mask at P,
scored against the case's ground truth (MSSEG-2 lesion F1, LTPR, LFPR by any overlap, Dice).
The runs' final stage (activity) only removes growths of baseline lesions, so the filter's
figures are the chain's up to those.

  python benchmarks/filter_threshold_sweep.py --cases CASE ... --runs RUN ... [--p 0.3 0.4 ...]
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

import numpy as np

METRICS = ("lesion_f1", "ltpr", "lfpr", "dice")


def _probabilities(run: Path) -> dict[int, float]:
    with open(run / "filter" / "filter_features.tsv", newline="") as handle:
        return {int(row["label"]): float(row["probability"]) for row in csv.DictReader(handle, delimiter="\t")}


def main() -> None:
    from mstools.io import read_labels, read_mask
    from mstools.metrics.case import evaluate_case

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path, nargs="+", required=True)
    parser.add_argument("--runs", type=Path, nargs="+", required=True)
    parser.add_argument("--p", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    args = parser.parse_args()
    if len(args.cases) != len(args.runs):
        raise SystemExit("give one run per case")
    results: dict[float, list[dict]] = {p: [] for p in args.p}
    for case, run in zip(args.cases, args.runs):
        labels = read_labels(run / "refine" / "refine_labels.nii.gz")
        truth = read_mask(case / "ground_truth.nii.gz")
        probability = _probabilities(run)
        ids = np.array(sorted(probability), dtype=np.int64)
        values = np.array([probability[i] for i in ids])
        for p in args.p:
            kept = np.isin(labels.data, ids[values >= p])
            results[p].append(evaluate_case(kept, truth.data > 0, affine=truth.affine).metrics)
    print(f"{len(args.cases)} cases\n| filter probability | lesion F1 | LTPR | LFPR | Dice |\n|---|---|---|---|---|")
    for p, rows in results.items():
        mean = [statistics.fmean(float(r[k]) for r in rows if not np.isnan(float(r[k]))) for k in METRICS]
        print(f"| {p:g} | " + " | ".join(f"{v:.3f}" for v in mean) + " |")


if __name__ == "__main__":
    main()
