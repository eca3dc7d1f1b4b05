"""`mstools simulate`: realistic longitudinal FLAIR pairs with known new lesions."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import numpy as np
import typer

from cli import common
from mstools import case_layout as layout
from mstools.errors import InputError
from mstools.simulate.case import SimulationConfig

#: Option defaults are the library's, written once in SimulationConfig.
D = SimulationConfig()


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
    dtype: StorageType = typer.Option(StorageType.float32, help="Storage type of the FLAIR images (int16 is scanner-like and smaller)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the written paths."),
) -> None:
    """Simulate a baseline/follow-up FLAIR pair on MNI152 anatomy, with its new-lesion ground truth.

    Example: mstools simulate sim/case01 --seed 1 --n-new 4 --followup-slice-mm 3
    """
    try:
        base = SimulationConfig(
            seed=seed, voxel_mm=voxel_mm, n_stable=n_stable, n_enlarging=n_enlarging,
            n_shrinking=n_shrinking, n_new=n_new, new_volume_mm3=tuple(new_volume_mm3), snr_baseline=snr_baseline, snr_followup=snr_followup,
            bias_strength=bias, gain_change=gain_change, contrast_change=contrast_change,
            misalignment_mm=misalign_mm, misalignment_deg=misalign_deg, blur_mm=blur_mm,
            followup_slice_mm=followup_slice_mm, atrophy_mm=atrophy_mm)
    except ValueError as exc:
        raise InputError(f"{exc}; see mstools simulate --help") from None
    folders = [output] if cases == 1 else [output / f"sim-{seed + n:03d}" for n in range(cases)]
    summaries = []
    written: list[Path] = []
    for n, folder in enumerate(folders):
        config = base if cases == 1 else SimulationConfig(**{**base.__dict__, "seed": seed + n})
        paths, summary = _simulate_one(folder, config, single_timepoint, dtype.value, force, output if cases > 1 else None)
        written.extend(paths)
        summaries.append(summary)
    common.emit(written, as_json=as_json, payload={"cases": summaries})




def _simulate_one(folder: Path, config, single: bool, dtype: str, force: bool, cohort_root: Path | None):
    from mstools.io import OutputBatch, new_reference
    from mstools.provenance import sidecar
    from mstools.simulate import simulate_case, simulate_single_timepoint

    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder; choose another output path")
    if cohort_root is not None and not cohort_root.parent.exists():
        raise InputError(f"{cohort_root.parent}: output folder does not exist; create it first")
    if cohort_root is None and not folder.parent.exists():
        raise InputError(f"{folder.parent}: output folder does not exist; create it first")
    from mstools.io import check_writable
    from mstools.provenance import sidecar_path

    names = ([layout.SINGLE_FLAIR, layout.SINGLE_LESIONS] if single else
             [layout.BASELINE, layout.FOLLOWUP, layout.GROUND_TRUTH, layout.LESIONS_BASELINE,
              layout.LESIONS_FOLLOWUP]) + [layout.BRAIN_MASK, layout.TISSUES]
    if folder.is_dir():  # fail before the work, not after it
        for name in names:
            check_writable(folder / name, force=force)
            check_writable(sidecar_path(folder / name), force=force)
        check_writable(folder / layout.TRUTH, force=force)
    common.log(f"simulating {folder} (seed {config.seed})")
    record = sidecar(command="simulate", parameters={**config.__dict__, "single_timepoint": single,
                                                      "dtype": dtype}, inputs={})
    result = simulate_single_timepoint(config) if single else simulate_case(config)
    reference = new_reference(result.brain_mask.shape, result.affine, description="mstools simulate")

    def flair(data):
        if dtype == "int16":
            return np.clip(np.round(data), -32768, 32767).astype(np.int16)
        return data

    with OutputBatch(force=force, create_dirs=True) as out:
        images = ([(layout.SINGLE_FLAIR, flair(result.flair), dtype),
                   (layout.SINGLE_LESIONS, (result.lesions > 0), np.uint8)] if single else
                  [(layout.BASELINE, flair(result.baseline), dtype),
                   (layout.FOLLOWUP, flair(result.followup), dtype),
                   (layout.GROUND_TRUTH, result.ground_truth, np.uint8),
                   (layout.LESIONS_BASELINE, (result.lesions_baseline > 0), np.uint8),
                   (layout.LESIONS_FOLLOWUP, (result.lesions_followup > 0), np.uint8)])
        images += [(layout.BRAIN_MASK, result.brain_mask, np.uint8), (layout.TISSUES, result.tissues, np.uint8)]
        for name, data, kind in images:
            common.add_image(out, folder / name, data, reference, kind, record)
        out.json(folder / layout.TRUTH, {**result.truth, "provenance": record})
    summary = {"case": str(folder), "seed": config.seed, "single_timepoint": single,
               "lesions": len(result.truth["lesions"]),
               "new_lesions": result.truth.get("n_new", 0),
               "new_lesion_volume_mm3": result.truth.get("new_lesion_volume_mm3", 0.0)}
    return out.written, summary


simulate_command = common.command(simulate_command)
