"""The detector output contract: file names, writing and reading (one home, issue 14).

Every detector (``subtract``, ``register``, ``refine``, ``segment``, ``filter``) writes,
for an output prefix ``P``, the same four files, so that ``filter``, ``refine``,
``evaluate``, the pipeline and the reports accept the output of any of them:

=====================  ==========  ===========================================
``P_score.nii.gz``     float32     score or probability map, same grid
``P_mask.nii.gz``      uint8       binary detection mask
``P_labels.nii.gz``    int32       one label per connected lesion (0 = none)
``P_lesions.tsv``      table       one row per lesion (see ``LESION_COLUMNS``)
=====================  ==========  ===========================================

Each image and table gets a provenance sidecar (``x.nii.gz`` -> ``x.json``).
Light to import: NumPy and the readers are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from mstools.errors import InputError

SCORE_SUFFIX = "_score.nii.gz"
MASK_SUFFIX = "_mask.nii.gz"
LABELS_SUFFIX = "_labels.nii.gz"
TABLE_SUFFIX = "_lesions.tsv"

LESION_COLUMNS = (
    "label", "voxels", "volume_mm3",
    "centroid_i", "centroid_j", "centroid_k",        # voxel indices (array axes)
    "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",  # world coordinates from the affine
    "score_mean", "score_max", "score_min",
)


def output_paths(prefix: str) -> dict[str, str]:
    """The four file names of the common convention for an output prefix."""
    return {
        "score": prefix + SCORE_SUFFIX,
        "mask": prefix + MASK_SUFFIX,
        "labels": prefix + LABELS_SUFFIX,
        "table": prefix + TABLE_SUFFIX,
    }


# ----------------------------------------------------------------------------- writing


def add_image(batch, path, data, reference, dtype, record: Mapping) -> None:
    """Queue an image and its provenance sidecar in an OutputBatch."""
    from mstools.provenance import sidecar_path

    batch.image(path, data, reference, dtype)
    batch.json(sidecar_path(path), record)


def add_table(batch, path, rows, columns, record: Mapping) -> None:
    """Queue a TSV table and its provenance sidecar in an OutputBatch."""
    from mstools.provenance import sidecar_path

    batch.table(path, rows, columns)
    batch.json(sidecar_path(path), record)


def add_detections(batch, prefix: str, detections, reference, record: Mapping, *,
                   table: list | None = None, columns: Iterable[str] | None = None) -> None:
    """Queue a detector's common outputs (PREFIX_score, _mask, _labels, _lesions.tsv) with
    their sidecars. ``table``/``columns`` replace the standard lesion table when a detector
    adds columns of its own."""
    import numpy as np

    names = output_paths(prefix)
    add_image(batch, names["score"], detections.score, reference, np.float32, record)
    add_image(batch, names["mask"], detections.mask, reference, np.uint8, record)
    add_image(batch, names["labels"], detections.labels, reference, np.int32, record)
    add_table(batch, names["table"], detections.table if table is None else table,
              LESION_COLUMNS if columns is None else tuple(columns), record)


# ----------------------------------------------------------------------------- reading


def read_candidates(prefix: str, reference, *, hint: str = "give the output prefix of a detector, "
                                                             "e.g. --candidates CASE/subtract"):
    """A detector's candidates on ``reference``'s grid: (int32 labels, score or None, files read).

    Labels come from ``P_labels``, else ``P_mask`` labelled 26-connected; the score from
    ``P_score`` when there is one.
    """
    import numpy as np

    from scipy import ndimage

    from mstools.io import check_same_grid, read_image, read_labels, read_mask

    used = []
    if Path(prefix + LABELS_SUFFIX).is_file():
        labels_img = read_labels(prefix + LABELS_SUFFIX)
        check_same_grid(reference, labels_img)
        if labels_img.data.min() < 0:
            raise InputError(f"{labels_img.name}: negative labels; a lesion label map (0 = background) was expected")
        labels = labels_img.data.astype(np.int32)
        used.append(prefix + LABELS_SUFFIX)
    elif Path(prefix + MASK_SUFFIX).is_file():
        mask_img = read_mask(prefix + MASK_SUFFIX)
        check_same_grid(reference, mask_img)
        # 26-connected, as mstools.lesions.label_components (which imports this module's names)
        labels = ndimage.label(mask_img.data > 0, structure=np.ones((3, 3, 3), bool))[0].astype(np.int32, copy=False)
        used.append(prefix + MASK_SUFFIX)
    else:
        raise InputError(f"{prefix}{LABELS_SUFFIX} (or {MASK_SUFFIX}) not found; {hint}")
    score = None
    if Path(prefix + SCORE_SUFFIX).is_file():
        score_img = read_image(prefix + SCORE_SUFFIX)
        check_same_grid(reference, score_img)
        score = score_img.data
        used.append(prefix + SCORE_SUFFIX)
    return labels, score, used


def read_lesion_table(prefix: str) -> list[dict]:
    """The rows of ``P_lesions.tsv``."""
    from mstools.io import read_tsv

    return read_tsv(output_paths(prefix)["table"])


def detector_record(prefix: str) -> dict | None:
    """The command and parameters a detector recorded in its sidecar, when it wrote one."""
    import json

    from mstools.provenance import sidecar_path

    for suffix in (LABELS_SUFFIX, MASK_SUFFIX):
        side = sidecar_path(prefix + suffix)
        if side.is_file():
            try:
                record = json.loads(side.read_text())
                return {"command": record.get("command"), "parameters": record.get("parameters")}
            except (OSError, json.JSONDecodeError):
                return None
    return None
