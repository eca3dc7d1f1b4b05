"""Lesion activity as a job: a case, its new lesions and subtract's candidates ->
new / enlarging / shrinking lesions, ``lesion_changes.tsv`` and the patient's activity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mstools.jobs import JobResult
from mstools.jobs.options import option

#: Written once (mstools.activity holds the sources; a test checks they agree).
RIM_COVERAGE_MIN = 0.1
SHRINK_FRACTION_MIN = 0.2
DECREASE_K_SD = 2.5        # the run's subtract k (mstools.pipeline.stages.RUN_OVERRIDES)

#: Output names after the prefix P, beside the detector outputs of the new lesions
#: (P_score, _mask, _labels, _lesions.tsv; mstools.detections).
ENLARGING_SUFFIX = "_enlarging"         # P_enlarging_labels.nii.gz, P_enlarging_mask.nii.gz
CHANGES_SUFFIX = "_lesion_changes.tsv"
PATIENT_SUFFIX = "_patient.json"


@dataclass(frozen=True)
class ActivityOptions:
    baseline_lesions: Optional[Path] = option(None, kind="path", help="All lesions at baseline (binary mask on the case grid). Default: the case's lesions_time01.nii.gz, else CoactSeg's time-1 map of the run's segment stage; without any, every change is called new.")
    rim_coverage: float = option(RIM_COVERAGE_MIN, kind="float", min=0, max=1, help="Share of a baseline lesion's 1 mm rim a change must cover to be that lesion's growth (enlarging).")
    shrink_fraction: float = option(SHRINK_FRACTION_MIN, kind="float", min=0, max=1, help="Share of a baseline lesion's voxels that must darken for it to be shrinking.")
    k: float = option(DECREASE_K_SD, kind="float", min=0, help="Darkening: subtraction below -k SD of the brain's.")


def output_names(prefix: str) -> dict[str, str]:
    return {"enlarging_mask": prefix + ENLARGING_SUFFIX + "_mask.nii.gz",
            "enlarging_labels": prefix + ENLARGING_SUFFIX + "_labels.nii.gz",
            "changes": prefix + CHANGES_SUFFIX, "patient": prefix + PATIENT_SUFFIX}


def baseline_lesion_source(case: Path, options: ActivityOptions, segment_prefix: Optional[str]) -> Optional[Path]:
    """Where the baseline all-lesion map comes from (see ``ActivityOptions.baseline_lesions``)."""
    from mstools.jobs.segment import all_lesion_source

    return all_lesion_source(case, "all_t1", given=options.baseline_lesions, segment_prefix=segment_prefix)


def activity_job(case: Path, new_prefix: str, candidates_prefix: str, out: str,
                 options: ActivityOptions = ActivityOptions(), *, segment_prefix: Optional[str] = None,
                 register_prefix: Optional[str] = None, force: bool = False) -> JobResult:
    """New, enlarging and shrinking lesions of a case (``mstools activity``).

    ``new_prefix``: a detector's outputs whose mask holds the reported new lesions (the
    run's final stage); ``candidates_prefix``: subtract's outputs (its candidates and its
    ``_subtraction`` image); ``register_prefix``: register's outputs, whose Jacobian is
    reported per lesion when it exists."""
    import numpy as np

    from mstools import activity as act
    from mstools import case_layout as layout
    from mstools.case import read_pair, resolve_case_inputs
    from mstools.detections import (LABELS_SUFFIX, MASK_SUFFIX, SCORE_SUFFIX, TABLE_SUFFIX, add_detections,
                                     add_image, add_table, output_paths)
    from mstools.errors import InputError
    from mstools.intensity import csf_from_flair
    from mstools.io import OutputBatch, check_same_grid, read_image, read_labels, read_mask, read_tsv
    from mstools.jobs.register import EXTRA_SUFFIXES as REGISTER_SUFFIXES
    from mstools.jobs.subtract import SUBTRACTION_SUFFIX
    from mstools.lesions import detections_from_labels
    from mstools.messages import log
    from mstools.provenance import check_outputs, describe_inputs, sidecar

    paths = resolve_case_inputs(case, None, None, None)
    names = output_names(out)
    source = baseline_lesion_source(case, options, segment_prefix)
    subtraction_path = candidates_prefix + SUBTRACTION_SUFFIX
    inputs = [*paths, new_prefix + MASK_SUFFIX, new_prefix + SCORE_SUFFIX, candidates_prefix + MASK_SUFFIX,
              candidates_prefix + TABLE_SUFFIX, subtraction_path]
    for path in inputs[3:]:
        if not Path(path).is_file():
            raise InputError(f"{path}: not found; activity reads the new lesions' and subtract's outputs "
                             "(run `mstools subtract` first, or give the prefixes of a run's stages)")
    check_outputs([*output_paths(out).values(), *names.values()], inputs=[*inputs, source], force=force)
    b_img, _, brain_img = read_pair(*paths)     # the follow-up is read to be checked
    brain = brain_img.data > 0
    new = read_mask(new_prefix + MASK_SUFFIX)
    new_labels = read_labels(new_prefix + LABELS_SUFFIX) if Path(new_prefix + LABELS_SUFFIX).is_file() else None
    score = read_image(new_prefix + SCORE_SUFFIX)
    candidates = read_mask(candidates_prefix + MASK_SUFFIX)
    subtraction = read_image(subtraction_path)
    for image in (new, score, candidates, subtraction, *([new_labels] if new_labels is not None else [])):
        check_same_grid(b_img, image)
    if source is not None:
        baseline_lesions = read_mask(source)
        check_same_grid(b_img, baseline_lesions)
        baseline_map = baseline_lesions.data > 0
        inputs.append(source)
    else:
        log("activity: no baseline lesion map (give --baseline-lesions): every change is called new")
        baseline_map = np.zeros(brain.shape, dtype=bool)
    tissues_path = case / layout.TISSUES
    if tissues_path.is_file():
        tissues = read_labels(tissues_path)
        check_same_grid(b_img, tissues)
        csf = tissues.data == layout.TISSUE_LABELS["csf"]
        grey = tissues.data == layout.TISSUE_LABELS["gm"]
        inputs.append(tissues_path)
    else:
        csf, grey = csf_from_flair(b_img.data, brain), None
    locate = act.Locator(brain, affine=b_img.affine, csf=csf, grey_matter=grey)
    jacobian = None
    jacobian_path = register_prefix + REGISTER_SUFFIXES["jacobian"] if register_prefix is not None else None
    if jacobian_path is not None and Path(jacobian_path).is_file():
        jacobian_img = read_image(jacobian_path)
        check_same_grid(b_img, jacobian_img)
        jacobian = jacobian_img.data
        inputs.append(jacobian_path)
    decrease = act.decrease_mask(subtraction.data, brain, k=options.k)
    result = act.classify_changes(new.data > 0, candidates.data > 0, baseline_map, decrease,
                                  affine=b_img.affine, score=score.data, locate=locate,
                                  lesion_labels=new_labels.data if new_labels is not None else None,
                                  jacobian=jacobian,
                                  rim_coverage_min=options.rim_coverage,
                                  shrink_fraction_min=options.shrink_fraction)
    n_candidates = len(read_tsv(candidates_prefix + TABLE_SUFFIX))
    features = act.patient_features(result, n_candidates)
    probability = act.probability_of(features)
    patient = {"active": probability >= 0.5, "activity_probability": round(probability, 4),
               "new_lesions": result.count("new"), "enlarging_lesions": result.count("enlarging"),
               "shrinking_lesions": result.count("shrinking"), "top_lesion_score": round(float(features[1]), 4),
               "candidates": n_candidates,
               "baseline_lesions": str(source) if source is not None else None,
               "model": {"coefficients": list(act.ACTIVITY_COEFFICIENTS),
                         "features": ["intercept", "top_lesion_score", "log1p(new + enlarging)",
                                      "log1p(candidates)"]}}
    parameters = {"rim_coverage": options.rim_coverage, "shrink_fraction": options.shrink_fraction,
                  "k": options.k, "rim_mm": act.RIM_MM, "min_change_mm3": act.MIN_CHANGE_MM3,
                  "centroid_offset_max": act.CENTROID_OFFSET_MAX}
    record = sidecar(command="activity", parameters=parameters, inputs=describe_inputs(inputs))
    with OutputBatch(inputs=inputs, force=force, create_dirs=True) as batch:
        add_detections(batch, out, detections_from_labels(result.new_labels, score.data, b_img.affine), b_img,
                       record)
        add_image(batch, names["enlarging_mask"], result.enlarging_labels > 0, b_img, np.uint8, record)
        add_image(batch, names["enlarging_labels"], result.enlarging_labels, b_img, np.int32, record)
        add_table(batch, names["changes"], result.changes, act.CHANGE_COLUMNS, record)
        batch.json(names["patient"], {**patient, "provenance": record})
    log(f"activity: {patient['new_lesions']} new, {patient['enlarging_lesions']} enlarging, "
        f"{patient['shrinking_lesions']} shrinking; active: {'yes' if patient['active'] else 'no'} "
        f"(p = {probability:.2f})")
    return JobResult(list(batch.written), {**patient, "written": [str(p) for p in batch.written]})
