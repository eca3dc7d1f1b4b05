"""`mstools train`: train a learned new-lesion model (coactseg, unet, multitask, multiseq, cascade) on case folders."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from mstools_cli import common
from mstools.jobs.train import MODELS, PRESETS

ModelChoice = Enum("ModelChoice", {v: v for v in MODELS}, type=str)  # type: ignore[misc]
Preset = Enum("Preset", {v: v for v in PRESETS}, type=str)  # type: ignore[misc]
Pretext = Enum("Pretext", {"position": "position"}, type=str)  # type: ignore[misc]  # paper 003's only task


def train_command(
    output: Path = typer.Argument(..., help="Run folder: checkpoint.pt (resume), model.pt + model.card.json (best on validation), training_log.tsv."),
    model: ModelChoice = typer.Option(ModelChoice.coactseg, "--model", "-m", help="Network to train."),
    cases: Optional[List[Path]] = typer.Option(None, "--cases", help="Training case folder, or folder of case folders (two-time-point and single-time-point); repeatable."),
    val: Optional[List[Path]] = typer.Option(None, "--val", help="Validation case folder(s) (two-time-point), kept apart from training; repeatable."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="TSV with columns case, split (train/val/test); test rows are never read. cascade: optional columns baseline_lesions, followup_lesions (win over --lesions)."),
    lesions: Optional[str] = typer.Option(None, "--lesions", help="cascade: each case's all-lesion masks of both visits (on its grid): 'case' = its lesions_time01/02 (on simulated cases their difference is the truth: train on the maps you will apply with); NAME = CASE/NAME_all_time01/02_mask.nii.gz of `mstools segment CASE --model coactseg -o CASE/NAME`."),
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
    sequence_dropout: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="multiseq: probability of dropping each of T1 and T2 from a training sample (paper 003's sequence dropout; default 0.5: the four subsets equally often; 1 = a FLAIR-only model)."),
    lesion_size_reference: float = typer.Option(0.0, min=0.0, help="unet, multitask: lesion size reweighting (paper 001, Nichyporuk et al.): lesions under this many voxels of a training sample weigh (N / n) ** 0.5 per voxel in the loss; 0 = off."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Flips, rotations, intensity, bias field, noise, image quality (paper 001)."),
    seed: int = typer.Option(0, help="Seed of every random draw (weights, sampling, augmentation)."),
    validate_every: int = typer.Option(250, min=1, help="Validate every N iterations."),
    checkpoint_every: int = typer.Option(100, min=1, help="Write checkpoint.pt every N iterations."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch."),
    device: str = typer.Option("auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUTPUT/checkpoint.pt."),
    init_weights: Optional[Path] = typer.Option(None, "--init-weights", help="Fine-tune: start from these weights (a model.pt of the same network and configuration, e.g. the packaged ones) instead of random ones; cascade: also a U-Net's of the same configuration (the maps' first-layer weights start at 0)."),
    force: bool = typer.Option(False, "--force", help="Start over in an existing run folder."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the written paths."),
    pretrain: Optional[Pretext] = typer.Option(None, "--pretrain", help="Self-supervised pretraining (paper 003): position = the encoder first learns each patch's place in the brain from --unlabelled scans (in OUTPUT/pretrain), then every layer is fine-tuned on --cases; without --cases, only pretrain into OUTPUT (its encoder.pt goes to --init-weights)."),
    unlabelled: Optional[List[Path]] = typer.Option(None, "--unlabelled", help="With --pretrain: FLAIR files, case folders or folders of them, used without labels; repeatable."),
    pretrain_iterations: Optional[int] = typer.Option(None, min=1, help="With --pretrain: pretraining iterations (default: the benchmark's 400)."),
    pretrain_batch: Optional[int] = typer.Option(None, min=1, help="With --pretrain: patches per pretraining batch, all from one scan (default: paper 003's 12)."),
) -> None:
    """Train a new-lesion segmentation network on case folders; write weights usable by mstools segment.

    Example: mstools train runs/coact --model coactseg --cases sim/train --cases sim/single --val sim/val --iterations 500 --threads 2

    FLAIR with optional T1/T2 (case folders from mstools simulate --t1 --t2): mstools train runs/ms --model multiseq --cases sim/train --iterations 300

    Pretrained: mstools train runs/unet-pre --model unet --pretrain position --unlabelled flairs/ --cases sim/train --iterations 300

    Cascade (all-lesion maps of mstools segment --model coactseg -o CASE/coactseg, from the packaged U-Net): mstools train runs/cascade --model cascade --lesions coactseg --cases sim/train --init-weights mstools/models/deep/unet.pt --iterations 300
    """
    from mstools.jobs.train import manifest_lesion_maps, train_job, training_configs, training_folders

    if pretrain is None and unlabelled:
        from mstools.errors import InputError

        raise InputError("--unlabelled is read only with --pretrain position; add it or drop --unlabelled")

    model_config, train_config = training_configs(
        model.value, preset=preset.value, base_filters=base_filters, patch_size=patch_size, spacing_mm=spacing_mm,
        iterations=iterations, batch_longitudinal=batch_longitudinal, batch_single=batch_single,
        learning_rate=learning_rate, relation_start=relation_start, p_random_patch=p_random_patch, augment=augment,
        seed=seed, validate_every=validate_every, checkpoint_every=checkpoint_every, sequence_dropout=sequence_dropout,
        lesion_size_reference=lesion_size_reference)
    if pretrain is not None:
        if lesions is not None:
            from mstools.errors import InputError

            raise InputError("--pretrain position trains a U-Net or CoactSeg encoder; --lesions is read by --model "
                             "cascade without --pretrain")
        _pretrain(output, model_config, train_config, cases, val, manifest, unlabelled, pretrain_iterations,
                  pretrain_batch, threads=threads, device=device, resume=resume, force=force, as_json=as_json,
                  init_weights=init_weights)
        return
    train_folders, val_folders = training_folders(cases, val, manifest)
    with _progress() as progress:
        result = train_job(output, model_config, train_config, train_folders, val_folders, threads=threads,
                           device=device, resume=resume, init_weights=init_weights, force=force, lesions=lesions,
                           lesion_maps=manifest_lesion_maps(manifest), progress=progress)
    common.report(result, as_json=as_json)


def _pretrain(output, model_config, train_config, cases, val, manifest, unlabelled, iterations, batch, *, threads,
              device, resume, force, as_json, init_weights) -> None:
    """--pretrain position: pretrain only (no training cases), or pretrain then fine-tune."""
    from mstools.detect.deep.pretext import check_model
    from mstools.errors import InputError
    from mstools.jobs.pretrain import DEFAULT_ITERATIONS, pretrain_job, pretrain_then_train_job, unlabelled_scans
    from mstools.jobs.train import training_folders

    iterations = iterations or DEFAULT_ITERATIONS
    check_model(model_config.model)
    if init_weights is not None:
        raise InputError("--init-weights and --pretrain both choose the starting weights; give one of them")
    if not unlabelled:
        raise InputError("--pretrain position needs unlabelled scans: give --unlabelled FLAIR files or folders")
    scans = unlabelled_scans(unlabelled)
    with _progress() as progress:
        if not cases and manifest is None:
            if val:
                raise InputError("--val without --cases: give training cases to fine-tune, or drop --val")
            result = pretrain_job(output, model_config, scans, iterations=iterations, batch=batch,
                                  seed=train_config.seed, checkpoint_every=train_config.checkpoint_every,
                                  threads=threads, device=device, resume=resume, force=force, progress=progress)
        else:
            train_folders, val_folders = training_folders(cases, val, manifest)
            result = pretrain_then_train_job(output, model_config, train_config, scans, train_folders, val_folders,
                                             pretrain_iterations=iterations, pretrain_batch=batch, threads=threads,
                                             device=device, resume=resume, force=force, progress=progress)
    common.report(result, as_json=as_json)


class _progress:
    """The training bar (iterations, loss) on a terminal; None otherwise (then -v logs the loss)."""

    def __init__(self):
        self.bar = None

    def update(self, done: int, total: int, loss: float) -> None:
        if self.bar is None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                TextColumn("{task.fields[loss]}"), TimeRemainingColumn(), transient=True)
            self.task = self.bar.add_task("train", total=total, completed=done, loss="")
            self.bar.start()
        self.bar.update(self.task, completed=done, loss=f"loss {loss:.3f}")

    def __enter__(self):
        return self.update if common.progress_enabled() else None

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


train_command = common.command(train_command)
