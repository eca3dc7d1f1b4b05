"""Per-candidate features and the rules (or a learned classifier) that filter candidates.

La Rosa et al. (paper 001) kept a subtraction candidate only if it overlaps white
matter for at least 1/10 of its volume, does not touch CSF or a baseline lesion, is
brighter than its neighbourhood on the follow-up (contrast >= 0.9), and is ovoid
(pyradiomics least axis length >= 1.2 and sphericity >= 0.2). This module computes
those features (and a few more that a learned filter can use) for every candidate,
applies the rules with every threshold an option, and keeps a reason for every
rejection.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from mstools.lesions import label_components, structure

#: pyradiomics shape features measured for each candidate (mm, mm2, mm3, ratios).
SHAPE_FEATURES = ("LeastAxisLength", "MinorAxisLength", "MajorAxisLength", "Sphericity", "Elongation",
                  "Flatness", "MeshVolume", "SurfaceArea")

#: Thickness (mm) of the shell of neighbouring voxels the contrast is measured against.
SHELL_MM = 2.0

#: La Rosa et al. dropped candidates touching SAMSEG's CSF label, which excludes the
#: ventricles (SAMSEG labels them apart); periventricular lesions are kept. Without
#: that atlas we call CSF "ventricular" when it lies deeper than this below the brain
#: surface: the lateral ventricles sit 15 mm and more deep in the adult brain, sulcal
#: CSF within a few mm of it.
OUTER_CSF_DEPTH_MM = 10.0

FEATURE_COLUMNS = (
    "label", "voxels", "volume_mm3", "centroid_i", "centroid_j", "centroid_k",
    *(f"shape_{name}" for name in SHAPE_FEATURES),
    "neighbour_contrast", "baseline_mean", "followup_mean", "difference_mean",
    "score_mean", "score_max",
    "edge_distance_mm", "csf_distance_mm", "touches_csf", "wm_fraction", "touches_baseline_lesion",
    "baseline_lesion_fraction", "slice_mm",
)

#: Numeric columns a learned filter is trained on: identity and position are excluded, and
#: so is the voxel count, which means another volume on every grid (volume_mm3 says it in
#: mm3). ``slice_mm`` (the grid's largest voxel side) lets one model serve 1 mm scans and
#: 3-5 mm clinical slices, on which partial volume makes the same lesion look fainter.
MODEL_FEATURES = tuple(c for c in FEATURE_COLUMNS
                       if c not in ("label", "centroid_i", "centroid_j", "centroid_k", "voxels"))


@dataclass(frozen=True)
class FilterRules:
    """La Rosa et al.'s thresholds (paper 001); ``None`` switches a rule off."""

    min_least_axis_mm: float | None = 1.2
    min_sphericity: float | None = 0.2
    min_neighbour_contrast: float | None = 0.9
    min_wm_fraction: float | None = 0.1      # applied only when a tissue map is given
    drop_touching_csf: bool = True
    drop_touching_baseline_lesion: bool = True  # applied only when baseline lesions are given

    def as_dict(self) -> dict:
        return asdict(self)


def _shape_features(crop: np.ndarray, spacing: np.ndarray) -> dict[str, float]:
    """pyradiomics' shape class on one candidate's cropped mask (array axes i, j, k)."""
    import SimpleITK as sitk
    from radiomics import shape as radiomics_shape

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    mask = sitk.GetImageFromArray(crop.astype(np.uint8))
    mask.SetSpacing(tuple(float(s) for s in spacing[::-1]))  # sitk x = last array axis
    image = sitk.Cast(mask, sitk.sitkFloat32)
    calculator = radiomics_shape.RadiomicsShape(image, mask, label=1)
    for name in SHAPE_FEATURES:
        calculator.enableFeatureByName(name, True)
    # a flat or thin candidate has a zero eigenvalue: pyradiomics' Elongation/Flatness divide by
    # it and come out NaN (NaN features never reject); NumPy's warning about it is not the user's
    with np.errstate(divide="ignore", invalid="ignore"):
        values = calculator.execute()
    return {f"shape_{name}": _real_feature(values[name]) for name in SHAPE_FEATURES}


def _real_feature(value) -> float:
    """pyradiomics' axis lengths are 4 sqrt(eigenvalue) of the voxel covariance; for a flat
    candidate the smallest eigenvalue can be slightly negative by round-off and the length
    comes out imaginary: its real part (0) is the length."""
    return float(np.real(value))


def candidate_features(labels: np.ndarray, *, baseline: np.ndarray, followup: np.ndarray, brain: np.ndarray,
                       affine: np.ndarray, csf: np.ndarray, score: np.ndarray | None = None,
                       white_matter: np.ndarray | None = None,
                       baseline_lesions: np.ndarray | None = None) -> list[dict]:
    """One feature row per candidate label (see ``FEATURE_COLUMNS``).

    ``baseline`` and ``followup`` are the scans on one grid (any positive scale; the
    contrast is a ratio of follow-up means). Distances are in mm from the affine.
    """
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    brain = brain > 0
    csf = csf > 0
    from mstools.distance import DistanceToMask

    edge_distance = DistanceToMask(~brain, spacing)   # as distance_transform_edt(brain)
    csf_distance = DistanceToMask(csf, spacing) if csf.any() else None
    from mstools.detect.subtraction import ball  # the physical structuring element

    shell_element = ball(SHELL_MM, spacing)
    touch_element = structure(6)
    pad = np.array(shell_element.shape) // 2 + 1
    rows = []
    objects = ndimage.find_objects(labels)
    b_brain, f_brain = baseline[brain], followup[brain]
    b_scale = (float(b_brain.mean()), float(b_brain.std()) or 1.0)
    f_scale = (float(f_brain.mean()), float(f_brain.std()) or 1.0)
    for index, box in enumerate(objects):
        if box is None:
            continue
        label = index + 1
        lo = [max(s.start - p, 0) for s, p in zip(box, pad)]
        hi = [min(s.stop + int(p), int(n)) for s, p, n in zip(box, pad, labels.shape)]
        window = tuple(slice(a, b) for a, b in zip(lo, hi))
        region = labels[window] == label
        voxels = int(region.sum())
        coords = np.argwhere(region) + lo
        centroid = coords.mean(0)
        shell = ndimage.binary_dilation(region, structure=shell_element) & ~region & (labels[window] == 0) & brain[window]
        touch = ndimage.binary_dilation(region, structure=touch_element) & ~region
        f_in = followup[window][region]
        f_shell = followup[window][shell]
        contrast = float(f_in.mean() / f_shell.mean()) if f_shell.size and f_shell.mean() > 0 else math.nan
        b_z = (baseline[window][region] - b_scale[0]) / b_scale[1]
        f_z = (f_in - f_scale[0]) / f_scale[1]
        row = {
            "label": label, "voxels": voxels, "volume_mm3": voxels * voxel_mm3,
            "centroid_i": float(centroid[0]), "centroid_j": float(centroid[1]), "centroid_k": float(centroid[2]),
            "neighbour_contrast": contrast,
            "baseline_mean": float(b_z.mean()), "followup_mean": float(f_z.mean()),
            "difference_mean": float((f_z - b_z).mean()),
            "score_mean": float(score[window][region].mean()) if score is not None else math.nan,
            "score_max": float(score[window][region].max()) if score is not None else math.nan,
            "edge_distance_mm": float(edge_distance(coords).min()),
            "csf_distance_mm": float(csf_distance(coords).min()) if csf_distance is not None else math.inf,
            "touches_csf": _touches_outer_csf(csf[window] & (touch | region), lo, edge_distance),
            "wm_fraction": float((white_matter[window][region] > 0).mean()) if white_matter is not None else math.nan,
            "touches_baseline_lesion": (int(bool((baseline_lesions[window] > 0)[touch | region].any()))
                                        if baseline_lesions is not None else 0),
            "baseline_lesion_fraction": (float((baseline_lesions[window][region] > 0).mean())
                                         if baseline_lesions is not None else math.nan),
            "slice_mm": float(spacing.max()),
        }
        try:
            row.update(_shape_features(np.pad(region, 1), spacing))
        except Exception:  # pyradiomics fails on degenerate (e.g. planar) masks
            row.update({f"shape_{name}": math.nan for name in SHAPE_FEATURES})
        rows.append(row)
    return rows


def _touches_outer_csf(near_csf: np.ndarray, offset, edge_distance) -> int:
    """1 if any CSF voxel in or touching the candidate lies within OUTER_CSF_DEPTH_MM of the brain edge."""
    if not near_csf.any():
        return 0
    return int(bool((edge_distance(np.argwhere(near_csf) + offset) <= OUTER_CSF_DEPTH_MM).any()))


def rule_reasons(row: dict, rules: FilterRules, *, have_tissues: bool, have_baseline_lesions: bool) -> list[str]:
    """Why La Rosa's rules reject this candidate (empty: kept). NaN features never reject."""
    reasons = []

    def below(value, limit):
        return limit is not None and value is not None and not math.isnan(value) and value < limit

    if below(row["shape_LeastAxisLength"], rules.min_least_axis_mm):
        reasons.append(f"least_axis<{rules.min_least_axis_mm}")
    if below(row["shape_Sphericity"], rules.min_sphericity):
        reasons.append(f"sphericity<{rules.min_sphericity}")
    if below(row["neighbour_contrast"], rules.min_neighbour_contrast):
        reasons.append(f"contrast<{rules.min_neighbour_contrast}")
    if have_tissues and below(row["wm_fraction"], rules.min_wm_fraction):
        reasons.append(f"wm_fraction<{rules.min_wm_fraction}")
    if rules.drop_touching_csf and row["touches_csf"]:
        reasons.append("touches_csf")
    if have_baseline_lesions and rules.drop_touching_baseline_lesion and row["touches_baseline_lesion"]:
        reasons.append("touches_baseline_lesion")
    return reasons


def feature_matrix(rows: list[dict], columns=MODEL_FEATURES) -> np.ndarray:
    """Rows as a float matrix (NaN stays NaN: LightGBM treats it as missing)."""
    return np.array([[float(row[c]) if row.get(c) is not None else math.nan for c in columns] for row in rows],
                    dtype=np.float64).reshape(len(rows), len(columns))


def candidate_truth(labels: np.ndarray, ground_truth: np.ndarray, affine: np.ndarray) -> dict[int, int]:
    """1 for a candidate judged a true lesion by the MSSEG-2 (Anima) rule, else 0.

    Candidates are scored exactly as ``mstools evaluate`` scores a prediction whose
    lesions are these candidates (their own connected components, so that each
    candidate is one predicted lesion); candidates at or below the minimum lesion size
    are negatives.
    """
    from mstools.metrics.defaults import MIN_LESION_MM3
    from mstools.metrics.lesionwise import Components, find_components, lesion_overlap, min_voxels, msseg2_rule

    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    truth = find_components(ground_truth, connectivity=6)
    count = int(labels.max()) if labels.size else 0
    sizes = np.bincount(labels.ravel(), minlength=count + 1).astype(np.int64)
    prediction = Components(labels=labels.astype(np.int32, copy=False), count=count, sizes=sizes,
                            centroids=np.zeros((count + 1, 3)), boxes=[None] * (count + 1))
    table = lesion_overlap(truth, prediction, min_lesion_voxels=min_voxels(MIN_LESION_MM3, voxel_mm3))
    verdict = msseg2_rule(table).prediction.positive
    return {label: int(bool(verdict[label])) for label in range(1, count + 1) if sizes[label] > 0}


def decide_by_rules(rows: list[dict], rules: FilterRules, *, have_tissues: bool, have_baseline_lesions: bool) -> None:
    """Set each row's ``decision``: "kept" or the ';'-joined rejection reasons."""
    for row in rows:
        reasons = rule_reasons(row, rules, have_tissues=have_tissues, have_baseline_lesions=have_baseline_lesions)
        row["decision"] = "kept" if not reasons else ";".join(reasons)


def decide_by_model(rows: list[dict], model_text: str, features: list[str], threshold: float) -> None:
    """Set each row's ``probability`` (learned filter) and ``decision`` at ``threshold``."""
    from mstools.candidates.lesion_classifier import predict

    probabilities = predict(model_text, feature_matrix(rows, features))
    for row, p in zip(rows, probabilities):
        row["probability"] = float(p)
        row["decision"] = "kept" if p >= threshold else f"probability<{threshold:g}"


#: A second detector's score a kept candidate must reach somewhere inside it when the filter
#: confirms by agreement (``filter --confirm``, `mstools run`'s default with the multitask
#: network's score). Chosen 2026-12-07 on the 21 validation cases that neither the chain's
#: models nor the multitask weights were trained on (backgrounds 20 and 26: real and injected
#: lesions on real scans, some through `preprocess`; data_samples), from the chain's kept
#: lesions and the network's score maps (`python benchmarks/confirm_sweep.py`):
#: lesion F1 0.558 without, 0.582 / 0.585 / 0.577 / 0.592 / 0.571 at 0.05 / 0.1 / 0.2 / 0.3 / 0.5,
#: LFPR 0.296 -> 0.098 and LTPR 0.524 -> 0.483 at 0.3, Dice 0.543 -> 0.597. (Three of those cases,
#: xs-xs26-0..2, are in the multitask training set after all; on the 15 cases without them and
#: their preprocessed copies: F1 0.514 without, 0.546 / 0.548 / 0.565 / 0.548 at 0.1 / 0.2 / 0.3 / 0.5.)
#: Re-checked with the multitask weights of 2026-12-07 17:35, which trained on none of 25
#: development cases (those 15, 9 simulated clinical pairs, patient 01): F1 0.566 without,
#: 0.581 / 0.589 / 0.589 / 0.593 / 0.578 at 0.1 / 0.2 / 0.3 / 0.4 / 0.5; 0.3 stays (within 0.01).
CONFIRM_MIN_SCORE = 0.3


#: ``filter --add-confirming``: the confirming detector's own lesions are added only where they
#: were tissue at baseline, their mean baseline intensity at least this share of the baseline's
#: brain median. A new lesion forms in tissue (white or grey matter, near the median on FLAIR);
#: FLAIR suppresses CSF, and where a 2D follow-up suppresses it less (patient 01's lowest slices)
#: the network sees a new bright spot. Measured 2026-12-07 on development patient 01: 5 of the
#: network's 6 false lesions there lie at 0.49-0.65 of the median (the sixth at 0.93), its 3 true
#: ones at 0.88-1.03; 0.75 is the middle of that gap, rounded down. 0.7-0.85 give the same figures
#: on the 12 real-background development cases, whose other network lesions lie at 0.90-1.24
#: (benchmarks/REAL_SCANS.md, 2026-12-07 23:00).
ADDED_MIN_BASELINE = 0.75


def tissue_at_baseline(mask: np.ndarray, baseline: np.ndarray, brain: np.ndarray, minimum: float) -> np.ndarray:
    """The lesions of ``mask`` (26-connected) whose mean ``baseline`` intensity reaches
    ``minimum`` times the baseline's median over ``brain``: tissue at baseline, where a new lesion
    forms. Inputs are not modified."""
    labels, count = label_components(mask, connectivity=26)
    if count == 0:
        return np.zeros(labels.shape, dtype=bool)
    median = float(np.median(baseline[np.asarray(brain, dtype=bool)]))
    means = ndimage.mean(np.asarray(baseline, dtype=np.float64), labels, index=np.arange(1, count + 1))
    tissue = np.concatenate([[False], np.asarray(means) >= minimum * median])
    return tissue[labels]


def confirm_by_score(rows: list[dict], labels: np.ndarray, score: np.ndarray, minimum: float) -> None:
    """Agreement of two detectors: a kept candidate stays kept only where ``score`` (another
    detector's map on the same grid) reaches ``minimum`` inside it. Sets each row's
    ``confirm_max`` (that map's maximum over the candidate) and rejects the others."""
    count = int(labels.max()) if labels.size else 0
    if count == 0:
        return
    highest = ndimage.maximum(np.asarray(score, dtype=np.float32), labels, index=np.arange(count + 1))
    for row in rows:
        row["confirm_max"] = float(highest[row["label"]])
        if row["decision"] == "kept" and row["confirm_max"] < minimum:
            row["decision"] = f"unconfirmed<{minimum:g}"


def kept_detections(labels: np.ndarray, rows: list[dict], affine: np.ndarray, *,
                    added: np.ndarray | None = None, added_score: np.ndarray | None = None):
    """The kept candidates in the common convention; sets each row's ``output_label``.

    The score of a kept candidate is its probability (learned filter) or 1 (rules).
    ``added`` (another detector's lesion mask, ``filter --add-confirming``) joins the
    output; its voxels outside the kept candidates score ``added_score`` (that detector's
    map; 1 without one). One pass over the volume whatever the number of candidates.
    """
    from mstools.lesions import detections_from_mask

    size = int(labels.max()) + 1 if labels.size else 1
    keep = np.zeros(size, dtype=bool)
    value = np.zeros(size, dtype=np.float32)
    kept = [row["label"] for row in rows if row["decision"] == "kept"]
    for row in rows:
        if row["decision"] == "kept":
            keep[row["label"]] = True
            value[row["label"]] = row.get("probability", 1.0)
    kept_voxels = keep[labels]
    score = value[labels]
    reported = kept_voxels
    if added is not None:
        extra = np.asarray(added, dtype=bool) & ~kept_voxels
        score[extra] = 1.0 if added_score is None else np.asarray(added_score, dtype=np.float32)[extra]
        reported = kept_voxels | extra
    detections = detections_from_mask(reported, score, affine, connectivity=26)
    mapping = {}
    if kept:
        new = np.zeros(size, dtype=np.int64)   # each kept candidate's output label (its largest)
        np.maximum.at(new, labels[kept_voxels], np.asarray(detections.labels)[kept_voxels])
        mapping = {label: int(new[label]) for label in kept}
    for row in rows:
        row["output_label"] = mapping.get(row["label"], 0)
    return detections


def added_lesion_count(detections, rows: list[dict]) -> int:
    """How many of ``detections``' lesions hold no kept candidate (those ``added`` brought)."""
    with_candidates = {row["output_label"] for row in rows if row["output_label"]}
    return len(detections.table) - len(with_candidates)


def csf_and_white_matter(baseline: np.ndarray, brain: np.ndarray, tissues: np.ndarray | None):
    """CSF and WM masks from a tissue map (1 CSF, 2 GM, 3 WM), or CSF from FLAIR intensity and no WM."""
    from mstools.case_layout import TISSUE_LABELS
    from mstools.intensity import csf_from_flair

    if tissues is None:
        return csf_from_flair(baseline, brain > 0), None
    return tissues == TISSUE_LABELS["csf"], tissues == TISSUE_LABELS["wm"]
