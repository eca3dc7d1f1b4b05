"""Lesion-wise detection: connected components, overlap tables and three detection rules.

Lesions are the connected components of a binary mask (6-, 18- or 26-connectivity)
whose volume is strictly larger than a minimum; smaller components are "not counted":
they are treated as background by every rule, exactly as Anima does.

Three rules decide which ground-truth lesions are detected and which predicted
lesions are true:

``msseg2`` -- the rule of Anima's ``animaSegPerfAnalyzer``, which scored MSSEG-2
    (paper 001; Commowick et al. 2018, Sci. Rep. 8:13650, section 11). Read from
    ``Anima/segmentation/validation_tools/segmentation_performance_analyzer/
    animaSegPerfCAnalyzer.cxx`` (Inria-Empenn/Anima-Public, master after the fix
    c92adf9d of the loop bound). A ground-truth lesion ``g`` is detected when

    1. its coverage, (voxels of ``g`` inside counted predicted lesions) / (voxels of
       ``g``), is strictly greater than ``alpha``; and
    2. the predicted lesions overlapping ``g``, visited in decreasing overlap with
       ``g``, are accepted one by one while the accepted ones account for less than
       ``gamma`` of ``g``'s covered voxels; a visited lesion whose fraction of voxels
       outside every counted ground-truth lesion is strictly greater than ``beta``
       stops the visit and ``g`` is not detected. If the visit ends without such a
       lesion, ``g`` is detected.

    A predicted lesion is a true positive under the same rule with the roles of the
    two images exchanged (Anima transposes the overlap table): more than ``alpha``
    of it lies inside counted ground-truth lesions, and the ground-truth lesions it
    overlaps, in decreasing overlap until ``gamma`` of that overlap, each have at
    most ``beta`` of their own volume uncovered by counted predicted lesions.

    Consequences worth knowing (each has a test): a small prediction inside a large
    lesion covering more than ``alpha`` but less than ``1 - beta`` of it *detects*
    the lesion (nothing of the prediction is outside the truth) yet is itself a
    *false positive* (the lesion it overlaps is more than ``beta`` uncovered); a
    prediction mostly outside the truth blocks the detection of a lesion it overlaps
    when it is visited before ``gamma`` of the overlap is reached.

    Details reproduced from the source, where a paraphrase could differ:

    * Components: ITK ``ConnectedComponentImageFilter`` without full connectivity
      (6-connectivity in 3D), then ``RelabelComponentImageFilter`` with minimum size
      ``floor(min_mm3 / voxel_mm3) + 1`` voxels, i.e. volume strictly larger than
      ``min_mm3``. We add 1e-9 before the floor so that a lesion of exactly the
      minimum volume is dropped even when the division rounds just below an integer.
    * Inequalities: coverage ``> alpha``, outside fraction ``> beta`` blocks, visit
      continues while accumulated weight ``< gamma``.
    * Ties in overlap: Anima sorts with ``std::sort`` (order of ties unspecified)
      over labels ranked by decreasing size; we break ties by decreasing lesion size,
      then by label.
    * If floating-point rounding leaves the accumulated weight just below ``gamma``
      after every overlapping lesion (possible only with ``gamma`` = 1), Anima goes
      on visiting the non-overlapping lesions, and any of them outside by more than
      ``beta`` blocks; reproduced.
    * Scores: sensitivity = detected / ground-truth lesions (n/a when there is no
      counted ground-truth lesion: Anima divides 0 by 0); PPV = true predicted /
      predicted lesions, 0 when there is no predicted lesion; F1 = 2 PS / (P + S),
      0 unless P + S > 0 (a NaN sensitivity therefore gives F1 = 0, as in Anima).

``any_overlap`` -- ISBI 2015 (Carass et al. 2017), used by Denner et al. (paper 000):
    a ground-truth lesion is detected when at least one voxel of it is inside a
    counted predicted lesion (LTPR = detected / ground-truth lesions); a predicted
    lesion is false when none of its voxels is inside a counted ground-truth lesion
    (LFPR = false / predicted lesions, 0 when there is no predicted lesion).

``rule_10_70`` -- Walsh et al. (paper 004, following their ref. 10): a ground-truth
    lesion is detected when at least 10 % of its voxels are covered; a predicted
    lesion is false when more than 70 % of its voxels are outside the truth.
    Sensitivity, precision and F1 with the same conventions as ``msseg2``.

All rules use the same components (connectivity and minimum size), so that their
counts can be compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mstools.lesions import label_components
from mstools.metrics import defaults


# --------------------------------------------------------------------------- defaults


@dataclass(frozen=True)
class LesionRule:
    """How lesions are defined and matched. Defaults are Anima's (MSSEG-2 scoring).

    Source: :mod:`mstools.metrics.defaults` (``animaSegPerfAnalyzer`` command-line
    defaults and ITK's default face connectivity; MSSEG-2 proceedings, paper 001).
    """

    connectivity: int = defaults.CONNECTIVITY
    min_lesion_mm3: float = defaults.MIN_LESION_MM3  # lesions must be strictly larger
    alpha: float = defaults.ALPHA   # minimum coverage of a lesion (strictly greater)
    beta: float = defaults.BETA     # maximum fraction of an overlapping lesion outside (blocks if greater)
    gamma: float = defaults.GAMMA   # share of the overlap whose lesions are checked against beta

    def __post_init__(self) -> None:
        if self.connectivity not in (6, 18, 26):
            raise ValueError(f"connectivity must be 6, 18 or 26, not {self.connectivity}")
        if not (self.min_lesion_mm3 >= 0 and math.isfinite(self.min_lesion_mm3)):
            raise ValueError(f"min_lesion_mm3 must be a finite number >= 0, not {self.min_lesion_mm3}")
        if not 0 <= self.alpha < 1:
            raise ValueError(f"alpha must be in [0, 1), not {self.alpha}")
        if not 0 <= self.beta <= 1:
            raise ValueError(f"beta must be in [0, 1], not {self.beta}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], not {self.gamma}")


ANIMA_RULE = LesionRule()

RULE_10_70_MIN_COVERAGE = defaults.RULE_10_70_MIN_COVERAGE
RULE_10_70_MAX_OUTSIDE = defaults.RULE_10_70_MAX_OUTSIDE


def min_voxels(min_lesion_mm3: float, voxel_volume_mm3: float) -> int:
    """Largest voxel count that is *not* counted as a lesion (Anima: floor(min / voxel)).

    A component is a lesion when it has strictly more voxels than this. The relative
    1e-6 guards against round-off: 3 / (0.5 * 0.5 * 12) landing at 5.999999, and |det|
    of a float32 oblique affine being 3.00000002 for a 3 mm3 voxel (a one-voxel
    component of exactly 3 mm3 is not larger than 3 mm3).
    """
    if voxel_volume_mm3 <= 0:
        raise ValueError(f"voxel volume must be positive, not {voxel_volume_mm3}")
    return int(math.floor(min_lesion_mm3 / voxel_volume_mm3 * (1 + 1e-6) + 1e-9))


# --------------------------------------------------------------------------- components


@dataclass(frozen=True)
class Components:
    """Connected components of one mask, from a single labelling pass.

    ``labels`` numbers components 1..count in scan (C) order; ``sizes``,
    ``centroids`` and ``boxes`` are indexed by label (index 0 is the background and
    holds 0 / NaN / None).
    """

    labels: np.ndarray          # int32, same shape as the mask
    count: int
    sizes: np.ndarray           # int64 voxels, length count + 1
    centroids: np.ndarray       # float64 (count + 1, 3) voxel indices (i, j, k)
    boxes: list = field(repr=False)  # [None, (slice, slice, slice), ...]

    @property
    def total_voxels(self) -> int:
        return int(self.sizes[1:].sum())


def find_components(mask: np.ndarray, *, connectivity: int = 6) -> Components:
    """Label ``mask`` once and measure every component (size, centroid, bounding box).

    The measurements come from the foreground voxels only (no further full-volume
    pass), so the cost is one labelling plus work proportional to the lesion load.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"a 3D mask was expected, not shape {mask.shape}")
    # NIfTI arrays come in Fortran order; labelling and raveling are 2-3x faster in C order
    binary = np.ascontiguousarray(mask if mask.dtype == bool else mask != 0)
    labels, count = label_components(binary, connectivity=connectivity)
    flat = np.flatnonzero(binary)
    lab = labels.ravel()[flat]
    sizes = np.bincount(lab, minlength=count + 1).astype(np.int64)
    centroids = np.full((count + 1, 3), np.nan)
    boxes: list = [None] * (count + 1)
    if count:
        coords = np.unravel_index(flat, mask.shape)
        for axis, c in enumerate(coords):
            centroids[1:, axis] = np.bincount(lab, weights=c, minlength=count + 1)[1:] / sizes[1:]
        order = np.argsort(lab, kind="stable")
        starts = np.searchsorted(lab[order], np.arange(1, count + 1))
        lows = [np.minimum.reduceat(c[order], starts) for c in coords]
        highs = [np.maximum.reduceat(c[order], starts) for c in coords]
        for n in range(count):
            boxes[n + 1] = tuple(slice(int(lo[n]), int(hi[n]) + 1) for lo, hi in zip(lows, highs))
    return Components(labels=labels, count=count, sizes=sizes, centroids=centroids, boxes=boxes)


# --------------------------------------------------------------------------- overlap table


@dataclass(frozen=True)
class LesionOverlap:
    """Sparse overlap table between ground-truth and predicted components.

    ``pairs_*`` list every (ground-truth label, predicted label, shared voxels) with
    at least one shared voxel, all components included; ``*_counted`` flag the
    components larger than the minimum size (index 0 is always False).
    """

    gt_sizes: np.ndarray
    pred_sizes: np.ndarray
    gt_counted: np.ndarray
    pred_counted: np.ndarray
    pairs_gt: np.ndarray
    pairs_pred: np.ndarray
    pairs_voxels: np.ndarray

    @property
    def intersection_voxels(self) -> int:
        return int(self.pairs_voxels.sum())

    def counted_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keep = self.gt_counted[self.pairs_gt] & self.pred_counted[self.pairs_pred]
        return self.pairs_gt[keep], self.pairs_pred[keep], self.pairs_voxels[keep]


def lesion_overlap(ground_truth: Components, prediction: Components, *, min_lesion_voxels: int) -> LesionOverlap:
    """Count shared voxels of every component pair with one bincount-style pass.

    Only voxels inside both masks are visited. Components with at most
    ``min_lesion_voxels`` voxels are flagged as not counted.
    """
    if ground_truth.labels.shape != prediction.labels.shape:
        raise ValueError("ground truth and prediction have different shapes")
    lg = ground_truth.labels.ravel()
    lp = prediction.labels.ravel()
    both = np.flatnonzero((lg != 0) & (lp != 0)) if ground_truth.count and prediction.count else np.empty(0, np.int64)
    width = np.int64(prediction.count + 1)
    keys, voxels = np.unique(lg[both].astype(np.int64) * width + lp[both], return_counts=True)
    gt_counted = ground_truth.sizes > min_lesion_voxels
    pred_counted = prediction.sizes > min_lesion_voxels
    gt_counted[0] = False
    pred_counted[0] = False
    return LesionOverlap(
        gt_sizes=ground_truth.sizes, pred_sizes=prediction.sizes,
        gt_counted=gt_counted, pred_counted=pred_counted,
        pairs_gt=(keys // width).astype(np.int64), pairs_pred=(keys % width).astype(np.int64),
        pairs_voxels=voxels.astype(np.int64),
    )


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SideVerdict:
    """Per-lesion outcome of one rule for one side (index = label; 0 unused)."""

    positive: np.ndarray        # bool: detected (ground truth) / true (prediction)
    reason: list                # str per label ("" for label 0 and for not counted lesions)


@dataclass(frozen=True)
class RuleResult:
    """Counts and scores of one detection rule."""

    ground_truth: SideVerdict
    prediction: SideVerdict
    gt_lesions: int
    pred_lesions: int
    detected: int               # ground-truth lesions detected
    true_predicted: int         # predicted lesions judged true

    @property
    def missed(self) -> int:
        return self.gt_lesions - self.detected

    @property
    def false_positive(self) -> int:
        return self.pred_lesions - self.true_predicted

    @property
    def sensitivity(self) -> float:
        """Detected / ground-truth lesions; NaN without ground-truth lesion (0/0)."""
        return self.detected / self.gt_lesions if self.gt_lesions else math.nan

    @property
    def ppv(self) -> float:
        """True / predicted lesions; 0 without predicted lesion (Anima)."""
        return self.true_predicted / self.pred_lesions if self.pred_lesions else 0.0

    @property
    def f1(self) -> float:
        """2 PS / (P + S); 0 unless P + S > 0 (Anima, including a NaN sensitivity)."""
        p, s = self.ppv, self.sensitivity
        return 2 * p * s / (p + s) if p + s > 0 else 0.0

    @property
    def false_positive_rate(self) -> float:
        """False / predicted lesions (LFPR); 0 without predicted lesion."""
        return self.false_positive / self.pred_lesions if self.pred_lesions else 0.0


def _per_side_sums(table: LesionOverlap):
    g, p, v = table.counted_pairs()
    inside_gt = np.bincount(g, weights=v, minlength=table.gt_sizes.size).astype(np.int64)
    inside_pred = np.bincount(p, weights=v, minlength=table.pred_sizes.size).astype(np.int64)
    return g, p, v, inside_gt, inside_pred


def _fraction(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros(denominator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _anima_side(ref_sizes, ref_counted, covered, test_sizes, test_counted, test_inside,
                ref_idx, test_idx, voxels, *, alpha, beta, gamma, ref_name, test_name, positive_word,
                negative_word):
    """Anima's ``getTruePositiveLesions`` for the reference side (see module docstring)."""
    n_ref = ref_sizes.size
    positive = np.zeros(n_ref, dtype=bool)
    reason = [""] * n_ref
    # fraction of each test lesion outside every counted reference lesion
    test_outside = _fraction(test_sizes - test_inside, test_sizes)
    test_bad = test_counted & (test_outside > beta)
    n_bad = int(test_bad.sum())
    # partners of each reference lesion in decreasing overlap, then decreasing size, then label
    order = np.lexsort((test_idx, -test_sizes[test_idx], -voxels, ref_idx))
    r_sorted, t_sorted, v_sorted = ref_idx[order], test_idx[order], voxels[order]
    starts = np.searchsorted(r_sorted, np.arange(n_ref + 1))
    for r in np.flatnonzero(ref_counted):
        size = int(ref_sizes[r])
        tp = int(covered[r])
        coverage = tp / size
        if tp == 0:
            reason[r] = f"{negative_word}: no counted {test_name} lesion overlaps it"
            continue
        if not coverage > alpha:
            reason[r] = (f"{negative_word}: {coverage:.1%} inside {test_name} lesions, "
                         f"not more than alpha = {alpha:g}")
            continue
        weight = 0.0
        blocker = -1
        lo, hi = starts[r], starts[r + 1]
        for k in range(lo, hi):
            if not weight < gamma:
                break
            t = int(t_sorted[k])
            if test_bad[t]:
                blocker = t
                break
            weight += float(v_sorted[k]) / float(tp)
        else:
            if weight < gamma and n_bad:
                # Anima goes on through the non-overlapping lesions (rounding, gamma = 1)
                candidates = np.flatnonzero(test_bad)
                blocker = int(candidates[np.argmax(test_sizes[candidates])])
        if blocker >= 0:
            reason[r] = (f"{negative_word}: {test_name} lesion {blocker} overlapping it is "
                         f"{test_outside[blocker]:.1%} outside {ref_name} lesions, more than beta = {beta:g}")
            continue
        positive[r] = True
        reason[r] = f"{positive_word}: {coverage:.1%} inside {test_name} lesions"
    return SideVerdict(positive=positive, reason=reason)


def msseg2_rule(table: LesionOverlap, *, alpha: float = ANIMA_RULE.alpha, beta: float = ANIMA_RULE.beta,
                gamma: float = ANIMA_RULE.gamma) -> RuleResult:
    """Anima's ``animaSegPerfAnalyzer`` lesion detection (MSSEG-2); see the module docstring."""
    g, p, v, inside_gt, inside_pred = _per_side_sums(table)
    gt_side = _anima_side(table.gt_sizes, table.gt_counted, inside_gt, table.pred_sizes, table.pred_counted,
                          inside_pred, g, p, v, alpha=alpha, beta=beta, gamma=gamma,
                          ref_name="ground-truth", test_name="predicted", positive_word="detected",
                          negative_word="missed")
    pred_side = _anima_side(table.pred_sizes, table.pred_counted, inside_pred, table.gt_sizes, table.gt_counted,
                            inside_gt, p, g, v, alpha=alpha, beta=beta, gamma=gamma,
                            ref_name="predicted", test_name="ground-truth", positive_word="true positive",
                            negative_word="false positive")
    return _result(table, gt_side, pred_side)


def any_overlap_rule(table: LesionOverlap) -> RuleResult:
    """ISBI 2015 / paper 000: any shared voxel detects; no shared voxel is a false positive."""
    _, _, _, inside_gt, inside_pred = _per_side_sums(table)
    gt_pos = table.gt_counted & (inside_gt > 0)
    pred_pos = table.pred_counted & (inside_pred > 0)
    gt_reason = _reasons(table.gt_counted, gt_pos, "detected: overlaps a predicted lesion",
                         "missed: no counted predicted lesion overlaps it")
    pred_reason = _reasons(table.pred_counted, pred_pos, "true positive: overlaps a ground-truth lesion",
                           "false positive: no counted ground-truth lesion overlaps it")
    return _result(table, SideVerdict(gt_pos, gt_reason), SideVerdict(pred_pos, pred_reason))


def rule_10_70(table: LesionOverlap, *, min_coverage: float = RULE_10_70_MIN_COVERAGE,
               max_outside: float = RULE_10_70_MAX_OUTSIDE) -> RuleResult:
    """Paper 004: detected when >= 10 % covered; false when > 70 % outside the truth."""
    _, _, _, inside_gt, inside_pred = _per_side_sums(table)
    coverage = _fraction(inside_gt, table.gt_sizes)
    outside = _fraction(table.pred_sizes - inside_pred, table.pred_sizes)
    gt_pos = table.gt_counted & (coverage >= min_coverage)
    pred_pos = table.pred_counted & ~(outside > max_outside)
    gt_reason = _reasons(table.gt_counted, gt_pos, f"detected: at least {min_coverage:.0%} covered",
                         f"missed: less than {min_coverage:.0%} covered")
    pred_reason = _reasons(table.pred_counted, pred_pos, f"true positive: at most {max_outside:.0%} outside",
                           f"false positive: more than {max_outside:.0%} outside the truth")
    return _result(table, SideVerdict(gt_pos, gt_reason), SideVerdict(pred_pos, pred_reason))


def _reasons(counted, positive, yes: str, no: str) -> list:
    return ["" if not c else (yes if p else no) for c, p in zip(counted, positive)]


def _result(table: LesionOverlap, gt_side: SideVerdict, pred_side: SideVerdict) -> RuleResult:
    return RuleResult(
        ground_truth=gt_side, prediction=pred_side,
        gt_lesions=int(table.gt_counted.sum()), pred_lesions=int(table.pred_counted.sum()),
        detected=int((gt_side.positive & table.gt_counted).sum()),
        true_predicted=int((pred_side.positive & table.pred_counted).sum()),
    )
