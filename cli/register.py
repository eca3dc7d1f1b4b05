"""`mstools register`: new-lesion candidates after deformable registration (elastix),
and `mstools warp`: apply a saved displacement field to another image or mask."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from cli import common
from mstools.errors import InputError


class Mode(str, Enum):
    registered = "registered"
    affine_check = "affine-check"


class Interpolation(str, Enum):
    linear = "linear"
    nearest = "nearest"


#: Files written for an output prefix P, besides the common detector files
#: (P_score, P_mask, P_labels, P_lesions.tsv; see mstools.lesions).
EXTRA_SUFFIXES = {
    "warped": "_warped.nii.gz",
    "displacement": "_displacement.nii.gz",
    "jacobian": "_jacobian.nii.gz",
    "subtraction": "_subtraction.nii.gz",
    "affine_subtraction": "_affine_subtraction.nii.gz",
    "transform": "_elastix.txt",
}


def register_command(
    followup: Path = typer.Argument(..., help="Follow-up FLAIR (the fixed image; all outputs are on its grid)."),
    baseline: Path = typer.Argument(..., help="Baseline FLAIR (the moving image)."),
    output: str = typer.Argument(..., help="Output prefix P: writes P_warped, P_displacement, P_jacobian, "
                                           "P_subtraction and P_score/_mask/_labels/_lesions.tsv."),
    followup_mask: Optional[Path] = typer.Option(None, "--followup-mask", help="Brain mask on the follow-up grid (intensity normalisation and candidates; elastix too with --register-in-mask)."),
    baseline_mask: Optional[Path] = typer.Option(None, "--baseline-mask", help="Brain mask on the baseline grid (elastix's moving mask)."),
    parameters: Optional[List[Path]] = typer.Option(None, "--parameters", "-p", help="elastix parameter file(s), one per stage, in order; replace the default rigid, affine and B-spline stages."),
    grid_spacing_mm: Optional[float] = typer.Option(None, help="Final B-spline control-point spacing (mm); larger is stiffer. [default: measured, see --help text]"),
    bending_weight: float = typer.Option(0.0, min=0.0, help="Weight of elastix's bending-energy penalty (stiffer; runs on one thread)."),
    mode: Mode = typer.Option(Mode.registered, help="registered: candidates from the registered subtraction; affine-check: also from the affine-only subtraction (keeps new lesions a flexible B-spline shrank away)."),
    threshold: Optional[float] = typer.Option(None, help="z-score threshold of the subtraction. [default: measured]"),
    min_mm3: Optional[float] = typer.Option(None, min=0.0, help="Smallest candidate (mm3, 26-connected; at least 1 voxel). [default: 5, La Rosa et al.'s 5 voxels of ~1 mm3]"),
    register_in_mask: bool = typer.Option(False, "--register-in-mask", help="Also restrict elastix's sampling to --followup-mask (measured: worse at the brain edge; off by default)."),
    threads: Optional[int] = typer.Option(None, min=1, help="elastix threads (default: all cores)."),
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
    from mstools.io import OutputBatch, check_same_grid, check_writable, read_mask, read_scan
    from mstools.lesions import LESION_COLUMNS, detections_from_mask, output_paths
    from mstools.provenance import describe_inputs, sidecar, sidecar_path
    from mstools.registration import detection
    from mstools.registration.deformation import jacobian_determinant, warp

    clock = {"start": time.perf_counter()}
    threshold = detection.DEFAULT_THRESHOLD if threshold is None else threshold
    min_mm3 = detection.DEFAULT_MIN_MM3 if min_mm3 is None else min_mm3
    if not np.isfinite(threshold):
        raise InputError(f"--threshold must be a finite number, not {threshold}")
    maps, settings = _parameter_maps(parameters, grid_spacing_mm, bending_weight)

    paths = {**output_paths(output), **{k: output + v for k, v in EXTRA_SUFFIXES.items()}}
    if mode is not Mode.affine_check:
        del paths["affine_subtraction"]
    inputs = [p for p in (followup, baseline, followup_mask, baseline_mask, *(parameters or [])) if p is not None]
    for path in paths.values():  # fail before the work, not after it
        check_writable(path, inputs=inputs, force=force)
        check_writable(sidecar_path(path), inputs=inputs, force=force)

    fixed = read_scan(followup)
    moving = read_scan(baseline)
    fixed_brain = moving_brain = None
    if followup_mask is not None:
        fixed_brain = read_mask(followup_mask, allow_empty=False)
        check_same_grid(fixed, fixed_brain)
    if baseline_mask is not None:
        moving_brain = read_mask(baseline_mask, allow_empty=False)
        check_same_grid(moving, moving_brain)
    for image in (fixed, moving):
        if float(image.data.std()) == 0:
            raise InputError(f"{image.name}: image is constant; a FLAIR scan was expected")
    brain = fixed_brain.data > 0 if fixed_brain is not None else detection.foreground(fixed.data)
    min_voxels = detection.min_voxels_for(min_mm3, fixed.voxel_volume_mm3)
    clock["read"] = time.perf_counter()

    common.log(f"registering {baseline} onto {followup} with elastix ({len(maps)} stages; "
               "loading itk takes ~15 s)")
    result = _run_elastix(fixed, moving, maps, fixed_brain if register_in_mask else None, moving_brain, threads)
    clock["registered"] = time.perf_counter()

    warped = warp(moving.data, moving.affine, result.displacement, fixed.affine, order=1)
    det = jacobian_determinant(result.displacement, fixed.affine)
    quality = detection.registration_quality(fixed.data, warped, brain, jacobian_determinant=det)
    if quality.failed:
        raise InputError(f"registration failed: {quality.reason}; nothing written. Check that both "
                         "images show the same head (and the masks), or try other --parameters")
    volume = np.zeros_like(det)
    np.divide(1.0, det, out=volume, where=det > 0)   # 0 marks folding
    subtraction = detection.normalised_subtraction(fixed.data, warped, brain)
    linear_field = result.linear_displacement
    if linear_field is None:  # no linear stage: the affine-only transform is the identity
        linear_field = np.zeros_like(result.displacement)
    affine_warped = warp(moving.data, moving.affine, linear_field, fixed.affine, order=1)
    affine_subtraction = detection.normalised_subtraction(fixed.data, affine_warped, brain)
    use_affine = mode is Mode.affine_check
    mask = detection.candidate_mask(subtraction, brain, threshold=threshold, min_voxels=min_voxels,
                                    affine_subtraction=affine_subtraction if use_affine else None)
    score = detection.candidate_score(subtraction, affine_subtraction if use_affine else None)
    found = detections_from_mask(mask, score, fixed.affine, connectivity=detection.CANDIDATE_CONNECTIVITY)
    features = detection.candidate_features(found.labels, volume_change=volume, displacement=result.displacement,
                                            affine_subtraction=affine_subtraction)
    rows = [{**row, **extra} for row, extra in zip(found.table, features)]
    columns = list(LESION_COLUMNS) + list(detection.FEATURE_COLUMNS)

    parameters_record = {
        "mode": mode.value, "threshold": threshold, "min_mm3": min_mm3, "min_voxels": min_voxels,
        "register_in_mask": register_in_mask,
        "connectivity": detection.CANDIDATE_CONNECTIVITY, "threads": threads,
        "parameter_files": [str(p) for p in parameters or []],
        "settings": settings.__dict__ if settings is not None else None,
        "displacement_convention": "RAS+ mm on the follow-up grid; follow-up point x maps to baseline point x + u(x)",
        "jacobian_convention": "1 / det(I + du/dx): follow-up volume per unit baseline volume (> 1 growth, 0 folding)",
        "registration_quality": {"correlation": quality.correlation, "folding": quality.folding},
    }
    record = sidecar(command="register", parameters=parameters_record, inputs=describe_inputs(inputs))
    from mstools.registration.parameters import parameter_text

    with OutputBatch(inputs=inputs, force=force, create_dirs=True) as out:
        common.add_image(out, paths["warped"], warped, fixed, np.float32, record)
        out.vector_image(paths["displacement"], result.displacement, fixed)
        out.json(sidecar_path(paths["displacement"]), record)
        common.add_image(out, paths["jacobian"], volume, fixed, np.float32, record)
        common.add_image(out, paths["subtraction"], subtraction, fixed, np.float32, record)
        if use_affine:
            common.add_image(out, paths["affine_subtraction"], affine_subtraction, fixed, np.float32, record)
        common.add_detections(out, output, found, fixed, record, table=rows, columns=columns)
        text = "".join(f"// stage {n}\n" + parameter_text(m) + "\n" for n, m in enumerate(result.transform_maps))
        out.text(paths["transform"], text)
        out.json(sidecar_path(paths["transform"]), record)
    clock["written"] = time.perf_counter()
    seconds = {
        "read": clock["read"] - clock["start"],
        "itk_load": result.load_seconds,
        "registration": result.seconds,
        "outputs": clock["written"] - clock["registered"],
        "total": clock["written"] - clock["start"],
    }
    common.log(f"{len(rows)} candidates; correlation {quality.correlation:.3f}; "
               f"itk load {seconds['itk_load']:.1f} s, registration {seconds['registration']:.1f} s, "
               f"outputs {seconds['outputs']:.1f} s", level=1)
    common.emit(out.written, as_json=as_json, payload={
        "written": [str(p) for p in out.written], "candidates": len(rows),
        "correlation": quality.correlation, "folding": quality.folding, "seconds": seconds})


def _parameter_maps(files, grid_spacing_mm, bending_weight):
    from mstools.registration import parameters as params

    if files:
        if grid_spacing_mm is not None or bending_weight:
            raise InputError("--grid-spacing-mm and --bending-weight apply to the default stages; "
                             "with --parameters, set FinalGridSpacingInPhysicalUnits / Metric1Weight in the files")
        maps = []
        for path in files:
            if not path.is_file():
                raise InputError(f"{path}: parameter file not found; check the path")
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(f"{path}: unreadable parameter file ({exc}); a text file was expected") from None
            try:
                maps.append(params.validate_map(params.parse_parameter_text(text, source=str(path)), source=str(path)))
            except ValueError as exc:
                raise InputError(str(exc)) from None
        return maps, None
    try:
        settings = params.RegistrationSettings(
            grid_spacing_mm=params.RegistrationSettings.grid_spacing_mm if grid_spacing_mm is None else grid_spacing_mm,
            bending_weight=bending_weight)
    except ValueError as exc:
        raise InputError(f"{exc}; see mstools register --help") from None
    return params.default_maps(settings), settings


def _run_elastix(fixed, moving, maps, fixed_brain, moving_brain, threads):
    from mstools.registration.elastix import RegistrationError, register

    try:
        return register(fixed.data, moving.data, followup_affine=fixed.affine, baseline_affine=moving.affine,
                        maps=maps, followup_mask=None if fixed_brain is None else fixed_brain.data,
                        baseline_mask=None if moving_brain is None else moving_brain.data, threads=threads)
    except RegistrationError as exc:
        raise InputError(f"registration failed: {exc}; nothing written. Check that both images show the "
                         "same head, or try other --parameters") from None
    except ValueError as exc:  # geometry ITK cannot hold (shear)
        raise InputError(f"{fixed.name} / {moving.name}: {exc}") from None


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
    from mstools.io import Image, OutputBatch, check_writable, read_image, read_labels, read_vector_field
    from mstools.provenance import describe_inputs, sidecar, sidecar_path
    from mstools.registration.deformation import warp

    check_writable(output, inputs=[image, displacement], force=force)
    check_writable(sidecar_path(output), inputs=[image, displacement], force=force)
    field = read_vector_field(displacement)
    nearest = interpolation is Interpolation.nearest
    moving = read_labels(image) if nearest else read_image(image)
    try:
        warped = warp(moving.data, moving.affine, field.data, field.affine, order=0 if nearest else 1)
    except np.linalg.LinAlgError:
        raise InputError(f"{image}: its affine is singular; fix the header first") from None
    header = field.header.copy()
    header.set_intent(0, (), name="")
    header.set_data_shape(field.data.shape[:3])
    reference = Image(data=np.zeros(field.data.shape[:3], dtype=np.uint8), affine=field.affine, header=header)
    dtype = moving.data.dtype if nearest else np.float32
    record = sidecar(command="warp", parameters={"interpolation": interpolation.value},
                     inputs=describe_inputs([image, displacement]))
    with OutputBatch(inputs=[image, displacement], force=force, create_dirs=True) as out:
        common.add_image(out, output, warped, reference, dtype, record)
    common.emit(out.written, as_json=as_json, payload={"written": [str(p) for p in out.written],
                                                       "interpolation": interpolation.value})


register_command = common.command(register_command)
warp_command = common.command(warp_command)
