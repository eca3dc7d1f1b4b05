"""The registration detector: register the baseline onto the follow-up with elastix, warp,
check the registration, and find candidates in the registered subtraction.

Arrays in, arrays and a table out (:func:`detect`); the files are the job's
(:func:`mstools.jobs.register.register_job`, ``mstools register``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from mstools.errors import InputError
from mstools.detect.registration import detection


@dataclass
class RegistrationDetection:
    """What :func:`detect` found, on the follow-up's grid."""

    warped: np.ndarray                 # baseline warped onto the follow-up (float32)
    displacement: np.ndarray           # (I, J, K, 3) mm, RAS+
    volume_change: np.ndarray          # 1 / det(I + du/dx); 0 marks folding
    subtraction: np.ndarray            # z-scored follow-up minus warped baseline
    affine_subtraction: np.ndarray     # the same after the linear stages only
    detections: object                 # mstools.lesions.Detections
    table: list                        # lesion table + deformation features
    columns: list
    quality: object                    # detection.RegistrationQuality
    transform_maps: list
    load_seconds: float
    seconds: float


def detect(fixed, moving, maps, *, brain: np.ndarray, threshold: float, min_voxels: int,
           hyperintense_sd: float = 0.0, min_peak_sd: float = 0.0, affine_check: bool = False,
           fixed_brain=None, moving_brain=None, register_in_mask: bool = False, threads: Optional[int] = None,
           progress=None) -> RegistrationDetection:
    """Register ``moving`` (baseline Image) onto ``fixed`` (follow-up Image) and find candidates.

    InputError when elastix fails or the registration fails the quality check
    (images that do not correlate, folding).
    """
    from mstools.detections import LESION_COLUMNS
    from mstools.lesions import detections_from_mask
    from mstools.detect.registration.deformation import jacobian_determinant, warp

    result = _run_elastix(fixed, moving, maps, fixed_brain if register_in_mask else None, moving_brain, threads,
                          progress)
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
    mask = detection.candidate_mask(subtraction, brain, threshold=threshold, min_voxels=min_voxels,
                                    affine_subtraction=affine_subtraction if affine_check else None,
                                    followup=fixed.data, hyperintense_sd=hyperintense_sd, min_peak_sd=min_peak_sd)
    score = detection.candidate_score(subtraction, affine_subtraction if affine_check else None)
    found = detections_from_mask(mask, score, fixed.affine, connectivity=detection.CANDIDATE_CONNECTIVITY)
    features = detection.candidate_features(found.labels, volume_change=volume, displacement=result.displacement,
                                            affine_subtraction=affine_subtraction)
    rows = [{**row, **extra} for row, extra in zip(found.table, features)]
    columns = list(LESION_COLUMNS) + list(detection.FEATURE_COLUMNS)
    return RegistrationDetection(warped, result.displacement, volume, subtraction, affine_subtraction, found, rows,
                                 columns, quality, result.transform_maps, result.load_seconds, result.seconds)


def _run_elastix(fixed, moving, maps, fixed_brain, moving_brain, threads, progress=None):
    from mstools.detect.registration.elastix import RegistrationError, register

    try:
        return register(fixed.data, moving.data, followup_affine=fixed.affine, baseline_affine=moving.affine,
                        maps=maps, followup_mask=None if fixed_brain is None else fixed_brain.data,
                        baseline_mask=None if moving_brain is None else moving_brain.data, threads=threads,
                        progress=progress)
    except RegistrationError as exc:
        raise InputError(f"registration failed: {exc}; nothing written. Check that both images show the "
                         "same head, or try other --parameters") from None
    except ValueError as exc:  # geometry ITK cannot hold (shear)
        raise InputError(f"{fixed.name} / {moving.name}: {exc}") from None


def parameter_maps(files, grid_spacing_mm, bending_weight):
    """The elastix stages: the user's parameter files, or the defaults with these settings."""
    from pathlib import Path

    from mstools.detect.registration import parameters as params

    if files:
        if grid_spacing_mm is not None or bending_weight:
            raise InputError("--grid-spacing-mm and --bending-weight apply to the default stages; "
                             "with --parameters, set FinalGridSpacingInPhysicalUnits / Metric1Weight in the files")
        maps = []
        for path in map(Path, files):
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
