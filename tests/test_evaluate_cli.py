"""``mstools evaluate`` on the command line: outputs, JSON, cohorts and every error path."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mstools_cli.main import app
from mstools.io import read_image, read_tsv
from mstools.metrics import EvaluationOptions, LesionRule, evaluate_case
from tests.conftest import oblique_affine, save_nifti

runner = CliRunner()
SHAPE = (24, 24, 12)


def _strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def _truth():
    truth = np.zeros(SHAPE, np.uint8)
    truth[3:9, 3:9, 2:6] = 1
    truth[14:18, 14:19, 5:8] = 1
    return truth


def _prediction():
    pred = np.zeros(SHAPE, np.uint8)
    pred[4:9, 3:10, 2:6] = 1
    pred[19:22, 2:5, 8:10] = 1
    pred[1, 20, 1] = 1
    return pred


def _invoke(*args):
    return runner.invoke(app, ["evaluate", *map(str, args)])


@pytest.fixture
def case(tmp_path, affine):
    truth = save_nifti(tmp_path / "truth.nii.gz", _truth(), affine)
    pred = save_nifti(tmp_path / "case01_mask.nii.gz", _prediction(), affine)
    return pred, truth


# --------------------------------------------------------------------------- help, registration


def test_help_has_a_summary_and_runnable_examples():
    result = _invoke("--help")
    assert result.exit_code == 0
    assert "Score new-lesion predictions" in result.stdout
    assert "mstools evaluate --pred-dir" in result.stdout and "--hd95" in result.stdout


def test_evaluate_is_registered_in_the_application():
    assert "evaluate" in [c.name for c in app.registered_commands]


# --------------------------------------------------------------------------- one pair


def test_single_pair_json_matches_the_library(case):
    pred, truth = case
    result = _invoke(pred, truth, "--json")
    assert result.exit_code == 0, result.stderr
    payload = _strict_json(result.stdout)
    (row,) = payload["cases"]
    stored = read_image(truth).affine            # the header keeps the affine in float32
    expected = evaluate_case(_prediction(), _truth(), affine=stored).metrics
    assert row["case"] == "case01" and row["status"] == "ok"
    for key in ("dice", "hd95_mm", "assd_mm", "lesion_f1", "overall_score", "gt_volume_mm3"):
        assert row[key] == pytest.approx(expected[key], rel=1e-12), key
    assert (row["gt_lesions"], row["pred_lesions"]) == (2, 2)       # the 1-voxel prediction is not counted
    assert len(payload["lesions"]) == 5
    assert payload["summary"]["parameters"]["hd95"] == "max-directed"
    assert payload["written"] == []


def test_single_pair_readable_table_on_stdout(case):
    result = _invoke(*case)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["case", "dice", "hd95_mm"]
    assert lines[1].startswith("case01 ")
    assert "mean +/- sd" in result.stdout
    assert result.stderr == ""


def test_outputs_with_a_prefix_carry_sidecars(case, tmp_path):
    prefix = tmp_path / "res" / "run"
    (tmp_path / "res").mkdir()
    result = _invoke(*case, "--out", prefix)
    assert result.exit_code == 0, result.stderr
    names = ["run_cases.tsv", "run_cases.json", "run_lesions.tsv", "run_lesions.json", "run_summary.json"]
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == sorted(names)
    assert [line for line in result.stdout.splitlines() if line.startswith(str(tmp_path))] == \
        [str(tmp_path / "res" / n) for n in names]
    (row,) = read_tsv(tmp_path / "res" / "run_cases.tsv")
    assert row["status"] == "ok" and float(row["dice"]) > 0.5
    lesions = read_tsv(tmp_path / "res" / "run_lesions.tsv")
    assert {r["object"] for r in lesions} == {"ground_truth", "prediction"} and len(lesions) == 5
    sidecar = _strict_json((tmp_path / "res" / "run_cases.json").read_text())
    assert sidecar["command"] == "evaluate"
    assert set(sidecar["inputs_sha256"]) == {str(p) for p in case}
    assert sidecar["parameters"]["alpha"] == 0.10 and sidecar["parameters"]["connectivity"] == 6
    summary = _strict_json((tmp_path / "res" / "run_summary.json").read_text())
    assert summary["provenance"]["inputs_sha256"] == sidecar["inputs_sha256"]
    assert summary["ground_truth_cases"]["dice"]["n"] == 1


def test_output_prefix_in_a_missing_folder_is_made_and_a_file_on_the_way_refused(case, tmp_path):
    result = _invoke(*case, "--out", tmp_path / "new" / "deeper" / "run")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "new" / "deeper" / "run_cases.tsv").is_file()
    (tmp_path / "afile").write_text("not a folder")
    result = _invoke(*case, "--out", tmp_path / "afile" / "run")
    assert result.exit_code == 1 and "is a file, not a folder" in result.stderr
    assert result.stdout == ""


def test_existing_outputs_need_force(case, tmp_path):
    out = tmp_path / "results"
    assert _invoke(*case, "--out-dir", out).exit_code == 0     # the folder is created
    assert (out / "cases.tsv").is_file() and (out / "summary.json").is_file()
    again = _invoke(*case, "--out-dir", out)
    assert again.exit_code == 1 and "already exists" in again.stderr and "--force" in again.stderr
    assert _invoke(*case, "--out-dir", out, "--force").exit_code == 0


def test_hd95_option_and_rule_options_reach_the_results(tmp_path, affine):
    truth = np.zeros(SHAPE, np.uint8)
    truth[1:3, 1:3, 1:3] = 1
    truth[3:5, 3:5, 1:3] = 1          # touches the first cube along an edge only
    pred = truth.copy()
    pred[10:20, 10:20, 6] = 1         # a far, flat false positive: the HD95 definitions differ
    t = save_nifti(tmp_path / "t.nii.gz", truth, affine)
    p = save_nifti(tmp_path / "p.nii.gz", pred, affine)
    default = _strict_json(_invoke(p, t, "--json").stdout)["cases"][0]
    pooled = _strict_json(_invoke(p, t, "--json", "--hd95", "pooled").stdout)["cases"][0]
    assert default["hd95_mm"] == default["hd95_max_directed_mm"]
    assert pooled["hd95_mm"] == pooled["hd95_pooled_mm"] != pytest.approx(default["hd95_mm"])
    assert default["gt_lesions"] == 2
    wide = _strict_json(_invoke(p, t, "--json", "--connectivity", "26").stdout)
    assert wide["cases"][0]["gt_lesions"] == 1 and wide["summary"]["parameters"]["connectivity"] == 26


def test_probability_map_needs_a_threshold(tmp_path, affine, case):
    _, truth = case
    score = _prediction().astype(np.float32) * 0.8 + 0.1
    path = save_nifti(tmp_path / "case01_score.nii.gz", score, affine)
    refused = _invoke(path, truth)
    assert refused.exit_code == 1
    assert "not a binary mask" in refused.stderr and "--threshold" in refused.stderr
    assert refused.stderr.count("\n") == 1 and refused.stdout == ""
    accepted = _invoke(path, truth, "--threshold", "0.5", "--json")
    assert accepted.exit_code == 0
    from_mask = _invoke(*case, "--json")
    assert _strict_json(accepted.stdout)["cases"][0]["dice"] == _strict_json(from_mask.stdout)["cases"][0]["dice"]


# --------------------------------------------------------------------------- bad input, one pair


def test_grid_mismatch_is_refused(case, tmp_path):
    pred, _ = case
    shifted = oblique_affine(origin=(-80.0, 100.25, -60.0))
    truth = save_nifti(tmp_path / "other.nii.gz", _truth(), shifted)
    result = _invoke(pred, truth)
    assert result.exit_code == 1 and "not on the same grid" in result.stderr
    truth = save_nifti(tmp_path / "small.nii.gz", _truth()[:20], oblique_affine())
    assert "not on the same grid" in _invoke(pred, truth).stderr


def test_non_binary_truth_is_refused(case, tmp_path, affine):
    pred, _ = case
    labels = _truth()
    labels[14:18, 14:19, 5:8] *= 2
    truth = save_nifti(tmp_path / "labels.nii.gz", labels, affine)
    result = _invoke(pred, truth)
    assert result.exit_code == 1
    assert "ground truth is not a binary mask" in result.stderr and "values 2" in result.stderr


@pytest.mark.parametrize("problem,message", [
    ("missing", "file not found"),
    ("4d", "3D image was expected"),
    ("nan", "NaN"),
    ("corrupt", "unreadable or corrupt"),
])
def test_unusable_prediction_files_are_refused(case, tmp_path, affine, problem, message):
    _, truth = case
    path = tmp_path / "bad.nii.gz"
    if problem == "4d":
        save_nifti(path, np.zeros(SHAPE + (2,), np.uint8), affine)
    elif problem == "nan":
        data = _prediction().astype(np.float32)
        data[0, 0, 0] = np.nan
        save_nifti(path, data, affine)
    elif problem == "corrupt":
        path.write_bytes(b"not a nifti file")
    result = _invoke(path, truth)
    assert result.exit_code == 1 and message in result.stderr, result.stderr


@pytest.mark.parametrize("args,reason", [
    ([], "no input given"),
    (["p.nii.gz"], "both needed"),
    (["p.nii.gz", "t.nii.gz", "--pred-dir", "x"], "two kinds"),
    (["--pred-dir", "x"], "go together"),
    (["--manifest", "m.tsv", "--gt-dir", "x"], "two kinds"),
    (["p.nii.gz", "t.nii.gz", "--connectivity", "7"], "must be 6, 18 or 26"),
    (["p.nii.gz", "t.nii.gz", "--alpha", "1.5"], "alpha must be in"),
    (["p.nii.gz", "t.nii.gz", "--gamma", "0"], "gamma must be in"),
    (["p.nii.gz", "t.nii.gz", "--hd95", "mean"], "'mean' is not one of"),
    (["p.nii.gz", "t.nii.gz", "--out", "a", "--out-dir", "b"], "not both"),
])
def test_usage_errors_exit_2(args, reason):
    result = _invoke(*args)
    assert result.exit_code == 2, (args, result.stdout, result.stderr)
    flat = " ".join(result.stderr.replace("│", " ").split())
    assert reason in flat, flat


# --------------------------------------------------------------------------- cohorts


def _cohort(tmp_path, affine):
    """case01: file layout; case02: folder layout, empty truth; case03: prediction missing;
    case04: prediction without truth."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    save_nifti(gt_dir / "case01.nii.gz", _truth(), affine)
    save_nifti(pred_dir / "case01_mask.nii.gz", _prediction(), affine)
    (gt_dir / "case02").mkdir()
    save_nifti(gt_dir / "case02" / "ground_truth.nii.gz", np.zeros(SHAPE, np.uint8), affine)
    (pred_dir / "case02").mkdir()
    fp = np.zeros(SHAPE, np.uint8)
    fp[5:8, 5:8, 5:7] = 1
    save_nifti(pred_dir / "case02" / "run_mask.nii.gz", fp, affine)
    save_nifti(gt_dir / "case03.nii.gz", _truth(), affine)
    save_nifti(pred_dir / "case04.nii.gz", _prediction(), affine)
    return pred_dir, gt_dir


def test_cohort_reports_missing_cases_and_summarises_empty_truth_apart(tmp_path, affine):
    pred_dir, gt_dir = _cohort(tmp_path, affine)
    result = _invoke("--pred-dir", pred_dir, "--gt-dir", gt_dir, "--json", "--out-dir", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    payload = _strict_json(result.stdout)
    status = {r["case"]: r["status"] for r in payload["cases"]}
    assert status == {"case01": "ok", "case02": "ok", "case03": "missing_prediction",
                      "case04": "missing_ground_truth"}
    case02 = next(r for r in payload["cases"] if r["case"] == "case02")
    assert case02["empty_ground_truth"] is True and case02["dice"] is None
    assert case02["pred_lesions"] == 1 and case02["pred_lesion_volume_mm3"] == pytest.approx(18 * 2.475)
    summary = payload["summary"]
    assert summary["cases"]["evaluated"] == 2 and summary["cases"]["empty_ground_truth"] == 1
    assert [m["case"] for m in summary["cases"]["missing"]] == ["case03", "case04"]
    assert summary["ground_truth_cases"]["dice"]["n"] == 1
    assert summary["empty_ground_truth_cases"]["pred_lesions"]["mean"] == 1.0
    assert summary["empty_ground_truth_cases"]["cases_without_predicted_lesion"] == 0
    assert "case03" in result.stderr and "missing_prediction" in result.stderr
    rows = read_tsv(tmp_path / "out" / "cases.tsv")
    assert [r["status"] for r in rows] == ["ok", "ok", "missing_prediction", "missing_ground_truth"]
    assert rows[1]["dice"] == "n/a"


def test_cohort_prefers_score_maps_with_a_threshold(tmp_path, affine):
    pred_dir, gt_dir = _cohort(tmp_path, affine)
    save_nifti(pred_dir / "case01_score.nii.gz", np.zeros(SHAPE, np.float32), affine)
    masks = _strict_json(_invoke("--pred-dir", pred_dir, "--gt-dir", gt_dir, "--json").stdout)
    scores = _strict_json(_invoke("--pred-dir", pred_dir, "--gt-dir", gt_dir, "--json",
                                  "--threshold", "0.5").stdout)
    assert masks["cases"][0]["prediction"].endswith("case01_mask.nii.gz")
    assert scores["cases"][0]["prediction"].endswith("case01_score.nii.gz")
    assert scores["cases"][0]["pred_lesions"] == 0


def test_cohort_reports_a_bad_case_instead_of_stopping(tmp_path, affine):
    pred_dir, gt_dir = _cohort(tmp_path, affine)
    save_nifti(pred_dir / "case03.nii.gz", _prediction()[:, :, :10], affine)   # other grid
    result = _invoke("--pred-dir", pred_dir, "--gt-dir", gt_dir, "--json")
    assert result.exit_code == 0
    failed = _strict_json(result.stdout)["summary"]["cases"]["failed"]
    assert [f["case"] for f in failed] == ["case03"] and "not on the same grid" in failed[0]["message"]
    assert "case03" in result.stderr


def test_cohort_without_any_evaluable_case_fails(tmp_path, affine):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    save_nifti(gt_dir / "a.nii.gz", _truth(), affine)
    save_nifti(pred_dir / "b.nii.gz", _prediction(), affine)
    result = _invoke("--pred-dir", pred_dir, "--gt-dir", gt_dir)
    assert result.exit_code == 1 and "no case could be evaluated" in result.stderr
    assert _invoke("--pred-dir", tmp_path / "nope", "--gt-dir", gt_dir).exit_code == 1


def test_manifest_with_relative_paths_and_a_missing_file(tmp_path, affine):
    save_nifti(tmp_path / "t1.nii.gz", _truth(), affine)
    save_nifti(tmp_path / "p1.nii.gz", _prediction(), affine)
    manifest = tmp_path / "cohort.tsv"
    manifest.write_text("case\tprediction\tground_truth\nc1\tp1.nii.gz\tt1.nii.gz\nc2\tp2.nii.gz\tt1.nii.gz\n")
    result = _invoke("--manifest", manifest, "--json")
    assert result.exit_code == 0, result.stderr
    rows = _strict_json(result.stdout)["cases"]
    assert [(r["case"], r["status"]) for r in rows] == [("c1", "ok"), ("c2", "missing_prediction")]
    assert "p2.nii.gz: file not found" in rows[1]["message"]


@pytest.mark.parametrize("text,message", [
    ("case\tprediction\nc1\tp1.nii.gz\n", "lacks the column(s) ground_truth"),
    ("case\tprediction\tground_truth\nc1\tp.nii.gz\tt.nii.gz\nc1\tp.nii.gz\tt.nii.gz\n", "listed twice"),
    ("case\tprediction\tground_truth\n", "no case"),
])
def test_bad_manifests_are_refused(tmp_path, text, message):
    manifest = tmp_path / "m.tsv"
    manifest.write_text(text)
    result = _invoke("--manifest", manifest)
    assert result.exit_code == 1 and message in result.stderr


def test_defaults_shown_in_help_are_the_rules():
    rule = LesionRule()
    options = EvaluationOptions()
    result = _invoke("--help")
    for shown in (f"[default: {rule.connectivity}]", f"[default: {rule.min_lesion_mm3}]",
                  f"[default: {rule.alpha}]", f"[default: {rule.beta}]", f"[default: {rule.gamma}]",
                  f"[default: {options.hd95}]"):
        assert shown in result.stdout, shown
