"""`mstools import-open-ms`: real longitudinal pairs (Ljubljana database) as case folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mstools_cli import common


def import_open_ms_command(
    clone: Path = typer.Argument(..., help="Local clone of the open_ms_data repository (holding longitudinal/)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to create: one case folder OUT/patientXX per patient."),
    patients: Optional[list[str]] = typer.Option(None, "--patient", "-p", help="Patient id (01-20); repeat for several. Default: every patient whose two raw FLAIRs are stored."),
    increase_rule: str = typer.Option("lesion-tissue", "--increase-rule", help="Which change components are the ground truth: lesion-tissue (brighter than at baseline and brighter than the brain's median at follow-up) or brightening (brighter than at baseline: the rule before 2026-12-07)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the written paths."),
) -> None:
    """Turn the real longitudinal MS database (Lesjak et al., CC-BY) into case folders.

    Each case holds both raw FLAIRs resampled onto the database's common grid with its
    own transforms, the brain mask, the change mask (increases and decreases) and
    ground_truth.nii.gz = the increases only (new or enlarging lesion tissue: brighter
    than at baseline, and brighter than the brain at follow-up), with the attribution. Patients 03, 12 and 19 are the acceptance set (marked held_out
    in source.json): never train or tune on them.

    Example: mstools import-open-ms ~/open_ms_data -o real --patient 01
    """
    from mstools.jobs.import_open_ms import import_open_ms_job

    common.report(import_open_ms_job(clone, out, patients, increase_rule=increase_rule, force=force),
                  as_json=as_json)


import_open_ms_command = common.command(import_open_ms_command)
