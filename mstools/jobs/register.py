"""Registration-based detection as a job (``mstools register``), and applying a saved
displacement field (``mstools warp``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from mstools.jobs import JobResult
from mstools.jobs.options import option

MODES = ("registered", "affine-check")
INTERPOLATIONS = ("linear", "nearest")

#: Files written for an output prefix P, besides the common detector files
#: (P_score, P_mask, P_labels, P_lesions.tsv; see mstools.detections).
EXTRA_SUFFIXES = {
    "warped": "_warped.nii.gz",
    "displacement": "_displacement.nii.gz",
    "jacobian": "_jacobian.nii.gz",
    "subtraction": "_subtraction.nii.gz",
    "affine_subtraction": "_affine_subtraction.nii.gz",
    "transform": "_elastix.txt",
}


@dataclass(frozen=True)
class RegisterOptions:
    parameters: Optional[list] = option(None, "--parameters", "-p", kind="paths", help="elastix parameter file(s), one per stage, in order; replace the default rigid, affine and B-spline stages.")
    grid_spacing_mm: Optional[float] = option(None, kind="float", help="Final B-spline control-point spacing (mm); larger is stiffer. [default: measured, see --help text]")
    bending_weight: float = option(0.0, kind="float", min=0.0, help="Weight of elastix's bending-energy penalty (stiffer; runs on one thread).")
    mode: str = option("registered", kind="choice", choices=MODES, help="registered: candidates from the registered subtraction; affine-check: also from the affine-only subtraction (keeps new lesions a flexible B-spline shrank away).")
    threshold: Optional[float] = option(None, kind="float", help="z-score threshold of the subtraction. [default: measured]")
    hyperintense_sd: Optional[float] = option(None, kind="float", min=0.0, help="Candidate voxels must be this many SDs above the follow-up's mean brain intensity (new FLAIR lesions are hyperintense); 0 = off. [default: 1, Prados et al.'s hyperintensity; measured]")
    min_peak_sd: Optional[float] = option(None, kind="float", min=0.0, help="A candidate's peak subtraction must be this many SDs above the brain's (grow at --threshold, keep what peaks high); 0 = off. [default: 5; measured]")
    min_mm3: Optional[float] = option(None, kind="float", min=0.0, help="Smallest candidate (mm3, 26-connected; at least 1 voxel). [default: 5, La Rosa et al.'s 5 voxels of ~1 mm3]")
    register_in_mask: bool = option(False, kind="bool", help="Also restrict elastix's sampling to --followup-mask (measured: worse at the brain edge; off by default).")
    threads: Optional[int] = option(None, kind="int", min=1, help="elastix threads (default: all cores).")


def register_job(followup: Path, baseline: Path, output: str, options: RegisterOptions = RegisterOptions(), *,
                 followup_mask: Optional[Path] = None, baseline_mask: Optional[Path] = None,
                 force: bool = False, progress: Optional[Callable[[str], None]] = None) -> JobResult:
    """Register the baseline onto the follow-up and write the candidates, fields and maps;
    ``progress`` hears ITK's loading and each elastix stage and resolution (default: a log line each)."""
    import time

    import numpy as np

    from mstools.detections import add_detections, add_image, output_paths
    from mstools.errors import InputError
    from mstools.io import OutputBatch, check_same_grid, read_mask, read_scan
    from mstools.messages import log
    from mstools.provenance import check_outputs, describe_inputs, sidecar, sidecar_path
    from mstools.detect.registration import detection
    from mstools.detect.registration.detector import detect, parameter_maps
    from mstools.detect.registration.parameters import parameter_text

    o = options
    clock = {"start": time.perf_counter()}
    threshold = detection.DEFAULT_THRESHOLD if o.threshold is None else o.threshold
    min_mm3 = detection.DEFAULT_MIN_MM3 if o.min_mm3 is None else o.min_mm3
    hyperintense_sd = detection.DEFAULT_HYPERINTENSE_SD if o.hyperintense_sd is None else o.hyperintense_sd
    min_peak_sd = detection.DEFAULT_MIN_PEAK_SD if o.min_peak_sd is None else o.min_peak_sd
    if not np.isfinite(threshold):
        raise InputError(f"--threshold must be a finite number, not {threshold}")
    parameter_files = [Path(p) for p in o.parameters or []]
    maps, settings = parameter_maps(parameter_files, o.grid_spacing_mm, o.bending_weight)

    paths = {**output_paths(output), **{k: output + v for k, v in EXTRA_SUFFIXES.items()}}
    use_affine = o.mode == "affine-check"
    if not use_affine:
        del paths["affine_subtraction"]
    inputs = [p for p in (followup, baseline, followup_mask, baseline_mask, *parameter_files) if p is not None]
    check_outputs(paths.values(), inputs=inputs, force=force)  # fail before the work, not after it

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

    log(f"registering {baseline} onto {followup} with elastix ({len(maps)} stages)")
    found = detect(fixed, moving, maps, brain=brain, threshold=threshold, min_voxels=min_voxels,
                   hyperintense_sd=hyperintense_sd, min_peak_sd=min_peak_sd, affine_check=use_affine,
                   fixed_brain=fixed_brain, moving_brain=moving_brain, register_in_mask=o.register_in_mask,
                   threads=o.threads,
                   progress=progress or (lambda message: log(f"register: {message}")))
    clock["registered"] = time.perf_counter()
    quality = found.quality
    parameters_record = {
        "mode": o.mode, "threshold": threshold, "hyperintense_sd": hyperintense_sd, "min_peak_sd": min_peak_sd,
        "min_mm3": min_mm3, "min_voxels": min_voxels,
        "register_in_mask": o.register_in_mask,
        "connectivity": detection.CANDIDATE_CONNECTIVITY, "threads": o.threads,
        "parameter_files": [str(p) for p in parameter_files],
        "settings": settings.__dict__ if settings is not None else None,
        "displacement_convention": "RAS+ mm on the follow-up grid; follow-up point x maps to baseline point x + u(x)",
        "jacobian_convention": "1 / det(I + du/dx): follow-up volume per unit baseline volume (> 1 growth, 0 folding)",
        "registration_quality": {"correlation": quality.correlation, "folding": quality.folding},
    }
    record = sidecar(command="register", parameters=parameters_record, inputs=describe_inputs(inputs))
    with OutputBatch(inputs=inputs, force=force, create_dirs=True) as out:
        add_image(out, paths["warped"], found.warped, fixed, np.float32, record)
        out.vector_image(paths["displacement"], found.displacement, fixed)
        out.json(sidecar_path(paths["displacement"]), record)
        add_image(out, paths["jacobian"], found.volume_change, fixed, np.float32, record)
        add_image(out, paths["subtraction"], found.subtraction, fixed, np.float32, record)
        if use_affine:
            add_image(out, paths["affine_subtraction"], found.affine_subtraction, fixed, np.float32, record)
        add_detections(out, output, found.detections, fixed, record, table=found.table, columns=found.columns)
        text = "".join(f"// stage {n}\n" + parameter_text(m) + "\n" for n, m in enumerate(found.transform_maps))
        out.text(paths["transform"], text)
        out.json(sidecar_path(paths["transform"]), record)
    clock["written"] = time.perf_counter()
    seconds = {
        "read": clock["read"] - clock["start"],
        "itk_load": found.load_seconds,
        "registration": found.seconds,
        "outputs": clock["written"] - clock["registered"],
        "total": clock["written"] - clock["start"],
    }
    log(f"{len(found.table)} candidates; correlation {quality.correlation:.3f}; "
        f"itk load {seconds['itk_load']:.1f} s, registration {seconds['registration']:.1f} s, "
        f"outputs {seconds['outputs']:.1f} s", level=1)
    return JobResult(list(out.written), {
        "written": [str(p) for p in out.written], "candidates": len(found.table),
        "correlation": quality.correlation, "folding": quality.folding, "seconds": seconds})


def warp_job(image: Path, displacement: Path, output: Path, *, interpolation: str = "linear",
             force: bool = False) -> JobResult:
    """Apply a saved displacement field to another image or mask: image(x + u(x))."""
    import numpy as np

    from mstools.detections import add_image
    from mstools.errors import InputError
    from mstools.io import Image, OutputBatch, read_image, read_labels, read_vector_field
    from mstools.provenance import check_outputs, describe_inputs, sidecar
    from mstools.detect.registration.deformation import warp

    check_outputs([output], inputs=[image, displacement], force=force)
    field = read_vector_field(displacement)
    nearest = interpolation == "nearest"
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
    record = sidecar(command="warp", parameters={"interpolation": interpolation},
                     inputs=describe_inputs([image, displacement]))
    with OutputBatch(inputs=[image, displacement], force=force, create_dirs=True) as out:
        add_image(out, output, warped, reference, dtype, record)
    return JobResult(list(out.written), {"written": [str(p) for p in out.written], "interpolation": interpolation})
