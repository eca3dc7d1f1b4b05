"""Lesion activity: new, enlarging and shrinking lesions, location classes, the patient
decision and its scoring (mstools.activity, mstools.metrics.activity, `mstools activity`,
the run's activity stage, `evaluate --activity`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from mstools import activity as act
from mstools.jobs import activity as job
from mstools.metrics import activity as metrics
from mstools_cli.main import app
from tests.conftest import oblique_affine, save_nifti

runner = CliRunner()
SHAPE = (40, 36, 16)
SPACING = (0.9, 1.1, 2.5)


def ball(centre, radii_mm, shape=SHAPE, spacing=SPACING):
    grid = np.indices(shape, dtype=np.float64)
    return sum(((grid[d] - centre[d]) * spacing[d] / radii_mm[d]) ** 2 for d in range(3)) <= 1.0


def lesion_pair():
    """Baseline lesions G (grows), S (shrinks), T (stable, touched by a new lesion);
    follow-up: G larger, S smaller, a lone new lesion N and a new lesion B beside T."""
    grows = ball((10, 10, 8), (3.0, 3.0, 5.0))
    grown = ball((10, 10, 8), (4.5, 4.5, 7.5))
    shrinks = ball((28, 10, 8), (4.0, 4.0, 7.0))
    shrunk = ball((28, 10, 8), (2.0, 2.0, 3.0))
    stable = ball((12, 27, 8), (2.5, 2.5, 5.0))
    beside = ball((12, 27 + 6, 8), (2.5, 3.0, 5.0)) & ~stable        # touches the stable lesion on one side
    lone = ball((30, 28, 8), (2.5, 2.5, 5.0))
    baseline = grows | shrinks | stable
    followup = grown | shrunk | stable | beside | lone
    return baseline, followup, grown & ~grows, beside, lone, shrinks & ~shrunk


def test_a_lesion_that_grows_is_enlarging_one_that_appears_is_new_one_that_shrinks_is_neither():
    affine = oblique_affine()
    baseline, followup, growth, beside, lone, lost = lesion_pair()
    increase = followup & ~baseline                                   # what subtract would find
    reported_new = beside | lone | growth                             # a detector that calls the growth new
    result = act.classify_changes(reported_new, increase, baseline, lost, affine=affine)
    kinds = sorted(row["kind"] for row in result.changes)
    assert kinds == ["enlarging", "new", "new", "shrinking"]
    new = result.new_labels > 0
    assert (new & lone).any() and (new & beside).any()               # both new lesions stay new
    assert not (new & growth).any()                                   # the growth is not new
    assert (result.enlarging_labels > 0).sum() == growth.sum()        # the grown part, all of it
    enlarging = next(r for r in result.changes if r["kind"] == "enlarging")
    shrinking = next(r for r in result.changes if r["kind"] == "shrinking")
    voxel = abs(np.linalg.det(affine[:3, :3]))
    assert enlarging["growth_mm3"] == pytest.approx(growth.sum() * voxel, rel=1e-3)
    assert shrinking["growth_mm3"] == pytest.approx(-lost.sum() * voxel, rel=1e-3)
    assert not (new & lost).any() and not ((result.enlarging_labels > 0) & lost).any()
    # the grown part is labelled as its baseline lesion (the table's baseline_label)
    assert set(np.unique(result.enlarging_labels[growth])) == {enlarging["baseline_label"]}
    assert set(np.unique(result.baseline_labels[baseline & ball((10, 10, 8), (3.0, 3.0, 5.0))])) == \
        {enlarging["baseline_label"]}


def test_without_a_baseline_lesion_map_every_change_is_new_and_keeps_the_detectors_lesions():
    affine = oblique_affine()
    _, followup, growth, beside, lone, lost = lesion_pair()
    labels, n = ndimage.label(beside | lone)
    result = act.classify_changes(labels > 0, labels > 0, np.zeros(SHAPE, bool), np.zeros(SHAPE, bool),
                                  affine=affine, lesion_labels=labels)
    assert [r["kind"] for r in result.changes] == ["new"] * n
    assert np.array_equal(result.new_labels, labels)


def test_small_growths_and_losses_are_not_reported():
    affine = oblique_affine()
    baseline = ball((20, 18, 8), (3.0, 3.0, 5.0))
    one_voxel = np.zeros(SHAPE, bool)
    edge = np.argwhere(ndimage.binary_dilation(baseline) & ~baseline)[0]
    one_voxel[tuple(edge)] = True                                     # 2.5 mm3 < 5 mm3
    result = act.classify_changes(np.zeros(SHAPE, bool), one_voxel, baseline, one_voxel & baseline,
                                  affine=affine)
    assert result.changes == [] and not result.enlarging_labels.any()


def test_location_classes_follow_the_distances_in_mm():
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    shape = (80, 90, 80)
    grid = np.indices(shape, dtype=np.float64)
    brain = sum(((grid[d] - c) / r) ** 2 for d, c, r in zip(range(3), (40, 45, 40), (36, 42, 36))) <= 1
    csf = sum(((grid[d] - c) / r) ** 2 for d, c, r in zip(range(3), (40, 48, 48), (6, 10, 5))) <= 1
    locate = act.Locator(brain, affine=affine, csf=csf)

    def region(centre, radius=1.5):
        return sum((grid[d] - centre[d]) ** 2 for d in range(3)) <= radius ** 2

    assert locate(region((40, 48, 55))) == "periventricular"          # 2 mm above the ventricle (z 53)
    assert locate(region((40, 45, 77))) == "juxtacortical"            # under the top surface (z 76)
    assert locate(region((58, 50, 52))) == "deep_white_matter"
    assert locate(region((40, 15, 12))) == "infratentorial"           # low and at the back
    assert locate(np.zeros(shape, bool)) == "unknown"


def test_true_changes_and_their_scores_count_what_was_reported():
    affine = oblique_affine()
    baseline, followup, growth, beside, lone, lost = lesion_pair()
    new_truth = beside | lone
    changes = metrics.true_changes(baseline, followup, new_truth, affine=affine)
    assert sorted(c.kind for c in changes) == ["enlarging", "new", "new", "shrinking"]
    assert metrics.is_active(changes)
    # a report that found the growth as enlarging, one new lesion, and called the shrinking one new
    shrinking_region = next(c.region for c in changes if c.kind == "shrinking")
    counts = metrics.score_changes(changes, lone | shrinking_region, growth)
    rates = metrics.rates(counts)
    assert rates["enlarging_ltpr"] == 1.0 and rates["enlarging_as_new"] == 0.0
    assert rates["shrinking_as_new"] == 1.0 and rates["changed_as_new"] == 0.5
    assert counts["reported_any"] == 2 and rates["kind_accuracy"] == 1.0   # growth + lone, both right
    inactive = metrics.true_changes(baseline, baseline, np.zeros(SHAPE, bool), affine=affine)
    assert inactive == [] and not metrics.is_active(inactive)


def test_patient_auc_agrees_with_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    truth = rng.random(40) < 0.6
    scores = np.round(rng.random(40) + 0.4 * truth, 1)                # with ties
    decision = metrics.patient_decision(scores, scores >= 0.7, truth)
    assert decision["auc"] == pytest.approx(roc_auc_score(truth, scores))
    assert decision["sensitivity"] == pytest.approx(np.mean(scores[truth] >= 0.7))
    assert decision["specificity"] == pytest.approx(np.mean(scores[~truth] < 0.7))
    assert np.isnan(metrics.auc([0.1, 0.2], [True, True]))


def test_activity_probability_rises_with_the_evidence_and_fit_recovers_a_logistic_model():
    assert act.activity_probability(0.0, 0, 50) < 0.5 < act.activity_probability(0.9, 2, 50)
    rng = np.random.default_rng(0)
    x = np.column_stack([np.ones(4000), rng.normal(size=4000), rng.normal(size=4000)])
    w = np.array([-0.5, 2.0, -1.0])
    y = rng.random(4000) < 1 / (1 + np.exp(-(x @ w)))
    assert np.allclose(act.fit_logistic(x, y, ridge=0.0), w, atol=0.2)


def test_the_job_defaults_agree_with_the_library():
    assert job.RIM_COVERAGE_MIN == act.RIM_COVERAGE_MIN
    assert job.SHRINK_FRACTION_MIN == act.SHRINK_FRACTION_MIN
    from mstools.pipeline.stages import RUN_OVERRIDES

    assert job.DECREASE_K_SD == RUN_OVERRIDES["subtract"]["k"]


# ----------------------------------------------------------------------------- files in, files out


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A pair on the oblique grid: FLAIRs with the lesions of lesion_pair, a brain mask,
    the baseline lesion map, and subtract's outputs (run by the command)."""
    root = tmp_path_factory.mktemp("activity")
    folder = root / "case"
    folder.mkdir()
    affine = oblique_affine()
    baseline_lesions, followup_lesions, *_ = lesion_pair()
    rng = np.random.default_rng(1)
    brain = np.zeros(SHAPE, bool)
    brain[2:-2, 2:-2, 1:-1] = True
    base = 100 + 2 * rng.standard_normal(SHAPE) + 60 * baseline_lesions
    fu = 100 + 2 * rng.standard_normal(SHAPE) + 60 * followup_lesions
    save_nifti(folder / "flair_time01_on_middle_space.nii.gz", (base * brain).astype(np.float32), affine)
    save_nifti(folder / "flair_time02_on_middle_space.nii.gz", (fu * brain).astype(np.float32), affine)
    save_nifti(folder / "brain_mask.nii.gz", brain.astype(np.uint8), affine)
    save_nifti(folder / "lesions_time01.nii.gz", baseline_lesions.astype(np.uint8), affine)
    save_nifti(folder / "lesions_time02.nii.gz", followup_lesions.astype(np.uint8), affine)
    save_nifti(folder / "ground_truth.nii.gz", (followup_lesions & ~ndimage.binary_dilation(
        baseline_lesions, iterations=2)).astype(np.uint8), affine)
    result = runner.invoke(app, ["subtract", str(folder), "-o", str(root / "sub" / "subtract"), "--k", "2.5",
                                 "--core-mm", "0", "--bias-sigma-mm", "0"])
    assert result.exit_code == 0, result.output
    return root


def test_activity_command_writes_the_kinds_on_the_case_grid(case):
    import nibabel as nib

    out = case / "out" / "a"
    result = runner.invoke(app, ["activity", str(case / "case"), "--new", str(case / "sub" / "subtract"),
                                 "--candidates", str(case / "sub" / "subtract"), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["active"] is True and payload["enlarging_lesions"] == 1 and payload["new_lesions"] == 2
    assert payload["shrinking_lesions"] == 1
    rows = (case / "out" / "a_lesion_changes.tsv").read_text().splitlines()
    assert rows[0].split("\t") == list(act.CHANGE_COLUMNS) and len(rows) == 5
    reference = nib.load(case / "case" / "flair_time01_on_middle_space.nii.gz")
    for name, dtype in (("a_enlarging_mask.nii.gz", np.uint8), ("a_enlarging_labels.nii.gz", np.int32),
                        ("a_mask.nii.gz", np.uint8)):
        image = nib.load(case / "out" / name)
        assert np.allclose(image.affine, reference.affine) and image.shape == reference.shape
        assert image.get_data_dtype() == dtype
    assert (case / "out" / "a_patient.json").is_file() and (case / "out" / "a_lesion_changes.json").is_file()


def test_activity_without_subtract_outputs_is_one_line_and_writes_nothing(case):
    out = case / "missing" / "a"
    result = runner.invoke(app, ["activity", str(case / "case"), "--new", str(case / "nowhere" / "x"),
                                 "--candidates", str(case / "nowhere" / "x"), "-o", str(out)])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not found" in lines[0] and "subtract" in lines[0]
    assert not (case / "missing").exists()
    result = runner.invoke(app, ["activity", str(case / "case"), "-o", str(out)])
    assert result.exit_code == 1 and "--run" in result.stderr


def test_run_classifies_changes_and_evaluate_scores_them(case, tmp_path):
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["run", str(case / "case"), "-o", str(runs / "case")])
    assert result.exit_code == 0, result.output
    record = json.loads((runs / "case" / "run.json").read_text())
    assert record["final_stage"] == "activity" and record["activity"]["active"] is True
    assert (runs / "case" / "lesion_changes.tsv").is_file()
    assert (runs / "case" / "enlarging_lesions_mask.nii.gz").is_file()
    page = (runs / "case" / "report.html").read_text()
    assert "Lesion activity" in page
    result = runner.invoke(app, ["evaluate", "--activity", "--pred-dir", str(runs), "--gt-dir", str(case),
                                 "--out-dir", str(tmp_path / "scores"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["scored"] == 1 and summary["enlarging"] == 1 and summary["shrinking"] == 1
    assert summary["patient"]["active"] == 1
    assert (tmp_path / "scores" / "activity_cases.tsv").is_file()
    # a run folder holds new_lesions_mask and enlarging_lesions_mask: evaluate reads the final one
    result = runner.invoke(app, ["evaluate", "--pred-dir", str(runs), "--gt-dir", str(case), "--json"])
    assert result.exit_code == 0, result.output
    assert "new_lesions_mask.nii.gz" in result.stdout and "enlarging" not in result.stdout


def test_config_refuses_activity_without_its_inputs(case, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("activity:\n  lesions: register\n")
    result = runner.invoke(app, ["run", str(case / "case"), "-o", str(tmp_path / "r"), "-c", str(config)])
    assert result.exit_code == 1
    assert "activity reads register's outputs" in result.stderr and not (tmp_path / "r").exists()
    config.write_text("activity:\n  lesions: activity\n")
    result = runner.invoke(app, ["run", str(case / "case"), "-o", str(tmp_path / "r"), "-c", str(config)])
    assert result.exit_code == 1 and "activity.lesions must be" in result.stderr


def test_registers_jacobian_is_reported_per_lesion_and_does_not_change_the_kinds():
    affine = oblique_affine()
    baseline, followup, growth, beside, lone, lost = lesion_pair()
    increase = followup & ~baseline
    jacobian = np.ones(SHAPE, np.float32)
    jacobian[ndimage.binary_dilation(growth | ball((10, 10, 8), (3.0, 3.0, 5.0)))] = 1.5
    plain = act.classify_changes(beside | lone, increase, baseline, lost, affine=affine)
    with_j = act.classify_changes(beside | lone, increase, baseline, lost, affine=affine, jacobian=jacobian)
    assert [r["kind"] for r in plain.changes] == [r["kind"] for r in with_j.changes]
    values = {r["kind"]: r["jacobian_mean"] for r in with_j.changes}
    assert values["enlarging"] == pytest.approx(1.5) and values["new"] == pytest.approx(1.0)
    assert all(r["jacobian_mean"] == "" for r in plain.changes)
