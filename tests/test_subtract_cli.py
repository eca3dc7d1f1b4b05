"""`mstools subtract` on a case folder with an oblique, anisotropic grid."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from mstools_cli.main import app
from mstools import case_layout as layout
from tests.conftest import oblique_affine, save_nifti
from tests.test_subtraction import BLOB, blob, noisy, phantom

runner = CliRunner()


@pytest.fixture
def case(tmp_path):
    rng = np.random.default_rng(11)
    anatomy, brain = phantom()
    folder = tmp_path / "case"
    folder.mkdir()
    save_nifti(folder / layout.BASELINE, noisy(anatomy, rng), oblique_affine())
    save_nifti(folder / layout.FOLLOWUP, noisy(anatomy, rng) + np.where(brain, blob(), 0), oblique_affine())
    save_nifti(folder / layout.BRAIN_MASK, brain.astype(np.uint8), oblique_affine())
    return folder


def test_writes_every_output_on_the_reference_grid(case, tmp_path):
    prefix = str(tmp_path / "out" / "s")
    (tmp_path / "out").mkdir()
    result = runner.invoke(app, ["subtract", str(case), "-o", prefix, "--json"])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["candidates"] == 1
    expected = {"_subtraction.nii.gz": np.float32, "_ratio.nii.gz": np.float32, "_score.nii.gz": np.float32,
                "_mask.nii.gz": np.uint8, "_labels.nii.gz": np.int32}
    for suffix, dtype in expected.items():
        img = nib.load(prefix + suffix)
        assert img.get_data_dtype() == dtype
        np.testing.assert_allclose(img.affine, oblique_affine(), atol=1e-5)
        assert json.loads(open(prefix + suffix.replace(".nii.gz", ".json")).read())["command"] == "subtract"
    mask = np.asanyarray(nib.load(prefix + "_mask.nii.gz").dataobj)
    assert mask[BLOB] == 1
    table = open(prefix + "_lesions.tsv").read().splitlines()
    assert table[0].startswith("label\tvoxels\tvolume_mm3") and len(table) == 2


@pytest.mark.parametrize("rule", ["larosa", "hamzaoui"])
def test_other_rules_run(case, tmp_path, rule):
    result = runner.invoke(app, ["subtract", str(case), "-o", str(tmp_path / rule), "--rule", rule])
    assert result.exit_code == 0, result.stderr


def test_default_prefix_is_inside_the_case(case):
    assert runner.invoke(app, ["subtract", str(case)]).exit_code == 0
    assert (case / "subtract_mask.nii.gz").is_file()
    again = runner.invoke(app, ["subtract", str(case)])
    assert again.exit_code == 1 and "--force" in again.stderr


def test_grid_mismatch_is_refused_and_nothing_written(case, tmp_path):
    shifted = oblique_affine()
    shifted[:3, 3] += 2.0
    data = np.asanyarray(nib.load(case / layout.FOLLOWUP).dataobj)
    save_nifti(case / layout.FOLLOWUP, data, shifted)
    result = runner.invoke(app, ["subtract", str(case), "-o", str(tmp_path / "s")])
    assert result.exit_code == 1
    assert "not on the same grid" in result.stderr and "mstools preprocess" in result.stderr
    assert not list(tmp_path.glob("s_*"))


@pytest.mark.parametrize("problem, message", [
    ("missing_mask", "file not found"),
    ("empty_mask", "mask is empty"),
    ("nonbinary_mask", "not a binary mask"),
    ("four_d", "3D image was expected"),
    ("nan", "NaN/Inf"),
])
def test_bad_inputs_give_one_line(case, tmp_path, problem, message):
    if problem == "missing_mask":
        (case / layout.BRAIN_MASK).unlink()
    elif problem == "empty_mask":
        save_nifti(case / layout.BRAIN_MASK, np.zeros((32, 32, 24), np.uint8), oblique_affine())
    elif problem == "nonbinary_mask":
        save_nifti(case / layout.BRAIN_MASK, np.full((32, 32, 24), 2, np.uint8), oblique_affine())
    elif problem == "four_d":
        save_nifti(case / layout.BASELINE, np.ones((32, 32, 24, 2), np.float32), oblique_affine())
    else:
        data = np.asanyarray(nib.load(case / layout.BASELINE).dataobj).copy()
        data[0, 0, 0] = np.nan
        save_nifti(case / layout.BASELINE, data, oblique_affine())
    result = runner.invoke(app, ["subtract", str(case), "-o", str(tmp_path / "s")])
    assert result.exit_code == 1
    assert message in result.stderr and result.stderr.strip().count("\n") == 0
    assert not list(tmp_path.glob("s_*"))


@pytest.mark.parametrize("rule", ["prados", "larosa", "hamzaoui"])
def test_brain_a_scan_did_not_image_is_left_out(case, tmp_path, rule):
    """A baseline slab shorter than the follow-up's (0 beyond it after resampling, inside the brain
    mask): the slices only one scan imaged give no candidate, and the new blob is still found."""
    baseline = np.asanyarray(nib.load(case / layout.BASELINE).dataobj).copy()
    baseline[:, :, 17:] = 0
    save_nifti(case / layout.BASELINE, baseline, oblique_affine())
    prefix = str(tmp_path / "s")
    result = runner.invoke(app, ["subtract", str(case), "-o", prefix, "--json", "--rule", rule])
    assert result.exit_code == 0, result.stderr
    mask = np.asanyarray(nib.load(prefix + "_mask.nii.gz").dataobj)
    assert mask[BLOB] == 1 and not mask[:, :, 17:].any()
    assert json.loads(result.stdout)["candidates"] == 1

    baseline[:, :, 12:] = 0      # the baseline's slab and the follow-up's do not overlap
    followup = np.asanyarray(nib.load(case / layout.FOLLOWUP).dataobj).copy()
    followup[:, :, :12] = 0
    save_nifti(case / layout.BASELINE, baseline, oblique_affine())
    save_nifti(case / layout.FOLLOWUP, followup, oblique_affine())
    result = runner.invoke(app, ["subtract", str(case), "-o", str(tmp_path / "none")])
    assert result.exit_code == 1 and "holds data in both scans" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and not list(tmp_path.glob("none*"))


def test_no_case_and_no_files_is_an_input_error(tmp_path):
    result = runner.invoke(app, ["subtract", "-o", str(tmp_path / "s")])
    assert result.exit_code == 1 and "--baseline" in result.stderr


def test_explicit_files_override_the_case(case, tmp_path):
    result = runner.invoke(app, ["subtract", "--baseline", str(case / layout.BASELINE),
                                 "--followup", str(case / layout.FOLLOWUP),
                                 "--brain-mask", str(case / layout.BRAIN_MASK), "-o", str(tmp_path / "x")])
    assert result.exit_code == 0, result.stderr


def test_missing_output_folders_are_created_for_subtract_filter_and_refine(case, tmp_path):
    """The README's examples write into folders that do not exist yet (as run and batch do)."""
    prefix = tmp_path / "out" / "case01" / "subtract"
    result = runner.invoke(app, ["subtract", str(case), "-o", str(prefix)])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out" / "case01" / "subtract_mask.nii.gz").is_file()
    for command, folder in (("filter", "filtered"), ("refine", "refined")):
        target = tmp_path / folder / "deep" / command
        result = runner.invoke(app, [command, str(case), "-c", str(prefix), "-o", str(target)])
        assert result.exit_code == 0, result.stderr
        assert (target.parent / f"{command}_mask.nii.gz").is_file()


def test_simulate_creates_the_parent_folders_of_its_case(tmp_path):
    result = runner.invoke(app, ["simulate", str(tmp_path / "sim" / "case01"), "--seed", "1", "--voxel-mm", "4",
                                 "--n-stable", "2", "--n-new", "1", "--n-enlarging", "0", "--n-shrinking", "0"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "sim" / "case01" / layout.GROUND_TRUTH).is_file()
