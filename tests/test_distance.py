"""Distances from a few voxels to a mask equal SciPy's whole-volume distance transform."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mstools.distance import DistanceToMask


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.72, 0.72, 3.0), (0.5, 1.3, 4.0)])
def test_distances_equal_the_euclidean_distance_transform(spacing):
    rng = np.random.default_rng(3)
    mask = ndimage.binary_opening(rng.random((30, 26, 18)) < 0.35)
    reference = ndimage.distance_transform_edt(~mask, sampling=spacing)
    voxels = np.argwhere(np.ones(mask.shape, bool))[rng.choice(mask.size, 600, replace=False)]
    got = DistanceToMask(mask, spacing)(voxels)
    assert np.allclose(got, reference[tuple(voxels.T)], atol=1e-9)
    assert (got[mask[tuple(voxels.T)]] == 0).all()


def test_an_empty_mask_is_infinitely_far_and_a_full_one_is_everywhere():
    shape = (6, 5, 4)
    voxels = np.argwhere(np.ones(shape, bool))
    assert np.isinf(DistanceToMask(np.zeros(shape, bool), (1, 1, 1))(voxels)).all()
    assert (DistanceToMask(np.ones(shape, bool), (1, 1, 1))(voxels) == 0).all()
    assert DistanceToMask(np.zeros(shape, bool), (1, 1, 1))(np.zeros((0, 3), int)).shape == (0,)


def test_a_search_limited_to_the_cap_and_a_single_thread_give_the_same_capped_distances(monkeypatch):
    """refine caps brain-edge distances at 10 mm and searches no further: capped, the limited
    search must equal the full one (ties at the cap included); one thread or two, the same."""
    rng = np.random.default_rng(5)
    mask = ndimage.binary_opening(rng.random((30, 26, 18)) < 0.6)
    spacing = (1.0, 1.0, 1.0)
    voxels = np.argwhere(~mask)
    full = DistanceToMask(mask, spacing)(voxels)
    cap = float(np.median(full[full > 0]))          # a distance that occurs, so ties are tested
    assert (full == cap).any()
    limited = DistanceToMask(mask, spacing)(voxels, limit_mm=cap)
    assert np.array_equal(np.minimum(limited, cap), np.minimum(full, cap))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert np.array_equal(DistanceToMask(mask, spacing)(voxels), full)
