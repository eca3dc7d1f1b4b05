"""`mstools import-open-ms`: real longitudinal pairs (Ljubljana database) as case folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mstools_cli import common
from mstools import case_layout as layout
from mstools.errors import InputError

CHANGE_MASK = "change_mask.nii.gz"
COMPONENTS = "change_components.tsv"
SOURCE = "source.json"
ATTRIBUTION_FILE = "ATTRIBUTION.txt"


def import_open_ms_command(
    clone: Path = typer.Argument(..., help="Local clone of the open_ms_data repository (holding longitudinal/)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to create: one case folder OUT/patientXX per patient."),
    patients: Optional[list[str]] = typer.Option(None, "--patient", "-p", help="Patient id (01-20); repeat for several. Default: every patient whose two raw FLAIRs are stored."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the written paths."),
) -> None:
    """Turn the real longitudinal MS database (Lesjak et al., CC-BY) into case folders.

    Each case holds both raw FLAIRs resampled onto the database's common grid with its
    own transforms, the brain mask, the change mask (increases and decreases) and
    ground_truth.nii.gz = the increases only (new or enlarging lesion tissue), with
    the attribution. Patients 03, 12 and 19 are the acceptance set (marked held_out
    in source.json): never train or tune on them.

    Example: mstools import-open-ms ~/open_ms_data -o real --patient 01
    """
    from mstools.datasets import open_ms_data as omd

    chosen = list(patients) if patients else omd.available_patients(clone)
    if not chosen:
        raise InputError(f"{clone}: no patient has both raw FLAIRs stored; nothing to import")
    located = [omd.locate_patient(clone, p) for p in chosen]   # every patient checked before any work
    located = list({found.patient: found for found in located}.values())   # --patient 1 --patient 01: once
    names = (layout.BASELINE, layout.FOLLOWUP, layout.BRAIN_MASK, CHANGE_MASK, layout.GROUND_TRUTH,
             COMPONENTS, SOURCE, ATTRIBUTION_FILE)
    existing = [out / f"patient{found.patient}" / name for found in located for name in names]
    existing = [path for path in existing if path.exists()]
    if existing and not force:
        raise InputError(f"{existing[0]}: already exists; pass --force to overwrite it")
    summary = []
    made_out = not out.exists()
    try:
        written = _write_cases(out, located, force, summary)
    except BaseException:
        # OutputBatch.abort removes the folders it made parent first, so OUT (empty) stays
        if made_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    common.emit(written, as_json=as_json, payload={"cases": summary})


def _write_cases(out: Path, located: list, force: bool, summary: list) -> list[Path]:
    """Every located patient's case folder, all in one batch (all or nothing)."""
    from mstools.datasets import open_ms_data as omd
    from mstools.io import OutputBatch
    from mstools.provenance import describe_inputs, sidecar

    # one batch for every patient: a failure on any patient leaves no case folder behind
    with OutputBatch(force=force, create_dirs=True) as batch:
        for found in located:
            folder = out / f"patient{found.patient}"
            common.log(f"import-open-ms: patient {found.patient} -> {folder}")
            reference, case = omd.read_patient(found)
            inputs = [found.baseline_raw, found.followup_raw, found.baseline_transform, found.followup_transform,
                      found.brain_mask, found.change_mask]
            batch.inputs.extend(inputs)
            record = sidecar(command="import-open-ms", parameters={"patient": found.patient},
                             inputs=describe_inputs(inputs), extra={"licence": "CC-BY", "held_out": found.held_out})
            increases = sum(1 for c in case.components if c["kind"] == "increase")
            for name, data, dtype in ((layout.BASELINE, case.baseline, "float32"),
                                      (layout.FOLLOWUP, case.followup, "float32"),
                                      (layout.BRAIN_MASK, case.brain_mask, "uint8"),
                                      (CHANGE_MASK, case.change_mask, "uint8"),
                                      (layout.GROUND_TRUTH, case.ground_truth, "uint8")):
                common.add_image(batch, folder / name, data, reference, dtype, record)
            batch.table(folder / COMPONENTS, case.components, ("component", "voxels", "mean_difference", "kind"))
            batch.json(folder / SOURCE, {
                "dataset": "open_ms_data longitudinal (Lesjak et al. 2016)", "patient": found.patient,
                "held_out": found.held_out, "raw_baseline": str(found.baseline_raw),
                "raw_followup": str(found.followup_raw), "change_components": len(case.components),
                "increase_components": increases, "provenance": record})
            batch.text(folder / ATTRIBUTION_FILE, omd.ATTRIBUTION)
            summary.append({"patient": found.patient, "case": str(folder), "held_out": found.held_out,
                            "change_components": len(case.components), "increase_components": increases})
            common.log(f"  {len(case.components)} change components, {increases} increases")
    return batch.written


import_open_ms_command = common.command(import_open_ms_command)
