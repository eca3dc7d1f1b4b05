"""`mstools preprocess` and `mstools apply-transform` from the command line."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from mstools_cli.main import app
from mstools import case_layout as layout
from mstools.io import read_image, read_mask, same_grid
from mstools.preprocess.rigid import Grid, common_grid, resample, resample_mask, rotation_angle_deg
from mstools.simulate import SimulationConfig, simulate_case
from tests.conftest import oblique_affine, save_nifti

runner = CliRunner()
FAST = dict(voxel_mm=3.0, n_stable=4, n_enlarging=0, n_shrinking=0, n_new=2,
            lesion_volume_mm3=(100.0, 800.0), new_volume_mm3=(100.0, 300.0), small_new_volume_mm3=(60.0, 80.0))

#: The baseline is re-acquired sagittally and moved by this rigid transform (grid point
#: x shows the original anatomy at MOTION x): the registration must find it.
MOTION = np.eye(4)
MOTION[:3, :3] = Rotation.from_rotvec(np.radians([2.0, -3.0, 4.0])).as_matrix()
MOTION[:3, 3] = [3.0, -2.0, 4.0]
SAGITTAL = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # i->A, j->S, k->R


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A sagittal 3 mm baseline and an axial 3 x 3 x 6 mm follow-up of one simulated head."""
    folder = tmp_path_factory.mktemp("pair")
    case = simulate_case(SimulationConfig(seed=5, misalignment_mm=0.0, misalignment_deg=0.0, atrophy_mm=0.0, **FAST))
    thick = ndimage.gaussian_filter1d(case.followup, sigma=6.0 / 2.355 / 3.0, axis=2)  # 6 mm FWHM slice profile
    source = Grid(shape=case.baseline.shape, affine=case.affine)
    sagittal = common_grid([source], [MOTION], direction_ras=SAGITTAL, spacing_mm=(3.0, 3.0, 3.0))
    axial = common_grid([source], [np.eye(4)], direction_ras=np.eye(3), spacing_mm=(3.0, 3.0, 6.0))
    paths = {
        "baseline": save_nifti(folder / "t1.nii.gz", resample(case.baseline, case.affine, sagittal, MOTION),
                               sagittal.affine),
        "followup": save_nifti(folder / "t2.nii.gz", resample(thick, case.affine, axial, np.eye(4),
                                                              interpolation="linear"), axial.affine),
        "lesions": save_nifti(folder / "lesions_t1.nii.gz",
                              resample_mask(case.lesions_baseline > 0, case.affine, sagittal, MOTION), sagittal.affine),
        "brain": save_nifti(folder / "brain_t1.nii.gz", resample_mask(case.brain_mask, case.affine, sagittal, MOTION),
                            sagittal.affine),
    }
    return case, paths


@pytest.fixture(scope="module")
def processed(pair, tmp_path_factory):
    case, paths = pair
    out = tmp_path_factory.mktemp("out") / "new" / "case"     # preprocess makes the missing folders
    result = runner.invoke(app, ["preprocess", str(paths["baseline"]), str(paths["followup"]), str(out),
                                 "--baseline-lesions", str(paths["lesions"]), "--spacing-mm", "3", "--json"])
    assert result.exit_code == 0, result.stderr
    return out, json.loads(result.stdout)


def test_help_of_both_commands_has_an_example():
    for command in ("preprocess", "apply-transform"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and f"mstools {command}" in result.stdout.replace("\n", " ")


@pytest.mark.slow
def test_different_grids_and_orientations_come_out_on_one_grid_and_aligned(pair, processed):
    case, paths = pair
    out, report = processed
    baseline = read_image(out / layout.BASELINE)
    followup = read_image(out / layout.FOLLOWUP)
    brain = read_mask(out / layout.BRAIN_MASK)
    assert same_grid(baseline, followup) and same_grid(baseline, brain)
    # the user's voxel size (a 6 mm-slice scan would go onto 1 mm by default: 27x the voxels of this test)
    assert np.allclose(baseline.spacing_mm, 3.0)
    # the registration found the sagittal scan's motion (T maps baseline points to follow-up points)
    estimate = np.array(report["registration"]["baseline_to_followup_ras"])
    error = estimate @ np.linalg.inv(MOTION)  # applied to original-anatomy points
    points = np.argwhere(case.brain_mask)[::5] @ case.affine[:3, :3].T + case.affine[:3, 3]
    distance = np.linalg.norm(points @ error[:3, :3].T + error[:3, 3] - points, axis=1)
    assert rotation_angle_deg(error) < 0.5 and distance.max() < 0.5  # measured: 0.08 deg, 0.18 mm
    # and the two outputs show the same anatomy
    inside = brain.data > 0
    assert np.corrcoef(baseline.data[inside], followup.data[inside])[0, 1] > 0.8


def test_case_folder_layout_sidecars_and_transforms(processed):
    out, report = processed
    written = set(report["written"])
    for name in (layout.BASELINE, layout.FOLLOWUP, layout.BRAIN_MASK, layout.LESIONS_BASELINE,
                 "time01_to_middle_space.tfm", "time02_to_middle_space.tfm", "preprocess_report.json",
                 "qc_preprocess.png", "flair_time01_on_middle_space.json", "brain_mask.json"):
        assert str(out / name) in written, name
        assert (out / name).is_file()
    assert nib.load(out / layout.BASELINE).get_data_dtype() == np.float32
    assert nib.load(out / layout.BRAIN_MASK).get_data_dtype() == np.uint8
    sidecar = json.loads((out / "brain_mask.json").read_text())
    assert sidecar["command"] == "preprocess" and sidecar["parameters"]["space"] == "halfway"
    assert len(sidecar["inputs_sha256"]) == 3
    assert (out / "qc_preprocess.png").read_bytes()[:4] == b"\x89PNG"
    assert report["registration"]["already_aligned"] is False


def test_apply_transform_matches_the_carried_mask_and_goes_back(pair, processed, tmp_path):
    case, paths = pair
    out, _ = processed
    into = tmp_path / "lesions_mid.nii.gz"
    result = runner.invoke(app, ["apply-transform", str(paths["lesions"]), str(out / "time01_to_middle_space.tfm"),
                                 str(out / layout.BASELINE), str(into)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split()[0] == str(into)
    carried = read_mask(out / layout.LESIONS_BASELINE)
    moved = read_mask(into)
    assert same_grid(carried, moved) and np.array_equal(carried.data, moved.data)
    # a brain mask into the middle space and back out again
    mid, back = tmp_path / "brain_mid.nii.gz", tmp_path / "brain_back.nii.gz"
    tfm = str(out / "time01_to_middle_space.tfm")
    assert runner.invoke(app, ["apply-transform", str(paths["brain"]), tfm, str(out / layout.BASELINE),
                               str(mid)]).exit_code == 0
    result = runner.invoke(app, ["apply-transform", str(mid), tfm, str(paths["brain"]), str(back), "--inverse",
                                 "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["interpolation"] == "mask"
    original, returned = read_mask(paths["brain"]), read_mask(back)
    assert same_grid(original, returned)
    a, b = original.data > 0, returned.data > 0
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.97
    # intensities take the smooth interpolator and stay float
    flair = tmp_path / "flair_mid.nii.gz"
    result = runner.invoke(app, ["apply-transform", str(paths["baseline"]), tfm, str(out / layout.BASELINE),
                                 str(flair), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["interpolation"] == "smooth"
    assert nib.load(flair).get_data_dtype() == np.float32


def test_apply_transform_errors(pair, processed, tmp_path):
    case, paths = pair
    out, _ = processed
    bad = tmp_path / "bad.tfm"
    bad.write_text("#Insight Transform File V1.0\nnonsense\n")
    result = runner.invoke(app, ["apply-transform", str(paths["lesions"]), str(bad), str(out / layout.BASELINE),
                                 str(tmp_path / "x.nii.gz")])
    assert result.exit_code == 1 and "not a readable linear ITK transform" in result.stderr
    assert not (tmp_path / "x.nii.gz").exists()
    result = runner.invoke(app, ["apply-transform", str(paths["lesions"]), str(out / "time01_to_middle_space.tfm"),
                                 str(out / layout.BASELINE), str(out / layout.LESIONS_BASELINE)])
    assert result.exit_code == 1 and "already exists; pass --force" in result.stderr
    carried = tmp_path / "new" / "deeper" / "lesions_mid.nii.gz"          # apply-transform makes the folders
    result = runner.invoke(app, ["apply-transform", str(paths["lesions"]), str(out / "time01_to_middle_space.tfm"),
                                 str(out / layout.BASELINE), str(carried)])
    assert result.exit_code == 0, result.stderr
    assert carried.is_file() and carried.with_name("lesions_mid.json").is_file()


def _fails(args, message, tmp_path):
    out = tmp_path / "never"
    result = runner.invoke(app, ["preprocess", *[str(a) for a in args[:2]], str(out), *[str(a) for a in args[2:]]])
    assert result.exit_code == 1, result.stdout
    assert message in result.stderr, result.stderr
    assert "mstools preprocess: error:" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()  # nothing written


def test_bad_input_gives_one_clear_line_and_writes_nothing(pair, tmp_path):
    case, paths = pair
    affine = oblique_affine()
    noise = save_nifti(tmp_path / "noise.nii.gz", np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), affine)
    _fails([noise, paths["followup"]], "too small for a head", tmp_path)
    empty = save_nifti(tmp_path / "empty.nii.gz", np.zeros((64, 64, 64), np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    _fails([paths["baseline"], empty], "image is empty", tmp_path)
    ball = np.zeros((60, 60, 60), np.float32)
    ball[np.linalg.norm(np.indices(ball.shape) - 30, axis=0) < 8] = 100.0  # a 33 mL ball in a 180 mm box
    ball_path = save_nifti(tmp_path / "ball.nii.gz", ball, np.diag([3.0, 3.0, 3.0, 1.0]))
    _fails([ball_path, paths["followup"]], "outside the 400-3000 mL of a human brain", tmp_path)
    scan = read_image(paths["baseline"])
    no_brain = save_nifti(tmp_path / "no_brain.nii.gz", np.zeros(scan.shape, np.uint8), scan.affine)
    _fails([paths["baseline"], paths["followup"], "--baseline-mask", no_brain], "mask is empty", tmp_path)
    _fails([paths["baseline"], paths["followup"], "--followup-mask", paths["brain"]], "not on the same grid", tmp_path)
    _fails([paths["baseline"], paths["followup"], "--baseline-mask", paths["followup"]], "not a binary mask", tmp_path)
    _fails([paths["baseline"], tmp_path / "missing.nii.gz"], "file not found", tmp_path)
    _fails([paths["baseline"], paths["followup"], "--no-registration"], "registration cannot be switched off",
           tmp_path)
    _fails([paths["baseline"], paths["followup"], "--spacing-mm", "1,2"], "give one voxel size or three", tmp_path)


def test_existing_outputs_need_force(processed, pair):
    case, paths = pair
    out, _ = processed
    before = (out / layout.BASELINE).stat().st_mtime_ns
    result = runner.invoke(app, ["preprocess", str(paths["baseline"]), str(paths["followup"]), str(out)])
    assert result.exit_code == 1 and "already exists; pass --force" in result.stderr
    assert result.stderr.count("\n") == 1                   # before reading the scans (no progress line)
    assert (out / layout.BASELINE).stat().st_mtime_ns == before
    (out.parent / "afile").write_text("not a folder")
    result = runner.invoke(app, ["preprocess", str(paths["baseline"]), str(paths["followup"]),
                                 str(out.parent / "afile" / "case")])
    assert result.exit_code == 1 and "is a file, not a folder" in result.stderr and result.stderr.count("\n") == 1


def test_command_line_defaults_are_the_library_defaults():
    import inspect

    from mstools_cli.preprocess import preprocess_command
    from mstools.preprocess import PreprocessOptions

    params = inspect.signature(preprocess_command).parameters
    options = PreprocessOptions()
    assert params["brain_extraction"].default.default.value == options.brain_extraction
    assert params["combine"].default.default.value == options.combine_masks
    assert params["space"].default.default.value == options.space
    assert params["harmonisation"].default.default.value == options.harmonisation
    assert params["n4_shrink"].default.default == options.n4_shrink
    assert params["bias_correction"].default.default is options.bias_correction
