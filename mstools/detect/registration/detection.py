"""Candidates from the registered subtraction, their deformation features, and the
check that a registration did not fail.

The subtraction is La Rosa et al.'s (paper 001): z-scored follow-up minus z-scored
baseline inside the brain, here with the baseline warped onto the follow-up.
Candidates follow their rule too (threshold on the z-scored subtraction, connected
components of >= 5 voxels), so that the plain and the registered subtraction are
compared like with like (benchmarks/bench_register.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mstools.detect.subtraction import PRADOS_BASELINE_HYPER_SD, keep_peaked, peak_units
from mstools.intensity import zscore_in_mask
from mstools.lesions import label_components, remove_small

#: Candidates are 26-connected clusters (a lesion is one object in any direction).
CANDIDATE_CONNECTIVITY = 26

#: La Rosa et al. (paper 001): "discard all the connected components smaller than 5 voxels".
LAROSA_MIN_VOXELS = 5

#: z-score threshold of the registered subtraction. Measured on 6 simulated 2 mm pairs
#: (benchmarks/bench_register.py, 20 mm grid, MSSEG-2 rule): 1.6 detects 16/28 new
#: lesions with 53 false-positive lesions; 1.5 reaches 60 % with 57; below that the
#: sensitivity stops rising (clusters merge) while false positives multiply.
DEFAULT_THRESHOLD = 1.6

#: La Rosa et al. (paper 001): "discard all the connected components smaller than 5
#: voxels", on MSSEG-2 scans of about 1 mm3 voxels: 5 mm3, converted to voxels of the
#: grid at hand (:func:`min_voxels_for`), so that 2 mm grids keep single-voxel candidates.
DEFAULT_MIN_MM3 = float(LAROSA_MIN_VOXELS)


#: A candidate voxel must be hyperintense at follow-up (new FLAIR lesions are): at least this
#: many SDs above the follow-up's mean brain intensity, Prados et al.'s definition of a
#: hyperintensity (paper 001, as for subtract's baseline hyperintensities). Most of the
#: registered subtraction's false candidates on real pairs are tissue where the baseline was dark
#: (CSF at the brain edge and the ventricles: baseline z -1.5 to -3, follow-up about 0). Measured
#: with the default threshold (offline from `mstools register` outputs, MSSEG-2 rule), off -> 1 SD:
#: 6 simulated 2 mm pairs (seeds 700-705, bench_register's) lesion F1 0.341 -> 0.370, LFPR 0.711 ->
#: 0.668, Dice 0.272 -> 0.305; 9 simulated clinical pairs on 3-3.3 mm grids (seeds 9100-9108) F1
#: 0.276 -> 0.300, LFPR 0.728 -> 0.591, Dice 0.362 -> 0.464; development patient 01 F1 0.044 ->
#: 0.167, LFPR 0.975 -> 0.857, 40 -> 7 reported; LTPR unchanged on all three (0.5 SD: 0.365 /
#: 0.310 / 0.167; 1.5 SD: 0.359 / 0.298 / 0.286).
DEFAULT_HYPERINTENSE_SD = PRADOS_BASELINE_HYPER_SD

#: A candidate's peak score must stand this many SDs above the brain's (grow at the threshold,
#: keep what peaks high; as `subtract`'s mstools.detect.subtraction.MIN_PEAK_SD). Measured offline
#: from `mstools register` outputs with the defaults above (2026-12-07, benchmarks/candidate_peak.py
#: --register; MSSEG-2 rule), off / 4 / 5 / 6 SD, lesion F1 (LTPR, LFPR): 9 simulated clinical pairs (seeds
#: 9100-9108) 0.300 / 0.309 / 0.330 / 0.367 (LTPR 0.400 / 0.400 / 0.400 / 0.378, LFPR 0.591 / 0.584
#: / 0.552 / 0.442); 6 simulated 2 mm pairs (seeds 700-705) 0.370 / 0.370 / 0.389 / 0.344 (LTPR 0.567
#: / 0.567 / 0.567 / 0.392); development patient 01 0.167 at every level (its 6 false candidates
#: peak high). 5 keeps every lesion; 6 loses a third of the 2 mm pairs' lesions. Run once on the
#: held-out pairs afterwards: LTPR 0.177 -> 0.066, LFPR 0.718 -> 0.736 (README).
DEFAULT_MIN_PEAK_SD = 5.0


def min_voxels_for(min_mm3: float, voxel_volume_mm3: float) -> int:
    """Fewest voxels of a candidate of at least ``min_mm3`` (at least 1)."""
    if voxel_volume_mm3 <= 0:
        raise ValueError(f"voxel volume must be positive, not {voxel_volume_mm3}")
    return max(1, int(np.ceil(min_mm3 / voxel_volume_mm3 - 1e-9)))


#: Candidate modes: ``registered`` thresholds the registered subtraction only;
#: ``affine-check`` also keeps what the affine-only subtraction shows (a new lesion
#: that a flexible B-spline shrank away is still bright there). Measured on 6 simulated
#: 2 mm pairs, threshold 1.6: with a 10 mm grid, affine-check found 16/28 new lesions
#: instead of 14/28 (85 false positives instead of 62); with the default 20 mm grid
#: both found 16/28 (55 vs 53 false positives). Default: ``registered``.
MODES = ("registered", "affine-check")

#: A registration is refused when the correlation of follow-up and warped baseline
#: inside the brain is below this. Measured: 0.90-0.95 for simulated pairs (1.5-2 mm /
#: degree misalignment, bias, atrophy; 1, 2 and 4 mm voxels); -0.26 and -0.22 for a
#: 4 mm follow-up registered to smoothed noise (without / with the mask in elastix),
#: whose transforms also folded in 38 % and 15 % of the brain.
MIN_CORRELATION = 0.5

#: ... or when more than this share of the brain folds (det <= 0: not invertible).
MAX_FOLDING = 0.01

FEATURE_COLUMNS = (
    "volume_change_mean", "volume_change_min", "volume_change_max",
    "displacement_mean_mm", "displacement_max_mm",
    "affine_subtraction_mean", "affine_subtraction_max",
)


def normalised_subtraction(followup: np.ndarray, baseline_on_followup: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """z-scored follow-up minus z-scored (warped) baseline inside ``brain``, 0 outside (float32)."""
    brain = np.asarray(brain) > 0
    f = zscore_in_mask(followup, brain)
    b = zscore_in_mask(baseline_on_followup, brain)
    return np.where(brain, f - b, 0).astype(np.float32)


def candidate_mask(subtraction: np.ndarray, brain: np.ndarray, *, threshold: float = DEFAULT_THRESHOLD,
                   min_voxels: int = LAROSA_MIN_VOXELS, affine_subtraction: np.ndarray | None = None,
                   followup: np.ndarray | None = None, hyperintense_sd: float = 0.0,
                   min_peak_sd: float = 0.0) -> np.ndarray:
    """Voxels above ``threshold`` in the brain, in components of >= ``min_voxels`` (26-connected).

    With ``affine_subtraction`` (the ``affine-check`` mode), a voxel above the
    threshold in either subtraction is a candidate voxel. With ``followup`` and
    ``hyperintense_sd`` > 0, only voxels at least that many SDs above the follow-up's
    mean brain intensity can be candidates. With ``min_peak_sd`` > 0, a component's
    peak score (:func:`candidate_score`, in SDs of the brain's) must reach it.
    """
    above = np.asarray(subtraction) > threshold
    if affine_subtraction is not None:
        above |= np.asarray(affine_subtraction) > threshold
    if followup is not None and hyperintense_sd > 0:
        above &= zscore_in_mask(followup, np.asarray(brain) > 0) >= hyperintense_sd
    labels, count = label_components((np.asarray(brain) > 0) & above, connectivity=CANDIDATE_CONNECTIVITY)
    kept, _ = remove_small(labels, count, min_voxels)
    if min_peak_sd > 0 and kept.max() > 0:
        score = peak_units(candidate_score(subtraction, affine_subtraction), np.asarray(brain) > 0)
        kept = keep_peaked(kept, score, min_peak_sd)
    return kept > 0


def candidate_score(subtraction: np.ndarray, affine_subtraction: np.ndarray | None = None) -> np.ndarray:
    """The score map: the registered subtraction, or the larger of both in ``affine-check`` mode."""
    if affine_subtraction is None:
        return np.asarray(subtraction, dtype=np.float32)
    return np.maximum(subtraction, affine_subtraction).astype(np.float32)


def candidate_features(labels: np.ndarray, *, volume_change: np.ndarray, displacement: np.ndarray,
                       affine_subtraction: np.ndarray) -> list[dict]:
    """Per label 1..max: volume change (mean/min/max), |displacement| (mean/max, mm) and
    the affine-only subtraction (mean/max) inside the candidate."""
    labels = np.asarray(labels)
    count = int(labels.max()) if labels.size else 0
    if count == 0:
        return []
    present = np.bincount(labels.ravel(), minlength=count + 1)[1:] > 0
    index = np.arange(1, count + 1)[present]
    magnitude = np.sqrt(np.sum(np.asarray(displacement, dtype=np.float64) ** 2, axis=-1))
    vc = np.asarray(volume_change, dtype=np.float64)
    sub = np.asarray(affine_subtraction, dtype=np.float64)
    columns = {
        "volume_change_mean": ndimage.mean(vc, labels, index),
        "volume_change_min": ndimage.minimum(vc, labels, index),
        "volume_change_max": ndimage.maximum(vc, labels, index),
        "displacement_mean_mm": ndimage.mean(magnitude, labels, index),
        "displacement_max_mm": ndimage.maximum(magnitude, labels, index),
        "affine_subtraction_mean": ndimage.mean(sub, labels, index),
        "affine_subtraction_max": ndimage.maximum(sub, labels, index),
    }
    return [{"label": int(label), **{name: float(values[n]) for name, values in columns.items()}}
            for n, label in enumerate(index)]


@dataclass(frozen=True)
class Quality:
    """How well the warped baseline explains the follow-up."""

    correlation: float        # Pearson r of follow-up and warped baseline in the brain
    folding: float            # share of brain voxels with det(I + du/dx) <= 0
    failed: bool
    reason: str


def registration_quality(followup: np.ndarray, warped_baseline: np.ndarray, brain: np.ndarray, *,
                         jacobian_determinant: np.ndarray, min_correlation: float = MIN_CORRELATION,
                         max_folding: float = MAX_FOLDING) -> Quality:
    """Judge a registration: failed when the images do not correlate or the transform folds."""
    region = np.asarray(brain) > 0
    if region.sum() < 2:
        raise ValueError("brain mask has fewer than 2 voxels")
    f = np.asarray(followup, dtype=np.float64)[region]
    b = np.asarray(warped_baseline, dtype=np.float64)[region]
    if f.std() == 0 or b.std() == 0:
        r = 0.0
    else:
        r = float(np.corrcoef(f, b)[0, 1])
    folding = float(np.mean(np.asarray(jacobian_determinant)[region] <= 0))
    reasons = []
    if not r >= min_correlation:
        reasons.append(f"follow-up and warped baseline correlate at r = {r:.2f} in the brain "
                       f"(< {min_correlation:g})")
    if folding > max_folding:
        reasons.append(f"the transform folds in {folding:.1%} of the brain (> {max_folding:.0%})")
    return Quality(correlation=r, folding=folding, failed=bool(reasons), reason="; ".join(reasons))


def foreground(image: np.ndarray) -> np.ndarray:
    """A crude head mask when no brain mask is given: voxels above the image mean."""
    image = np.asarray(image)
    mask = image > float(image.mean())
    labels, count = label_components(mask, connectivity=6)
    if count > 1:  # keep the largest component (the head), fill its holes
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)
