"""`mstools segment`: learned new-lesion segmentation (coactseg, unet, multitask) of a case."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from cli import common
from mstools import case_layout as layout
from mstools.errors import InputError

#: Extra outputs of CoactSeg: all-lesion maps of both time points (paper 002, three heads).
ALL_LESION_OUTPUTS = {"all_t1": "_all_time01", "all_t2": "_all_time02"}


class Time02Source(str, Enum):
    union = "union"
    head = "head"


class ModelChoice(str, Enum):
    coactseg = "coactseg"
    unet = "unet"
    multitask = "multitask"


class DeviceChoice(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


def segment_command(
    case: Optional[Path] = typer.Argument(None, help=f"Case folder with {layout.BASELINE} and {layout.FOLLOWUP}."),
    baseline: Optional[Path] = typer.Option(None, help="Baseline FLAIR (instead of the case folder's)."),
    followup: Optional[Path] = typer.Option(None, help="Follow-up FLAIR, on the baseline's grid."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output prefix P (P_score.nii.gz, P_mask.nii.gz, ...); default CASE/<model>."),
    model: ModelChoice = typer.Option(ModelChoice.coactseg, "--model", "-m", help="Network (its default weights ship with mstools)."),
    weights: Optional[Path] = typer.Option(None, help="Weight file from mstools train (model.pt) instead of the default weights."),
    threshold: float = typer.Option(0.5, min=0.0, max=1.0, help="Probability threshold of the masks."),
    min_lesion_mm3: float = typer.Option(4.0, min=0.0, help="Keep components larger than this (paper 001, Masson: > 4 mm3)."),
    overlap: float = typer.Option(0.5, min=0.0, max=0.95, help="Sliding-window overlap (fraction of the window)."),
    batch_size: int = typer.Option(2, min=1, help="Windows per forward pass."),
    tta: bool = typer.Option(False, "--tta", help="Average over all flips (8x slower)."),
    all_time02: Time02Source = typer.Option(Time02Source.union, help="coactseg: the time-2 all-lesion map from the time-1 head united with the new lesions (union; measured far better with the default weights) or from the network's own time-2 head."),
    device: DeviceChoice = typer.Option(DeviceChoice.auto, help="auto = cuda, then mps, then cpu."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the written paths."),
) -> None:
    """Segment new lesions with a learned model; writes the common detector outputs (and CoactSeg's all-lesion maps).

    Example: mstools segment data_samples/sim-001 --model coactseg -o /tmp/sim-001_coactseg
    """
    from mstools.deep.cards import default_weights
    from mstools.io import OutputBatch, check_same_grid, check_scan, check_writable, read_image
    from mstools.lesions import detections_from_mask, output_paths
    from mstools.provenance import describe_inputs, sidecar, sidecar_path

    if case is None and (baseline is None or followup is None):
        raise InputError("give a case folder, or both --baseline and --followup")
    if case is not None and not case.is_dir():
        raise InputError(f"{case}: case folder not found")
    baseline_path = baseline or case / layout.BASELINE
    followup_path = followup or case / layout.FOLLOWUP
    if output is None:
        if case is None:
            raise InputError("give --output PREFIX when the images are given with --baseline/--followup")
        output = str(case / model.value)
    weights_path = weights or default_weights(model.value)

    paths = output_paths(output)
    extra = {name: {"score": output + suffix + "_score.nii.gz", "mask": output + suffix + "_mask.nii.gz"}
             for name, suffix in ALL_LESION_OUTPUTS.items()} if model == ModelChoice.coactseg else {}
    targets = list(paths.values()) + [p for e in extra.values() for p in e.values()]
    for target in targets:  # fail before the work
        check_writable(target, inputs=[baseline_path, followup_path], force=force)
        check_writable(sidecar_path(target), inputs=[baseline_path, followup_path], force=force)
    base = read_image(baseline_path)
    follow = read_image(followup_path)
    check_same_grid(base, follow)
    check_scan(base)
    check_scan(follow)

    from mstools.deep.predictor import PredictOptions, Predictor, lesion_mask

    try:
        predictor = Predictor.from_file(weights_path, device=device.value, threads=threads)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if predictor.config.model != model.value:
        raise InputError(f"{weights_path}: weights of a {predictor.config.model} model, not {model.value}; "
                         f"use --model {predictor.config.model}")
    options = PredictOptions(overlap=overlap, batch_size=batch_size, tta=tta)
    common.log(f"segmenting {base.name} with {model.value} ({weights_path.name}, {predictor.device})")
    started = time.time()
    progress_cb, bar = None, None
    if common.progress_enabled():
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("segment"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                       TimeRemainingColumn(), transient=True)
        task = bar.add_task("segment", total=None)
        bar.start()

        def progress_cb(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
    try:
        maps = predictor.predict(base.data, follow.data, spacing_mm=base.spacing_mm, options=options,
                                 progress=progress_cb)
    finally:
        if bar is not None:
            bar.stop()
    seconds = time.time() - started

    if model == ModelChoice.coactseg:
        from mstools.deep.predictor import time02_all_lesions

        maps = {**maps, "all_t2": time02_all_lesions(maps, source=all_time02.value)}
    parameters = {"model": model.value, "weights": str(weights_path), "threshold": threshold,
                  "all_time02": all_time02.value if model == ModelChoice.coactseg else None,
                  "min_lesion_mm3": min_lesion_mm3, "overlap": overlap, "batch_size": batch_size, "tta": tta,
                  "device": str(predictor.device), "threads": threads, "model_config": predictor.config.as_dict()}
    record = sidecar(command="segment", parameters=parameters,
                     inputs=describe_inputs([baseline_path, followup_path]),
                     models={str(weights_path): predictor.sha256}, extra={"seconds": round(seconds, 2)})
    masks = {name: lesion_mask(p, voxel_volume_mm3=base.voxel_volume_mm3, threshold=threshold,
                               min_lesion_mm3=min_lesion_mm3) for name, p in maps.items()}
    detections = detections_from_mask(masks["new"], maps["new"], base.affine)
    with OutputBatch(inputs=[baseline_path, followup_path], force=force, create_dirs=True) as out:
        common.add_detections(out, output, detections, base, record)
        for name, files in extra.items():
            common.add_image(out, files["score"], maps[name], base, "float32", record)
            common.add_image(out, files["mask"], masks[name], base, "uint8", record)
    common.emit(out.written, as_json=as_json, payload={
        "written": [str(p) for p in out.written], "model": model.value, "model_sha256": predictor.sha256,
        "new_lesions": len(detections.table), "new_lesion_volume_mm3": float(detections.mask.sum()) * base.voxel_volume_mm3,
        "seconds": round(seconds, 2)})


segment_command = common.command(segment_command)
