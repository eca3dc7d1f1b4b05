"""`mstools run` (one case, stages reused) and `mstools batch` (a cohort on a local Dask cluster)."""

from __future__ import annotations

import json
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from mstools import pipeline
from mstools_cli.main import app
from mstools import case_layout as layout
from mstools import run_layout as rl
from mstools.cohort_inputs import discover_cases
from mstools.detect.subtraction import PRADOS_K_SD

runner = CliRunner()
NO_REPORT = "report: false\n"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three simulated 3 mm cases with ground truth (two with big new lesions, one without)."""
    root = tmp_path_factory.mktemp("cohort")
    for seed, n_new in ((11, 3), (12, 3), (13, 0)):
        result = runner.invoke(app, ["simulate", str(root / f"sim-{seed}"), "--seed", str(seed), "--voxel-mm", "3",
                                     "--n-new", str(n_new), "--new-volume-mm3", "300", "1200", "--n-stable", "4"])
        assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def no_report(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(NO_REPORT)
    return path


def _run(case, out, *extra):
    return runner.invoke(app, ["run", str(case), "-o", str(out), *extra])


def test_print_config_is_the_commands_defaults(tmp_path):
    result = runner.invoke(app, ["run", "--print-config"])
    assert result.exit_code == 0
    text = result.stdout
    assert "# prados: standard deviations above the mean difference." in text
    parsed = yaml.safe_load(text)
    assert parsed == pipeline.default_config()
    assert parsed["subtract"]["k"] == pipeline.RUN_OVERRIDES["subtract"]["k"] != PRADOS_K_SD
    assert "mstools run uses 2.5 instead of the command's 3.0" in text
    assert parsed["filter"]["learned"] is True
    assert parsed["refine"]["threshold"] == 0.2 and parsed["final"] == "activity"
    # where the run departs from a command's default, the value and the reason are printed
    assert parsed["refine"]["min_volume_mm3"] == pipeline.RUN_OVERRIDES["refine"]["min_volume_mm3"]
    assert "mstools run uses 5.0 instead of the command's default" in text
    assert parsed["register"]["enabled"] is False
    # the multitask network's score confirms the filter's lesions (two detectors agreeing)
    assert parsed["segment"]["enabled"] is True and parsed["segment"]["model"] == "multitask"
    assert parsed["filter"]["confirm_with"] == "segment" and parsed["filter"]["confirm_min"] == 0.3


def test_run_writes_every_stage_the_final_result_and_the_evaluation(cohort, tmp_path, no_report):
    case, out = cohort / "sim-11", tmp_path / "run"
    result = _run(case, out, "-c", str(no_report))
    assert result.exit_code == 0, result.output
    record = json.loads((out / rl.RUN_RECORD).read_text())
    assert record["status"] == "complete" and record["final_stage"] == "activity"
    assert [s for s, v in record["stages"].items() if v["status"] == "ran"] == ["subtract", "segment", "refine",
                                                                                 "filter", "activity"]
    assert record["stages"]["preprocess"]["status"] == "off"
    for stage in ("subtract", "filter", "refine"):
        assert (out / stage / rl.STAGE_RECORD).is_file()
    final = nib.load(out / record["final"]["mask"])
    reference = nib.load(case / layout.BASELINE)
    assert np.allclose(final.affine, reference.affine) and final.shape == reference.shape
    assert final.get_data_dtype() == np.uint8
    filter_mask = nib.load(out / "filter" / "filter_mask.nii.gz")
    activity_mask = nib.load(out / "activity" / "activity_mask.nii.gz")     # filter's lesions without growths
    assert np.array_equal(np.asarray(final.dataobj), np.asarray(activity_mask.dataobj))
    assert not (np.asarray(final.dataobj) > np.asarray(filter_mask.dataobj)).any()
    parameters = json.loads((out / "filter" / "filter_mask.json").read_text())["parameters"]
    assert parameters["candidates"].endswith("refine/refine") and parameters["confirm"].endswith("segment/segment")
    # every lesion the run reports reaches the confirming score somewhere inside it
    from scipy import ndimage

    score = np.asarray(nib.load(out / "segment" / "segment_score.nii.gz").dataobj)
    kept, count = ndimage.label(np.asarray(filter_mask.dataobj) > 0, structure=np.ones((3, 3, 3)))
    assert all(score[kept == label].max() >= parameters["confirm_min"] for label in range(1, count + 1))
    # the network's own lesions are not added by default, on this 3 mm grid either
    assert parameters["add_confirming"] == "never" and parameters["added_confirming"] is False
    rows = (out / rl.EVALUATION).read_text().splitlines()
    assert [line.split("\t")[0] for line in rows[1:]] == ["subtract", "segment", "refine", "filter", "activity"]
    assert record["metrics"]["stage"] == "activity" and record["metrics"]["gt_lesions"] == 3
    assert str(out / record["final"]["mask"]) in result.stdout and "lesion" not in result.stderr.split("\n")[0][:0]
    assert result.stdout.splitlines()[-1].startswith("activity")  # the evaluation table on stdout


def test_run_adds_the_networks_lesions_on_thick_grids_when_configured(cohort, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(NO_REPORT + "filter:\n  add_confirming: thick\n")
    out = tmp_path / "run"
    result = _run(cohort / "sim-11", out, "-c", str(config))
    assert result.exit_code == 0, result.output
    parameters = json.loads((out / "filter" / "filter_mask.json").read_text())["parameters"]
    assert parameters["add_confirming"] == "thick" and parameters["added_confirming"] is True   # 3 mm: thick
    network = np.asarray(nib.load(out / "segment" / "segment_mask.nii.gz").dataobj) > 0
    reported = np.asarray(nib.load(out / "filter" / "filter_mask.nii.gz").dataobj) > 0
    assert network.any() and not (network & ~reported).any()


def test_rerun_reuses_unchanged_stages_and_reruns_what_an_option_changes(cohort, tmp_path, no_report):
    case, out = cohort / "sim-12", tmp_path / "run"
    assert _run(case, out, "-c", str(no_report)).exit_code == 0
    stamps = {s: (out / s / rl.STAGE_RECORD).stat().st_mtime_ns for s in ("subtract", "filter", "refine")}
    result = _run(case, out, "-c", str(no_report), "--json")
    assert result.exit_code == 0
    assert {s: v["status"] for s, v in json.loads(result.stdout)["stages"].items() if v["status"] != "off"} == \
        {"subtract": "reused", "segment": "reused", "filter": "reused", "refine": "reused", "activity": "reused"}
    said = _run(case, out, "-c", str(no_report))       # the terminal says it plainly
    assert "subtract done earlier" in said.stderr and "reused" not in said.stderr
    assert re.search(r"\b\d+ new lesions?, ", said.stderr) and "lesion(s)" not in said.stderr
    changed = tmp_path / "changed.yaml"
    changed.write_text(NO_REPORT + "refine:\n  threshold: 0.5\n")
    result = _run(case, out, "-c", str(changed), "--json")
    statuses = {s: v["status"] for s, v in json.loads(result.stdout)["stages"].items()}
    # refine changed, and filter reads refine: both run again; subtract is reused
    assert statuses["subtract"] == "reused" and statuses["refine"] == "ran" and statuses["filter"] == "ran"
    assert (out / "subtract" / rl.STAGE_RECORD).stat().st_mtime_ns == stamps["subtract"]
    assert (out / "refine" / rl.STAGE_RECORD).stat().st_mtime_ns != stamps["refine"]


def test_run_shows_each_stage_on_stderr_as_plain_lines_and_keeps_stdout_for_results(cohort, tmp_path, no_report):
    """stderr is not a terminal here: one line as each stage starts and ends, nothing on stdout."""
    case, out = cohort / "sim-13", tmp_path / "run"
    result = _run(case, out, "-c", str(no_report), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "complete"      # --json: stdout is the record only
    lines = [re.sub(r"\d+/\d+ slices$", "N/N slices", re.sub(r"\d+\.\d s$", "N s", line))
             for line in result.stderr.splitlines() if line.startswith("[")]
    # a progress line every 10 s and one when complete: one or more on a busy machine, said once here
    lines = [line for n, line in enumerate(lines) if n == 0 or line != lines[n - 1]]
    assert lines == [
        "[1/5] subtract: started", "[1/5] subtract: done in N s", "[2/5] segment: started",
        "[2/5] segment: N/N slices", "[2/5] segment: done in N s", "[3/5] refine: started",
        "[3/5] refine: done in N s", "[4/5] filter: started", "[4/5] filter: done in N s",
        "[5/5] activity: started", "[5/5] activity: done in N s"]
    again = _run(case, out, "-c", str(no_report))
    assert [line for line in again.stderr.splitlines() if line.startswith("[")] == [
        "[1/5] subtract: done earlier", "[2/5] segment: done earlier", "[3/5] refine: done earlier",
        "[4/5] filter: done earlier", "[5/5] activity: done earlier"]
    assert not any(line.startswith("[") for line in again.stdout.splitlines())
    quiet = runner.invoke(app, ["-q", "run", str(case), "-o", str(out), "-c", str(no_report)])
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_run_on_a_terminal_draws_a_rich_display_of_its_stages(cohort, tmp_path, no_report, monkeypatch):
    """On a terminal (forced here: rich writes to a buffer as to a terminal) the stages are rows
    of a rich display; stdout still carries the results only."""
    import io

    from rich.console import Console

    from mstools_cli import common

    screen = io.StringIO()
    monkeypatch.setattr(common, "progress_enabled", lambda: True)
    monkeypatch.setattr(common, "stderr_console", lambda: Console(file=screen, force_terminal=True, width=100))
    result = _run(cohort / "sim-13", tmp_path / "run", "-c", str(no_report))
    assert result.exit_code == 0, result.output
    drawn = screen.getvalue()
    assert "\x1b[" in drawn                                   # drawn with terminal codes
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn)
    for number, stage in enumerate(("subtract", "segment", "refine", "filter", "activity"), start=1):
        assert f"[{number}/5] {stage}" in text
    assert re.search(r"\[5/5\] activity +━+ done in \d+\.\d s", text), text[-500:]
    assert not any(line.startswith("[") for line in result.stderr.splitlines())   # no plain lines as well
    assert result.stdout.splitlines()[0].endswith("new_lesions_mask.nii.gz") and "━" not in result.stdout


def _cropped(source, target, crop=(slice(2, -1), slice(1, -2), slice(None))):
    """The image on a smaller grid covering the same world positions (another raw grid)."""
    img = nib.load(source)
    data = np.asarray(img.dataobj)[crop]
    start = np.array([c.start or 0 for c in crop] + [1.0])
    affine = img.affine.copy()
    affine[:, 3] = img.affine @ start
    nib.save(nib.Nifti1Image(data, affine, img.header), target)
    return target


@pytest.mark.slow
def test_raw_scans_are_preprocessed_and_results_carried_both_ways(cohort, tmp_path, no_report):
    case, out = cohort / "sim-11", tmp_path / "run"
    followup = _cropped(case / layout.FOLLOWUP, tmp_path / "followup_raw.nii.gz")
    truth = _cropped(case / layout.GROUND_TRUTH, tmp_path / "truth_raw.nii.gz")
    result = runner.invoke(app, ["run", "--baseline", str(case / layout.BASELINE), "--followup", str(followup),
                                 "--ground-truth", str(truth), "-o", str(out), "-c", str(no_report), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["stages"]["preprocess"]["status"] == "ran" and record["inputs"]["case_folder"] == rl.CASE_DIR
    # preprocess's steps are shown inside the run (stderr is not a terminal: plain lines)
    for step in ("brain extraction", "N4 bias-field correction", "rigid registration",
                 "resampling into the common space", "intensity harmonisation"):
        assert f"[1/6] preprocess: {step}\n" in result.stderr
    assert record["inputs"]["ground_truth"] == f"{rl.CASE_DIR}/{layout.GROUND_TRUTH}"
    carried = nib.load(out / rl.CASE_DIR / layout.GROUND_TRUTH)
    middle = nib.load(out / rl.CASE_DIR / layout.FOLLOWUP)
    assert carried.shape == middle.shape and np.allclose(carried.affine, middle.affine)
    assert record["evaluation"] and record["evaluation"][0]["gt_lesions"] >= 1
    # the final result also lands on the raw follow-up's own grid
    raw = nib.load(followup)
    for kind in ("mask", "labels"):
        native = nib.load(out / record["final_native"][kind])
        assert native.shape == raw.shape and np.allclose(native.affine, raw.affine)
    native_mask = np.asarray(nib.load(out / record["final_native"]["mask"]).dataobj)
    assert set(np.unique(native_mask)) <= {0, 1}
    middle = nib.load(out / record["final"]["mask"])
    middle_mask = np.asarray(middle.dataobj)
    assert middle_mask.any() and native_mask.any()

    def world_points(mask, affine):
        return np.argwhere(mask > 0) @ affine[:3, :3].T + affine[:3, 3]

    # a small lesion on a 3 mm grid loses voxels to the resampling, but not its place: every
    # lesion on the raw grid lies within 3 mm of the lesions found in the middle space
    from scipy import ndimage

    labels, count = ndimage.label(native_mask > 0, structure=np.ones((3, 3, 3)))
    middle_points = world_points(middle_mask, middle.affine)
    for label in range(1, count + 1):
        centre = world_points(labels == label, raw.affine).mean(axis=0)
        assert np.linalg.norm(middle_points - centre, axis=1).min() < 3.0


@pytest.mark.parametrize("config, message", [
    ("colour: red\n", "unknown key 'colour'"),
    ("subtract:\n  kk: 2\n", "subtract has no option 'kk'"),
    ("subtract:\n  rule: magic\n", "config: subtract:"),
    ("refine:\n  threshold: 2\n", "config: refine:"),
    ("final: register\n", "final is register but that stage is not enabled"),
    ("segment:\n  enabled: false\n", "filter confirms its lesions with segment's score but segment is not enabled"),
    ("filter:\n  confirm_with: subtract\n", "filter.confirm_with must be segment, none"),
    ("filter:\n  confirm: out/mt\n", "filter.confirm (a score map prefix) and filter.confirm_with (a stage) both"),
    ("filter:\n  confirm_with: none\n  add_confirming: thick\n", "filter.add_confirming is thick but no detector confirms"),
    ("filter:\n  enabled: false\n", "activity reads filter's outputs but filter is not enabled"),
    ("activity:\n  enabled: false\n", "final is activity but that stage is not enabled"),
    ("refine:\n  enabled: false\n", "filter reads the refine candidates but refine is not enabled"),
    ("refine:\n  candidates: filter\n", "one of them must read subtract"),
    ("subtract: [1, 2\n", "not valid YAML"),
])
def test_bad_config_is_one_line_and_writes_nothing(cohort, tmp_path, config, message):
    path = tmp_path / "bad.yaml"
    path.write_text(config)
    out = tmp_path / "run"
    result = _run(cohort / "sim-11", out, "-c", str(path))
    assert result.exit_code == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_a_missing_extra_is_one_line_that_says_which_to_install(cohort, tmp_path):
    """Without PyTorch (the [deep] extra) the run's segment stage says what to install or switch
    off; a fresh interpreter in which `import torch` fails as on a machine without it."""
    import subprocess
    import sys

    hide = ("import sys, importlib.abc\n"
            "class NoTorch(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, NoTorch())\n")
    code = (hide + "from mstools_cli.main import main; "
            f"sys.argv = ['mstools', 'run', {str(cohort / 'sim-11')!r}, '-o', {str(tmp_path / 'run')!r}, "
            f"'-c', {str(tmp_path / 'c.yaml')!r}]; main()")
    (tmp_path / "c.yaml").write_text(NO_REPORT)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = [line for line in done.stderr.splitlines() if "error" in line]
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "needs torch, which is not installed" in lines[0] and "[deep]" in lines[0]
    assert "confirm_with: none" in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()       # refused before any stage


def test_bad_case_leaves_no_run_folder(cohort, tmp_path):
    case = tmp_path / "case"
    shutil.copytree(cohort / "sim-11", case)
    (case / layout.FOLLOWUP).write_bytes(b"not a nifti")
    out = tmp_path / "run"
    result = _run(case, out)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [result.stderr.splitlines()[-1]] and errors[0].startswith("mstools run: error: subtract:")
    assert not out.exists()
    (case / layout.BRAIN_MASK).unlink()
    result = _run(case, out)
    assert result.exit_code == 1 and "no brain_mask.nii.gz" in result.stderr and not out.exists()


def test_a_ground_truth_on_another_grid_or_not_binary_is_refused_before_any_stage(cohort, tmp_path):
    case = cohort / "sim-11"
    other = tmp_path / "gt_other_grid.nii.gz"
    gt = nib.load(case / layout.GROUND_TRUTH)
    nib.save(nib.Nifti1Image(np.asarray(gt.dataobj)[1:], gt.affine, gt.header), other)
    result = _run(case, tmp_path / "run", "--ground-truth", str(other))
    assert result.exit_code == 1 and "gt_other_grid" in result.stderr and not (tmp_path / "run").exists()
    labels = tmp_path / "gt_labels.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(gt.dataobj).astype(np.uint8) * 2, gt.affine, gt.header), labels)
    result = _run(case, tmp_path / "run", "--ground-truth", str(labels))
    assert result.exit_code == 1 and "gt_labels" in result.stderr and not (tmp_path / "run").exists()


def test_run_input_errors(cohort, tmp_path):
    assert "give -o OUT" in runner.invoke(app, ["run", str(cohort / "sim-11")]).stderr
    both = runner.invoke(app, ["run", str(cohort / "sim-11"), "-o", str(tmp_path / "r"), "--baseline", "x.nii.gz"])
    assert both.exit_code == 1 and "not both" in both.stderr
    missing = runner.invoke(app, ["run", "-o", str(tmp_path / "r"), "--baseline", str(tmp_path / "b.nii.gz"),
                                  "--followup", str(tmp_path / "f.nii.gz")])
    assert missing.exit_code == 1 and "baseline scan not found" in missing.stderr


def test_discover_cases_from_folder_manifest_and_bids(cohort, tmp_path):
    assert [c.case for c in discover_cases(cohort)] == ["sim-11", "sim-12", "sim-13"]
    assert discover_cases(cohort)[0].ground_truth == cohort / "sim-11" / layout.GROUND_TRUTH
    manifest = tmp_path / "cases.tsv"
    manifest.write_text(f"case\tfolder\tbaseline\tfollowup\nA\t{cohort / 'sim-11'}\t\t\nB\t\traw/b.nii.gz\traw/f.nii.gz\n")
    a, b = discover_cases(manifest)
    assert a.folder == cohort / "sim-11" and not a.raw
    assert b.raw and b.baseline == tmp_path / "raw" / "b.nii.gz"
    bids = tmp_path / "bids"
    for subject, sessions in (("sub-01", ("ses-1", "ses-2", "ses-3")), ("sub-02", ("ses-1",))):
        for session in sessions:
            (bids / subject / session / "anat").mkdir(parents=True)
            (bids / subject / session / "anat" / f"{subject}_{session}_FLAIR.nii.gz").write_bytes(b"x")
    first, second = discover_cases(bids)
    assert first.baseline.name == "sub-01_ses-1_FLAIR.nii.gz" and first.followup.name == "sub-01_ses-3_FLAIR.nii.gz"
    assert "two are needed" in second.problem


@pytest.mark.parametrize("content, message", [
    ("name\tfolder\nA\tx\n", "manifest needs the columns case and folder"),
    ("case\tfolder\nA\tx\nA\ty\n", "listed twice"),
    ("case\tfolder\n", "manifest has no case"),
])
def test_bad_manifest(tmp_path, content, message):
    manifest = tmp_path / "m.tsv"
    manifest.write_text(content)
    result = runner.invoke(app, ["batch", str(manifest), "-o", str(tmp_path / "d")])
    assert result.exit_code == 1 and message in result.stderr


@pytest.mark.slow
def test_batch_on_a_local_cluster_with_a_broken_case_and_a_resumed_rerun(cohort, tmp_path):
    source = tmp_path / "cases"
    shutil.copytree(cohort, source)
    (source / "sim-12" / layout.BASELINE).write_bytes(b"\x1f\x8b broken")
    out = tmp_path / "derivatives"
    result = runner.invoke(app, ["batch", str(source), "-o", str(out), "--workers", "2",
                                 "--memory-per-worker", "2GiB", "--json"])
    assert result.exit_code == 1, result.output
    assert "1 of 3 case(s) failed" in result.stderr
    summary = json.loads(result.stdout)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (2, 0, 1)
    assert summary["peak_rss_mb_per_worker"] and all(v > 0 for v in summary["peak_rss_mb_per_worker"].values())
    cohort_rows = [line.split("\t") for line in (out / rl.COHORT_TABLE).read_text().splitlines()]
    assert cohort_rows[0] == list(rl.COHORT_COLUMNS)
    assert {r[0]: r[1] for r in cohort_rows[1:]} == {"sim-11": "done", "sim-12": "failed", "sim-13": "done"}
    errors = (out / rl.ERRORS_TABLE).read_text().splitlines()
    assert len(errors) == 2 and errors[1].startswith("sim-12\tsubtract\t") and "flair_time01" in errors[1]
    assert not (out / "sim-12").exists()
    page = (out / rl.COHORT_REPORT).read_text()
    assert 'href="sim-11/report.html"' in page and 'href="sim-13/report.html"' in page and "sim-12" in page
    assert "sim-11" in (out / "sim-11" / rl.REPORT).read_text()
    again = runner.invoke(app, ["batch", str(source), "-o", str(out), "--workers", "1", "--json"])
    summary = json.loads(again.stdout)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (0, 2, 1)


@pytest.mark.slow
def test_batch_on_an_existing_cluster_leaves_it_running(cohort, tmp_path, no_report):
    from dask.distributed import Client, LocalCluster

    source = tmp_path / "cases"
    source.mkdir()
    shutil.copytree(cohort / "sim-13", source / "sim-13")
    out = tmp_path / "derivatives"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        result = runner.invoke(app, ["batch", str(source), "-o", str(out), "-c", str(no_report), "--scheduler",
                                     cluster.scheduler_address, "--json"])
        assert result.exit_code == 0, result.output
        with Client(cluster.scheduler_address, timeout="10s") as client:  # not closed by the command
            assert client.submit(sum, [1, 2]).result(timeout=10) == 3
    assert json.loads(result.stdout)["done"] == 1 and (out / "sim-13" / rl.RUN_RECORD).is_file()


@pytest.mark.slow
def test_batch_on_a_terminal_shows_each_running_cases_stage(cohort, tmp_path, no_report, monkeypatch):
    """The workers send each case's stages to the client (Dask events); on a terminal (forced
    here) a running case is a row with its stage, gone when the case is done."""
    import io

    from dask.distributed import LocalCluster
    from rich.console import Console

    from mstools_cli import common

    screen = io.StringIO()
    monkeypatch.setattr(common, "progress_enabled", lambda: True)
    monkeypatch.setattr(common, "stderr_console", lambda: Console(file=screen, force_terminal=True, width=100))
    source = tmp_path / "cases"
    source.mkdir()
    shutil.copytree(cohort / "sim-13", source / "sim-13")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        result = runner.invoke(app, ["batch", str(source), "-o", str(tmp_path / "d"), "-c", str(no_report),
                                     "--scheduler", cluster.scheduler_address])
    assert result.exit_code == 0, result.output
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    assert re.search(r"sim-13 \[1/5\] subtract", text) and re.search(r"sim-13 \[3/5\] refine", text), text[-800:]
    assert "[1/1] sim-13: " in text          # the case's result line, drawn above the rows
    assert not result.stdout.count("━")


def test_batch_refuses_a_scheduler_that_does_not_answer(cohort, tmp_path, no_report):
    result = runner.invoke(app, ["batch", str(cohort), "-o", str(tmp_path / "d"), "-c", str(no_report),
                                 "--scheduler", "tcp://127.0.0.1:9", "--scheduler-timeout", "1"])
    assert result.exit_code == 1 and "no Dask scheduler answered" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2 and not (tmp_path / "d").exists()


def test_batch_bad_options(cohort, tmp_path):
    result = runner.invoke(app, ["batch", str(cohort), "-o", str(tmp_path / "d"), "--memory-per-worker", "lots"])
    assert result.exit_code == 1 and "not a size" in result.stderr
    result = runner.invoke(app, ["batch", str(tmp_path / "nowhere"), "-o", str(tmp_path / "d")])
    assert result.exit_code == 1 and "not found" in result.stderr


@pytest.mark.parametrize("command", ["run", "batch"])
def test_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Example: mstools" in result.stdout


def test_config_values_become_the_stage_options(tmp_path):
    base = tmp_path / "configs"
    # a file option is taken relative to the config's folder; a name option is passed as it is
    assert pipeline.stage_options_args(pipeline.STAGES["refine"], {"model": "m.txt", "threshold": 0.3}, base) == \
        ["--model", str(base / "m.txt"), "--threshold", "0.3"]
    assert pipeline.stage_options_args(pipeline.STAGES["segment"], {"model": "unet", "tta": True}, base) == \
        ["--model", "unet", "--tta"]
    assert pipeline.stage_options_args(pipeline.STAGES["preprocess"], {"bias_correction": False}, base) == \
        ["--no-bias-correction"]
    assert pipeline.stage_options_args(pipeline.STAGES["register"], {"parameters": ["a.txt", "b.txt"]}, base) == \
        ["--parameters", str(base / "a.txt"), "--parameters", str(base / "b.txt")]
