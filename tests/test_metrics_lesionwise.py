"""Lesion-wise rules on hand-built cases with counted answers, and against a plain
re-statement of Anima's algorithm (dense overlap table, loops as in
animaSegPerfCAnalyzer.cxx) on random masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from mstools.metrics import defaults
from mstools.metrics.case import EvaluationOptions, evaluate_case
from mstools.metrics.lesionwise import (ANIMA_RULE, LesionRule, any_overlap_rule, find_components, lesion_overlap,
                                        min_voxels, msseg2_rule, rule_10_70)
from tests.conftest import oblique_affine

AFFINE = oblique_affine()          # 2.475 mm3 voxels: a lesion needs at least 2 voxels (> 3 mm3)


def _evaluate(pred, truth, affine=AFFINE, **rule):
    return evaluate_case(pred, truth, affine=affine, options=EvaluationOptions(rule=LesionRule(**rule)))


def _rows(result, obj):
    return [r for r in result.lesions if r["object"] == obj]


# --------------------------------------------------------------------------- defaults


def test_defaults_are_animas():
    assert (ANIMA_RULE.connectivity, ANIMA_RULE.min_lesion_mm3) == (6, 3.0)
    assert (ANIMA_RULE.alpha, ANIMA_RULE.beta, ANIMA_RULE.gamma) == (0.10, 0.70, 0.65)
    assert (defaults.RULE_10_70_MIN_COVERAGE, defaults.RULE_10_70_MAX_OUTSIDE) == (0.10, 0.70)


@pytest.mark.parametrize("kwargs", [{"connectivity": 8}, {"alpha": 1.0}, {"alpha": -0.1}, {"beta": 1.2},
                                    {"gamma": 0.0}, {"min_lesion_mm3": -1.0}, {"min_lesion_mm3": math.inf}])
def test_rule_parameters_are_checked(kwargs):
    with pytest.raises(ValueError):
        LesionRule(**kwargs)


# --------------------------------------------------------------------------- small prediction in a large lesion


def _large_lesion_with_inner_prediction(pred_box):
    truth = np.zeros((16, 16, 16), np.uint8)
    truth[2:12, 2:12, 2:12] = 1                      # 1000 voxels
    pred = np.zeros_like(truth)
    pred[pred_box] = 1
    return pred, truth


@pytest.mark.parametrize("box,covered,gt_status,pred_status", [
    # 16 % covered: the lesion is detected (nothing of the prediction is outside the
    # truth) but the prediction is false (the lesion it overlaps is 84 % uncovered > beta)
    ((slice(3, 8), slice(3, 7), slice(3, 11)), 160, "detected", "false_positive"),
    # 8 % covered: not more than alpha, the lesion is missed; the prediction is false too
    ((slice(3, 7), slice(3, 7), slice(3, 8)), 80, "missed", "false_positive"),
    # exactly 10 %: alpha is strict, missed
    ((slice(2, 12), slice(2, 12), slice(2, 3)), 100, "missed", "false_positive"),
    # exactly 30 %: 70 % uncovered is not more than beta, both true
    ((slice(2, 12), slice(2, 12), slice(2, 5)), 300, "detected", "true_positive"),
    # 40 %: both true
    ((slice(2, 12), slice(2, 12), slice(2, 6)), 400, "detected", "true_positive"),
])
def test_small_prediction_inside_a_large_lesion(box, covered, gt_status, pred_status):
    pred, truth = _large_lesion_with_inner_prediction(box)
    assert pred.sum() == covered
    result = _evaluate(pred, truth)
    (gt_row,), (pred_row,) = _rows(result, "ground_truth"), _rows(result, "prediction")
    assert (gt_row["msseg2_status"], pred_row["msseg2_status"]) == (gt_status, pred_status)
    m = result.metrics
    assert m["msseg2_detected"] == (gt_status == "detected")
    assert m["msseg2_fp"] == (pred_status == "false_positive")
    # the simpler rules see a prediction entirely inside the truth as true
    assert pred_row["any_overlap_status"] == "true_positive"
    assert pred_row["rule_10_70_status"] == "true_positive"
    # 10 %/70 % rule: at least 10 % covered detects (non-strict)
    assert gt_row["rule_10_70_status"] == ("detected" if covered >= 100 else "missed")
    if pred_status == "false_positive" and gt_status == "detected":
        assert "more than beta" in pred_row["msseg2_reason"]
        assert (m["lesion_sensitivity"], m["lesion_ppv"], m["lesion_f1"]) == (1.0, 0.0, 0.0)
    if gt_status == "missed":
        assert "alpha" in gt_row["msseg2_reason"]


# --------------------------------------------------------------------------- connectivity and size


def test_cubes_touching_along_an_edge_are_two_lesions_under_6_and_one_under_26():
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[1:3, 1:3, 1:3] = 1
    truth[3:5, 3:5, 1:3] = 1          # shares only an edge (along k) with the first cube
    for connectivity, lesions in ((6, 2), (18, 1), (26, 1)):
        m = _evaluate(truth, truth, connectivity=connectivity).metrics
        assert (m["gt_lesions"], m["pred_lesions"], m["msseg2_detected"]) == (lesions, lesions, lesions)


def test_cubes_touching_at_a_corner_are_one_lesion_only_under_26():
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[1:3, 1:3, 1:3] = 1
    truth[3:5, 3:5, 3:5] = 1
    counts = {c: _evaluate(truth, truth, connectivity=c).metrics["gt_lesions"] for c in (6, 18, 26)}
    assert counts == {6: 2, 18: 2, 26: 1}


def test_a_lesion_of_exactly_the_minimum_volume_is_dropped():
    affine = oblique_affine(spacing=(0.5, 0.6, 1.0))   # 0.3 mm3 voxels
    truth = np.zeros((20, 20, 8), np.uint8)
    truth[2:12, 2, 2] = 1             # 10 voxels = 3 mm3: not strictly larger, dropped
    truth[2:13, 8, 4] = 1             # 11 voxels = 3.3 mm3: counted
    pred = truth.copy()
    result = _evaluate(pred, truth, affine=affine)
    assert result.metrics["gt_lesions"] == 1 and result.metrics["pred_lesions"] == 1
    rows = _rows(result, "ground_truth")
    small = next(r for r in rows if r["voxels"] == 10)
    assert small["volume_mm3"] == pytest.approx(3.0)
    assert small["counted"] is False and small["msseg2_status"] == "not_counted"
    assert "not larger" in small["msseg2_reason"]
    # the voxels of a dropped lesion are ordinary voxels for the voxel-wise metrics
    assert result.metrics["gt_volume_mm3"] == pytest.approx(21 * 0.3)
    # a 3 mm3 threshold with 0.1 + 0.2 mm3 voxels (3 / 0.30000000000000004 = 9.999...)
    assert min_voxels(3.0, 0.1 + 0.2) == 10
    assert min_voxels(3.0, 1.0) == 3
    assert min_voxels(0.0, 2.475) == 0


def test_min_lesion_option_changes_what_counts():
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[1:3, 1, 1] = 1             # 2 voxels = 4.95 mm3
    assert _evaluate(truth, truth).metrics["gt_lesions"] == 1
    assert _evaluate(truth, truth, min_lesion_mm3=5.0).metrics["gt_lesions"] == 0


# --------------------------------------------------------------------------- beta blocking, gamma


def test_a_prediction_mostly_outside_the_truth_blocks_the_lesion_it_touches():
    truth = np.zeros((20, 20, 12), np.uint8)
    truth[5:10, 5:10, 5:9] = 1                       # 100 voxels
    pred = np.zeros_like(truth)
    pred[7:17, 5:15, 5:10] = 1                       # 500 voxels, 60 inside the truth, 88 % outside
    assert (pred & truth).sum() == 60
    result = _evaluate(pred, truth)
    (gt_row,), (pred_row,) = _rows(result, "ground_truth"), _rows(result, "prediction")
    assert gt_row["msseg2_status"] == "missed"
    assert "predicted lesion 1" in gt_row["msseg2_reason"] and "88.0% outside" in gt_row["msseg2_reason"]
    # transposed: 12 % of the prediction is inside (> alpha) and the lesion it
    # overlaps is only 40 % uncovered (<= beta): the prediction itself counts as true
    assert pred_row["msseg2_status"] == "true_positive"
    m = result.metrics
    assert (m["msseg2_detected"], m["msseg2_tp_pred"], m["lesion_sensitivity"], m["lesion_ppv"]) == (0, 1, 0.0, 1.0)
    # a larger such prediction has at most 10 % inside: false as well
    pred[:] = 0
    pred[7:17, 5:17, 5:12] = 1                      # 840 voxels, 60 inside (7 %)
    pred_row = _rows(_evaluate(pred, truth), "prediction")[0]
    assert pred_row["msseg2_status"] == "false_positive" and "alpha" in pred_row["msseg2_reason"]


def _slab_with_two_predictions(clean_rows, bad_rows):
    """A 10 x 10 x 1 lesion; a clean prediction on some of its rows, and a prediction
    on other rows that extends outside the truth (80 % outside)."""
    truth = np.zeros((14, 14, 12), np.uint8)
    truth[2:12, 2:12, 5] = 1                                     # 100 voxels
    pred = np.zeros_like(truth)
    pred[clean_rows, 2:12, 5] = 1
    pred[bad_rows, 2:12, 5:10] = 1
    return pred, truth


def test_gamma_stops_the_check_once_enough_of_the_overlap_is_clean():
    # clean 70 voxels, bad 20 of 100 inside: 70/90 = 0.78 >= gamma before the bad one
    pred, truth = _slab_with_two_predictions(slice(2, 9), slice(10, 12))
    assert _evaluate(pred, truth).metrics["msseg2_detected"] == 1
    # clean 50, bad 40 of 200 inside: 50/90 = 0.56 < gamma, the bad one is visited
    pred, truth = _slab_with_two_predictions(slice(2, 7), slice(8, 12))
    row = _rows(_evaluate(pred, truth), "ground_truth")[0]
    assert row["msseg2_status"] == "missed" and "more than beta" in row["msseg2_reason"]
    # the same with gamma = 0.5 is detected
    assert _evaluate(pred, truth, gamma=0.5).metrics["msseg2_detected"] == 1
    # and with beta = 0.8 the bad one (exactly 80 % outside) no longer blocks
    assert _evaluate(pred, truth, beta=0.8).metrics["msseg2_detected"] == 1


def test_gamma_is_reached_when_the_weight_equals_it():
    # clean 60 of 80 overlapping voxels: weight 0.75 after the first prediction
    truth = np.zeros((14, 14, 12), np.uint8)
    truth[2:12, 2:12, 5] = 1
    pred = np.zeros_like(truth)
    pred[2:8, 2:12, 5] = 1                          # clean: 60 voxels inside
    pred[9:11, 2:12, 5:10] = 1                      # bad: 20 of 100 voxels inside
    assert _evaluate(pred, truth, gamma=0.75).metrics["msseg2_detected"] == 1
    assert _evaluate(pred, truth, gamma=0.76).metrics["msseg2_detected"] == 0


def test_overlap_order_decides_which_prediction_is_checked_first():
    # the bad prediction has the larger overlap (60 vs 30): visited first, blocks
    pred, truth = _slab_with_two_predictions(slice(2, 5), slice(6, 12))
    assert _evaluate(pred, truth).metrics["msseg2_detected"] == 0


# --------------------------------------------------------------------------- empty cases


def test_empty_prediction_scores_zero():
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[2:5, 2:5, 2:5] = 1
    m = _evaluate(np.zeros_like(truth), truth).metrics
    assert (m["lesion_sensitivity"], m["lesion_ppv"], m["lesion_f1"]) == (0.0, 0.0, 0.0)
    assert (m["ltpr"], m["lfpr"], m["pred_lesions"], m["msseg2_missed"]) == (0.0, 0.0, 0, 1)
    assert (m["rule_10_70_sensitivity"], m["rule_10_70_precision"], m["rule_10_70_f1"]) == (0.0, 0.0, 0.0)
    # 0.125*0 + 0.125*0 + 0.25*(1-1) + 0.25*0 + 0.25*(1-0)
    assert m["overall_score"] == pytest.approx(0.25)


def test_truth_with_only_dropped_lesions_follows_anima():
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[1, 1, 1] = 1                              # 1 voxel: not counted, but the mask is not empty
    pred = np.zeros_like(truth)
    pred[5:7, 5:7, 5:7] = 1
    m = _evaluate(pred, truth).metrics
    assert m["empty_ground_truth"] is False and m["gt_lesions"] == 0
    assert math.isnan(m["lesion_sensitivity"])      # Anima: 0 / 0
    assert m["lesion_ppv"] == 0.0 and m["lesion_f1"] == 0.0   # Anima: NaN > 0 is false -> 0
    assert math.isnan(m["ltpr"]) and m["lfpr"] == 1.0


def test_empty_truth_is_scored_by_count_and_volume_of_predicted_lesions():
    truth = np.zeros((12, 12, 12), np.uint8)
    pred = np.zeros_like(truth)
    pred[1:3, 1:3, 1:3] = 1                          # 8 voxels
    pred[6:9, 6:9, 6] = 1                            # 9 voxels
    pred[11, 11, 11] = 1                             # 1 voxel: not counted
    m = _evaluate(pred, truth).metrics
    assert m["empty_ground_truth"] is True
    assert (m["pred_lesions"], m["msseg2_fp"], m["gt_lesions"]) == (2, 2, 0)
    assert m["pred_lesion_volume_mm3"] == pytest.approx(17 * 2.475)
    assert m["pred_volume_mm3"] == pytest.approx(18 * 2.475)
    for key in ("dice", "lesion_sensitivity", "lesion_ppv", "lesion_f1", "ltpr", "lfpr", "overall_score"):
        assert math.isnan(m[key]), key
    assert m["smoothed_dice"] == pytest.approx(1e-6 / 18, rel=1e-6)
    both_empty = _evaluate(truth, truth).metrics
    assert both_empty["smoothed_dice"] == 1.0 and both_empty["pred_lesions"] == 0


# --------------------------------------------------------------------------- simpler rules, counts


def test_any_overlap_and_10_70_counts():
    truth = np.zeros((20, 20, 10), np.uint8)
    truth[1:11, 1:3, 1] = 1          # A: 20 voxels
    truth[1:11, 6:8, 1] = 1          # B: 20 voxels
    truth[1:11, 12:14, 1] = 1        # C: 20 voxels, never touched
    pred = np.zeros_like(truth)
    pred[1:2, 1:3, 1] = 1            # on A: 2 voxels (10 % of A), all inside
    pred[1:11, 6, 1:9] = 1           # on B: 80 voxels, 10 inside (87.5 % outside)
    pred[15:18, 15:18, 5] = 1        # nowhere: 9 voxels
    table = lesion_overlap(find_components(truth), find_components(pred), min_lesion_voxels=1)
    overlap = any_overlap_rule(table)
    assert (overlap.gt_lesions, overlap.pred_lesions, overlap.detected, overlap.false_positive) == (3, 3, 2, 1)
    assert overlap.sensitivity == pytest.approx(2 / 3) and overlap.false_positive_rate == pytest.approx(1 / 3)
    walsh = rule_10_70(table)
    assert (walsh.detected, walsh.false_positive) == (2, 2)           # A at exactly 10 %, B at 50 %
    assert walsh.ppv == pytest.approx(1 / 3)
    assert walsh.f1 == pytest.approx(2 * (1 / 3) * (2 / 3) / (1 / 3 + 2 / 3))
    anima = msseg2_rule(table)
    # ground truth: A is 10 % covered, not more than alpha; B's prediction is 87.5 % outside.
    # predictions: the one on A lies inside a lesion 90 % uncovered (> beta): false; the one
    # on B is 12.5 % inside (> alpha) and B is 50 % uncovered (<= beta): true.
    assert (anima.detected, anima.missed, anima.true_predicted, anima.false_positive) == (0, 3, 1, 2)


def test_10_70_rule_is_strict_at_70_percent_outside():
    truth = np.zeros((20, 6, 6), np.uint8)
    truth[2:12, 2, 2] = 1                            # 10 voxels
    pred = np.zeros_like(truth)
    pred[9:19, 2, 2] = 1                             # 10 voxels, 3 inside: exactly 70 % outside
    walsh = rule_10_70(lesion_overlap(find_components(truth), find_components(pred), min_lesion_voxels=1))
    assert (walsh.detected, walsh.false_positive) == (1, 0)
    pred[19, 2, 2] = 1                               # 11 voxels, 3 inside: 73 % outside
    walsh = rule_10_70(lesion_overlap(find_components(truth), find_components(pred), min_lesion_voxels=1))
    assert (walsh.detected, walsh.false_positive) == (1, 1)


def test_lesion_table_rows_describe_every_lesion():
    truth = np.zeros((14, 14, 10), np.uint8)
    truth[2:6, 2:6, 2:4] = 1          # 32 voxels
    pred = np.zeros_like(truth)
    pred[3:6, 2:6, 2:4] = 1           # 24 voxels inside
    pred[10:12, 10:12, 6] = 1         # 4 voxels elsewhere
    result = evaluate_case(pred, truth, affine=AFFINE, case="c1")
    rows = result.lesions
    assert [(r["object"], r["label"]) for r in rows] == [("ground_truth", 1), ("prediction", 1), ("prediction", 2)]
    gt, p1, p2 = rows
    assert gt["case"] == "c1" and gt["voxels"] == 32 and gt["volume_mm3"] == pytest.approx(32 * 2.475)
    assert (gt["centroid_i"], gt["centroid_j"], gt["centroid_k"]) == (3.5, 3.5, 2.5)
    world = AFFINE @ np.array([3.5, 3.5, 2.5, 1.0])
    assert (gt["centroid_x_mm"], gt["centroid_y_mm"], gt["centroid_z_mm"]) == pytest.approx(tuple(world[:3]))
    assert (gt["overlap_voxels"], gt["overlap_fraction"], gt["partners"]) == (24, 0.75, "1")
    assert gt["msseg2_status"] == "detected" and gt["msseg2_reason"].startswith("detected: 75.0%")
    assert (p1["msseg2_status"], p1["overlap_fraction"]) == ("true_positive", 1.0)
    assert (p2["msseg2_status"], p2["partners"], p2["overlap_voxels"]) == ("false_positive", "", 0)
    assert "does not overlap" in p2["msseg2_reason"] or "no counted" in p2["msseg2_reason"]


# --------------------------------------------------------------------------- building blocks


def test_components_measure_like_scipy(rng):
    mask = rng.random((20, 18, 12)) < 0.2
    comps = find_components(mask, connectivity=26)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    assert comps.count == count and np.array_equal(comps.labels, labels)
    index = np.arange(1, count + 1)
    assert np.allclose(comps.centroids[1:], ndimage.center_of_mass(mask, labels, index))
    assert comps.boxes[1:] == ndimage.find_objects(labels)
    assert np.array_equal(comps.sizes[1:], ndimage.sum_labels(mask, labels, index))


def test_overlap_table_counts_every_pair(rng):
    truth = rng.random((16, 16, 10)) < 0.25
    pred = rng.random((16, 16, 10)) < 0.25
    g, p = find_components(truth), find_components(pred)
    table = lesion_overlap(g, p, min_lesion_voxels=2)
    expected = {}
    for a, b in zip(g.labels.ravel(), p.labels.ravel()):
        if a and b:
            expected[(a, b)] = expected.get((a, b), 0) + 1
    got = {(int(a), int(b)): int(v) for a, b, v in zip(table.pairs_gt, table.pairs_pred, table.pairs_voxels)}
    assert got == expected
    assert np.array_equal(table.gt_counted[1:], g.sizes[1:] > 2) and not table.gt_counted[0]


# --------------------------------------------------------------------------- against Anima's algorithm


def _anima_reference(pred, truth, *, voxel_mm3, connectivity, min_mm3, alpha, beta, gamma):
    """animaSegPerfCAnalyzer::getDetectionMarks, stated plainly on a dense table."""
    structure = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    min_size = math.floor(min_mm3 / voxel_mm3) + 1          # RelabelComponentImageFilter minimum

    def relabel(mask):                                       # kept objects ranked by decreasing size
        labels, n = ndimage.label(mask, structure=structure)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        kept = sorted((lab for lab in range(1, n + 1) if sizes[lab] >= min_size), key=lambda lab: -sizes[lab])
        lut = np.zeros(n + 1, dtype=np.int64)
        lut[kept] = np.arange(1, len(kept) + 1)
        return lut[labels], len(kept) + 1

    ref, n_ref = relabel(truth)
    test, n_test = relabel(pred)
    tab = np.zeros((n_ref, n_test), dtype=np.int64)
    np.add.at(tab, (ref.ravel(), test.ravel()), 1)

    def true_positives(tab, n_r, n_t):
        row_tp = tab[:, 1:].sum(axis=1)
        col_sum = tab.sum(axis=0)
        found = 0
        for i in range(1, n_r):
            if not row_tp[i] / (row_tp[i] + tab[i, 0]) > alpha:
                continue
            order = sorted(range(1, n_t), key=lambda lab: -tab[i, lab])    # stable, like std::sort on few
            weight, k, stop = 0.0, 0, False
            while weight < gamma and k < len(order) and not stop:
                stop = tab[0, order[k]] / col_sum[order[k]] > beta
                if not stop:
                    weight += tab[i, order[k]] / row_tp[i]
                k += 1
            found += not stop
        return found

    tp_gt = tp_pred = 0
    if n_ref > 1 and n_test > 1:
        tp_gt = true_positives(tab, n_ref, n_test)
        tp_pred = true_positives(tab.T, n_test, n_ref)
    ppv = tp_pred / (n_test - 1) if n_test != 1 else 0.0
    sens = tp_gt / (n_ref - 1) if n_ref != 1 else math.nan
    f1 = 2 * ppv * sens / (ppv + sens) if ppv + sens > 0 else 0.0
    return {"gt_lesions": n_ref - 1, "pred_lesions": n_test - 1, "msseg2_detected": tp_gt,
            "msseg2_tp_pred": tp_pred, "lesion_sensitivity": sens, "lesion_ppv": ppv, "lesion_f1": f1}


def _random_lesions(rng, shape, count):
    mask = np.zeros(shape, dtype=bool)
    for _ in range(count):
        c = rng.integers(2, np.array(shape) - 2)
        r = rng.integers(0, 4, size=3)
        mask[c[0] - r[0]:c[0] + r[0] + 1, c[1] - r[1]:c[1] + r[1] + 1, c[2] - r[2]:c[2] + r[2] + 1] = True
    return mask


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("connectivity,alpha,beta,gamma", [(6, 0.10, 0.70, 0.65), (26, 0.10, 0.70, 0.65),
                                                            (18, 0.05, 0.50, 0.50), (6, 0.30, 0.40, 0.90)])
def test_msseg2_rule_agrees_with_a_plain_statement_of_animas_algorithm(seed, connectivity, alpha, beta, gamma):
    rng = np.random.default_rng(seed)
    shape = (28, 28, 16)
    truth = _random_lesions(rng, shape, 10)
    # a prediction that shifts, grows, shrinks and misses lesions, plus noise
    pred = np.roll(truth, rng.integers(-2, 3, size=3), axis=(0, 1, 2))
    pred = ndimage.binary_dilation(pred) if seed % 2 else ndimage.binary_erosion(pred)
    pred |= _random_lesions(rng, shape, 6)
    pred &= ~_random_lesions(rng, shape, 3)
    expected = _anima_reference(pred, truth, voxel_mm3=2.475, connectivity=connectivity, min_mm3=3.0,
                                alpha=alpha, beta=beta, gamma=gamma)
    m = _evaluate(pred, truth, connectivity=connectivity, alpha=alpha, beta=beta, gamma=gamma).metrics
    assert expected["gt_lesions"] > 3 and expected["pred_lesions"] > 3
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, nan_ok=True), key
