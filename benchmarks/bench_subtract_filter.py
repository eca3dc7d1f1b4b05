"""Time and peak memory of `subtract` and of the filter's features on one 1 mm case.

Run: python benchmarks/bench_subtract_filter.py CASE_DIR   (a 1 mm case from mstools simulate)
Prints the time of each rule, of the per-candidate features (pyradiomics shape,
contrast, distances) for the candidates of the most prolific rule and for a few
hundred candidates (larosa with a low fixed threshold; run it on a hard case), and of the whole commands
(`mstools subtract`, `mstools filter`, I/O and process start included).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mstools import case_layout as layout
from mstools.candidates.filtering import candidate_features, csf_and_white_matter
from mstools.io import read_image, read_mask
from mstools.detect.subtraction import RULES, detect


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
    loose = f"larosa threshold={LOOSE_THRESHOLD}"
    results[loose] = detect(baseline.data, followup, brain, affine=baseline.affine, rule="larosa",
                            threshold=LOOSE_THRESHOLD)
    csf, wm = csf_and_white_matter(baseline.data, brain, None)
    for name in (rule, loose):
        detections = results[name].detections
        t0 = time.perf_counter()
        rows = candidate_features(detections.labels, baseline=baseline.data, followup=followup, brain=brain,
                                  affine=baseline.affine, csf=csf, score=detections.score, white_matter=wm)
        elapsed = time.perf_counter() - t0
        print(f"filter features ({name} candidates): {elapsed:6.2f} s for {len(rows)} candidates "
              f"({1000 * elapsed / max(len(rows), 1):.1f} ms each incl. the two distance maps)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        for label, args in ((f"mstools subtract ({loose})",
                             ["subtract", str(case), "-o", f"{tmp}/s", "--rule", "larosa", "--threshold",
                              str(LOOSE_THRESHOLD)]),
                            ("mstools filter (rules)", ["filter", str(case), "--candidates", f"{tmp}/s", "-o", f"{tmp}/f"])):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mstools_cli.main", "-q", *args], check=True, stdout=subprocess.DEVNULL)
            print(f"{label:40s} {time.perf_counter() - t0:6.2f} s whole command (process start and I/O included)")


#: Low enough to give a few hundred candidates on a hard 1 mm simulated case
#: (`mstools simulate --misalign-mm 0.6 --misalign-deg 0.6 --bias 0.3 ...`).
LOOSE_THRESHOLD = 1.2


if __name__ == "__main__":
    main(Path(sys.argv[1]))
