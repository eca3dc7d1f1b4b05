"""Running the stages of one case (:func:`run_case`): reuse, stage records, the final result.

A stage is skipped when its key (mstools version, options, model files, the keys of
the stages it reads and the sha256 of the case's input files) equals the one recorded
in ``RUN/<stage>/stage.json`` and its outputs are still there. Each stage calls its job
in this process (:mod:`mstools.jobs`), exactly as its command does.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from mstools import __version__
from mstools import case_layout as layout
from mstools import run_layout as rl
from mstools.case import check_case_input, given_truth, input_files
from mstools.cohort_inputs import CaseInput
from mstools.errors import InputError
from mstools.pipeline.config import (check_config, check_config_files, resolve, stage_options,
                                     stage_options_args)
from mstools.pipeline.stages import PATH_OPTIONS, STAGES, StageContext, enabled, stage_order


class StageFailed(InputError):
    """A stage stopped on bad input; ``stage`` says which, the message says why."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.detail = message

    def __reduce__(self):  # picklable across Dask workers
        return (StageFailed, (self.stage, self.detail))


@dataclass
class StageOutcome:
    status: str          # ran | reused | off
    seconds: float = 0.0
    key: str = ""


@dataclass
class RunResult:
    record: dict
    evaluation: list[dict]


class RunProgress:
    """What :func:`run_case` says while it works; every method does nothing here.

    Override the ones you need (``mstools run`` shows them on stderr: a rich display on a
    terminal, plain lines otherwise). Steps and counts may come from another thread
    (register's elastix log watcher).
    """

    def plan(self, stages: list[str]) -> None:
        """The stages this run runs or reuses, in their order (said before the first starts)."""

    def started(self, stage: str) -> None:
        """``stage`` starts running."""

    def finished(self, stage: str, status: str, seconds: float = 0.0) -> None:
        """``stage`` is done: ``status`` ``ran`` (in ``seconds``) or ``reused``."""

    def step(self, stage: str, message: str) -> None:
        """A step inside a running stage (preprocess's N4 correction, register's elastix stages)."""

    def count(self, stage: str, done: int, total: int) -> None:
        """Counted work inside a running stage (segment's windows: ``done`` of ``total``)."""


def run_case(case: CaseInput, run_dir: Path, config: Optional[dict] = None, base: Optional[Path] = None, *,
             verbose: bool = False, progress: Optional[RunProgress] = None,
             config_file: Optional[Path] = None) -> RunResult:
    """Run (or reuse) every enabled stage of one case into ``run_dir``; write the final result.

    ``config``: from :func:`mstools.pipeline.load_config` (default: the defaults);
    ``base``: the folder relative model paths are taken from (default: the working folder);
    ``progress``: hears each stage start and finish and the steps inside it (:class:`RunProgress`).
    Raises :class:`InputError` (or :class:`StageFailed`) on bad input. A run that fails
    before any stage finished leaves no run folder behind.
    """
    from mstools.io import output_error, remove_stale_parts
    from mstools.pipeline.config import default_config

    config = default_config() if config is None else config
    base = Path.cwd() if base is None else Path(base)
    check_case_input(case)
    check_config(config)
    check_config_files(config, base)
    _check_ground_truth(case, config)
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"{run_dir}: is a file, not a folder; choose another run folder")
    _check_inputs_are_not_outputs(case, run_dir, config, base, config_file)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(exc, run_dir) from None
    with rl.RunLock(run_dir, case.case):
        try:
            remove_stale_parts(run_dir, recursive=True)   # left by a killed run
            # the folder is about to change: until this run writes its own record, no earlier
            # run.json may call it complete (batch would skip it)
            (run_dir / rl.RUN_RECORD).unlink(missing_ok=True)
            return _run(case, run_dir, config, base, verbose=verbose, progress=progress or RunProgress())
        except BaseException:
            if created and run_dir.exists() and not any(run_dir.rglob(rl.STAGE_RECORD)):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


def _check_ground_truth(case: CaseInput, config: dict) -> None:
    """A given ground truth is a binary mask on the case grid (checked before any stage runs)."""
    truth = given_truth(case)
    if truth is None or not config["evaluate"]:
        return
    from mstools.io import check_same_grid, read_mask

    gt = read_mask(truth)
    if case.folder is not None:
        check_same_grid(read_mask(case.folder / layout.BRAIN_MASK), gt)


def _check_inputs_are_not_outputs(case: CaseInput, run_dir: Path, config: dict, base: Path,
                                  config_file: Optional[Path]) -> None:
    """No file the run reads (scans, ground truth, config, models) is one the run writes."""
    truth = given_truth(case)
    inputs = [*input_files(case), *([truth] if truth else []), *([Path(config_file)] if config_file is not None else [])]
    for stage, names in PATH_OPTIONS.items():
        for name in names:
            value = config[stage].get(name)
            inputs += [resolve(base, v) for v in (value if isinstance(value, list) else [value]) if v is not None]
    root = run_dir.resolve()
    written = {root / name for name in (rl.RUN_RECORD, rl.CONFIG, rl.EVALUATION, rl.REPORT, rl.LOCK)}
    folders = [root / stage for stage in STAGES if stage != "preprocess"] + ([root / rl.CASE_DIR] if case.raw else [])
    for path in inputs:
        p = Path(path).resolve()
        if p in written or (p.parent == root and p.name.startswith(rl.FINAL_PREFIX)) or \
                any(folder == p or folder in p.parents for folder in folders):
            raise InputError(f"{path}: is an input of the run and would be overwritten by it; "
                             f"choose another run folder than {run_dir} (inputs are never modified)")


# ----------------------------------------------------------------------------- keys


def _hash_text(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _input_hashes(case: CaseInput) -> list[str]:
    from mstools.io import sha256

    return [sha256(p) for p in input_files(case)]


def _model_hashes(config: dict, base: Path) -> dict:
    from mstools.io import sha256

    found = {}
    for stage in STAGES:
        for name in PATH_OPTIONS.get(stage, ()):
            value = config[stage].get(name)
            for item in (value if isinstance(value, list) else [value]):
                if item is not None and resolve(base, item).is_file():
                    found[f"{stage}.{name}:{item}"] = sha256(resolve(base, item))
    return found


def run_key(case: CaseInput, config: dict, base: Path, *, input_hashes: Optional[list[str]] = None,
            models: Optional[dict] = None) -> str:
    """What a finished run depends on: version, configuration (models by content) and inputs
    (``input_hashes`` / ``models`` when the caller has them already)."""
    from mstools.io import sha256

    truth = given_truth(case)
    hashes = (input_hashes if input_hashes is not None else _input_hashes(case)) + ([sha256(truth)] if truth else [])
    return _hash_text({"version": __version__, "config": config,
                       "models": models if models is not None else _model_hashes(config, base), "inputs": hashes})


# ----------------------------------------------------------------------------- stage records


def _relative(path: Optional[Path], run_dir: Path) -> Optional[str]:
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(Path(path).resolve())


def _read_stage_record(run_dir: Path, stage: str) -> dict:
    record = STAGES[stage].folder(run_dir) / rl.STAGE_RECORD
    try:
        value = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _outputs_intact(run_dir: Path, stage: str, config: dict, case: CaseInput) -> bool:
    """The stage's outputs are the very files its record hashed (not truncated, not replaced)."""
    from mstools.io import sha256

    recorded = _read_stage_record(run_dir, stage).get("outputs")
    if not isinstance(recorded, dict):
        return False
    for path in STAGES[stage].outputs(run_dir, config, case):
        name = _relative(path, run_dir)
        if not path.is_file() or recorded.get(name) != sha256(path):
            return False
    return True


def final_outputs_intact(run_dir: Path, record: dict) -> bool:
    """The files a finished run's record hashed (final result, evaluation, report) are still
    those files: a truncated or replaced one makes the run unfinished."""
    from mstools.io import sha256

    recorded = record.get("outputs")
    if not isinstance(recorded, dict) or not recorded:
        return False
    for name, digest in recorded.items():
        path = Path(run_dir) / str(name)
        if not path.is_file() or sha256(path) != digest:
            return False
    return True


def _write_stage_record(run_dir: Path, stage: str, key: str, args: list[str], seconds: float, config: dict,
                        case: CaseInput) -> None:
    from mstools.io import OutputBatch, sha256

    outputs = {_relative(p, run_dir): sha256(p) for p in STAGES[stage].outputs(run_dir, config, case)}
    with OutputBatch(force=True) as batch:
        batch.json(STAGES[stage].folder(run_dir) / rl.STAGE_RECORD,
                   {"stage": stage, "key": key, "version": __version__,
                    "command": ["mstools", *STAGES[stage].command, *args],
                    "seconds": round(seconds, 2), "outputs": outputs})


# ----------------------------------------------------------------------------- running


@contextlib.contextmanager
def _stage_messages(verbose: bool):
    """A stage's log lines on stderr only when the run is verbose; stdout (results) dropped."""
    from mstools import messages

    level = messages.STATE.level
    messages.STATE.level = 1 if verbose else -1
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        messages.STATE.level = level


def _call(stage_name: str, job: Callable[[], object], *, verbose: bool, command: str) -> None:
    """Run a job as a stage: its bad-input error becomes StageFailed (the stage named). With
    ``verbose``, the job's traceback and its command's error line are shown, as the command
    itself (``mstools <command>``) would show them with -v."""
    import sys
    import traceback

    from mstools.errors import missing_extra
    from mstools.messages import INTERRUPTED

    with _stage_messages(verbose):
        try:
            job()
        except StageFailed:
            raise
        except (InputError, ModuleNotFoundError) as exc:
            if isinstance(exc, ModuleNotFoundError):   # a heavy package of an extra not installed
                exc = missing_extra(exc) or exc
                if not isinstance(exc, InputError):
                    raise
            if verbose:
                traceback.print_exc(file=sys.stderr)
                print(f"mstools {command}: error: {exc}", file=sys.stderr)
            raise StageFailed(stage_name, str(exc)) from None
        except KeyboardInterrupt:
            if verbose:
                print(f"mstools {command}: {INTERRUPTED}", file=sys.stderr)
            raise


def _run(case: CaseInput, run_dir: Path, config: dict, base: Path, *, verbose: bool,
         progress: RunProgress) -> RunResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    input_hashes = _input_hashes(case)
    models = _model_hashes(config, base)
    case_dir = case.folder if case.folder is not None else run_dir / rl.CASE_DIR
    keys: dict[str, str] = {}
    outcomes: dict[str, StageOutcome] = {}
    order = stage_order(config)
    active = [name for name in order if (case.raw if name == "preprocess" else enabled(config, name))]
    progress.plan(active)
    for name in order:
        stage = STAGES[name]
        if name not in active:
            outcomes[name] = StageOutcome("off")
            continue
        context = StageContext(case, case_dir, run_dir, config, stage_options(stage, config[name], base),
                               step=functools.partial(progress.step, name),
                               count=functools.partial(progress.count, name))
        args = [*stage.arguments(context), *stage_options_args(stage, config[name], base), "--force"]
        payload = {"stage": name, "version": __version__, "options": config[name], "models": models,
                   "inputs": input_hashes, "upstream": [keys.get(u, "") for u in stage.reads(config)]}
        read = _stage_input_hashes(stage, context)
        if read:   # files beside the case's images (the cascade's all-lesion masks)
            payload["files"] = read
        key = _hash_text(payload)
        keys[name] = key
        if str(_read_stage_record(run_dir, name).get("key", "")) == key and _outputs_intact(run_dir, name, config,
                                                                                             case):
            outcomes[name] = StageOutcome("reused", key=key)
            progress.finished(name, "reused")
            continue
        progress.started(name)
        stage.folder(run_dir).mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        _call(name, lambda: stage.run(context), verbose=verbose, command="-".join(stage.command))
        seconds = time.perf_counter() - start
        _write_stage_record(run_dir, name, key, args, seconds, config, case)
        outcomes[name] = StageOutcome("ran", seconds, key)
        progress.finished(name, "ran", seconds)
    if case.raw and case.ground_truth is not None:
        _carry_ground_truth(case, run_dir, verbose=verbose)
    key = run_key(case, config, base, input_hashes=input_hashes, models=models)
    return _finish(case, run_dir, case_dir, config, outcomes, key, verbose=verbose)


def _stage_input_hashes(stage, context: StageContext) -> dict:
    """sha256 of the files beside the case's images that a stage reads (those present: a missing
    one is the stage's own error)."""
    from mstools.io import sha256

    return {str(p): sha256(p) for p in stage.input_files(context) if Path(p).is_file()}


def _carry_ground_truth(case: CaseInput, run_dir: Path, *, verbose: bool) -> None:
    """A ground truth on the raw follow-up's grid, moved into the preprocessed case folder."""
    from mstools.jobs.preprocess import TRANSFORM_FOLLOWUP, apply_transform_job

    folder = run_dir / rl.CASE_DIR
    _call("preprocess", lambda: apply_transform_job(
        Path(case.ground_truth), folder / TRANSFORM_FOLLOWUP, folder / layout.FOLLOWUP,
        folder / layout.GROUND_TRUTH, force=True), verbose=verbose, command="apply-transform")


def _carry_final_to_native(case: CaseInput, run_dir: Path, *, verbose: bool) -> dict:
    """The final mask and labels carried back onto the raw follow-up's own grid (side by side:
    each is a resampling onto the raw grid, in ITK one at a time, and a compression)."""
    from mstools.jobs.preprocess import TRANSFORM_FOLLOWUP, apply_transform_job
    from mstools.parallel import side_by_side

    kinds = ("mask", "labels")
    targets = {kind: run_dir / f"{rl.FINAL_PREFIX}_{kind}{rl.NATIVE_SUFFIX}.nii.gz" for kind in kinds}

    def carry(kind: str):
        return apply_transform_job(run_dir / f"{rl.FINAL_PREFIX}_{kind}.nii.gz",
                                   run_dir / rl.CASE_DIR / TRANSFORM_FOLLOWUP, Path(case.followup), targets[kind],
                                   inverse=True, force=True)

    _call("preprocess", lambda: side_by_side(carry, [(kind,) for kind in kinds]), verbose=verbose,
          command="apply-transform")
    return {kind: targets[kind].name for kind in kinds}


def _ground_truth(case: CaseInput, run_dir: Path) -> Optional[Path]:
    """The ground truth on the case grid: for raw scans, the one carried into RUN/case."""
    if case.raw:
        carried = run_dir / rl.CASE_DIR / layout.GROUND_TRUTH
        return carried if carried.is_file() else None
    return given_truth(case)


def _evaluate(run_dir: Path, truth: Path, outcomes: dict[str, StageOutcome]) -> list[dict]:
    """MSSEG-2 lesion-wise and voxel metrics of every detector stage that ran or was reused."""
    from mstools.detections import MASK_SUFFIX
    from mstools.io import check_same_grid, read_mask
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


def _activity_summary(run_dir: Path, outcomes: dict[str, StageOutcome]) -> Optional[dict]:
    """The activity stage's patient summary (run.json "activity"), or None when it is off."""
    from mstools.jobs.activity import output_names

    if outcomes.get("activity", StageOutcome("off")).status == "off":
        return None
    patient = json.loads(Path(output_names(str(rl.stage_prefix(run_dir, "activity")))["patient"]).read_text())
    return {key: value for key, value in patient.items() if key not in ("provenance", "model")}


def _finish(case: CaseInput, run_dir: Path, case_dir: Path, config: dict, outcomes: dict[str, StageOutcome],
            key: str, *, verbose: bool = False) -> RunResult:
    from mstools.detections import output_paths
    from mstools.io import OutputBatch, read_tsv
    from mstools.jobs.activity import output_names as activity_outputs
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
        "activity": _activity_summary(run_dir, outcomes),
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
        if record["activity"] is not None:
            names = activity_outputs(str(rl.stage_prefix(run_dir, "activity")))
            copies = {names["enlarging_mask"]: run_dir / f"{rl.ENLARGING_PREFIX}_mask.nii.gz",
                      names["enlarging_labels"]: run_dir / f"{rl.ENLARGING_PREFIX}_labels.nii.gz",
                      names["changes"]: run_dir / rl.LESION_CHANGES}
            for origin, copy in copies.items():
                batch.text(copy, Path(origin).read_bytes())
                if sidecar_path(origin).is_file():
                    batch.text(sidecar_path(copy), sidecar_path(origin).read_bytes())
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
    # run.json "complete" last: it marks the run complete (batch skips a case by it, after
    # checking that these files are still the ones hashed here)
    from mstools.io import sha256

    kept = [Path(target[kind]) for kind in ("score", "mask", "labels", "table")]
    kept += [run_dir / rl.EVALUATION] if evaluation else []
    if record["activity"] is not None:
        kept += [run_dir / f"{rl.ENLARGING_PREFIX}_{kind}.nii.gz" for kind in ("mask", "labels")]
        kept += [run_dir / rl.LESION_CHANGES]
    kept += [run_dir / name for name in record.get("final_native", {}).values()]
    kept += [run_dir / rl.REPORT] if config["report"] and (run_dir / rl.REPORT).is_file() else []
    record["outputs"] = {_relative(path, run_dir): sha256(path) for path in kept}
    with OutputBatch(force=True) as batch:
        batch.json(run_dir / rl.RUN_RECORD, record)
    return RunResult(record, evaluation)
