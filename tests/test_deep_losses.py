"""Dice loss, CoactSeg's relation regulariser (paper 002 eq. 3) and the registration loss, on hand-made tensors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mstools.detect.deep.losses import (coactseg_loss, dice_loss, diffusion_regulariser,  # noqa: E402
                                        lesion_size_weights, registration_loss, relation_loss,
                                        segmentation_loss)


def test_dice_loss_counts():
    p = torch.tensor([1.0, 1.0, 0.0, 0.0])
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    # 2*1 / (2 + 2) = 0.5
    assert float(dice_loss(p, y)) == pytest.approx(0.5, abs=1e-5)
    assert float(dice_loss(y, y)) == pytest.approx(0.0, abs=1e-6)
    assert float(dice_loss(torch.zeros(4), torch.zeros(4))) == pytest.approx(0.0, abs=1e-6)  # both empty: 0
    monai = pytest.importorskip("monai.losses")
    ref = monai.DiceLoss(reduction="mean", smooth_nr=1e-5, smooth_dr=1e-5, batch=True)
    pp = torch.rand(2, 1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    yy = (torch.rand(2, 1, 4, 4, 4, generator=torch.Generator().manual_seed(2)) > 0.7).float()
    assert float(dice_loss(pp, yy)) == pytest.approx(float(ref(pp, yy)), abs=1e-5)


def test_relation_single_timepoint_term():
    """Single-time-point samples: the two all-lesion heads must agree."""
    a = torch.tensor([[0.2, 0.9], [0.4, 0.0]])
    assert float(relation_loss(a, a.clone(), None, None, None)) == 0.0
    # mean squared difference: ((1-0)^2 + 0 + (0.5-0)^2 + 0) / 4
    b = torch.tensor([[1.0, 0.9], [0.9, 0.0]])
    assert float(relation_loss(a * 0 + torch.tensor([[0.0, 0.9], [0.4, 0.0]]), b, None, None, None)) == pytest.approx(
        (1.0 + 0.25) / 4)


def test_relation_two_timepoint_terms():
    """Two-time-point samples: new-lesion voxels are background at time 1, foreground at time 2."""
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    good_t1 = torch.tensor([0.9, 0.0, 0.0, 0.7])   # outside the new lesion anything goes
    good_t2 = torch.tensor([0.1, 1.0, 1.0, 0.2])
    assert float(relation_loss(None, None, good_t1, good_t2, y)) == pytest.approx(0.0)
    t1_foreground = torch.tensor([0.0, 1.0, 1.0, 0.0])  # new lesion already at time 1: term 2 = 1
    assert float(relation_loss(None, None, t1_foreground, good_t2, y)) == pytest.approx(1.0)
    t2_half = torch.tensor([0.0, 0.5, 0.5, 0.0])        # (0.5 - 1)^2 over the lesion voxels
    assert float(relation_loss(None, None, good_t1, t2_half, y)) == pytest.approx(0.25)
    # no new lesion in the patch: the masked terms vanish
    assert float(relation_loss(None, None, t1_foreground, t2_half, torch.zeros(4))) == 0.0
    with pytest.raises(ValueError):
        relation_loss(None, None, None, None, None)


def test_coactseg_loss_uses_each_label_type_on_its_samples():
    """Eq. 2: all-lesion Dice only on single-time-point samples, new-lesion Dice only on two-time-point ones."""
    big = 20.0
    label = torch.zeros(3, 1, 2, 2, 2)
    label[:, :, 0] = 1
    perfect = (label * 2 - 1) * big    # logits matching the labels
    outputs = {"all_t1": perfect.clone(), "all_t2": perfect.clone(), "new": perfect.clone()}
    parts = coactseg_loss(outputs, label, n_longitudinal=1)
    assert float(parts["loss"]) == pytest.approx(0.0, abs=1e-4)
    # spoil the all-lesion heads on the two-time-point sample only: no effect (they have no label there)
    spoiled = {k: v.clone() for k, v in outputs.items()}
    spoiled["all_t1"][0] = big                 # everything foreground at time 1
    assert float(coactseg_loss(spoiled, label, n_longitudinal=1)["loss"]) == pytest.approx(0.0, abs=1e-4)
    # ... until the relation regulariser is on: the new lesion is then "foreground at time 1"
    on = coactseg_loss(spoiled, label, n_longitudinal=1, lambda_relation=1.0)
    assert float(on["relation"]) == pytest.approx(1.0, abs=1e-4)
    # spoil the new-lesion head on a single-time-point sample: no effect either
    spoiled = {k: v.clone() for k, v in outputs.items()}
    spoiled["new"][2] = -spoiled["new"][2]
    assert float(coactseg_loss(spoiled, label, n_longitudinal=1)["loss"]) == pytest.approx(0.0, abs=1e-4)
    spoiled["new"][0] = -spoiled["new"][0]
    assert float(coactseg_loss(spoiled, label, n_longitudinal=1)["dice_new"]) == pytest.approx(1.0, abs=1e-4)


def test_registration_loss_and_warp():
    from mstools.detect.deep.multitask import warp

    rng = np.random.default_rng(3)
    image = torch.from_numpy(rng.normal(size=(1, 1, 8, 10)).astype(np.float32))
    zero = torch.zeros(1, 2, 8, 10)
    parts = registration_loss(image, image, zero)
    assert float(parts["registration"]) == pytest.approx(0.0, abs=1e-10)
    shift = torch.zeros(1, 2, 8, 10)
    shift[:, 1] = 1.0                                   # sample one column to the right
    warped = warp(image, shift)
    assert torch.allclose(warped[..., :-1], image[..., 1:], atol=1e-5)
    assert float(diffusion_regulariser(shift)) == 0.0   # a constant field is smooth
    ramp = torch.zeros(1, 2, 8, 10)
    ramp[:, 0] = torch.arange(10.0)                     # gradient 1 along the last axis
    assert float(diffusion_regulariser(ramp)) == pytest.approx(0.5)  # mean over both components


def test_lesion_size_weights_by_hand():
    """Paper 001 (Nichyporuk et al.): small lesions weigh more per voxel, but less in total than
    large ones; background and lesions of at least the reference weigh 1."""
    y = np.zeros((2, 1, 8, 8), np.float32)
    y[0, 0, 1, 1] = 1            # 1 voxel
    y[0, 0, 4:8, 4:8] = 1        # 16 voxels
    y[1, 0, 2:4, 2:4] = 1        # 4 voxels (another sample: components are per sample)
    w = lesion_size_weights(y, 16.0)
    assert w[0, 0, 1, 1] == pytest.approx(4.0) and w[1, 0, 2, 2] == pytest.approx(2.0)
    assert np.all(w[0, 0, 4:8, 4:8] == 1.0) and w[0, 0, 0, 0] == 1.0 and w.dtype == np.float32
    assert 1 * 4.0 < 4 * 2.0 < 16 * 1.0                      # totals grow with size
    assert np.all(lesion_size_weights(y, 1.0) == 1.0)         # nothing under one voxel


def test_weighted_losses_favour_a_missed_small_lesion():
    """With the weights, missing the small lesion costs more than missing as many voxels of the
    large one; weights of 1 are the unweighted losses."""
    y = np.zeros((1, 1, 8, 8), np.float32)
    y[0, 0, 0, 0] = 1
    y[0, 0, 4:8, 4:8] = 1
    target = torch.from_numpy(y)
    w = torch.from_numpy(lesion_size_weights(y, 16.0))
    miss_small = target.clone(); miss_small[0, 0, 0, 0] = 0
    miss_large = target.clone(); miss_large[0, 0, 4, 4] = 0
    logits = lambda p: torch.logit(p.clamp(0.01, 0.99))
    small = segmentation_loss(logits(miss_small), target, w)["loss"]
    large = segmentation_loss(logits(miss_large), target, w)["loss"]
    assert float(small) > float(large)
    plain = segmentation_loss(logits(miss_small), target)["loss"]
    ones = segmentation_loss(logits(miss_small), target, torch.ones_like(target))["loss"]
    assert float(ones) == pytest.approx(float(plain), abs=1e-6)
    assert float(dice_loss(target, target, weights=w)) == pytest.approx(0.0, abs=1e-6)
