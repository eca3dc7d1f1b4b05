"""`mstools subtract`: candidate new lesions from the subtraction of two aligned scans."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from cli import common
from mstools import case_layout as layout
from mstools import subtraction as sub
from mstools.errors import InputError


class Rule(str, Enum):
    prados = "prados"
    larosa = "larosa"
    hamzaoui = "hamzaoui"


def resolve_case_inputs(case: Optional[Path], baseline: Optional[Path], followup: Optional[Path],
                        brain_mask: Optional[Path]) -> tuple[Path, Path, Path]:
    """Explicit files win; otherwise the case folder's standard names."""
    if case is not None and not case.is_dir():
        raise InputError(f"{case}: not a folder; give a case folder (see `mstools simulate`) or "
                         "--baseline/--followup/--brain-mask")
    paths = []
    for given, name, option in ((baseline, layout.BASELINE, "--baseline"), (followup, layout.FOLLOWUP, "--followup"),
                                (brain_mask, layout.BRAIN_MASK, "--brain-mask")):
        if given is not None:
            paths.append(given)
        elif case is not None:
            paths.append(case / name)
        else:
            raise InputError(f"no case folder and no {option}; give CASE or all of --baseline, --followup, --brain-mask")
    return paths[0], paths[1], paths[2]


def read_pair(baseline_path: Path, followup_path: Path, brain_path: Path):
    """Baseline, follow-up and brain mask, checked to share one grid; the mask non-empty."""
    from mstools.io import check_same_grid, check_scan, read_image, read_mask

    baseline = read_image(baseline_path)
    followup = read_image(followup_path)
    brain = read_mask(brain_path, allow_empty=False)
    check_same_grid(baseline, followup)
    check_same_grid(baseline, brain)
    check_scan(baseline, brain_mask=brain.data)
    check_scan(followup, brain_mask=brain.data)
    return baseline, followup, brain


def subtract_command(
    case: Optional[Path] = typer.Argument(None, help="Case folder (flair_time01/02_on_middle_space, brain_mask)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output prefix (default: CASE/subtract)."),
    rule: Rule = typer.Option(Rule.prados, help="Candidate rule: prados (Prados & Kanber), larosa (La Rosa et al.), hamzaoui (Hamzaoui et al.)."),
    baseline: Optional[Path] = typer.Option(None, help="Baseline FLAIR (overrides the case folder's)."),
    followup: Optional[Path] = typer.Option(None, help="Follow-up FLAIR on the same grid."),
    brain_mask: Optional[Path] = typer.Option(None, help="Brain mask on the same grid."),
    tissues: Optional[Path] = typer.Option(None, help="Tissue map (1 CSF, 2 GM, 3 WM) for the prados CSF exclusion; default: CSF from FLAIR intensities."),
    k: float = typer.Option(sub.PRADOS_K_SD, help="prados: standard deviations above the mean difference."),
    threshold: Optional[float] = typer.Option(None, help="larosa: fixed threshold on the z-scored subtraction (default: adapts to the registration quality)."),
    ratio_threshold: float = typer.Option(sub.HAMZAOUI_RATIO, help="hamzaoui: follow-up / baseline ratio."),
    bias_sigma_mm: float = typer.Option(sub.DIFFERENTIAL_BIAS_SIGMA_MM, min=0, help="Differential bias correction width (mm); 0 = off."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the written paths."),
) -> None:
    """Find candidate new lesions in the subtraction image of two aligned FLAIR scans.

    Writes PREFIX_subtraction and PREFIX_ratio maps and the common detector outputs
    (PREFIX_score, _mask, _labels, _lesions.tsv).

    Example: mstools subtract data_samples/sim-001 -o out/sim-001_subtract --rule prados
    """
    from mstools.io import OutputBatch, read_labels
    from mstools.provenance import describe_inputs, sidecar

    paths = resolve_case_inputs(case, baseline, followup, brain_mask)
    b_img, f_img, brain_img = read_pair(*paths)
    prefix = out if out is not None else str((case or Path(".")) / "subtract")
    csf = None
    inputs = list(paths)
    if tissues is not None:
        from mstools.io import check_same_grid

        tissue_img = read_labels(tissues)
        check_same_grid(b_img, tissue_img)
        csf = tissue_img.data == layout.TISSUE_LABELS["csf"]
        inputs.append(tissues)
    options = {"prados": {"k": k, "csf": csf}, "larosa": {"threshold": threshold},
               "hamzaoui": {"ratio_threshold": ratio_threshold}}[rule.value]
    common.log(f"subtract ({rule.value}): {paths[0]} -> {paths[1]}")
    try:
        result = sub.detect(b_img.data, f_img.data, brain_img.data > 0, affine=b_img.affine, rule=rule.value,
                            bias_sigma_mm=bias_sigma_mm, **options)
    except ValueError as exc:  # e.g. a constant image inside the brain
        raise InputError(f"{paths[0]}: {exc}; check that the scans hold the brain") from None
    parameters = {"rule": rule.value, "bias_sigma_mm": bias_sigma_mm,
                  **{key: v for key, v in options.items() if key != "csf"},
                  "csf_source": "tissues" if csf is not None else "flair intensity (3-class Otsu)"}
    record = sidecar(command="subtract", parameters=parameters, inputs=describe_inputs(inputs),
                     extra={"details": result.details})
    detections = result.detections
    with OutputBatch(inputs=inputs, force=force, create_dirs=True) as batch:
        common.add_image(batch, prefix + "_subtraction.nii.gz", result.subtraction, b_img, np.float32, record)
        common.add_image(batch, prefix + "_ratio.nii.gz", result.ratio, b_img, np.float32, record)
        common.add_detections(batch, prefix, detections, b_img, record)
    common.log(f"{len(detections.table)} candidates")
    common.emit(batch.written, as_json=as_json,
                payload={"candidates": len(detections.table), "details": result.details,
                         "written": [str(p) for p in batch.written]})


subtract_command = common.command(subtract_command)
