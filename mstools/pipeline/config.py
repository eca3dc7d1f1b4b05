"""The configuration of ``mstools run``: defaults from the stages' options dataclasses (with
``RUN_OVERRIDES``), the commented YAML of ``--print-config``, reading a file, and checks."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from mstools import __version__
from mstools import run_layout as rl
from mstools.errors import EXTRA_OF_PACKAGE, InputError
from mstools.jobs.options import build, command_line, defaults, specs
from mstools.messages import check_finite_options
from mstools.pipeline.stages import ACTIVITY_SOURCES, CANDIDATE_SOURCES, CONFIRM_SOURCES, PATH_OPTIONS, RUN_OVERRIDES, STAGES, TOP_LEVEL, Stage, enabled


def default_config() -> dict:
    """Every key with its default: the jobs' option defaults, with the run's overrides."""
    config: dict = {key: default for key, (default, _) in TOP_LEVEL.items()}
    for stage in STAGES.values():
        values = {key: default for key, (default, _) in stage.own.items()}
        values.update(defaults(stage.options))
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
        for name, spec in specs(stage.options).items():
            default = spec.default
            comment = _comment(spec.help)
            if name in RUN_OVERRIDES.get(stage.name, {}):
                command_default = "default" if default is None else default
                comment += (f" mstools run uses {RUN_OVERRIDES[stage.name][name]} instead of the command's "
                            f"{command_default}: measured, see mstools/pipeline/stages.py RUN_OVERRIDES.")
                default = RUN_OVERRIDES[stage.name][name]
            if spec.kind == "choice":
                comment += f" [{' | '.join(spec.choices)}]"
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


def resolve(base: Path, value: object) -> Path:
    """A path from a configuration: relative paths are taken from ``base`` (the config's folder)."""
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else base / p


def _job_values(stage: Stage, values: Mapping[str, object], base: Path) -> dict:
    """A stage's configured option values (its own keys left out), file paths resolved."""
    found = {}
    for name, value in values.items():
        if name in stage.own:
            continue
        if value is not None and name in stage.path_options:
            value = [str(resolve(base, v)) for v in value] if isinstance(value, list) else str(resolve(base, value))
        found[name] = value
    return found


def stage_options(stage: Stage, values: Mapping[str, object], base: Path):
    """The stage's options dataclass from its configured values (None keeps the command's default)."""
    return build(stage.options, _job_values(stage, values, base), where=f"config: {stage.name}: ")


def stage_options_args(stage: Stage, values: Mapping[str, object], base: Path) -> list[str]:
    """The command-line options equivalent to a stage's configured values (recorded in stage.json)."""
    declared = specs(stage.options)
    for name, value in values.items():
        if name not in stage.own and value is not None and declared[name].kind == "bool" \
                and not isinstance(value, bool):
            raise InputError(f"config: {stage.name}.{name} must be true or false, not {value!r}")
    return command_line(stage.options, _job_values(stage, values, base))


def check_config(config: dict) -> None:
    """Errors a run would otherwise meet halfway: bad values of any stage's options."""
    if config["final"] not in rl.DETECTORS:
        raise InputError(f"config: final must be one of {', '.join(rl.DETECTORS)}, not {config['final']!r}")
    for key in ("evaluate", "report"):
        if not isinstance(config[key], bool):
            raise InputError(f"config: {key} must be true or false, not {config[key]!r}")
    for stage in STAGES.values():
        for key in stage.own:
            if key in ("enabled", "coactseg_maps") and not isinstance(config[stage.name][key], bool):
                raise InputError(f"config: {stage.name}.{key} must be true or false")
    for stage, allowed in CANDIDATE_SOURCES.items():
        source = config[stage]["candidates"]
        if source not in allowed:
            raise InputError(f"config: {stage}.candidates must be {', '.join(allowed)}, not {source!r}")
        if enabled(config, stage) and not enabled(config, source):
            raise InputError(f"config: {stage} reads the {source} candidates but {source} is not enabled; "
                             f"enable it or set {stage}.candidates")
    confirm = config["filter"]["confirm_with"]
    if confirm not in CONFIRM_SOURCES:
        raise InputError(f"config: filter.confirm_with must be {', '.join(CONFIRM_SOURCES)}, not {confirm!r}")
    if enabled(config, "filter") and confirm != "none":
        if not enabled(config, confirm):
            raise InputError(f"config: filter confirms its lesions with {confirm}'s score but {confirm} is not "
                             f"enabled; enable it or set filter.confirm_with: none")
        if config["filter"].get("confirm") is not None:
            raise InputError("config: filter.confirm (a score map prefix) and filter.confirm_with (a stage) both "
                             "name the confirming detector; keep one (confirm_with: none to use confirm)")
    if (enabled(config, "filter") and config["filter"].get("add_confirming", "never") != "never" and confirm == "none"
            and config["filter"].get("confirm") is None):
        raise InputError(f"config: filter.add_confirming is {config['filter']['add_confirming']} but no detector "
                         "confirms (filter.confirm_with: none); set confirm_with: segment or add_confirming: never")
    if (enabled(config, "refine") and enabled(config, "filter") and config["refine"]["candidates"] == "filter"
            and config["filter"]["candidates"] == "refine"):
        raise InputError("config: refine reads filter's candidates and filter reads refine's; one of them must "
                         "read subtract (or register, segment)")
    if enabled(config, "activity"):
        source = config["activity"]["lesions"]
        if source not in ACTIVITY_SOURCES:
            raise InputError(f"config: activity.lesions must be {', '.join(ACTIVITY_SOURCES)}, not {source!r}")
        for needed in dict.fromkeys(("subtract", source)):
            if not enabled(config, needed):
                raise InputError(f"config: activity reads {needed}'s outputs but {needed} is not enabled; enable it "
                                 "or set activity: {enabled: false} (and final to another stage)")
    if not enabled(config, config["final"]):
        raise InputError(f"config: final is {config['final']} but that stage is not enabled")
    for stage in STAGES.values():
        if stage.name == "preprocess" or enabled(config, stage.name):
            declared = specs(stage.options)
            for name, value in config[stage.name].items():
                if name in stage.own or value is None:
                    continue
                if isinstance(value, dict) or (isinstance(value, list) and not declared[name].multiple):
                    raise InputError(f"config: {stage.name}.{name} must be one value, not {value!r}")
                if name in stage.path_options and not all(
                        isinstance(v, str) for v in (value if isinstance(value, list) else [value])):
                    raise InputError(f"config: {stage.name}.{name} must be a file path, not {value!r}")
            stage_options_args(stage, config[stage.name], Path("."))   # flags are true or false
            options = stage_options(stage, config[stage.name], Path("."))
            check_finite_options({k: getattr(options, k) for k in declared}, where=f"config: {stage.name}.")
    if enabled(config, "segment"):
        _check_cascade_maps(config["segment"])
        _check_installed("torch", "segment", also=" and filter: {confirm_with: none}")
    if enabled(config, "register"):
        _check_installed("itk", "register")


def _check_installed(package: str, stage: str, *, also: str = "") -> None:
    """A stage's heavy package is installed (found, not imported: checked before any stage runs)."""
    import importlib.util

    extra = EXTRA_OF_PACKAGE[package]
    try:
        found = importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise InputError(f"config: the {stage} stage needs {package}, which is not installed: pip install -e "
                         f"\".[{extra}]\" in the checkout (README, Installing), or run without it: {stage}: "
                         f"{{enabled: false}}{also} in a config file (-c)")


def _check_cascade_maps(segment: dict) -> None:
    """The cascade (segment.model cascade) has one source of all-lesion maps: the case's
    (segment.lesions) or CoactSeg run in the stage (segment.coactseg_maps); other models none."""
    from mstools.detect.deep.networks import network

    model, source, coactseg = segment["model"], segment.get("lesions"), segment.get("coactseg_maps")
    if not network(model).lesion_maps:
        if coactseg or source is not None:
            raise InputError(f"config: segment.{'coactseg_maps' if coactseg else 'lesions'} gives the all-lesion "
                             f"maps of model cascade; model {model} reads none: set segment.model: cascade or drop it")
        return
    if coactseg and source is not None:
        raise InputError("config: segment.lesions and segment.coactseg_maps both give the cascade's all-lesion "
                         "maps; keep one")
    if not coactseg and source is None:
        raise InputError(f"config: segment.model {model} reads both visits' all-lesion maps: set "
                         "segment.coactseg_maps: true (CoactSeg run in the stage first), or segment.lesions: case "
                         "(the case folder's lesions_time01/02) or the name of a `mstools segment --model coactseg` "
                         "output in the case folder")


def check_config_files(config: dict, base: Path) -> None:
    """The files a configuration names exist, and models match their cards (before any stage)."""
    from mstools.models import load_filter_model, load_refine_model

    for stage, names in PATH_OPTIONS.items():
        if not enabled(config, stage):
            continue
        for name in names:
            value = config[stage].get(name)
            for item in (value if isinstance(value, list) else [value]):
                if item is None:
                    continue
                path = resolve(base, item)
                if not path.is_file():
                    raise InputError(f"config: {stage}.{name}: {path}: file not found (relative paths are taken "
                                     "from the config file's folder)")
                if (stage, name) == ("filter", "model"):
                    load_filter_model(path)
                elif (stage, name) == ("refine", "model"):
                    load_refine_model(path)
                elif (stage, name) == ("segment", "weights"):
                    _check_weights(path, config["segment"]["model"])
    if enabled(config, "segment") and not config["segment"].get("weights"):
        from mstools.detect.deep.networks import network

        model = config["segment"]["model"]
        if not network(model).default_weights:
            raise InputError(f"config: segment.model {model} ships no default weights; set segment.weights to a "
                             f"model.pt of mstools train --model {model}")
    if enabled(config, "register") and config["register"].get("parameters"):
        from mstools.detect.registration.detector import parameter_maps

        value = config["register"]["parameters"]
        parameter_maps([resolve(base, v) for v in (value if isinstance(value, list) else [value])],
                       config["register"].get("grid_spacing_mm"), config["register"].get("bending_weight"))


def _check_weights(path: Path, model: str) -> None:
    """A segment weight file is an mstools weight file of the configured network (its card readable)."""
    from mstools.detect.deep.weights import load_weights
    from mstools.models import read_card

    weights, _, _ = load_weights(path)
    read_card(path)
    if weights.model != model:
        raise InputError(f"config: segment.weights: {path}: weights of a {weights.model} model, not {model}; "
                         f"set segment.model: {weights.model}")
