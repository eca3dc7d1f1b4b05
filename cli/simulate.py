"""`mstools simulate`: realistic longitudinal FLAIR pairs with known new lesions."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from mstools_cli import common
from mstools.errors import InputError
from mstools.jobs.simulate import Defaults as D   # the simulator's defaults, light to import


class StorageType(str, Enum):
    float32 = "float32"
    int16 = "int16"


def simulate_command(
    output: Path = typer.Argument(..., help="Case folder to create (a cohort folder with --cases > 1)."),
    seed: int = typer.Option(0, help="Random seed; the same seed and options give the same case."),
    cases: int = typer.Option(1, min=1, help="Number of cases; > 1 writes OUTPUT/sim-<seed> folders, seeds seed, seed+1, ..."),
    single_timepoint: bool = typer.Option(False, "--single-timepoint", help="One FLAIR with its all-lesion mask (training data for the learned models)."),
    voxel_mm: float = typer.Option(D.voxel_mm, min=0.5, max=4.0, help="Isotropic voxel size of the grid (mm)."),
    n_stable: int = typer.Option(D.n_stable, min=0, help="Lesions present and unchanged at both time points."),
    n_enlarging: int = typer.Option(D.n_enlarging, min=0, help="Existing lesions that grow (not new)."),
    n_shrinking: int = typer.Option(D.n_shrinking, min=0, help="Existing lesions that shrink and fade (not new)."),
    n_new: int = typer.Option(D.n_new, min=0, help="New lesions at follow-up (the ground truth)."),
    new_volume_mm3: tuple[float, float] = typer.Option(D.new_volume_mm3, help="New lesions' nominal volume range (log-uniform), mm3."),
    snr_baseline: float = typer.Option(D.snr_baseline, min=0, help="White-matter signal / noise sigma at baseline (0 = no noise)."),
    snr_followup: float = typer.Option(D.snr_followup, min=0, help="Same at follow-up."),
    bias: float = typer.Option(D.bias_strength, min=0, max=0.9, help="Bias field strength per time point (max/min = (1+b)/(1-b))."),
    gain_change: float = typer.Option(D.gain_change, min=0, max=0.5, help="Follow-up gain drawn in [1-g, 1+g]."),
    contrast_change: float = typer.Option(D.contrast_change, min=0, max=0.5, help="Follow-up contrast exponent drawn in [1-c, 1+c]."),
    misalign_mm: float = typer.Option(D.misalignment_mm, min=0, help="Residual follow-up translation (mm)."),
    misalign_deg: float = typer.Option(D.misalignment_deg, min=0, help="Residual follow-up rotation (degrees)."),
    blur_mm: float = typer.Option(D.blur_mm, min=0, help="Extra Gaussian blur sigma on the follow-up (mm)."),
    followup_slice_mm: float = typer.Option(D.followup_slice_mm, min=0, help="Acquire the follow-up with thick slices along k (e.g. 3)."),
    atrophy_mm: float = typer.Option(D.atrophy_mm, min=0, help="Largest ventricular enlargement at follow-up (mm)."),
    baseline_acquisition: str = typer.Option("", help="Acquire the baseline as 2D multi-slice, e.g. '2d:0.72x0.72x3,gap=0,axial,gaussian,tilt=0' (in-plane 0.5-1 mm, slices 3-5 mm, profile gaussian|rect)."),
    followup_acquisition: str = typer.Option("", help="Same for the follow-up; its grid is the case's common grid."),
    baseline_protocol_contrast: str = typer.Option("", help="Baseline FLAIR contrast, e.g. 'lesion=0.8,gm=1.3,csf=0.1' (lesion/GM contrast scales, CSF/WM level)."),
    followup_protocol_contrast: str = typer.Option("", help="Same for the follow-up (another TI/TE)."),
    clinical: bool = typer.Option(False, "--clinical", help="Random clinical 2D protocols per visit from the seed (slices 3-5 mm, gap 0-1 mm, in-plane 0.5-1 mm; half the pairs change protocol)."),
    background_flair: Path | None = typer.Option(None, help="Real FLAIR as background: the baseline is this scan, the follow-up gets the new lesions."),
    background_followup: Path | None = typer.Option(None, help="Real follow-up aligned with --background-flair (same grid): new lesions added to it only."),
    background_brain_mask: Path | None = typer.Option(None, help="Brain mask of the background (required with --background-flair)."),
    background_lesions: Path | None = typer.Option(None, help="The background's own lesion mask: new lesions avoid it and copy its contrast."),
    background_new_lesions: Path | None = typer.Option(None, help="Lesions of --background-flair that are new (e.g. a real follow-up's new lesions): filled in at baseline, they join the ground truth (those not brighter than their fill by 0.10 of brain median are left alone)."),
    lesion_library: Path | None = typer.Option(None, help="Folder of real binary lesion masks (NIfTI, searched recursively): new lesion shapes for --background-flair."),
    t1: bool = typer.Option(False, "--t1", help="Also write a T1-weighted scan of each visit (lesions dark) on the case grid."),
    t2: bool = typer.Option(False, "--t2", help="Also write a T2-weighted scan of each visit (lesions bright) on the case grid."),
    dtype: StorageType = typer.Option(StorageType.float32, help="Storage type of the FLAIR images (int16 is scanner-like and smaller)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the written paths."),
) -> None:
    """Simulate a baseline/follow-up FLAIR pair on MNI152 anatomy, with its new-lesion ground truth.

    Example: mstools simulate sim/case01 --seed 1 --n-new 4 --followup-slice-mm 3

    Clinical pair: mstools simulate sim/case02 --baseline-acquisition 2d:0.72x0.72x3 --followup-acquisition 2d:0.9x0.9x3,coronal

    With T1 and T2: mstools simulate sim/case04 --seed 4 --t1 --t2

    Real anatomy: mstools simulate sim/case03 --background-flair flair.nii.gz --background-brain-mask brain.nii.gz --lesion-library masks/
    """
    from mstools.jobs.simulate import background_options, simulate_job
    from mstools.simulate import acquisition as acq
    from mstools.simulate.case import SimulationConfig

    try:
        protocols = dict(
            acquisition_baseline=acq.parse_acquisition(baseline_acquisition) if baseline_acquisition else None,
            acquisition_followup=acq.parse_acquisition(followup_acquisition) if followup_acquisition else None,
            contrast_baseline=acq.parse_contrast(baseline_protocol_contrast) if baseline_protocol_contrast else None,
            contrast_followup=acq.parse_contrast(followup_protocol_contrast) if followup_protocol_contrast else None)
    except ValueError as exc:
        raise InputError(f"{exc}; see mstools simulate --help") from None
    if clinical and (baseline_acquisition or followup_acquisition):
        raise InputError("--clinical draws the acquisitions itself; drop --baseline/--followup-acquisition")
    sequences = tuple(name for name, wanted in (("t1", t1), ("t2", t2)) if wanted)
    if sequences and (single_timepoint or clinical or any(protocols.values()) or background_flair):
        raise InputError("--t1/--t2 are simulated for two-time-point cases on the default grid; drop "
                         "--single-timepoint, --clinical, acquisitions, protocol contrasts and --background-flair")
    if single_timepoint and (clinical or any(protocols.values()) or background_flair):
        raise InputError("--single-timepoint takes no acquisitions, protocol contrasts or background")
    background = background_options(background_flair, background_followup, background_brain_mask,
                                    background_lesions, lesion_library, background_new_lesions)
    try:
        base = SimulationConfig(
            seed=seed, voxel_mm=voxel_mm, n_stable=n_stable, n_enlarging=n_enlarging,
            n_shrinking=n_shrinking, n_new=n_new, new_volume_mm3=tuple(new_volume_mm3), snr_baseline=snr_baseline, snr_followup=snr_followup,
            bias_strength=bias, gain_change=gain_change, contrast_change=contrast_change,
            misalignment_mm=misalign_mm, misalignment_deg=misalign_deg, blur_mm=blur_mm,
            followup_slice_mm=followup_slice_mm, atrophy_mm=atrophy_mm, sequences=sequences, **protocols)
    except ValueError as exc:
        raise InputError(f"{exc}; see mstools simulate --help") from None
    result = simulate_job(output, base, cases=cases, single_timepoint=single_timepoint, clinical=clinical,
                          protocols=protocols, background=background, dtype=dtype.value, force=force)
    common.report(result, as_json=as_json)


simulate_command = common.command(simulate_command)
