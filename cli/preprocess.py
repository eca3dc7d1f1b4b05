"""`mstools preprocess` and `mstools apply-transform`: raw FLAIR pair -> aligned case folder.

``preprocess`` writes the MSSEG-2 case layout (both FLAIRs in the middle space, the
brain mask, optionally carried lesion masks and T1/T2 scans), the two ITK transforms (middle space ->
each scan, ITK's resampling convention), a QC picture, a JSON report and sidecars.
``apply-transform`` carries any image or mask into that space or back out of it.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from mstools_cli import common
from mstools.jobs.preprocess import INTERPOLATIONS
from mstools.jobs.preprocess import PreprocessJobOptions as O

BrainExtraction = common.choices("BrainExtraction", O, "brain_extraction")
Combine = common.choices("Combine", O, "combine")
Space = common.choices("Space", O, "space")
Harmonisation = common.choices("Harmonisation", O, "harmonisation")
Interpolation = Enum("Interpolation", {v: v for v in INTERPOLATIONS}, type=str)  # type: ignore[misc]


def preprocess_command(
    baseline: Path = typer.Argument(..., help="Baseline (time 1) FLAIR, NIfTI, any orientation and grid."),
    followup: Path = typer.Argument(..., help="Follow-up (time 2) FLAIR, NIfTI, any orientation and grid."),
    output: Path = typer.Argument(..., help="Case folder to write (created if missing)."),
    baseline_mask: Optional[Path] = typer.Option(None, help="Brain mask of the baseline on its grid (skips brain extraction for it)."),
    followup_mask: Optional[Path] = typer.Option(None, help="Brain mask of the follow-up on its grid."),
    baseline_lesions: Optional[Path] = typer.Option(None, help="Lesion mask on the baseline grid, carried into the case folder (lesions_time01)."),
    followup_lesions: Optional[Path] = typer.Option(None, help="Lesion mask on the follow-up grid, carried along (lesions_time02)."),
    baseline_t1: Optional[Path] = typer.Option(None, help="T1-weighted scan of the baseline visit, any grid: registered rigidly to the baseline FLAIR and written on the common grid (t1_time01_on_middle_space)."),
    followup_t1: Optional[Path] = typer.Option(None, help="T1-weighted scan of the follow-up visit (as --baseline-t1, onto the follow-up FLAIR)."),
    baseline_t2: Optional[Path] = typer.Option(None, help="T2-weighted scan of the baseline visit (as --baseline-t1)."),
    followup_t2: Optional[Path] = typer.Option(None, help="T2-weighted scan of the follow-up visit (as --followup-t1)."),
    brain_extraction: BrainExtraction = common.opt(O, "brain_extraction", BrainExtraction),
    combine: Combine = common.opt(O, "combine", Combine),
    bias_correction: bool = common.opt(O, "bias_correction"),
    n4_shrink: int = common.opt(O, "n4_shrink"),
    registration: bool = common.opt(O, "registration"),
    space: Space = common.opt(O, "space", Space),
    spacing_mm: Optional[str] = common.opt(O, "spacing_mm"),
    harmonisation: Harmonisation = common.opt(O, "harmonisation", Harmonisation),
    qc: bool = common.opt(O, "qc"),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of the written paths."),
) -> None:
    """Bring two raw FLAIR scans into one aligned, intensity-matched case folder.

    Brain extraction, N4 bias correction, rigid registration into the halfway space,
    harmonisation; writes flair_time01/02_on_middle_space, brain_mask, the transforms.

    Example: mstools preprocess t1_flair.nii.gz t2_flair.nii.gz case01 --brain-extraction otsu

    With a T1 of each visit (read by segment --model multiseq): mstools preprocess flair1.nii.gz flair2.nii.gz case01 --baseline-t1 t1w1.nii.gz --followup-t1 t1w2.nii.gz
    """
    from mstools.jobs.preprocess import preprocess_job

    result = preprocess_job(baseline, followup, output, common.options(O, locals()), baseline_mask=baseline_mask,
                            followup_mask=followup_mask, baseline_lesions=baseline_lesions,
                            followup_lesions=followup_lesions, force=force,
                            sequences={("t1", 0): baseline_t1, ("t1", 1): followup_t1, ("t2", 0): baseline_t2,
                                       ("t2", 1): followup_t2})
    common.report(result, as_json=as_json)


def apply_transform_command(
    image: Path = typer.Argument(..., help="Image or mask to carry (NIfTI)."),
    transform: Path = typer.Argument(..., help="Transform file, e.g. CASE/time01_to_middle_space.tfm."),
    reference: Path = typer.Argument(..., help="Image whose grid the result takes (a middle-space FLAIR, or the native scan with --inverse)."),
    output: Path = typer.Argument(..., help="Output image (NIfTI)."),
    inverse: bool = typer.Option(False, "--inverse", help="Go back out of the middle space into the scan's own space."),
    interpolation: Interpolation = typer.Option(Interpolation.auto, help="auto: masks linear + threshold, integer labels nearest, intensities smooth (cubic B-spline)."),
    threshold: float = typer.Option(0.5, min=0.0, max=1.0, help="Threshold of linearly interpolated masks."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the written path."),
) -> None:
    """Carry an image or mask into the middle space written by `mstools preprocess`, or back out.

    Example: mstools apply-transform lesions_t1.nii.gz case01/time01_to_middle_space.tfm case01/flair_time01_on_middle_space.nii.gz case01/lesions_time01.nii.gz
    """
    from mstools.jobs.preprocess import apply_transform_job

    result = apply_transform_job(image, transform, reference, output, inverse=inverse,
                                 interpolation=interpolation.value, threshold=threshold, force=force)
    common.report(result, as_json=as_json)


preprocess_command = common.command(preprocess_command)
apply_transform_command = common.command(apply_transform_command)
