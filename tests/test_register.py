"""`mstools register`'s pure parts (no itk): deformation fields, parameter maps,
candidates and their features, the failure check; the vector NIfTI; `mstools warp`;
the command's error paths (all raised before elastix runs)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from mstools_cli.main import app
from mstools.io import OutputBatch, new_reference, read_vector_field
from mstools.detect.registration import deformation, detection, parameters
from tests.conftest import oblique_affine

runner = CliRunner()
SHAPE = (12, 10, 8)


def _world(affine, shape=SHAPE):
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _linear_field(matrix, affine, shape=SHAPE):
    """u(x) = C x on the grid (world mm)."""
    return (_world(affine, shape) @ np.asarray(matrix).T).astype(np.float32)


# --------------------------------------------------------------------------- deformation


def test_jacobian_of_a_linear_field_on_an_oblique_anisotropic_grid():
    affine = oblique_affine()
    c = np.array([[0.10, 0.02, -0.03], [0.00, -0.05, 0.04], [0.01, 0.03, 0.20]])
    det = deformation.jacobian_determinant(_linear_field(c, affine), affine)
    assert det.dtype == np.float32 and det.shape == SHAPE
    np.testing.assert_allclose(det, np.linalg.det(np.eye(3) + c), rtol=1e-4)


def test_volume_change_is_the_reciprocal_and_flags_folding():
    affine = oblique_affine()
    grow = _linear_field(np.eye(3) * (1 / 1.2 - 1), affine)   # x -> x / 1.2: follow-up is 1.2x larger
    np.testing.assert_allclose(deformation.volume_change(grow, affine), 1.2 ** 3, rtol=1e-4)
    fold = _linear_field(-2 * np.eye(3), affine)                # x -> -x: det -1
    assert np.all(deformation.volume_change(fold, affine) == 0)
    assert deformation.folding_fraction(fold, affine) == 1.0
    assert deformation.folding_fraction(grow, affine) == 0.0


def test_jacobian_differs_from_the_voxel_space_answer_on_anisotropic_grids():
    # a shear of 0.1 mm per mm along i would read as 0.1 * spacing in voxel units
    affine = np.diag([0.5, 1.0, 3.0, 1.0])
    c = np.zeros((3, 3))
    c[0, 0] = 0.1
    det = deformation.jacobian_determinant(_linear_field(c, affine), affine)
    np.testing.assert_allclose(det, 1.1, rtol=1e-5)


def test_field_shape_is_checked():
    with pytest.raises(ValueError, match="I, J, K, 3"):
        deformation.jacobian_determinant(np.zeros(SHAPE), oblique_affine())
    with pytest.raises(ValueError, match="4 x 4"):
        deformation.jacobian_determinant(np.zeros(SHAPE + (3,)), np.eye(3))
    with pytest.raises(ValueError, match="empty"):
        deformation.folding_fraction(np.zeros(SHAPE + (3,)), oblique_affine(), np.zeros(SHAPE))


def test_warp_translation_of_a_linear_image_across_grids():
    grid = oblique_affine()
    moving_affine = oblique_affine(spacing=(1.3, 0.8, 2.0), angles_deg=(-5.0, 4.0, 10.0), origin=(-92.0, 98.0, -63.0))
    a, b = np.array([0.3, -0.2, 0.5]), 7.0
    big = (24, 24, 14)
    moving = (_world(moving_affine, big) @ a + b).astype(np.float32)
    shift = np.array([0.7, -0.4, 1.1])
    u = np.broadcast_to(shift, SHAPE + (3,)).astype(np.float32)
    out = deformation.warp(moving, moving_affine, u, grid, order=1)
    expected = (_world(grid) + shift) @ a + b
    inside = out != 0
    assert inside.sum() > 0.5 * out.size
    np.testing.assert_allclose(out[inside], expected[inside], atol=1e-3)


def test_warp_nearest_keeps_labels_and_fills_outside():
    affine = oblique_affine()
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[3:6, 2:5, 1:4] = 7
    shift_voxels = np.array([1.0, 0.0, 0.0])
    u = np.broadcast_to(affine[:3, :3] @ shift_voxels, SHAPE + (3,)).astype(np.float32)
    out = deformation.warp(labels, affine, u, affine, order=0, slab=5)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out[:-1], labels[1:])
    assert np.all(out[-1] == 0)  # sampled outside the moving grid
    with pytest.raises(ValueError, match="order"):
        deformation.warp(labels, affine, u, affine, order=2)
    with pytest.raises(ValueError, match="3D"):
        deformation.warp(labels[..., None], affine, u, affine)


def test_displacement_magnitude():
    u = np.zeros(SHAPE + (3,), dtype=np.float32)
    u[1, 2, 3] = (3, 4, 12)
    m = deformation.displacement_magnitude(u)
    assert m[1, 2, 3] == 13 and m.sum() == 13


# --------------------------------------------------------------------------- parameters


PARAMETER_TEXT = """// a user's B-spline stage
(Transform "BSplineTransform")
(Metric "AdvancedMattesMutualInformation")   // the metric
(Registration "MultiResolutionRegistration")
(Optimizer "AdaptiveStochasticGradientDescent")

(FinalGridSpacingInPhysicalUnits 25.0)
(GridSpacingSchedule 2.0 1.0)
(NumberOfResolutions 2)
(WriteResultImage "false")
"""


def test_parse_parameter_text():
    m = parameters.parse_parameter_text(PARAMETER_TEXT)
    assert m["Transform"] == ("BSplineTransform",)
    assert m["GridSpacingSchedule"] == ("2.0", "1.0")
    assert m["Metric"] == ("AdvancedMattesMutualInformation",)
    assert len(m) == 8
    assert parameters.validate_map(m) == m
    assert not parameters.is_linear(m)


def test_parameter_text_round_trip():
    for m in parameters.default_maps():
        assert parameters.parse_parameter_text(parameters.parameter_text(m)) == m


@pytest.mark.parametrize("text, message", [
    ("(Transform \"EulerTransform\"\n", "line 1"),
    ("Transform EulerTransform", "not an elastix entry"),
    ("(Transform)", "no value"),
    ("(Transform \"A\")\n(Transform \"B\")", "given twice"),
    ("// only a comment\n\n", "no elastix parameter"),
])
def test_parse_refuses_malformed_files(text, message):
    with pytest.raises(ValueError, match=message):
        parameters.parse_parameter_text(text, source="p.txt")


def _valid(**changes):
    m = parameters.parse_parameter_text(PARAMETER_TEXT)
    m.update(changes)
    return m


@pytest.mark.parametrize("changes, message", [
    ({"Transform": ("WarpTransform",)}, "not supported"),
    ({"NumberOfResolutions": ("0",)}, "positive integer"),
    ({"MaximumNumberOfIterations": ("many",)}, "positive integer"),
    ({"FinalGridSpacingInPhysicalUnits": ("-5",)}, "positive number"),
    ({"FinalGridSpacingInPhysicalUnits": ("ten",)}, "positive number"),
    ({"Metric": ("AdvancedMattesMutualInformation", "TransformBendingEnergyPenalty")}, "MultiMetric"),
])
def test_validate_refuses_bad_maps(changes, message):
    with pytest.raises(ValueError, match=message):
        parameters.validate_map(_valid(**changes), source="p.txt")


def test_validate_names_missing_parameters():
    m = _valid()
    del m["Optimizer"], m["Metric"]
    with pytest.raises(ValueError, match="missing Metric, Optimizer"):
        parameters.validate_map(m)


def test_default_maps_follow_the_settings():
    maps = parameters.default_maps(parameters.RegistrationSettings(grid_spacing_mm=30, resolutions=2))
    assert [m["Transform"][0] for m in maps] == ["EulerTransform", "AffineTransform", "BSplineTransform"]
    assert [parameters.is_linear(m) for m in maps] == [True, True, False]
    assert maps[2]["FinalGridSpacingInPhysicalUnits"] == ("30",)
    assert maps[2]["GridSpacingSchedule"] == ("1.41421", "1")
    assert all(m["NumberOfResolutions"] == ("2",) for m in maps)
    assert not any(parameters.needs_single_thread(m) for m in maps)
    stiff = parameters.default_maps(parameters.RegistrationSettings(bending_weight=0.5))[2]
    assert stiff["Metric"][1] == "TransformBendingEnergyPenalty" and stiff["Metric1Weight"] == ("0.5",)
    assert parameters.needs_single_thread(stiff)
    for m in maps + [stiff]:
        parameters.validate_map(m)
    with pytest.raises(ValueError, match="unknown stage"):
        parameters.default_maps(stages=("rigid", "demons"))


@pytest.mark.parametrize("changes", [{"resolutions": 0}, {"linear_iterations": 0}, {"grid_spacing_mm": 0.0},
                                     {"grid_spacing_mm": float("nan")}, {"bending_weight": -1.0}])
def test_settings_refuse_bad_values(changes):
    with pytest.raises(ValueError):
        parameters.RegistrationSettings(**changes)


# --------------------------------------------------------------------------- detection


def test_normalised_subtraction_is_zero_outside_and_scale_free(rng):
    brain = np.zeros(SHAPE, dtype=bool)
    brain[2:10, 2:8, 2:6] = True
    baseline = rng.normal(100, 10, SHAPE).astype(np.float32)
    followup = 3 * baseline + 50          # another gain and offset, same anatomy
    d = detection.normalised_subtraction(followup, baseline, brain)
    assert d.dtype == np.float32 and np.abs(d).max() < 1e-4
    followup[5, 5, 3] += 300               # one new bright voxel
    d = detection.normalised_subtraction(followup, baseline, brain)
    assert np.all(d[~brain] == 0)
    assert d[5, 5, 3] > 5 and np.unravel_index(np.argmax(d), SHAPE) == (5, 5, 3)


def test_candidate_mask_threshold_size_and_affine_check():
    brain = np.ones(SHAPE, dtype=bool)
    brain[0] = False
    sub = np.zeros(SHAPE, dtype=np.float32)
    sub[2:4, 2:4, 2:4] = 3.0      # 8 voxels: kept
    sub[8, 8, 6] = 3.0            # 1 voxel: too small
    sub[0, 0:5, 0] = 3.0          # outside the brain
    aff = np.zeros(SHAPE, dtype=np.float32)
    aff[6:8, 5:8, 2:4] = 2.5      # 12 voxels only in the affine-only subtraction
    mask = detection.candidate_mask(sub, brain, threshold=2.0, min_voxels=5)
    assert mask.sum() == 8
    both = detection.candidate_mask(sub, brain, threshold=2.0, min_voxels=5, affine_subtraction=aff)
    assert both.sum() == 20
    assert detection.candidate_mask(sub, brain, threshold=3.0, min_voxels=5).sum() == 0  # strictly above
    score = detection.candidate_score(sub, aff)
    assert score[6, 5, 2] == 2.5 and score[2, 2, 2] == 3.0


def test_candidates_must_be_hyperintense_at_follow_up():
    """A rise from a dark baseline (CSF) to average tissue is no new FLAIR lesion; a rise to a
    hyperintensity is (Prados et al.'s 1 SD above the mean brain intensity)."""
    brain = np.ones(SHAPE, dtype=bool)
    followup = np.random.default_rng(0).normal(100.0, 10.0, SHAPE).astype(np.float32)
    sub = np.zeros(SHAPE, dtype=np.float32)
    sub[2:4, 2:4, 2:4] = 3.0
    followup[2:4, 2:4, 2:4] = 100.0      # average tissue at follow-up: a rise out of a dark baseline
    sub[6:8, 5:8, 2:4] = 3.0
    followup[6:8, 5:8, 2:4] = 160.0      # a hyperintensity
    plain = detection.candidate_mask(sub, brain, threshold=2.0, min_voxels=5)
    assert plain.sum() == 20
    kept = detection.candidate_mask(sub, brain, threshold=2.0, min_voxels=5, followup=followup,
                                    hyperintense_sd=detection.DEFAULT_HYPERINTENSE_SD)
    assert kept.sum() == 12 and kept[6:8, 5:8, 2:4].all()
    # 0 switches the condition off
    assert detection.candidate_mask(sub, brain, threshold=2.0, min_voxels=5, followup=followup,
                                    hyperintense_sd=0.0).sum() == 20
    assert detection.DEFAULT_HYPERINTENSE_SD == 1.0


def test_candidates_must_peak_high_enough():
    """Grow at the threshold, keep what peaks high: a faint broad rise goes, a bright core stays."""
    brain = np.ones(SHAPE, dtype=bool)
    sub = np.random.default_rng(1).normal(0.0, 1.0, SHAPE).astype(np.float32)
    sub[2:5, 2:5, 2:4] = 2.5             # crosses the threshold, peaks low
    sub[6:9, 5:8, 2:4] = 2.5
    sub[7, 6, 3] = 12.0                  # a bright core
    plain = detection.candidate_mask(sub, brain, threshold=2.0, min_voxels=5)
    kept = detection.candidate_mask(sub, brain, threshold=2.0, min_voxels=5, min_peak_sd=detection.DEFAULT_MIN_PEAK_SD)
    assert plain[2:5, 2:5, 2:4].all() and plain[6:9, 5:8, 2:4].all()
    assert not kept[2:5, 2:5, 2:4].any() and kept[6:9, 5:8, 2:4].all()
    assert detection.DEFAULT_MIN_PEAK_SD == 5.0


def test_candidate_features_by_hand():
    labels = np.zeros(SHAPE, dtype=np.int32)
    labels[1:3, 1, 1] = 1          # 2 voxels
    labels[5, 5, 5] = 3            # label 2 absent
    volume = np.ones(SHAPE, dtype=np.float32)
    volume[1, 1, 1] = 1.5
    u = np.zeros(SHAPE + (3,), dtype=np.float32)
    u[2, 1, 1] = (0, 3, 4)
    u[5, 5, 5] = (1, 0, 0)
    aff = np.full(SHAPE, 2.0, dtype=np.float32)
    aff[1, 1, 1] = 4.0
    rows = detection.candidate_features(labels, volume_change=volume, displacement=u, affine_subtraction=aff)
    assert [r["label"] for r in rows] == [1, 3]
    one = rows[0]
    assert one["volume_change_mean"] == pytest.approx(1.25) and one["volume_change_max"] == pytest.approx(1.5)
    assert one["volume_change_min"] == pytest.approx(1.0)
    assert one["displacement_mean_mm"] == pytest.approx(2.5) and one["displacement_max_mm"] == pytest.approx(5.0)
    assert one["affine_subtraction_mean"] == pytest.approx(3.0) and one["affine_subtraction_max"] == pytest.approx(4.0)
    assert rows[1]["displacement_max_mm"] == pytest.approx(1.0)
    assert set(one) == {"label", *detection.FEATURE_COLUMNS}
    assert detection.candidate_features(np.zeros(SHAPE, dtype=np.int32), volume_change=volume, displacement=u,
                                        affine_subtraction=aff) == []


def test_registration_quality_accepts_a_match_and_refuses_failures(rng):
    brain = np.ones(SHAPE, dtype=bool)
    image = rng.normal(100, 10, SHAPE)
    ones = np.ones(SHAPE)
    good = detection.registration_quality(image, 2 * image + 1, brain, jacobian_determinant=ones)
    assert not good.failed and good.correlation == pytest.approx(1.0) and good.reason == ""
    unrelated = detection.registration_quality(image, rng.normal(100, 10, SHAPE), brain, jacobian_determinant=ones)
    assert unrelated.failed and "correlate" in unrelated.reason
    blank = detection.registration_quality(image, np.zeros(SHAPE), brain, jacobian_determinant=ones)
    assert blank.failed and blank.correlation == 0.0
    det = ones.copy()
    det[:2] = -0.5   # 2 of 12 planes fold
    folded = detection.registration_quality(image, image, brain, jacobian_determinant=det)
    assert folded.failed and "folds in 16.7%" in folded.reason
    with pytest.raises(ValueError, match="fewer than 2"):
        detection.registration_quality(image, image, np.zeros(SHAPE), jacobian_determinant=ones)


def test_foreground_keeps_the_largest_blob_with_its_holes_filled():
    image = np.zeros((20, 20, 20), dtype=np.float32)
    image[4:16, 4:16, 4:16] = 10
    image[8:10, 8:10, 8:10] = 0      # a hole
    image[0, 0, 0] = 50              # a speck
    mask = detection.foreground(image)
    assert mask.sum() == 12 ** 3 and not mask[0, 0, 0] and mask[8, 8, 8]


# --------------------------------------------------------------------------- vector NIfTI


def _write_field(path, field, affine):
    reference = new_reference(field.shape[:3], affine)
    with OutputBatch() as out:
        out.vector_image(path, field, reference)
    return path


def test_vector_field_round_trip(tmp_path, rng):
    affine = oblique_affine()
    field = rng.normal(0, 2, SHAPE + (3,)).astype(np.float32)
    path = _write_field(tmp_path / "u.nii.gz", field, affine)
    img = nib.load(path)
    assert img.shape == SHAPE + (1, 3)
    assert img.get_data_dtype() == np.float32 and int(img.header["intent_code"]) == 1007
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    back = read_vector_field(path)
    np.testing.assert_array_equal(back.data, field)
    with pytest.raises(ValueError, match="I, J, K, 3"):
        _write_field(tmp_path / "bad.nii.gz", field[..., :2], affine)


def test_read_vector_field_refuses_other_images(tmp_path, write_nifti):
    from mstools.errors import InputError

    with pytest.raises(InputError, match="displacement field of shape"):
        read_vector_field(write_nifti("scalar.nii.gz", np.zeros(SHAPE, dtype=np.float32)))
    with pytest.raises(InputError, match="intent code 0"):
        read_vector_field(write_nifti("noint.nii.gz", np.zeros(SHAPE + (1, 3), dtype=np.float32)))
    bad = np.zeros(SHAPE + (1, 3), dtype=np.float32)
    bad[0, 0, 0, 0, 0] = np.nan
    img = nib.Nifti1Image(bad, oblique_affine())
    img.header.set_intent(1007)
    nib.save(img, tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match="NaN"):
        read_vector_field(tmp_path / "nan.nii.gz")


# --------------------------------------------------------------------------- mstools warp


def test_warp_command_applies_a_saved_field(tmp_path, write_nifti):
    affine = oblique_affine()
    a = np.array([0.3, -0.2, 0.5])
    image = write_nifti("t1.nii.gz", (_world(affine) @ a).astype(np.float32))
    shift = np.array([0.5, 0.25, -0.4])
    field = _write_field(tmp_path / "u.nii.gz", np.broadcast_to(shift, SHAPE + (3,)).astype(np.float32), affine)
    out = tmp_path / "warped.nii.gz"
    result = runner.invoke(app, ["warp", str(image), str(field), str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["written"][0] == str(out)
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    assert img.get_data_dtype() == np.float32 and int(img.header["intent_code"]) == 0
    data = img.get_fdata()
    inside = data != 0
    assert inside.sum() > 0.5 * data.size
    np.testing.assert_allclose(data[inside], ((_world(affine) + shift) @ a)[inside], atol=1e-3)
    assert (tmp_path / "warped.json").is_file()
    again = runner.invoke(app, ["warp", str(image), str(field), str(out)])
    assert again.exit_code == 1 and "--force" in again.stderr


def test_warp_command_nearest_keeps_the_mask_type(tmp_path, write_nifti):
    affine = oblique_affine()
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[3:7, 3:7, 2:5] = 1
    path = write_nifti("mask.nii.gz", mask)
    field = _write_field(tmp_path / "u.nii.gz", np.zeros(SHAPE + (3,), dtype=np.float32), affine)
    out = tmp_path / "mask_warped.nii.gz"
    result = runner.invoke(app, ["warp", str(path), str(field), str(out), "--interpolation", "nearest"])
    assert result.exit_code == 0, result.stderr
    img = nib.load(out)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj), mask)


def test_warp_command_errors(tmp_path, write_nifti):
    image = write_nifti("t1.nii.gz", np.ones(SHAPE, dtype=np.float32))
    result = runner.invoke(app, ["warp", str(image), str(image), str(tmp_path / "o.nii.gz")])
    assert result.exit_code == 1 and "displacement field" in result.stderr
    field = _write_field(tmp_path / "u.nii.gz", np.zeros(SHAPE + (3,), dtype=np.float32), oblique_affine())
    result = runner.invoke(app, ["warp", str(tmp_path / "none.nii.gz"), str(field), str(tmp_path / "o.nii.gz")])
    assert result.exit_code == 1 and "not found" in result.stderr
    assert not (tmp_path / "o.nii.gz").exists()


# --------------------------------------------------------------------------- register: errors before elastix


@pytest.fixture
def pair(write_nifti, rng):
    image = rng.normal(100, 10, SHAPE).astype(np.float32)
    return write_nifti("t2.nii.gz", image), write_nifti("t1.nii.gz", image)


def _register(*args):
    return runner.invoke(app, ["register", *map(str, args)])


def test_register_help_has_an_example():
    result = runner.invoke(app, ["register", "--help"])
    assert result.exit_code == 0 and "Example: mstools register" in result.stdout


def test_register_refuses_missing_inputs(tmp_path, pair):
    result = _register(tmp_path / "none.nii.gz", pair[1], tmp_path / "out")
    assert result.exit_code == 1 and "not found" in result.stderr


def test_register_refuses_a_mask_on_another_grid(tmp_path, pair, write_nifti):
    mask = write_nifti("m.nii.gz", np.ones(SHAPE, dtype=np.uint8), affine_=np.eye(4))
    result = _register(*pair, tmp_path / "out", "--followup-mask", mask)
    assert result.exit_code == 1 and "not on the same grid" in result.stderr
    empty = write_nifti("e.nii.gz", np.zeros(SHAPE, dtype=np.uint8))
    result = _register(*pair, tmp_path / "out", "--baseline-mask", empty)
    assert result.exit_code == 1 and "empty" in result.stderr


def test_register_refuses_bad_parameter_files(tmp_path, pair):
    bad = tmp_path / "bad.txt"
    bad.write_text("(Transform \"EulerTransform\")\n")
    result = _register(*pair, tmp_path / "out", "--parameters", bad)
    assert result.exit_code == 1 and "missing Metric" in result.stderr
    result = _register(*pair, tmp_path / "out", "-p", tmp_path / "none.txt")
    assert result.exit_code == 1 and "parameter file not found" in result.stderr
    good = tmp_path / "good.txt"
    good.write_text(PARAMETER_TEXT)
    result = _register(*pair, tmp_path / "out", "-p", good, "--grid-spacing-mm", "20")
    assert result.exit_code == 1 and "apply to the default stages" in result.stderr
    assert list(tmp_path.glob("out*")) == []


def test_register_refuses_existing_outputs_and_constant_images(tmp_path, pair, write_nifti):
    (tmp_path / "out_mask.nii.gz").write_bytes(b"x")
    result = _register(*pair, tmp_path / "out")
    assert result.exit_code == 1 and "--force" in result.stderr
    flat = write_nifti("flat.nii.gz", np.full(SHAPE, 5, dtype=np.float32))
    result = _register(pair[0], flat, tmp_path / "new")
    assert result.exit_code == 1 and "constant" in result.stderr
    result = _register(*pair, tmp_path / "new", "--grid-spacing-mm", "-1")
    assert result.exit_code == 1 and "grid spacing" in result.stderr


def test_mask_sampler_replaces_bounding_box_samplers_only():
    rigid = parameters.default_maps(stages=("rigid",))[0]
    assert rigid["ImageSampler"] == ("RandomCoordinate",)
    masked = parameters.with_mask_sampler(rigid)
    assert masked["ImageSampler"] == ("RandomSparseMask",) and rigid["ImageSampler"] == ("RandomCoordinate",)
    grid = {**rigid, "ImageSampler": ("Grid",)}
    assert parameters.with_mask_sampler(grid)["ImageSampler"] == ("Grid",)
    unset = {k: v for k, v in rigid.items() if k != "ImageSampler"}
    assert parameters.with_mask_sampler(unset)["ImageSampler"] == ("RandomSparseMask",)


def test_min_voxels_for_converts_la_rosas_size_to_the_grid():
    assert detection.min_voxels_for(detection.DEFAULT_MIN_MM3, 1.0) == 5
    assert detection.min_voxels_for(5.0, 0.9 * 1.1 * 2.5) == 3      # 2.475 mm3 voxels
    assert detection.min_voxels_for(5.0, 8.0) == 1                  # never below one voxel
    assert detection.min_voxels_for(4.95, 0.99) == 5
    with pytest.raises(ValueError, match="positive"):
        detection.min_voxels_for(5.0, 0.0)


def test_elastix_progress_follows_the_stages_and_resolutions_of_its_log(tmp_path, monkeypatch):
    """elastix writes one log for the whole chain; each stage restarts at 'Resolution: 0'.
    The watcher reads it while it grows (here written by the test) and says where it is."""
    import time

    from mstools.detect.registration import elastix

    monkeypatch.setattr(elastix, "LOG_POLL_SECONDS", 0.02)
    maps = [{"Transform": ("EulerTransform",), "NumberOfResolutions": ("3",)},
            {"Transform": ("BSplineTransform",), "NumberOfResolutions": ("2",)}]
    log = tmp_path / "elastix.log"
    heard = []
    watcher = elastix._LogWatcher(log, maps, heard.append)       # the log does not exist yet
    chunks = ["WARNING: x\nResolution: 0\nTime spent\nResolution: 1\nResol", "ution: 2\n",
              "Resolution: 0\n", "Resolution: 1\n"]
    for chunk in chunks:
        with open(log, "a") as handle:
            handle.write(chunk)
        time.sleep(0.15)
    watcher.stop()
    assert heard == ["elastix stage 1/2 (Euler), resolution 1/3", "elastix stage 1/2 (Euler), resolution 2/3",
                     "elastix stage 1/2 (Euler), resolution 3/3", "elastix stage 2/2 (BSpline), resolution 1/2",
                     "elastix stage 2/2 (BSpline), resolution 2/2"]
    assert not watcher.thread.is_alive()
