"""Voxel-wise overlap and volume metrics, from four voxel counts.

Definitions (P prediction, G ground truth, as voxel sets; volumes in mm3 are voxel
counts times |det| of the affine):

=====================  ==========================================  ==============================
``dice``               2 |P & G| / (|P| + |G|)                     medpy ``dc``
``jaccard``            |P & G| / |P | G|
``ppv``                |P & G| / |P|
``sensitivity``        |P & G| / |G|
``specificity``        |~P & ~G| / |~G| (whole field of view)
``rve``                (V_P - V_G) / V_G                           Anima's relative volume error
``vd``                 |V_P - V_G| / V_G                           Denner et al. (paper 000)
``smoothed_dice``      (2 |P & G| + s) / (|G| + |P| + s), s=1e-6   Prados & Kanber (paper 001, eq. 1)
=====================  ==========================================  ==============================

The smoothed Dice is computed on voxel counts, as eq. 1 sums voxels.

Empty masks (explicit conventions, each tested):

* Empty ground truth (about a quarter of MSSEG-2 cases): every measure relative to
  the truth -- ``dice``, ``jaccard``, ``ppv``, ``sensitivity``, ``rve``, ``vd`` -- is
  n/a (NaN), whatever the prediction; MSSEG-2 scored these cases by the number and
  volume of predicted lesions instead. ``smoothed_dice`` stays defined (1 when the
  prediction is empty too, s / (|P| + s) ~ 0 otherwise) and ``specificity`` too.
* Ground truth present, empty prediction: ``dice`` = ``jaccard`` = ``sensitivity``
  = 0, ``ppv`` = 0 (Anima's convention for an empty prediction, so that predicting
  nothing is scored, not dropped from means), ``rve`` = -1, ``vd`` = 1.
* ``specificity`` is n/a only if the ground truth fills the whole volume.

n/a values are written ``n/a`` in tables, ``null`` in JSON and left out of means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mstools.metrics.defaults import DICE_SMOOTHING


@dataclass(frozen=True)
class VoxelCounts:
    """Confusion counts of one prediction against one ground truth."""

    true_positive: int
    false_positive: int
    false_negative: int
    true_negative: int
    voxel_volume_mm3: float

    @property
    def prediction_voxels(self) -> int:
        return self.true_positive + self.false_positive

    @property
    def ground_truth_voxels(self) -> int:
        return self.true_positive + self.false_negative


def count_voxels(prediction: np.ndarray, ground_truth: np.ndarray, *, voxel_volume_mm3: float) -> VoxelCounts:
    """Confusion counts of two binary masks on the same grid (nonzero = lesion)."""
    p = np.asarray(prediction) != 0
    g = np.asarray(ground_truth) != 0
    if p.shape != g.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {g.shape}")
    tp = int(np.count_nonzero(p & g))
    n_p = int(np.count_nonzero(p))
    n_g = int(np.count_nonzero(g))
    return VoxelCounts(tp, n_p - tp, n_g - tp, int(p.size) - n_p - n_g + tp, float(voxel_volume_mm3))


def smoothed_dice(intersection: int, prediction_voxels: int, ground_truth_voxels: int, *,
                  smoothing: float = DICE_SMOOTHING) -> float:
    """Paper 001, eq. 1: (2 sum(y_gt * y_pred) + s) / (sum y_gt + sum y_pred + s)."""
    return (2.0 * intersection + smoothing) / (ground_truth_voxels + prediction_voxels + smoothing)


def voxel_metrics(counts: VoxelCounts, *, smoothing: float = DICE_SMOOTHING) -> dict[str, float]:
    """All voxel-wise metrics of the module table, with the empty-mask conventions."""
    tp, fp, fn, tn = counts.true_positive, counts.false_positive, counts.false_negative, counts.true_negative
    n_p, n_g = counts.prediction_voxels, counts.ground_truth_voxels
    v_p = n_p * counts.voxel_volume_mm3
    v_g = n_g * counts.voxel_volume_mm3
    nan = math.nan
    if n_g == 0:
        dice = jaccard = ppv = sensitivity = rve = vd = nan
    else:
        dice = 2.0 * tp / (n_p + n_g)
        jaccard = tp / (n_p + n_g - tp)
        sensitivity = tp / n_g
        ppv = tp / n_p if n_p else 0.0
        rve = (v_p - v_g) / v_g
        vd = abs(v_p - v_g) / v_g
    return {
        "gt_volume_mm3": v_g,
        "pred_volume_mm3": v_p,
        "dice": dice,
        "jaccard": jaccard,
        "ppv": ppv,
        "sensitivity": sensitivity,
        "specificity": tn / (tn + fp) if tn + fp else nan,
        "rve": rve,
        "vd": vd,
        "smoothed_dice": smoothed_dice(tp, n_p, n_g, smoothing=smoothing),
    }
