"""The command-line frame: help, version, exit codes, stdout/stderr split, sidecars."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from mstools_cli.main import app
from mstools import __version__
from mstools import case_layout as layout

runner = CliRunner()
FAST = ["--voxel-mm", "4", "--n-stable", "3", "--n-new", "2", "--n-enlarging", "0", "--n-shrinking", "0"]


def test_help_lists_every_subcommand():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in app.registered_commands:
        assert (name.name or name.callback.__name__) in result.stdout


@pytest.mark.parametrize("command", [c.name for c in app.registered_commands]
                         + [g.name for g in app.registered_groups])
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "mstools " + command in result.stdout.replace("\n", " ")


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"mstools {__version__}"


def test_usage_error_exits_2():
    assert runner.invoke(app, ["simulate"]).exit_code == 2
    assert runner.invoke(app, ["no-such-command"]).exit_code == 2
    assert runner.invoke(app, ["simulate", "x", "--voxel-mm", "0"]).exit_code == 2


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from mstools_cli.main import app; from typer.testing import CliRunner; "
            "CliRunner().invoke(app, ['--help']); "
            "print([m for m in ('torch', 'lightgbm', 'itk', 'radiomics', 'nilearn') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_simulate_writes_a_case_with_sidecars(tmp_path):
    case = tmp_path / "case"
    result = runner.invoke(app, ["simulate", str(case), "--seed", "2", *FAST, "--dtype", "int16"])
    assert result.exit_code == 0, result.stderr
    written = result.stdout.split()
    for name in (layout.BASELINE, layout.FOLLOWUP, layout.GROUND_TRUTH, layout.BRAIN_MASK,
                 layout.LESIONS_BASELINE, layout.LESIONS_FOLLOWUP, layout.TISSUES, layout.TRUTH):
        assert str(case / name) in written
    assert nib.load(case / layout.BASELINE).get_data_dtype() == np.int16
    assert nib.load(case / layout.GROUND_TRUTH).get_data_dtype() == np.uint8
    sidecar = json.loads((case / "ground_truth.json").read_text())
    assert sidecar["version"] == __version__ and sidecar["command"] == "simulate"
    assert sidecar["parameters"]["seed"] == 2
    truth = json.loads((case / layout.TRUTH).read_text())
    gt = np.asanyarray(nib.load(case / layout.GROUND_TRUTH).dataobj)
    assert truth["new_lesion_volume_mm3"] == pytest.approx(gt.sum() * 64.0)


def test_simulate_refuses_to_overwrite_without_force_and_writes_nothing_new(tmp_path):
    case = tmp_path / "case"
    assert runner.invoke(app, ["simulate", str(case), *FAST]).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in case.iterdir()}
    result = runner.invoke(app, ["simulate", str(case), *FAST, "--seed", "9"])
    assert result.exit_code == 1
    assert "already exists; pass --force" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert {p: p.stat().st_mtime_ns for p in case.iterdir()} == before
    assert runner.invoke(app, ["simulate", str(case), *FAST, "--seed", "9", "--force"]).exit_code == 0


def test_verbose_shows_the_traceback(tmp_path):
    not_a_folder = tmp_path / "c"
    not_a_folder.write_text("a file where the case folder should go")
    result = runner.invoke(app, ["-v", "simulate", str(not_a_folder), *FAST])
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "is not a folder" in result.stderr


def test_simulate_cohort_and_json(tmp_path):
    result = runner.invoke(app, ["simulate", str(tmp_path / "cohort"), "--cases", "2", "--seed", "4",
                                 *FAST, "--json"])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert [c["seed"] for c in payload["cases"]] == [4, 5]
    assert (tmp_path / "cohort" / "sim-005" / layout.FOLLOWUP).is_file()


def test_single_timepoint_case(tmp_path):
    result = runner.invoke(app, ["simulate", str(tmp_path / "one"), "--single-timepoint", *FAST])
    assert result.exit_code == 0, result.stderr
    assert layout.is_single_case(tmp_path / "one")
    assert not (tmp_path / "one" / layout.GROUND_TRUTH).exists()


def test_the_command_line_installs_as_mstools_cli_not_cli(tmp_path):
    """A package named `cli` in site-packages would collide with any other `cli` (issue 14)."""
    code = ("import importlib.util, mstools_cli.main; spec = importlib.util.find_spec('cli'); "
            "print(spec is None or 'mstools' not in str(spec.origin))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize("group", ["filter", "refine"])
def test_a_command_group_is_its_apply_command_in_help_and_in_errors(group, tmp_path):
    """`mstools filter --help` shows apply's options and names `train`; errors say the words typed."""
    for args in ([group, "--help"], [group]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0
        text = " ".join(result.stdout.split())
        assert "--candidates" in text and f"mstools {group} train --help" in text
    missing = tmp_path / "missing"
    result = runner.invoke(app, [group, str(missing), "-c", "x", "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and result.stderr.startswith(f"mstools {group}: error:")
    result = runner.invoke(app, [group, "train", str(missing), "-o", str(tmp_path / "m.txt")])
    assert result.exit_code != 0 and f"mstools {group}-train" not in result.stderr


def test_filter_train_names_its_own_option_when_candidates_are_missing(tmp_path):
    case = tmp_path / "sim"
    assert runner.invoke(app, ["-q", "simulate", str(case), "--seed", "4", *FAST]).exit_code == 0
    result = runner.invoke(app, ["filter", "train", str(case), "-o", str(tmp_path / "m.txt")])
    assert result.exit_code == 1
    assert "--candidates-name" in result.stderr and "--candidates CASE" not in result.stderr


def test_long_steps_report_progress_as_plain_lines_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    from mstools_cli import common

    monkeypatch.setattr(common.STATE, "level", 0)
    bar = common.progress_bar("segment", "windows")
    monkeypatch.setattr(bar, "plain_every_s", 0.0)
    with bar as update:                      # pytest's stderr is not a terminal
        for done in (1, 2, 3):
            update(done, 3)
    assert capsys.readouterr().err.splitlines() == ["segment: 1/3 windows", "segment: 2/3 windows",
                                                    "segment: 3/3 windows"]
    monkeypatch.setattr(common.STATE, "level", -1)       # -q: nothing
    with common.progress_bar("segment") as update:
        assert update is None


def test_the_terminal_bar_is_drawn_on_stderr_not_on_stdout(capsys, monkeypatch):
    """rich's default console is stdout, which carries results: the bars take stderr's."""
    import io

    from rich.console import Console

    from mstools_cli import common

    assert common.stderr_console().stderr
    screen = io.StringIO()
    monkeypatch.setattr(common, "stderr_console", lambda: Console(file=screen, force_terminal=True, width=80))
    bar = common.progress_bar("segment", "windows")
    bar.update(2, 4)
    bar.__exit__(None, None, None)
    assert "segment" in screen.getvalue() and "2/4" in screen.getvalue()
    assert capsys.readouterr().out == ""


def test_run_progress_plain_lines_name_the_stage_and_do_not_flood(capsys, monkeypatch):
    from mstools_cli import common

    monkeypatch.setattr(common.STATE, "level", 0)
    with common.run_progress(units={"segment": "windows"}) as progress:     # not a terminal: plain lines
        progress.plan(["subtract", "segment"])
        progress.finished("subtract", "reused")
        progress.started("segment")
        progress.step("segment", "loading the model")
        for done in range(1, 101):                 # a fast count: only its end is said
            progress.count("segment", done, 100)
        progress.finished("segment", "ran", 12.34)
    assert capsys.readouterr().err.splitlines() == [
        "[1/2] subtract: done earlier", "[2/2] segment: started", "[2/2] segment: loading the model",
        "[2/2] segment: 100/100 windows", "[2/2] segment: done in 12.3 s"]
    progress = common.run_progress()
    progress.plain_every_s = 0.0                  # a slow count: a line at most every plain_every_s
    with progress:
        progress.plan(["register"])
        for done in (1, 2):
            progress.count("register", done, 3)
    assert capsys.readouterr().err.splitlines() == ["[1/1] register: 1/3", "[1/1] register: 2/3"]
    monkeypatch.setattr(common.STATE, "level", -1)       # -q: nothing
    with common.run_progress() as progress:
        assert progress is None
