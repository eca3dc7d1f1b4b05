"""`mstools simulate`: realistic longitudinal FLAIR pairs with known new lesions."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import typer

from mstools_cli import common
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
    baseline_acquisition: str = typer.Option("", help="Acquire the baseline as 2D multi-slice, e.g. '2d:0.72x0.72x3,gap=0,axial,gaussian,tilt=0' (in-plane 0.5-1 mm, slices 3-5 mm, profile gaussian|rect)."),
    followup_acquisition: str = typer.Option("", help="Same for the follow-up; its grid is the case's common grid."),
    baseline_protocol_contrast: str = typer.Option("", help="Baseline FLAIR contrast, e.g. 'lesion=0.8,gm=1.3,csf=0.1' (lesion/GM contrast scales, CSF/WM level)."),
    followup_protocol_contrast: str = typer.Option("", help="Same for the follow-up (another TI/TE)."),
    clinical: bool = typer.Option(False, "--clinical", help="Random clinical 2D protocols per visit from the seed (slices 3-5 mm, gap 0-1 mm, in-plane 0.5-1 mm; half the pairs change protocol)."),
    background_flair: Path | None = typer.Option(None, help="Real FLAIR as background: the baseline is this scan, the follow-up gets the new lesions."),
    background_followup: Path | None = typer.Option(None, help="Real follow-up aligned with --background-flair (same grid): new lesions added to it only."),
    background_brain_mask: Path | None = typer.Option(None, help="Brain mask of the background (required with --background-flair)."),
    background_lesions: Path | None = typer.Option(None, help="The background's own lesion mask: new lesions avoid it and copy its contrast."),
    lesion_library: Path | None = typer.Option(None, help="Folder of real binary lesion masks (NIfTI, searched recursively): new lesion shapes for --background-flair."),
    dtype: StorageType = typer.Option(StorageType.float32, help="Storage type of the FLAIR images (int16 is scanner-like and smaller)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the written paths."),
) -> None:
    """Simulate a baseline/follow-up FLAIR pair on MNI152 anatomy, with its new-lesion ground truth.

    Example: mstools simulate sim/case01 --seed 1 --n-new 4 --followup-slice-mm 3

    Clinical pair: mstools simulate sim/case02 --baseline-acquisition 2d:0.72x0.72x3 --followup-acquisition 2d:0.9x0.9x3,coronal

    Real anatomy: mstools simulate sim/case03 --background-flair flair.nii.gz --background-brain-mask brain.nii.gz --lesion-library masks/
    """
    from mstools.simulate import acquisition as acq

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
    if single_timepoint and (clinical or any(protocols.values()) or background_flair):
        raise InputError("--single-timepoint takes no acquisitions, protocol contrasts or background")
    background = _background_options(background_flair, background_followup, background_brain_mask,
                                      background_lesions, lesion_library)
    try:
        base = SimulationConfig(
            seed=seed, voxel_mm=voxel_mm, n_stable=n_stable, n_enlarging=n_enlarging,
            n_shrinking=n_shrinking, n_new=n_new, new_volume_mm3=tuple(new_volume_mm3), snr_baseline=snr_baseline, snr_followup=snr_followup,
            bias_strength=bias, gain_change=gain_change, contrast_change=contrast_change,
            misalignment_mm=misalign_mm, misalignment_deg=misalign_deg, blur_mm=blur_mm,
            followup_slice_mm=followup_slice_mm, atrophy_mm=atrophy_mm, **protocols)
    except ValueError as exc:
        raise InputError(f"{exc}; see mstools simulate --help") from None
    folders = [output] if cases == 1 else [output / f"sim-{seed + n:03d}" for n in range(cases)]
    summaries = []
    written: list[Path] = []
    source = _read_background(background, new_volume_mm3) if background else None
    for n, folder in enumerate(folders):
        config = base if cases == 1 else SimulationConfig(**{**base.__dict__, "seed": seed + n})
        if clinical:
            config = _clinical_config(config, protocols)
        paths, summary = _simulate_one(folder, config, single_timepoint, dtype.value, force,
                                       output if cases > 1 else None, source)
        written.extend(paths)
        summaries.append(summary)
    common.emit(written, as_json=as_json, payload={"cases": summaries})




def _clinical_config(config: SimulationConfig, protocols: dict) -> SimulationConfig:
    """The --clinical preset: protocols drawn from the case's seed (a stream of its own, so
    the anatomy and lesions are those of the same seed without --clinical)."""
    from dataclasses import replace

    from mstools.simulate.acquisition import clinical_protocols

    rng = np.random.default_rng([config.seed, 2026])
    baseline, followup, contrast = clinical_protocols(rng)
    return replace(config, acquisition_baseline=baseline, acquisition_followup=followup,
                   contrast_followup=protocols["contrast_followup"] or contrast)


def _background_options(flair, followup, brain_mask, lesions, library) -> dict | None:
    given = {"--background-followup": followup, "--background-brain-mask": brain_mask,
             "--background-lesions": lesions, "--lesion-library": library}
    if flair is None:
        extra = [name for name, value in given.items() if value is not None]
        if extra:
            raise InputError(f"{', '.join(extra)} need --background-flair")
        return None
    if brain_mask is None:
        raise InputError("--background-flair needs --background-brain-mask")
    if library is None and lesions is None:
        raise InputError("--background-flair needs --lesion-library DIR (or --background-lesions to reuse its lesions' shapes)")
    for name, path in {"--background-flair": flair, **given}.items():
        if path is not None and not Path(path).exists():
            raise InputError(f"{path}: {name} does not exist")
    if library is not None and not Path(library).is_dir():
        raise InputError(f"{library}: --lesion-library must be a folder of lesion masks")
    return {"flair": flair, "followup": followup, "brain_mask": brain_mask, "lesions": lesions, "library": library}


def _read_background(options: dict, volume_mm3) -> dict:
    """Read the background images (checked onto one grid) and build the lesion library."""
    from mstools.io import check_same_grid, is_nifti, read_image, read_mask
    from mstools.simulate.real_anatomy import build_lesion_library

    flair = read_image(options["flair"])
    brain = read_mask(options["brain_mask"], allow_empty=False)
    check_same_grid(flair, brain)
    followup = lesions = None
    if options["followup"] is not None:
        followup = read_image(options["followup"])
        check_same_grid(flair, followup)
    if options["lesions"] is not None:
        lesions = read_mask(options["lesions"])
        check_same_grid(flair, lesions)
    masks, names = [], []
    if options["library"] is not None:
        files = sorted(p for p in Path(options["library"]).rglob("*") if p.is_file() and is_nifti(p))
        for path in files:
            try:
                mask = read_mask(path)
            except InputError:
                common.log(f"lesion library: {path} is not a binary mask, skipped", level=1)
                continue
            masks.append((mask.data > 0, mask.spacing_mm))
            names.append(str(path))
        where = f"{options['library']}"
    else:
        masks.append((lesions.data > 0, lesions.spacing_mm))
        names.append(str(options["lesions"]))
        where = f"{options['lesions']}"
    try:
        library = build_lesion_library(masks, volume_mm3=tuple(volume_mm3), names=names)
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from None
    common.log(f"lesion library: {len(library)} lesions from {len(names)} masks")
    return {"flair": flair, "brain": brain, "followup": followup, "lesions": lesions, "library": library,
            "options": options}


def _simulate_one(folder: Path, config, single: bool, dtype: str, force: bool, cohort_root: Path | None,
                  background: dict | None = None):
    from mstools.io import OutputBatch, new_reference, sha256
    from mstools.provenance import sidecar
    from mstools.simulate import simulate_case, simulate_single_timepoint
    from mstools.simulate.case import RAW_BASELINE, RAW_FOLLOWUP

    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder; choose another output path")
    from mstools.io import check_writable
    from mstools.provenance import sidecar_path

    names = ([layout.SINGLE_FLAIR, layout.SINGLE_LESIONS] if single else
             [layout.BASELINE, layout.FOLLOWUP, layout.GROUND_TRUTH, layout.LESIONS_BASELINE,
              layout.LESIONS_FOLLOWUP]) + [layout.BRAIN_MASK, layout.TISSUES]
    if config.acquisitions:
        names += [RAW_BASELINE, RAW_FOLLOWUP]
    if folder.is_dir():  # fail before the work, not after it
        for name in names:
            check_writable(folder / name, force=force)
            check_writable(sidecar_path(folder / name), force=force)
        check_writable(folder / layout.TRUTH, force=force)
    common.log(f"simulating {folder} (seed {config.seed})")
    inputs = {}
    if background is not None:
        inputs = {name: sha256(path) for name, path in background["options"].items()
                  if path is not None and Path(path).is_file()}
    parameters = {**{k: (asdict(v) if is_dataclass(v) else v) for k, v in config.__dict__.items()},
                  "single_timepoint": single, "dtype": dtype}
    if background is not None:
        parameters["background"] = {k: (str(v) if v is not None else None) for k, v in background["options"].items()}
    record = sidecar(command="simulate", parameters=parameters, inputs=inputs)
    if background is not None:
        result = _simulate_real(config, background)
    else:
        result = simulate_single_timepoint(config) if single else simulate_case(config)
    reference = new_reference(result.brain_mask.shape, result.affine, description="mstools simulate")
    if background is not None and result.brain_mask.shape == background["flair"].shape and np.allclose(
            result.affine, background["flair"].affine):
        reference = background["flair"]

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
        for name, raw in ((RAW_BASELINE, getattr(result, "raw_baseline", None)),
                          (RAW_FOLLOWUP, getattr(result, "raw_followup", None))):
            if raw is not None:
                raw_reference = new_reference(raw.data.shape, raw.affine, description="mstools simulate raw scan")
                common.add_image(out, folder / name, flair(raw.data), raw_reference, dtype, record)
        out.json(folder / layout.TRUTH, {**result.truth, "provenance": record})
    summary = {"case": str(folder), "seed": config.seed, "single_timepoint": single,
               "lesions": len(result.truth["lesions"]),
               "new_lesions": result.truth.get("n_new", 0),
               "new_lesion_volume_mm3": result.truth.get("new_lesion_volume_mm3", 0.0)}
    if getattr(result, "raw_followup", None) is not None:
        summary["raw"] = [str(folder / RAW_BASELINE), str(folder / RAW_FOLLOWUP)]
    return out.written, summary


def _simulate_real(config, background: dict):
    from mstools.simulate.real_anatomy import simulate_on_real

    flair = background["flair"]
    try:
        return simulate_on_real(
            flair.data, flair.affine, background["brain"].data, background["library"], config,
            followup=None if background["followup"] is None else background["followup"].data,
            lesions=None if background["lesions"] is None else background["lesions"].data)
    except ValueError as exc:
        raise InputError(f"{flair.name}: {exc}") from None


simulate_command = common.command(simulate_command)
