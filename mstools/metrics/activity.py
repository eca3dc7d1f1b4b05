"""Scoring lesion activity: enlarging lesions, the kinds of changes, the patient decision.

The truth comes from the all-lesion masks of both visits and the new-lesion mask (a case
folder's ``lesions_time01``, ``lesions_time02`` and ``ground_truth``, as the simulator
writes them): every baseline lesion (26-connected component at time 1) is

- **enlarging** when its volume grew (the time-2 lesions that overlap it, outside the new
  lesions and the other time-1 lesions, against its time-1 volume) by at least
  ``min_lesion_mm3`` and :data:`CHANGE_FRACTION`; its grown part is what lies outside
  every time-1 lesion,
- **shrinking** when its volume fell by as much,
- stable otherwise (a lesion moved by atrophy or misalignment keeps its volume);

a patient is **active** when a new lesion (larger than ``min_lesion_mm3``, the MSSEG-2
rule of :mod:`mstools.metrics.lesionwise`) or an enlarging lesion exists.

Scores: enlarging LTPR (a reported grown part overlaps the true grown part), the share of
enlarging and of shrinking lesions reported as new (a reported new lesion overlaps the
lesion at either visit), kind accuracy (of the true new and enlarging lesions that were
reported at all, the share reported in the right kind only), and for a cohort the
patient decision: sensitivity, specificity and the AUC of the activity probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mstools.lesions import label_components
from mstools.metrics.defaults import CONNECTIVITY, MIN_LESION_MM3


#: Smallest relative volume change of a true enlarging or shrinking lesion. Stable lesions
#: moved by the simulator's atrophy keep their volume (0 change at the 5th and 95th
#: percentiles of 300 stable lesions, seeds 3000-3019; one at -36 %), while simulated
#: growths add 87-233 % and shrinkings lose 50-83 %: 20 % lies between.
CHANGE_FRACTION = 0.2


@dataclass
class TrueChange:
    kind: str                 # new | enlarging | shrinking
    region: np.ndarray        # the lesion at either visit (boolean)
    grown: np.ndarray | None  # enlarging: the grown part


def true_changes(lesions_time01: np.ndarray, lesions_time02: np.ndarray, new_lesions: np.ndarray, *,
                 affine: np.ndarray, min_lesion_mm3: float = MIN_LESION_MM3) -> list[TrueChange]:
    """Every true new, enlarging and shrinking lesion (see the module docstring)."""
    l1, l2, new = lesions_time01 > 0, lesions_time02 > 0, new_lesions > 0
    voxel_mm3 = float(abs(np.prod(np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0))))
    changes = []
    new_labels, _ = label_components(new, connectivity=CONNECTIVITY)   # as the MSSEG-2 rule counts them
    for label, box in enumerate(ndimage.find_objects(new_labels), start=1):
        region = np.zeros(new.shape, dtype=bool)
        region[box] = new_labels[box] == label
        if region.sum() * voxel_mm3 > min_lesion_mm3:
            changes.append(TrueChange("new", region, None))
    base, _ = label_components(l1)
    later, _ = label_components(l2)
    for label, box in enumerate(ndimage.find_objects(base), start=1):
        lesion = np.zeros(l1.shape, dtype=bool)
        lesion[box] = base[box] == label
        followers = np.unique(later[lesion])
        followers = followers[followers > 0]
        extent = np.isin(later, followers) if followers.size else np.zeros(l1.shape, dtype=bool)
        extent &= ~new & ~(l1 & ~lesion)              # its own time-2 extent
        grown = extent & ~l1
        region = lesion | extent
        change = (int(extent.sum()) - int(lesion.sum())) * voxel_mm3
        least = max(min_lesion_mm3, CHANGE_FRACTION * lesion.sum() * voxel_mm3)
        if change >= least and grown.any():
            changes.append(TrueChange("enlarging", region, grown))
        elif change <= -least:
            changes.append(TrueChange("shrinking", region, None))
    return changes


def is_active(changes: list[TrueChange]) -> bool:
    return any(change.kind in ("new", "enlarging") for change in changes)


def score_changes(changes: list[TrueChange], reported_new: np.ndarray, reported_enlarging: np.ndarray) -> dict:
    """Counts of one case (sum them over a cohort, then :func:`rates`)."""
    reported_new, reported_enlarging = reported_new > 0, reported_enlarging > 0
    counts = {"new": 0, "enlarging": 0, "shrinking": 0, "enlarging_detected": 0, "enlarging_as_new": 0,
              "shrinking_as_new": 0, "reported_any": 0, "right_kind": 0}
    for change in changes:
        counts[change.kind] += 1
        as_new = bool(reported_new[change.region].any())
        if change.kind == "enlarging":
            detected = bool(reported_enlarging[change.grown].any())
            counts["enlarging_detected"] += detected
            counts["enlarging_as_new"] += as_new
            if detected or as_new:
                counts["reported_any"] += 1
                counts["right_kind"] += detected and not as_new
        elif change.kind == "shrinking":
            counts["shrinking_as_new"] += as_new
        else:
            as_enlarging = bool(reported_enlarging[change.region].any())
            if as_new or as_enlarging:
                counts["reported_any"] += 1
                counts["right_kind"] += as_new and not as_enlarging
    return counts


def rates(counts: dict) -> dict:
    """Enlarging LTPR, enlarging / shrinking reported as new, kind accuracy (NaN when undefined)."""
    ratio = (lambda a, b: counts[a] / counts[b] if counts[b] else float("nan"))
    return {"enlarging_ltpr": ratio("enlarging_detected", "enlarging"),
            "enlarging_as_new": ratio("enlarging_as_new", "enlarging"),
            "shrinking_as_new": ratio("shrinking_as_new", "shrinking"),
            "changed_as_new": ((counts["enlarging_as_new"] + counts["shrinking_as_new"])
                               / (counts["enlarging"] + counts["shrinking"])
                               if counts["enlarging"] + counts["shrinking"] else float("nan")),
            "kind_accuracy": ratio("right_kind", "reported_any")}


def auc(scores, positive) -> float:
    """Area under the ROC curve (Mann-Whitney; ties count half); NaN without both classes."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def patient_decision(probabilities, decided_active, truly_active) -> dict:
    """Sensitivity and specificity of the yes/no decision, AUC of the probability."""
    decided = np.asarray(decided_active, dtype=bool)
    truth = np.asarray(truly_active, dtype=bool)
    return {"patients": int(truth.size), "active": int(truth.sum()),
            "sensitivity": float(decided[truth].mean()) if truth.any() else float("nan"),
            "specificity": float((~decided[~truth]).mean()) if (~truth).any() else float("nan"),
            "auc": auc(probabilities, truth)}
