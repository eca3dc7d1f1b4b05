"""Losses of the three models.

* :func:`dice_loss` -- "the common Dice loss" of paper 002, eq. 2, on sigmoid
  probabilities, pooled over the batch (a patch without lesion then still has a
  defined loss);
* :func:`relation_loss` -- paper 002's longitudinal relation regulariser, eq. 3;
* :func:`coactseg_loss` -- eq. 4: L = L_al + lambda1 L_nl + lambda2 L_rr;
* :func:`registration_loss` -- paper 000, eq. 2: MSE between the baseline and the
  warped follow-up + lambda x diffusion regulariser on the displacement's gradients.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

#: Dice smoothing in the denominator and numerator (UA-MT / paper 002 code use 1e-5).
DICE_SMOOTH = 1e-5


def dice_loss(probability: torch.Tensor, target: torch.Tensor, *, smooth: float = DICE_SMOOTH,
              weights: torch.Tensor | None = None) -> torch.Tensor:
    """1 - (2 sum(w p y) + s) / (sum w p + sum w y + s), over every voxel of the batch (w = 1
    unless ``weights`` are given)."""
    p = probability.float().reshape(-1)
    y = target.float().reshape(-1)
    w = 1.0 if weights is None else weights.float().reshape(-1)
    return 1.0 - (2.0 * (w * p * y).sum() + smooth) / ((w * p).sum() + (w * y).sum() + smooth)


def _masked_mse(values: torch.Tensor, target: float, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.float()
    count = mask.sum()
    if count == 0:
        return values.sum() * 0.0
    return (((values.float() - target) ** 2) * mask).sum() / count


def relation_loss(p_single_t1: torch.Tensor | None, p_single_t2: torch.Tensor | None,
                  p_long_t1: torch.Tensor | None, p_long_t2: torch.Tensor | None,
                  new_lesions: torch.Tensor | None) -> torch.Tensor:
    """Paper 002, eq. 3: ||p_al^s1, p_al^s2||_2 + ||p_al^t1 (x) y_nl, 0||_2 + ||p_al^t2 (x) y_nl, 1||_2.

    Probabilities in [0, 1]. The first term (single-time-point samples: the two all-lesion
    heads see the same scan, so must agree) is the mean squared difference over all
    voxels; the other two (two-time-point samples) are mean squared errors over the new-lesion
    voxels only (the masking operation): a new lesion is background at time 1 and
    foreground at time 2. A term whose samples are absent (``None``) or whose mask is
    empty contributes 0.
    """
    terms = []
    if p_single_t1 is not None and p_single_t2 is not None and p_single_t1.numel():
        terms.append(((p_single_t1.float() - p_single_t2.float()) ** 2).mean())
    if new_lesions is not None and p_long_t1 is not None and p_long_t2 is not None and p_long_t1.numel():
        terms.append(_masked_mse(p_long_t1, 0.0, new_lesions))
        terms.append(_masked_mse(p_long_t2, 1.0, new_lesions))
    if not terms:
        raise ValueError("relation_loss needs single-time-point or two-time-point predictions")
    return torch.stack(terms).sum()


def coactseg_loss(outputs: dict[str, torch.Tensor], labels: torch.Tensor, n_longitudinal: int, *,
                  lambda_new: float = 1.0, lambda_relation: float = 0.0) -> dict[str, torch.Tensor]:
    """Paper 002, eqs. 2-4 on one mixed batch.

    The first ``n_longitudinal`` samples are two-time-point (``labels`` = new lesions),
    the rest single-time-point (``labels`` = all lesions, baseline = follow-up).
    L_al = Dice(p_s1, y_al) + Dice(p_s2, y_al); L_nl = Dice(p_t_nl, y_nl);
    L = L_al + lambda1 L_nl + lambda2 L_rr. Returns every term and ``loss``.
    """
    n = n_longitudinal
    p = {k: torch.sigmoid(v) for k, v in outputs.items()}
    zero = outputs["new"].sum() * 0.0
    has_single = labels.shape[0] > n
    l_al = (dice_loss(p["all_t1"][n:], labels[n:]) + dice_loss(p["all_t2"][n:], labels[n:])) if has_single else zero
    l_nl = dice_loss(p["new"][:n], labels[:n]) if n > 0 else zero
    l_rr = zero
    if lambda_relation > 0:
        l_rr = relation_loss(p["all_t1"][n:] if has_single else None, p["all_t2"][n:] if has_single else None,
                             p["all_t1"][:n] if n else None, p["all_t2"][:n] if n else None,
                             labels[:n] if n else None)
    loss = l_al + lambda_new * l_nl + lambda_relation * l_rr
    return {"loss": loss, "dice_all": l_al.detach(), "dice_new": l_nl.detach(), "relation": l_rr.detach()}


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor,
                      weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Dice + binary cross-entropy (nnU-Net's loss, used by most MSSEG-2 teams, paper 001);
    ``weights`` (same shape) weigh each voxel in both terms (:func:`lesion_size_weights`)."""
    dice = dice_loss(torch.sigmoid(logits), labels, weights=weights)
    bce = F.binary_cross_entropy_with_logits(logits.float(), labels.float(),
                                             weight=None if weights is None else weights.float())
    return {"loss": dice + bce, "dice_new": dice.detach(), "bce": bce.detach()}


#: Lesion size reweighting (paper 001, Nichyporuk et al., after their MIDL 2021 paper): each
#: lesion voxel is weighted by a function of its lesion's size, non-lesion voxels by 1 (here in
#: both the cross-entropy and the Dice term, whose gradient dominates on lesion voxels), so that
#: small lesions count enough to be detected but less than large ones. The paper gives no formula;
#: ours: a lesion of n voxels (in the training sample) smaller than the reference weighs
#: (reference / n) ** LESION_SIZE_POWER per voxel, so its total weight grows as sqrt(n) and stays
#: below a reference-sized lesion's.
LESION_SIZE_POWER = 0.5


def lesion_size_weights(labels, reference: float):
    """Per-voxel weights of a batch of binary labels (numpy, (B, 1, ...)): 1 off lesions and on
    lesions of at least ``reference`` voxels, (reference / n) ** LESION_SIZE_POWER on a lesion of
    n < reference voxels (connected components of each sample, full connectivity)."""
    labels = np.asarray(labels) > 0
    weights = np.ones(labels.shape, dtype=np.float32)
    for index in np.ndindex(labels.shape[:2]):
        sample = labels[index]
        components, count = ndimage.label(sample, structure=np.ones((3,) * sample.ndim, dtype=bool))
        if count == 0:
            continue
        sizes = np.bincount(components.ravel(), minlength=count + 1).astype(np.float64)
        per_label = np.ones(count + 1, dtype=np.float64)
        small = sizes[1:] < reference
        per_label[1:][small] = (reference / sizes[1:][small]) ** LESION_SIZE_POWER
        weights[index] = per_label[components].astype(np.float32)
    return weights


def diffusion_regulariser(flow: torch.Tensor) -> torch.Tensor:
    """Mean squared spatial gradient of a displacement (B, D, ...) (VoxelMorph's diffusion term)."""
    total = flow.new_zeros(())
    for axis in range(2, flow.ndim):
        total = total + (torch.diff(flow, dim=axis) ** 2).mean()
    return total


def registration_loss(fixed: torch.Tensor, moving: torch.Tensor, flow: torch.Tensor, *,
                      lambda_smooth: float = 0.01) -> dict[str, torch.Tensor]:
    """Paper 000, eq. 2: L_sim(X_ti, X_tj o Phi) + lambda L_smooth(Phi), both on 2D slices.

    ``fixed`` = baseline, ``moving`` = follow-up (B, 1, H, W); similarity is MSE (paper 000).
    """
    from mstools.detect.deep.multitask import warp

    similarity = F.mse_loss(warp(moving, flow).float(), fixed.float())
    smooth = diffusion_regulariser(flow.float())
    return {"registration": similarity + lambda_smooth * smooth, "similarity": similarity.detach(),
            "smoothness": smooth.detach()}


# -- training objectives: one per network (``mstools.detect.deep.networks``), one signature ---------------


def coactseg_objective(outputs, x, y, *, n_longitudinal: int, config, relation_weight: float, **_) -> dict:
    """CoactSeg (paper 002): :func:`coactseg_loss` with the relation weight of this iteration."""
    return coactseg_loss(outputs, y, n_longitudinal, lambda_new=config.lambda_new, lambda_relation=relation_weight)


def segmentation_objective(outputs, x, y, *, weights=None, **_) -> dict:
    """A new-lesion segmentation network: :func:`segmentation_loss` of its ``new`` output."""
    return segmentation_loss(outputs["new"], y, weights)


def segmentation_registration_objective(outputs, x, y, *, config, weights=None, **_) -> dict:
    """The multitask network (paper 000, eq. 1): L = L_seg + L_reg, the follow-up slice
    registered onto the baseline slice by the predicted ``flow``."""
    seg = segmentation_loss(outputs["new"], y, weights)
    reg = registration_loss(x[:, :1], x[:, 1:2], outputs["flow"], lambda_smooth=config.lambda_smooth)
    return {**seg, **reg, "loss": seg["loss"] + reg["registration"]}
