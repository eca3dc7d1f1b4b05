"""Detectors know the voxel size: one lesion, sampled at 1 mm and on a 0.7 x 0.7 x 3 mm
clinical grid, is found on both; morphological steps and sizes are physical."""

from __future__ import annotations

import numpy as np
import pytest

from mstools.detect import subtraction as sub
from tests.conftest import oblique_affine

FIELD_MM = np.array([40.0, 40.0, 30.0])
CENTRE_MM = np.array([20.0, 20.0, 16.5])          # the middle of a 3 mm slice
LESION_SEMI_AXES_MM = np.array([3.0, 3.0, 1.6])   # flat: one 3 mm slice holds it


def _pair(spacing, seed=0):
    """Baseline and follow-up of a noisy block of 'white matter' (100 units, noise sd 3),
    the follow-up with a lesion (+60 %) whose voxels are averaged over their footprint."""
    spacing = np.asarray(spacing, dtype=float)
    shape = tuple(int(round(v)) for v in FIELD_MM / spacing)
    rng = np.random.default_rng(seed)
    # Partial volume: the share of each voxel inside the ellipsoid, by 5x5x5 supersampling.
    sub_offsets = (np.arange(5) + 0.5) / 5 - 0.5
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    share = np.zeros(shape)
    for a in sub_offsets:
        for b in sub_offsets:
            for c in sub_offsets:
                point = (grid + 0.5 + np.array([a, b, c])) * spacing
                share += (((point - CENTRE_MM) / LESION_SEMI_AXES_MM) ** 2).sum(-1) <= 1
    share /= 125
    baseline = 100 + rng.normal(0, 3, shape)
    followup = 100 * (1 + 0.6 * share) + rng.normal(0, 3, shape)
    brain = np.ones(shape, dtype=bool)
    return baseline.astype(np.float32), followup.astype(np.float32), brain, share > 0.5, oblique_affine(spacing)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 3.0)])
@pytest.mark.parametrize("rule", sub.RULES)
def test_same_lesion_found_at_1mm_and_on_thick_slices(spacing, rule):
    baseline, followup, brain, lesion, affine = _pair(spacing)
    assert lesion.any()
    result = sub.detect(baseline, followup, brain, affine=affine, rule=rule, bias_sigma_mm=0)
    labels = result.detections.labels
    hit = np.unique(labels[lesion & (labels > 0)])
    assert hit.size == 1, f"{rule} at {spacing}: lesion not found as one candidate"


def test_flat_lesion_one_slice_thick_survives_the_core_rule():
    """On 3 mm slices the lesion is one slice thick: a 6-neighbour erosion along k (the
    voxel rule of 1 mm grids) would delete it; the 1 mm step acts in-plane only."""
    baseline, followup, brain, lesion, affine = _pair((0.7, 0.7, 3.0))
    assert np.ptp(np.nonzero(lesion)[2]) == 0          # one slice
    mask = followup - baseline > 30
    kept = sub.select_clusters(mask, require_core=True, spacing_mm=(0.7, 0.7, 3.0))
    assert (kept[lesion] > 0).any()
    voxel_rule = sub.select_clusters(mask, require_core=True, spacing_mm=(1.0, 1.0, 1.0))
    assert not (voxel_rule[lesion] > 0).any()


def test_erosion_steps_are_physical():
    mask = np.zeros((9, 9, 9), dtype=bool)
    mask[2:7, 2:7, 2:7] = True
    # 1 mm grid: 1 mm = one 6-neighbour erosion, 2 mm = two.
    assert sub.erode_mm(mask, 1.0, (1, 1, 1)).sum() == 27
    assert sub.erode_mm(mask, 2.0, (1, 1, 1)).sum() == 1
    # 3 mm slices: in-plane only (a 3 x 3 core in each of the 5 slices).
    assert sub.erode_mm(mask, 1.0, (0.7, 0.7, 3.0)).sum() == 45
    # Voxels coarser than the step everywhere: no step at all.
    assert sub.erode_mm(mask, 1.0, (1.5, 1.5, 1.5)).sum() == mask.sum()


def test_minimum_sizes_are_volumes():
    assert sub.min_voxels_for(5.0, 1.0, strictly=True) == 6      # "bigger than 5 voxels" at 1 mm
    assert sub.min_voxels_for(5.0, 1.0) == 5
    assert sub.min_voxels_for(5.0, 0.7 * 0.7 * 3.0, strictly=True) == 4
    assert sub.min_voxels_for(7.0, 3.375, strictly=True) == 3
