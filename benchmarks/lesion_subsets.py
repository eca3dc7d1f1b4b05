"""Split a lesion mask into a seeded random third of its lesions ("new") and the rest
("stable"), for `mstools simulate --background-new-lesions` / `--background-lesions`.

Lesions are 26-connected components; only those of NEW_VOLUME_MM3 can be drawn as new
(the range of `simulate`'s new lesions, 10-400 mm3, widened to 5-1000 mm3 so that real
larger new lesions also occur).

Run: python benchmarks/lesion_subsets.py LESIONS.nii.gz OUT_FOLDER --seed N
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from mstools.io import OutputBatch, read_mask

NEW_SHARE = 1 / 3
NEW_VOLUME_MM3 = (5.0, 1000.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lesions", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()
    mask = read_mask(args.lesions)
    labels, count = ndimage.label(mask.data > 0, structure=np.ones((3, 3, 3), dtype=bool))
    volumes = np.bincount(labels.ravel())[1:] * mask.voxel_volume_mm3
    eligible = np.flatnonzero((volumes >= NEW_VOLUME_MM3[0]) & (volumes <= NEW_VOLUME_MM3[1])) + 1
    rng = np.random.default_rng(args.seed)
    chosen = rng.choice(eligible, size=max(1, round(NEW_SHARE * len(eligible))), replace=False)
    new = np.isin(labels, chosen)
    with OutputBatch(create_dirs=True) as batch:
        batch.image(args.out / "new.nii.gz", new, mask, np.uint8)
        batch.image(args.out / "stable.nii.gz", (labels > 0) & ~new, mask, np.uint8)
    print(f"{args.out}: {len(chosen)} of {count} lesions new")


if __name__ == "__main__":
    main()
