"""Self-supervised pretraining as a job (``mstools train --pretrain position``): the
unlabelled scans, the pretraining run folder, and pretraining followed by fine-tuning.

The method is :mod:`mstools.detect.deep.pretext`'s (paper 003). A pretraining run folder
holds ``checkpoint.pt`` (resume), ``encoder.pt`` + ``encoder.card.json`` (the pretrained
encoder, loaded by ``mstools train --init-weights``) and ``training_log.tsv``. With
training cases, ``mstools train RUN --pretrain position`` pretrains in ``RUN/pretrain`` and
then fine-tunes in ``RUN`` as ``mstools train`` always does (its ``model.pt`` is the
result); ``--resume`` continues whichever of the two stages is unfinished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from mstools import case_layout as layout
from mstools.detections import add_table
from mstools.errors import InputError
from mstools.jobs import JobResult
from mstools.messages import log

ENCODER = "encoder.pt"
PRETRAIN_FOLDER = "pretrain"
LOG_COLUMNS = ("iteration", "seconds", "loss", "position_error_mm")
#: Pretraining iterations when none are given: the benchmark's budget (paper 003 gives none).
#: benchmarks/pretrain_position.py: 400 batches of 12 patches (32^3, 1.5 mm grid) bring the
#: mean position error on 35 unlabelled FLAIRs from 93 mm (first 10 batches) to 13 mm
#: (last 10), ~14 min on one shared CPU thread.
DEFAULT_ITERATIONS = 400


@dataclass(frozen=True)
class UnlabelledScan:
    """A FLAIR used without labels, and the brain mask beside it if there is one."""

    name: str
    flair: Path
    brain_mask: Optional[Path] = None


def _is_nifti(p: Path) -> bool:
    return p.is_file() and (p.name.endswith(".nii") or p.name.endswith(".nii.gz"))


def _case_scans(folder: Path) -> list[UnlabelledScan]:
    mask = folder / layout.BRAIN_MASK
    mask = mask if mask.is_file() else None
    names = (layout.BASELINE, layout.FOLLOWUP) if layout.is_longitudinal_case(folder) else (layout.SINGLE_FLAIR,)
    return [UnlabelledScan(f"{folder.name}/{n}", folder / n, mask) for n in names]


def _held_out(folder: Path) -> bool:
    import json

    source = folder / "source.json"
    try:
        return bool(source.is_file() and json.loads(source.read_text()).get("held_out"))
    except (OSError, ValueError, AttributeError):
        return False


def unlabelled_scans(paths: List[Path]) -> list[UnlabelledScan]:
    """The FLAIRs named by ``paths``: a NIfTI file; a case folder (each of its FLAIRs, with its
    brain mask); or a folder of those. Masks and lesions are never read. Case folders that
    ``import-open-ms`` marked as held out are refused."""
    scans: list[UnlabelledScan] = []
    for p in paths:
        if _is_nifti(p):
            scans.append(UnlabelledScan(p.name, p))
            continue
        if not p.is_dir():
            raise InputError(f"{p}: unlabelled scan not found; give FLAIR files (.nii/.nii.gz), case folders or "
                             "folders of them")
        folders = [p] if (layout.is_longitudinal_case(p) or layout.is_single_case(p)) else \
            layout.case_folders(p, single_timepoint=True)
        for folder in folders:
            if _held_out(folder):
                raise InputError(f"{folder}: a held-out case (source.json); never pretrain on the acceptance set")
            scans.extend(_case_scans(folder))
        if not folders:
            files = sorted(f for f in p.iterdir() if _is_nifti(f))
            if not files:
                raise InputError(f"{p}: no FLAIR file or case folder in it; give FLAIR files or case folders")
            scans.extend(UnlabelledScan(f.name, f) for f in files)
    if not scans:
        raise InputError("no unlabelled scan: give --unlabelled FLAIR files or folders (repeatable)")
    return scans


def load_scan(scan: UnlabelledScan, config):
    from mstools.detect.deep.pretext import prepare_scan
    from mstools.io import check_same_grid, read_mask, read_scan

    image = read_scan(scan.flair)
    mask = None
    if scan.brain_mask is not None:
        mask_image = read_mask(scan.brain_mask, allow_empty=False)
        check_same_grid(image, mask_image)
        mask = mask_image.data
    return prepare_scan(scan.name, image.data, affine=image.affine, config=config, brain_mask=mask)


def pretrain_job(output: Path, model_config, scans: list[UnlabelledScan], *, iterations: int = DEFAULT_ITERATIONS,
                 batch: Optional[int] = None, learning_rate: Optional[float] = None, seed: int = 0,
                 checkpoint_every: int = 100, threads: Optional[int] = None, device: str = "auto",
                 resume: bool = False, force: bool = False,
                 progress: Optional[Callable[[int, int, float], None]] = None) -> JobResult:
    """Pretrain the encoder of ``model_config``'s network to predict patch positions (paper 003)
    in the run folder ``output`` (or resume it); ``encoder.pt`` is the last state."""
    import torch

    from mstools.detect.deep.config import DEFAULT_LEARNING_RATE
    from mstools.detect.deep.pretext import BATCH, PretextTrainer, check_model, save_encoder
    from mstools.io import OutputBatch, read_tsv, sha256
    from mstools.jobs.train import CHECKPOINT, LOG, _check_run_folder, training_device
    from mstools.models import card_path, write_card

    check_model(model_config.model)
    checkpoint = _check_run_folder(output, resume=resume, force=force, inputs=[s.flair for s in scans])
    torch_device = training_device(device, threads)
    log(f"loading {len(scans)} unlabelled scans")
    prepared = [load_scan(s, model_config) for s in scans]
    trainer = PretextTrainer(model_config, prepared, iterations=iterations, batch=batch or BATCH,
                             learning_rate=learning_rate or DEFAULT_LEARNING_RATE[model_config.model], seed=seed,
                             device=torch_device)
    rows: list[dict] = []
    output.mkdir(parents=True, exist_ok=True)
    if resume:
        state = torch.load(checkpoint, map_location=torch_device, weights_only=True)
        try:
            trainer.load_state_dict(state["trainer"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise InputError(f"{checkpoint}: cannot resume ({str(exc).splitlines()[0]}); start over with --force") from None
        if (output / LOG).is_file():
            rows = [r for r in read_tsv(output / LOG) if int(r["iteration"]) <= trainer.iteration]
        log(f"resuming pretraining at iteration {trainer.iteration}")
    record = {"pretext": trainer.settings(), "model_config": model_config.as_dict(),
              "scans": [str(s.flair) for s in scans], "device": str(torch_device), "threads": torch.get_num_threads()}

    def save() -> None:
        tmp = output / f".{CHECKPOINT}.tmp"
        torch.save({"trainer": trainer.state_dict()}, tmp)
        tmp.replace(checkpoint)
        path = output / ENCODER
        save_encoder(path, model_config, trainer.encoder_state_dict(), extra={"iteration": trainer.iteration})
        write_card(path, {"model": model_config.model, "weights": path.name, "sha256": sha256(path),
                          "kind": "pretrained encoder (paper 003, patch position)",
                          "configuration": model_config.as_dict(), "pretext": trainer.settings(),
                          "iterations": trainer.iteration, "unlabelled_scans": [s.name for s in scans],
                          "device": str(torch_device), "threads": torch.get_num_threads(),
                          "torch": torch.__version__})
        with OutputBatch(force=True) as out:
            add_table(out, output / LOG, rows, LOG_COLUMNS, record)

    elapsed = float(rows[-1]["seconds"]) if rows else 0.0
    start, window = time.time(), []
    while trainer.iteration < iterations:
        window.append(trainer.step())
        it = trainer.iteration
        if progress is not None:
            progress(it, iterations, window[-1]["loss"])
        if it % 10 == 0 or it == iterations:
            rows.append({"iteration": it, "seconds": round(elapsed + time.time() - start, 1),
                         **{k: sum(w[k] for w in window) / len(window) for k in LOG_COLUMNS[2:]}})
            window = []
            if progress is None:
                log(f"pretraining iteration {it}: loss {rows[-1]['loss']:.4f}, position error "
                    f"{rows[-1]['position_error_mm']:.1f} mm", level=1)
        if it % checkpoint_every == 0 or it == iterations:
            save()
    if not (output / ENCODER).is_file():
        save()
    written = [output / ENCODER, card_path(output / ENCODER), output / LOG, checkpoint]
    last = rows[-1] if rows else {}
    return JobResult(written, {"written": [str(p) for p in written], "iterations": trainer.iteration,
                               "position_error_mm": last.get("position_error_mm")})


def pretrain_then_train_job(output: Path, model_config, train_config, scans: list[UnlabelledScan],
                            train_folders: list[Path], val_folders: list[Path], *,
                            pretrain_iterations: int = DEFAULT_ITERATIONS, pretrain_batch: Optional[int] = None,
                            threads: Optional[int] = None, device: str = "auto", resume: bool = False,
                            force: bool = False, progress=None) -> JobResult:
    """Pretrain in ``output/pretrain``, then fine-tune every layer (paper 003's best variant)
    from the pretrained encoder in ``output`` with the usual training loop."""
    from mstools.detect.deep.pretext import check_model
    from mstools.jobs.train import CHECKPOINT, _check_run_folder, train_job

    check_model(model_config.model)
    pre = output / PRETRAIN_FOLDER
    if not resume:
        _check_run_folder(output, resume=False, force=force)
    elif not (pre / CHECKPOINT).is_file():
        raise InputError(f"{pre / CHECKPOINT}: no pretraining checkpoint to resume from; run without --resume first")
    done = _finished(pre / ENCODER, pretrain_iterations) if resume else False
    if not done:
        pre_result = pretrain_job(pre, model_config, scans, iterations=pretrain_iterations, batch=pretrain_batch,
                                  seed=train_config.seed, checkpoint_every=train_config.checkpoint_every,
                                  threads=threads, device=device, resume=resume, force=True, progress=progress)
    else:
        pre_result = None
    fine_resume = resume and (output / CHECKPOINT).is_file()
    result = train_job(output, model_config, train_config, train_folders, val_folders, threads=threads,
                       device=device, resume=fine_resume, init_weights=pre / ENCODER, force=True,
                       progress=progress)
    payload = dict(result.payload)
    payload["pretrain"] = pre_result.payload if pre_result is not None else {"written": [str(pre / ENCODER)]}
    return JobResult([*(pre_result.written if pre_result else []), *result.written], payload)


def _finished(encoder: Path, iterations: int) -> bool:
    from mstools.detect.deep.pretext import load_encoder

    if not encoder.is_file():
        return False
    _, _, extra = load_encoder(encoder)
    return int(extra.get("iteration", 0)) >= iterations
