"""Training a learned new-lesion model as a job (``mstools train``): the configurations, the
case folders, and the training loop with its checkpoints, resume, validation and best model.

The network, sampling, losses and one optimisation step are :mod:`mstools.detect.deep.training`'s;
this module owns the run folder: ``checkpoint.pt`` (resume), ``model.pt`` +
``model.card.json`` (best on validation), ``training_log.tsv``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, List, Optional

from mstools import case_layout as layout
from mstools.detect.deep import MODELS
from mstools.detections import add_table
from mstools.errors import InputError
from mstools.jobs import JobResult
from mstools.messages import log

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
LOG = "training_log.tsv"
LOG_COLUMNS = ("iteration", "seconds", "loss", "dice_all", "dice_new", "relation", "bce", "registration",
               "similarity", "smoothness", "relation_weight", "val_dice", "val_lesion_f1",
               "val_lesion_sensitivity", "val_lesion_ppv")
PRESETS = ("small", "paper")


def _expand(paths: List[Path], what: str) -> list[Path]:
    """Case folders: each path is a case folder or a folder of case folders."""
    cases: list[Path] = []
    for p in paths:
        if not p.is_dir():
            raise InputError(f"{p}: {what} folder not found; give case folders or folders of case folders")
        if layout.is_longitudinal_case(p) or layout.is_single_case(p):
            cases.append(p)
            continue
        inner = layout.case_folders(p, single_timepoint=True)
        if not inner:
            raise InputError(f"{p}: no case folder found (expected {layout.BASELINE} + {layout.FOLLOWUP}, or "
                             f"{layout.SINGLE_FLAIR}); make some with mstools simulate")
        cases.extend(inner)
    return cases



def _manifest(path: Path) -> tuple[list[Path], list[Path]]:
    """Train and validation folders of a manifest TSV (:data:`mstools.manifest.TRAIN`; test rows are never read)."""
    from mstools.manifest import TRAIN, read_manifest

    rows = read_manifest(path, TRAIN)
    return ([r.path("case") for r in rows if r.text("split") == "train"],
            [r.path("case") for r in rows if r.text("split") == "val"])


def load_case(folder: Path, config, *, validation: bool = False, lesion_maps: Optional[tuple[Path, Path]] = None):
    """A case folder as a TrainingCase (or ValidationCase) on the model grid; the cascade's
    with its all-lesion masks ``lesion_maps`` (baseline, follow-up files)."""
    from mstools.detect.deep.networks import network
    from mstools.detect.deep.training import prepare_case, prepare_validation
    from mstools.io import check_same_grid, read_image, read_mask

    if network(config.model).lesion_maps:
        return load_cascade_case(folder, config, lesion_maps, validation=validation)
    if config.model == "multiseq" and not validation:
        return load_multisequence_case(folder, config)
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



def _read_labelled_pair(folder: Path):
    """Both FLAIRs and the new-lesion truth of a two-time-point case folder, checked on one grid."""
    from mstools.io import check_same_grid, read_image, read_mask

    baseline = read_image(folder / layout.BASELINE)
    followup = read_image(folder / layout.FOLLOWUP)
    truth = read_mask(folder / layout.GROUND_TRUTH)
    check_same_grid(baseline, followup)
    check_same_grid(baseline, truth)
    return baseline, followup, truth


def load_multisequence_case(folder: Path, config):
    """A two-time-point case folder with whichever T1/T2 it holds, as a multi-sequence training case."""
    from mstools.case import read_sequences
    from mstools.detect.deep.multisequence import prepare_multisequence_case

    if not layout.is_longitudinal_case(folder):
        raise InputError(f"{folder}: multiseq learns from two-time-point cases only (new-lesion truth); "
                         "remove single-time-point folders from its training data")
    baseline, followup, truth = _read_labelled_pair(folder)
    seq = read_sequences(layout.sequence_files(folder), baseline)

    def pair(sequence):
        return tuple(seq[(sequence, v)].data if (sequence, v) in seq else None for v in (0, 1))

    return prepare_multisequence_case(folder.name, (baseline.data, followup.data), truth.data,
                                      spacing_mm=baseline.spacing_mm, config=config, t1=pair("t1"), t2=pair("t2"))


def load_cascade_case(folder: Path, config, lesion_maps: Optional[tuple[Path, Path]], *, validation: bool = False):
    """A two-time-point case folder with both visits' all-lesion masks (binary, on the case grid:
    checked) as a cascade training or validation case on the model grid."""
    from mstools.detect.deep.cascade import prepare_cascade_case, prepare_cascade_validation
    from mstools.jobs.segment import read_lesion_maps

    if not layout.is_longitudinal_case(folder):
        raise InputError(f"{folder}: {config.model} learns from two-time-point cases only (new-lesion truth and "
                         "both visits' all-lesion maps); remove single-time-point folders from its training data")
    if lesion_maps is None:
        raise InputError(f"{folder}: no all-lesion maps; --model {config.model} reads both visits' maps of every "
                         "case: give --lesions SOURCE (or the manifest columns baseline_lesions and followup_lesions)")
    baseline, followup, truth = _read_labelled_pair(folder)
    maps = tuple(m.data for m in read_lesion_maps(lesion_maps, baseline, model=config.model))
    prepare = prepare_cascade_validation if validation else prepare_cascade_case
    return prepare(folder.name, baseline.data, followup.data, truth.data, maps, spacing_mm=baseline.spacing_mm,
                   config=config)


def case_lesion_maps(folders: list[Path], source: Optional[str], given: Optional[dict] = None) -> dict:
    """{folder: (baseline, follow-up) all-lesion mask files} of the cascade's cases: a manifest's
    ``baseline_lesions``/``followup_lesions`` (``given``, keyed by the resolved folder) win, else
    SOURCE's (:func:`mstools.jobs.segment.cascade_entry_maps`); a folder with neither is left out."""
    from mstools.jobs.segment import cascade_entry_maps

    found = {}
    for folder in folders:
        maps = (given or {}).get(folder.resolve())
        if maps is None and source is not None:
            maps = cascade_entry_maps(folder, source)
        if maps is not None:
            found[folder] = tuple(Path(p) for p in maps)
    return found


def manifest_lesion_maps(manifest: Optional[Path]) -> dict:
    """{resolved case folder: (baseline, follow-up) files} of a training manifest's optional
    ``baseline_lesions`` and ``followup_lesions`` columns (both or neither on a row)."""
    from mstools.manifest import TRAIN, read_manifest

    if manifest is None:
        return {}
    found = {}
    for row in read_manifest(manifest, TRAIN):
        maps = (row.path("baseline_lesions"), row.path("followup_lesions"))
        if (maps[0] is None) != (maps[1] is None):
            raise InputError(f"{manifest}: line {row.line} gives one all-lesion mask; give baseline_lesions and "
                             "followup_lesions both, or neither")
        if maps[0] is not None:
            found[row.path("case").resolve()] = maps
    return found


def _sequence_counts(cases) -> dict:
    """multiseq: how many training cases hold each input channel (before sequence dropout)."""
    from mstools.detect.deep.multisequence import CHANNELS

    return {f"{s}_time0{v + 1}": int(sum(bool(c.available[n]) for c in cases)) for n, (s, v) in enumerate(CHANNELS)}


def _seed_of(folder: Path):
    try:
        return json.loads((folder / layout.TRUTH).read_text()).get("config", {}).get("seed")
    except (OSError, ValueError, AttributeError):
        return None



def _initialise(trainer, weights: Path, model_config) -> dict:
    """Load ``weights`` into the trainer's network (fine-tuning); refuse another network."""
    from mstools.detect.deep.pretext import is_encoder_file
    from mstools.detect.deep.weights import as_float32, load_weights
    from mstools.io import sha256

    if weights.is_file() and is_encoder_file(weights):   # a pretrained encoder (paper 003)
        return _initialise_encoder(trainer, weights, model_config)
    config, state_dict, _ = load_weights(weights)
    widened = _widen_unet(config, model_config)
    if widened:   # the cascade started from two-channel U-Net weights (paper 001; cascade.widen_state)
        from mstools.detect.deep.cascade import widen_state

        state_dict = widen_state(as_float32(state_dict))
        config = model_config
    if config.as_dict() != model_config.as_dict():
        raise InputError(f"{weights}: weights of another configuration ({config.as_dict()}) than the one trained "
                         f"({model_config.as_dict()}); give weights of the same network and options")
    state_dict = as_float32(state_dict)
    try:
        trainer.model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{weights}: weights do not match the network ({' '.join(str(exc).split())[:200]})") from None
    log(f"fine-tuning from {weights}" + (" (U-Net weights, the maps' first-layer weights at 0)" if widened else ""))
    return {"weights": str(weights), "sha256": sha256(weights), **({"widened_from": "unet"} if widened else {})}


def _widen_unet(config, model_config) -> bool:
    """True when ``config`` is a U-Net's and ``model_config`` the cascade of the same configuration."""
    import dataclasses

    from mstools.detect.deep.networks import network

    return (network(model_config.model).lesion_maps and config.model == "unet"
            and dataclasses.replace(config, model=model_config.model) == model_config)



def _initialise_encoder(trainer, encoder: Path, model_config) -> dict:
    """Copy a pretrained encoder (``mstools train --pretrain position``) into the trainer's network."""
    from mstools.detect.deep.pretext import load_encoder, transfer_encoder
    from mstools.io import sha256

    config, state, extra = load_encoder(encoder)
    copied = transfer_encoder(trainer.model, model_config, config, state, source=str(encoder))
    log(f"fine-tuning from the pretrained encoder {encoder} ({len(copied)} tensors)")
    return {"weights": str(encoder), "sha256": sha256(encoder), "pretext": "position",
            "pretrain_iterations": extra.get("iteration"), "tensors": len(copied)}


def training_configs(model: str, *, preset: str = "small", base_filters: Optional[int] = None,
                     patch_size: Optional[int] = None, spacing_mm: Optional[float] = None,
                     iterations: Optional[int] = None, batch_longitudinal: int = 4, batch_single: int = 4,
                     learning_rate: Optional[float] = None, relation_start: float = 0.5, p_random_patch: float = 0.0,
                     augment: bool = True, seed: int = 0, validate_every: int = 250, checkpoint_every: int = 100,
                     sequence_dropout: Optional[float] = None, lesion_size_reference: float = 0.0):
    """(ModelConfig, TrainingConfig) of a preset (small: the default weights'; paper: paper 002's)
    with the given changes; None keeps the preset's value."""
    import dataclasses

    from mstools.detect.deep.config import DEFAULT_LEARNING_RATE, PAPER_CONFIGS, SMALL_CONFIGS, TrainingConfig
    from mstools.detect.deep.networks import network

    base = (SMALL_CONFIGS if preset == "small" else PAPER_CONFIGS)[model]
    changes = {k: v for k, v in (("base_filters", base_filters), ("patch_size", patch_size)) if v is not None}
    if spacing_mm is not None:
        changes["spacing_mm"] = spacing_mm if spacing_mm > 0 else None
    try:
        model_config = dataclasses.replace(base, **changes)
        train_config = TrainingConfig(
            iterations=iterations or (20000 if preset == "paper" else 1500),
            batch_longitudinal=batch_longitudinal,
            batch_single=batch_single if network(model).single_timepoint else 0,
            learning_rate=learning_rate or DEFAULT_LEARNING_RATE[model], relation_start=relation_start,
            p_random_patch=p_random_patch, augment=augment, seed=seed, validate_every=validate_every,
            checkpoint_every=checkpoint_every, lesion_size_reference=lesion_size_reference,
            **({} if sequence_dropout is None else {"sequence_dropout": sequence_dropout}))
    except ValueError as exc:
        raise InputError(f"{exc}; see mstools train --help") from None
    return model_config, train_config


def training_folders(cases: Optional[List[Path]], val: Optional[List[Path]],
                     manifest: Optional[Path]) -> tuple[list[Path], list[Path]]:
    """Training and validation case folders (from folders or a manifest), kept apart."""
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
    return train_folders, val_folders


def training_device(device: str, threads: Optional[int]):
    """The torch device a training job runs on (``device`` checked: one-line error) after
    limiting torch to ``threads`` CPU threads when given."""
    import torch

    from mstools.detect.deep.inference import select_device

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return select_device(device)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _check_run_folder(output: Path, *, resume: bool, force: bool, inputs: tuple = ()) -> Path:
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: exists and is not a folder; choose another run folder")
    written = [output / name for name in (MODEL, MODEL.removesuffix(".pt") + ".card.json", LOG, CHECKPOINT)]
    for source in (Path(p) for p in inputs if p is not None):
        if any(source.resolve() == target.resolve() for target in written):
            raise InputError(f"{source}: is an input of the training and would be overwritten by it; copy it "
                             f"elsewhere or choose another run folder than {output} (inputs are never modified)")
    checkpoint = output / CHECKPOINT
    if resume and not checkpoint.is_file():
        raise InputError(f"{checkpoint}: no checkpoint to resume from; run without --resume first")
    if not resume and not force and output.is_dir() and any(output.iterdir()):
        raise InputError(f"{output}: run folder is not empty; use --resume to continue or --force to start over")
    from mstools.io import check_writable

    # the run folder and its missing parents are made when training starts
    check_writable(output / LOG, force=True, create_dirs=True)
    return checkpoint


class _Run:
    """A training run folder: the trainer, its log rows, the best model so far, checkpoints."""

    def __init__(self, output: Path, trainer, model_config, train_config, longitudinal, single, train_folders,
                 val_folders, device, initialised_from):
        import torch

        self.output, self.trainer = output, trainer
        self.model_config, self.train_config = model_config, train_config
        self.longitudinal, self.single = longitudinal, single
        self.train_folders, self.val_folders = train_folders, val_folders
        self.device, self.initialised_from = device, initialised_from
        self.data_extra: dict = {}      # the card's training_data additions (the cascade's maps)
        self.log_rows: list[dict] = []
        self.best: dict = {}
        self.record = {"model": model_config.model, "model_config": model_config.as_dict(),
                       "training_config": train_config.as_dict(),
                       "train_cases": [str(f) for f in train_folders], "val_cases": [str(f) for f in val_folders],
                       "device": str(device), "threads": torch.get_num_threads(),
                       **({"initialised_from": initialised_from} if initialised_from else {})}

    def resume(self) -> None:
        import torch

        from mstools.io import read_tsv

        checkpoint = self.output / CHECKPOINT
        state = torch.load(checkpoint, map_location=self.device, weights_only=True)
        try:
            self.trainer.load_state_dict(state["trainer"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise InputError(f"{checkpoint}: cannot resume ({str(exc).splitlines()[0]}); start over with --force") from None
        self.best = state.get("best", {})
        if (self.output / LOG).is_file():
            self.log_rows = [r for r in read_tsv(self.output / LOG) if int(r["iteration"]) <= self.trainer.iteration]
        log(f"resuming at iteration {self.trainer.iteration}")

    def save_model(self, metrics: dict) -> None:
        import torch

        from mstools.detect.deep.weights import save_weights
        from mstools.io import sha256
        from mstools.models import write_card

        path, trainer = self.output / MODEL, self.trainer
        save_weights(path, self.model_config, trainer.model.state_dict(), extra={"iteration": trainer.iteration})
        write_card(path, {
            "model": self.model_config.model, "weights": path.name, "sha256": sha256(path),
            "configuration": self.model_config.as_dict(), "training": self.train_config.as_dict(),
            "iterations": trainer.iteration, "relation_on_from_iteration": trainer.relation_start_iteration,
            "training_data": {
                "longitudinal": [c.name for c in self.longitudinal], "single_timepoint": [c.name for c in self.single],
                "generator_seeds": [s for s in (_seed_of(f) for f in self.train_folders) if s is not None],
                **({"sequences_available": _sequence_counts(self.longitudinal)}
                   if self.model_config.model == "multiseq" else {}), **self.data_extra},
            "validation_data": [f.name for f in self.val_folders], "validation_metrics": metrics,
            "device": str(self.device), "threads": torch.get_num_threads(), "torch": torch.__version__,
            **({"initialised_from": self.initialised_from} if self.initialised_from else {})})

    def write_log(self) -> None:
        from mstools.io import OutputBatch

        with OutputBatch(force=True) as out:
            add_table(out, self.output / LOG, self.log_rows, LOG_COLUMNS, self.record)

    def save_checkpoint(self) -> None:
        import torch

        tmp = self.output / f".{CHECKPOINT}.tmp"
        torch.save({"trainer": self.trainer.state_dict(), "best": self.best}, tmp)
        tmp.replace(self.output / CHECKPOINT)

    def loop(self, validation: list, progress: Optional[Callable[[int, int, float], None]]) -> None:
        """Train to the configured iterations: log every 10, validate (keep the best), checkpoint."""
        import numpy as np

        trainer, config = self.trainer, self.train_config
        elapsed = float(self.log_rows[-1]["seconds"]) if self.log_rows else 0.0
        window: list[dict] = []
        start = time.time()
        while trainer.iteration < config.iterations:
            window.append(trainer.step())
            it = trainer.iteration
            if progress is not None:
                progress(it, config.iterations, window[-1]["loss"])
            log_now = it % 10 == 0 or it == config.iterations
            validate_now = validation and (it % config.validate_every == 0 or it == config.iterations)
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
                    log(f"iteration {it}: validation Dice {metrics['val_dice']:.3f}, lesion F1 "
                        f"{metrics['val_lesion_f1']:.3f}")
                    if not self.best or score > self.best["score"]:
                        self.best = {"score": float(score), "iteration": it, **metrics}
                        self.save_model(self.best)
                elif progress is None:
                    log(f"iteration {it}: loss {row['loss']:.4f}", level=1)
                self.log_rows.append(row)
                self.write_log()
            if it % config.checkpoint_every == 0 or it == config.iterations:
                self.save_checkpoint()


def train_job(output: Path, model_config, train_config, train_folders: list[Path], val_folders: list[Path], *,
              threads: Optional[int] = None, device: str = "auto", resume: bool = False,
              init_weights: Optional[Path] = None, force: bool = False, lesions: Optional[str] = None,
              lesion_maps: Optional[dict] = None,
              progress: Optional[Callable[[int, int, float], None]] = None) -> JobResult:
    """Train (or resume) a network in the run folder ``output``; the best model on validation
    (the last without validation) is ``model.pt`` with its card. ``progress(iteration, total, loss)``.

    The cascade (``model_config.model`` ``cascade``) reads each case's all-lesion masks: the
    manifest's (``lesion_maps``: :func:`manifest_lesion_maps`), else SOURCE ``lesions``'s
    (:func:`mstools.jobs.segment.cascade_entry_maps`)."""
    from mstools.detect.deep.networks import network

    cascade = network(model_config.model).lesion_maps
    if lesions is not None and not cascade:
        raise InputError(f"--lesions is read by --model cascade; --model {model_config.model} reads no all-lesion "
                         "maps (drop it)")
    checkpoint = _check_run_folder(output, resume=resume, force=force, inputs=() if resume else (init_weights,))
    from mstools.detect.deep.training import Trainer
    from mstools.models import card_path

    torch_device = training_device(device, threads)
    model = model_config.model
    maps = case_lesion_maps(train_folders + val_folders, lesions, lesion_maps) if cascade else {}
    log(f"loading {len(train_folders)} training and {len(val_folders)} validation cases")
    train_cases = [load_case(f, model_config, lesion_maps=maps.get(f)) for f in train_folders]
    longitudinal = [c for c in train_cases if c.longitudinal]
    single = [c for c in train_cases if not c.longitudinal]
    if not longitudinal:
        raise InputError("training needs at least one two-time-point case (baseline, follow-up, ground truth)")
    mixes_single = network(model).single_timepoint
    if mixes_single and train_config.batch_single and not single:
        raise InputError(f"{model} mixes single-time-point cases into every batch (paper 002); add some "
                         "(mstools simulate --single-timepoint) or pass --batch-single 0")
    if not mixes_single and single:
        log(f"{model} learns from two-time-point cases only: {len(single)} single-time-point cases ignored")
    validation = [load_case(f, model_config, validation=True, lesion_maps=maps.get(f)) for f in val_folders]
    trainer_class = Trainer
    if model == "multiseq":   # FLAIR + any T1/T2, sequence dropout (papers 003, 004)
        from mstools.detect.deep.multisequence import MultiSequenceTrainer as trainer_class
    elif cascade:             # + both visits' all-lesion maps (paper 001)
        from mstools.detect.deep.cascade import CascadeTrainer as trainer_class
    trainer = trainer_class(model_config, train_config, longitudinal, single, device=torch_device)
    initialised_from = None
    if init_weights is not None and not resume:
        initialised_from = _initialise(trainer, init_weights, model_config)
    output.mkdir(parents=True, exist_ok=True)
    run = _Run(output, trainer, model_config, train_config, longitudinal, single, train_folders, val_folders,
               torch_device, initialised_from)
    if cascade:
        run.data_extra = {"lesions": lesions, "lesion_maps": {f.name: [str(p) for p in maps[f]] for f in maps}}
        run.record["lesions"] = lesions
    if resume:
        run.resume()
    run.loop(validation, progress)
    if not validation:
        run.best = {"iteration": trainer.iteration}
        run.save_model(run.best)
    run.save_checkpoint()
    written = [output / MODEL, card_path(output / MODEL), output / LOG, checkpoint]
    return JobResult(written, {"written": [str(p) for p in written], "best": run.best, "iterations": trainer.iteration})
