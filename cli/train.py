"""`mstools train`: train a learned new-lesion model (coactseg, unet, multitask) on case folders."""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from mstools_cli import common
from mstools import case_layout as layout
from mstools.errors import InputError

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
LOG = "training_log.tsv"
LOG_COLUMNS = ("iteration", "seconds", "loss", "dice_all", "dice_new", "relation", "bce", "registration",
               "similarity", "smoothness", "relation_weight", "val_dice", "val_lesion_f1",
               "val_lesion_sensitivity", "val_lesion_ppv")


class ModelChoice(str, Enum):
    coactseg = "coactseg"
    unet = "unet"
    multitask = "multitask"


class Preset(str, Enum):
    small = "small"
    paper = "paper"


def _expand(paths: List[Path], what: str) -> list[Path]:
    """Case folders: each path is a case folder or a folder of case folders."""
    cases: list[Path] = []
    for p in paths:
        if not p.is_dir():
            raise InputError(f"{p}: {what} folder not found; give case folders or folders of case folders")
        if layout.is_longitudinal_case(p) or layout.is_single_case(p):
            cases.append(p)
            continue
        inner = sorted(c for c in p.iterdir() if c.is_dir() and (layout.is_longitudinal_case(c) or layout.is_single_case(c)))
        if not inner:
            raise InputError(f"{p}: no case folder found (expected {layout.BASELINE} + {layout.FOLLOWUP}, or "
                             f"{layout.SINGLE_FLAIR}); make some with mstools simulate")
        cases.extend(inner)
    return cases


def _manifest(path: Path) -> tuple[list[Path], list[Path]]:
    """Train and validation folders of a manifest TSV (columns ``case``, ``split`` = train|val|test)."""
    from mstools.io import read_tsv

    rows = read_tsv(path)
    if not rows or "case" not in rows[0] or "split" not in rows[0]:
        raise InputError(f"{path}: a manifest needs the columns 'case' and 'split' (train, val or test)")
    train, val = [], []
    for n, row in enumerate(rows, start=2):
        split = (row.get("split") or "").strip()
        if split not in ("train", "val", "test"):
            raise InputError(f"{path}: line {n}: split must be train, val or test, not {split!r}")
        folder = Path(row["case"])
        if not folder.is_absolute():
            folder = path.parent / folder
        if split == "train":
            train.append(folder)
        elif split == "val":
            val.append(folder)
    return train, val


def load_case(folder: Path, config, *, validation: bool = False):
    """A case folder as a TrainingCase (or ValidationCase) on the model grid."""
    from mstools.deep.training import prepare_case, prepare_validation
    from mstools.io import check_same_grid, read_image, read_mask

    if layout.is_longitudinal_case(folder):
        baseline = read_image(folder / layout.BASELINE)
        followup = read_image(folder / layout.FOLLOWUP)
        truth = read_mask(folder / layout.GROUND_TRUTH)
        check_same_grid(baseline, followup)
        check_same_grid(baseline, truth)
        if validation:
            return prepare_validation(folder.name, baseline.data, followup.data, truth.data,
                                      spacing_mm=baseline.spacing_mm, config=config)
        return prepare_case(folder.name, [baseline.data, followup.data], truth.data,
                            spacing_mm=baseline.spacing_mm, config=config)
    if validation:
        raise InputError(f"{folder}: validation cases must have two time points (new-lesion truth)")
    flair = read_image(folder / layout.SINGLE_FLAIR)
    lesions = read_mask(folder / layout.SINGLE_LESIONS)
    check_same_grid(flair, lesions)
    return prepare_case(folder.name, [flair.data], lesions.data, spacing_mm=flair.spacing_mm, config=config)


def _seed_of(folder: Path):
    try:
        return json.loads((folder / layout.TRUTH).read_text()).get("config", {}).get("seed")
    except (OSError, ValueError, AttributeError):
        return None


def _initialise(trainer, weights: Path, model_config) -> dict:
    """Load ``weights`` into the trainer's network (fine-tuning); refuse another network."""
    from mstools.deep.cards import as_float32, load_weights
    from mstools.io import sha256

    config, state_dict, _ = load_weights(weights)
    if config.as_dict() != model_config.as_dict():
        raise InputError(f"{weights}: weights of another configuration ({config.as_dict()}) than the one trained "
                         f"({model_config.as_dict()}); give weights of the same network and options")
    state_dict = as_float32(state_dict)
    try:
        trainer.model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{weights}: weights do not match the network ({' '.join(str(exc).split())[:200]})") from None
    common.log(f"fine-tuning from {weights}")
    return {"weights": str(weights), "sha256": sha256(weights)}


def train_command(
    output: Path = typer.Argument(..., help="Run folder: checkpoint.pt (resume), model.pt + model.card.json (best on validation), training_log.tsv."),
    model: ModelChoice = typer.Option(ModelChoice.coactseg, "--model", "-m", help="Network to train."),
    cases: Optional[List[Path]] = typer.Option(None, "--cases", help="Training case folder, or folder of case folders (two-time-point and single-time-point); repeatable."),
    val: Optional[List[Path]] = typer.Option(None, "--val", help="Validation case folder(s) (two-time-point), kept apart from training; repeatable."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="TSV with columns case, split (train/val/test); test rows are never read."),
    preset: Preset = typer.Option(Preset.small, "--config", help="small: the default weights' reduced configuration; paper: paper 002's (16 filters, 80^3, 20k iterations)."),
    base_filters: Optional[int] = typer.Option(None, min=1, help="Override the preset's base filters."),
    patch_size: Optional[int] = typer.Option(None, min=16, help="Override the preset's patch size (multiple of 16)."),
    spacing_mm: Optional[float] = typer.Option(None, min=0.0, help="Model grid (mm, isotropic); 0 = train on the cases' own grid."),
    iterations: Optional[int] = typer.Option(None, min=1, help="Training iterations (paper 002: 20000)."),
    batch_longitudinal: int = typer.Option(4, min=1, help="Two-time-point samples per batch (paper 002: 4)."),
    batch_single: int = typer.Option(4, min=0, help="Single-time-point samples per batch, coactseg only (paper 002: 4)."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", min=0.0, help="Adam learning rate (default per model; paper 002: 1e-2)."),
    relation_start: float = typer.Option(0.5, min=0.0, max=1.0, help="Fraction of iterations after which the relation regulariser is on (paper 002: 0.5)."),
    p_random_patch: float = typer.Option(0.0, min=0.0, max=1.0, help="Probability of a random patch in a case with lesions (paper 002: 0)."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Flips, rotations, intensity, bias field, noise, image quality (paper 001)."),
    seed: int = typer.Option(0, help="Seed of every random draw (weights, sampling, augmentation)."),
    validate_every: int = typer.Option(250, min=1, help="Validate every N iterations."),
    checkpoint_every: int = typer.Option(100, min=1, help="Write checkpoint.pt every N iterations."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch."),
    device: str = typer.Option("auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUTPUT/checkpoint.pt."),
    init_weights: Optional[Path] = typer.Option(None, "--init-weights", help="Fine-tune: start from these weights (a model.pt of the same network and configuration, e.g. the packaged ones) instead of random ones."),
    force: bool = typer.Option(False, "--force", help="Start over in an existing run folder."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the written paths."),
) -> None:
    """Train a new-lesion segmentation network on case folders; write weights usable by mstools segment.

    Example: mstools train runs/coact --model coactseg --cases sim/train --cases sim/single --val sim/val --iterations 500 --threads 2
    """
    import dataclasses

    from mstools.deep.config import DEFAULT_LEARNING_RATE, PAPER_CONFIGS, SMALL_CONFIGS, TrainingConfig

    base = (SMALL_CONFIGS if preset == Preset.small else PAPER_CONFIGS)[model.value]
    changes = {k: v for k, v in (("base_filters", base_filters), ("patch_size", patch_size)) if v is not None}
    if spacing_mm is not None:
        changes["spacing_mm"] = spacing_mm if spacing_mm > 0 else None
    try:
        model_config = dataclasses.replace(base, **changes)
        train_config = TrainingConfig(
            iterations=iterations or (20000 if preset == Preset.paper else 1500),
            batch_longitudinal=batch_longitudinal, batch_single=batch_single if model == ModelChoice.coactseg else 0,
            learning_rate=learning_rate or DEFAULT_LEARNING_RATE[model.value], relation_start=relation_start,
            p_random_patch=p_random_patch, augment=augment, seed=seed, validate_every=validate_every,
            checkpoint_every=checkpoint_every)
    except ValueError as exc:
        raise InputError(f"{exc}; see mstools train --help") from None

    if manifest is not None and (cases or val):
        raise InputError("give either --manifest or --cases/--val, not both")
    if manifest is not None:
        train_paths, val_paths = _manifest(manifest)
        train_folders = _expand(train_paths, "training")
        val_folders = _expand(val_paths, "validation") if val_paths else []
    else:
        if not cases:
            raise InputError("no training data: give --cases FOLDER (repeatable) or --manifest TSV")
        train_folders = _expand(cases, "training")
        val_folders = _expand(val, "validation") if val else []
    overlap = {p.resolve() for p in train_folders} & {p.resolve() for p in val_folders}
    if overlap:
        raise InputError(f"{sorted(overlap)[0]}: used for both training and validation; keep validation apart")
    for folder in val_folders:
        if not layout.is_longitudinal_case(folder):
            raise InputError(f"{folder}: validation cases must have two time points (new-lesion truth)")

    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: exists and is not a folder; choose another run folder")
    checkpoint = output / CHECKPOINT
    if resume and not checkpoint.is_file():
        raise InputError(f"{checkpoint}: no checkpoint to resume from; run without --resume first")
    if not resume and not force and output.is_dir() and any(output.iterdir()):
        raise InputError(f"{output}: run folder is not empty; use --resume to continue or --force to start over")
    if not output.parent.exists():
        raise InputError(f"{output.parent}: folder does not exist; create it first")

    import numpy as np
    import torch

    from mstools.deep.inference import select_device
    from mstools.deep.training import Trainer

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch_device = select_device(device)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    common.log(f"loading {len(train_folders)} training and {len(val_folders)} validation cases")
    train_cases = [load_case(f, model_config) for f in train_folders]
    longitudinal = [c for c in train_cases if c.longitudinal]
    single = [c for c in train_cases if not c.longitudinal]
    if not longitudinal:
        raise InputError("training needs at least one two-time-point case (baseline, follow-up, ground truth)")
    if model == ModelChoice.coactseg and train_config.batch_single and not single:
        raise InputError("coactseg mixes single-time-point cases into every batch (paper 002); add some "
                         "(mstools simulate --single-timepoint) or pass --batch-single 0")
    if model != ModelChoice.coactseg and single:
        common.log(f"{model.value} learns from two-time-point cases only: {len(single)} single-time-point cases ignored")
    validation = [load_case(f, model_config, validation=True) for f in val_folders]
    trainer = Trainer(model_config, train_config, longitudinal, single, device=torch_device)
    initialised_from = None
    if init_weights is not None and not resume:
        initialised_from = _initialise(trainer, init_weights, model_config)

    from mstools.io import read_tsv

    output.mkdir(exist_ok=True)
    log_rows: list[dict] = []
    best: dict = {}
    if resume:
        state = torch.load(checkpoint, map_location=torch_device, weights_only=True)
        try:
            trainer.load_state_dict(state["trainer"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise InputError(f"{checkpoint}: cannot resume ({str(exc).splitlines()[0]}); start over with --force") from None
        best = state.get("best", {})
        if (output / LOG).is_file():
            log_rows = [r for r in read_tsv(output / LOG) if int(r["iteration"]) <= trainer.iteration]
        common.log(f"resuming at iteration {trainer.iteration}")
    elapsed = float(log_rows[-1]["seconds"]) if log_rows else 0.0

    record = {"model": model.value, "model_config": model_config.as_dict(), "training_config": train_config.as_dict(),
              "train_cases": [str(f) for f in train_folders], "val_cases": [str(f) for f in val_folders],
              "device": str(torch_device), "threads": torch.get_num_threads(),
              **({"initialised_from": initialised_from} if initialised_from else {})}

    def save_model(path: Path, metrics: dict) -> None:
        from mstools.deep.cards import file_sha256, save_weights, write_card

        save_weights(path, model_config, trainer.model.state_dict(), extra={"iteration": trainer.iteration})
        write_card(path, {
            "model": model.value, "weights": path.name, "sha256": file_sha256(path),
            "configuration": model_config.as_dict(), "training": train_config.as_dict(),
            "iterations": trainer.iteration, "relation_on_from_iteration": trainer.relation_start_iteration,
            "training_data": {
                "longitudinal": [c.name for c in longitudinal], "single_timepoint": [c.name for c in single],
                "generator_seeds": [s for s in (_seed_of(f) for f in train_folders) if s is not None]},
            "validation_data": [f.name for f in val_folders], "validation_metrics": metrics,
            "device": str(torch_device), "threads": torch.get_num_threads(), "torch": torch.__version__,
            **({"initialised_from": initialised_from} if initialised_from else {})})

    def write_log() -> None:
        from mstools.io import OutputBatch

        with OutputBatch(force=True) as out:
            common.add_table(out, output / LOG, log_rows, LOG_COLUMNS, record)

    def save_checkpoint() -> None:
        tmp = output / f".{CHECKPOINT}.tmp"
        torch.save({"trainer": trainer.state_dict(), "best": best}, tmp)
        tmp.replace(checkpoint)

    window: list[dict] = []
    start = time.time()
    progress = None
    if common.progress_enabled():
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TextColumn("{task.fields[loss]}"), TimeRemainingColumn(), transient=True)
        task = progress.add_task("train", total=train_config.iterations, completed=trainer.iteration, loss="")
        progress.start()
    try:
        while trainer.iteration < train_config.iterations:
            window.append(trainer.step())
            it = trainer.iteration
            if progress is not None:
                progress.update(task, completed=it, loss=f"loss {window[-1]['loss']:.3f}")
            log_now = it % 10 == 0 or it == train_config.iterations
            validate_now = validation and (it % validate_every == 0 or it == train_config.iterations)
            if log_now or validate_now:
                row = {"iteration": it, "seconds": round(elapsed + time.time() - start, 1)}
                for key in LOG_COLUMNS[2:11]:
                    values = [w[key] for w in window if key in w]
                    row[key] = float(np.mean(values)) if values else None
                window = []
                if validate_now:
                    metrics = trainer.validate(validation)
                    row.update(metrics)
                    score = np.nan_to_num(metrics["val_lesion_f1"]) + np.nan_to_num(metrics["val_dice"])
                    common.log(f"iteration {it}: validation Dice {metrics['val_dice']:.3f}, lesion F1 "
                               f"{metrics['val_lesion_f1']:.3f}")
                    if not best or score > best["score"]:
                        best = {"score": float(score), "iteration": it, **metrics}
                        save_model(output / MODEL, best)
                elif progress is None:
                    common.log(f"iteration {it}: loss {row['loss']:.4f}", level=1)
                log_rows.append(row)
                write_log()
            if it % checkpoint_every == 0 or it == train_config.iterations:
                save_checkpoint()
    finally:
        if progress is not None:
            progress.stop()
    if not validation:
        best = {"iteration": trainer.iteration}
        save_model(output / MODEL, best)
    save_checkpoint()
    written = [output / MODEL, output / (MODEL.removesuffix(".pt") + ".card.json"), output / LOG, checkpoint]
    common.emit(written, as_json=as_json, payload={"written": [str(p) for p in written], "best": best,
                                                   "iterations": trainer.iteration})


train_command = common.command(train_command)
