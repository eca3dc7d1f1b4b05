"""Voxel-wise metrics against medpy, hand counts, and the empty-mask conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mstools.metrics.case import EvaluationOptions, evaluate_case
from mstools.metrics.summary import describe, overall_score
from mstools.metrics.voxelwise import DICE_SMOOTHING, VoxelCounts, count_voxels, smoothed_dice, voxel_metrics
from tests.conftest import oblique_affine

mb = pytest.importorskip("medpy.metric.binary")

VOXEL_MM3 = 0.9 * 1.1 * 2.5  # the fixture grid


def _random_pair(rng, shape=(24, 26, 14)):
    truth = np.zeros(shape, dtype=np.uint8)
    pred = np.zeros(shape, dtype=np.uint8)
    for mask in (truth, pred):
        for _ in range(4):
            c = rng.integers(3, np.array(shape) - 3)
            r = rng.integers(1, 4, size=3)
            mask[c[0] - r[0]:c[0] + r[0] + 1, c[1] - r[1]:c[1] + r[1] + 1, c[2] - r[2]:c[2] + r[2] + 1] = 1
    pred[rng.random(shape) < 0.003] = 1
    return pred, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlap_metrics_match_medpy(seed):
    rng = np.random.default_rng(seed)
    pred, truth = _random_pair(rng)
    m = voxel_metrics(count_voxels(pred, truth, voxel_volume_mm3=VOXEL_MM3))
    assert m["dice"] == pytest.approx(mb.dc(pred, truth), rel=1e-12)
    assert m["jaccard"] == pytest.approx(mb.jc(pred, truth), rel=1e-12)
    assert m["ppv"] == pytest.approx(mb.precision(pred, truth), rel=1e-12)
    assert m["sensitivity"] == pytest.approx(mb.sensitivity(pred, truth), rel=1e-12)
    assert m["specificity"] == pytest.approx(mb.specificity(pred, truth), rel=1e-12)
    assert m["rve"] == pytest.approx(mb.ravd(pred, truth), rel=1e-12)
    assert m["vd"] == pytest.approx(abs(mb.ravd(pred, truth)), rel=1e-12)


def test_volumes_come_from_the_affine_determinant():
    affine = oblique_affine()
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[2:5, 2:5, 2:4] = 1          # 18 voxels
    pred = np.zeros_like(truth)
    pred[2:5, 2:5, 2:5] = 1           # 27 voxels, 18 shared
    m = evaluate_case(pred, truth, affine=affine).metrics
    det = abs(np.linalg.det(affine[:3, :3]))
    assert det == pytest.approx(2.475)
    assert m["gt_volume_mm3"] == pytest.approx(18 * det)
    assert m["pred_volume_mm3"] == pytest.approx(27 * det)
    assert m["vd"] == pytest.approx(0.5)
    assert m["rve"] == pytest.approx(0.5)
    assert m["dice"] == pytest.approx(2 * 18 / 45)


def test_smoothed_dice_is_paper_001_equation_1():
    # (2 * 18 + s) / (18 + 27 + s)
    assert smoothed_dice(18, 27, 18) == pytest.approx((36 + 1e-6) / (45 + 1e-6), rel=1e-15)
    assert DICE_SMOOTHING == 1e-6
    assert smoothed_dice(0, 0, 0) == 1.0
    assert smoothed_dice(0, 10, 0) == pytest.approx(1e-6 / (10 + 1e-6), rel=1e-12)


def _counts(tp, fp, fn, tn=1000):
    return VoxelCounts(tp, fp, fn, tn, VOXEL_MM3)


def test_empty_ground_truth_makes_truth_relative_metrics_undefined():
    for fp in (0, 25):
        m = voxel_metrics(_counts(0, fp, 0))
        for key in ("dice", "jaccard", "ppv", "sensitivity", "rve", "vd"):
            assert math.isnan(m[key]), (key, fp)
        assert m["specificity"] == pytest.approx(1000 / (1000 + fp))
        assert m["gt_volume_mm3"] == 0.0
    assert voxel_metrics(_counts(0, 0, 0))["smoothed_dice"] == 1.0
    assert voxel_metrics(_counts(0, 25, 0))["smoothed_dice"] == pytest.approx(1e-6 / 25, rel=1e-6)


def test_empty_prediction_scores_zero_not_undefined():
    m = voxel_metrics(_counts(0, 0, 40))
    assert (m["dice"], m["jaccard"], m["sensitivity"], m["ppv"]) == (0.0, 0.0, 0.0, 0.0)
    assert m["vd"] == 1.0
    assert m["rve"] == -1.0
    assert m["pred_volume_mm3"] == 0.0
    assert m["smoothed_dice"] == pytest.approx(1e-6 / 40, rel=1e-6)


def test_specificity_undefined_only_when_truth_fills_the_volume():
    assert math.isnan(voxel_metrics(_counts(10, 0, 0, tn=0))["specificity"])


def test_count_voxels_refuses_different_shapes_and_keeps_inputs():
    a = np.zeros((4, 4, 4), np.uint8)
    a[1, 1, 1] = 1
    before = a.copy()
    count_voxels(a, a, voxel_volume_mm3=1.0)
    assert np.array_equal(a, before)
    with pytest.raises(ValueError, match="shapes differ"):
        count_voxels(a, np.zeros((4, 4, 5)), voxel_volume_mm3=1.0)


def test_evaluate_case_does_not_modify_inputs(rng):
    pred, truth = _random_pair(rng)
    p0, t0 = pred.copy(), truth.copy()
    evaluate_case(pred, truth, affine=oblique_affine(), options=EvaluationOptions())
    assert np.array_equal(pred, p0) and np.array_equal(truth, t0)


@pytest.mark.parametrize("dsc,ppv,ltpr,lfpr,vd,score", [
    # Denner et al. (paper 000), Table 1: the formula of eq. 3 gives the printed overall scores
    (0.695, 0.771, 0.680, 0.212, 0.221, 0.745),
    (0.694, 0.752, 0.654, 0.227, 0.227, 0.731),
    (0.684, 0.762, 0.647, 0.250, 0.247, 0.718),
    (0.684, 0.777, 0.614, 0.194, 0.245, 0.726),
    (0.656, 0.701, 0.652, 0.260, 0.180, 0.723),
])
def test_overall_score_reproduces_paper_000_table_1(dsc, ppv, ltpr, lfpr, vd, score):
    assert overall_score(dsc=dsc, ppv=ppv, vd=vd, ltpr=ltpr, lfpr=lfpr) == pytest.approx(score, abs=6e-4)


def test_overall_score_is_not_clipped_and_propagates_nan():
    assert overall_score(dsc=0.0, ppv=0.0, vd=3.0, ltpr=0.0, lfpr=1.0) == pytest.approx(-0.5)
    assert math.isnan(overall_score(dsc=math.nan, ppv=1.0, vd=0.0, ltpr=1.0, lfpr=0.0))


def test_case_statistics_leave_undefined_values_out():
    stats = describe([1.0, 2.0, math.nan, 4.0, None, 3.0])
    assert (stats["n"], stats["n_undefined"]) == (4, 2)
    assert stats["mean"] == 2.5 and stats["median"] == 2.5
    assert stats["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert (stats["q1"], stats["q3"], stats["min"], stats["max"]) == (1.75, 3.25, 1.0, 4.0)
    assert describe([math.nan])["mean"] is None and describe([5.0])["std"] is None
