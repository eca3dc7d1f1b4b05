"""The library under the command line (issue 14): jobs, their options, the pipeline as functions.

A command and its pipeline stage call the same job with the same options dataclass; these
tests hold the declarations, the library defaults and the layering together.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import shutil
import subprocess
import sys
from enum import Enum
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mstools import pipeline
from mstools.errors import InputError
from mstools.jobs.options import build, command_line, specs
from mstools_cli.main import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _command(stage):
    """The Python function behind a stage's command (its Typer signature)."""
    from mstools_cli import filter as cli_filter
    from mstools_cli import activity, preprocess, refine, register, segment, subtract

    return {"preprocess": preprocess.preprocess_command, "subtract": subtract.subtract_command,
            "register": register.register_command, "segment": segment.segment_command,
            "refine": refine.refine_apply, "filter": cli_filter.filter_apply,
            "activity": activity.activity_command}[stage]


@pytest.mark.parametrize("stage", list(pipeline.STAGES))
def test_a_command_offers_exactly_its_jobs_options_with_the_same_defaults(stage):
    options = pipeline.STAGES[stage].options
    params = inspect.signature(inspect.unwrap(_command(stage))).parameters
    for name, spec in specs(options).items():
        default = params[name].default.default
        assert (default.value if isinstance(default, Enum) else default) == spec.default, name
        assert params[name].default.help == spec.help
    inputs = {"case", "candidates", "out", "output", "baseline", "followup", "brain_mask", "tissues",
              "baseline_mask", "followup_mask", "baseline_lesions", "followup_lesions", "lesion_features",
              "force", "as_json", "run", "new", "baseline_t1", "followup_t1", "baseline_t2",
              "followup_t2"} - set(specs(options))    # an input may be a job option
    assert set(params) - inputs == set(specs(options))


def test_job_defaults_are_the_library_defaults():
    from mstools.detect import subtraction
    from mstools.candidates.filtering import FilterRules
    from mstools.jobs import filter as job_filter
    from mstools.jobs import subtract as job_subtract
    from mstools.jobs.preprocess import PreprocessJobOptions
    from mstools.pipeline.cohort import MEMORY_PER_WORKER
    from mstools.preprocess import PreprocessOptions
    from mstools.preprocess.harmonise import DEFAULT_METHOD
    from mstools_cli import batch

    assert (job_subtract.PRADOS_K_SD, job_subtract.HAMZAOUI_RATIO, job_subtract.DIFFERENTIAL_BIAS_SIGMA_MM,
            job_subtract.PRADOS_CORE_EROSION_MM, job_subtract.PRADOS_NOISE, job_subtract.NOISE_ESTIMATES,
            job_subtract.MIN_FOLLOWUP_SD, job_subtract.MIN_PEAK_SD) == (
        subtraction.PRADOS_K_SD, subtraction.HAMZAOUI_RATIO, subtraction.DIFFERENTIAL_BIAS_SIGMA_MM,
        subtraction.PRADOS_CORE_EROSION_MM, subtraction.PRADOS_NOISE, subtraction.NOISE_ESTIMATES,
        subtraction.MIN_FOLLOWUP_SD, subtraction.MIN_PEAK_SD)
    rules = FilterRules()
    assert (job_filter.MIN_LEAST_AXIS_MM, job_filter.MIN_SPHERICITY, job_filter.MIN_NEIGHBOUR_CONTRAST,
            job_filter.MIN_WM_FRACTION) == (rules.min_least_axis_mm, rules.min_sphericity,
                                           rules.min_neighbour_contrast, rules.min_wm_fraction)
    assert job_filter.FilterOptions().rules() == rules
    from mstools.candidates.filtering import CONFIRM_MIN_SCORE
    assert job_filter.CONFIRM_MIN_SCORE == CONFIRM_MIN_SCORE == job_filter.FilterOptions().confirm_min
    from mstools.candidates.filtering import ADDED_MIN_BASELINE
    assert job_filter.ADDED_MIN_BASELINE == ADDED_MIN_BASELINE == job_filter.FilterOptions().added_min_baseline
    job, library = PreprocessJobOptions(), PreprocessOptions()
    assert (job.brain_extraction, job.combine, job.bias_correction, job.n4_shrink, job.space, job.harmonisation) == (
        library.brain_extraction, library.combine_masks, library.bias_correction, library.n4_shrink, library.space,
        library.harmonisation) and job.harmonisation == DEFAULT_METHOD
    assert batch.MEMORY_PER_WORKER == MEMORY_PER_WORKER


def test_config_values_are_read_as_the_command_line_reads_them():
    from mstools.jobs.refine import RefineOptions
    from mstools.jobs.register import RegisterOptions

    options = build(RefineOptions, {"threshold": "0.3", "min_voxels": 5, "region": "brain", "model": None})
    assert options.threshold == 0.3 and options.min_voxels == 5 and options.region == "brain"
    assert options.model is None   # None keeps the command's default
    for values, message in (({"threshold": 2}, "Input should be less than or equal to 1"),
                            ({"threshold": "nan"}, "Input should be less than or equal to 1"),
                            ({"min_voxels": -1}, "Input should be greater than or equal to 0"),
                            ({"min_voxels": "2.5"}, "Input should be a valid integer"),
                            ({"region": "skull"}, "'skull' is not one of 'candidates', 'brain'"),
                            ({"colour": 1}, "no option 'colour'")):
        with pytest.raises(InputError, match=message):
            build(RefineOptions, values)
    assert command_line(RegisterOptions, {"parameters": ["a.txt", "b.txt"], "register_in_mask": True,
                                          "threshold": None}) == \
        ["--parameters", "a.txt", "--parameters", "b.txt", "--register-in-mask"]


def test_run_case_is_the_run_command(tmp_path):
    """The library function gives what `mstools run` gives, byte for byte, without the command line."""
    case = tmp_path / "sim"
    result = runner.invoke(app, ["simulate", str(case), "--seed", "11", "--voxel-mm", "3", "--n-new", "3",
                                 "--new-volume-mm3", "300", "1200", "--n-stable", "4"])
    assert result.exit_code == 0, result.output
    config, base = pipeline.load_config(None)
    config["report"] = False
    heard = Heard()
    ran = pipeline.run_case(pipeline.CaseInput("sim", folder=case), tmp_path / "library", config, base,
                            progress=heard)
    assert ran.record["status"] == "complete" and [row["stage"] for row in ran.evaluation] == [
        "subtract", "segment", "refine", "filter", "activity"]
    # the progress hook hears the plan, then each stage start and end, in order
    assert heard.events[0] == ("plan", ["subtract", "segment", "refine", "filter", "activity"])
    # (segment also reports its slices as counted steps)
    assert [e[:3] for e in heard.events[1:] if e[0] != "count"] == [
                                                 ("started", "subtract"), ("finished", "subtract", "ran"),
                                                 ("started", "segment"), ("finished", "segment", "ran"),
                                                 ("started", "refine"), ("finished", "refine", "ran"),
                                                 ("started", "filter"), ("finished", "filter", "ran"),
                                                 ("started", "activity"), ("finished", "activity", "ran")]
    again = Heard()
    pipeline.run_case(pipeline.CaseInput("sim", folder=case), tmp_path / "library", config, base, progress=again)
    assert again.events[1:] == [("finished", stage, "reused", 0.0)
                                for stage in ("subtract", "segment", "refine", "filter", "activity")]
    (tmp_path / "c.yaml").write_text("report: false\n")
    result = runner.invoke(app, ["run", str(case), "-o", str(tmp_path / "command"), "-c", str(tmp_path / "c.yaml")])
    assert result.exit_code == 0, result.output
    for name in ("new_lesions_mask.nii.gz", "new_lesions_labels.nii.gz", "subtract/subtract_mask.nii.gz",
                 "refine/refine_mask.nii.gz"):
        assert (tmp_path / "library" / name).read_bytes() == (tmp_path / "command" / name).read_bytes(), name
    broken = tmp_path / "broken"
    shutil.copytree(case, broken)
    (broken / "flair_time02_on_middle_space.nii.gz").write_bytes(b"not a nifti")
    failing = Heard()
    with pytest.raises(pipeline.StageFailed) as failed:
        pipeline.run_case(pipeline.CaseInput("broken", folder=broken), tmp_path / "x", config, base,
                          progress=failing)
    assert failed.value.stage == "subtract" and not (tmp_path / "x").exists()
    assert failing.events[1:] == [("started", "subtract")]


class Heard(pipeline.RunProgress):
    """A progress hook that keeps what it hears."""

    def __init__(self):
        self.events = []

    def plan(self, stages):
        self.events.append(("plan", stages))

    def started(self, stage):
        self.events.append(("started", stage))

    def finished(self, stage, status, seconds=0.0):
        self.events.append(("finished", stage, status, seconds))

    def step(self, stage, message):
        self.events.append(("step", stage, message))

    def count(self, stage, done, total):
        self.events.append(("count", stage, done, total))


@pytest.mark.parametrize("stage, job, hook", [("preprocess", "preprocess", "step"), ("register", "register", "step"),
                                               ("segment", "segment", "count")])
def test_a_stage_gives_its_job_the_runs_progress_hook(stage, job, hook, monkeypatch, tmp_path):
    """preprocess's steps, register's elastix stages and segment's windows reach `mstools run`'s display."""
    import importlib

    module = importlib.import_module(f"mstools.jobs.{job}")
    seen = {}
    monkeypatch.setattr(module, f"{job}_job", lambda *args, **kwargs: seen.update(kwargs))
    config, base = pipeline.load_config(None)
    case = pipeline.CaseInput("c", baseline=tmp_path / "b.nii.gz", followup=tmp_path / "f.nii.gz")
    hooks = {"step": lambda message: None, "count": lambda done, total: None}
    context = pipeline.stages.StageContext(case, tmp_path / "case", tmp_path / "run", config,
                                           pipeline.stage_options(pipeline.STAGES[stage], config[stage], base),
                                           **hooks)
    pipeline.STAGES[stage].run(context)
    assert seen["progress"] is hooks[hook]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_the_library_never_imports_the_command_line_or_its_frameworks():
    for path in (ROOT / "mstools").rglob("*.py"):
        bad = {m for m in _imports(path) if m.split(".")[0] in ("typer", "click", "cli", "mstools_cli")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
    for path in (ROOT / "benchmarks").rglob("*.py"):
        bad = {m for m in _imports(path) if m.split(".")[0] in ("cli", "mstools_cli")}
        assert not bad, f"{path.relative_to(ROOT)} imports the command line (run it as a program instead)"


def test_no_import_loops():
    """Module imports (at the top or inside functions) form no cycle, in mstools and in mstools_cli."""
    modules = {}
    for package, folder in (("mstools", ROOT / "mstools"), ("mstools_cli", ROOT / "cli")):
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def known(name: str):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {known(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets |= {known(f"{node.module}.{a.name}") or known(node.module) for a in node.names}
        graph[name] = {t for t in targets if t and t != name}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for target in graph[node]:
            if state.get(target) == 1:
                pytest.fail("import loop: " + " -> ".join(trail[trail.index(target):] + [target]))
            if target not in state:
                visit(target, trail + [target])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_every_mstools_import_names_a_module_of_this_tree():
    """A stale import of a moved module fails here: an editable install of another checkout
    would otherwise serve its old copy silently (issue 14 moved modules into role folders)."""
    from mstools import _API
    from mstools.detect.deep.networks import NETWORKS

    modules = set()
    for package, folder in (("mstools", ROOT / "mstools"), ("mstools_cli", ROOT / "cli")):
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    stale = set()
    for folder in ("mstools", "cli", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
                stale |= {f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.split(".")[0] in ("mstools", "mstools_cli") and n not in modules}
    stale |= {f"mstools._API: {m}" for m in _API.values() if m not in modules}
    stale |= {f"networks: {n.module}" for n in NETWORKS.values() if n.module not in modules}
    assert not stale, sorted(stale)


def test_import_mstools_is_light_and_the_api_is_lazy():
    code = ("import sys, mstools; light = [m for m in ('numpy', 'scipy', 'nibabel', 'torch') if m in sys.modules]; "
            "f = mstools.run_case; print(light, f.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] mstools.pipeline.run"


def test_options_dataclasses_are_frozen_and_declared():
    for stage in pipeline.STAGES.values():
        assert dataclasses.is_dataclass(stage.options) and stage.options.__dataclass_params__.frozen
        assert specs(stage.options), stage.name


def test_light_defaults_written_as_literals_are_the_library_defaults():
    """Defaults a command shows in --help without importing the heavy module that owns them."""
    from mstools.jobs.simulate import Defaults
    from mstools.report.figures import DEFAULT_MAX_LESIONS
    from mstools.simulate.case import SimulationConfig
    from mstools_cli import report

    config = SimulationConfig()
    for name, value in vars(Defaults).items():
        if not name.startswith("_"):
            assert getattr(config, name) == value, name
    assert report.DEFAULT_MAX_LESIONS == DEFAULT_MAX_LESIONS


def test_the_network_registry_builds_every_model():
    from mstools.detect.deep import MODELS
    from mstools.detect.deep.config import SMALL_CONFIGS
    from mstools.detect.deep.networks import NETWORKS, build_model
    from mstools.detect.deep.predictor import OUTPUT_NAMES

    assert tuple(NETWORKS) == MODELS and set(OUTPUT_NAMES) == set(MODELS)
    for name in MODELS:
        assert type(build_model(SMALL_CONFIGS[name])).__name__ == NETWORKS[name].cls
