"""Exact Euclidean distances (mm) from a few voxels to a mask, without a whole-volume transform.

The voxel of a mask nearest to a point outside it always has a face neighbour outside
the mask (a step from it towards the point along the axis of the largest offset would
otherwise be nearer), so a k-d tree of the mask's boundary voxels gives the same
distances as ``scipy.ndimage.distance_transform_edt`` of the complement, at the asked
voxels only: a few thousand candidate voxels cost milliseconds where the transform of
a 1 mm brain costs seconds.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mstools.parallel import case_threads


class DistanceToMask:
    """Distance (mm) from voxels to the nearest voxel of ``mask``; 0 inside it, inf if it is empty."""

    def __init__(self, mask: np.ndarray, spacing_mm):
        from scipy.spatial import cKDTree

        self.mask = np.asarray(mask, dtype=bool)
        self.spacing = np.asarray(spacing_mm, dtype=np.float64)
        face = ndimage.generate_binary_structure(3, 1)
        boundary = self.mask & ndimage.binary_dilation(~self.mask, structure=face)
        if self.mask.any() and not boundary.any():   # the mask fills the grid: every voxel is in it
            boundary = self.mask
        points = np.argwhere(boundary)
        self.tree = cKDTree(points * self.spacing) if len(points) else None

    def __call__(self, voxels: np.ndarray, *, limit_mm: float = np.inf) -> np.ndarray:
        """Distances of ``voxels`` (N x 3 integer indices) in mm, float64; with ``limit_mm``,
        distances beyond it come back as inf (a faster search when only "near or not" matters)."""
        voxels = np.asarray(voxels, dtype=np.int64).reshape(-1, 3)
        out = np.zeros(len(voxels), dtype=np.float64)
        if not len(voxels):
            return out
        if self.tree is None:
            out[:] = np.inf
            return out
        outside = ~self.mask[tuple(voxels.T)]
        if outside.any():
            # each voxel's search is independent: split over the case's threads
            out[outside], _ = self.tree.query(voxels[outside] * self.spacing, distance_upper_bound=limit_mm,
                                              workers=case_threads())
        return out
