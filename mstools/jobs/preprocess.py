"""Preprocessing as jobs: two raw FLAIRs -> an aligned case folder (``mstools preprocess``),
and carrying an image into or out of its middle space (``mstools apply-transform``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from mstools.jobs import JobResult
from mstools.jobs.options import option

#: Files written next to the case layout's images.
TRANSFORM_BASELINE = "time01_to_middle_space.tfm"
TRANSFORM_FOLLOWUP = "time02_to_middle_space.tfm"
REPORT = "preprocess_report.json"
QC_PICTURE = "qc_preprocess.png"

BRAIN_EXTRACTIONS = ("otsu", "deepbet", "none")
COMBINES = ("union", "intersection")
SPACES = ("halfway", "baseline", "followup")
HARMONISATIONS = ("histogram", "linear", "zscore", "none")
INTERPOLATIONS = ("auto", "nearest", "linear", "smooth")


@dataclass(frozen=True)
class PreprocessJobOptions:
    # = mstools.preprocess.PreprocessOptions' defaults (a test checks); literals keep `--help` light
    brain_extraction: str = option("otsu", kind="choice", choices=BRAIN_EXTRACTIONS, help="Brain masks: otsu (fast, Cabezas et al.), deepbet (network, slower), none.")
    combine: str = option("union", kind="choice", choices=COMBINES, help="Combine the two masks: union (MSSEG-2 organisers) or intersection (Cabezas et al.).")
    bias_correction: bool = option(True, "--bias-correction", secondary="--no-bias-correction", kind="bool", help="N4 bias-field correction of each scan.")
    n4_shrink: int = option(4, kind="int", min=1, max=8, help="N4 fits the field on images shrunk by this factor (speed).")
    registration: bool = option(True, "--registration", secondary="--no-registration", kind="bool", help="Rigid registration; --no-registration needs a pair already on one grid.")
    space: str = option("halfway", kind="choice", choices=SPACES, help="Common space: halfway (MSSEG-2: half the transform on each scan), or the baseline/follow-up grid.")
    spacing_mm: Optional[str] = option(None, kind="str", help="Voxel size of the common grid, e.g. 1 or 1,1,3 (default: 1 mm isotropic when a scan is 2D multi-slice; else the scans' own if equal, or isotropic at the finest).")
    harmonisation: str = option("histogram", kind="choice", choices=HARMONISATIONS, help="Intensity harmonisation inside the brain: histogram (Nyul landmarks onto the baseline), linear (Masson et al.'s joint-histogram fit), zscore, none. The default was chosen by measurement on simulated pairs.")
    qc: bool = option(True, "--qc", secondary="--no-qc", kind="bool", help="Write the QC picture (PNG).")


def parse_spacing(text: Optional[str]) -> Optional[tuple[float, float, float]]:
    """``1`` or ``1,1,3`` (or ``1x1x3``) -> three voxel edges in mm."""
    from mstools.errors import InputError

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


def preprocess_job(baseline: Path, followup: Path, output: Path,
                   options: PreprocessJobOptions = PreprocessJobOptions(), *,
                   baseline_mask: Optional[Path] = None, followup_mask: Optional[Path] = None,
                   baseline_lesions: Optional[Path] = None, followup_lesions: Optional[Path] = None,
                   sequences: Optional[dict] = None,
                   force: bool = False, progress: Optional[Callable[[str], None]] = None) -> JobResult:
    """Bring two raw FLAIR scans into one aligned, intensity-matched case folder; ``progress``
    hears each step (brain extraction, N4, registration, resampling, harmonisation; default:
    a log line each). ``sequences``: {(``"t1"``/``"t2"``, visit 0/1): path} of optional raw T1/T2
    scans, each registered to its visit's FLAIR and written on the common grid as the case
    folder's ``t1_time01_on_middle_space.nii.gz`` ... (:data:`mstools.case_layout.SEQUENCE_FILES`)."""
    import numpy as np

    from mstools import case_layout as layout
    from mstools.detections import add_image
    from mstools.errors import InputError
    from mstools.io import OutputBatch, check_same_grid, new_reference, read_mask, read_scan, transform_text
    from mstools.messages import log
    from mstools.preprocess import PreprocessOptions, preprocess_pair
    from mstools.preprocess.qc import qc_png
    from mstools.provenance import check_outputs, describe_inputs, sidecar

    o = options
    spacing = parse_spacing(o.spacing_mm)
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: exists and is not a folder; choose another output path")
    names = [layout.BASELINE, layout.FOLLOWUP, layout.BRAIN_MASK]
    names += [layout.LESIONS_BASELINE] if baseline_lesions else []
    names += [layout.LESIONS_FOLLOWUP] if followup_lesions else []
    sequence_paths = {key: Path(p) for key, p in sorted((sequences or {}).items()) if p is not None}
    for key in sequence_paths:
        if key not in {(s, v) for s in layout.SEQUENCE_FILES for v in (0, 1)}:
            raise InputError(f"unknown sequence {key!r}; T1/T2 of visit 0 (baseline) or 1 (follow-up)")
    names += [layout.SEQUENCE_FILES[sequence][visit] for sequence, visit in sequence_paths]
    others = [TRANSFORM_BASELINE, TRANSFORM_FOLLOWUP, REPORT] + ([QC_PICTURE] if o.qc else [])
    inputs = [p for p in (baseline, followup, baseline_mask, followup_mask, baseline_lesions, followup_lesions) if p]
    inputs += list(sequence_paths.values())
    # fail before the work, not after it (a missing case folder and its parents are created)
    check_outputs([output / name for name in names], inputs=inputs, force=force)
    check_outputs([output / name for name in others], inputs=inputs, force=force, sidecars=False)

    # the two scans decoded side by side (zlib releases the GIL); the baseline's error first
    from mstools.parallel import side_by_side

    base, follow = side_by_side(read_scan, [(baseline,), (followup,)])
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
    raw_sequences = {}
    for (sequence, visit), path in sequence_paths.items():
        scan = read_scan(path)
        raw_sequences[(sequence, visit)] = (scan.data, scan.affine)
    try:
        library_options = PreprocessOptions(
            brain_extraction=o.brain_extraction, combine_masks=o.combine,
            bias_correction=o.bias_correction, n4_shrink=o.n4_shrink,
            registration="auto" if o.registration else "off", space=o.space, spacing_mm=spacing,
            harmonisation=o.harmonisation)
    except ValueError as exc:
        raise InputError(f"{exc}; see mstools preprocess --help") from None

    result = preprocess_pair(base.data, base.affine, follow.data, follow.affine, options=library_options,
                             carry=carry, sequences=raw_sequences, names=(str(baseline), str(followup)),
                             progress=progress or (lambda m: log(f"preprocess: {m}")), **masks)
    models = {}
    if o.brain_extraction == "deepbet" and len(masks) < 2:
        from deepbet.utils import DATA_PATH

        from mstools.io import sha256

        models = {name: sha256(Path(DATA_PATH) / "models" / name) for name in ("model.pt", "bbox_model.pt")}
    record = sidecar(command="preprocess", parameters={**library_options.__dict__, "qc": o.qc},
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
        add_image(out, output / layout.BASELINE, result.baseline, reference, np.float32, record)
        add_image(out, output / layout.FOLLOWUP, result.followup, reference, np.float32, record)
        add_image(out, output / layout.BRAIN_MASK, result.brain_mask, reference, np.uint8, record)
        for name, mask in result.carried.items():
            add_image(out, output / name, mask, reference, np.uint8, record)
        for (sequence, visit), image in sorted(result.sequences.items()):
            add_image(out, output / layout.SEQUENCE_FILES[sequence][visit], image, reference, np.float32, record)
        out.text(output / TRANSFORM_BASELINE, transform_text(result.to_baseline))
        out.text(output / TRANSFORM_FOLLOWUP, transform_text(result.to_followup))
        out.json(output / REPORT, report)
        if o.qc:
            out.text(output / QC_PICTURE, qc_png(result.baseline, result.followup, result.brain_mask,
                                                 spacing_mm=result.grid.spacing_mm, affine=result.grid.affine,
                                                 title=f"{baseline.name} -> {followup.name}"))
    reg = result.report["registration"]
    log(f"preprocess: follow-up moved {reg['max_brain_displacement_mm']:.2f} mm / "
        f"{reg['rotation_deg']:.2f} deg relative to the baseline"
        + (" (already aligned: not resampled)" if reg["already_aligned"] and reg["same_grid"] else ""))
    return JobResult(list(out.written), {**report, "written": [str(p) for p in out.written]})


def apply_transform_job(image: Path, transform: Path, reference: Path, output: Path, *, inverse: bool = False,
                        interpolation: str = "auto", threshold: float = 0.5, force: bool = False) -> JobResult:
    """Carry an image or mask into the middle space written by ``preprocess``, or back out."""
    import numpy as np

    from mstools.detections import add_image
    from mstools.io import OutputBatch, read_grid, read_image, read_labels, read_transform
    from mstools.preprocess.rigid import grid_of, resample
    from mstools.provenance import check_outputs, describe_inputs, sidecar

    check_outputs([output], inputs=[image, transform, reference], force=force)  # parents are created
    matrix = read_transform(transform)
    if inverse:
        matrix = np.linalg.inv(matrix)
    source = read_image(image)
    target = read_grid(reference)     # only its grid and header are used
    integer = source.header.get_data_dtype().kind in "iub" and np.array_equal(source.data, np.round(source.data))
    binary = integer and bool(np.isin(np.unique(source.data), (0, 1)).all())
    method = interpolation
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
    with OutputBatch(inputs=[image, transform, reference], force=force, create_dirs=True) as out:
        add_image(out, output, data, target, dtype, record)
    return JobResult(list(out.written), {"written": [str(p) for p in out.written],
                                         "interpolation": method, "inverse": inverse})
