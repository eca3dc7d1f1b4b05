"""`mstools segment`: learned new-lesion segmentation (coactseg, unet, multitask, multiseq, cascade) of a case."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mstools_cli import common
from mstools import case_layout as layout
from mstools.jobs.segment import SegmentOptions as O

ModelChoice = common.choices("ModelChoice", O, "model")
Time02Source = common.choices("Time02Source", O, "all_time02")
DeviceChoice = common.choices("DeviceChoice", O, "device")


def segment_command(
    case: Optional[Path] = typer.Argument(None, help=f"Case folder with {layout.BASELINE} and {layout.FOLLOWUP}."),
    baseline: Optional[Path] = typer.Option(None, help="Baseline FLAIR (instead of the case folder's)."),
    followup: Optional[Path] = typer.Option(None, help="Follow-up FLAIR, on the baseline's grid."),
    brain_mask: Optional[Path] = typer.Option(None, help="Brain mask on the scans' grid: new lesions are kept inside it (default: the case folder's brain_mask.nii.gz when it has one; the whole image otherwise)."),
    baseline_t1: Optional[Path] = typer.Option(None, help="multiseq: baseline T1-weighted scan on the FLAIRs' grid (default: the case folder's, if any)."),
    followup_t1: Optional[Path] = typer.Option(None, help="multiseq: follow-up T1-weighted scan."),
    baseline_t2: Optional[Path] = typer.Option(None, help="multiseq: baseline T2-weighted scan."),
    followup_t2: Optional[Path] = typer.Option(None, help="multiseq: follow-up T2-weighted scan."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output prefix P (P_score.nii.gz, P_mask.nii.gz, ...); default CASE/<model>, i.e. inside the input case folder."),
    model: ModelChoice = common.opt(O, "model", ModelChoice),
    weights: Optional[Path] = common.opt(O, "weights"),
    threshold: Optional[float] = common.opt(O, "threshold"),
    min_lesion_mm3: float = common.opt(O, "min_lesion_mm3"),
    overlap: float = common.opt(O, "overlap"),
    batch_size: int = common.opt(O, "batch_size"),
    tta: bool = common.opt(O, "tta"),
    lesions: Optional[str] = common.opt(O, "lesions"),
    all_time02: Time02Source = common.opt(O, "all_time02", Time02Source),
    device: DeviceChoice = common.opt(O, "device", DeviceChoice),
    threads: Optional[int] = common.opt(O, "threads"),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the written paths."),
) -> None:
    """Segment new lesions with a learned model; writes the common detector outputs (and CoactSeg's all-lesion maps).

    Example: mstools segment data_samples/sim-001 --model coactseg -o /tmp/sim-001_coactseg

    With T1/T2 (any subset): mstools segment sim/case04 --model multiseq --weights runs/ms/model.pt --baseline-t1 t1a.nii.gz --followup-t1 t1b.nii.gz

    Cascade (the all-lesion maps of mstools segment CASE --model coactseg): mstools segment sim/case04 --model cascade --weights runs/cascade/model.pt --lesions coactseg
    """
    from mstools.jobs.segment import progress_unit, segment_job

    with common.progress_bar("segment", progress_unit(model.value)) as progress:
        result = segment_job(case, output, common.options(O, locals()), baseline=baseline, followup=followup,
                             brain_mask=brain_mask, force=force, progress=progress,
                             sequences={("t1", 0): baseline_t1, ("t1", 1): followup_t1, ("t2", 0): baseline_t2,
                                        ("t2", 1): followup_t2})
    common.report(result, as_json=as_json)


segment_command = common.command(segment_command)
