"""True and false candidates of a detector, side by side in the learned filter's own features, per domain.

For each case folder given: the candidates of ``--candidates`` (``CASE/PREFIX_labels.nii.gz``) and
the rows ``mstools filter apply --learned`` wrote for them (``CASE/FEATURES_features.tsv``, with
its ``probability``). A candidate is true when more than ``--hit`` of its voxels are in the case's
ground truth. Cases are grouped by the first part of their folder name (``pp_cases-...``,
``filled-...``: the names `benchmarks/train_mixed_domain.py` gives its mirrored cases). Prints,
per group and kind, the count and the medians (interquartile range for the difference) of the
difference mean, neighbour contrast, volume and filter probability: whether small real lesions
differ from small artefacts in what the filter sees (issue "Real clinical scans").

Run (on the validation cases of `bash benchmarks/retrain_mixed_domain.sh BG CASES WORK`):
  python benchmarks/candidate_profile.py WORK/models/xs-xs26-0 ... [--candidates refine --features filterlearned]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

COLUMNS = ("difference_mean", "neighbour_contrast", "volume_mm3", "probability")


def _group(case: Path) -> str:
    return case.name.split("-")[0]


def main() -> None:
    from mstools import case_layout as layout
    from mstools.io import read_labels, read_mask

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", type=Path)
    parser.add_argument("--candidates", default="refine", help="labels prefix inside each case folder")
    parser.add_argument("--features", default="filterlearned", help="features prefix inside each case folder")
    parser.add_argument("--hit", type=float, default=0.1, help="fraction of a candidate's voxels in the truth")
    args = parser.parse_args()
    groups: dict[tuple[str, bool], list[list[float]]] = {}
    for case in args.cases:
        truth = read_mask(case / layout.GROUND_TRUTH).data > 0
        labels = read_labels(case / f"{args.candidates}_labels.nii.gz").data
        with open(case / f"{args.features}_features.tsv", newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                inside = labels == int(row["label"])
                true = bool(inside.any()) and float(truth[inside].mean()) > args.hit
                groups.setdefault((_group(case), true), []).append([float(row[c]) for c in COLUMNS])
    print("| group | kind | candidates | difference mean (IQR) | neighbour contrast | volume mm3 | probability |")
    print("|---|---|---|---|---|---|---|")
    for (group, true), values in sorted(groups.items()):
        a = np.asarray(values)
        q1, med, q3 = np.percentile(a[:, 0], [25, 50, 75])
        print(f"| {group} | {'true' if true else 'false'} | {len(a)} | {med:.2f} ({q1:.2f}-{q3:.2f}) | "
              f"{np.median(a[:, 1]):.2f} | {np.median(a[:, 2]):.0f} | {np.median(a[:, 3]):.2f} |")


if __name__ == "__main__":
    main()
