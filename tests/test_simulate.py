"""The simulator: deterministic, truthful, and every nuisance measurably does something.

Cases are simulated on a 3 mm grid to keep the suite fast; the recipe is the same at 1 mm.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from mstools.simulate import SimulationConfig, simulate_case, simulate_single_timepoint
from mstools.simulate.case import WM_UNITS

FAST = dict(voxel_mm=3.0, n_stable=6, n_enlarging=1, n_shrinking=1, n_new=4,
            lesion_volume_mm3=(60.0, 1500.0), new_volume_mm3=(100.0, 400.0),
            small_new_volume_mm3=(60.0, 80.0))
QUIET = dict(snr_baseline=0.0, snr_followup=0.0, bias_strength=0.0, gain_change=0.0,
             contrast_change=0.0, misalignment_mm=0.0, misalignment_deg=0.0, blur_mm=0.0,
             followup_slice_mm=0.0, atrophy_mm=0.0)


@pytest.fixture(scope="module")
def case():
    return simulate_case(SimulationConfig(seed=7, **FAST))


@pytest.fixture(scope="module")
def quiet_pair():
    """No nuisance and no lesion change: the follow-up equals the baseline exactly."""
    return simulate_case(SimulationConfig(seed=5, **{**FAST, "n_new": 0, "n_enlarging": 0,
                                                      "n_shrinking": 0}, **QUIET))


def with_nuisance(**changes):
    config = SimulationConfig(seed=5, **{**FAST, "n_new": 0, "n_enlarging": 0, "n_shrinking": 0},
                              **{**QUIET, **changes})
    return simulate_case(config)


def test_same_seed_same_case_other_seed_other_case(case):
    again = simulate_case(SimulationConfig(seed=7, **FAST))
    np.testing.assert_array_equal(case.baseline, again.baseline)
    np.testing.assert_array_equal(case.followup, again.followup)
    np.testing.assert_array_equal(case.ground_truth, again.ground_truth)
    assert json.dumps(case.truth) == json.dumps(again.truth)
    other = simulate_case(SimulationConfig(seed=8, **FAST))
    assert not np.array_equal(case.ground_truth, other.ground_truth)


def test_truth_is_consistent_with_the_masks(case):
    voxel = case.truth["voxel_volume_mm3"]
    assert voxel == pytest.approx(27.0)
    for lesion in case.truth["lesions"]:
        label = lesion["label"]
        assert lesion["volume_mm3_time01"] == pytest.approx((case.lesions_baseline == label).sum() * voxel)
        assert lesion["volume_mm3_time02"] == pytest.approx((case.lesions_followup == label).sum() * voxel)
    new = [les["label"] for les in case.truth["lesions"] if les["kind"] == "new"]
    assert len(new) == 4 == case.truth["n_new"]
    assert not np.isin(case.lesions_baseline, new).any(), "a new lesion is visible at baseline"
    np.testing.assert_array_equal(case.ground_truth, np.isin(case.lesions_followup, new))
    assert case.truth["new_lesion_volume_mm3"] == pytest.approx(case.ground_truth.sum() * voxel)
    assert case.ground_truth.any()


def test_lesion_kinds_behave_as_named(case):
    by_kind = {}
    for lesion in case.truth["lesions"]:
        by_kind.setdefault(lesion["kind"], []).append(lesion)
    (grow,) = by_kind["enlarging"]
    (shrink,) = by_kind["shrinking"]
    assert grow["volume_mm3_time02"] > grow["volume_mm3_time01"] > 0
    assert 0 <= shrink["volume_mm3_time02"] < shrink["volume_mm3_time01"]
    assert all(les["volume_mm3_time01"] == 0 for les in by_kind["new"])
    notes = [n for les in by_kind["new"] for n in les.get("notes", [])]
    assert "small" in notes and "faint" in notes and any(n.startswith("touches") for n in notes)


def test_flair_contrast_orders_the_tissues(case):
    tissues, flair = case.tissues, case.baseline
    csf, gm, wm = (np.median(flair[tissues == t]) for t in (1, 2, 3))
    lesion = np.median(flair[case.lesions_baseline > 0])
    assert csf < wm < gm < lesion
    assert 0.2 < csf / wm < 0.6 and 1.02 < gm / wm < 1.25  # 3 mm voxels: CSF partial volume


def test_no_nuisance_means_identical_scans(quiet_pair):
    np.testing.assert_array_equal(quiet_pair.baseline, quiet_pair.followup)


def test_noise_has_the_requested_snr(quiet_pair):
    noisy = with_nuisance(snr_followup=20.0)
    wm = quiet_pair.tissues == 3
    residual = (noisy.followup - quiet_pair.followup)[wm]
    assert residual.std() == pytest.approx(WM_UNITS / 20.0, rel=0.1)


def test_bias_field_is_smooth_and_of_the_requested_strength(quiet_pair):
    biased = with_nuisance(bias_strength=0.2)
    brain = quiet_pair.brain_mask > 0
    ratio = biased.followup[brain] / np.maximum(quiet_pair.followup[brain], 1e-3)
    assert ratio.std() > 0.02
    assert 1.1 < ratio.max() / ratio.min() <= 1.2 / 0.8 + 1e-3
    # smooth: neighbouring voxels differ far less than the field varies overall
    field = np.where(brain, biased.followup / np.maximum(quiet_pair.followup, 1e-3), np.nan)
    step = np.nanmedian(np.abs(np.diff(field, axis=0)))
    assert step < 0.01 * (ratio.max() - ratio.min()) * 10


def test_gain_scales_the_followup(quiet_pair):
    changed = with_nuisance(gain_change=0.3)
    brain = quiet_pair.brain_mask > 0
    ratio = np.median(changed.followup[brain] / np.maximum(quiet_pair.followup[brain], 1e-3))
    assert ratio == pytest.approx(changed.truth["followup_gain"], rel=0.02)
    assert abs(ratio - 1) > 1e-3


def test_contrast_change_is_a_power_law(quiet_pair):
    changed = with_nuisance(contrast_change=0.3)
    gamma = changed.truth["followup_gamma"]
    brain = quiet_pair.brain_mask > 0
    expected = WM_UNITS * (quiet_pair.followup[brain] / WM_UNITS) ** gamma
    np.testing.assert_allclose(changed.followup[brain], expected, rtol=1e-4)


def test_misalignment_moves_the_followup(quiet_pair):
    moved = with_nuisance(misalignment_mm=3.0)
    shift = np.asarray(moved.truth["followup_misalignment"]["translation_mm"])
    assert np.linalg.norm(shift) == pytest.approx(3.0, rel=1e-3)
    # The image content moved by -shift: centre of mass of brain intensity follows it.
    before = np.array(ndimage.center_of_mass(quiet_pair.followup))
    after = np.array(ndimage.center_of_mass(moved.followup))
    np.testing.assert_allclose((after - before) * 3.0, -shift, atol=0.6)


def test_blur_lowers_the_gradient_energy(quiet_pair):
    blurred = with_nuisance(blur_mm=2.0)
    def energy(img):
        return sum(float((g ** 2).sum()) for g in np.gradient(img))
    assert energy(blurred.followup) < 0.85 * energy(quiet_pair.followup)


def test_thick_slices_blur_only_along_k():
    fine = simulate_case(SimulationConfig(seed=5, **{**FAST, "voxel_mm": 1.5}, **QUIET))
    thick = simulate_case(SimulationConfig(seed=5, **{**FAST, "voxel_mm": 1.5}, **{**QUIET, "followup_slice_mm": 4.5}))
    def axis_energy(img, axis):
        return float((np.diff(img, axis=axis) ** 2).sum())
    ratios = [axis_energy(thick.followup, a) / axis_energy(fine.followup, a) for a in range(3)]
    # Averaging across slices loses detail in every direction, but most across slices.
    assert ratios[2] < 0.6 and ratios[2] < 0.85 * min(ratios[0], ratios[1])


def test_atrophy_enlarges_the_ventricles(quiet_pair):
    atrophied = with_nuisance(atrophy_mm=3.0)
    dark = WM_UNITS * 0.5
    brain = quiet_pair.brain_mask > 0
    assert (atrophied.followup[brain] < dark).sum() > 1.02 * (quiet_pair.followup[brain] < dark).sum()


def test_single_timepoint_case_labels_all_lesions():
    single = simulate_single_timepoint(SimulationConfig(seed=3, **FAST))
    assert single.flair.dtype == np.float32 and single.lesions.max() > 0
    assert all(les["kind"] == "stable" for les in single.truth["lesions"])
    assert single.truth["single_timepoint"] is True


def test_invalid_configs_are_refused():
    with pytest.raises(ValueError):
        SimulationConfig(n_new=-1)
    with pytest.raises(ValueError):
        SimulationConfig(bias_strength=1.0)
