"""Lesions as connected components, and the detections every detector returns.

The files a detector writes for them (``P_score``, ``P_mask``, ``P_labels``,
``P_lesions.tsv``) are described, written and read by :mod:`mstools.detections`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# The output contract (file names, columns) has one home: mstools.detections.
from mstools.detections import (  # noqa: F401  (re-exported)
    LABELS_SUFFIX, LESION_COLUMNS, MASK_SUFFIX, SCORE_SUFFIX, TABLE_SUFFIX, output_paths,
)

#: Face (6), edge (18) or vertex (26) neighbourhoods in 3D.
CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}


def structure(connectivity: int) -> np.ndarray:
    """The 3x3x3 structuring element of a 6-, 18- or 26-neighbourhood."""
    if connectivity not in CONNECTIVITY_RANK:
        raise ValueError(f"connectivity must be 6, 18 or 26, not {connectivity}")
    return ndimage.generate_binary_structure(3, CONNECTIVITY_RANK[connectivity])


def label_components(mask: np.ndarray, *, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Label connected components; returns (int32 labels, count), labels 1..count."""
    labels, count = ndimage.label(np.asarray(mask) > 0, structure=structure(connectivity))
    return labels.astype(np.int32, copy=False), int(count)


def component_sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Voxel count of labels 0..count (index 0 is background)."""
    return np.bincount(labels.ravel(), minlength=count + 1)


def relabel_kept(labels: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels 0..count kept where ``keep`` (indexed by label; index 0 ignored), relabelled 1..n."""
    keep = np.asarray(keep, dtype=bool).copy()
    keep[0] = False
    new_index = np.zeros(keep.size, dtype=np.int32)
    new_index[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_index[labels], int(keep.sum())


def remove_small(labels: np.ndarray, count: int, min_voxels: int) -> tuple[np.ndarray, int]:
    """Drop components with fewer than ``min_voxels`` voxels and relabel 1..n."""
    return relabel_kept(labels, component_sizes(labels, count) >= min_voxels)


@dataclass(frozen=True)
class Detections:
    """A detector's result in the common convention (arrays on the reference grid)."""

    score: np.ndarray   # float32
    mask: np.ndarray    # uint8
    labels: np.ndarray  # int32
    table: list[dict]


def lesion_table(labels: np.ndarray, affine: np.ndarray, *, score: np.ndarray | None = None) -> list[dict]:
    """One row per label 1..max: size, volume (|det affine| per voxel), centroids, score statistics.

    Only the labelled voxels are visited (bincount and sorted reductions), so the cost
    follows the lesion load, not the volume.
    """
    flat = np.flatnonzero(labels)
    if flat.size == 0:
        return []
    lab = labels.ravel()[flat].astype(np.int64)
    count = int(lab.max())
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    sizes = np.bincount(lab, minlength=count + 1)
    coords = np.unravel_index(flat, labels.shape)
    present = sizes > 0
    centroids = np.zeros((count + 1, 3))
    for axis, c in enumerate(coords):
        centroids[present, axis] = np.bincount(lab, weights=c, minlength=count + 1)[present] / sizes[present]
    if score is not None:
        values = np.asarray(score).ravel()[flat].astype(np.float64)
        means = np.zeros(count + 1)
        means[present] = np.bincount(lab, weights=values, minlength=count + 1)[present] / sizes[present]
        order = np.argsort(lab, kind="stable")
        starts = np.searchsorted(lab[order], np.flatnonzero(present))
        maxima = np.zeros(count + 1)
        minima = np.zeros(count + 1)
        maxima[present] = np.maximum.reduceat(values[order], starts)
        minima[present] = np.minimum.reduceat(values[order], starts)
    rows = []
    for label in np.flatnonzero(present):
        ijk = centroids[label]
        xyz = affine[:3, :3] @ ijk + affine[:3, 3]
        rows.append({
            "label": int(label),
            "voxels": int(sizes[label]),
            "volume_mm3": float(sizes[label] * voxel_mm3),
            "centroid_i": float(ijk[0]), "centroid_j": float(ijk[1]), "centroid_k": float(ijk[2]),
            "centroid_x_mm": float(xyz[0]), "centroid_y_mm": float(xyz[1]), "centroid_z_mm": float(xyz[2]),
            "score_mean": float(means[label]) if score is not None else None,
            "score_max": float(maxima[label]) if score is not None else None,
            "score_min": float(minima[label]) if score is not None else None,
        })
    return rows


def detections_from_mask(mask: np.ndarray, score: np.ndarray, affine: np.ndarray, *,
                         connectivity: int = 26) -> Detections:
    """Label a binary detection mask and tabulate its lesions with their scores."""
    labels, _ = label_components(np.asarray(mask) > 0, connectivity=connectivity)
    return detections_from_labels(labels, score, affine)


def detections_from_labels(labels: np.ndarray, score: np.ndarray, affine: np.ndarray) -> Detections:
    """Detections from an already labelled map (labels 1..n, one per lesion)."""
    labels = np.asarray(labels, dtype=np.int32)
    return Detections(
        score=np.asarray(score, dtype=np.float32),
        mask=(labels > 0).astype(np.uint8),
        labels=labels,
        table=lesion_table(labels, affine, score=score),
    )


