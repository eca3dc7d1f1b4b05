"""`mstools preprocess` and `mstools apply-transform`: raw FLAIR pair -> aligned case folder.

``preprocess`` writes the MSSEG-2 case layout (both FLAIRs in the middle space, the
brain mask, optionally carried lesion masks), the two ITK transforms (middle space ->
each scan, ITK's resampling convention), a QC picture, a JSON report and sidecars.
``apply-transform`` carries any image or mask into that space or back out of it.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from cli import common
from mstools import case_layout as layout
from mstools.errors import InputError
from mstools.preprocess.harmonise import DEFAULT_METHOD as DEFAULT_HARMONISATION

#: Files written next to the case layout's images.
TRANSFORM_BASELINE = "time01_to_middle_space.tfm"
TRANSFORM_FOLLOWUP = "time02_to_middle_space.tfm"
REPORT = "preprocess_report.json"
QC_PICTURE = "qc_preprocess.png"


class BrainExtraction(str, Enum):
    otsu = "otsu"
    deepbet = "deepbet"
    none = "none"


class Combine(str, Enum):
    union = "union"
    intersection = "intersection"


class Space(str, Enum):
    halfway = "halfway"
    baseline = "baseline"
    followup = "followup"


class Harmonisation(str, Enum):
    histogram = "histogram"
    linear = "linear"
    zscore = "zscore"
    none = "none"


class Interpolation(str, Enum):
    auto = "auto"
    nearest = "nearest"
    linear = "linear"
    smooth = "smooth"


def _spacing(text: Optional[str]) -> Optional[tuple[float, float, float]]:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or min(values) <= 0 or max(values) > 10:
        raise InputError(f"--spacing-mm {text!r}: give one voxel size or three (e.g. 1 or 1,1,3), "
                         "each in (0, 10] mm")
    return tuple(values)  # type: ignore[return-value]


def preprocess_command(
    baseline: Path = typer.Argument(..., help="Baseline (time 1) FLAIR, NIfTI, any orientation and grid."),
    followup: Path = typer.Argument(..., help="Follow-up (time 2) FLAIR, NIfTI, any orientation and grid."),
    output: Path = typer.Argument(..., help="Case folder to write (created if missing)."),
    baseline_mask: Optional[Path] = typer.Option(None, help="Brain mask of the baseline on its grid (skips brain extraction for it)."),
    followup_mask: Optional[Path] = typer.Option(None, help="Brain mask of the follow-up on its grid."),
    baseline_lesions: Optional[Path] = typer.Option(None, help="Lesion mask on the baseline grid, carried into the case folder (lesions_time01)."),
    followup_lesions: Optional[Path] = typer.Option(None, help="Lesion mask on the follow-up grid, carried along (lesions_time02)."),
    brain_extraction: BrainExtraction = typer.Option(BrainExtraction.otsu, help="Brain masks: otsu (fast, Cabezas et al.), deepbet (network, slower), none."),
    combine: Combine = typer.Option(Combine.union, help="Combine the two masks: union (MSSEG-2 organisers) or intersection (Cabezas et al.)."),
    bias_correction: bool = typer.Option(True, "--bias-correction/--no-bias-correction", help="N4 bias-field correction of each scan."),
    n4_shrink: int = typer.Option(4, min=1, max=8, help="N4 fits the field on images shrunk by this factor (speed)."),
    registration: bool = typer.Option(True, "--registration/--no-registration", help="Rigid registration; --no-registration needs a pair already on one grid."),
    space: Space = typer.Option(Space.halfway, help="Common space: halfway (MSSEG-2: half the transform on each scan), or the baseline/follow-up grid."),
    spacing_mm: Optional[str] = typer.Option(None, help="Voxel size of the common grid, e.g. 1 or 1,1,3 (default: the scans' own if equal; two 2D scans of one slice orientation: the follow-up's; else isotropic at the finest)."),
    harmonisation: Harmonisation = typer.Option(Harmonisation(DEFAULT_HARMONISATION), help="Intensity harmonisation inside the brain: histogram (Nyul landmarks onto the baseline), linear (Masson et al.'s joint-histogram fit), zscore, none. The default was chosen by measurement on simulated pairs."),
    qc: bool = typer.Option(True, "--qc/--no-qc", help="Write the QC picture (PNG)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of the written paths."),
) -> None:
    """Bring two raw FLAIR scans into one aligned, intensity-matched case folder.

    Brain extraction, N4 bias correction, rigid registration into the halfway space,
    harmonisation; writes flair_time01/02_on_middle_space, brain_mask, the transforms.

    Example: mstools preprocess t1_flair.nii.gz t2_flair.nii.gz case01 --brain-extraction otsu
    """
    from mstools.io import OutputBatch, check_same_grid, check_writable, new_reference, read_mask, read_scan, transform_text
    from mstools.preprocess import PreprocessOptions, preprocess_pair
    from mstools.preprocess.qc import qc_png
    from mstools.provenance import describe_inputs, sidecar, sidecar_path

    spacing = _spacing(spacing_mm)
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: exists and is not a folder; choose another output path")
    names = [layout.BASELINE, layout.FOLLOWUP, layout.BRAIN_MASK]
    names += [layout.LESIONS_BASELINE] if baseline_lesions else []
    names += [layout.LESIONS_FOLLOWUP] if followup_lesions else []
    others = [TRANSFORM_BASELINE, TRANSFORM_FOLLOWUP, REPORT] + ([QC_PICTURE] if qc else [])
    inputs = [p for p in (baseline, followup, baseline_mask, followup_mask, baseline_lesions, followup_lesions) if p]
    if output.is_dir():  # fail before the work, not after it
        for name in names:
            check_writable(output / name, inputs=inputs, force=force)
            check_writable(sidecar_path(output / name), inputs=inputs, force=force)
        for name in others:
            check_writable(output / name, inputs=inputs, force=force)

    base = read_scan(baseline)
    follow = read_scan(followup)
    masks = {}
    for key, path, scan in (("baseline_mask", baseline_mask, base), ("followup_mask", followup_mask, follow)):
        if path is not None:
            mask = read_mask(path, allow_empty=False)
            check_same_grid(scan, mask)
            masks[key] = mask.data
    carry = {}
    for key, path, scan, which in ((layout.LESIONS_BASELINE, baseline_lesions, base, "baseline"),
                                   (layout.LESIONS_FOLLOWUP, followup_lesions, follow, "followup")):
        if path is not None:
            lesions = read_mask(path)
            check_same_grid(scan, lesions)
            carry[key] = (lesions.data, which)
    try:
        options = PreprocessOptions(
            brain_extraction=brain_extraction.value, combine_masks=combine.value,
            bias_correction=bias_correction, n4_shrink=n4_shrink,
            registration="auto" if registration else "off", space=space.value, spacing_mm=spacing,
            harmonisation=harmonisation.value)
    except ValueError as exc:
        raise InputError(f"{exc}; see mstools preprocess --help") from None

    result = preprocess_pair(base.data, base.affine, follow.data, follow.affine, options=options,
                             carry=carry, names=(str(baseline), str(followup)),
                             progress=lambda m: common.log(f"preprocess: {m}"), **masks)
    models = {}
    if brain_extraction is BrainExtraction.deepbet and len(masks) < 2:
        from deepbet.utils import DATA_PATH
        from mstools.io import sha256

        models = {name: sha256(Path(DATA_PATH) / "models" / name) for name in ("model.pt", "bbox_model.pt")}
    record = sidecar(command="preprocess", parameters={**options.__dict__, "qc": qc},
                     inputs=describe_inputs(inputs), models=models,
                     extra={"registration": result.report["registration"], "grid": result.report["grid"]})
    reference = new_reference(result.grid.shape, result.grid.affine, description="mstools preprocess")
    report = {**result.report, "transforms": {
        "convention": "ITK: each .tfm maps middle-space points (RAS written as ITK LPS) to the scan's points; "
                      "use it to resample the scan into the middle space, its inverse to go back",
        "time01": TRANSFORM_BASELINE, "time02": TRANSFORM_FOLLOWUP,
        "middle_to_time01_ras": result.to_baseline.round(8).tolist(),
        "middle_to_time02_ras": result.to_followup.round(8).tolist()},
        "provenance": record}
    with OutputBatch(inputs=inputs, force=force, create_dirs=True) as out:
        common.add_image(out, output / layout.BASELINE, result.baseline, reference, np.float32, record)
        common.add_image(out, output / layout.FOLLOWUP, result.followup, reference, np.float32, record)
        common.add_image(out, output / layout.BRAIN_MASK, result.brain_mask, reference, np.uint8, record)
        for name, mask in result.carried.items():
            common.add_image(out, output / name, mask, reference, np.uint8, record)
        out.text(output / TRANSFORM_BASELINE, transform_text(result.to_baseline))
        out.text(output / TRANSFORM_FOLLOWUP, transform_text(result.to_followup))
        out.json(output / REPORT, report)
        if qc:
            out.text(output / QC_PICTURE, qc_png(result.baseline, result.followup, result.brain_mask,
                                                 spacing_mm=result.grid.spacing_mm,
                                                 title=f"{baseline.name} -> {followup.name}"))
    reg = result.report["registration"]
    common.log(f"preprocess: follow-up moved {reg['max_brain_displacement_mm']:.2f} mm / "
               f"{reg['rotation_deg']:.2f} deg relative to the baseline"
               + (" (already aligned: not resampled)" if reg["already_aligned"] and reg["same_grid"] else ""))
    common.emit(out.written, as_json=as_json, payload={**report, "written": [str(p) for p in out.written]})


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
    from mstools.io import OutputBatch, check_writable, read_image, read_labels, read_transform
    from mstools.preprocess.rigid import grid_of, resample
    from mstools.provenance import describe_inputs, sidecar, sidecar_path

    check_writable(output, inputs=[image, transform, reference], force=force)
    check_writable(sidecar_path(output), inputs=[image, transform, reference], force=force)
    matrix = read_transform(transform)
    if inverse:
        matrix = np.linalg.inv(matrix)
    source = read_image(image)
    target = read_image(reference)
    integer = source.header.get_data_dtype().kind in "iub" and np.array_equal(source.data, np.round(source.data))
    binary = integer and bool(np.isin(np.unique(source.data), (0, 1)).all())
    method = interpolation.value
    if method == "auto":
        method = "mask" if binary else ("nearest" if integer else "smooth")
    grid = grid_of(target.shape, target.affine)
    if method == "mask":
        data = resample(source.data, source.affine, grid, matrix, interpolation="linear") >= threshold
        dtype = np.uint8
    elif method == "nearest" and integer:
        labels = read_labels(image)
        data = resample(labels.data, source.affine, grid, matrix, interpolation="nearest")
        dtype = labels.data.dtype
    else:
        data = resample(source.data, source.affine, grid, matrix, interpolation=method)
        dtype = np.float32
    record = sidecar(command="apply-transform",
                     parameters={"inverse": inverse, "interpolation": method, "threshold": threshold},
                     inputs=describe_inputs([image, transform, reference]))
    with OutputBatch(inputs=[image, transform, reference], force=force) as out:
        common.add_image(out, output, data, target, dtype, record)
    common.emit(out.written, as_json=as_json, payload={"written": [str(p) for p in out.written],
                                                        "interpolation": method, "inverse": inverse})


preprocess_command = common.command(preprocess_command)
apply_transform_command = common.command(apply_transform_command)
