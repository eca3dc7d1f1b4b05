"""Lesion activity: each change between the visits as new, enlarging or shrinking, and
the patient-level decision "radiologically active" with its confidence.

Clinicians judge treatment response by new *or enlarging* T2 lesions (NEDA-3). A
new-lesion detector sees an enlarging lesion's grown rim as a bright change next to a
lesion that was already there; this module tells the two apart with the baseline
all-lesion map:

- **enlarging**: a change (a subtraction candidate or a reported new lesion) that wraps
  round a baseline lesion: it covers at least :data:`RIM_COVERAGE_MIN` of that lesion's
  outer rim (the voxels within :data:`RIM_MM` outside it) and its centroid lies within
  :data:`CENTROID_OFFSET_MAX` radii of the lesion's. Its grown part is the change outside
  the baseline lesions, kept when it reaches :data:`MIN_CHANGE_MM3`.
- **new**: a reported new lesion that wraps round no baseline lesion. A new lesion that
  merely touches an old one lies beside it (its centroid far off) and stays new.
- **shrinking**: a baseline lesion of which at least :data:`SHRINK_FRACTION_MIN` of the
  voxels (and :data:`MIN_CHANGE_MM3`) became significantly darker (subtraction below
  ``-k`` SD, the same ``k`` as the run's candidates) and that did not grow.

Each lesion gets a location class from distances in mm (:class:`Locator`), and
the patient a probability of being active from a logistic model of the top lesion score
and the numbers of changes (:func:`activity_probability`, coefficients fitted on a
simulated calibration cohort by ``benchmarks/lesion_activity.py``).

Arrays in, arrays and rows out; no file I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mstools.lesions import label_components

#: Thickness (mm) of a baseline lesion's outer rim, the band where growth appears:
#: one 1 mm step of the morphology used by subtract (mstools.detect.subtraction.STEP_MM).
RIM_MM = 1.0

#: Share of a baseline lesion's rim a change must cover to be that lesion's growth.
#: Measured on the calibration cohort (seeds 3000-3010, benchmarks/lesion_activity.py):
#: changes overlapping a true growth covered 0.09-0.80 of the rim (four below 0.1),
#: false candidates next to a lesion 0.004-0.09 (one at 0.18, beside it: see the offset).
#: Over the whole calibration cohort (3000-3019, ``lesion_activity.py sweep``) enlarging
#: lesions found at 0.10 / 0.15 / 0.20 / 0.25: 41 / 39 / 36 / 31 of 46, none of the
#: enlarging or shrinking lesions reported as new at any of them.
RIM_COVERAGE_MIN = 0.1

#: A growth surrounds its lesion: the change's centroid lies within this many of the
#: baseline lesion's equivalent-sphere radii of the lesion's centroid. A new lesion that
#: touches an old one lies beside it. Measured on the calibration cohort (seeds 3000-3010,
#: benchmarks/lesion_activity.py): changes overlapping a true growth 0.09-1.02 (two of 2
#: and 16 mm3 at 1.29-1.34), new lesions touching an old one 1.31-3.29.
CENTROID_OFFSET_MAX = 1.2

#: Smallest grown or lost part (mm3) reported: the run's refine size rule (5 mm3, 5 voxels
#: of 1 mm; mstools.pipeline.stages.RUN_OVERRIDES), so that a change is lesion-sized.
MIN_CHANGE_MM3 = 5.0

#: Share of a baseline lesion's voxels that must darken for it to be called shrinking.
#: Simulated shrinking lesions keep 0.6-0.8 of their semi-axes (mstools.simulate.case):
#: they lose 49-78 % of their volume; 0.2 leaves room for partial volume at the rim.
SHRINK_FRACTION_MIN = 0.2

#: Why register's Jacobian is reported, not used for the kind: at register's default B-spline
#: grid (20 mm) the volume change inside simulated enlarging lesions measured 1.00-1.13
#: (mstools/detect/registration/parameters.py) while their volume grew 1.95-3.4 times: the
#: registration follows a growth only partly, for some not at all, so it cannot tell every
#: enlarging lesion from a stable one; the rim rule found 43 of 45 without it
#: (benchmarks/lesion_activity.py). A rule using it was not measured (elastix runs).
JACOBIAN_NOTE = "volume change (follow-up / baseline) from register, mean over the lesion"

#: Lesion kinds, in the order of the table.
KINDS = ("new", "enlarging", "shrinking")

#: Location classes (the simulator's and the MAGNIMS criteria's names).
LOCATIONS = ("periventricular", "juxtacortical", "deep_white_matter", "infratentorial")

#: A lesion within this distance (mm) of the ventricles is periventricular: lesions
#: "abutting" the lateral ventricles (MAGNIMS 2016 consensus, Filippi et al.) allowing
#: one 3 mm slice of partial volume.
PERIVENTRICULAR_MM = 3.0

#: Ventricular CSF: CSF at least this deep (mm) inside the brain mask; sulcal CSF lies
#: within a few mm of the surface, the lateral ventricles 20+ mm deep (MNI152 template).
VENTRICLE_DEPTH_MM = 15.0

#: The cortical ribbon when no grey-matter map is given: this deep (mm) from the brain
#: surface (mean cortical thickness 2.5 mm, Fischl & Dale 2000; one voxel more).
CORTEX_DEPTH_MM = 3.5

#: A lesion within this distance (mm) of the cortex is juxtacortical ("touching the
#: cortex", MAGNIMS 2016), one voxel of partial volume allowed.
JUXTACORTICAL_MM = 1.5

#: Infratentorial zone as fractions of the brain's extent along the world axes (RAS):
#: the MNI152 brain's z < -20 mm and y < -20 mm (mstools.simulate.lesions) are the lower
#: 34 % and the back 48 % of its extent. Approximate on tilted heads.
INFRATENTORIAL_FRACTIONS = {"inferior": 0.34, "posterior": 0.48}


@dataclass
class ActivityResult:
    """The classified changes of one pair."""

    new_labels: np.ndarray          # int32, one label per new lesion
    enlarging_labels: np.ndarray    # int32, the grown parts, labelled as their baseline lesion
    baseline_labels: np.ndarray     # int32, the baseline lesions (labels of the table's baseline_label)
    changes: list[dict]             # one row per change (see CHANGE_COLUMNS)

    def count(self, kind: str) -> int:
        return sum(1 for row in self.changes if row["kind"] == kind)


CHANGE_COLUMNS = ("label", "kind", "baseline_label", "baseline_volume_mm3", "followup_volume_mm3",
                  "growth_mm3", "growth_percent", "location", "centroid_x_mm", "centroid_y_mm",
                  "centroid_z_mm", "score_max", "jacobian_mean")


def spacing_of(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def voxels_by_label(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Label -> its voxels' indices (N x 3), for every label present."""
    found = {}
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is not None:
            found[label] = np.argwhere(labels[box] == label) + [b.start for b in box]
    return found


def _padded_box(mask: np.ndarray, margin) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by ``margin`` voxels per axis, inside the grid."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return tuple(slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(box, margin, mask.shape))


def decrease_mask(subtraction: np.ndarray, brain: np.ndarray, *, k: float) -> np.ndarray:
    """Voxels significantly darker at follow-up: the subtraction below ``-k`` SD of the brain's."""
    values = subtraction[brain]
    mean, sd = float(values.mean()), float(values.std())
    return brain & ((subtraction - mean) < -k * sd)


def classify_changes(new_mask: np.ndarray, increase_mask: np.ndarray, baseline_lesions: np.ndarray,
                     decrease: np.ndarray, *, affine: np.ndarray, score: np.ndarray | None = None,
                     locate=None, lesion_labels: np.ndarray | None = None,
                     jacobian: np.ndarray | None = None,
                     rim_coverage_min: float = RIM_COVERAGE_MIN,
                     centroid_offset_max: float = CENTROID_OFFSET_MAX,
                     min_change_mm3: float = MIN_CHANGE_MM3,
                     shrink_fraction_min: float = SHRINK_FRACTION_MIN) -> ActivityResult:
    """New, enlarging and shrinking lesions of a pair (see the module docstring).

    ``new_mask``: the reported new lesions (the run's final mask); ``increase_mask``: every
    candidate increase (subtract's candidates); ``baseline_lesions``: all lesions at
    baseline; ``decrease``: voxels that darkened (:func:`decrease_mask`); ``score``: the
    final probability map (for ``score_max``); ``locate``: region -> location class (a
    :class:`Locator`; without it every row says ``unknown``); ``lesion_labels``: the
    detector's own labels of ``new_mask`` (new lesions then keep its lesions' shapes);
    ``jacobian``: register's volume change map, reported per lesion (``jacobian_mean``, see
    :data:`JACOBIAN_NOTE`), not used to decide the kind.
    """
    new_mask, increase_mask = new_mask > 0, increase_mask > 0
    baseline_lesions, decrease = baseline_lesions > 0, decrease > 0
    spacing = spacing_of(affine)
    voxel_mm3 = float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))
    base_labels, n_base = label_components(baseline_lesions)
    base_sizes = np.bincount(base_labels.ravel(), minlength=n_base + 1)

    # each baseline lesion's rim, as one label map (a voxel in two rims goes to the nearer),
    # computed in the box of the baseline lesions
    rims = np.zeros(base_labels.shape, dtype=np.int32)
    if n_base:
        box = _padded_box(baseline_lesions, np.ceil(RIM_MM / spacing).astype(int) + 1)
        distance, nearest = ndimage.distance_transform_edt(~baseline_lesions[box], sampling=spacing,
                                                           return_indices=True)
        inside_rim = (distance > 0) & (distance <= RIM_MM + 1e-6)
        rims[box][inside_rim] = base_labels[box][tuple(index[inside_rim] for index in nearest)]
        del distance, nearest
    rim_sizes = np.bincount(rims.ravel(), minlength=n_base + 1)

    # the baseline lesions' centroids (voxels) and equivalent-sphere radii (mm)
    if n_base:
        centres = np.zeros((n_base + 1, 3))
        for label, where_box in enumerate(ndimage.find_objects(base_labels), start=1):
            centres[label] = np.argwhere(base_labels[where_box] == label).mean(axis=0) + [b.start for b in where_box]
        radii = np.cbrt(3.0 * base_sizes * voxel_mm3 / (4.0 * np.pi))

    changes_mask = (increase_mask | new_mask) & ~baseline_lesions
    change_labels, n_change = label_components(changes_mask | (new_mask & baseline_lesions))
    grown_by = {}                                   # baseline label -> change labels
    new_parts = []
    for label, box in enumerate(ndimage.find_objects(change_labels), start=1):
        component = change_labels[box] == label
        if n_base:
            covered = np.bincount(rims[box][component], minlength=n_base + 1)[1:]
            coverage = covered / np.maximum(rim_sizes[1:], 1)
            best = int(np.argmax(coverage)) + 1
            centre = np.argwhere(component).mean(axis=0) + [b.start for b in box]
            offset = np.linalg.norm((centre - centres[best]) * spacing) / max(radii[best], 1e-6)
            if coverage[best - 1] >= rim_coverage_min and offset <= centroid_offset_max:
                grown_by.setdefault(best, []).append(label)
                continue
        if new_mask[box][component].any():
            new_parts.append(label)

    rows = []
    matrix = np.asarray(affine, dtype=np.float64)
    peak = (lambda voxels: round(float(score[tuple(voxels.T)].max()), 4)   # "" where the detector did not score
            if score is not None and len(voxels) and score[tuple(voxels.T)].max() > 0 else "")
    centroid = (lambda voxels: matrix[:3, :3] @ voxels.mean(axis=0) + matrix[:3, 3])
    where = (lambda voxels: locate(voxels) if locate is not None else "unknown")
    volume_change = (lambda voxels: round(float(jacobian[tuple(voxels.T)].mean()), 4)
                     if jacobian is not None and len(voxels) else "")

    lookup = np.zeros(n_change + 1, dtype=np.int32)
    for number, label in enumerate(new_parts, start=1):
        lookup[label] = number
    if lesion_labels is None:
        new_labels = np.where(new_mask, lookup[change_labels], 0).astype(np.int32)
    else:   # the detector's own lesions, those in a new change, numbered in their order
        kept = np.zeros(int(lesion_labels.max()) + 1, dtype=np.int32)
        inside = lesion_labels > 0
        is_new = np.bincount(lesion_labels[inside], weights=lookup[change_labels[inside]] > 0,
                             minlength=len(kept)) > 0
        kept[np.flatnonzero(is_new)] = np.arange(1, int(is_new.sum()) + 1)
        new_labels = kept[lesion_labels].astype(np.int32)
    for number, voxels in voxels_by_label(new_labels).items():
        rows.append(_row(number, "new", "", 0.0, len(voxels) * voxel_mm3, centroid(voxels), where(voxels),
                         peak(voxels), volume_change(voxels)))

    lookup[:] = 0
    for b, labels in grown_by.items():
        lookup[labels] = b
    enlarging_labels = np.where(baseline_lesions, 0, lookup[change_labels]).astype(np.int32)
    grown_voxels = voxels_by_label(enlarging_labels)
    base_voxels = voxels_by_label(base_labels)
    lost = np.bincount(base_labels[decrease].ravel(), minlength=n_base + 1)
    for b in range(1, n_base + 1):
        grown = grown_voxels.get(b, np.zeros((0, 3), dtype=np.int64))
        growth, before = len(grown) * voxel_mm3, base_sizes[b] * voxel_mm3
        if len(grown) and growth >= min_change_mm3:
            after = before + growth - lost[b] * voxel_mm3
            both = np.vstack([grown, base_voxels[b]])
            rows.append(_row(b, "enlarging", b, before, after, centroid(grown), where(both), peak(grown),
                             volume_change(both)))
            continue
        if len(grown):                                  # a growth too small to report
            enlarging_labels[tuple(grown.T)] = 0
        if lost[b] >= shrink_fraction_min * base_sizes[b] and lost[b] * voxel_mm3 >= min_change_mm3:
            rows.append(_row(b, "shrinking", b, before, before - lost[b] * voxel_mm3, centroid(base_voxels[b]),
                             where(base_voxels[b]), "", volume_change(base_voxels[b])))
    return ActivityResult(new_labels, enlarging_labels, base_labels.astype(np.int32), rows)


def _row(label, kind, baseline_label, before, after, centre, location, score_max, jacobian_mean="") -> dict:
    growth = after - before
    return {"label": int(label), "kind": kind, "baseline_label": baseline_label,
            "baseline_volume_mm3": round(float(before), 3), "followup_volume_mm3": round(float(after), 3),
            "growth_mm3": round(float(growth), 3),
            "growth_percent": round(100.0 * growth / before, 1) if before > 0 else "",
            "location": location,
            "centroid_x_mm": round(float(centre[0]), 2), "centroid_y_mm": round(float(centre[1]), 2),
            "centroid_z_mm": round(float(centre[2]), 2), "score_max": score_max, "jacobian_mean": jacobian_mean}


# ----------------------------------------------------------------------------- location


class Locator:
    """Location class of a lesion region: infratentorial, else periventricular, else
    juxtacortical, else deep white matter (the order of the MAGNIMS criteria's
    topographies; a lesion in two zones is named by the first). Distances are exact
    (mm) and computed at the region's voxels only (:class:`mstools.distance.DistanceToMask`)."""

    def __init__(self, brain: np.ndarray, *, affine: np.ndarray, csf: np.ndarray,
                 grey_matter: np.ndarray | None = None):
        from mstools.distance import DistanceToMask

        brain = np.asarray(brain) > 0
        self.affine = np.asarray(affine, dtype=np.float64)
        spacing = spacing_of(affine)
        self.to_outside = DistanceToMask(~brain, spacing)        # depth inside the brain
        csf_voxels = np.argwhere((np.asarray(csf) > 0) & brain)
        ventricles = np.zeros(brain.shape, dtype=bool)
        deep = csf_voxels[self.to_outside(csf_voxels, limit_mm=VENTRICLE_DEPTH_MM) >= VENTRICLE_DEPTH_MM]
        ventricles[tuple(deep.T)] = True
        self.to_ventricle = DistanceToMask(ventricles, spacing)
        self.to_cortex = (DistanceToMask((np.asarray(grey_matter) > 0) & brain, spacing)
                          if grey_matter is not None else None)
        # the brain's world box from its surface (the voxels next to it, which the depth tree holds)
        surface = self.to_outside.tree.data / spacing if self.to_outside.tree is not None else np.argwhere(brain)
        world = surface @ self.affine[:3, :3].T + self.affine[:3, 3]
        self.low, self.high = world.min(axis=0), world.max(axis=0)

    def is_infratentorial(self, voxels: np.ndarray) -> np.ndarray:
        """Voxels in the lower-back part of the brain's world box (INFRATENTORIAL_FRACTIONS)."""
        world = voxels @ self.affine[:3, :3].T + self.affine[:3, 3]
        fraction = (world - self.low) / np.maximum(self.high - self.low, 1e-6)
        return ((fraction[:, 2] < INFRATENTORIAL_FRACTIONS["inferior"])
                & (fraction[:, 1] < INFRATENTORIAL_FRACTIONS["posterior"]))

    def __call__(self, region: np.ndarray) -> str:
        """``region``: a mask on the grid, or its voxels' indices (N x 3)."""
        region = np.asarray(region)
        voxels = region if region.ndim == 2 and region.shape[1] == 3 else np.argwhere(region > 0)
        if not len(voxels):
            return "unknown"
        if self.is_infratentorial(voxels).mean() > 0.5:
            return "infratentorial"
        if self.to_ventricle(voxels).min() <= PERIVENTRICULAR_MM:
            return "periventricular"
        if self.to_cortex is not None:
            juxtacortical = self.to_cortex(voxels).min() <= JUXTACORTICAL_MM
        else:   # the ribbon CORTEX_DEPTH_MM deep: within JUXTACORTICAL_MM of it
            juxtacortical = self.to_outside(voxels).min() <= CORTEX_DEPTH_MM + JUXTACORTICAL_MM
        return "juxtacortical" if juxtacortical else "deep_white_matter"


# ----------------------------------------------------------------------------- the patient


#: Logistic model of P(active): intercept and weights of (top lesion score, log(1 + number
#: of new and enlarging lesions), log(1 + number of subtract candidates)). Fitted by
#: ``python benchmarks/lesion_activity.py --fit`` on the calibration cohort (seeds
#: 3000-3019, 15 active and 5 inactive simulated patients); scored on seeds 3100-3119.
ACTIVITY_COEFFICIENTS = (-2.969, 0.563, 6.656, -0.343)


def activity_features(top_score: float, n_changes: int, n_candidates: int) -> np.ndarray:
    return np.array([1.0, float(top_score), np.log1p(n_changes), np.log1p(n_candidates)])


def patient_features(result: ActivityResult, n_candidates: int) -> np.ndarray:
    """The model's features of a classified pair: the top score of its new and enlarging
    lesions, their number, and the number of subtract candidates."""
    reported = [row for row in result.changes if row["kind"] in ("new", "enlarging")]
    top = max((float(row["score_max"]) for row in reported if row["score_max"] != ""), default=0.0)
    return activity_features(top, len(reported), n_candidates)


def probability_of(features: np.ndarray, *, coefficients=ACTIVITY_COEFFICIENTS) -> float:
    """Calibrated probability that the patient is radiologically active."""
    z = float(np.asarray(features, dtype=np.float64) @ np.asarray(coefficients, dtype=np.float64))
    return float(1.0 / (1.0 + np.exp(-z)))


def activity_probability(top_score: float, n_changes: int, n_candidates: int, *,
                         coefficients=ACTIVITY_COEFFICIENTS) -> float:
    """:func:`probability_of` the features of these numbers."""
    return probability_of(activity_features(top_score, n_changes, n_candidates), coefficients=coefficients)


def fit_logistic(features: np.ndarray, active: np.ndarray, *, ridge: float = 1e-2,
                 iterations: int = 50) -> np.ndarray:
    """Coefficients of a ridge-penalised logistic regression by Newton's method (the
    intercept is not penalised); ``features`` rows as :func:`activity_features` makes."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(active, dtype=np.float64)
    w = np.zeros(x.shape[1])
    penalty = np.eye(x.shape[1]) * ridge
    penalty[0, 0] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = x.T @ (p - y) + penalty @ w
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + penalty
        step = np.linalg.solve(hessian + 1e-9 * np.eye(len(w)), gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w
