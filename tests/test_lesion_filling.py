"""Lesion filling: real lesions declared new are removed from the baseline, and only they.

A made-up FLAIR-like head (WM 100, GM 115, ventricles 30, noise 3) with two bright
lesions (150) and one faint one (104, below the visibility threshold).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from mstools_cli.main import app
from mstools import case_layout as layout
from mstools.simulate import SimulationConfig
from mstools.simulate.lesion_filling import fill_lesions
from mstools.simulate.real_anatomy import build_lesion_library, simulate_on_real
from tests.conftest import oblique_affine, save_nifti

runner = CliRunner()
GRID = oblique_affine(spacing=(1.0, 1.0, 2.0))
SPACING = (1.0, 1.0, 2.0)
QUIET = dict(snr_baseline=0.0, snr_followup=0.0, bias_strength=0.0, gain_change=0.0,
             contrast_change=0.0, misalignment_mm=0.0, misalignment_deg=0.0, blur_mm=0.0, atrophy_mm=0.0)


def ball(shape, centre, radius_mm):
    offsets = (np.indices(shape) - np.array(centre)[:, None, None, None]) * np.array(SPACING)[:, None, None, None]
    return np.linalg.norm(offsets, axis=0) < radius_mm


def head(seed=0):
    rng = np.random.default_rng(seed)
    shape = (60, 60, 30)
    brain = ball(shape, (29.5, 29.5, 14.5), 27)
    flair = np.where(brain, 115.0, 5.0)
    flair[ball(shape, (29.5, 29.5, 14.5), 21)] = 100.0
    flair[ball(shape, (29.5, 29.5, 14.5), 5)] = 30.0
    bright = ball(shape, (20, 30, 15), 4) | ball(shape, (38, 30, 15), 3)
    faint = ball(shape, (30, 40, 15), 3)
    flair[bright] = 150.0
    flair[faint] = 104.0
    flair = np.abs(flair + rng.normal(0, 3, shape)).astype(np.float32)
    return flair, brain, bright, faint


def test_visible_lesions_are_filled_with_the_surrounding_tissue_and_its_noise():
    flair, brain, bright, faint = head()
    before = flair.copy()
    filled, visible, contrasts = fill_lesions(flair, bright | faint, brain, SPACING, np.random.default_rng(0))
    np.testing.assert_array_equal(flair, before)                      # input untouched
    np.testing.assert_array_equal(visible, bright)                    # the faint one is left alone
    assert len(contrasts) == 2 and all(0.3 < c < 0.6 for c in contrasts)
    assert abs(float(filled[bright].mean()) - 100.0) < 3.0            # white matter again
    assert 2.0 < float(filled[bright].std()) < 4.5                    # with the scan's noise
    np.testing.assert_array_equal(filled[faint], flair[faint])
    far = ~ndimage.binary_dilation(bright, iterations=2)
    np.testing.assert_array_equal(filled[far], flair[far])


def test_nothing_to_fill_returns_the_scan():
    flair, brain, _, _ = head()
    filled, visible, contrasts = fill_lesions(flair, np.zeros(flair.shape, bool), brain, SPACING,
                                              np.random.default_rng(0))
    np.testing.assert_array_equal(filled, flair)
    assert not visible.any() and contrasts == []


def test_simulated_pair_makes_the_real_lesions_new():
    flair, brain, bright, faint = head()
    library = build_lesion_library([(bright, SPACING)], volume_mm3=(1.0, 1000.0))
    case = simulate_on_real(flair, GRID, brain, library, SimulationConfig(seed=3, n_new=0, **QUIET),
                            new_lesions=bright | faint)
    gt = case.ground_truth > 0
    np.testing.assert_array_equal(gt, bright)
    np.testing.assert_allclose(case.followup, flair, atol=1e-4)       # the follow-up is the scan
    assert case.baseline[bright].mean() < 105 < case.followup[bright].mean()
    assert case.truth["mode"] == "real_flair_filled" and case.truth["background_new_lesions"] == 2
    # Drawn lesions are added on top, away from the real new ones.
    centre = (29.5, 29.5, 14.5)
    wm = ball(flair.shape, centre, 21) & ~ball(flair.shape, centre, 5)
    more = simulate_on_real(flair, GRID, brain, library, SimulationConfig(seed=3, n_new=2, **QUIET),
                            new_lesions=bright, wm=wm)
    labelled, count = ndimage.label(more.ground_truth > 0, np.ones((3, 3, 3)))
    assert count == 4 and more.truth["n_new"] == 4


def test_cli_fills_the_declared_lesions_and_refuses_them_with_a_pair(tmp_path):
    flair, brain, bright, _ = head()
    files = {"flair": save_nifti(tmp_path / "flair.nii.gz", flair, GRID),
             "brain": save_nifti(tmp_path / "brain.nii.gz", brain.astype(np.uint8), GRID),
             "new": save_nifti(tmp_path / "new.nii.gz", bright.astype(np.uint8), GRID)}
    args = ["--background-flair", str(files["flair"]), "--background-brain-mask", str(files["brain"]),
            "--background-new-lesions", str(files["new"]), "--n-new", "0", "--new-volume-mm3", "1", "1000"]
    out = tmp_path / "case"
    result = runner.invoke(app, ["simulate", str(out), *args])
    assert result.exit_code == 0, result.stderr
    import nibabel as nib
    assert np.asarray(nib.load(out / layout.GROUND_TRUTH).dataobj).sum() == bright.sum()
    bad = runner.invoke(app, ["simulate", str(tmp_path / "bad"), *args, "--background-followup", str(files["flair"])])
    assert bad.exit_code == 1 and "--background-new-lesions is for a single background FLAIR" in bad.stderr
    assert not (tmp_path / "bad").exists()
