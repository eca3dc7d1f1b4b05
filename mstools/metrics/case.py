"""Every metric of one prediction against one ground truth, in one pass per image.

``evaluate_case`` labels each mask once (:func:`~mstools.metrics.lesionwise.find_components`),
counts the voxels both masks share per pair of components (the overlap table), and
derives from these the voxel-wise metrics, the three lesion-wise rules and the
surface distances (bounded by the lesions' boxes). Definitions and empty-mask
conventions are in the modules ``voxelwise``, ``surface``, ``lesionwise`` and
``summary``; ``METRIC_DEFINITIONS`` lists them in one place for reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mstools.metrics.lesionwise import (ANIMA_RULE, Components, LesionRule, RuleResult, any_overlap_rule,
                                        find_components, lesion_overlap, min_voxels, msseg2_rule, rule_10_70)
from mstools.metrics.summary import overall_score
from mstools.metrics.surface import DEFAULT_HD95, HD95_DEFINITIONS, surface_distances, surface_metrics
from mstools.metrics.voxelwise import DICE_SMOOTHING, VoxelCounts, voxel_metrics

#: Per-case metrics, in table order, with the definition each implements.
METRIC_DEFINITIONS: dict[str, str] = {
    "gt_volume_mm3": "ground-truth volume, voxels x |det(affine)|",
    "pred_volume_mm3": "predicted volume, voxels x |det(affine)|",
    "dice": "2|P&G|/(|P|+|G|) (medpy dc); n/a if the ground truth is empty",
    "jaccard": "|P&G|/|P|G|; n/a if the ground truth is empty",
    "ppv": "|P&G|/|P|; 0 if the prediction is empty; n/a if the ground truth is empty",
    "sensitivity": "|P&G|/|G|; n/a if the ground truth is empty",
    "specificity": "|~P&~G|/|~G| over the whole image",
    "rve": "relative volume error (V_P-V_G)/V_G (Anima); n/a if the ground truth is empty",
    "vd": "volume difference |V_P-V_G|/V_G (paper 000); n/a if the ground truth is empty",
    "smoothed_dice": "(2|P&G|+s)/(|G|+|P|+s), s=1e-6, voxel counts (paper 001 eq. 1); defined for empty masks",
    "hd_mm": "Hausdorff distance between 6-connected surfaces, mm (medpy hd, MONAI)",
    "hd95_mm": "HD95 of the definition chosen with --hd95 (default max-directed)",
    "hd95_pooled_mm": "95th percentile of both directions' distances pooled (medpy hd95)",
    "hd95_max_directed_mm": "max of the two directed 95th percentiles (MONAI, Metrics Reloaded)",
    "assd_mm": "mean of both directions' surface distances pooled (medpy 0.5 assd, MONAI symmetric ASD)",
    "assd_mean_of_directed_mm": "mean of the two directed mean surface distances (medpy < 0.5 assd)",
    "gt_lesions": "counted ground-truth lesions (components larger than the minimum volume)",
    "pred_lesions": "counted predicted lesions",
    "pred_lesion_volume_mm3": "volume of the counted predicted lesions (what MSSEG-2 reported for empty cases)",
    "msseg2_detected": "ground-truth lesions detected under the Anima rule (alpha, beta, gamma)",
    "msseg2_missed": "ground-truth lesions not detected under the Anima rule",
    "msseg2_tp_pred": "predicted lesions judged true under the Anima rule (transposed table)",
    "msseg2_fp": "predicted lesions judged false under the Anima rule",
    "lesion_sensitivity": "msseg2_detected / gt_lesions (Anima SensL); n/a without ground-truth lesion",
    "lesion_ppv": "msseg2_tp_pred / pred_lesions (Anima PPVL); 0 without predicted lesion",
    "lesion_f1": "2 PPVL SensL / (PPVL + SensL) (Anima F1); 0 unless PPVL + SensL > 0",
    "any_overlap_detected": "ground-truth lesions sharing at least one voxel with a predicted lesion",
    "any_overlap_fp": "predicted lesions sharing no voxel with a ground-truth lesion",
    "ltpr": "any_overlap_detected / gt_lesions (ISBI 2015, paper 000)",
    "lfpr": "any_overlap_fp / pred_lesions (ISBI 2015, paper 000); 0 without predicted lesion",
    "rule_10_70_detected": "ground-truth lesions at least 10 % covered (paper 004)",
    "rule_10_70_fp": "predicted lesions more than 70 % outside the truth (paper 004)",
    "rule_10_70_sensitivity": "rule_10_70_detected / gt_lesions",
    "rule_10_70_precision": "(pred_lesions - rule_10_70_fp) / pred_lesions; 0 without predicted lesion",
    "rule_10_70_f1": "2 PS/(P+S) of the 10 %/70 % rule; 0 unless P + S > 0",
    "overall_score": "0.125 DSC + 0.125 PPV + 0.25(1-VD) + 0.25 LTPR + 0.25(1-LFPR) (paper 000 eq. 3)",
}

#: With an empty ground truth these are n/a (the case is scored by counts and volumes).
_UNDEFINED_WITHOUT_TRUTH = (
    "lesion_sensitivity", "lesion_ppv", "lesion_f1", "ltpr", "lfpr", "rule_10_70_sensitivity",
    "rule_10_70_precision", "rule_10_70_f1", "overall_score",
)

LESION_COLUMNS = (
    "case", "object", "label", "counted", "voxels", "volume_mm3",
    "centroid_i", "centroid_j", "centroid_k", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "overlap_voxels", "overlap_fraction", "partners",
    "msseg2_status", "msseg2_reason", "any_overlap_status", "rule_10_70_status",
)


@dataclass(frozen=True)
class EvaluationOptions:
    """Lesion definition and rule thresholds, HD95 definition, Dice smoothing."""

    rule: LesionRule = ANIMA_RULE
    hd95: str = DEFAULT_HD95
    smoothing: float = DICE_SMOOTHING

    def __post_init__(self) -> None:
        if self.hd95 not in HD95_DEFINITIONS:
            raise ValueError(f"hd95 must be one of {HD95_DEFINITIONS}, not {self.hd95!r}")

    def as_dict(self) -> dict:
        r = self.rule
        return {"connectivity": r.connectivity, "min_lesion_mm3": r.min_lesion_mm3, "alpha": r.alpha,
                "beta": r.beta, "gamma": r.gamma, "hd95": self.hd95, "dice_smoothing": self.smoothing}


@dataclass
class CaseEvaluation:
    """Per-case metrics (keys of ``METRIC_DEFINITIONS`` plus ``empty_ground_truth``) and lesion rows."""

    metrics: dict
    lesions: list = field(default_factory=list)


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size along the array axes: norms of the affine's first three columns."""
    norms = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return (float(norms[0]), float(norms[1]), float(norms[2]))


def evaluate_case(prediction: np.ndarray, ground_truth: np.ndarray, *, affine: np.ndarray,
                  options: EvaluationOptions = EvaluationOptions(), case: str = "") -> CaseEvaluation:
    """All metrics of a binary prediction against a binary ground truth on one grid.

    ``affine`` (4 x 4, voxel indices to mm) gives the spacing (column norms), the
    voxel volume (|det|) and the world coordinates of lesion centroids. Inputs are
    not modified.
    """
    prediction = np.asarray(prediction)
    ground_truth = np.asarray(ground_truth)
    if prediction.shape != ground_truth.shape or prediction.ndim != 3:
        raise ValueError(f"two 3D masks of one shape were expected, not {prediction.shape} and {ground_truth.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    rule = options.rule

    truth = find_components(ground_truth, connectivity=rule.connectivity)
    pred = find_components(prediction, connectivity=rule.connectivity)
    table = lesion_overlap(truth, pred, min_lesion_voxels=min_voxels(rule.min_lesion_mm3, voxel_mm3))

    tp = table.intersection_voxels
    n_g, n_p = truth.total_voxels, pred.total_voxels
    counts = VoxelCounts(tp, n_p - tp, n_g - tp, int(prediction.size) - n_p - n_g + tp, voxel_mm3)
    metrics: dict = {"empty_ground_truth": n_g == 0}
    metrics.update(voxel_metrics(counts, smoothing=options.smoothing))
    metrics.update(surface_metrics(surface_distances(pred, truth, spacing_mm=spacing_from_affine(affine)),
                                   hd95=options.hd95))

    msseg2 = msseg2_rule(table, alpha=rule.alpha, beta=rule.beta, gamma=rule.gamma)
    overlap = any_overlap_rule(table)
    walsh = rule_10_70(table)
    metrics.update({
        "gt_lesions": msseg2.gt_lesions,
        "pred_lesions": msseg2.pred_lesions,
        "pred_lesion_volume_mm3": float(pred.sizes[table.pred_counted].sum()) * voxel_mm3,
        "msseg2_detected": msseg2.detected,
        "msseg2_missed": msseg2.missed,
        "msseg2_tp_pred": msseg2.true_predicted,
        "msseg2_fp": msseg2.false_positive,
        "lesion_sensitivity": msseg2.sensitivity,
        "lesion_ppv": msseg2.ppv,
        "lesion_f1": msseg2.f1,
        "any_overlap_detected": overlap.detected,
        "any_overlap_fp": overlap.false_positive,
        "ltpr": overlap.sensitivity,
        "lfpr": overlap.false_positive_rate,
        "rule_10_70_detected": walsh.detected,
        "rule_10_70_fp": walsh.false_positive,
        "rule_10_70_sensitivity": walsh.sensitivity,
        "rule_10_70_precision": walsh.ppv,
        "rule_10_70_f1": walsh.f1,
    })
    metrics["overall_score"] = overall_score(dsc=metrics["dice"], ppv=metrics["ppv"], vd=metrics["vd"],
                                             ltpr=metrics["ltpr"], lfpr=metrics["lfpr"])
    if metrics["empty_ground_truth"]:
        for key in _UNDEFINED_WITHOUT_TRUTH:
            metrics[key] = math.nan
    lesions = _lesion_rows(case, truth, pred, table, affine, voxel_mm3, (msseg2, overlap, walsh))
    return CaseEvaluation(metrics=metrics, lesions=lesions)


def _lesion_rows(case: str, truth: Components, pred: Components, table, affine, voxel_mm3: float,
                 rules: tuple[RuleResult, RuleResult, RuleResult]) -> list[dict]:
    msseg2, overlap, walsh = rules
    g, p, v = table.pairs_gt, table.pairs_pred, table.pairs_voxels
    rows = []
    sides = (
        ("ground_truth", truth, table.gt_counted, g, p, table.pred_counted, "gt"),
        ("prediction", pred, table.pred_counted, p, g, table.gt_counted, "pred"),
    )
    for name, comps, counted, own, other, other_counted, key in sides:
        keep = other_counted[other]
        own_k, other_k, v_k = own[keep], other[keep], v[keep]
        shared = np.bincount(own_k, weights=v_k, minlength=comps.count + 1).astype(np.int64)
        order = np.lexsort((other_k, -v_k, own_k))
        partners: dict[int, list[int]] = {}
        for o, t in zip(own_k[order], other_k[order]):
            partners.setdefault(int(o), []).append(int(t))
        verdicts = [getattr(r, "ground_truth" if key == "gt" else "prediction") for r in rules]
        positive_word, negative_word = ("detected", "missed") if key == "gt" else ("true_positive", "false_positive")
        xyz = comps.centroids @ affine[:3, :3].T + affine[:3, 3]
        for label in range(1, comps.count + 1):
            is_counted = bool(counted[label])
            size = int(comps.sizes[label])
            statuses = [(positive_word if vd.positive[label] else negative_word) if is_counted else "not_counted"
                        for vd in verdicts]
            reason = verdicts[0].reason[label] if is_counted else (
                f"not counted: {size * voxel_mm3:.4g} mm3 is not larger than the minimum lesion volume")
            rows.append({
                "case": case, "object": name, "label": label, "counted": is_counted,
                "voxels": size, "volume_mm3": size * voxel_mm3,
                "centroid_i": float(comps.centroids[label, 0]), "centroid_j": float(comps.centroids[label, 1]),
                "centroid_k": float(comps.centroids[label, 2]),
                "centroid_x_mm": float(xyz[label, 0]), "centroid_y_mm": float(xyz[label, 1]),
                "centroid_z_mm": float(xyz[label, 2]),
                "overlap_voxels": int(shared[label]), "overlap_fraction": float(shared[label]) / size,
                "partners": ";".join(str(t) for t in partners.get(label, [])),
                "msseg2_status": statuses[0], "msseg2_reason": reason,
                "any_overlap_status": statuses[1], "rule_10_70_status": statuses[2],
            })
    return rows
