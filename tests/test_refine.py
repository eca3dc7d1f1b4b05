"""mstools.candidates.refine: voxel features, sampling, post-processing and the voxel classifier."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.measure import regionprops

from mstools.candidates.refine import features as ft
from mstools.candidates.refine.model import (CaseInputs, RefineModel, case_samples, cross_validate, fit, folds_of)
from mstools.candidates.refine.postprocess import (PostProcessing, clean_components, minor_axis_lengths,
                                                   refined_detections)
from mstools.candidates.refine.sampling import SamplingOptions, candidate_region, training_voxels
from tests.conftest import oblique_affine

SPACING = (0.9, 1.1, 2.5)  # the conftest affine's voxel size


# ----------------------------------------------------------------------------- features

def test_published_set_is_21_named_features_in_the_documented_order():
    assert len(ft.PUBLISHED) == 21
    assert ft.PUBLISHED[:7] == ("baseline_c", "baseline_im", "baseline_ip", "baseline_jm", "baseline_jp",
                                "baseline_km", "baseline_kp")
    assert ft.PUBLISHED[7] == "followup_c" and ft.PUBLISHED[14] == "candidates_c"
    assert ft.CONTEXT[:21] == ft.PUBLISHED and ft.LESION[:len(ft.CONTEXT)] == ft.CONTEXT
    with pytest.raises(ValueError, match="unknown feature set"):
        ft.feature_names("fancy")


def test_neighbours_inside_and_at_the_edges_of_the_volume():
    volume = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)   # value = 20 i + 5 j + k
    voxels = (np.array([1, 0, 2]), np.array([2, 0, 3]), np.array([3, 0, 4]))
    values = ft.neighbour_values(volume, voxels)
    # interior voxel (1, 2, 3): c, i-1, i+1, j-1, j+1, k-1, k+1
    assert values[0].tolist() == [33, 13, 53, 28, 38, 32, 34]
    # corner (0, 0, 0): the missing i-1, j-1, k-1 neighbours replicate the voxel itself
    assert values[1].tolist() == [0, 0, 20, 0, 5, 0, 1]
    # opposite corner (2, 3, 4): the missing i+1, j+1, k+1 neighbours replicate it
    assert values[2].tolist() == [59, 39, 59, 54, 59, 58, 59]
    # candidates: outside the grid is "no candidate"
    mask = np.ones((3, 4, 5), np.float32)
    assert ft.neighbour_values(mask, voxels, outside="zero")[1].tolist() == [1, 0, 1, 0, 1, 0, 1]
    assert ft.neighbour_values(mask, voxels, outside="zero")[0].tolist() == [1] * 7
    with pytest.raises(ValueError, match="outside"):
        ft.neighbour_values(mask, voxels, outside="wrap")


def test_published_features_stack_baseline_followup_candidates():
    b = np.zeros((4, 4, 4), np.float32)
    f = np.zeros((4, 4, 4), np.float32)
    c = np.zeros((4, 4, 4), np.uint8)
    b[1, 1, 1], f[1, 1, 2], c[2, 1, 1] = 5, 7, 3   # candidate labels count as 1
    x = ft.voxel_features(b, f, c, voxels=(np.array([1]), np.array([1]), np.array([1])))
    row = dict(zip(ft.PUBLISHED, x[0]))
    assert row["baseline_c"] == 5 and row["followup_kp"] == 7 and row["candidates_ip"] == 1
    assert sum(x[0]) == 5 + 7 + 1 and x.dtype == np.float32


def test_context_features_on_a_hand_made_volume():
    shape = (9, 9, 9)
    b = np.full(shape, 2.0, np.float32)
    f = np.full(shape, 3.0, np.float32)
    brain = np.zeros(shape, bool)
    brain[1:8, 1:8, 1:8] = True
    voxels = (np.array([4, 1, 0]), np.array([4, 4, 0]), np.array([4, 4, 0]))
    x = ft.voxel_features(b, f, np.zeros(shape), voxels=voxels, feature_set="context", spacing_mm=(1, 1, 1),
                          brain=brain)
    rows = [dict(zip(ft.CONTEXT, r)) for r in x]
    assert rows[0]["subtraction_c"] == pytest.approx(1.0)
    assert rows[0]["followup_mean_7mm"] == pytest.approx(3.0) and rows[0]["baseline_sd_3mm"] == pytest.approx(0)
    assert math.isnan(rows[0]["score_c"])
    # brain edge: centre voxel (4,4,4) is 4 mm from the first outside voxel, (1,4,4) is 1 mm, corner outside is 0
    assert [r["brain_edge_mm"] for r in rows] == pytest.approx([4.0, 1.0, 0.0])
    # the voxel at the corner of the grid still gets finite box statistics (nearest-voxel edges)
    assert rows[2]["baseline_mean_7mm"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="brain mask"):
        ft.voxel_features(b, f, np.zeros(shape), voxels=voxels, feature_set="context")


def test_brain_edge_distance_uses_the_voxel_size():
    brain = np.zeros((11, 11, 11), bool)
    brain[1:10, 1:10, 1:10] = True
    d = ft.brain_edge_distance(brain, (np.array([5]), np.array([5]), np.array([2])), spacing_mm=(1.0, 1.0, 2.5))
    assert d[0] == pytest.approx(2 * 2.5 + 0.0)  # 2 voxels along k to the outside voxel k=0... capped at 10
    far = ft.brain_edge_distance(brain, (np.array([5]),) * 3, spacing_mm=(3.0, 3.0, 3.0))
    assert far[0] == ft.EDGE_CAP_MM


def test_lesion_features_follow_the_voxel_candidate():
    rows = {1: {"volume_mm3": "12.5", "wm_fraction": ""}, 3: {"volume_mm3": 40}}
    x = ft.lesion_matrix(np.array([0, 1, 3, 2]), rows)
    volume = ft.LESION_COLUMNS.index("volume_mm3")
    assert math.isnan(x[0, volume]) and x[1, volume] == 12.5 and x[2, volume] == 40 and math.isnan(x[3, volume])
    assert math.isnan(x[1, ft.LESION_COLUMNS.index("wm_fraction")])
    with pytest.raises(ValueError, match="labels"):
        ft.voxel_features(*(np.zeros((4, 4, 4)),) * 3, voxels=(np.array([1]),) * 3, feature_set="lesion",
                          brain=np.ones((4, 4, 4)))


# ----------------------------------------------------------------------------- sampling

def test_candidate_region_is_a_physical_dilation_inside_the_brain():
    shape = (15, 15, 9)
    candidates = np.zeros(shape, np.uint8)
    candidates[7, 7, 4] = 1
    brain = np.ones(shape, bool)
    brain[:, :, 0] = False
    region = candidate_region(candidates, brain, spacing_mm=SPACING, dilation_mm=2.0)
    # along i (0.9 mm) 2 voxels reach 1.8 mm; along k (2.5 mm) no neighbour is within 2 mm
    assert region[9, 7, 4] and not region[10, 7, 4]
    assert not region[7, 7, 5] and region[7, 8, 4]
    assert not candidate_region(np.zeros(shape), brain, spacing_mm=SPACING).any()


def test_training_voxels_take_the_region_and_a_stated_share_of_background():
    region = np.zeros((10, 10, 10), bool)
    region[2:4, 2:4, 2:4] = True
    brain = np.ones((10, 10, 10), bool)
    voxels, in_region = training_voxels(region, brain, background_fraction=0.1, seed=3)
    assert in_region.sum() == 8 and (~in_region).sum() == round(0.1 * 992)
    assert region[voxels][in_region].all() and not region[voxels][~in_region].any()
    again, _ = training_voxels(region, brain, background_fraction=0.1, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(voxels, again))
    with pytest.raises(ValueError, match="background_fraction"):
        SamplingOptions(background_fraction=1.5)
    with pytest.raises(ValueError, match="dilation_mm"):
        SamplingOptions(dilation_mm=-1)


# ----------------------------------------------------------------------------- post-processing

def test_minor_axis_matches_scikit_image():
    labels = np.zeros((20, 20, 20), np.int32)
    labels[1:7, 1:5, 1:3] = 1          # 6 x 4 x 2 slab
    labels[10:16, 10:16, 10] = 2       # one-voxel sheet
    rr = np.indices((7, 7, 7)) - 3
    labels[12:19, 1:8, 1:8][(rr ** 2).sum(0) <= 9] = 3   # ball of radius 3
    ours = minor_axis_lengths(labels, 3)
    for region in regionprops(labels):
        assert ours[region.label] == pytest.approx(region.axis_minor_length, abs=1e-6)
    assert ours[2] == 0


def test_paper_component_rules_in_voxels_and_in_mm():
    mask = np.zeros((20, 20, 20), bool)
    mask[1:4, 1:4, 1:4] = True            # 27 voxels, cube: kept
    mask[10:13, 10:13, 10:12] = True      # 18 voxels: too small
    mask[1:11, 12:19, 15] = True          # 70-voxel sheet: too thin
    kept, report = clean_components(mask, affine=np.eye(4))
    assert kept.sum() == 27 and kept[2, 2, 2]
    assert report == {"components": 3, "too_small": 1, "too_thin": 1}
    # the same rules in mm on an anisotropic oblique grid (voxel 0.9 x 1.1 x 2.5 = 2.475 mm3)
    affine = oblique_affine()
    kept_mm, _ = clean_components(mask, affine=affine, options=PostProcessing(min_volume_mm3=45,
                                                                              min_minor_axis_mm=1.0))
    assert kept_mm[2, 2, 2] and not kept_mm[11, 11, 10] and not kept_mm[5, 15, 15]  # 18 x 2.475 = 44.6 < 45
    kept_mm, _ = clean_components(mask, affine=affine, options=PostProcessing(min_volume_mm3=44,
                                                                              min_minor_axis_mm=1.0))
    assert kept_mm[11, 11, 10] and not kept_mm[5, 15, 15]
    for bad in ({"threshold": 1.5}, {"min_voxels": -1}, {"min_minor_axis_mm": -2.0}):
        with pytest.raises(ValueError):
            PostProcessing(**bad)


def test_refined_detections_threshold_at_0_2_and_keep_the_probability():
    probability = np.zeros((12, 12, 12), np.float32)
    probability[2:5, 2:5, 2:5] = 0.2     # at the threshold: kept
    probability[7:10, 7:10, 7:10] = 0.19
    detections, _ = refined_detections(probability, affine=oblique_affine())
    assert detections.mask.sum() == 27 and len(detections.table) == 1
    assert detections.score.dtype == np.float32 and detections.score[8, 8, 8] == pytest.approx(0.19)


# ----------------------------------------------------------------------------- model

def _toy_case(seed: int, shape=(16, 16, 10)) -> CaseInputs:
    """Bright new blobs on the follow-up, candidates that cover them partly plus false ones."""
    rng = np.random.default_rng(seed)
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    baseline = (100 + rng.normal(0, 3, shape)).astype(np.float32)
    followup = (100 + rng.normal(0, 3, shape)).astype(np.float32)
    truth = np.zeros(shape, np.uint8)
    candidates = np.zeros(shape, np.int32)
    for n, (i, j) in enumerate([(4, 4), (11, 11), (4, 11)]):
        truth[i - 2:i + 2, j - 2:j + 2, 3:7] = 1
        followup[i - 2:i + 2, j - 2:j + 2, 3:7] += 40
        candidates[i - 1:i + 2, j - 1:j + 2, 4:6] = n + 1
    candidates[11:13, 3:5, 4:6] = 4          # a false candidate
    followup[11:13, 3:5, 4:6] += 5
    return CaseInputs(baseline, followup, brain, candidates, oblique_affine(), ground_truth=truth, name=f"c{seed}")


@pytest.fixture(scope="module")
def toy_samples():
    return [case_samples(_toy_case(s), feature_set="published", sampling=SamplingOptions(background_fraction=0.2),
                         bias_sigma_mm=0, seed=s) for s in range(3)]


def _stack(samples):
    return (np.concatenate([s.features for s in samples]), np.concatenate([s.truth for s in samples]),
            np.concatenate([np.full(len(s.truth), n) for n, s in enumerate(samples)]))


def test_fit_is_deterministic_for_a_seed_and_learns_the_toy_task(toy_samples):
    x, y, g = _stack(toy_samples)
    text1, info = fit(x, y, g, names=ft.PUBLISHED, seed=4, max_rounds=40)
    text2, _ = fit(x, y, g, names=ft.PUBLISHED, seed=4, max_rounds=40)
    assert text1 == text2
    model = RefineModel(text1, {"feature_set": "published", "features": list(ft.PUBLISHED)})
    p = model.predict(x, ft.PUBLISHED)
    assert p[y == 1].mean() > 0.5 > p[y == 0].mean()
    assert set(info["feature_importance_gain"]) == set(ft.PUBLISHED)
    with pytest.raises(ValueError, match="both classes"):
        fit(x, np.zeros_like(y), g, names=ft.PUBLISHED)
    with pytest.raises(ValueError, match="class_weight"):
        fit(x, y, g, names=ft.PUBLISHED, class_weight="heavy")


def test_balanced_class_weight_reaches_lightgbm(toy_samples):
    """class_weight="balanced": positives weighted by negatives / positives, so lesion
    probabilities rise; "none" (the default) leaves the weights to the sampling alone."""
    x, y, g = _stack(toy_samples)
    text_none, plain = fit(x, y, g, names=ft.PUBLISHED, seed=0, max_rounds=20)
    text_bal, balanced = fit(x, y, g, names=ft.PUBLISHED, seed=0, max_rounds=20, class_weight="balanced")
    positives = int(y.sum())
    assert "scale_pos_weight" not in plain["params"]
    assert balanced["params"]["scale_pos_weight"] == pytest.approx((len(y) - positives) / positives)
    card = {"feature_set": "published", "features": list(ft.PUBLISHED)}
    p_none = RefineModel(text_none, card).predict(x, ft.PUBLISHED)
    p_bal = RefineModel(text_bal, card).predict(x, ft.PUBLISHED)
    assert p_bal[y == 0].mean() > p_none[y == 0].mean() and p_bal[y == 1].mean() > p_none[y == 1].mean()


def test_a_model_refuses_features_other_than_its_own(toy_samples):
    x, y, g = _stack(toy_samples)
    text, _ = fit(x, y, g, names=ft.PUBLISHED, seed=0, max_rounds=5)
    with pytest.raises(ValueError, match="not this version's"):
        RefineModel(text, {"feature_set": "context", "features": list(ft.PUBLISHED)})
    with pytest.raises(ValueError, match="not one of"):
        RefineModel(text, {"feature_set": "mystery", "features": list(ft.PUBLISHED)})
    model = RefineModel(text, {"feature_set": "published", "features": list(ft.PUBLISHED)})
    with pytest.raises(ValueError, match="not the model's"):
        model.predict(np.zeros((2, len(ft.CONTEXT)), np.float32), ft.CONTEXT)
    with pytest.raises(ValueError, match="not a LightGBM model"):
        RefineModel("tree nonsense", {"feature_set": "published", "features": list(ft.PUBLISHED)})
    with pytest.raises(ValueError, match="region"):
        model.probability_map(_toy_case(0), region="head")


def test_probability_map_is_zero_outside_the_candidate_region(toy_samples):
    x, y, g = _stack(toy_samples)
    text, _ = fit(x, y, g, names=ft.PUBLISHED, seed=0, max_rounds=30)
    model = RefineModel(text, {"feature_set": "published", "features": list(ft.PUBLISHED), "bias_sigma_mm": 0,
                               "sampling": {"dilation_mm": 3.0, "background_fraction": 0.2}})
    case = _toy_case(7)
    p = model.probability_map(case)
    region = candidate_region(case.candidates, case.brain, spacing_mm=SPACING, dilation_mm=3.0)
    assert p[~region].max() == 0 and p[region].max() > 0.5
    assert model.probability_map(case, region="brain")[region].tolist() == pytest.approx(p[region].tolist())


def test_folds_are_grouped_by_case():
    assert sorted(folds_of(5, None, 0).tolist()) == [0, 1, 2, 3, 4]          # leave-one-out
    assert np.bincount(folds_of(10, 3, 1)).tolist() == [4, 3, 3]
    for n, k in ((1, 5), (4, 1)):
        with pytest.raises(ValueError, match="cross-validation"):
            folds_of(n, k, 0)


def test_cross_validation_scores_candidates_and_refined_masks(toy_samples):
    cv = cross_validate(toy_samples, names=ft.PUBLISHED, folds=None, max_rounds=30,
                        postprocessing=PostProcessing(min_voxels=1, min_minor_axis_voxels=0),
                        also={"strict": PostProcessing()})
    assert cv["leave_one_out"] and sorted(r["case"] for r in cv["cases"]) == ["c0", "c1", "c2"]
    # candidates: 3 of 4 true (Anima rule), a third of each lesion's voxels
    assert cv["mean"]["candidates_lesion_sensitivity"] == pytest.approx(1.0)
    assert cv["mean"]["refined_dice"] > cv["mean"]["candidates_dice"]
    assert "strict_lesion_f1" in cv["cases"][0]


def test_numpy_tree_reader_matches_lightgbm_with_missing_values():
    import lightgbm as lgb

    from mstools.candidates.refine.trees import TreeEnsemble

    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, 4))
    y = ((x[:, 0] > 0.3) ^ (np.nan_to_num(x[:, 1]) > 0)).astype(int)
    x[rng.random(600) < 0.2, 1] = np.nan      # NaN-missing splits on feature 1
    x[rng.random(600) < 0.3, 2] = 0.0
    params = {"objective": "binary", "verbosity": -1, "num_leaves": 7, "min_data_in_leaf": 5, "seed": 1,
              "deterministic": True, "num_threads": 1}
    for extra in ({}, {"zero_as_missing": True}):
        booster = lgb.train({**params, **extra}, lgb.Dataset(x, y, feature_name=list("abcd")), num_boost_round=15)
        test = rng.normal(size=(300, 4))
        test[::3, 1] = np.nan
        test[::4, 2] = 0.0
        test[::5, 0] = np.nan
        ensemble = TreeEnsemble.from_text(booster.model_to_string())
        np.testing.assert_allclose(ensemble.predict(test), booster.predict(test), rtol=0, atol=1e-12)
        assert ensemble.feature_names == tuple("abcd")
    with pytest.raises(ValueError, match="feature columns"):
        ensemble.predict(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="binary"):
        TreeEnsemble.from_text(booster.model_to_string().replace("objective=binary", "objective=regression"))


def test_the_packaged_model_walked_in_chunks_side_by_side_equals_one_walk_and_lightgbm(monkeypatch):
    """Rows split over threads keep each row's sum of leaves (bit for bit); NaN features of a
    tree whose splits have no missing type are read as 0, as LightGBM reads them."""
    import lightgbm as lgb

    from mstools.candidates.refine.trees import _CHUNK_ROWS, TreeEnsemble
    from mstools.models import packaged_model

    text = packaged_model("refine").read_text()
    ensemble = TreeEnsemble.from_text(text)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2 * _CHUNK_ROWS + 7, len(ensemble.feature_names)))
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.05] = 0.0
    chunked = ensemble.raw(x)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert np.array_equal(chunked, ensemble.raw(x))
    booster = lgb.Booster(model_str=text)
    np.testing.assert_allclose(ensemble.predict(x), booster.predict(x), rtol=0, atol=1e-12)


def test_context_box_widths_are_pinned_for_the_packaged_model():
    # changing these silently changes what the packaged model's features mean
    assert ft._box_width(3.0, np.array([1.0, 0.9, 2.5])).tolist() == [5, 5, 3]
    assert ft._box_width(7.0, np.ones(3)).tolist() == [9, 9, 9]
    volume = np.zeros((11, 11, 11), np.float32)
    volume[5, 5, 1] = 125.0                           # 4 voxels from the centre along k: inside 9, not 5
    b = ft.voxel_features(volume, volume, np.zeros_like(volume), voxels=(np.array([5]),) * 3,
                          feature_set="context", spacing_mm=(1, 1, 1), brain=np.ones_like(volume))
    row = dict(zip(ft.CONTEXT, b[0]))
    assert row["baseline_mean_3mm"] == 0 and row["baseline_mean_7mm"] == pytest.approx(125 / 729)


def test_early_stopping_patience_on_a_loss_curve(toy_samples):
    from mstools.candidates.refine.model import _logloss_curve, _stopping_round

    # as LightGBM's callback: stop once 50 rounds passed without improvement on the best
    assert _stopping_round([5, 4, 3] + [3.5] * 50 + [1.0]) == 3
    assert _stopping_round([5, 4, 3] + [3.5] * 49 + [1.0]) == 53
    import lightgbm as lgb

    x, y, _ = _stack(toy_samples)
    booster = lgb.train({"objective": "binary", "verbosity": -1, "seed": 0, "num_threads": 1},
                        lgb.Dataset(x, y), num_boost_round=5)
    p = booster.predict(x)
    expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert _logloss_curve(booster, x, y)[-1] == pytest.approx(expected, rel=1e-9)
