"""T1/T2 -> FLAIR registration of `preprocess` on real scans, against the database's own transforms.

The longitudinal database of open_ms_data (Lesjak et al.) stores, for each visit with a T1W and
a T2W, the intra-study transform of each onto that visit's FLAIR (`studyN_T1W_intrastudy_to_FLAIR.txt`,
an ITK affine made by the database's authors). This runs `mstools preprocess` on a patient's raw
FLAIRs with its raw T1W/T2W of both visits (`--baseline-t1` ...), reads the rigid transform each
sequence got (preprocess_report.json, `sequences.*.flair_to_sequence_ras`) and prints how far it
places points from where the database's transform places them, on a 9 x 9 x 9 grid of points
filling the 120 mm cube at the centre of the FLAIR (mean and largest distance, mm), and how far
each transform moves those points at all. Development patients only (01): the held-out 03, 12
and 19 are refused.

Run:
  python benchmarks/sequence_registration_real.py /path/to/open_ms_data --work /tmp/seqreg [--patient 01]
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np

#: Half the side of the cube of points compared (mm): 120 mm covers a brain's central part.
HALF_SIDE_MM = 60.0
POINTS_PER_AXIS = 9


def main() -> None:
    from mstools.datasets.open_ms_data import HELD_OUT_PATIENTS
    from mstools.io import read_image, read_transform

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clone", type=Path, help="local clone of muschellij2/open_ms_data")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--patient", default="01")
    args = parser.parse_args()
    if args.patient in HELD_OUT_PATIENTS:
        raise SystemExit(f"patient {args.patient} is held out (issue 'Real clinical scans'): not used here")
    raw = args.clone / "longitudinal" / "raw" / f"patient{args.patient}"
    out = args.work / f"patient{args.patient}"
    flairs = [raw / f"study{s}_FLAIR.nii.gz" for s in (1, 2)]
    sequences = {f"{seq[:2].lower()}_time0{s}": (raw / f"study{s}_{seq}.nii.gz", raw / f"study{s}_{seq}_intrastudy_to_FLAIR.txt", s)
                 for seq in ("T1W", "T2W") for s in (1, 2)}
    missing = [p for p in [*flairs, *(p for v in sequences.values() for p in v[:2])] if not p.is_file()]
    if missing:
        raise SystemExit(f"not in the clone: {', '.join(map(str, missing))}")
    if not (out / "preprocess_report.json").is_file():
        options = [a for key, (path, _, _) in sequences.items()
                   for a in (f"--{'baseline' if key.endswith('1') else 'followup'}-{key[:2]}", str(path))]
        subprocess.run(["mstools", "-q", "preprocess", *map(str, flairs), str(out), *options, "--force"],
                       check=True, stdout=subprocess.DEVNULL)
    report = json.loads((out / "preprocess_report.json").read_text())["sequences"]
    print(f"patient {args.patient}: T1W/T2W -> FLAIR, mstools preprocess (rigid) vs the database's transform (affine); "
          f"{POINTS_PER_AXIS}^3 points in the central {2 * HALF_SIDE_MM:.0f} mm cube of the FLAIR")
    print("| sequence | distance mean (mm) | distance max (mm) | database moves max (mm) | mstools moves max (mm) |")
    print("|---|---|---|---|---|")
    for key, (_, transform_file, study) in sequences.items():
        ours = np.asarray(report[key]["flair_to_sequence_ras"], dtype=np.float64)
        theirs = read_transform(transform_file)     # FLAIR point -> sequence point (ITK's convention)
        flair = read_image(flairs[study - 1])
        centre = flair.affine @ np.r_[(np.asarray(flair.shape) - 1) / 2.0, 1.0]
        axis = np.linspace(-HALF_SIDE_MM, HALF_SIDE_MM, POINTS_PER_AXIS)
        grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3) + centre[:3]
        points = np.c_[grid, np.ones(len(grid))].T
        apart = np.linalg.norm((ours @ points - theirs @ points)[:3], axis=0)
        moved = {name: np.linalg.norm((t @ points - points)[:3], axis=0).max() for name, t in (("db", theirs), ("ours", ours))}
        print(f"| {key} | {apart.mean():.2f} | {apart.max():.2f} | {moved['db']:.2f} | {moved['ours']:.2f} |")


if __name__ == "__main__":
    main()
