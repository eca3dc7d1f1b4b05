"""Safe under faults and bad input (issue 15): one regression test per hole of the break-it audit."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from mstools_cli.main import app
from mstools import case_layout as layout
from mstools import run_layout as rl
from mstools.errors import InputError
from mstools.io import OutputBatch, read_image, read_mask, remove_stale_parts
from tests.conftest import oblique_affine, save_nifti

runner = CliRunner()
MSTOOLS = str(Path(sys.executable).parent / "mstools")
NO_REPORT = "report: false\n"
DEFAULT_REFINE = Path(__file__).resolve().parents[1] / "mstools" / "models" / "refine" / "default.txt"


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Two simulated 3 mm cases (A, B) and a run of A (its stage outputs)."""
    root = tmp_path_factory.mktemp("safety")
    for name, seed in (("A", 11), ("B", 12)):
        result = runner.invoke(app, ["simulate", str(root / name), "--seed", str(seed), "--voxel-mm", "3",
                                     "--n-new", "3", "--new-volume-mm3", "300", "1200", "--n-stable", "4"])
        assert result.exit_code == 0, result.output
    (root / "nr.yaml").write_text(NO_REPORT)
    result = runner.invoke(app, ["run", str(root / "A"), "-o", str(root / "runA"), "-c", str(root / "nr.yaml")])
    assert result.exit_code == 0, result.output
    return root


def _one_line_error(result, code=1, *, logs=False):
    """The error line; with ``logs``, the command's progress log may come before it."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 or (logs and lines), result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    return lines[-1]


# 1 ------------------------------------------------------------------ concurrent runs


def test_a_second_run_on_a_locked_folder_refuses_naming_the_first(cases, tmp_path):
    out = tmp_path / "R"
    lock = out / rl.LOCK
    first = subprocess.Popen([MSTOOLS, "run", str(cases / "A"), "-o", str(out), "-c", str(cases / "nr.yaml")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not lock.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)  # hold the first run inside its lock
        assert lock.exists(), "the first run finished before it could be held"
        second = subprocess.run([MSTOOLS, "run", str(cases / "B"), "-o", str(out), "-c", str(cases / "nr.yaml")],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert second.stderr.count("\n") == 1 and "in use by another mstools run" in second.stderr
        assert f"pid {first.pid}" in second.stderr and "'A'" in second.stderr
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    record = json.loads((out / rl.RUN_RECORD).read_text())
    assert record["case"] == "A" and not lock.exists()


def test_a_dead_runs_lock_is_taken_over_and_another_case_reruns_every_stage(cases, tmp_path):
    out = tmp_path / "R"
    shutil.copytree(cases / "runA", out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / rl.LOCK).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "case": "A"}))
    result = runner.invoke(app, ["-v", "run", str(cases / "B"), "-o", str(out), "-c", str(cases / "nr.yaml")])
    assert result.exit_code == 0, result.output
    record = json.loads((out / rl.RUN_RECORD).read_text())
    assert record["case"] == "B"
    # stage keys hold the case's input hashes: nothing of case A is reused
    assert {s: v["status"] for s, v in record["stages"].items() if v["status"] != "off"} == {
        "subtract": "ran", "segment": "ran", "refine": "ran", "filter": "ran", "activity": "ran"}
    assert not (out / rl.LOCK).exists()


# 2 ------------------------------------------------------------------ batch case names


@pytest.mark.parametrize("name", ["../escaped", "/tmp/anywhere", ".", "..", "a/b", ".hidden"])
def test_batch_case_names_must_be_plain_folder_names(cases, tmp_path, name):
    from mstools.cohort_inputs import discover_cases

    manifest = tmp_path / "m.tsv"
    manifest.write_text(f"case\tfolder\n{name}\t{cases / 'A'}\nok\t{cases / 'A'}\n")
    found = {c.case: c for c in discover_cases(manifest)}
    assert "not a plain folder name" in found[name].problem
    assert found["ok"].problem == ""


# 3 ------------------------------------------------------------------ inputs never overwritten


def test_no_command_writes_over_a_file_it_reads(cases, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cases / "runA", run)
    mask = run / "new_lesions_mask.nii.gz"
    before = mask.read_bytes()
    line = _one_line_error(runner.invoke(app, ["report", str(run), "-o", str(mask), "--force"]))
    assert "is one of the inputs" in line and mask.read_bytes() == before

    d = tmp_path / "d"
    d.mkdir()
    manifest = d / "m_cases.tsv"
    text = f"case\tprediction\tground_truth\nA\t{mask}\t{cases / 'A' / layout.GROUND_TRUTH}\n"
    manifest.write_text(text)
    line = _one_line_error(runner.invoke(app, ["evaluate", "--manifest", str(manifest), "--out", str(d / "m"),
                                               "--force"]))
    assert "is one of the inputs" in line and manifest.read_text() == text

    cohort = tmp_path / "D"
    cohort.mkdir()
    source = cohort / rl.COHORT_TABLE
    source.write_text(f"case\tfolder\nA\t{cases / 'A'}\n")
    line = _one_line_error(runner.invoke(app, ["batch", str(source), "-o", str(cohort)]))
    assert "is one of the inputs" in line and source.read_text().startswith("case\tfolder")

    case = tmp_path / "CASE"
    shutil.copytree(cases / "A", case)
    (case / rl.CONFIG).write_text(NO_REPORT)
    line = _one_line_error(runner.invoke(app, ["run", str(case), "-o", str(case), "-c", str(case / rl.CONFIG)]))
    assert "would be overwritten" in line and (case / rl.CONFIG).read_text() == NO_REPORT
    assert not (case / "subtract").exists()


def test_simulate_and_train_never_write_over_what_they_read(cases, tmp_path):
    case = tmp_path / "case"
    shutil.copytree(cases / "A", case)
    before = {p.name: p.read_bytes() for p in case.iterdir()}
    result = runner.invoke(app, ["simulate", str(case), "--background-flair", str(case / layout.FOLLOWUP),
                                 "--background-brain-mask", str(case / layout.BRAIN_MASK), "--background-lesions",
                                 str(case / layout.LESIONS_FOLLOWUP), "--n-new", "1", "--force"])
    line = _one_line_error(result, logs=True)
    assert "is one of the inputs" in line
    assert {p.name: p.read_bytes() for p in case.iterdir()} == before
    run = tmp_path / "W"
    run.mkdir()
    (run / "model.pt").write_bytes(b"weights to fine-tune")
    line = _one_line_error(runner.invoke(app, ["train", str(run), "--cases", str(cases / "A"), "--init-weights",
                                               str(run / "model.pt"), "--force"]))
    assert "would be overwritten" in line and (run / "model.pt").read_bytes() == b"weights to fine-tune"


# 4 ------------------------------------------------------------------ model files


def _model_copy(tmp_path, text, card):
    model = tmp_path / "model.txt"
    model.write_text(text)
    Path(str(model) + ".card.json").write_text(json.dumps(card))
    return model


def test_a_malformed_or_truncated_model_is_refused_before_lightgbm(cases, tmp_path):
    text = DEFAULT_REFINE.read_text()
    card = json.loads(Path(str(DEFAULT_REFINE) + ".card.json").read_text())
    # truncated: 53 of its trees, the end marker put back (the card's sha256 dropped, so the rest is checked)
    trees = text.split("\nTree=")
    cut = "\nTree=".join(trees[:54]) + "\nend of trees\n"
    card_without_hash = {k: v for k, v in card.items() if k != "model_sha256"}
    model = _model_copy(tmp_path, cut, card_without_hash)
    args = ["refine", str(cases / "A"), "-c", str(cases / "runA" / "subtract" / "subtract"), "-o",
            str(tmp_path / "x"), "--model", str(model)]
    line = _one_line_error(runner.invoke(app, args))
    assert f"53 trees present, its header lists {len(trees) - 1}" in line and not list(tmp_path.glob("x_*"))
    # with the card's sha256: any change is refused
    model = _model_copy(tmp_path, text.replace("leaf_value=", "leaf_value=0 ", 1), card)
    assert "sha256" in _one_line_error(runner.invoke(app, args))
    # a child index out of range (crashed LightGBM's reader in filter): refused, exit 1, not 139
    first, rest = text.split("\nleft_child=", 1)
    values = rest.split("\n", 1)
    children = values[0].split()
    children[0] = "99999"
    bad = first + "\nleft_child=" + " ".join(children) + "\n" + values[1]
    # keep the byte count of the tree (tree_sizes) so that only the index is wrong
    bad = bad.replace("99999 ", "9999 ", 1) if len(bad) != len(text) else bad
    filter_card = {"features": list(card["features"]), "threshold": 0.5}
    model = _model_copy(tmp_path, bad, filter_card)
    result = runner.invoke(app, ["filter", "apply", str(cases / "A"), "-c",
                                 str(cases / "runA" / "subtract" / "subtract"), "-o", str(tmp_path / "f"),
                                 "--model", str(model)])
    line = _one_line_error(result)
    assert str(model) in line and "retrain" in line


def _edit_first_tree(text, key, values):
    """The model text with tree 0's ``key`` array set to ``values``, its tree_sizes entry kept true."""
    head, rest = text.split(f"\n{key}=", 1)
    line, tail = rest.split("\n", 1)
    new_line = " ".join(str(v) for v in values)
    sizes = text.split("tree_sizes=", 1)[1].split("\n", 1)[0].split()
    resized = " ".join([str(int(sizes[0]) + len(new_line) - len(line)), *sizes[1:]])
    edited = head + f"\n{key}=" + new_line + "\n" + tail
    return edited.replace("tree_sizes=" + " ".join(sizes), "tree_sizes=" + resized, 1)


def test_a_model_whose_nodes_do_not_form_a_tree_is_refused(tmp_path):
    """A child index in range can still make a cycle, on which LightGBM's prediction loops
    for ever (filter hung); or a node reached twice and another never."""
    from mstools.models import load_filter_model, packaged_model

    FILTER_DEFAULT = packaged_model("filter")
    text = FILTER_DEFAULT.read_text()
    card = json.loads(Path(str(FILTER_DEFAULT) + ".card.json").read_text())
    plain = {"features": card["features"], "threshold": 0.5}   # no sha256: the structure is what is checked
    left = [int(v) for v in text.split("\nleft_child=", 1)[1].split("\n", 1)[0].split()]
    right = [int(v) for v in text.split("\nright_child=", 1)[1].split("\n", 1)[0].split()]
    assert len(left) > 2
    loop = _edit_first_tree(_edit_first_tree(text, "left_child", [0, *left[1:]]), "right_child", [0, *right[1:]])
    twice = _edit_first_tree(text, "left_child", [right[0], *left[1:]])
    for bad in (loop, twice):
        with pytest.raises(InputError, match="do not form a tree"):
            load_filter_model(_model_copy(tmp_path, bad, plain))
    assert load_filter_model(_model_copy(tmp_path, text, plain))[0] == text


# 5 ------------------------------------------------------------------ silent wrong results


def _case_with(tmp_path, cases, **images):
    case = tmp_path / "case"
    shutil.copytree(cases / "A", case)
    for name, fill in images.items():
        ref = nib.load(case / name)
        data = np.asarray(ref.dataobj, dtype=np.float32)
        data = fill(data)
        save_nifti(case / name, data.astype(np.float32), ref.affine)
    return case


def test_degenerate_scans_and_non_finite_options_are_refused(cases, tmp_path):
    zero = _case_with(tmp_path / "z", cases, **{layout.BASELINE: lambda d: np.zeros_like(d)})
    line = _one_line_error(runner.invoke(app, ["segment", str(zero), "-o", str(tmp_path / "seg")]))
    assert "image is empty" in line and layout.BASELINE in line
    line = _one_line_error(runner.invoke(app, ["subtract", str(zero), "-o", str(tmp_path / "sub")]))
    assert "image is empty" in line
    huge = _case_with(tmp_path / "h", cases, **{layout.FOLLOWUP: lambda d: d * 0 + np.float32(1e30) * (d > 0)})
    line = _one_line_error(runner.invoke(app, ["subtract", str(huge), "-o", str(tmp_path / "sub")]))
    assert "overflow" in line
    huge_baseline = _case_with(tmp_path / "hb", cases, **{layout.BASELINE: lambda d: d * np.float32(1e30 / d.max())})
    line = _one_line_error(runner.invoke(app, ["segment", str(huge_baseline), "-o", str(tmp_path / "seg")]))
    assert "overflow" in line and layout.BASELINE in line and not list(tmp_path.glob("seg_*"))
    line = _one_line_error(runner.invoke(app, ["subtract", str(cases / "A"), "-o", str(tmp_path / "sub"),
                                               "--k", "nan"]))
    assert "--k nan: not a finite number" in line and not list(tmp_path.glob("sub_*"))
    config = tmp_path / "c.yaml"
    config.write_text(NO_REPORT + "subtract: {k: .nan}\n")
    line = _one_line_error(runner.invoke(app, ["run", str(cases / "A"), "-o", str(tmp_path / "R"), "-c",
                                               str(config)]))
    assert "config: subtract.k nan" in line and not (tmp_path / "R").exists()


# 6 ------------------------------------------------------------------ stage reuse


def test_a_truncated_stage_output_is_not_reused(cases, tmp_path):
    out = tmp_path / "R"
    shutil.copytree(cases / "runA", out)
    target = out / "filter" / "filter_mask.nii.gz"
    target.write_bytes(target.read_bytes()[:200])
    config = tmp_path / "c.yaml"
    config.write_text(NO_REPORT + "evaluate: false\n")
    result = runner.invoke(app, ["run", str(cases / "A"), "-o", str(out), "-c", str(config)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / rl.RUN_RECORD).read_text())
    assert record["stages"]["filter"]["status"] == "ran" and record["stages"]["subtract"]["status"] == "reused"
    assert read_mask(out / "new_lesions_mask.nii.gz").shape == read_mask(cases / "A" / layout.BRAIN_MASK).shape


def test_batch_does_not_skip_a_finished_case_whose_files_changed(cases, tmp_path):
    from mstools.pipeline.cohort import finished_record

    out = tmp_path / "A"
    shutil.copytree(cases / "runA", out)
    key = json.loads((out / rl.RUN_RECORD).read_text())["run_key"]
    assert finished_record(out, key) is not None
    for name in ("new_lesions_mask.nii.gz", rl.EVALUATION):
        saved = (out / name).read_bytes()
        (out / name).write_bytes(saved[:200])
        assert finished_record(out, key) is None, name
        (out / name).write_bytes(saved)
    assert finished_record(out, key) is not None


def test_a_run_that_starts_takes_the_folder_out_of_complete(cases, tmp_path, monkeypatch):
    """A run killed while it changes a finished folder leaves no run.json that calls it complete."""
    import mstools.pipeline.run as run

    out = tmp_path / "R"
    shutil.copytree(cases / "runA", out)

    def killed(*args, **kwargs):
        assert not (out / rl.RUN_RECORD).exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "_run", killed)
    result = runner.invoke(app, ["run", str(cases / "A"), "-o", str(out), "-c", str(cases / "nr.yaml")])
    assert result.exit_code == 130 and not (out / rl.RUN_RECORD).exists()
    assert (out / "subtract" / rl.STAGE_RECORD).is_file()   # the stages stay for reuse


# 7 ------------------------------------------------------------------ geometry


def test_singular_and_sheared_affines_are_refused_when_read(tmp_path):
    data = np.random.default_rng(0).random((6, 5, 4)).astype(np.float32)
    singular = oblique_affine()
    singular[:3, 2] = 0
    img = nib.Nifti1Image(data, oblique_affine())
    img.set_qform(None, code=0)
    img.set_sform(singular, code=2)  # as a broken converter writes it
    nib.save(img, tmp_path / "singular.nii.gz")
    with pytest.raises(InputError, match="singular"):
        read_image(tmp_path / "singular.nii.gz")
    sheared = oblique_affine()
    sheared[:3, 1] += 0.2 * sheared[:3, 0]
    img = nib.Nifti1Image(data, oblique_affine())
    img.set_qform(None, code=0)
    img.set_sform(sheared, code=2)
    nib.save(img, tmp_path / "sheared.nii.gz")
    with pytest.raises(InputError, match="sheared"):
        read_image(tmp_path / "sheared.nii.gz")
    save_nifti(tmp_path / "oblique.nii.gz", data, oblique_affine())
    assert read_image(tmp_path / "oblique.nii.gz").shape == data.shape  # rotation is fine


def test_a_lesion_of_exactly_3_mm3_on_a_float32_oblique_grid_is_not_counted(tmp_path):
    from mstools.metrics import evaluate_case
    from mstools.metrics.lesionwise import min_voxels

    affine = oblique_affine(spacing=(1.0, 1.0, 3.0), angles_deg=(17.0, -23.0, 5.0))
    stored = np.eye(4)
    stored[:3] = affine[:3].astype(np.float32)
    assert abs(np.linalg.det(stored[:3, :3])) != 3.0  # the round-off the rule must tolerate
    assert min_voxels(3.0, abs(np.linalg.det(stored[:3, :3]))) == 1
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[2, 2, 2] = 1                       # 3 mm3: not a lesion (must be > 3 mm3)
    truth[5:7, 5, 5] = 1                     # 6 mm3: a lesion
    assert evaluate_case(truth, truth, affine=stored).metrics["gt_lesions"] == 1


def test_evaluate_grid_mismatch_names_both_files(tmp_path):
    mask = np.zeros((6, 5, 4), np.uint8)
    mask[2, 2, 2] = 1
    pred = save_nifti(tmp_path / "pred.nii.gz", mask, oblique_affine())
    truth = save_nifti(tmp_path / "truth.nii.gz", mask, oblique_affine(origin=(0, 0, 0)))
    line = _one_line_error(runner.invoke(app, ["evaluate", str(pred), str(truth)]))
    assert str(pred) in line and str(truth) in line and "<in memory>" not in line


# 8 ------------------------------------------------------------------ the user's environment


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left"), (errno.EROFS, "cannot write here")])
def test_disk_full_or_read_only_is_one_line_naming_the_path(cases, tmp_path, monkeypatch, code, words):
    import mstools.io as io

    def failing(path, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(io, "write_tsv", failing)
    line = _one_line_error(runner.invoke(app, ["subtract", str(cases / "A"), "-o", str(tmp_path / "s")]), logs=True)
    assert words in line and str(tmp_path / "s") in line
    assert not list(tmp_path.iterdir())  # no output, no temporary


def test_an_output_path_that_is_a_folder_and_a_card_of_the_wrong_shape(cases, tmp_path):
    (tmp_path / "s_mask.nii.gz").mkdir()
    line = _one_line_error(runner.invoke(app, ["subtract", str(cases / "A"), "-o", str(tmp_path / "s"),
                                               "--force"]), logs=True)
    assert "is a folder" in line
    model = _model_copy(tmp_path, DEFAULT_REFINE.read_text(), [1, 2])
    line = _one_line_error(runner.invoke(app, ["filter", "apply", str(cases / "A"), "-c",
                                               str(cases / "runA" / "subtract" / "subtract"),
                                               "-o", str(tmp_path / "f"), "--model", str(model)]))
    assert "not a model card" in line
    card = json.loads(Path(str(DEFAULT_REFINE) + ".card.json").read_text())
    for change, words in (({"sampling": {"dilation": 3}}, "card's sampling"), ({"bias_sigma_mm": None}, "bias_sigma_mm")):
        model = _model_copy(tmp_path, DEFAULT_REFINE.read_text(), {**card, **change})
        line = _one_line_error(runner.invoke(app, ["refine", str(cases / "A"), "-c",
                                                   str(cases / "runA" / "subtract" / "subtract"),
                                                   "-o", str(tmp_path / "r"), "--model", str(model)]))
        assert words in line and str(model) in line and not list(tmp_path.glob("r_*"))
    line = _one_line_error(runner.invoke(app, ["run", str(cases / "A"), "-o", str(model), "-c",
                                               str(cases / "nr.yaml")]))
    assert "is a file, not a folder" in line


def test_a_deep_model_card_that_is_not_one_is_one_line(tmp_path):
    from mstools.models import card_path, read_card

    weights = tmp_path / "model.pt"
    for text in ("{broken", "[1, 2]"):
        card_path(weights).write_text(text)
        with pytest.raises(InputError, match="model card"):
            read_card(weights)


def test_an_environment_oserror_is_not_an_internal_error(cases, tmp_path):
    """A real OSError of the file system, in a real process (root included): the run
    folder's parent is a file, so the folder cannot be made (ENOTDIR). (The commands that
    write files check their paths first and refuse this before any OSError: see
    tests/test_output_folders.py.)"""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = subprocess.run([MSTOOLS, "run", str(cases / "A"), "-o", str(blocker / "x"), "-c", str(cases / "nr.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "internal error" not in result.stderr
    assert "Traceback" not in result.stderr and "cannot write" in result.stderr.strip().splitlines()[-1]
    assert blocker.read_text() == "not a folder"


# 9 ------------------------------------------------------------------ config checked before any stage


@pytest.mark.parametrize("config, message", [
    ("filter: {model: 3}", "filter.model must be a file path"),
    ("filter: {model: missing.txt}", "file not found"),
    ("refine: {model: [a, b]}", "refine.model must be one value"),
    ("filter: {min_contrast: {a: 1}}", "filter.min_contrast must be one value"),
    ("segment: {enabled: true, weights: c.yaml}", "not a readable mstools weight file"),
    ("register: {enabled: true, parameters: c.yaml}", "is not an elastix entry"),
])
def test_a_bad_config_value_is_one_line_before_any_stage(cases, tmp_path, config, message):
    path = tmp_path / "c.yaml"
    path.write_text(NO_REPORT + config + "\n")
    line = _one_line_error(runner.invoke(app, ["run", str(cases / "A"), "-o", str(tmp_path / "R"), "-c",
                                               str(path)]))
    assert message in line and not (tmp_path / "R").exists()


def test_a_one_voxel_candidates_shape_features_warn_nothing():
    """pyradiomics divides by a one-voxel candidate's zero eigenvalues: NaN features, and a NumPy
    warning that came before a failing run's one line (and in every filter's output)."""
    import warnings

    from mstools.candidates.filtering import candidate_features

    shape = (12, 12, 8)
    labels = np.zeros(shape, np.int32)
    labels[5, 5, 4] = 1                           # elongation and flatness: 0 / 0
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    rng = np.random.default_rng(0)
    scans = {name: rng.normal(100, 5, shape).astype(np.float32) for name in ("baseline", "followup")}
    with warnings.catch_warnings(record=True) as caught:   # (as errors they would be caught as a failure)
        warnings.simplefilter("always")
        rows = candidate_features(labels, **scans, brain=brain, affine=oblique_affine(), csf=np.zeros(shape, bool))
    assert [str(w.message) for w in caught] == []
    assert len(rows) == 1 and np.isnan(rows[0]["shape_Flatness"]) and np.isnan(rows[0]["shape_Elongation"])


# 10 ----------------------------------------------------------------- interruption


def test_stale_parts_are_removed_and_run_json_is_written_last(cases, tmp_path, monkeypatch):
    out = tmp_path / "R"
    shutil.copytree(cases / "runA", out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [out / f".new_lesions_mask.nii.gz.{dead.pid}.part.nii.gz", out / "filter" / f".x.tsv.{dead.pid}.part.tsv"]
    alive = out / f".other.tsv.{os.getpid() + 0}.part.tsv"
    for path in stale + [alive]:
        path.write_text("half")
    import mstools.report as report

    seen = {}

    def fake_report(run_dir, force=False):
        seen["status"] = json.loads((Path(run_dir) / rl.RUN_RECORD).read_text())["status"]
        return Path(run_dir) / rl.REPORT

    monkeypatch.setattr(report, "write_case_report", fake_report)
    config = tmp_path / "c.yaml"
    config.write_text("report: true\n")
    result = runner.invoke(app, ["run", str(cases / "A"), "-o", str(out), "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in stale) and alive.exists()   # a living process's part is kept
    assert seen["status"] == "reporting"   # the report is made before run.json says complete
    assert json.loads((out / rl.RUN_RECORD).read_text())["status"] == "complete"
    assert remove_stale_parts(out) == []


def test_ctrl_c_is_reported_as_an_interruption(cases, tmp_path, monkeypatch):
    import mstools.case

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mstools.case, "read_pair", interrupted)
    result = runner.invoke(app, ["subtract", str(cases / "A"), "-o", str(tmp_path / "s")])
    assert result.exit_code == 130 and "interrupted" in result.stderr and "error" not in result.stderr
    result = runner.invoke(app, ["run", str(cases / "A"), "-o", str(tmp_path / "R"), "-c", str(cases / "nr.yaml")])
    assert result.exit_code == 130, result.output
    assert "mstools run: interrupted" in result.stderr and "exited with code" not in result.stderr
    assert not (tmp_path / "R").exists()


def test_output_batch_cleans_its_temporaries_when_a_write_fails(tmp_path, monkeypatch):
    import mstools.io as io

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(io, "write_tsv", full)
    with pytest.raises(InputError, match="no space left"):
        with OutputBatch() as batch:
            batch.json(tmp_path / "a.json", {"a": 1})
            batch.table(tmp_path / "b.tsv", [], ["x"])
    assert not list(tmp_path.iterdir())


def test_each_missing_package_names_an_extra_that_exists():
    """mstools.errors.missing_extra's table names only extras of pyproject.toml, and a missing
    heavy package becomes a one-line InputError while any other missing module stays a bug."""
    import tomllib
    from pathlib import Path

    from mstools.errors import EXTRA_OF_PACKAGE, InputError, missing_extra

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert set(EXTRA_OF_PACKAGE.values()) <= set(extras)
    error = missing_extra(ModuleNotFoundError("No module named 'torch.nn'", name="torch.nn"))
    assert isinstance(error, InputError) and "[deep]" in str(error) and "\n" not in str(error)
    assert missing_extra(ModuleNotFoundError("No module named 'mstools.nothing'", name="mstools.nothing")) is None
