"""`mstools register`: new-lesion candidates after deformable registration (elastix),
and `mstools warp`: apply a saved displacement field to another image or mask."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from mstools_cli import common
from mstools.jobs.register import INTERPOLATIONS
from mstools.jobs.register import RegisterOptions as O

Mode = common.choices("Mode", O, "mode")
Interpolation = Enum("Interpolation", {v: v for v in INTERPOLATIONS}, type=str)  # type: ignore[misc]


def register_command(
    followup: Path = typer.Argument(..., help="Follow-up FLAIR (the fixed image; all outputs are on its grid)."),
    baseline: Path = typer.Argument(..., help="Baseline FLAIR (the moving image)."),
    output: str = typer.Argument(..., help="Output prefix P: writes P_warped, P_displacement, P_jacobian, "
                                           "P_subtraction and P_score/_mask/_labels/_lesions.tsv."),
    followup_mask: Optional[Path] = typer.Option(None, "--followup-mask", help="Brain mask on the follow-up grid (intensity normalisation and candidates; elastix too with --register-in-mask)."),
    baseline_mask: Optional[Path] = typer.Option(None, "--baseline-mask", help="Brain mask on the baseline grid (elastix's moving mask)."),
    parameters: Optional[List[Path]] = common.opt(O, "parameters"),
    grid_spacing_mm: Optional[float] = common.opt(O, "grid_spacing_mm"),
    bending_weight: float = common.opt(O, "bending_weight"),
    mode: Mode = common.opt(O, "mode", Mode),
    threshold: Optional[float] = common.opt(O, "threshold"),
    hyperintense_sd: Optional[float] = common.opt(O, "hyperintense_sd"),
    min_peak_sd: Optional[float] = common.opt(O, "min_peak_sd"),
    min_mm3: Optional[float] = common.opt(O, "min_mm3"),
    register_in_mask: bool = common.opt(O, "register_in_mask"),
    threads: Optional[int] = common.opt(O, "threads"),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary (paths, quality, timings)."),
) -> None:
    """Register the baseline onto the follow-up (elastix rigid, affine, B-spline) and find candidates
    in follow-up minus warped baseline.

    The displacement field (mm, RAS+) maps each follow-up point x to the baseline point x + u(x);
    the Jacobian map is the follow-up volume of a unit of baseline volume (> 1 growth).
    A registration that fails (elastix error, images that do not correlate, folding) is
    reported and nothing is written.

    Example: mstools register case/flair_time02_on_middle_space.nii.gz case/flair_time01_on_middle_space.nii.gz out/case --followup-mask case/brain_mask.nii.gz
    """
    from mstools.jobs.register import register_job

    result = register_job(followup, baseline, output, common.options(O, locals()), followup_mask=followup_mask,
                          baseline_mask=baseline_mask, force=force)
    common.report(result, as_json=as_json)


def warp_command(
    image: Path = typer.Argument(..., help="Image or mask to move (any grid, e.g. the baseline's)."),
    displacement: Path = typer.Argument(..., help="Displacement field written by mstools register (P_displacement.nii.gz)."),
    output: Path = typer.Argument(..., help="Output image, on the displacement field's (follow-up) grid."),
    interpolation: Interpolation = typer.Option(Interpolation.linear, help="linear for intensities (float32 output); nearest for masks and labels (keeps their integer type)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the written path."),
) -> None:
    """Apply a saved registration (a displacement field) to another image or mask: image(x + u(x)).

    Example: mstools warp case/lesions_time01.nii.gz out/case_displacement.nii.gz out/case_lesions01_warped.nii.gz --interpolation nearest
    """
    from mstools.jobs.register import warp_job

    common.report(warp_job(image, displacement, output, interpolation=interpolation.value, force=force),
                  as_json=as_json)


register_command = common.command(register_command)
warp_command = common.command(warp_command)
