"""Surface distances in mm: Hausdorff, HD95 (two definitions) and average surface distance.

Surface: the voxels of a mask that have at least one of their 6 face neighbours
outside the mask, the volume edge counting as outside -- ``mask ^ erosion(mask)``
with scipy's 6-connected structuring element. This is the surface of medpy
(``__surface_distances``, connectivity 1) and of MONAI (``get_mask_edges``). Each
surface voxel gets the Euclidean distance, in mm with the voxel spacing of each
array axis, to the nearest surface voxel of the other mask.

With d(P->G) the distances from the prediction's surface and d(G->P) the reverse:

=============================  ==============================================  =============================
``hd_mm``                      max(max d(P->G), max d(G->P))                   medpy ``hd``, MONAI
``hd95_pooled_mm``             95th percentile of d(P->G) and d(G->P) pooled   medpy ``hd95``
``hd95_max_directed_mm``       max(95th pct of d(P->G), 95th pct of d(G->P))   MONAI, Metrics Reloaded
``hd95_mm``                    one of the two above, ``max-directed`` unless asked
``assd_mm``                    mean of d(P->G) and d(G->P) pooled              medpy >= 0.5 ``assd``, MONAI
                                                                              (symmetric), Heimann 2009, Anima
``assd_mean_of_directed_mm``   (mean d(P->G) + mean d(G->P)) / 2              medpy < 0.5 ``assd``, i.e. the
                                                                              mean of medpy ``asd`` both ways
=============================  ==============================================  =============================

The two ASSD differ when the surfaces have different sizes; published numbers
computed with medpy before 0.5 use the second. Percentiles interpolate linearly (numpy's and torch's default).

Default HD95 is ``max-directed``: it is the definition of the current consensus
(Metrics Reloaded, Maier-Hein et al. 2024) and of MONAI, it is symmetric in the two
masks, and at the 100th percentile it equals the Hausdorff distance; the pooled
definition lets the larger surface dominate. Both are always reported.

Empty masks: when either mask is empty there is no pair of surfaces and every
distance is n/a (NaN); medpy raises an error there and MONAI returns inf or NaN.

Speed: surface voxels are found by eroding each lesion inside its own bounding box
(exact: the other lesions and the far background do not change a voxel's face
neighbours), and nearest surface voxels are found with a k-d tree over the
surface voxels only. This gives the same distances as a distance transform of the
whole volume at a cost that grows with the lesion surface, not the image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from mstools.metrics.defaults import HD95 as DEFAULT_HD95
from mstools.metrics.defaults import HD95_DEFINITIONS
from mstools.metrics.lesionwise import Components, find_components

_FACE = ndimage.generate_binary_structure(3, 1)
#: Above this many components one erosion of their common bounding box is cheaper.
_PER_LESION_LIMIT = 64


@dataclass(frozen=True)
class SurfaceDistances:
    """Distances (mm) from each surface voxel of one mask to the other's surface."""

    prediction_to_truth: np.ndarray
    truth_to_prediction: np.ndarray


def surface_voxels(components: Components) -> np.ndarray:
    """(n, 3) voxel indices of the surface voxels of a labelled mask."""
    if components.count == 0:
        return np.empty((0, 3), dtype=np.int64)
    boxes = components.boxes[1:]
    if components.count > _PER_LESION_LIMIT:
        union = tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))
        jobs = [(union, components.labels[union] != 0)]
    else:
        jobs = [(box, components.labels[box] == label) for label, box in enumerate(boxes, start=1)]
    found = []
    for box, inside in jobs:
        edge = inside & ~ndimage.binary_erosion(inside, structure=_FACE)
        idx = np.stack(np.nonzero(edge), axis=1)
        found.append(idx + np.array([s.start for s in box]))
    return np.concatenate(found).astype(np.int64, copy=False)


def surface_distances(prediction: np.ndarray | Components, ground_truth: np.ndarray | Components, *,
                      spacing_mm) -> SurfaceDistances | None:
    """Surface-to-surface distances in mm, or None when either mask is empty.

    ``prediction`` and ``ground_truth`` are binary masks, or their
    :class:`~mstools.metrics.lesionwise.Components` (any connectivity) to reuse a
    labelling already done.
    """
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"spacing_mm must be three positive numbers, not {spacing_mm}")
    pred = prediction if isinstance(prediction, Components) else find_components(prediction, connectivity=6)
    truth = ground_truth if isinstance(ground_truth, Components) else find_components(ground_truth, connectivity=6)
    if pred.labels.shape != truth.labels.shape:
        raise ValueError(f"shapes differ: {pred.labels.shape} vs {truth.labels.shape}")
    if pred.count == 0 or truth.count == 0:
        return None
    p_mm = surface_voxels(pred) * spacing
    g_mm = surface_voxels(truth) * spacing
    p_to_g, _ = cKDTree(g_mm).query(p_mm, k=1)
    g_to_p, _ = cKDTree(p_mm).query(g_mm, k=1)
    return SurfaceDistances(prediction_to_truth=np.asarray(p_to_g, dtype=np.float64),
                            truth_to_prediction=np.asarray(g_to_p, dtype=np.float64))


def surface_metrics(distances: SurfaceDistances | None, *, hd95: str = DEFAULT_HD95) -> dict[str, float]:
    """Hausdorff, both HD95, both average surface distances (mm); NaN without surfaces."""
    if hd95 not in HD95_DEFINITIONS:
        raise ValueError(f"hd95 must be one of {HD95_DEFINITIONS}, not {hd95!r}")
    if distances is None:
        keys = ("hd_mm", "hd95_mm", "hd95_pooled_mm", "hd95_max_directed_mm", "assd_mm",
                "assd_mean_of_directed_mm")
        return {key: math.nan for key in keys}
    a, b = distances.prediction_to_truth, distances.truth_to_prediction
    pooled = np.concatenate([a, b])
    hd95_pooled = float(np.percentile(pooled, 95))
    hd95_max_directed = float(max(np.percentile(a, 95), np.percentile(b, 95)))
    return {
        "hd_mm": float(max(a.max(), b.max())),
        "hd95_mm": hd95_max_directed if hd95 == "max-directed" else hd95_pooled,
        "hd95_pooled_mm": hd95_pooled,
        "hd95_max_directed_mm": hd95_max_directed,
        "assd_mm": float(pooled.mean()),
        "assd_mean_of_directed_mm": float((a.mean() + b.mean()) / 2.0),
    }
