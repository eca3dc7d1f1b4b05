"""Which voxels a refinement model is trained on (and applied to).

A whole cohort of 1 mm volumes does not fit in memory voxel by voxel, and almost all
brain voxels are far from any candidate. Training therefore takes every voxel of the
*candidate region* -- the candidates dilated by ``dilation_mm`` inside the brain,
where the classifier has to decide -- plus a stated share of the other brain voxels
(``background_fraction``), so the model also learns that voxels far from candidates
are background. Apply predicts the candidate region (or the whole brain).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

#: Candidates are grown by this much (mm) to form the region the classifier decides on:
#: first-stage candidates under-segment lesions whose borders are faint.
DILATION_MM = 3.0
#: Share of the brain voxels outside the candidate region added to training as background
#: (at 1 mm, 0.5 % of a brain is ~9,000 voxels: about twice a typical candidate region).
BACKGROUND_FRACTION = 0.005


@dataclass(frozen=True)
class SamplingOptions:
    dilation_mm: float = DILATION_MM
    background_fraction: float = BACKGROUND_FRACTION

    def __post_init__(self):
        if not self.dilation_mm >= 0:
            raise ValueError(f"dilation_mm must be >= 0, not {self.dilation_mm}")
        if not 0 <= self.background_fraction <= 1:
            raise ValueError(f"background_fraction must be in [0, 1], not {self.background_fraction}")

    def as_dict(self) -> dict:
        return asdict(self)


def candidate_region(candidates: np.ndarray, brain: np.ndarray, *, spacing_mm,
                     dilation_mm: float = DILATION_MM) -> np.ndarray:
    """Voxels within ``dilation_mm`` (Euclidean, in mm) of a candidate, inside the brain."""
    candidates = np.asarray(candidates) > 0
    brain = np.asarray(brain) > 0
    region = np.zeros(candidates.shape, dtype=bool)
    if not candidates.any():
        return region
    spacing = np.asarray(spacing_mm, dtype=float)
    reach = np.ceil(dilation_mm / spacing).astype(int) + 1
    where = np.nonzero(candidates)
    lo = [max(int(w.min()) - r, 0) for w, r in zip(where, reach)]
    hi = [min(int(w.max()) + r + 1, n) for w, r, n in zip(where, reach, candidates.shape)]
    window = tuple(slice(a, b) for a, b in zip(lo, hi))
    distance = ndimage.distance_transform_edt(~candidates[window], sampling=spacing)
    region[window] = distance <= dilation_mm + 1e-6
    return region & (brain | candidates)


def training_voxels(region: np.ndarray, brain: np.ndarray, *, background_fraction: float = BACKGROUND_FRACTION,
                    seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """((i, j, k) of the training voxels, boolean "in region" per voxel), in flat-index order.

    Every region voxel, plus ``background_fraction`` of the other brain voxels drawn at
    random (``seed``).
    """
    region = np.asarray(region) > 0
    rest = np.flatnonzero((np.asarray(brain) > 0) & ~region)
    rng = np.random.default_rng(seed)
    n_background = int(round(background_fraction * rest.size))
    chosen = rng.choice(rest, size=n_background, replace=False) if n_background else np.zeros(0, np.int64)
    flat = np.concatenate([np.flatnonzero(region), chosen])
    order = np.argsort(flat, kind="stable")
    flat = flat[order]
    in_region = np.concatenate([np.ones(int(region.sum()), bool), np.zeros(n_background, bool)])[order]
    return np.unravel_index(flat, region.shape), in_region
