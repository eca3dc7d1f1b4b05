"""The preprocessing steps and the whole chain, on hand-made arrays and 3 mm simulated pairs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from mstools.errors import InputError
from mstools.preprocess import PreprocessOptions, preprocess_pair
from mstools.preprocess import brain_extraction as bet
from mstools.preprocess.bias_field import correct_bias
from mstools.preprocess.harmonise import harmonise, linear_fit, relative_difference_std
from mstools.preprocess.qc import qc_png
from mstools.preprocess import pipeline as pipeline_module
from mstools.preprocess.rigid import (Grid, common_grid, crop_to_boxes, half_transform, mask_bounds, resample,
                                      resample_mask, rotation_angle_deg)
from mstools.simulate import SimulationConfig, simulate_case
from tests.conftest import oblique_affine

FAST = dict(voxel_mm=3.0, n_stable=4, n_enlarging=0, n_shrinking=0, n_new=2,
            lesion_volume_mm3=(100.0, 800.0), new_volume_mm3=(100.0, 300.0), small_new_volume_mm3=(60.0, 80.0))


def rigid(rotvec_deg, translation):
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_rotvec(np.radians(rotvec_deg)).as_matrix()
    matrix[:3, 3] = translation
    return matrix


def true_registration(case) -> np.ndarray:
    """Baseline world point -> follow-up world point, from the simulator's record."""
    affine = case.affine
    direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    record = case.truth["followup_misalignment"]
    rotation = direction @ np.array(record["rotation_matrix"]) @ direction.T
    centre = affine[:3, :3] @ ((np.array(case.baseline.shape) - 1) / 2) + affine[:3, 3]
    sample = np.eye(4)
    sample[:3, :3] = rotation
    sample[:3, 3] = centre - rotation @ centre + direction @ np.array(record["translation_mm"])
    return np.linalg.inv(sample)


def brain_errors(estimate, truth, mask, affine):
    """(rotation error in degrees, largest displacement error over brain voxels in mm)."""
    error = np.linalg.inv(truth) @ estimate
    points = np.argwhere(mask)[::5] @ affine[:3, :3].T + affine[:3, 3]
    moved = points @ error[:3, :3].T + error[:3, 3]
    return rotation_angle_deg(error), float(np.linalg.norm(moved - points, axis=1).max())


@pytest.fixture(scope="module")
def misaligned():
    return simulate_case(SimulationConfig(seed=3, misalignment_mm=4.0, misalignment_deg=4.0, atrophy_mm=0.0, **FAST))


# --------------------------------------------------------------------------- rigid


def test_half_transform_composes_to_the_whole():
    transform = rigid((3.0, -4.0, 2.0), (5.0, -1.0, 8.0))
    half = half_transform(transform)
    assert np.allclose(half @ half, transform, atol=1e-12)
    assert rotation_angle_deg(half) == pytest.approx(rotation_angle_deg(transform) / 2, abs=1e-9)
    assert np.allclose(half_transform(np.eye(4)), np.eye(4))


def test_a_grid_cropped_to_boxes_keeps_its_voxel_centres_and_covers_the_boxes_with_the_margin():
    grid = Grid(shape=(40, 30, 20), affine=oblique_affine())
    inside = np.array([[10, 8, 5], [20, 15, 9]])
    corners = inside @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    cropped = crop_to_boxes(grid, [corners], margin_mm=3.0)
    margin = np.ceil(3.0 / np.asarray(grid.spacing_mm)).astype(int)
    offset = np.linalg.inv(grid.affine) @ cropped.affine[:, 3]
    assert np.allclose(offset[:3], np.round(offset[:3]), atol=1e-9)          # same voxel centres
    assert np.allclose(cropped.affine[:3, :3], grid.affine[:3, :3])
    assert np.array_equal(np.round(offset[:3]).astype(int), inside[0] - margin)
    assert cropped.shape == tuple(inside[1] - inside[0] + 2 * margin + 1)
    whole = np.array([[0, 0, 0], [39, 29, 19]]) @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    assert crop_to_boxes(grid, [whole], margin_mm=3.0) is grid              # nothing to crop


def test_common_grid_of_one_grid_under_identity_is_that_grid():
    grid = Grid(shape=(7, 5, 4), affine=oblique_affine())
    direction = grid.affine[:3, :3] / np.linalg.norm(grid.affine[:3, :3], axis=0)
    same = common_grid([grid], [np.eye(4)], direction_ras=direction, spacing_mm=grid.spacing_mm)
    assert same.shape == grid.shape and np.allclose(same.affine, grid.affine, atol=1e-9)


def test_resample_moves_voxels_by_a_known_whole_voxel_shift(rng):
    affine = oblique_affine()
    data = rng.normal(size=(9, 8, 6)).astype(np.float32)
    shift = affine[:3, :3] @ np.array([2.0, 1.0, 0.0])  # two voxels along i, one along j, in mm
    transform = np.eye(4)
    transform[:3, 3] = shift  # grid point x shows the data at x + shift
    grid = Grid(shape=data.shape, affine=affine)
    for interpolation in ("nearest", "linear", "smooth"):
        out = resample(data, affine, grid, transform, interpolation=interpolation)
        assert np.allclose(out[:7, :7, :], data[2:, 1:, :], atol=1e-4), interpolation
        assert np.all(out[7:] == 0)  # outside the data: the fill value
    mask = (data > 0).astype(np.uint8)
    assert np.array_equal(resample_mask(mask, affine, grid, transform)[:7, :7], mask[2:, 1:])
    with pytest.raises(ValueError, match="interpolation"):
        resample(data, affine, grid, transform, interpolation="cubic")


# --------------------------------------------------------------------------- harmonisation


def test_harmonisation_methods_recover_known_intensity_changes(rng):
    baseline = rng.gamma(4.0, 100.0, size=(20, 20, 20)).astype(np.float32)
    followup = 2.0 * baseline + 50.0
    mask = np.zeros(baseline.shape, np.uint8)
    mask[2:-2, 2:-2, 2:-2] = 1
    assert linear_fit(baseline, followup, mask) == pytest.approx((0.5, -25.0), rel=1e-6, abs=1e-6)
    for method in ("linear", "histogram"):
        b, f, _ = harmonise(baseline, followup, mask, method=method)
        assert np.array_equal(b, baseline)
        inside = mask.astype(bool)
        assert np.abs(f[inside] - baseline[inside]).max() < 1e-2 * baseline.max(), method
    b, f, params = harmonise(baseline, followup, mask, method="zscore")
    assert b[mask > 0].mean() == pytest.approx(0, abs=1e-5) and b[mask > 0].std() == pytest.approx(1, rel=1e-5)
    assert np.allclose(b, f, atol=1e-4)
    assert relative_difference_std(baseline, followup, mask) > 0.9
    b, f, params = harmonise(baseline, followup, mask, method="none")
    assert params == {"method": "none"} and np.array_equal(f, followup.astype(np.float32))
    with pytest.raises(ValueError, match="harmonisation method"):
        harmonise(baseline, followup, mask, method="nyul2")
    with pytest.raises(ValueError, match="fewer than 10"):
        harmonise(baseline, followup, np.zeros_like(mask), method="linear")


def test_histogram_matching_undoes_a_monotone_contrast_change(rng):
    baseline = rng.gamma(4.0, 100.0, size=(20, 20, 20)).astype(np.float32)
    followup = (1.1 * 400.0 * (baseline / 400.0) ** 1.15).astype(np.float32)  # gain and gamma
    mask = np.ones(baseline.shape, np.uint8)
    _, matched, _ = harmonise(baseline, followup, mask, method="histogram")
    assert relative_difference_std(baseline, matched, mask) < 0.25 * relative_difference_std(baseline, followup, mask)


# --------------------------------------------------------------------------- brain masks, N4


def test_otsu_brain_mask_matches_the_simulated_brain(misaligned):
    from mstools.metrics.voxelwise import count_voxels, voxel_metrics

    mask = bet.otsu_brain_mask(misaligned.baseline, (3.0, 3.0, 3.0))
    dice = voxel_metrics(count_voxels(mask, misaligned.brain_mask, voxel_volume_mm3=27.0))["dice"]
    assert dice > 0.95
    assert mask.dtype == np.uint8
    assert not bet.otsu_brain_mask(np.zeros((5, 5, 5), np.float32), (1, 1, 1)).any()


def test_scan_and_brain_mask_checks_refuse_what_is_not_a_head():
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    with pytest.raises(InputError, match="image is empty"):
        bet.check_scan(np.zeros((50, 50, 50)), affine)
    small = np.random.default_rng(0).random((20, 20, 20))
    with pytest.raises(InputError, match="too small for a head"):
        bet.check_scan(small, affine)
    with pytest.raises(InputError, match="outside the 400-3000 mL"):
        bet.check_brain_mask(np.ones((10, 10, 10)), affine)  # 27 mL
    bet.check_brain_mask(np.ones((40, 40, 40)), affine)      # 1728 mL: a brain
    with pytest.raises(ValueError, match="union"):
        bet.combine_masks(np.ones(3), np.ones(3), how="xor")
    with pytest.raises(ValueError, match="method"):
        bet.brain_mask(small, affine, method="bet2")


def test_n4_removes_a_smooth_bias_field(misaligned):
    wm = ndimage.binary_erosion(misaligned.tissues == 3) & (misaligned.lesions_baseline == 0)
    field = np.exp(np.linspace(-0.25, 0.25, misaligned.baseline.shape[2]))[None, None, :].astype(np.float32)
    biased = misaligned.baseline * field
    corrected, estimate = correct_bias(biased, misaligned.affine, mask=misaligned.brain_mask)

    def cv(image):
        return image[wm].std() / image[wm].mean()

    assert cv(corrected) < 0.7 * cv(biased)
    assert corrected.dtype == np.float32 and estimate.shape == biased.shape


# --------------------------------------------------------------------------- the whole chain


@pytest.mark.slow
def test_chain_recovers_a_known_misalignment_and_shrinks_the_difference(misaligned):
    case = misaligned
    result = preprocess_pair(case.baseline, case.affine, case.followup, case.affine)
    rotation_error, displacement_error = brain_errors(result.registration, true_registration(case),
                                                      case.brain_mask, case.affine)
    assert rotation_angle_deg(true_registration(case)) == pytest.approx(4.0, abs=0.05)
    assert rotation_error < 0.5 and displacement_error < 0.5
    # halfway: each scan moved by half, both onto one grid
    assert np.allclose(result.to_followup @ result.to_followup, result.registration, atol=1e-9)
    assert np.allclose(result.to_baseline, np.linalg.inv(result.to_followup), atol=1e-9)
    assert result.baseline.shape == result.followup.shape == result.brain_mask.shape == result.grid.shape
    before = relative_difference_std(case.baseline, case.followup, case.brain_mask)
    after = relative_difference_std(result.baseline, result.followup, result.brain_mask)
    assert after < 0.5 * before
    assert set(result.seconds) == {"brain_extraction", "bias_correction", "registration", "resampling",
                                   "harmonisation"}
    # the middle space keeps the brains and a margin, not the whole fields of view
    assert np.prod(result.grid.shape) < np.prod(case.baseline.shape)
    brain = np.argwhere(result.brain_mask)
    margin = np.ceil(pipeline_module.BRAIN_MARGIN_MM / np.asarray(result.grid.spacing_mm)).astype(int)
    assert (brain.min(0) >= margin - 1).all() and (brain.max(0) <= np.asarray(result.grid.shape) - margin).all()


def test_aligned_pair_on_one_grid_is_recognised_and_not_resampled():
    # already registered and bias-free (as MSSEG-2's pairs after the organisers' chain)
    case = simulate_case(SimulationConfig(seed=1, misalignment_mm=0.0, misalignment_deg=0.0, atrophy_mm=0.0,
                                          bias_strength=0.0, **FAST))
    options = PreprocessOptions(bias_correction=False, harmonisation="none")
    result = preprocess_pair(case.baseline, case.affine, case.followup, case.affine, options=options)
    assert result.report["registration"]["already_aligned"] and result.report["registration"]["same_grid"]
    assert np.array_equal(result.registration, np.eye(4))
    assert np.array_equal(result.baseline, case.baseline) and np.array_equal(result.followup, case.followup)
    assert result.grid.shape == case.baseline.shape and np.allclose(result.grid.affine, case.affine)
    # and registration can be switched off for such a pair
    off = preprocess_pair(case.baseline, case.affine, case.followup, case.affine,
                          options=PreprocessOptions(registration="off", bias_correction=False, harmonisation="none"))
    assert np.array_equal(off.followup, case.followup)


def test_baseline_space_keeps_the_baseline_grid_and_carries_masks(misaligned):
    case = misaligned
    options = PreprocessOptions(space="baseline", registration="off", bias_correction=False, harmonisation="none")
    carry = {"lesions": ((case.lesions_baseline > 0).astype(np.uint8), "baseline")}
    result = preprocess_pair(case.baseline, case.affine, case.followup, case.affine, options=options, carry=carry,
                             baseline_mask=case.brain_mask)
    assert result.grid.shape == case.baseline.shape and np.allclose(result.grid.affine, case.affine)
    assert np.array_equal(result.baseline, case.baseline)  # identity onto its own grid: a copy
    assert np.array_equal(result.carried["lesions"], (case.lesions_baseline > 0).astype(np.uint8))
    assert result.report["brain_masks"]["baseline"]["method"] == "given"


def test_chain_refuses_bad_input(misaligned):
    case = misaligned
    with pytest.raises(InputError, match="image is empty"):
        preprocess_pair(np.zeros_like(case.baseline), case.affine, case.followup, case.affine)
    with pytest.raises(InputError, match="brain mask of the baseline has shape"):
        preprocess_pair(case.baseline, case.affine, case.followup, case.affine, baseline_mask=np.ones((3, 3, 3)))
    with pytest.raises(InputError, match="not the followup scan's"):
        preprocess_pair(case.baseline, case.affine, case.followup, case.affine,
                        carry={"lesions": (np.ones((3, 3, 3)), "followup")})
    moved = case.affine.copy()
    moved[:3, 3] += 1.0
    with pytest.raises(InputError, match="registration cannot be switched off"):
        preprocess_pair(case.baseline, case.affine, case.followup, moved,
                        options=PreprocessOptions(registration="off"))
    with pytest.raises(ValueError, match="space"):
        PreprocessOptions(space="mni")
    with pytest.raises(ValueError, match="spacing_mm"):
        PreprocessOptions(spacing_mm=(1.0, 0.0, 1.0))


def test_qc_picture_is_a_png_of_the_expected_size(misaligned):
    import io

    import matplotlib.image

    png = qc_png(misaligned.baseline, misaligned.followup, misaligned.brain_mask, n_slices=3, title="t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    picture = matplotlib.image.imread(io.BytesIO(png))
    assert picture.shape[0] == 660 and picture.shape[1] == 660


@pytest.mark.slow
def test_deepbet_finds_the_brain_on_a_simulated_flair(misaligned):
    pytest.importorskip("deepbet")  # optional: ships its own weights (pip install deepbet)
    from mstools.metrics.voxelwise import count_voxels, voxel_metrics

    mask = bet.brain_mask(misaligned.followup, misaligned.affine, method="deepbet")
    assert mask.dtype == np.uint8 and mask.shape == misaligned.followup.shape
    dice = voxel_metrics(count_voxels(mask, misaligned.brain_mask, voxel_volume_mm3=27.0))["dice"]
    assert dice > 0.95  # measured 0.988 at 3 mm (seed 0), although deepbet was trained on T1


def test_common_grid_of_a_pair_with_a_2d_scan_is_1mm_isotropic_else_the_scans_own_or_the_finest():
    from mstools.preprocess.pipeline import MULTISLICE_GRID_MM, _default_spacing
    from mstools.preprocess.rigid import Grid

    def grid(spacing, axes=np.eye(3)):
        affine = np.eye(4)
        affine[:3, :3] = axes @ np.diag(spacing)
        return Grid((8, 8, 8), affine)

    iso = (MULTISLICE_GRID_MM,) * 3
    # the Ljubljana database's pairs: 4 mm then 3 mm slices, 0.57 then 0.72 mm in-plane; one protocol twice
    assert _default_spacing(grid((0.72, 0.72, 4.0)), grid((0.72, 0.72, 3.0))) == iso
    assert _default_spacing(grid((0.57, 0.57, 3.3)), grid((0.72, 0.72, 3.0))) == iso
    assert _default_spacing(grid((0.9, 0.9, 3.3)), grid((0.9, 0.9, 3.3))) == iso
    # a sagittal 2D follow-up of an axial one, or of a 3D baseline
    swapped = np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]])
    assert _default_spacing(grid((0.72, 0.72, 4.0)), grid((3.0, 0.6, 0.6), swapped)) == iso
    assert _default_spacing(grid((0.8, 0.8, 0.8)), grid((0.72, 0.72, 3.0))) == iso
    # 3D scans: their own voxel size when they share it (in any axis order), else the finest edge
    assert _default_spacing(grid((1.0, 1.0, 1.2)), grid((1.2, 1.0, 1.0), swapped)) == (1.0, 1.0, 1.2)
    assert _default_spacing(grid((1.0, 1.0, 1.0)), grid((0.9, 0.9, 1.0))) == (0.9, 0.9, 0.9)


def test_mask_bounds_are_the_box_of_the_listed_voxels():
    """The projection box equals argwhere's min/max on hand-made masks (one voxel, a corner,
    scattered voxels of several values, a bool mask) and is None for an empty one."""
    rng = np.random.default_rng(3)
    masks = [np.zeros((4, 5, 6), np.uint8), np.zeros((7, 3, 5), bool), (rng.random((9, 8, 7)) > 0.97) * 3]
    masks[0][2, 0, 5] = 1
    masks[1][6, 2, 4] = True
    masks[1][0, 1, 0] = True
    for mask in masks:
        index = np.argwhere(mask)
        first, last = mask_bounds(mask)
        assert first.tolist() == index.min(0).tolist() and last.tolist() == index.max(0).tolist()
    assert mask_bounds(np.zeros((3, 3, 3), np.uint8)) is None
