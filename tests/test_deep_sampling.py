"""Lesion-centred patch sampling (paper 002) and augmentation (papers 001, 002)."""

from __future__ import annotations

import numpy as np
import pytest

from mstools.detect.deep.augment import AugmentConfig, augment_sample, bias_field, quality
from mstools.detect.deep.sampling import extract, patch_start


def test_lesion_centred_patches_contain_the_lesion_within_the_shift():
    rng = np.random.default_rng(0)
    shape = (40, 50, 30)
    lesion = (30, 12, 15)
    fg = np.array([np.ravel_multi_index(lesion, shape)])
    offsets = []
    for _ in range(200):
        start = patch_start(shape, (16, 16, 16), rng, foreground=fg, max_shift=5)
        assert all(0 <= s <= n - 16 for s, n in zip(start, shape))
        offset = np.array(lesion) - np.array(start)
        offsets.append(offset)
        assert np.all(offset >= 0) and np.all(offset < 16)
    offsets = np.array(offsets)
    # axis 2 is never clipped here: centre offset 8 - shift, shift in [-5, 5]
    assert offsets[:, 2].min() == 3 and offsets[:, 2].max() == 13


def test_random_patches_without_lesion_and_with_p_random():
    rng = np.random.default_rng(1)
    starts = np.array([patch_start((40, 40, 40), (8, 8, 8), rng) for _ in range(300)])
    assert starts.min() == 0 and starts.max() == 32          # the whole volume is reachable
    fg = np.array([np.ravel_multi_index((20, 20, 20), (40, 40, 40))])
    far = [patch_start((40, 40, 40), (8, 8, 8), rng, foreground=fg, max_shift=0, p_random=1.0) for _ in range(50)]
    assert any(not all(s <= 20 < s + 8 for s in st) for st in far)
    near = [patch_start((40, 40, 40), (8, 8, 8), rng, foreground=fg, max_shift=0) for _ in range(20)]
    assert all(st == (16, 16, 16) for st in near)


def test_extract_pads_small_volumes_with_zeros():
    volume = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5) + 1
    rng = np.random.default_rng(2)
    start = patch_start((3, 4, 5), (8, 8, 8), rng)
    patch = extract(volume, start, (8, 8, 8))
    assert patch.shape == (2, 8, 8, 8)
    assert np.count_nonzero(patch) == volume.size                # every voxel once, the rest zero
    assert np.array_equal(np.sort(patch[patch > 0]), np.sort(volume.ravel()))
    with pytest.raises(ValueError):
        patch_start((3, 4, 5), (8, 8), rng)


def test_axial_slice_thickness_acts_along_k_only():
    rng = np.random.default_rng(3)
    image = np.zeros((9, 9, 9), np.float32)
    image[4, 4, 4] = 12.0
    out = quality(image, rng, kind="axial")
    assert np.count_nonzero(out[:, :, :]) >= 2
    assert np.all(out[np.arange(9) != 4] == 0) and np.all(out[:, np.arange(9) != 4] == 0)
    assert out.sum() == pytest.approx(12.0)
    blurred = quality(image, rng, kind="blur")
    sharpened = quality(image, rng, kind="sharpen")
    assert blurred.max() < 12.0 and sharpened.max() > 12.0
    with pytest.raises(ValueError):
        quality(image, rng, kind="ringing")


def test_bias_field_is_smooth_and_positive():
    field = bias_field((16, 16, 16), np.random.default_rng(4), coefficient=0.3)
    assert field.min() > 0 and np.abs(np.diff(np.log(field), axis=0)).max() < 0.5


def test_augmentation_keeps_images_and_labels_aligned():
    """Spatial changes move images and labels together; the input arrays are not modified."""
    rng = np.random.default_rng(5)
    label = np.zeros((1, 12, 12, 12), np.uint8)
    label[0, 2:5, 3:9, 6:8] = 1
    images = np.stack([100 + 100 * label[0], 100 + 100 * label[0]]).astype(np.float32)
    copy = images.copy()
    stats = np.array([[100.0, 100.0], [100.0, 100.0]])
    cfg = AugmentConfig(p_quality=0, p_bias=0, p_intensity=0, p_noise=0, p_rotate=0)
    for _ in range(20):
        out, lab = augment_sample(images, label, rng, single_timepoint=False, stats=stats, config=cfg)
        assert lab.dtype == np.uint8 and lab.sum() == label.sum()
        assert np.array_equal(out[0] > 0.5, lab[0] > 0)
    assert np.array_equal(images, copy)


def test_single_timepoint_sample_keeps_zero_difference():
    rng = np.random.default_rng(6)
    images = rng.normal(100, 20, (2, 10, 10, 10)).astype(np.float32)
    images[1] = images[0]
    label = np.zeros((1, 10, 10, 10), np.uint8)
    stats = np.array([[100.0, 20.0], [100.0, 20.0]])
    cfg = AugmentConfig(p_quality=1, p_bias=1, p_intensity=1, p_noise=1)
    for _ in range(5):
        out, _ = augment_sample(images, label, rng, single_timepoint=True, stats=stats, config=cfg)
        assert np.array_equal(out[0], out[1])
        two, _ = augment_sample(images, label, rng, single_timepoint=False, stats=stats, config=cfg)
        assert not np.array_equal(two[0], two[1])   # two time points are altered independently
