"""Importing the real longitudinal MS database (Lesjak et al., CC-BY; a local clone of
muschellij2/open_ms_data) as case folders, as a job (``mstools import-open-ms``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from mstools import case_layout as layout
from mstools.detections import add_image
from mstools.errors import InputError
from mstools.jobs import JobResult
from mstools.messages import log

CHANGE_MASK = "change_mask.nii.gz"
COMPONENTS = "change_components.tsv"
SOURCE = "source.json"
ATTRIBUTION_FILE = "ATTRIBUTION.txt"


def import_open_ms_job(clone: Path, out: Path, patients: Optional[list[str]] = None, *,
                       increase_rule: str = "lesion-tissue", force: bool = False) -> JobResult:
    """Every chosen patient (default: all whose two raw FLAIRs are stored) as OUT/patientXX,
    all in one batch (all or nothing); ``increase_rule``: see
    :func:`mstools.datasets.open_ms_data.increase_only`."""
    from mstools.datasets import open_ms_data as omd
    from mstools.provenance import check_outputs

    if increase_rule not in omd.INCREASE_RULES:
        raise InputError(f"--increase-rule {increase_rule!r}: choose one of {', '.join(omd.INCREASE_RULES)}")
    chosen = list(patients) if patients else omd.available_patients(clone)
    if not chosen:
        raise InputError(f"{clone}: no patient has both raw FLAIRs stored; nothing to import")
    located = [omd.locate_patient(clone, p) for p in chosen]   # every patient checked before any work
    located = list({found.patient: found for found in located}.values())   # --patient 1 --patient 01: once
    images = (layout.BASELINE, layout.FOLLOWUP, layout.BRAIN_MASK, CHANGE_MASK, layout.GROUND_TRUTH)
    folders = [out / f"patient{found.patient}" for found in located]
    # before any work: OUT and its missing parents are created; an existing file needs --force
    check_outputs([folder / name for folder in folders for name in images], force=force)
    check_outputs([folder / layout.SEQUENCE_FILES[sequence][visit] for folder, found in zip(folders, located)
                   for sequence, visit in found.sequences], force=force)
    check_outputs([folder / name for folder in folders for name in (COMPONENTS, SOURCE, ATTRIBUTION_FILE)],
                  force=force, sidecars=False)
    summary = []
    made_out = not out.exists()
    try:
        written = _write_cases(out, located, increase_rule, force, summary)
    except BaseException:
        # OutputBatch.abort removes the folders it made parent first, so OUT (empty) stays
        if made_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    return JobResult(written, {"cases": summary})


def _write_cases(out: Path, located: list, rule: str, force: bool, summary: list) -> list[Path]:
    """Every located patient's case folder, all in one batch (all or nothing)."""
    from mstools.datasets import open_ms_data as omd
    from mstools.io import OutputBatch
    from mstools.provenance import describe_inputs, sidecar

    # one batch for every patient: a failure on any patient leaves no case folder behind
    with OutputBatch(force=force, create_dirs=True) as batch:
        for found in located:
            folder = out / f"patient{found.patient}"
            log(f"import-open-ms: patient {found.patient} -> {folder}")
            reference, case = omd.read_patient(found, rule=rule)
            inputs = [found.baseline_raw, found.followup_raw, found.baseline_transform, found.followup_transform,
                      found.brain_mask, found.change_mask,
                      *(path for key in sorted(found.sequences) for path in found.sequences[key])]
            batch.inputs.extend(inputs)
            record = sidecar(command="import-open-ms", parameters={"patient": found.patient, "increase_rule": rule},
                             inputs=describe_inputs(inputs), extra={"licence": "CC-BY", "held_out": found.held_out})
            kept = ("increase",) if rule == "lesion-tissue" else ("increase", "not_hyperintense")
            increases = sum(1 for c in case.components if c["kind"] in kept)
            for name, data, dtype in ((layout.BASELINE, case.baseline, "float32"),
                                      (layout.FOLLOWUP, case.followup, "float32"),
                                      (layout.BRAIN_MASK, case.brain_mask, "uint8"),
                                      (CHANGE_MASK, case.change_mask, "uint8"),
                                      (layout.GROUND_TRUTH, case.ground_truth, "uint8")):
                add_image(batch, folder / name, data, reference, dtype, record)
            for (sequence, visit), data in sorted(case.sequences.items()):
                add_image(batch, folder / layout.SEQUENCE_FILES[sequence][visit], data, reference, "float32", record)
            batch.table(folder / COMPONENTS, case.components,
                        ("component", "voxels", "mean_difference", "followup_mean", "kind"))
            batch.json(folder / SOURCE, {
                "dataset": "open_ms_data longitudinal (Lesjak et al. 2016)", "patient": found.patient,
                "held_out": found.held_out, "raw_baseline": str(found.baseline_raw),
                "raw_followup": str(found.followup_raw),
                "sequences": {f"{sequence}_time0{visit + 1}": {"raw": str(scan), "intrastudy_transform": str(transform)}
                              for (sequence, visit), (scan, transform) in sorted(found.sequences.items())},
                "change_components": len(case.components), "increase_rule": rule,
                "increase_components": increases, "provenance": record})
            batch.text(folder / ATTRIBUTION_FILE, omd.ATTRIBUTION)
            summary.append({"patient": found.patient, "case": str(folder), "held_out": found.held_out,
                            "change_components": len(case.components), "increase_components": increases})
            log(f"  {len(case.components)} change components, {increases} increases")
    return batch.written

