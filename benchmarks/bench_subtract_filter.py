"""Time and peak memory of `subtract` and of the filter's features on one 1 mm case.

Run: python benchmarks/bench_subtract_filter.py CASE_DIR   (a 1 mm case from mstools simulate)
Prints the time of each rule, and of the per-candidate features (pyradiomics shape,
contrast, distances) for the candidates of the most prolific rule, to show the cost
of a few hundred candidates.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

from mstools import case_layout as layout
from mstools.filtering import candidate_features, csf_and_white_matter
from mstools.io import read_image, read_mask
from mstools.subtraction import RULES, detect


def main(case: Path) -> None:
    baseline = read_image(case / layout.BASELINE)
    followup = read_image(case / layout.FOLLOWUP).data
    brain = read_mask(case / layout.BRAIN_MASK).data > 0
    print(f"case {case} grid {baseline.shape} spacing {tuple(round(s, 2) for s in baseline.spacing_mm)}")
    results = {}
    for rule in RULES:
        t0 = time.perf_counter()
        results[rule] = detect(baseline.data, followup, brain, affine=baseline.affine, rule=rule)
        print(f"subtract --rule {rule:9s} {time.perf_counter() - t0:6.2f} s  "
              f"{len(results[rule].detections.table):5d} candidates")
    rule = max(results, key=lambda r: len(results[r].detections.table))
    detections = results[rule].detections
    t0 = time.perf_counter()
    csf, wm = csf_and_white_matter(baseline.data, brain, None)
    rows = candidate_features(detections.labels, baseline=baseline.data, followup=followup, brain=brain,
                              affine=baseline.affine, csf=csf, score=detections.score, white_matter=wm)
    elapsed = time.perf_counter() - t0
    print(f"filter features ({rule} candidates): {elapsed:6.2f} s for {len(rows)} candidates "
          f"({1000 * elapsed / max(len(rows), 1):.1f} ms each incl. the two distance maps)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
