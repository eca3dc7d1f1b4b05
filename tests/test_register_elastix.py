"""`mstools register` with elastix: one registration of a tiny 4 mm simulated pair,
shared by the tests of this module (itk is imported only here, and costs ~15 s).

The pair lives on an oblique grid, and the follow-up's header is shifted by a known
world vector, so that the RAS/LPS conversions and the sign of the displacement are
checked against a known answer.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from mstools_cli.main import app
from tests.conftest import oblique_affine, save_nifti

pytestmark = pytest.mark.slow
runner = CliRunner()

#: The follow-up header is the baseline's moved by this (RAS mm): the same anatomy is
#: at x + SHIFT in the follow-up, so the follow-up point x maps to the baseline point
#: x - SHIFT, i.e. u = -SHIFT.
SHIFT = np.array([3.0, -2.0, 1.5])


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    from mstools.simulate import SimulationConfig, simulate_case

    case = simulate_case(SimulationConfig(seed=5, voxel_mm=4.0, misalignment_mm=0.0, misalignment_deg=0.0,
                                          n_enlarging=3, n_new=3, atrophy_mm=0.0))
    folder = tmp_path_factory.mktemp("register")
    base_affine = oblique_affine(spacing=(4.0, 4.0, 4.0), angles_deg=(10.0, -6.0, 4.0), origin=(-80.0, -110.0, -60.0))
    follow_affine = base_affine.copy()
    follow_affine[:3, 3] += SHIFT
    paths = {
        "baseline": save_nifti(folder / "t1.nii.gz", case.baseline, base_affine),
        "followup": save_nifti(folder / "t2.nii.gz", case.followup, follow_affine),
        "mask": save_nifti(folder / "brain.nii.gz", case.brain_mask.astype(np.uint8), follow_affine),
    }
    work = folder / "cwd"
    work.mkdir()                     # out/ is not made: register makes its output folder
    here = os.getcwd()
    os.chdir(work)  # elastix must leave nothing in the working directory
    try:
        result = runner.invoke(app, ["register", str(paths["followup"]), str(paths["baseline"]),
                                     str(folder / "out" / "case"), "--followup-mask", str(paths["mask"]),
                                     "--json"], catch_exceptions=False)
    finally:
        os.chdir(here)
    return {"case": case, "paths": paths, "folder": folder, "work": work, "result": result,
            "prefix": str(folder / "out" / "case"), "affine": follow_affine, "base_affine": base_affine}


def _load(path):
    img = nib.load(path)
    return img, np.asarray(img.dataobj)


def test_outputs_are_on_the_followup_grid_and_nothing_is_left_behind(registered):
    result = registered["result"]
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["correlation"] > 0.9 and summary["folding"] < 0.01
    assert list(registered["work"].iterdir()) == []
    prefix = registered["prefix"]
    shape = registered["case"].followup.shape
    for suffix, dtype in [("_warped.nii.gz", np.float32), ("_jacobian.nii.gz", np.float32),
                          ("_subtraction.nii.gz", np.float32), ("_score.nii.gz", np.float32),
                          ("_mask.nii.gz", np.uint8), ("_labels.nii.gz", np.int32)]:
        img, data = _load(prefix + suffix)
        assert data.shape == shape and img.get_data_dtype() == dtype, suffix
        np.testing.assert_allclose(img.affine, registered["affine"], atol=1e-4)
    img, field = _load(prefix + "_displacement.nii.gz")
    assert field.shape == shape + (1, 3) and img.get_data_dtype() == np.float32
    assert int(img.header["intent_code"]) == 1007
    np.testing.assert_allclose(img.affine, registered["affine"], atol=1e-4)
    header = open(prefix + "_lesions.tsv").readline().rstrip("\n").split("\t")
    assert header[0] == "label" and "volume_change_mean" in header and "displacement_max_mm" in header
    assert json.load(open(prefix + "_displacement.json"))["command"] == "register"
    assert "BSplineTransform" in open(prefix + "_elastix.txt").read()


def test_displacement_recovers_the_known_header_shift(registered):
    _, field = _load(registered["prefix"] + "_displacement.nii.gz")
    brain = registered["case"].brain_mask > 0
    median = np.median(field[:, :, :, 0, :][brain], axis=0)
    np.testing.assert_allclose(median, -SHIFT, atol=0.5)


def test_jacobian_is_above_one_in_enlarging_lesions_and_near_one_elsewhere(registered):
    case = registered["case"]
    _, volume = _load(registered["prefix"] + "_jacobian.nii.gz")
    enlarging = [les["label"] for les in case.truth["lesions"] if les["kind"] == "enlarging"]
    grown = np.isin(case.lesions_followup, enlarging) & (case.lesions_baseline == 0)   # the new part
    assert grown.sum() > 10
    lesions = ndimage.binary_dilation((case.lesions_followup > 0) | (case.lesions_baseline > 0), iterations=2)
    rest = volume[(case.brain_mask > 0) & ~lesions]
    inside = volume[grown].mean()
    assert inside > 1.03 and inside > np.percentile(rest, 75), (inside, np.percentile(rest, [25, 50, 75]))
    assert 0.98 < np.median(rest) < 1.02


def test_warp_applies_the_saved_field_as_register_did(registered):
    out = registered["folder"] / "warp" / "new" / "warped_again.nii.gz"     # folders made by warp
    result = runner.invoke(app, ["warp", str(registered["paths"]["baseline"]),
                                 registered["prefix"] + "_displacement.nii.gz", str(out)])
    assert result.exit_code == 0, result.stderr
    again = runner.invoke(app, ["warp", str(registered["paths"]["baseline"]),
                                registered["prefix"] + "_displacement.nii.gz", str(out)])
    assert again.exit_code == 1 and "already exists; pass --force" in again.stderr
    img, again = _load(out)
    _, warped = _load(registered["prefix"] + "_warped.nii.gz")
    np.testing.assert_allclose(again, warped, atol=1e-3)
    np.testing.assert_allclose(img.affine, registered["affine"], atol=1e-4)


def test_unrelated_images_are_reported_as_a_failed_registration(registered, tmp_path):
    rng = np.random.default_rng(0)
    followup = registered["paths"]["followup"]
    shape = registered["case"].followup.shape
    noise = ndimage.gaussian_filter(rng.normal(0, 1, shape), 2).astype(np.float32)
    other = save_nifti(tmp_path / "noise.nii.gz", noise, registered["base_affine"])
    result = runner.invoke(app, ["register", str(followup), str(other), str(tmp_path / "bad"),
                                 "--followup-mask", str(registered["paths"]["mask"]), "--register-in-mask"])
    assert result.exit_code == 1
    assert "registration failed" in result.stderr
    assert list(tmp_path.glob("bad*")) == []
    # a file on the way: one line before ITK is loaded or elastix runs
    (tmp_path / "afile").write_text("not a folder")
    result = runner.invoke(app, ["register", str(followup), str(other), str(tmp_path / "afile" / "x" / "bad")])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "is a file, not a folder" in result.stderr


def test_itk_image_round_trip_on_an_oblique_grid(rng):
    from mstools.detect.registration.elastix import from_itk, itk_mask, to_itk

    affine = oblique_affine()
    data = rng.normal(0, 1, (7, 6, 5)).astype(np.float32)
    image = to_itk(data, affine)
    index = (2, 3, 4)
    point = np.array(image.TransformIndexToPhysicalPoint(index))
    ras = affine[:3, :3] @ np.array(index, dtype=float) + affine[:3, 3]
    np.testing.assert_allclose(point, ras * [-1, -1, 1], atol=1e-6)     # ITK is LPS
    assert float(image.GetPixel(index)) == data[index]
    back, back_affine = from_itk(image)
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(back_affine, affine, atol=1e-9)
    mask, _ = from_itk(itk_mask(data > 0, affine))
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, data > 0)
