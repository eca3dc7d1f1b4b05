"""Case folders in the domain `mstools run --baseline --followup` sees: simulated raw pairs
put through `mstools preprocess` (brain extraction, N4, registration into the halfway
space, harmonisation), with the ground truth carried along.

For each CASE (a `mstools simulate` folder) the raw scans are ``flair_time0X_raw.nii.gz``
when the simulator wrote them (2D acquisitions) and the case's FLAIRs otherwise; the
ground truth lies on the follow-up's grid and is carried with preprocess's own follow-up
transform (``--followup-lesions``). Writes OUT/<parent>-<case>/ with the preprocessed
case and its ``ground_truth.nii.gz``.

Run: python benchmarks/preprocessed_cases.py CASE [CASE ...] --out OUT
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def raw_scans(case: Path) -> tuple[Path, Path]:
    pick = lambda t: (case / f"flair_time0{t}_raw.nii.gz" if (case / f"flair_time0{t}_raw.nii.gz").exists()
                      else case / f"flair_time0{t}_on_middle_space.nii.gz")
    return pick(1), pick(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    for case in args.cases:
        target = args.out / f"{case.parent.name}-{case.name}"
        if (target / "ground_truth.nii.gz").exists():
            continue
        baseline, followup = raw_scans(case)
        done = subprocess.run(["mstools", "-q", "preprocess", str(baseline), str(followup), str(target),
                               "--followup-lesions", str(case / "ground_truth.nii.gz"), "--force"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{case}: {done.stderr.strip()}")
        (target / "ground_truth.nii.gz").symlink_to("lesions_time02.nii.gz")
        print(f"preprocessed: {target}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
