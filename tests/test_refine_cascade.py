"""The all-lesion -> new-lesion cascade of `refine` (paper 001: Basaran; McKinley): its features,
its inputs' grid, the train/apply round trip and its wiring in `mstools run`."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from mstools import case_layout as layout
from mstools import pipeline
from mstools import run_layout as rl
from mstools.candidates.refine import features as ft
from mstools.errors import InputError
from mstools_cli.main import app
from tests.conftest import oblique_affine, save_nifti
from tests.test_refine_cli import _train, _write_case

runner = CliRunner()
SHAPE = (16, 16, 10)


def test_cascade_features_are_the_maps_their_difference_and_box_means():
    baseline, followup = np.zeros((12, 12, 12), np.uint8), np.zeros((12, 12, 12), np.uint8)
    followup[4:7, 4:7, 4:7] = 1                  # a 3-voxel cube: new at follow-up
    baseline[9, 9, 9] = followup[9, 9, 9] = 1     # one old voxel at both visits
    voxels = (np.array([5, 9, 0]), np.array([5, 9, 0]), np.array([5, 9, 0]))
    # at 1 mm the 3 mm box is 5 voxels wide (features._box_width): the cube fills 27 of its 125
    got = ft.cascade_features((baseline, followup), voxels, spacing_mm=(1, 1, 1))
    assert list(ft.CASCADE) == ["lesions_baseline_c", "lesions_followup_c", "lesions_difference_c",
                                "lesions_baseline_mean_3mm", "lesions_followup_mean_3mm",
                                "lesions_difference_mean_3mm"]
    np.testing.assert_allclose(got[0], [0, 1, 1, 0, 27 / 125, 27 / 125], atol=1e-6)
    # the old voxel: 1 at both visits, no difference; its box is cut by the grid's edge (replicated)
    assert got[1][:3].tolist() == [1, 1, 0] and got[1][5] == 0 and got[1][3] == got[1][4] > 0
    np.testing.assert_array_equal(got[2], 0)
    assert baseline.sum() == 1 and followup.sum() == 28      # inputs untouched


def test_the_features_change_with_the_maps_and_only_the_cascade_columns():
    rng = np.random.default_rng(0)
    b, f = rng.normal(0, 1, (2, *SHAPE)).astype(np.float32)
    candidates = np.zeros(SHAPE, np.uint8)
    candidates[5:8, 5:8, 4:6] = 1
    voxels = np.nonzero(candidates)
    old, new = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    old[2:4, 2:4, 2:4] = True
    new[5:8, 5:8, 4:6] = True
    without = ft.voxel_features(b, f, candidates, voxels=voxels)
    stable = ft.voxel_features(b, f, candidates, voxels=voxels, all_lesions=(old, old))
    grown = ft.voxel_features(b, f, candidates, voxels=voxels, all_lesions=(old, old | new))
    assert stable.shape == grown.shape == (len(voxels[0]), len(ft.PUBLISHED) + len(ft.CASCADE))
    assert ft.model_feature_names("published", cascade=True) == ft.PUBLISHED + ft.CASCADE
    np.testing.assert_array_equal(stable[:, :len(ft.PUBLISHED)], without)
    np.testing.assert_array_equal(grown[:, :len(ft.PUBLISHED)], without)
    difference = list(ft.CASCADE).index("lesions_difference_c") + len(ft.PUBLISHED)
    assert np.all(stable[:, difference] == 0) and np.all(grown[:, difference] == 1)


def _write_maps(folder, name="coactseg"):
    """All-lesion masks as CoactSeg writes them: an old lesion at both visits, the new ones at follow-up."""
    truth = np.asarray(nib.load(folder / layout.GROUND_TRUTH).dataobj) > 0
    old = np.zeros(SHAPE, bool)
    old[7:9, 7:9, 2:4] = True
    paths = (folder / f"{name}_all_time01_mask.nii.gz", folder / f"{name}_all_time02_mask.nii.gz")
    save_nifti(paths[0], old.astype(np.uint8), oblique_affine())
    save_nifti(paths[1], (old | truth).astype(np.uint8), oblique_affine())
    return paths


@pytest.fixture(scope="module")
def cascade_model(tmp_path_factory):
    """Two toy cases with CoactSeg-style maps, and a cascade model trained on them."""
    root = tmp_path_factory.mktemp("cascade")
    cases = [_write_case(root / f"case{n}", n) for n in range(2)]
    for case in cases:
        _write_maps(case)
    model = root / "cascade.txt"
    result = _train(cases, model, "--cv-folds", "0", "--cascade", "coactseg", "--json")
    assert result.exit_code == 0, result.stderr
    return cases, model, json.loads(result.stdout)


def _apply(case, out, model, *extra):
    return runner.invoke(app, ["refine", str(case), "-c", str(case / "subtract"), "-o", str(out),
                               "--model", str(model), "--min-voxels", "1", *map(str, extra)])


def test_train_with_the_cascade_and_apply_it(cascade_model, tmp_path):
    cases, model, card = cascade_model
    assert card["cascade"] is True and card["features"] == list(ft.PUBLISHED + ft.CASCADE)
    assert card["training_cases"][0]["all_lesions"][1].endswith("coactseg_all_time02_mask.nii.gz")
    maps = (cases[0] / "coactseg_all_time01_mask.nii.gz", cases[0] / "coactseg_all_time02_mask.nii.gz")
    result = _apply(cases[0], tmp_path / "r", model, "--baseline-lesions", maps[0], "--followup-lesions", maps[1])
    assert result.exit_code == 0, result.stderr
    sidecar = json.loads((tmp_path / "r_mask.json").read_text())
    assert sidecar["parameters"]["cascade"] is True and sidecar["parameters"]["all_lesions"] == list(map(str, maps))
    # the refined probabilities follow the maps: an empty follow-up map gives another score
    empty = tmp_path / "empty.nii.gz"
    save_nifti(empty, np.zeros(SHAPE, np.uint8), oblique_affine())
    result = _apply(cases[0], tmp_path / "e", model, "--baseline-lesions", maps[0], "--followup-lesions", empty)
    assert result.exit_code == 0, result.stderr
    with_maps = np.asarray(nib.load(tmp_path / "r_score.nii.gz").dataobj)
    assert not np.array_equal(with_maps, np.asarray(nib.load(tmp_path / "e_score.nii.gz").dataobj))
    # without options, the case folder's lesions_time01/02 are the maps
    case = tmp_path / "case"
    case.mkdir()
    for name in (layout.BASELINE, layout.FOLLOWUP, layout.BRAIN_MASK, "subtract_labels.nii.gz",
                 "subtract_score.nii.gz"):
        (case / name).write_bytes((cases[0] / name).read_bytes())
    result = _apply(case, tmp_path / "n", model)
    assert result.exit_code == 1 and "needs the all-lesion masks of both visits" in result.stderr
    (case / layout.LESIONS_BASELINE).write_bytes(maps[0].read_bytes())
    (case / layout.LESIONS_FOLLOWUP).write_bytes(maps[1].read_bytes())
    result = _apply(case, tmp_path / "c", model)
    assert result.exit_code == 0, result.stderr
    assert np.array_equal(with_maps, np.asarray(nib.load(tmp_path / "c_score.nii.gz").dataobj))


def test_the_cascades_inputs_have_the_case_grid(cascade_model, tmp_path):
    cases, model, _ = cascade_model
    other = tmp_path / "other_grid.nii.gz"
    save_nifti(other, np.zeros((16, 16, 9), np.uint8), oblique_affine())
    maps = cases[0] / "coactseg_all_time01_mask.nii.gz"
    result = _apply(cases[0], tmp_path / "x", model, "--baseline-lesions", maps, "--followup-lesions", other)
    assert result.exit_code == 1 and "not on the same grid" in result.stderr and str(other) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("x_*"))
    shifted = tmp_path / "shifted.nii.gz"
    affine = oblique_affine()
    affine[:3, 3] += 5.0
    save_nifti(shifted, np.zeros(SHAPE, np.uint8), affine)
    result = _apply(cases[0], tmp_path / "x", model, "--baseline-lesions", shifted, "--followup-lesions", maps)
    assert result.exit_code == 1 and "not on the same grid" in result.stderr
    # training refuses them too, before writing a model
    bad = tmp_path / "bad"
    bad.mkdir()
    (tmp_path / "m.tsv").write_text("case\tcandidates\tbaseline_lesions\tfollowup_lesions\n" + "".join(
        f"{c}\t{c / 'subtract'}\t{maps}\t{other}\n" for c in cases))
    result = runner.invoke(app, ["refine", "train", "--manifest", str(tmp_path / "m.tsv"), "-o", str(bad / "m.txt"),
                                 "--cv-folds", "0", "--cascade", "coactseg"])
    assert result.exit_code == 1 and "not on the same grid" in result.stderr and not list(bad.iterdir())


def test_cascade_errors(cascade_model, tmp_path):
    cases, cascade, _ = cascade_model
    plain = tmp_path / "plain.txt"
    assert _train(cases, plain, "--cv-folds", "0").exit_code == 0
    maps = cases[0] / "coactseg_all_time01_mask.nii.gz"
    result = _apply(cases[0], tmp_path / "x", plain, "--baseline-lesions", maps, "--followup-lesions", maps)
    assert result.exit_code == 1 and "trained without the cascade" in result.stderr
    result = _train(cases, tmp_path / "m.txt", "--cv-folds", "0", "--cascade", "nothing")
    assert result.exit_code == 1 and "nothing_all_time01_mask.nii.gz: all-lesion mask not found" in result.stderr
    assert not (tmp_path / "m.txt").exists()
    (tmp_path / "m.tsv").write_text(f"case\tcandidates\tbaseline_lesions\n{cases[0]}\t{cases[0]}/subtract\t{maps}\n")
    result = runner.invoke(app, ["refine", "train", "--manifest", str(tmp_path / "m.tsv"), "-o",
                                 str(tmp_path / "m.txt"), "--cascade", "coactseg"])
    assert result.exit_code == 1 and "gives one all-lesion mask" in result.stderr


def test_run_wires_the_segment_stages_coactseg_maps_into_a_cascade_refine(cascade_model, tmp_path):
    cases, model, _ = cascade_model
    config, base = pipeline.load_config(None)
    config["refine"]["model"] = str(model)
    run_dir = tmp_path / "run"
    segment_prefix = rl.stage_prefix(run_dir, "segment")
    segment_prefix.parent.mkdir(parents=True)
    maps = [segment_prefix.parent / f"{segment_prefix.name}_all_time0{n}_mask.nii.gz" for n in (1, 2)]
    for n, target in enumerate(maps, start=1):
        target.write_bytes((cases[0] / f"coactseg_all_time0{n}_mask.nii.gz").read_bytes())
    subtract = rl.stage_prefix(run_dir, "subtract")
    subtract.parent.mkdir(parents=True)
    for suffix in ("_labels.nii.gz", "_score.nii.gz"):
        (subtract.parent / (subtract.name + suffix)).write_bytes((cases[0] / ("subtract" + suffix)).read_bytes())

    def context(segment_enabled):
        config["segment"]["enabled"] = segment_enabled
        options = pipeline.stage_options(pipeline.STAGES["refine"], config["refine"], base)
        return pipeline.stages.StageContext(pipeline.CaseInput("c", folder=cases[0]), cases[0], run_dir, config,
                                            options)

    with pytest.raises(InputError, match="enable segment with model coactseg"):
        pipeline.STAGES["refine"].run(context(False))
    assert "segment" in pipeline.STAGES["refine"].reads(config)
    pipeline.STAGES["refine"].run(context(True))
    refined = rl.stage_prefix(run_dir, "refine")
    sidecar = json.loads((refined.parent / (refined.name + "_mask.json")).read_text())
    assert sidecar["parameters"]["all_lesions"] == list(map(str, maps))
