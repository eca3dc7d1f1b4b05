"""Every command creates the missing folders of its output (as `run` and `batch` always did)
and checks its output paths before the work (issue 16 item 1), with real runs.

"Before the work" is seen on stderr: each command logs its progress there as it works
(`subtract (prados): ...`, `filter: 15 candidates ...`, one line per training case), so a
refusal that comes after any work has more than the one error line.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mstools_cli.main import app
from mstools import case_layout as layout

runner = CliRunner()


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Two simulated 3 mm cases with new lesions, each with its subtraction candidates."""
    root = tmp_path_factory.mktemp("folders")
    for name, seed in (("A", 21), ("B", 22)):
        result = runner.invoke(app, ["simulate", str(root / name), "--seed", str(seed), "--voxel-mm", "3",
                                     "--n-new", "3", "--new-volume-mm3", "300", "1200", "--n-stable", "4"])
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["subtract", str(root / name), "-o", str(root / name / "subtract")])
        assert result.exit_code == 0, result.output
    (root / "afile").write_text("not a folder")
    return root


def refused_at_once(result, words):
    """Exit 1 with the error as the only line on stderr (no progress line: no work was done)."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert words in lines[0], lines[0]
    assert result.stdout == ""


def test_subtract_filter_and_refine_create_folders_and_refuse_before_the_work(cases, tmp_path):
    a = cases / "A"
    commands = {"subtract": ["subtract", str(a)],
                "filter": ["filter", str(a), "-c", str(a / "subtract")],
                "refine": ["refine", str(a), "-c", str(a / "subtract")]}
    for name, args in commands.items():
        prefix = tmp_path / "out" / name / "deeper" / name
        result = runner.invoke(app, [*args, "-o", str(prefix)])
        assert result.exit_code == 0, result.output
        assert (prefix.parent / f"{name}_mask.nii.gz").is_file() and (prefix.parent / f"{name}_mask.json").is_file()
        # the same again: refused before reading the scans (no 'subtract (prados): ...' line)
        refused_at_once(runner.invoke(app, [*args, "-o", str(prefix)]), "already exists; pass --force")
        # a file on the way: refused before the work, and no folder is made
        refused_at_once(runner.invoke(app, [*args, "-o", str(cases / "afile" / "sub" / name)]),
                        "is a file, not a folder")
        assert runner.invoke(app, [*args, "-o", str(prefix), "--force"]).exit_code == 0


def test_filter_train_and_refine_train_create_folders_and_refuse_before_the_work(cases, tmp_path):
    pytest.importorskip("lightgbm")
    both = [str(cases / "A"), str(cases / "B")]
    commands = {"filter.txt": ["filter", "train", *both],
                "refine.txt": ["refine", "train", *both, "--cv-folds", "0", "--max-rounds", "5"]}
    for name, args in commands.items():
        model = tmp_path / "models" / "new" / name
        result = runner.invoke(app, [*args, "-o", str(model)])
        assert result.exit_code == 0, result.output
        assert model.is_file() and model.with_name(name + ".card.json").is_file()
        # one '<case>: N candidates' line per case comes with the work: none here
        refused_at_once(runner.invoke(app, [*args, "-o", str(model)]), "already exists; pass --force")
        refused_at_once(runner.invoke(app, [*args, "-o", str(cases / "afile" / "m" / name)]),
                        "is a file, not a folder")


def test_a_card_left_without_its_model_is_refused_before_training(cases, tmp_path):
    pytest.importorskip("lightgbm")
    model = tmp_path / "filter.txt"
    model.with_name("filter.txt.card.json").write_text("{}")
    refused_at_once(runner.invoke(app, ["filter", "train", str(cases / "A"), str(cases / "B"), "-o", str(model)]),
                    "filter.txt.card.json: already exists")


def test_simulate_refuses_before_simulating(cases, tmp_path):
    args = ["simulate", "--seed", "1", "--voxel-mm", "4", "--n-stable", "1", "--n-new", "1"]
    refused_at_once(runner.invoke(app, [*args, str(cases / "afile" / "sim" / "case01")]), "is a file, not a folder")
    # an existing case: refused before the 'simulating ...' line
    refused_at_once(runner.invoke(app, [*args, str(cases / "A")]), "already exists; pass --force")
    cohort = runner.invoke(app, [*args, "--cases", "2", str(tmp_path / "new" / "cohort")])
    assert cohort.exit_code == 0, cohort.output
    assert (tmp_path / "new" / "cohort" / "sim-002" / layout.GROUND_TRUTH).is_file()


def test_evaluate_run_report_and_batch_create_folders_and_refuse_before_the_work(cases, tmp_path):
    a = cases / "A"
    mask, truth = str(a / "subtract_mask.nii.gz"), str(a / layout.GROUND_TRUTH)
    result = runner.invoke(app, ["evaluate", mask, truth, "--out", str(tmp_path / "ev" / "new" / "a")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ev" / "new" / "a_cases.tsv").is_file()
    refused_at_once(runner.invoke(app, ["evaluate", mask, truth, "--out", str(cases / "afile" / "x" / "a")]),
                    "is a file, not a folder")

    config = tmp_path / "no_report.yaml"
    config.write_text("report: false\n")
    run = tmp_path / "runs" / "new" / "A"
    result = runner.invoke(app, ["run", str(a), "-o", str(run), "-c", str(config)])
    assert result.exit_code == 0, result.output
    page = tmp_path / "pages" / "new" / "A.html"
    result = runner.invoke(app, ["report", str(run), "-o", str(page)])
    assert result.exit_code == 0, result.output
    assert page.read_text().startswith("<!DOCTYPE html>")
    refused_at_once(runner.invoke(app, ["report", str(run), "-o", str(page)]), "already exists; pass --force")
    refused_at_once(runner.invoke(app, ["report", str(run), "-o", str(cases / "afile" / "A.html")]),
                    "is a file, not a folder")

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "A").symlink_to(a)
    # batch refuses before it starts its Dask cluster or runs any case
    refused_at_once(runner.invoke(app, ["batch", str(cohort), "-o", str(cases / "afile" / "deriv")]),
                    "is a file, not a folder")
    assert not any((tmp_path / "runs" / "new").glob("*.lock"))
