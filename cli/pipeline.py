"""The default hybrid chain of `mstools run`: stages, their configuration, and running them.

Each stage is one of the subcommands, run in this process with the arguments the
configuration gives (so a stage does exactly what the command does by hand). The
configuration's defaults are not written here: they are read from the commands'
own option defaults, so ``mstools run --print-config`` can never disagree with
``mstools <stage> --help``.

A stage is skipped when its key (mstools version, options, model files, the keys of
the stages it reads and the sha256 of the case's input files) equals the one recorded
in ``RUN/<stage>/stage.json`` and its outputs are still there.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import shutil
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable, Mapping, Optional

from mstools import __version__
from mstools import case_layout as layout
from mstools import run_layout as rl
from mstools.cohort_inputs import CaseInput
from mstools.errors import InputError


class StageFailed(InputError):
    """A stage stopped on bad input; ``stage`` says which, the message says why."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.detail = message

    def __reduce__(self):  # picklable across Dask workers
        return (StageFailed, (self.stage, self.detail))


@dataclass(frozen=True)
class Stage:
    """One stage: the command it runs, the options the pipeline sets itself, its own keys."""

    name: str
    command: tuple[str, ...]
    reserved: frozenset[str]
    #: Pipeline-only keys: name -> (default, comment).
    own: Mapping[str, tuple[object, str]] = field(default_factory=dict)
    about: str = ""


_ALWAYS_RESERVED = {"force", "as_json"}

STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("preprocess", ("preprocess",),
          frozenset({"baseline", "followup", "output", "baseline_mask", "followup_mask", "baseline_lesions",
                     "followup_lesions"}),
          about="Runs only when the input is two raw scans (not a case folder)."),
    Stage("subtract", ("subtract",),
          frozenset({"case", "out", "baseline", "followup", "brain_mask", "tissues"}),
          about="Candidate new lesions from the subtraction image (paper 001)."),
    Stage("register", ("register",),
          frozenset({"followup", "baseline", "output", "followup_mask", "baseline_mask"}),
          own={"enabled": (False, "Registration-based detection with elastix (slower: ~45 s on a 1 mm pair).")},
          about="Candidates from the subtraction after deformable registration."),
    Stage("segment", ("segment",),
          frozenset({"case", "baseline", "followup", "output"}),
          own={"enabled": (False, "Learned segmentation (PyTorch; 8-50 s per 1 mm case on 2 CPU cores).")},
          about="Deep-learning new-lesion segmentation."),
    Stage("refine", ("refine", "apply"),
          frozenset({"case", "candidates", "out", "baseline", "followup", "brain_mask", "lesion_features"}),
          own={"enabled": (True, "LightGBM voxel-wise refinement (Prados & Kanber, paper 001)."),
               "candidates": ("subtract", "The stage whose candidates are refined: subtract, filter, register "
                                          "or segment.")},
          about="Voxel-wise refinement of one detector's candidates."),
    Stage("filter", ("filter", "apply"),
          frozenset({"case", "candidates", "out", "baseline", "followup", "brain_mask", "tissues",
                     "baseline_lesions"}),
          own={"enabled": (True, "Filter candidates by shape, contrast and location."),
               "candidates": ("refine", "The stage whose candidates are filtered: subtract, refine, register or "
                                        "segment. Measured (benchmarks/pipeline_chain.py): filtering refine's "
                                        "output gives the best lesion F1 and Dice.")},
          about="The packaged learned filter (learned: true, the run's default), La Rosa et al.'s rules (learned: false; paper 001), or your model:."),
)}

#: `mstools apply-transform`, run by the pipeline to carry masks in and out of the middle space.
_APPLY_TRANSFORM = Stage("preprocess", ("apply-transform",), frozenset())

#: Top-level keys: name -> (default, comment).
TOP_LEVEL: dict[str, tuple[object, str]] = {
    "final": ("filter", "The stage whose output is the final new-lesion mask (RUN/new_lesions_*)."),
    "evaluate": (True, "Evaluate every detector stage when a ground truth is known (RUN/evaluation.tsv)."),
    "report": (True, "Write RUN/report.html."),
}

#: Where `mstools run` departs from a command's own default, and why (written once here).
#: refine's paper post-processing (27 voxels, minor axis >= 2 voxels; Prados & Kanber,
#: paper 001) drops the many small new lesions (a quarter of simulated new lesions are
#: under 11 mm3). Measured with benchmarks/pipeline_chain.py: on 18 cases (data_samples,
#: seeds 1000-1009, hard 1020-1024) the chain subtract -> refine (>= 5 voxels, La Rosa
#: et al.'s size, no axis limit) -> filter reached lesion F1 0.657 / Dice 0.659, against
#: 0.541 / 0.523 for subtract -> filter -> refine with the paper's sizes and 0.590 / 0.490
#: for subtract -> filter; confirmed on 10 other cases (seeds 1010-1019): 0.775 / 0.717,
#: against 0.499 / 0.500 and 0.642 / 0.487. The size is written in mm3 (5 voxels of 1 mm)
#: so that it means the same on a 0.72 x 0.72 x 3 mm clinical grid (issue "Real clinical scans").
#:
#: subtract k = 2.5 and the packaged learned filter (both stages' models retrained on the
#: mixed domain: simulated 1 mm / 1.5 mm / thick-slice / clinical 2D pairs and new lesions
#: injected into real scans and the development real pair; benchmarks/train_mixed_domain.py)
#: were chosen on 14 validation cases (5 simulated 1 mm, data_samples, 5 real scans with
#: injected lesions, real development patient 01): mean lesion F1 0.566, LTPR 0.579, LFPR
#: 0.179, Dice 0.581, against 0.499 / 0.501 / 0.126 / 0.521 for the 1 mm-trained refine and
#: La Rosa's rules on the same candidates; on the injected real scans sensitivity 0.373 vs
#: 0.137; on 1 mm simulations F1 0.815 / Dice 0.780 against 0.770 / 0.756 for the chain at
#: k = 3 with the 1 mm models. Real pairs' new and enlarging lesions are faint (follow-up /
#: baseline 1.1-1.4): at k = 3 subtract misses a third of those that k = 2.5 finds.
RUN_OVERRIDES: dict[str, dict[str, object]] = {
    "subtract": {"k": 2.5},
    "refine": {"min_volume_mm3": 5.0, "min_minor_axis": 0.0},
    "filter": {"learned": True},
}

#: Options whose value is a file: relative paths are taken from the config file's folder.
PATH_OPTIONS = {"filter": {"model"}, "refine": {"model"}, "segment": {"weights"}, "register": {"parameters"}}


# ----------------------------------------------------------------------------------
# Commands and their options


@functools.lru_cache(maxsize=1)
def _app_command():
    """The whole `mstools` click command tree, built once per process."""
    import typer

    from cli.main import app

    return typer.main.get_command(app)


def _click_command(stage: Stage):
    """The Typer (click) command object of a stage."""
    command = _app_command()
    for part in stage.command:
        command = command.commands[part]  # type: ignore[attr-defined]
    return command


def _options(stage: Stage) -> dict:
    """The configurable options of a stage: name -> click option (defaults, help, flags)."""
    reserved = stage.reserved | _ALWAYS_RESERVED
    return {p.name: p for p in _click_command(stage).params
            if p.param_type_name == "option" and p.name not in reserved}


def _plain(value: object) -> object:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


def default_config() -> dict:
    """Every key with its default, read from the commands."""
    config: dict = {key: default for key, (default, _) in TOP_LEVEL.items()}
    for stage in STAGES.values():
        values = {key: default for key, (default, _) in stage.own.items()}
        values.update({name: _plain(option.default) for name, option in _options(stage).items()})
        values.update(RUN_OVERRIDES.get(stage.name, {}))
        config[stage.name] = values
    return config


def _yaml_scalar(value: object) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _comment(text: str) -> str:
    return " ".join((text or "").split())


def default_config_text() -> str:
    """The default configuration as a commented YAML document (`mstools run --print-config`)."""
    lines = [f"# mstools run configuration (mstools {__version__}): every default written out.",
             "# A config file of your own needs only the keys it changes; the rest keep these values.",
             "# Stage options are the options of `mstools <stage> --help`, dashes written as underscores.", ""]
    for key, (default, comment) in TOP_LEVEL.items():
        lines += [f"# {comment}", f"{key}: {_yaml_scalar(default)}"]
    for stage in STAGES.values():
        lines += ["", f"{stage.name}:  # {stage.about}"]
        for key, (default, comment) in stage.own.items():
            lines += [f"  # {comment}", f"  {key}: {_yaml_scalar(default)}"]
        for name, option in _options(stage).items():
            default = _plain(option.default)
            comment = _comment(option.help)
            if name in RUN_OVERRIDES.get(stage.name, {}):
                comment += (f" mstools run uses {RUN_OVERRIDES[stage.name][name]} instead of the command's {default}: "
                            "measured, see cli/pipeline.py RUN_OVERRIDES.")
                default = RUN_OVERRIDES[stage.name][name]
            if isinstance(option.default, Enum):
                comment += f" [{' | '.join(m.value for m in type(option.default))}]"
            lines += [f"  # {comment}", f"  {name}: {_yaml_scalar(default)}"]
    return "\n".join(lines) + "\n"


def load_config(path: Optional[Path]) -> tuple[dict, Path]:
    """The defaults overlaid with a YAML file's values; unknown keys are errors.

    Returns the configuration and the folder that relative model paths are taken from.
    """
    config = default_config()
    if path is None:
        return config, Path.cwd()
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found; write one from `mstools run --print-config`")
    try:
        given = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = " ".join(str(exc).split())
        raise InputError(f"{path}: not valid YAML ({first}); compare with `mstools run --print-config`") from None
    if not isinstance(given, dict):
        raise InputError(f"{path}: a mapping of keys was expected at the top; see `mstools run --print-config`")
    for key, value in given.items():
        if key not in config:
            raise InputError(f"{path}: unknown key {key!r}; valid keys: {', '.join(config)}")
        if key in STAGES:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise InputError(f"{path}: {key} must hold options (key: value lines), not {value!r}")
            for option, option_value in value.items():
                if option not in config[key]:
                    raise InputError(f"{path}: {key} has no option {option!r}; valid: {', '.join(config[key])}")
                config[key][option] = option_value
        else:
            config[key] = value
    return config, path.resolve().parent


def check_config(config: dict) -> None:
    """Errors a run would otherwise meet halfway: bad values of any stage's options."""
    import typer

    if config["final"] not in rl.DETECTORS:
        raise InputError(f"config: final must be one of {', '.join(rl.DETECTORS)}, not {config['final']!r}")
    for key in ("evaluate", "report"):
        if not isinstance(config[key], bool):
            raise InputError(f"config: {key} must be true or false, not {config[key]!r}")
    for stage in STAGES.values():
        for key in stage.own:
            if key == "enabled" and not isinstance(config[stage.name][key], bool):
                raise InputError(f"config: {stage.name}.enabled must be true or false")
    sources = {"refine": ("subtract", "filter", "register", "segment"),
               "filter": ("subtract", "refine", "register", "segment")}
    for stage, allowed in sources.items():
        source = config[stage]["candidates"]
        if source not in allowed:
            raise InputError(f"config: {stage}.candidates must be {', '.join(allowed)}, not {source!r}")
        if _enabled(config, stage) and not _enabled(config, source):
            raise InputError(f"config: {stage} reads the {source} candidates but {source} is not enabled; "
                             f"enable it or set {stage}.candidates")
    if (_enabled(config, "refine") and _enabled(config, "filter") and config["refine"]["candidates"] == "filter"
            and config["filter"]["candidates"] == "refine"):
        raise InputError("config: refine reads filter's candidates and filter reads refine's; one of them must "
                         "read subtract (or register, segment)")
    if not _enabled(config, config["final"]):
        raise InputError(f"config: final is {config['final']} but that stage is not enabled")
    from cli.common import check_finite_options

    for stage in STAGES.values():
        if stage.name == "preprocess" or _enabled(config, stage.name):
            options = _options(stage)
            for name, value in config[stage.name].items():
                if name in stage.own or value is None:
                    continue
                if isinstance(value, dict) or (isinstance(value, list) and not options[name].multiple):
                    raise InputError(f"config: {stage.name}.{name} must be one value, not {value!r}")
                if name in PATH_OPTIONS.get(stage.name, ()) and not all(
                        isinstance(v, str) for v in (value if isinstance(value, list) else [value])):
                    raise InputError(f"config: {stage.name}.{name} must be a file path, not {value!r}")
            args = stage_options_args(stage, config[stage.name], Path("."))
            command = _click_command(stage)
            placeholders = _placeholder_args(stage)
            try:
                context = command.make_context(f"mstools {' '.join(stage.command)}", [*placeholders, *args],
                                               resilient_parsing=False)
            except typer.TyperException as exc:
                raise InputError(f"config: {stage.name}: {_message(exc)}") from None
            check_finite_options({k: v for k, v in context.params.items() if k in options},
                                 where=f"config: {stage.name}.")


def check_config_files(config: dict, base: Path) -> None:
    """The files a configuration names exist, and models match their cards (before any stage)."""
    for stage, names in PATH_OPTIONS.items():
        if not _enabled(config, stage):
            continue
        for name in names:
            value = config[stage].get(name)
            for item in (value if isinstance(value, list) else [value]):
                if item is None:
                    continue
                path = _resolve(base, item)
                if not path.is_file():
                    raise InputError(f"config: {stage}.{name}: {path}: file not found (relative paths are taken "
                                     "from the config file's folder)")
                if (stage, name) == ("filter", "model"):
                    from cli.filter import _load_model

                    _load_model(path)
                elif (stage, name) == ("refine", "model"):
                    from cli.refine import load_model

                    load_model(path)


def _message(exc: Exception) -> str:
    format_message = getattr(exc, "format_message", None)
    return " ".join((format_message() if format_message else str(exc)).split())


def _placeholder_args(stage: Stage) -> list[str]:
    """Arguments that let an option-only parse succeed (never run)."""
    command = _click_command(stage)
    placeholders: list[str] = []
    for p in command.params:
        if p.param_type_name == "argument" and p.required:
            placeholders.append("placeholder")
        elif p.param_type_name == "option" and p.required:
            placeholders += [p.opts[0], "placeholder"]
    return placeholders


def _enabled(config: dict, stage: str) -> bool:
    return bool(config[stage].get("enabled", True))


def stage_options_args(stage: Stage, values: Mapping[str, object], base: Path) -> list[str]:
    """Command-line options for a stage's configured values (None: the command's default)."""
    options = _options(stage)
    args: list[str] = []
    for name, value in values.items():
        if name in stage.own or value is None:
            continue
        option = options[name]
        if name in PATH_OPTIONS.get(stage.name, ()):
            value = [str(_resolve(base, v)) for v in value] if isinstance(value, list) else str(_resolve(base, value))
        if option.is_flag:
            if not isinstance(value, bool):
                raise InputError(f"config: {stage.name}.{name} must be true or false, not {value!r}")
            if value:
                args.append(option.opts[0])
            elif option.secondary_opts:
                args.append(option.secondary_opts[0])
        elif option.multiple:
            for item in value if isinstance(value, list) else [value]:
                args += [option.opts[0], str(item)]
        else:
            args += [option.opts[0], str(value)]
    return args


def _resolve(base: Path, value: object) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else base / p


# ----------------------------------------------------------------------------------
# Inputs of one case


def check_case_input(case: CaseInput) -> None:
    """Files exist; a case folder holds the layout's images."""
    if case.problem:
        raise InputError(case.problem)
    if case.folder is not None:
        if not case.folder.is_dir():
            raise InputError(f"{case.folder}: case folder not found")
        for name in (layout.BASELINE, layout.FOLLOWUP, layout.BRAIN_MASK):
            if not (case.folder / name).is_file():
                raise InputError(f"{case.folder}: no {name}; a case folder holds {layout.BASELINE}, "
                                 f"{layout.FOLLOWUP} and {layout.BRAIN_MASK} (see `mstools preprocess`), "
                                 "or give the two raw scans")
    else:
        for path, what in ((case.baseline, "baseline"), (case.followup, "follow-up")):
            if path is None:
                raise InputError(f"no {what} scan; give a case folder or both scans")
            if not Path(path).is_file():
                raise InputError(f"{path}: {what} scan not found")
    if case.ground_truth is not None and not Path(case.ground_truth).is_file():
        raise InputError(f"{case.ground_truth}: ground truth not found")


def _input_files(case: CaseInput) -> list[Path]:
    if case.folder is not None:
        files = [case.folder / n for n in (layout.BASELINE, layout.FOLLOWUP, layout.BRAIN_MASK)]
    else:
        files = [Path(case.baseline), Path(case.followup)]  # type: ignore[arg-type]
    return files


def _check_ground_truth(case: CaseInput, config: dict) -> None:
    """A given ground truth is a binary mask on the case grid (checked before any stage runs)."""
    truth = _given_truth(case)
    if truth is None or not config["evaluate"]:
        return
    from mstools.io import check_same_grid, read_mask

    gt = read_mask(truth)
    if case.folder is not None:
        check_same_grid(read_mask(case.folder / layout.BRAIN_MASK), gt)


def _carry_ground_truth(case: CaseInput, run_dir: Path, *, verbose: bool) -> None:
    """A ground truth on the raw follow-up's grid, moved into the preprocessed case folder."""
    from cli.preprocess import TRANSFORM_FOLLOWUP

    folder = run_dir / rl.CASE_DIR
    _invoke(_APPLY_TRANSFORM, [str(case.ground_truth), str(folder / TRANSFORM_FOLLOWUP),
                               str(folder / layout.FOLLOWUP), str(folder / layout.GROUND_TRUTH), "--force"],
            verbose=verbose)


def _ground_truth(case: CaseInput, run_dir: Path) -> Optional[Path]:
    """The ground truth on the case grid: for raw scans, the one carried into RUN/case."""
    if case.raw:
        carried = run_dir / rl.CASE_DIR / layout.GROUND_TRUTH
        return carried if carried.is_file() else None
    return _given_truth(case)


def _hash_text(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _given_truth(case: CaseInput) -> Optional[Path]:
    """The ground truth given with the case: explicit, else the case folder's, else None."""
    if case.ground_truth is not None:
        return Path(case.ground_truth)
    if case.folder is not None and (case.folder / layout.GROUND_TRUTH).is_file():
        return case.folder / layout.GROUND_TRUTH
    return None


def _input_hashes(case: CaseInput) -> list[str]:
    from mstools.io import sha256

    return [sha256(p) for p in _input_files(case)]


def run_key(case: CaseInput, config: dict, base: Path, *, input_hashes: Optional[list[str]] = None,
            models: Optional[dict] = None) -> str:
    """What a finished run depends on: version, configuration (models by content) and inputs
    (``input_hashes`` / ``models`` when the caller has them already)."""
    from mstools.io import sha256

    truth = _given_truth(case)
    hashes = (input_hashes if input_hashes is not None else _input_hashes(case)) + ([sha256(truth)] if truth else [])
    return _hash_text({"version": __version__, "config": config,
                       "models": models if models is not None else _model_hashes(config, base), "inputs": hashes})


def _model_hashes(config: dict, base: Path) -> dict:
    from mstools.io import sha256

    found = {}
    for stage in STAGES:
        for name in PATH_OPTIONS.get(stage, ()):
            value = config[stage].get(name)
            for item in (value if isinstance(value, list) else [value]):
                if item is not None and _resolve(base, item).is_file():
                    found[f"{stage}.{name}:{item}"] = sha256(_resolve(base, item))
    return found


# ----------------------------------------------------------------------------------
# Running


@dataclass
class StageOutcome:
    status: str          # ran | reused | off
    seconds: float = 0.0
    key: str = ""


def _invoke(stage: Stage, args: list[str], *, verbose: bool) -> None:
    """Run a stage's command in this process; its stdout is dropped, its error becomes StageFailed."""
    import typer

    from cli import common

    command = _click_command(stage)
    captured = io.StringIO()
    level = common.STATE.level
    common.STATE.level = 1 if verbose else -1
    try:
        with contextlib.redirect_stdout(io.StringIO()), _tee_stderr(captured, echo=verbose):
            code = command.main(args=args, prog_name=f"mstools {' '.join(stage.command)}", standalone_mode=False)
    except typer.TyperException as exc:
        raise StageFailed(stage.name, _message(exc)) from None
    finally:
        common.STATE.level = level
    if code == 130:  # the stage was interrupted (Ctrl-C, SIGINT): an interruption, not bad input
        raise KeyboardInterrupt
    if code not in (None, 0):
        lines = [line for line in captured.getvalue().splitlines() if line.strip()]
        message = lines[-1] if lines else f"exited with code {code}"
        raise StageFailed(stage.name, message.split(": error: ", 1)[-1])


@contextlib.contextmanager
def _tee_stderr(buffer: io.StringIO, *, echo: bool):
    import sys

    original = sys.stderr

    class Tee(io.TextIOBase):
        def write(self, text: str) -> int:
            buffer.write(text)
            if echo:
                original.write(text)
            return len(text)

        def isatty(self) -> bool:
            return False

    sys.stderr = Tee()
    try:
        yield
    finally:
        sys.stderr = original


def _stage_args(stage: str, case_dir: Path, run_dir: Path, config: dict, base: Path,
                case: CaseInput) -> list[str]:
    """The whole command line of a stage (after the command's name)."""
    spec = STAGES[stage]
    options = stage_options_args(spec, config[stage], base)
    prefix = str(rl.stage_prefix(run_dir, stage))
    files = {n: str(case_dir / n) for n in (layout.BASELINE, layout.FOLLOWUP, layout.BRAIN_MASK)}
    if stage == "preprocess":
        return [str(case.baseline), str(case.followup), str(run_dir / rl.CASE_DIR), *options, "--force"]
    if stage == "subtract":
        return [str(case_dir), "-o", prefix, *options, "--force"]
    if stage == "filter":
        upstream = str(rl.stage_prefix(run_dir, config["filter"]["candidates"]))
        return [str(case_dir), "-c", upstream, "-o", prefix, *options, "--force"]
    if stage == "register":
        return [files[layout.FOLLOWUP], files[layout.BASELINE], prefix, "--followup-mask", files[layout.BRAIN_MASK],
                *options, "--force"]
    if stage == "segment":
        return [str(case_dir), "-o", prefix, *options, "--force"]
    if stage == "refine":
        upstream = str(rl.stage_prefix(run_dir, config["refine"]["candidates"]))
        return [str(case_dir), "-c", upstream, "-o", prefix, *options, "--force"]
    raise ValueError(stage)


def stage_order(config: dict) -> list[str]:
    """Stages in the order they run: detectors first, then filter and refine as they read each other."""
    order = ["preprocess", "subtract", "register", "segment"]
    last = ["refine", "filter"] if config["filter"]["candidates"] == "refine" else ["filter", "refine"]
    return order + last


def _upstream(stage: str, config: dict) -> list[str]:
    return {"preprocess": [], "subtract": ["preprocess"], "filter": ["preprocess", config["filter"]["candidates"]],
            "register": ["preprocess"], "segment": ["preprocess"],
            "refine": ["preprocess", config["refine"]["candidates"]]}[stage]


def _stage_outputs(run_dir: Path, stage: str) -> list[Path]:
    from mstools.lesions import output_paths

    if stage == "preprocess":
        folder = run_dir / rl.CASE_DIR
        return [folder / n for n in (layout.BASELINE, layout.FOLLOWUP, layout.BRAIN_MASK)]
    return [Path(p) for p in output_paths(str(rl.stage_prefix(run_dir, stage))).values()]


def _outputs_intact(run_dir: Path, stage: str) -> bool:
    """The stage's outputs are the very files its record hashed (not truncated, not replaced)."""
    from mstools.io import sha256

    recorded = _read_stage_record(run_dir, stage).get("outputs")
    if not isinstance(recorded, dict):
        return False
    for path in _stage_outputs(run_dir, stage):
        name = _relative(path, run_dir)
        if not path.is_file() or recorded.get(name) != sha256(path):
            return False
    return True


def _read_stage_record(run_dir: Path, stage: str) -> dict:
    record = run_dir / stage / rl.STAGE_RECORD if stage != "preprocess" else run_dir / rl.CASE_DIR / rl.STAGE_RECORD
    try:
        value = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_stage_key(run_dir: Path, stage: str) -> str:
    return str(_read_stage_record(run_dir, stage).get("key", ""))


def _write_stage_record(run_dir: Path, stage: str, key: str, args: list[str], seconds: float) -> None:
    from mstools.io import OutputBatch, sha256

    folder = run_dir / (stage if stage != "preprocess" else rl.CASE_DIR)
    outputs = {_relative(p, run_dir): sha256(p) for p in _stage_outputs(run_dir, stage)}
    with OutputBatch(force=True) as batch:
        batch.json(folder / rl.STAGE_RECORD, {"stage": stage, "key": key, "version": __version__,
                                              "command": ["mstools", *STAGES[stage].command, *args],
                                              "seconds": round(seconds, 2), "outputs": outputs})


@dataclass
class RunResult:
    record: dict
    evaluation: list[dict]


def run_pipeline(case: CaseInput, run_dir: Path, config: dict, base: Path, *, verbose: bool = False,
                 on_stage: Optional[Callable[[str, str], None]] = None,
                 config_file: Optional[Path] = None) -> RunResult:
    """Run (or reuse) every enabled stage of one case into ``run_dir``; write the final result.

    Raises :class:`InputError` (or :class:`StageFailed`) on bad input. A run that fails
    before any stage finished leaves no run folder behind.
    """
    from mstools.io import output_error, remove_stale_parts

    check_case_input(case)
    check_config(config)
    check_config_files(config, base)
    _check_ground_truth(case, config)
    run_dir = Path(run_dir)
    _check_inputs_are_not_outputs(case, run_dir, config, base, config_file)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(exc, run_dir) from None
    with rl.RunLock(run_dir, case.case):
        try:
            remove_stale_parts(run_dir, recursive=True)   # left by a killed run
            return _run(case, run_dir, config, base, verbose=verbose, on_stage=on_stage)
        except BaseException:
            if created and run_dir.exists() and not any(run_dir.rglob(rl.STAGE_RECORD)):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


def _check_inputs_are_not_outputs(case: CaseInput, run_dir: Path, config: dict, base: Path,
                                  config_file: Optional[Path]) -> None:
    """No file the run reads (scans, ground truth, config, models) is one the run writes."""
    inputs = [*_input_files(case), *([_given_truth(case)] if _given_truth(case) else []),
              *([Path(config_file)] if config_file is not None else [])]
    for stage, names in PATH_OPTIONS.items():
        for name in names:
            value = config[stage].get(name)
            inputs += [_resolve(base, v) for v in (value if isinstance(value, list) else [value]) if v is not None]
    root = run_dir.resolve()
    written = {root / name for name in (rl.RUN_RECORD, rl.CONFIG, rl.EVALUATION, rl.REPORT, rl.LOCK)}
    folders = [root / stage for stage in STAGES if stage != "preprocess"] + ([root / rl.CASE_DIR] if case.raw else [])
    for path in inputs:
        p = Path(path).resolve()
        if p in written or (p.parent == root and p.name.startswith(rl.FINAL_PREFIX)) or \
                any(folder == p or folder in p.parents for folder in folders):
            raise InputError(f"{path}: is an input of the run and would be overwritten by it; "
                             f"choose another run folder than {run_dir} (inputs are never modified)")


def _run(case: CaseInput, run_dir: Path, config: dict, base: Path, *, verbose: bool,
         on_stage: Optional[Callable[[str, str], None]]) -> RunResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    input_hashes = _input_hashes(case)
    models = _model_hashes(config, base)
    case_dir = case.folder if case.folder is not None else run_dir / rl.CASE_DIR
    keys: dict[str, str] = {}
    outcomes: dict[str, StageOutcome] = {}
    for stage in stage_order(config):
        if stage == "preprocess" and not case.raw:
            outcomes[stage] = StageOutcome("off")
            continue
        if stage != "preprocess" and not _enabled(config, stage):
            outcomes[stage] = StageOutcome("off")
            continue
        args = _stage_args(stage, case_dir, run_dir, config, base, case)
        key = _hash_text({"stage": stage, "version": __version__, "options": config[stage], "models": models,
                          "inputs": input_hashes, "upstream": [keys.get(u, "") for u in _upstream(stage, config)]})
        keys[stage] = key
        if _read_stage_key(run_dir, stage) == key and _outputs_intact(run_dir, stage):
            outcomes[stage] = StageOutcome("reused", key=key)
            if on_stage:
                on_stage(stage, "reused")
            continue
        if on_stage:
            on_stage(stage, "running")
        folder = run_dir / (stage if stage != "preprocess" else rl.CASE_DIR)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        _invoke(STAGES[stage], args, verbose=verbose)
        seconds = time.perf_counter() - start
        _write_stage_record(run_dir, stage, key, args, seconds)
        outcomes[stage] = StageOutcome("ran", seconds, key)
        if on_stage:
            on_stage(stage, f"done in {seconds:.1f} s")
    if case.raw and case.ground_truth is not None:
        _carry_ground_truth(case, run_dir, verbose=verbose)
    return _finish(case, run_dir, case_dir, config, outcomes, run_key(case, config, base, input_hashes=input_hashes, models=models), verbose=verbose)


def _finish(case: CaseInput, run_dir: Path, case_dir: Path, config: dict, outcomes: dict[str, StageOutcome],
            key: str, *, verbose: bool = False) -> RunResult:
    from mstools.io import OutputBatch, read_tsv
    from mstools.lesions import output_paths
    from mstools.provenance import sidecar_path

    final = config["final"]
    source = output_paths(str(rl.stage_prefix(run_dir, final)))
    target = output_paths(str(rl.final_prefix(run_dir)))
    truth = _ground_truth(case, run_dir)
    evaluation = _evaluate(run_dir, truth, outcomes) if (truth is not None and config["evaluate"]) else []
    lesions = read_tsv(source["table"])
    volume = sum(float(row["volume_mm3"]) for row in lesions)
    metrics = next((row for row in evaluation if row["stage"] == final), None)
    record = {
        "case": case.case, "status": "complete", "run_key": key, "version": __version__,
        "inputs": {"case_folder": _relative(case_dir, run_dir),
                   "baseline": _relative(case_dir / layout.BASELINE, run_dir),
                   "followup": _relative(case_dir / layout.FOLLOWUP, run_dir),
                   "brain_mask": _relative(case_dir / layout.BRAIN_MASK, run_dir),
                   "ground_truth": _relative(truth, run_dir) if truth is not None else None,
                   "raw_baseline": str(case.baseline) if case.raw else None,
                   "raw_followup": str(case.followup) if case.raw else None},
        "config": config,
        "stages": {name: {"status": o.status, "seconds": round(o.seconds, 2),
                          "prefix": (_relative(rl.stage_prefix(run_dir, name), run_dir)
                                     if name != "preprocess" else rl.CASE_DIR) if o.status != "off" else None}
                   for name, o in outcomes.items()},
        "final_stage": final,
        "final": {kind: _relative(Path(p), run_dir) for kind, p in target.items()},
        "new_lesions": len(lesions),
        "new_lesion_volume_mm3": round(volume, 3),
        "metrics": metrics,
        "report": rl.REPORT if config["report"] else None,
    }
    import yaml

    with OutputBatch(force=True) as batch:
        for kind in ("score", "mask", "labels", "table"):
            batch.text(target[kind], Path(source[kind]).read_bytes())
            side = sidecar_path(source[kind])
            if side.is_file():
                batch.text(sidecar_path(target[kind]), side.read_bytes())
        if evaluation:
            batch.table(run_dir / rl.EVALUATION, evaluation, rl.EVALUATION_COLUMNS)
        batch.text(run_dir / rl.CONFIG, yaml.safe_dump(config, sort_keys=False))
    if case.raw:
        record["final_native"] = _carry_final_to_native(case, run_dir, verbose=verbose)
    if config["report"]:
        from mstools.report import write_case_report

        # the page reads the record: it is written first as "reporting", which batch does not skip
        with OutputBatch(force=True) as batch:
            batch.json(run_dir / rl.RUN_RECORD, {**record, "status": "reporting"})
        try:
            write_case_report(run_dir, force=True)
        except BaseException:
            (run_dir / rl.RUN_RECORD).unlink(missing_ok=True)
            raise
    # run.json "complete" last: it marks the run complete (batch skips a case by it)
    with OutputBatch(force=True) as batch:
        batch.json(run_dir / rl.RUN_RECORD, record)
    return RunResult(record, evaluation)


def _carry_final_to_native(case: CaseInput, run_dir: Path, *, verbose: bool) -> dict:
    """The final mask and labels carried back onto the raw follow-up's own grid."""
    from cli.preprocess import TRANSFORM_FOLLOWUP

    written = {}
    for kind in ("mask", "labels"):
        source = run_dir / f"{rl.FINAL_PREFIX}_{kind}.nii.gz"
        target = run_dir / f"{rl.FINAL_PREFIX}_{kind}{rl.NATIVE_SUFFIX}.nii.gz"
        _invoke(_APPLY_TRANSFORM, [str(source), str(run_dir / rl.CASE_DIR / TRANSFORM_FOLLOWUP),
                                   str(case.followup), str(target), "--inverse", "--force"], verbose=verbose)
        written[kind] = target.name
    return written


def _relative(path: Optional[Path], run_dir: Path) -> Optional[str]:
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(Path(path).resolve())


def _evaluate(run_dir: Path, truth: Path, outcomes: dict[str, StageOutcome]) -> list[dict]:
    """MSSEG-2 lesion-wise and voxel metrics of every detector stage that ran or was reused."""
    from mstools.io import check_same_grid, read_mask
    from mstools.lesions import MASK_SUFFIX
    from mstools.metrics import evaluate_case

    gt = read_mask(truth)
    rows = []
    for stage in rl.DETECTORS:
        if outcomes.get(stage, StageOutcome("off")).status == "off":
            continue
        prediction = read_mask(str(rl.stage_prefix(run_dir, stage)) + MASK_SUFFIX)
        check_same_grid(prediction, gt)
        metrics = evaluate_case(prediction.data, gt.data, affine=gt.affine).metrics
        rows.append({"stage": stage, **{c: metrics[c] for c in rl.EVALUATION_COLUMNS if c != "stage"}})
    return rows
