"""Clinical acquisitions and real anatomy: every option measurably does what it says.

Acquisitions are tested on small hand-made volumes (a thin plane has a known slice
response); whole cases use the 2-3 mm anatomy; real-anatomy mode uses a made-up FLAIR-like
head on an oblique grid, written to tmp files for the command.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from mstools_cli.main import app
from mstools import case_layout as layout
from mstools.simulate import SimulationConfig, simulate_case
from mstools.simulate.acquisition import (Acquisition, ProtocolContrast, acquire, acquired_grid, parse_acquisition,
                                          parse_contrast, partial_volume)
from mstools.simulate.case import RAW_BASELINE, RAW_FOLLOWUP
from mstools.simulate.real_anatomy import build_lesion_library, simulate_on_real
from tests.conftest import oblique_affine, save_nifti

runner = CliRunner()

QUIET = dict(snr_baseline=0.0, snr_followup=0.0, bias_strength=0.0, gain_change=0.0,
             contrast_change=0.0, misalignment_mm=0.0, misalignment_deg=0.0, blur_mm=0.0, atrophy_mm=0.0)
FAST = dict(voxel_mm=3.0, n_stable=6, n_enlarging=1, n_shrinking=1, n_new=4,
            lesion_volume_mm3=(60.0, 1500.0), new_volume_mm3=(100.0, 400.0), small_new_volume_mm3=(60.0, 80.0))
#: A fine 1 mm grid with the MNI's sign convention (i runs right to left).
FINE = np.diag([-1.0, 1.0, 1.0, 1.0])
FINE[:3, 3] = (20.0, -20.0, -20.0)


def plane(k: int, shape=(16, 16, 40)) -> np.ndarray:
    """One bright 1 mm plane at k on a 1 mm grid (a slice-profile probe)."""
    image = np.zeros(shape, dtype=np.float32)
    image[:, :, k] = 1.0
    return image


def response(acquisition: Acquisition, k: int = 20, depth: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """World z (mm) of each acquired slice and its mean signal, for a plane at fine k."""
    data, grid = acquire(plane(k, (16, 16, depth)), FINE, acquisition)
    z = grid[2, 2] * np.arange(data.shape[2]) + grid[2, 3]
    return z, data[4:-4, 4:-4].mean(axis=(0, 1))


# --------------------------------------------------------------------------- acquisition


def test_slice_thickness_sets_the_slice_spacing_and_blurs_along_it():
    for thickness in (3.0, 5.0):
        data, grid = acquire(plane(20), FINE, Acquisition(slice_mm=thickness, profile="rect", inplane_mm=1.0))
        assert np.linalg.norm(grid[:3, 2]) == pytest.approx(thickness)
        assert data.shape[2] == 40 // int(thickness)
        z, signal = response(Acquisition(slice_mm=thickness, profile="rect", inplane_mm=1.0))
        # A rectangular profile preserves the plane's 1 mm integral: peak 1/thickness, sum 1/spacing.
        assert signal.sum() == pytest.approx(1.0 / thickness, rel=0.02)
        assert signal.max() == pytest.approx(1.0 / thickness, rel=0.35)


def test_slice_gap_moves_the_slice_centres():
    shape, no_gap = acquired_grid((16, 16, 40), FINE, Acquisition(slice_mm=3.0))
    gap_shape, gap = acquired_grid((16, 16, 40), FINE, Acquisition(slice_mm=3.0, gap_mm=1.0))
    assert no_gap[2, 2] == pytest.approx(3.0) and gap[2, 2] == pytest.approx(4.0)
    assert gap_shape[2] == 10 < shape[2] == 13
    # Both slabs are centred on the field of view; their slice positions differ.
    centres = [a[2, 3] + a[2, 2] * np.arange(s[2]) for a, s in ((no_gap, shape), (gap, gap_shape))]
    assert centres[0].mean() == pytest.approx(centres[1].mean())
    assert not np.isin(np.round(centres[1], 3), np.round(centres[0], 3)).all()


def test_rect_and_gaussian_profiles_differ_in_their_tails():
    # 39 fine slices: the slab's middle slice is centred on fine k = 19, where the plane is.
    z_rect, rect = response(Acquisition(slice_mm=3.0, profile="rect", inplane_mm=1.0), k=19, depth=39)
    z_gauss, gauss = response(Acquisition(slice_mm=3.0, profile="gaussian", inplane_mm=1.0), k=19, depth=39)
    peak = int(np.argmax(rect))
    assert np.argmax(gauss) == peak
    assert rect[peak] > gauss[peak]                       # rect: all of the plane in one slice
    neighbours = np.delete(np.arange(len(rect)), peak)
    assert gauss[neighbours].max() > 0.01                 # Gaussian tails reach the next slices
    assert gauss[neighbours].max() > 5 * rect[neighbours].max()


@pytest.mark.parametrize("orientation,axis", [("axial", 2), ("coronal", 1), ("sagittal", 0)])
def test_orientation_chooses_the_thick_axis(orientation, axis):
    data, grid = acquire(np.ones((30, 32, 34), dtype=np.float32), FINE,
                         Acquisition(slice_mm=4.0, inplane_mm=1.0, orientation=orientation))
    spacing = np.linalg.norm(grid[:3, :3], axis=0)
    assert spacing[axis] == pytest.approx(4.0)
    assert np.delete(spacing, axis) == pytest.approx([1.0, 1.0])
    assert data.shape[axis] == (30, 32, 34)[axis] // 4
    assert np.sign(grid[0, 0]) == -1                     # the fine grid's axis signs are kept


def test_inplane_voxel_size_sets_the_raw_shape():
    fine = np.ones((30, 30, 30), dtype=np.float32)
    coarse_shape = acquire(fine, FINE, Acquisition(inplane_mm=1.0))[0].shape
    fine_shape = acquire(fine, FINE, Acquisition(inplane_mm=0.5))[0].shape
    assert fine_shape[:2] == (60, 60) and coarse_shape[:2] == (30, 30) and fine_shape[2] == coarse_shape[2] == 10


def test_tilt_turns_the_slices_and_keeps_the_signal():
    image = np.ones((30, 30, 30), dtype=np.float32)
    data, grid = acquire(image, FINE, Acquisition(inplane_mm=1.0, slice_mm=3.0, tilt_deg=10.0))
    normal = grid[:3, 2] / np.linalg.norm(grid[:3, 2])
    assert np.degrees(np.arccos(abs(normal[2]))) == pytest.approx(10.0, abs=1e-6)
    centre = data[10:20, 10:20, 4:6]
    assert centre == pytest.approx(1.0, abs=1e-4)       # a uniform image stays uniform inside


def test_partial_volume_keeps_a_mask_volume():
    ball = np.linalg.norm(np.indices((30, 30, 30)) - 14.5, axis=0) < 9
    shape, grid = acquired_grid(ball.shape, FINE, Acquisition(inplane_mm=0.72, slice_mm=4.0))
    fraction = partial_volume(ball, FINE, shape, grid)
    assert fraction.sum() * abs(np.linalg.det(grid[:3, :3])) == pytest.approx(ball.sum(), rel=0.01)


@pytest.mark.parametrize("text", ["2d:0.7x0.7x8", "2d:0.3x0.3x3", "2d:0.7x0.8x3", "3d:1x1x1", "2d:0.7x0.7x3,gap=-1",
                                  "2d:0.7x0.7x3,oblique", "2d:0.7x0.7x3,tilt=45"])
def test_bad_acquisitions_are_refused(text):
    with pytest.raises(ValueError):
        parse_acquisition(text)


def test_acquisition_text_round_trips():
    acquisition = parse_acquisition("2d:0.57x0.57x3.3,gap=0.5,coronal,rect,tilt=5")
    assert acquisition == Acquisition(inplane_mm=0.57, slice_mm=3.3, gap_mm=0.5, profile="rect",
                                      orientation="coronal", tilt_deg=5.0)
    assert parse_acquisition(acquisition.text) == acquisition
    assert parse_contrast("lesion=0.8,csf=0.1") == ProtocolContrast(lesion_scale=0.8, csf_level=0.1)
    with pytest.raises(ValueError):
        parse_contrast("lesion=0")


# --------------------------------------------------------------------------- whole cases


def lesion_to_wm(flair, ids, tissues, labels):
    return np.median(flair[np.isin(ids, labels)]) / np.median(flair[tissues == 3])


def test_protocol_contrast_changes_the_followup_contrast():
    kw = {**FAST, "n_new": 0, "n_enlarging": 0, "n_shrinking": 0, **QUIET}
    plain = simulate_case(SimulationConfig(seed=4, **kw))
    changed = simulate_case(SimulationConfig(seed=4, contrast_followup=ProtocolContrast(
        lesion_scale=0.5, gm_scale=2.0, csf_level=0.05), **kw))
    np.testing.assert_array_equal(plain.baseline, changed.baseline)
    labels = [les["label"] for les in plain.truth["lesions"]]
    before = lesion_to_wm(plain.followup, plain.lesions_followup, plain.tissues, labels) - 1
    after = lesion_to_wm(changed.followup, changed.lesions_followup, changed.tissues, labels) - 1
    assert 0.4 < after / before < 0.65
    csf = plain.tissues == 1
    assert np.median(changed.followup[csf]) < 0.92 * np.median(plain.followup[csf])  # 3 mm: mixed voxels
    gm = plain.tissues == 2
    assert np.median(changed.followup[gm]) > np.median(plain.followup[gm]) * 1.05


@pytest.fixture(scope="module")
def clinical_case():
    return simulate_case(SimulationConfig(
        seed=3, **{**FAST, "voxel_mm": 2.0, "new_volume_mm3": (60.0, 300.0)},
        acquisition_baseline=Acquisition(inplane_mm=1.0, slice_mm=3.0),
        acquisition_followup=Acquisition(inplane_mm=0.9, slice_mm=4.0, gap_mm=0.5, orientation="coronal")))


def test_clinical_case_has_raw_scans_on_their_own_grids(clinical_case):
    raw1, raw2 = clinical_case.raw_baseline, clinical_case.raw_followup
    assert np.linalg.norm(raw1.affine[:3, :3], axis=0) == pytest.approx([1.0, 1.0, 3.0])
    assert np.linalg.norm(raw2.affine[:3, :3], axis=0) == pytest.approx([0.9, 4.5, 0.9])
    # The case sits on the follow-up's grid: the follow-up as acquired, the baseline resampled.
    assert clinical_case.baseline.shape == clinical_case.followup.shape == raw2.data.shape
    np.testing.assert_array_equal(clinical_case.followup, raw2.data)
    np.testing.assert_array_equal(clinical_case.affine, raw2.affine)
    for image in (clinical_case.ground_truth, clinical_case.brain_mask, clinical_case.tissues):
        assert image.shape == raw2.data.shape
    brain = clinical_case.brain_mask > 0
    assert np.median(clinical_case.baseline[brain]) == pytest.approx(np.median(clinical_case.followup[brain]), rel=0.25)


def test_common_grid_ground_truth_keeps_the_new_lesion_volume(clinical_case):
    truth = clinical_case.truth
    voxel = truth["voxel_volume_mm3"]
    assert voxel == pytest.approx(0.9 * 0.9 * 4.5)
    assert truth["new_lesion_volume_mm3"] == pytest.approx(clinical_case.ground_truth.sum() * voxel)
    # Stated tolerance: the total within 10 %, each lesion within a voxel and 20 %.
    assert truth["new_lesion_volume_mm3"] == pytest.approx(truth["new_lesion_volume_mm3_fine"], rel=0.10)
    for lesion in truth["lesions"]:
        assert abs(lesion["volume_mm3_time02"] - lesion["volume_mm3_time02_fine"]) <= max(
            voxel, 0.2 * lesion["volume_mm3_time02_fine"])
    new = [les["label"] for les in truth["lesions"] if les["kind"] == "new"]
    np.testing.assert_array_equal(clinical_case.ground_truth, np.isin(clinical_case.lesions_followup, new))
    assert not np.isin(clinical_case.lesions_baseline, new).any()


def test_noise_is_added_per_acquired_voxel():
    config = dict(seed=2, **{**FAST, "n_new": 0, "voxel_mm": 3.0}, **{**QUIET, "snr_followup": 10.0},
                  acquisition_followup=Acquisition(inplane_mm=1.0, slice_mm=5.0))
    noisy = simulate_case(SimulationConfig(**config))
    clean = simulate_case(SimulationConfig(**{**config, "snr_followup": 0.0}))
    residual = (noisy.followup - clean.followup)[clean.brain_mask > 0]
    # Noise is white on the acquired grid: neighbours along i are uncorrelated.
    field = noisy.followup - clean.followup
    both = (clean.brain_mask[:-1] > 0) & (clean.brain_mask[1:] > 0)
    pairs = np.corrcoef(field[:-1][both], field[1:][both])[0, 1]
    assert residual.std() == pytest.approx(400.0 / 10.0, rel=0.15) and abs(pairs) < 0.1


# --------------------------------------------------------------------------- real anatomy

GRID = oblique_affine(spacing=(1.5, 1.5, 1.5))


def synthetic_head(seed: int = 0):
    """A made-up FLAIR: WM 100, GM 115, ventricles 30, two existing lesions 150, noise 3."""
    rng = np.random.default_rng(seed)
    r = np.linalg.norm((np.indices((40, 40, 40)) - 19.5) * 1.5, axis=0)
    brain = r < 27
    flair = np.where(brain, 115.0, 5.0)
    flair[r < 21] = 100.0
    flair[r < 4] = 30.0
    lesions = np.zeros(brain.shape, dtype=np.uint8)
    for centre in ((19, 29, 20), (10, 19, 20)):
        lesions[np.linalg.norm((np.indices(brain.shape) - np.array(centre)[:, None, None, None]) * 1.5, axis=0) < 3] = 1
    flair[lesions > 0] = 150.0
    flair = np.abs(flair + rng.normal(0, 3, flair.shape)).astype(np.float32)  # magnitude images
    return flair, brain.astype(np.uint8), lesions


def library_mask():
    """Three distinct shapes (27, 24 and 40 voxels) on a 1.5 mm grid."""
    mask = np.zeros((24, 24, 24), dtype=np.uint8)
    mask[2:5, 2:5, 2:5] = 1
    mask[10:12, 10:16, 10:12] = 1
    mask[18:20, 2:10, 15:17] = 1
    mask[18:21, 2:3, 14:17] = 1   # the last one an L: 32 + 9 - overlap... count below
    return mask


def test_lesion_library_takes_connected_components_in_a_volume_range():
    mask = library_mask()
    sizes = sorted(int(s) for s in np.bincount(ndimage.label(mask, np.ones((3, 3, 3)))[0].ravel())[1:])
    library = build_lesion_library([(mask, (1.5, 1.5, 1.5))], volume_mm3=(1.0, 1000.0))
    assert sorted(int(shape.mask.sum()) for shape in library.shapes) == sizes
    small = build_lesion_library([(mask, (1.5, 1.5, 1.5))], volume_mm3=(1.0, 25 * 3.375))
    assert len(small) == 1
    with pytest.raises(ValueError):
        build_lesion_library([(np.zeros((5, 5, 5)), (1.0, 1.0, 1.0))], volume_mm3=(1.0, 1000.0))


def test_real_flair_background_gets_new_lesions_only_at_followup():
    flair, brain, lesions = synthetic_head()
    mask = library_mask()
    library = build_lesion_library([(mask, (1.5, 1.5, 1.5))], volume_mm3=(1.0, 1000.0))
    case = simulate_on_real(flair, GRID, brain, library, SimulationConfig(seed=1, n_new=3, **QUIET), lesions=lesions)
    np.testing.assert_array_equal(case.baseline, flair)
    gt = case.ground_truth > 0
    assert case.truth["n_new"] == 3 and gt.any()
    assert (brain[gt] > 0).all()
    assert not (gt & ndimage.binary_dilation(lesions > 0, iterations=1)).any()
    # No nuisance asked for: the follow-up is the scan except where lesions were drawn.
    changed = ~np.isclose(case.followup, flair, rtol=1e-5, atol=1e-4)
    assert changed.any() and not (changed & (brain == 0)).any()
    assert not (changed & ~ndimage.binary_dilation(gt, iterations=2)).any()
    # Shapes come from the library: every new lesion has the voxel count of a library shape.
    sizes = {int(s.mask.sum()) for s in library.shapes}
    labelled, count = ndimage.label(gt, np.ones((3, 3, 3)))
    assert count == 3 and set(np.bincount(labelled.ravel())[1:].tolist()) <= sizes
    # Brighter than white matter, brightest at the core, and the contrast is the measured one.
    measured = case.truth["measured_lesion_contrasts"]
    assert len(measured) == 2 and all(0.3 < c < 0.7 for c in measured)
    assert np.median(case.followup[gt] / flair[gt]) > 1.15
    assert (case.lesions_baseline > 0).sum() == lesions.sum()


def test_real_flair_background_gets_the_usual_nuisances():
    flair, brain, lesions = synthetic_head()
    library = build_lesion_library([(library_mask(), (1.5, 1.5, 1.5))], volume_mm3=(1.0, 1000.0))
    case = simulate_on_real(flair, GRID, brain, library, SimulationConfig(seed=1, n_new=2, misalignment_mm=1.0),
                            lesions=lesions)
    outside = (case.ground_truth == 0) & (brain > 0)
    assert np.abs(case.followup[outside] - flair[outside]).mean() > 3.0
    assert case.truth["mode"] == "real_flair" and "followup_gain" in case.truth


def test_real_pair_background_changes_only_the_followup_lesions():
    flair, brain, lesions = synthetic_head(0)
    second, _, _ = synthetic_head(1)
    library = build_lesion_library([(library_mask(), (1.5, 1.5, 1.5))], volume_mm3=(1.0, 1000.0))
    case = simulate_on_real(flair, GRID, brain, library, SimulationConfig(seed=2, n_new=2), followup=second,
                            lesions=lesions)
    np.testing.assert_array_equal(case.baseline, flair)
    weight_zone = ndimage.binary_dilation(case.ground_truth > 0, iterations=2)
    np.testing.assert_array_equal(case.followup[~weight_zone], second[~weight_zone])
    assert (case.followup[case.ground_truth > 0] > second[case.ground_truth > 0]).all()
    assert case.truth["mode"] == "real_pair"


# --------------------------------------------------------------------------- command


def test_cli_writes_the_raw_pair_and_the_case(tmp_path):
    out = tmp_path / "case"
    result = runner.invoke(app, ["simulate", str(out), "--seed", "2", "--voxel-mm", "3", "--n-stable", "3",
                                 "--baseline-acquisition", "2d:1x1x5,axial",
                                 "--followup-acquisition", "2d:1x1x3,gap=1,axial,rect",
                                 "--followup-protocol-contrast", "lesion=0.8,csf=0.15", "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)["cases"][0]
    assert summary["raw"] == [str(out / RAW_BASELINE), str(out / RAW_FOLLOWUP)]
    import nibabel as nib
    raw1, raw2 = nib.load(out / RAW_BASELINE), nib.load(out / RAW_FOLLOWUP)
    assert raw1.header.get_zooms() == pytest.approx((1.0, 1.0, 5.0))
    assert raw2.header.get_zooms() == pytest.approx((1.0, 1.0, 4.0))   # 3 mm + 1 mm gap
    assert raw1.shape != raw2.shape
    case_flair = nib.load(out / layout.BASELINE)
    np.testing.assert_allclose(case_flair.affine, raw2.affine, atol=1e-4)
    assert nib.load(out / layout.GROUND_TRUTH).shape == raw2.shape
    truth = json.loads((out / layout.TRUTH).read_text())
    assert truth["acquisitions"]["time02"]["profile"] == "rect"
    assert truth["config"]["contrast_followup"]["lesion_scale"] == 0.8


def test_cli_clinical_preset_is_drawn_from_the_seed(tmp_path):
    args = ["--voxel-mm", "3", "--n-stable", "2", "--n-new", "1", "--clinical", "--json"]
    first = runner.invoke(app, ["simulate", str(tmp_path / "a"), "--seed", "5", *args])
    again = runner.invoke(app, ["simulate", str(tmp_path / "b"), "--seed", "5", *args])
    assert first.exit_code == again.exit_code == 0, first.stderr
    truths = [json.loads((tmp_path / n / layout.TRUTH).read_text()) for n in "ab"]
    assert truths[0]["acquisitions"] == truths[1]["acquisitions"]
    acquisition = truths[0]["acquisitions"]["time01"]
    assert 3 <= acquisition["slice_mm"] <= 5 and 0.5 <= acquisition["inplane_mm"] <= 1 and acquisition["gap_mm"] <= 1


@pytest.fixture
def background_files(tmp_path):
    flair, brain, lesions = synthetic_head()
    (tmp_path / "library").mkdir()
    save_nifti(tmp_path / "library" / "masks.nii.gz", library_mask(), GRID)
    return {"flair": save_nifti(tmp_path / "flair.nii.gz", flair, GRID),
            "brain": save_nifti(tmp_path / "brain.nii.gz", brain, GRID),
            "lesions": save_nifti(tmp_path / "lesions.nii.gz", lesions, GRID),
            "library": tmp_path / "library"}


def real_args(files):
    return ["--background-flair", str(files["flair"]), "--background-brain-mask", str(files["brain"]),
            "--background-lesions", str(files["lesions"]), "--lesion-library", str(files["library"]),
            "--new-volume-mm3", "1", "1000", "--n-new", "2"]


def test_cli_real_anatomy_writes_a_case_on_the_background_grid(tmp_path, background_files):
    out = tmp_path / "real"
    result = runner.invoke(app, ["simulate", str(out), *real_args(background_files)])
    assert result.exit_code == 0, result.stderr
    import nibabel as nib
    gt = nib.load(out / layout.GROUND_TRUTH)
    np.testing.assert_allclose(gt.affine, GRID, atol=1e-4)
    assert np.asarray(gt.dataobj).sum() > 0
    record = json.loads((out / layout.GROUND_TRUTH.replace(".nii.gz", ".json")).read_text())
    assert len(record["inputs_sha256"]) == 3   # flair, brain mask, lesions (the library is a folder)


@pytest.mark.parametrize("change,message", [
    ({"flair": "missing.nii.gz"}, "does not exist"),
    ({"library": "empty"}, "no lesion"),
])
def test_cli_real_anatomy_errors_are_one_line(tmp_path, background_files, change, message):
    files = dict(background_files)
    if "flair" in change:
        files["flair"] = tmp_path / change["flair"]
    if "library" in change:
        (tmp_path / "empty").mkdir()
        save_nifti(tmp_path / "empty" / "none.nii.gz", np.zeros((8, 8, 8), dtype=np.uint8), GRID)
        files["library"] = tmp_path / "empty"
    out = tmp_path / "out"
    result = runner.invoke(app, ["simulate", str(out), *real_args(files)])
    assert result.exit_code == 1 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 or result.stderr.strip().splitlines()[-1].startswith(
        "mstools simulate: error:")
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--baseline-acquisition", "2d:0.7x0.7x8"], "slice thickness"),
    (["--followup-acquisition", "2d:0.7x0.7x3,gap=9"], "gap"),
    (["--followup-protocol-contrast", "lesion=x"], "lesion"),
    (["--background-brain-mask", "brain.nii.gz"], "need --background-flair"),
])
def test_cli_bad_options_exit_1_with_one_line(tmp_path, args, message):
    out = tmp_path / "bad"
    result = runner.invoke(app, ["simulate", str(out), *args])
    assert result.exit_code == 1 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_simulate_help_lists_the_new_options():
    result = runner.invoke(app, ["simulate", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for option in ("--baseline-acquisition", "--followup-acquisition", "--followup-protocol-contrast", "--clinical",
                   "--background-flair", "--background-followup", "--background-brain-mask", "--background-lesions",
                   "--lesion-library"):
        assert option in result.stdout
