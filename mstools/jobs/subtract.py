"""The subtraction detector as a job: a case -> PREFIX_subtraction, _ratio and the detector outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mstools.jobs import JobResult
from mstools.jobs.options import option

#: Defaults written once (mstools.detect.subtraction holds the papers' figures; a test checks they agree).
PRADOS_K_SD = 3.0
PRADOS_CORE_EROSION_MM = 1.0
HAMZAOUI_RATIO = 1.15
DIFFERENTIAL_BIAS_SIGMA_MM = 15.0
RULES = ("prados", "larosa", "hamzaoui")
NOISE_ESTIMATES = ("sd", "robust")
PRADOS_NOISE = "sd"
MIN_FOLLOWUP_SD = 0.5
MIN_PEAK_SD = {"prados": 5.0, "larosa": 0.0, "hamzaoui": 4.0}

#: The subtraction image written after the output prefix (read by activity and the report).
SUBTRACTION_SUFFIX = "_subtraction.nii.gz"


@dataclass(frozen=True)
class SubtractOptions:
    rule: str = option("prados", kind="choice", choices=RULES,
                       help="Candidate rule: prados (Prados & Kanber), larosa (La Rosa et al.), hamzaoui (Hamzaoui et al.).")
    k: float = option(PRADOS_K_SD, kind="float", help="prados: standard deviations above the mean difference.")
    core_mm: float = option(PRADOS_CORE_EROSION_MM, kind="float", min=0, help="prados: a candidate must survive an erosion of this radius (mm; along axes of voxels <= it); 0 = no core needed.")
    threshold: Optional[float] = option(None, kind="float", help="larosa: fixed threshold on the z-scored subtraction (default: adapts to the registration quality).")
    ratio_threshold: float = option(HAMZAOUI_RATIO, kind="float", help="hamzaoui: follow-up / baseline ratio.")
    noise: str = option(PRADOS_NOISE, kind="choice", choices=NOISE_ESTIMATES, help="prados: the spread k counts: sd (standard deviation about the mean) or robust (1.4826 x median absolute deviation about the median).")
    min_followup_sd: float = option(MIN_FOLLOWUP_SD, kind="float", min=0, help="A candidate's mean follow-up intensity must be this many SDs above the brain's mean (new FLAIR lesions are hyperintense); 0 = off. Measured, see mstools/detect/subtraction.py.")
    min_peak_sd: Optional[float] = option(None, kind="float", min=0, help="A candidate's peak subtraction must be this many SDs above the brain's (grow low, keep what peaks high); 0 = off. Default: the rule's measured value (prados 5, hamzaoui 4, larosa off), see mstools/detect/subtraction.py.")
    bias_sigma_mm: float = option(DIFFERENTIAL_BIAS_SIGMA_MM, kind="float", min=0, help="Differential bias correction width (mm); 0 = off.")


def subtract_job(case: Optional[Path], out: Optional[str], options: SubtractOptions = SubtractOptions(), *,
                 baseline: Optional[Path] = None, followup: Optional[Path] = None,
                 brain_mask: Optional[Path] = None, tissues: Optional[Path] = None,
                 force: bool = False) -> JobResult:
    """Candidate new lesions from the subtraction of two aligned scans (``mstools subtract``)."""
    import numpy as np

    from mstools import case_layout as layout
    from mstools.detect import subtraction as sub
    from mstools.case import read_pair, resolve_case_inputs
    from mstools.detections import add_detections, add_image, output_paths
    from mstools.errors import InputError
    from mstools.io import OutputBatch, read_labels
    from mstools.messages import log
    from mstools.provenance import check_outputs, describe_inputs, sidecar

    paths = resolve_case_inputs(case, baseline, followup, brain_mask)
    prefix = out if out is not None else str((case or Path(".")) / "subtract")
    check_outputs([*output_paths(prefix).values(), prefix + SUBTRACTION_SUFFIX, prefix + "_ratio.nii.gz"],
                  inputs=[*paths, tissues], force=force)   # before the work, not after it
    b_img, f_img, brain_img = read_pair(*paths)
    csf = None
    inputs = list(paths)
    if tissues is not None:
        from mstools.io import check_same_grid

        tissue_img = read_labels(tissues)
        check_same_grid(b_img, tissue_img)
        csf = tissue_img.data == layout.TISSUE_LABELS["csf"]
        inputs.append(tissues)
    rule = options.rule
    chosen = {"prados": {"k": options.k, "core_mm": options.core_mm, "noise": options.noise, "csf": csf},
              "larosa": {"threshold": options.threshold},
              "hamzaoui": {"ratio_threshold": options.ratio_threshold}}[rule]
    chosen["min_followup_sd"] = options.min_followup_sd
    chosen["min_peak_sd"] = MIN_PEAK_SD[rule] if options.min_peak_sd is None else options.min_peak_sd  # recorded
    log(f"subtract ({rule}): {paths[0]} -> {paths[1]}")
    try:
        result = sub.detect(b_img.data, f_img.data, brain_img.data > 0, affine=b_img.affine, rule=rule,
                            bias_sigma_mm=options.bias_sigma_mm, **chosen)
    except ValueError as exc:  # e.g. a constant image inside the brain
        raise InputError(f"{paths[0]}: {exc}; check that the scans hold the brain") from None
    parameters = {"rule": rule, "bias_sigma_mm": options.bias_sigma_mm,
                  **{key: v for key, v in chosen.items() if key != "csf"},
                  "csf_source": "tissues" if csf is not None else "flair intensity (3-class Otsu)"}
    record = sidecar(command="subtract", parameters=parameters, inputs=describe_inputs(inputs),
                     extra={"details": result.details})
    detections = result.detections
    with OutputBatch(inputs=inputs, force=force, create_dirs=True) as batch:
        add_image(batch, prefix + SUBTRACTION_SUFFIX, result.subtraction, b_img, np.float32, record)
        add_image(batch, prefix + "_ratio.nii.gz", result.ratio, b_img, np.float32, record)
        add_detections(batch, prefix, detections, b_img, record)
    log(f"{len(detections.table)} candidates")
    return JobResult(list(batch.written), {"candidates": len(detections.table), "details": result.details,
                                           "written": [str(p) for p in batch.written]})
