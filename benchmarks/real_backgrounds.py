"""Real scans as simulation backgrounds: single FLAIRs with brain masks, from a local
clone of open_ms_data (development data only; held-out longitudinal patients refused).

Writes, under OUT:

* ``lesion_library/``: the cross-sectional database's consensus lesion masks (MNI, all
  30 patients; links), the shapes `mstools simulate --lesion-library` draws from;
* ``xs-patientNN/``: the cross-sectional MNI FLAIRs that are stored (07, 19, 26), with
  a brain mask (the scans are skull-stripped: FLAIR > 0, holes filled) and their lesions;
* ``single-patientNN-studyY/``: longitudinal visits stored without their pair (04, 09,
  20): the raw 2D FLAIR on the database's common grid and its brain mask;
* ``changes/patientNN.nii.gz``: the change masks of those visits' patients (links; on the
  same common grid), the lesions `simulate --background-new-lesions` fills in at baseline;
* ``real-patientNN/``: development pairs (01) as `mstools import-open-ms` writes them.

Run: python benchmarks/real_backgrounds.py ~/open_ms_data OUT
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from mstools.datasets import open_ms_data as omd
from mstools.io import OutputBatch, read_image, read_mask

CROSS_SECTIONAL_FLAIRS = ("07", "19", "26")
SINGLE_VISITS = (("04", "study1"), ("09", "study2"), ("20", "study2"))
DEVELOPMENT_PAIRS = ("01",)


def main() -> None:
    clone, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    mni = clone / "cross_sectional" / "MNI"
    library = out / "lesion_library"
    library.mkdir(exist_ok=True)
    for mask in sorted(mni.glob("patient*/GOLD_STANDARD*.nii.gz")):
        link = library / f"{mask.parent.name}.nii.gz"
        if not link.exists():
            link.symlink_to(mask.resolve())
    for patient in CROSS_SECTIONAL_FLAIRS:
        folder = out / f"xs-patient{patient}"
        if folder.exists():
            continue
        flair = read_image(next((mni / f"patient{patient}").glob("FLAIR_*.nii.gz")))
        lesions = read_mask(next((mni / f"patient{patient}").glob("GOLD_STANDARD*.nii.gz")))
        brain = ndimage.binary_fill_holes(ndimage.binary_closing(flair.data > 0, iterations=2))
        with OutputBatch(create_dirs=True) as batch:
            batch.image(folder / "flair.nii.gz", flair.data, flair, np.float32)
            batch.image(folder / "brain_mask.nii.gz", brain, flair, np.uint8)
            batch.image(folder / "lesions.nii.gz", lesions.data > 0, flair, np.uint8)
    (out / "changes").mkdir(exist_ok=True)
    for patient, study in SINGLE_VISITS:
        assert patient not in omd.HELD_OUT_PATIENTS
        link = out / "changes" / f"patient{patient}.nii.gz"
        if not link.exists():
            link.symlink_to((clone / "longitudinal" / "coregistered" / f"patient{patient}" / "gt.nii.gz").resolve())
        folder = out / f"single-patient{patient}-{study}"
        if folder.exists():
            continue
        root = clone / "longitudinal"
        brain = read_mask(root / "coregistered" / f"patient{patient}" / "brainmask.nii.gz")
        raw = read_image(root / "raw" / f"patient{patient}" / f"{study}_FLAIR.nii.gz")
        flair = omd.resample_onto(raw, brain, root / "raw" / f"patient{patient}" / f"{study}_FLAIR_to_common_space.txt")
        with OutputBatch(create_dirs=True) as batch:
            batch.image(folder / "flair.nii.gz", flair, brain, np.float32)
            batch.image(folder / "brain_mask.nii.gz", brain.data > 0, brain, np.uint8)
    for patient in DEVELOPMENT_PAIRS:
        if not (out / f"real-patient{patient}").exists():
            subprocess.run(["mstools", "-q", "import-open-ms", str(clone), "-o", str(out / "pairs"),
                            "--patient", patient], check=True, stdout=subprocess.DEVNULL)
            (out / f"real-patient{patient}").symlink_to((out / "pairs" / f"patient{patient}").resolve())


if __name__ == "__main__":
    main()
