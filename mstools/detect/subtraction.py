"""Candidate new lesions from the subtraction (or ratio) of two aligned FLAIR scans.

Three published rules from the MSSEG-2 proceedings (paper 001), each a pure function
of the two scans, a brain mask and the voxel spacing:

* ``prados``  -- Prados & Kanber, stage 1: voxels more than ``k`` standard deviations
  above the mean difference inside an inclusion mask (brain eroded once, minus the
  ventricles eroded twice, minus baseline hyperintensities one SD above the mean brain
  intensity); clusters that survive one erosion and are bigger than 5 voxels.
* ``larosa``  -- La Rosa et al.: z-scored subtraction thresholded at a level that
  adapts to the registration quality (mutual information between the time points);
  components of 5 voxels and more.
* ``hamzaoui`` -- Hamzaoui et al.: baseline histogram-matched to the follow-up,
  both discretised on 6 grey levels, follow-up/baseline ratio above 1.15, 1 mm
  opening, components above 7 mm3, brain mask eroded by 1 mm.

Two measured conditions, not in the papers, follow every rule (each can be switched off, and
`mstools run` switches both off): a candidate must be hyperintense at follow-up
(:data:`MIN_FOLLOWUP_SD`) and peak high enough in the subtraction (:data:`MIN_PEAK_SD`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from mstools.intensity import (csf_from_flair, differential_bias_correction, match_histogram,
                               normalised_mutual_information, zscore_in_mask)
from mstools.lesions import Detections, component_sizes, detections_from_labels, label_components, relabel_kept

RULES = ("prados", "larosa", "hamzaoui")

#: Differential (two-time-point) bias correction before subtracting, as in the boundary
#: shift integral pipeline of Prados & Kanber (paper 001). Width measured on 8 simulated
#: 1 mm pairs (seeds 500-507, benchmarks/calibrate_subtract.py): at a threshold of 3.5 SD
#: it raised lesion sensitivity from 0.68 to 0.82 at the same false positives per case
#: (7.8 vs 8.5). Gaussian denoising (sigma 0.6 mm) made things worse and is not applied.
DIFFERENTIAL_BIAS_SIGMA_MM = 15.0

# Prados & Kanber (paper 001, section 2.1).
# The paper thresholds at "one standard deviation above the mean difference" of its
# denoised BSI-pipeline images; on our conditioned pairs 1 SD selects ~16 % of the brain.
# Measured on 8 simulated 1 mm pairs (seeds 500-507, benchmarks/calibrate_subtract.py):
# k = 2.5 / 3.0 / 3.5 / 4.0 gave lesion sensitivity 0.68 / 0.70 / 0.68 / 0.65 at
# 6.2 / 1.8 / 1.2 / 1.0 false positive lesions per case; 3.0 keeps the most lesions at a
# false-positive load the filter and refine stages remove.
PRADOS_PAPER_K_SD = 1.0
PRADOS_K_SD = 3.0
# Sizes are physical: the paper's voxels are MSSEG-2's ~1 mm ones, so "5 voxels" is 5 mm3
# and "one erosion" a 1 mm step. On 1 mm grids this is exactly the paper's rule; on a
# 0.72 x 0.72 x 3 mm clinical grid the erosion acts in-plane only and a lesion one slice
# thick still counts (see erode_mm).
PRADOS_MIN_MM3 = 5.0              # "bigger than 5 voxels" (strictly above)
PRADOS_BASELINE_HYPER_SD = 1.0    # baseline hyperintensities: 1 SD above mean brain intensity
PRADOS_BRAIN_EROSION_MM = 1.0     # "one time eroded MNI brain mask"
PRADOS_VENTRICLE_EROSION_MM = 2.0 # "two times eroded standard ventricles mask"
PRADOS_CORE_EROSION_MM = 1.0      # clusters "that survive one erosion"
# The spread k is counted in: "sd", the standard deviation about the mean (the paper's), or
# "robust", 1.4826 x the median absolute deviation about the median (the same for Gaussian
# noise, but not swollen by the heavy tails of real pairs' residual misregistration and
# protocol change: sd / robust = 1.02-1.04 on simulated pairs, 1.28-1.31 on real ones).
NOISE_ESTIMATES = ("sd", "robust")
PRADOS_NOISE = "sd"
# Not in the papers, for all three rules: a candidate's mean follow-up intensity (bias-corrected,
# z-scored in the brain) must reach this many SDs (new FLAIR lesions are hyperintense; 0 = off,
# the papers' rules). Most false candidates on real pairs are tissue brightening from dark (CSF
# edges, partial volume of thick slices) to about the brain's mean. Chosen offline from the
# command's candidates (off / 0.5 / 1.0; lesion F1, LTPR):
#   prados (k 3, 1 mm core): 9 simulated clinical pairs on 3-3.3 mm grids (seeds 9100-9108) F1
#   0.286 / 0.433 / 0.469, LTPR 0.489 / 0.489 / 0.467; development patient 01 F1 0.113 / 0.276 /
#   0.312, LTPR 0.8 / 0.8 / 0.6; 15 validation cases F1 0.237 / 0.268 / 0.319, LTPR 0.385 / 0.385 /
#   0.348; simulated 1 mm seeds 1000-1004 F1 0.704 / 0.704 / 0.676, LTPR 0.72 / 0.72 / 0.68.
#   larosa: clinical F1 0.230 / 0.392 / 0.382 (LTPR 0.556 / 0.556 / 0.533); patient 01 0.033 /
#   0.111 / 0.250 (LTPR 0.4 all); validation 0.165 / 0.187 / 0.206 (LTPR 0.342 / 0.327 / 0.327);
#   1 mm 0.595 / 0.610 / 0.610 (LTPR 0.76 all).
#   hamzaoui: clinical F1 0.114 / 0.230 / 0.357 (LTPR 0.444 / 0.378 / 0.333); patient 01 0.052 /
#   0.222 / 0.250 (LTPR 0.4 / 0.4 / 0.2); validation 0.102 / 0.200 / 0.260 (LTPR 0.472 / 0.434 /
#   0.356); 1 mm 0.182 / 0.685 / 0.610 (LTPR 0.96 / 0.96 / 0.64).
# 0.5 raises F1 everywhere and keeps LTPR but for a few faint lesions of the ratio rule; 1.0 costs
# recall on the 1 mm cohort. The prados command with it (off -> 0.5): clinical LFPR 0.697 -> 0.508,
# patient 01 82 -> 27 candidates, 1 mm unchanged. `mstools run` keeps it off: refine and the
# learned filter were trained on, and sort, the candidates without it (mstools/pipeline/stages.py).
MIN_FOLLOWUP_SD = 0.5

# Not in the papers either: a candidate's peak must stand this many SDs above the brain's
# subtraction (d / its SD in the brain, d = z-scored follow-up minus z-scored baseline), per rule;
# 0 = off. The rules grow their clusters at a lower level (prados k 3, larosa 1.25-2.5, hamzaoui a
# ratio), so this is a hysteresis: grow low, keep what peaks high. On real pairs most false
# candidates are broad, faint rises (protocol change, partial volume) that only just cross the
# growing level. Chosen with benchmarks/candidate_peak.py (2026-12-07; MSSEG-2 rule):
# lesion F1 / LTPR / LFPR over 25 development cases (15 validation cases on real backgrounds of
# patient 20 and cross-sectional 26 and data_samples, 9 simulated clinical pairs 9100-9108,
# patient 01), then F1 on 10 simulated 1 mm pairs (seeds 1000-1009), off / 4 / 4.5 / 5 / 5.5 SD:
#   prados   0.341 / 0.354 / 0.368 / 0.392 / 0.348 (LTPR 0.441 / 0.426 / 0.422 / 0.405 / 0.322,
#            LFPR 0.595 / 0.571 / 0.543 / 0.459 / 0.483); 1 mm 0.683 / 0.683 / 0.683 / 0.679 / 0.679
#   larosa   0.261 / 0.262 / 0.267 / 0.272 / 0.249 (LTPR 0.416 / 0.416 / 0.412 / 0.386 / 0.301,
#            LFPR 0.584 -> 0.562 at best); 1 mm 0.610 / 0.610 / 0.613 / 0.617 / 0.624
#   hamzaoui 0.212 / 0.329 / 0.334 / 0.327 / 0.272 (LTPR 0.412 / 0.384 / 0.350 / 0.328 / 0.246,
#            LFPR 0.760 / 0.475 / 0.447 / 0.429 / 0.411); 1 mm 0.634 / 0.682 / 0.649 / 0.599 / 0.595
# prados keeps 5 (the F1 peak), hamzaoui 4 (F1 within 0.005 of the best, the best on 1 mm, less
# recall lost), larosa none: its false candidates peak as high as its lesions (LFPR stays 0.56).
# A robust spread (1.4826 x MAD) instead of the SD did worse (prados best 0.383, hamzaoui 0.328).
# Run once on the held-out pairs afterwards it cost recall there (prados LTPR 0.186 -> 0.107, LFPR
# 0.708 -> 0.688; hamzaoui LTPR 0.353 -> 0.149; README, "Accuracy on real scans").
# `mstools run` keeps it off, as the hyperintensity condition (mstools/pipeline/stages.py).
MIN_PEAK_SD = {"prados": 5.0, "larosa": 0.0, "hamzaoui": 4.0}

# La Rosa et al. (paper 001): "depending on [the mutual information], different
# thresholds are applied to the subtraction image" -- the paper gives no values. Ours
# were measured on simulated 1 mm pairs (benchmarks/calibrate_subtract.py): the
# threshold on the z-scored subtraction rises from LAROSA_THRESHOLDS[0] for a
# well-registered pair (NMI >= LAROSA_NMI_RANGE[1]) to LAROSA_THRESHOLDS[1] for a poorly
# registered one (NMI <= LAROSA_NMI_RANGE[0]), linearly in between. Measured: residual
# misalignment 0.25 mm / 0.25 deg -> NMI 1.16-1.18, where 1.25 gave sensitivity 0.82 at
# 6.8 false positives per case (1.0: 0.82 at 51.5); 0.75 mm / 0.75 deg -> NMI 1.11-1.12,
# where even 2.0 left 84 false positives per case (sensitivity 0.60).
LAROSA_THRESHOLDS = (1.25, 2.5)
LAROSA_NMI_RANGE = (1.11, 1.17)
LAROSA_MIN_MM3 = 5.0              # "discard all the connected components smaller than 5 voxels" (1 mm voxels)

# Hamzaoui et al. (paper 001, step one).
HAMZAOUI_RATIO = 1.15             # "a threshold of 1.15 to include 85% of ground truth voxels"
HAMZAOUI_GREY_LEVELS = 6          # "intensities were discretized on 6 levels of grey"
HAMZAOUI_OPENING_MM = 1.0         # "an opening of one millimeter"
HAMZAOUI_MIN_MM3 = 7.0            # "deleted those below 7 mm3" (kept: strictly above)
HAMZAOUI_BRAIN_EROSION_MM = 1.0   # "eroded by 1mm the brain mask"

#: Connectivity of candidate clusters (26: a lesion is one object in any direction).
CANDIDATE_CONNECTIVITY = 26

#: Length of one morphological step of the published (1 mm) rules: an axis whose voxels
#: are larger than this is not eroded, since one voxel would be a step too far.
STEP_MM = 1.0


@dataclass(frozen=True)
class SubtractionResult:
    subtraction: np.ndarray   # float32, z-scored follow-up minus z-scored baseline (0 outside the brain)
    ratio: np.ndarray         # float32, follow-up / histogram-matched baseline (0 outside the brain)
    detections: Detections    # score, mask, labels, table in the common convention
    details: dict = field(default_factory=dict)


def ball(radius_mm: float, spacing_mm) -> np.ndarray:
    """Structuring element of the voxels within ``radius_mm`` of the centre, in physical units.

    Along an axis whose voxels are larger than the radius, the face neighbours are still
    included: a morphological step smaller than one voxel would be no step at all.
    """
    spacing = np.asarray(spacing_mm, dtype=float)
    reach = np.maximum(np.floor(radius_mm / spacing + 1e-9).astype(int), 1)
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    scaled = sum((g * s / max(radius_mm, r * s)) ** 2 for g, s, r in zip(grids, spacing, reach))
    return scaled <= 1 + 1e-9


def step_structure(spacing_mm, step_mm: float = STEP_MM) -> np.ndarray | None:
    """The face-neighbour cross along the axes whose voxels are at most ``step_mm`` long
    (``None`` when no axis is that fine: no step can be taken)."""
    fine = [float(s) <= step_mm * (1 + 1e-6) for s in spacing_mm]
    if not any(fine):
        return None
    element = np.zeros((3, 3, 3), dtype=bool)
    element[1, 1, 1] = True
    for axis, ok in enumerate(fine):
        if ok:
            index = [1, 1, 1]
            for offset in (0, 2):
                index[axis] = offset
                element[tuple(index)] = True
    return element


def erode_mm(mask: np.ndarray, radius_mm: float, spacing_mm, *, step_mm: float = STEP_MM) -> np.ndarray:
    """Erode by ``radius_mm`` in steps of ``step_mm`` (one face-neighbour step per voxel of at
    most ``step_mm``; coarser axes are left alone). On a 1 mm grid, ``radius_mm`` = n is
    exactly n 6-neighbour erosions, the published rules' operation."""
    steps = int(round(radius_mm / step_mm))
    element = step_structure(spacing_mm, step_mm)
    if steps <= 0 or element is None:
        return mask.astype(bool)
    return ndimage.binary_erosion(mask, structure=element, iterations=steps)


def min_voxels_for(min_mm3: float, voxel_mm3: float, *, strictly: bool = False) -> int:
    """Fewest voxels whose volume is at least (``strictly``: above) ``min_mm3``."""
    ratio = min_mm3 / voxel_mm3
    count = int(np.floor(ratio + 1e-9)) + 1 if strictly else int(np.ceil(ratio - 1e-9))
    return max(count, 1)


def select_clusters(mask: np.ndarray, *, min_voxels: int = 1, require_core: bool = False,
                    spacing_mm=(1.0, 1.0, 1.0), core_mm: float = PRADOS_CORE_EROSION_MM,
                    connectivity: int = CANDIDATE_CONNECTIVITY) -> np.ndarray:
    """Clusters of ``mask`` with at least ``min_voxels`` voxels (and, with ``require_core``,
    a voxel that survives an erosion by ``core_mm``, see :func:`erode_mm`), labelled 1..n
    in one labelling pass."""
    labels, count = label_components(mask, connectivity=connectivity)
    if count == 0:
        return labels
    keep = component_sizes(labels, count) >= min_voxels
    if require_core:
        has_core = np.zeros(count + 1, dtype=bool)
        has_core[np.unique(labels[erode_mm(mask, core_mm, spacing_mm)])] = True
        keep &= has_core
    return relabel_kept(labels, keep)[0]


def keep_bright(labels: np.ndarray, image: np.ndarray, minimum: float) -> np.ndarray:
    """The clusters of ``labels`` whose mean of ``image`` reaches ``minimum``, relabelled 1..n;
    ``minimum`` <= 0 keeps them all (the condition off, :data:`MIN_FOLLOWUP_SD`)."""
    count = int(labels.max()) if labels.size else 0
    if count == 0 or minimum <= 0:
        return labels
    sums = np.bincount(labels.ravel(), weights=np.asarray(image, dtype=np.float64).ravel(), minlength=count + 1)
    return relabel_kept(labels, sums >= minimum * np.maximum(component_sizes(labels, count), 1))[0]


def keep_peaked(labels: np.ndarray, image: np.ndarray, minimum: float) -> np.ndarray:
    """The clusters of ``labels`` whose maximum of ``image`` reaches ``minimum``, relabelled 1..n;
    ``minimum`` <= 0 keeps them all (the condition off, :data:`MIN_PEAK_SD`)."""
    count = int(labels.max()) if labels.size else 0
    if count == 0 or minimum <= 0:
        return labels
    peaks = ndimage.maximum(np.asarray(image, dtype=np.float64), labels, np.arange(1, count + 1))
    return relabel_kept(labels, np.concatenate([[False], np.asarray(peaks) >= minimum]))[0]


def peak_units(subtraction: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The subtraction in SDs of its values in the brain, about their mean (what
    :data:`MIN_PEAK_SD` counts); zeros when the brain's subtraction is constant."""
    values = subtraction[brain].astype(np.float64)
    spread = float(values.std()) if values.size else 0.0
    if spread <= 0:
        return np.zeros(subtraction.shape, dtype=np.float32)
    return ((subtraction - values.mean()) / spread).astype(np.float32)


def keep_candidates(labels: np.ndarray, followup_z: np.ndarray, subtraction: np.ndarray, brain: np.ndarray, *,
                    min_followup_sd: float, min_peak_sd: float) -> np.ndarray:
    """The conditions after each rule's own: hyperintense at follow-up (:data:`MIN_FOLLOWUP_SD`)
    and a high enough peak (:data:`MIN_PEAK_SD`); labels 1..n."""
    labels = keep_bright(labels, followup_z, min_followup_sd)
    if min_peak_sd > 0 and labels.max() > 0:
        labels = keep_peaked(labels, peak_units(subtraction, brain), min_peak_sd)
    return labels


def survives_erosion(mask: np.ndarray, spacing_mm=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Keep the clusters of ``mask`` that still have a voxel after a 1 mm erosion."""
    return select_clusters(mask, require_core=True, spacing_mm=spacing_mm) > 0


def keep_larger_than(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """Keep clusters of at least ``min_voxels`` voxels."""
    return select_clusters(mask, min_voxels=min_voxels) > 0


def condition_pair(baseline: np.ndarray, followup: np.ndarray, brain: np.ndarray, *, spacing_mm,
                   bias_sigma_mm: float = DIFFERENTIAL_BIAS_SIGMA_MM) -> np.ndarray:
    """The follow-up freed of the smooth bias difference to the baseline.

    Skipped (follow-up returned as is) when ``bias_sigma_mm`` is 0 or when the scans
    are not positive intensities (e.g. already z-scored), where a log ratio is meaningless.
    """
    positive = (baseline[brain] > 0).mean() > 0.9 and (followup[brain] > 0).mean() > 0.9
    if bias_sigma_mm <= 0 or not positive:
        return followup
    key = _digest(baseline, followup, brain, np.asarray(spacing_mm, dtype=np.float64), np.float64(bias_sigma_mm))
    if _CONDITIONED.get("key") != key:
        _CONDITIONED.update(key=key, value=differential_bias_correction(
            baseline, followup, brain, spacing_mm=spacing_mm, sigma_mm=bias_sigma_mm))
    return _CONDITIONED["value"].copy()


#: The last conditioned pair of this process: `subtract` and `refine` of one `mstools run`
#: condition the same pair (0.7 s on a 1 mm pair); a digest of the inputs makes it safe.
_CONDITIONED: dict = {}


def _digest(*arrays: np.ndarray) -> str:
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def conditioned_subtraction(baseline: np.ndarray, followup: np.ndarray, brain: np.ndarray, affine: np.ndarray,
                 bias_sigma_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(z-scored baseline, z-scored follow-up, subtraction, bias-corrected follow-up)."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    corrected = condition_pair(baseline, followup, brain, spacing_mm=spacing, bias_sigma_mm=bias_sigma_mm)
    b, f = zscore_in_mask(baseline, brain), zscore_in_mask(corrected, brain)
    return b, f, np.where(brain, f - b, 0).astype(np.float32), corrected


def _matched_baseline(baseline: np.ndarray, followup: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Baseline brain voxels histogram-matched to the follow-up's (a 1D array over ``brain``)."""
    inside = np.ones(int(brain.sum()), dtype=bool)
    return match_histogram(baseline[brain], followup[brain], inside)


def _ratio(baseline: np.ndarray, followup: np.ndarray, brain: np.ndarray,
           matched: np.ndarray | None = None) -> np.ndarray:
    """Follow-up / histogram-matched baseline inside the brain, 0 outside."""
    matched = _matched_baseline(baseline, followup, brain) if matched is None else matched
    values = followup[brain]
    floor = max(float(np.percentile(values, 1)), 1e-6)
    ratio = np.zeros(brain.shape, dtype=np.float32)
    ratio[brain] = values / np.maximum(matched, floor)
    return ratio


def prados_candidates(baseline: np.ndarray, followup: np.ndarray, brain: np.ndarray, *, affine: np.ndarray,
                      csf: np.ndarray | None = None, k: float = PRADOS_K_SD,
                      min_mm3: float = PRADOS_MIN_MM3,
                      baseline_hyper_sd: float = PRADOS_BASELINE_HYPER_SD,
                      bias_sigma_mm: float = DIFFERENTIAL_BIAS_SIGMA_MM,
                      core_mm: float = PRADOS_CORE_EROSION_MM, noise: str = PRADOS_NOISE,
                      min_followup_sd: float = MIN_FOLLOWUP_SD,
                      min_peak_sd: float = MIN_PEAK_SD["prados"]) -> SubtractionResult:
    """Prados & Kanber's first stage (paper 001, section 2.1); see the module docstring.

    ``core_mm``: a cluster must survive an erosion of this radius (0: no core needed).
    ``noise``: how the difference's centre and spread are measured (:data:`NOISE_ESTIMATES`).
    ``min_followup_sd``: a cluster's mean z-scored follow-up must reach it (0: off).
    ``min_peak_sd``: a cluster's peak subtraction must reach it (:data:`MIN_PEAK_SD`; 0: off)."""
    if noise not in NOISE_ESTIMATES:
        raise ValueError(f"unknown noise estimate {noise!r}; choose one of {', '.join(NOISE_ESTIMATES)}")
    brain = brain > 0
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    min_voxels = min_voxels_for(min_mm3, float(abs(np.linalg.det(affine[:3, :3]))), strictly=True)
    b, f, d, corrected = conditioned_subtraction(baseline, followup, brain, affine, bias_sigma_mm)
    csf = csf_from_flair(baseline, brain) if csf is None else csf > 0
    inclusion = (erode_mm(brain, PRADOS_BRAIN_EROSION_MM, spacing)
                 & ~erode_mm(csf, PRADOS_VENTRICLE_EROSION_MM, spacing)
                 & ~(b > baseline_hyper_sd))
    values = d[inclusion]
    mean, sd = difference_spread(values, noise)
    score = np.where(brain, (d - mean) / sd, 0).astype(np.float32)
    mask = inclusion & (score > k)
    labels = select_clusters(mask, min_voxels=min_voxels, require_core=core_mm > 0, spacing_mm=spacing,
                             core_mm=core_mm)
    labels = keep_candidates(labels, f, d, brain, min_followup_sd=min_followup_sd, min_peak_sd=min_peak_sd)
    return SubtractionResult(
        subtraction=d, ratio=_ratio(baseline, corrected, brain),
        detections=detections_from_labels(labels, score, affine),
        details={"rule": "prados", "k_sd": k, "noise": noise, "difference_mean": mean, "difference_sd": sd,
                 "min_mm3": min_mm3, "min_voxels": min_voxels, "core_mm": core_mm,
                 "min_followup_sd": min_followup_sd, "min_peak_sd": min_peak_sd,
                 "inclusion_voxels": int(inclusion.sum())})


def difference_spread(values: np.ndarray, noise: str = PRADOS_NOISE) -> tuple[float, float]:
    """(centre, spread) of the subtraction's values: mean and SD, or median and 1.4826 x MAD."""
    if noise == "robust":
        centre = float(np.median(values))
        spread = 1.4826 * float(np.median(np.abs(values - centre)))
        if spread > 0:
            return centre, spread
    return float(values.mean()), float(values.std())


def larosa_threshold(nmi: float) -> float:
    """The subtraction threshold for a pair with normalised mutual information ``nmi``."""
    lo, hi = LAROSA_NMI_RANGE
    poor = float(np.clip((hi - nmi) / (hi - lo), 0.0, 1.0))
    return LAROSA_THRESHOLDS[0] + poor * (LAROSA_THRESHOLDS[1] - LAROSA_THRESHOLDS[0])


def larosa_candidates(baseline: np.ndarray, followup: np.ndarray, brain: np.ndarray, *, affine: np.ndarray,
                      threshold: float | None = None, min_mm3: float = LAROSA_MIN_MM3,
                      bias_sigma_mm: float = DIFFERENTIAL_BIAS_SIGMA_MM,
                      min_followup_sd: float = MIN_FOLLOWUP_SD,
                      min_peak_sd: float = MIN_PEAK_SD["larosa"]) -> SubtractionResult:
    """La Rosa et al.'s subtraction with a registration-adaptive threshold (paper 001); clusters
    hyperintense at follow-up (``min_followup_sd``, see :data:`MIN_FOLLOWUP_SD`) and peaking
    high enough (``min_peak_sd``, :data:`MIN_PEAK_SD`)."""
    brain = brain > 0
    b, f, d, corrected = conditioned_subtraction(baseline, followup, brain, affine, bias_sigma_mm)
    nmi = normalised_mutual_information(b, f, brain)
    level = larosa_threshold(nmi) if threshold is None else threshold
    min_voxels = min_voxels_for(min_mm3, float(abs(np.linalg.det(affine[:3, :3]))))
    labels = select_clusters(brain & (d > level), min_voxels=min_voxels)
    labels = keep_candidates(labels, f, d, brain, min_followup_sd=min_followup_sd, min_peak_sd=min_peak_sd)
    return SubtractionResult(
        subtraction=d, ratio=_ratio(baseline, corrected, brain),
        detections=detections_from_labels(labels, d, affine),
        details={"rule": "larosa", "nmi": nmi, "threshold": level, "adaptive": threshold is None,
                 "min_mm3": min_mm3, "min_voxels": min_voxels, "min_followup_sd": min_followup_sd,
                 "min_peak_sd": min_peak_sd})


def discretise(image: np.ndarray, mask: np.ndarray, levels: int) -> np.ndarray:
    """Grey levels 1..levels, equal-width between the 1st and 99th percentile inside the mask."""
    lo, hi = np.percentile(image[mask], (1, 99))
    scaled = np.floor((image - lo) / max(hi - lo, 1e-6) * levels) + 1
    return np.clip(scaled, 1, levels).astype(np.float32)


def hamzaoui_candidates(baseline: np.ndarray, followup: np.ndarray, brain: np.ndarray, *, affine: np.ndarray,
                        ratio_threshold: float = HAMZAOUI_RATIO, levels: int = HAMZAOUI_GREY_LEVELS,
                        opening_mm: float = HAMZAOUI_OPENING_MM,
                        min_mm3: float = HAMZAOUI_MIN_MM3,
                        bias_sigma_mm: float = DIFFERENTIAL_BIAS_SIGMA_MM,
                        min_followup_sd: float = MIN_FOLLOWUP_SD,
                        min_peak_sd: float = MIN_PEAK_SD["hamzaoui"]) -> SubtractionResult:
    """Hamzaoui et al.'s intensity-ratio ROI detection (paper 001, step one); clusters
    hyperintense at follow-up (``min_followup_sd``, see :data:`MIN_FOLLOWUP_SD`) and peaking
    high enough in the subtraction (``min_peak_sd``, :data:`MIN_PEAK_SD`)."""
    brain = brain > 0
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    _, f, d, corrected = conditioned_subtraction(baseline, followup, brain, affine, bias_sigma_mm)
    matched = _matched_baseline(baseline, corrected, brain)
    ratio = _ratio(baseline, corrected, brain, matched)
    level_f = discretise(corrected, brain, levels)
    level_b = np.zeros(brain.shape, dtype=np.float32)
    level_b[brain] = discretise(matched, np.ones(matched.shape, bool), levels)
    level_b[~brain] = 1
    inner = ndimage.binary_erosion(brain, structure=ball(HAMZAOUI_BRAIN_EROSION_MM, spacing))
    mask = inner & (level_f / level_b > ratio_threshold)
    mask = ndimage.binary_opening(mask, structure=ball(opening_mm, spacing))
    min_voxels = min_voxels_for(min_mm3, voxel_mm3, strictly=True)
    labels = select_clusters(mask, min_voxels=min_voxels)
    labels = keep_candidates(labels, f, d, brain, min_followup_sd=min_followup_sd, min_peak_sd=min_peak_sd)
    return SubtractionResult(
        subtraction=d, ratio=ratio,
        detections=detections_from_labels(labels, ratio, affine),
        details={"rule": "hamzaoui", "ratio_threshold": ratio_threshold, "grey_levels": levels,
                 "opening_mm": opening_mm, "min_mm3": min_mm3, "min_followup_sd": min_followup_sd,
                 "min_peak_sd": min_peak_sd})


def detect(baseline: np.ndarray, followup: np.ndarray, brain: np.ndarray, *, affine: np.ndarray,
           rule: str = "prados", csf: np.ndarray | None = None, **options) -> SubtractionResult:
    """Run one of ``RULES`` (options are that rule's keyword arguments; ``min_peak_sd=None``
    is the rule's own, :data:`MIN_PEAK_SD`)."""
    if "min_peak_sd" in options and options["min_peak_sd"] is None:
        del options["min_peak_sd"]
    if rule == "prados":
        return prados_candidates(baseline, followup, brain, affine=affine, csf=csf, **options)
    if rule == "larosa":
        return larosa_candidates(baseline, followup, brain, affine=affine, **options)
    if rule == "hamzaoui":
        return hamzaoui_candidates(baseline, followup, brain, affine=affine, **options)
    raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
