"""`mstools run`: the whole job on one case (preprocess, subtract, filter, refine; register, segment on request)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from mstools_cli import common
from mstools.errors import InputError


def _format(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def evaluation_lines(rows: list[dict]) -> list[str]:
    """The evaluation table as aligned text lines."""
    columns = ("stage", "gt_lesions", "pred_lesions", "lesion_sensitivity", "lesion_ppv", "lesion_f1", "dice")
    header = ("stage", "gt", "found", "sens", "ppv", "F1", "dice")
    lines = ["  ".join(f"{h:>8s}" if i else f"{h:<10s}" for i, h in enumerate(header))]
    for row in rows:
        lines.append("  ".join(f"{_format(row[c]):>8s}" if i else f"{row[c]:<10s}" for i, c in enumerate(columns)))
    return lines


def _counting_note(count: int, rows: list[dict], record: dict) -> str:
    """Why the evaluation table may count the final lesions differently (connectivity)."""
    final = next((row for row in rows or [] if row.get("stage") == record.get("final_stage")), None)
    if final is None or int(final.get("pred_lesions", count)) == count:
        return ""
    return (f"; 26-connected lesions, the evaluation below counts {int(final['pred_lesions'])} "
            "with MSSEG-2's 6-connectivity")


def run_command(
    case: Optional[Path] = typer.Argument(None, help="Case folder (flair_time01/02_on_middle_space, brain_mask; "
                                                     "ground_truth if known)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder to write (required unless --print-config)."),
    baseline: Optional[Path] = typer.Option(None, help="Raw baseline FLAIR (instead of CASE): preprocess runs first."),
    followup: Optional[Path] = typer.Option(None, help="Raw follow-up FLAIR (with --baseline)."),
    ground_truth: Optional[Path] = typer.Option(None, help="New-lesion mask to evaluate against (on the case "
                                                           "grid, or on the raw follow-up's grid with --followup)."),
    baseline_t1: Optional[Path] = typer.Option(None, help="T1-weighted baseline (segment with model multiseq): on the case folder's grid (default: the folder's, if any), or with --baseline/--followup on any grid (preprocess registers it to the baseline FLAIR)."),
    followup_t1: Optional[Path] = typer.Option(None, help="T1-weighted follow-up (as --baseline-t1)."),
    baseline_t2: Optional[Path] = typer.Option(None, help="T2-weighted baseline (as --baseline-t1)."),
    followup_t2: Optional[Path] = typer.Option(None, help="T2-weighted follow-up (as --baseline-t1)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML configuration (only the keys you "
                                                                       "change; see --print-config)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the default configuration and exit."),
    as_json: bool = typer.Option(False, "--json", help="Print the run record as JSON."),
) -> None:
    """Run the default chain on one case and write the final new-lesion mask and table.

    Stages: preprocess (raw scans only), subtract, refine, filter; register
    and segment when the config enables them. Each stage keeps its outputs in
    OUT/<stage>/; a stage whose inputs and options are unchanged is reused.
    With a ground truth, every detector stage is evaluated and the table is
    printed (OUT/evaluation.tsv).

    Example: mstools run data_samples/sim-001 -o out/sim-001

    With T1/T2 (config: segment: {enabled: true, model: multiseq, weights: ms/model.pt}): mstools run sim/case04 -o out/case04 -c ms.yaml

    Raw scans with a T1 of each visit: mstools run --baseline flair1.nii.gz --followup flair2.nii.gz --baseline-t1 t1w1.nii.gz --followup-t1 t1w2.nii.gz -o out/p01 -c ms.yaml
    """
    from mstools import pipeline

    if print_config:
        print(pipeline.default_config_text(), end="")
        return
    if out is None:
        raise InputError("no run folder; give -o OUT")
    if case is not None and (baseline is not None or followup is not None):
        raise InputError("give a case folder or --baseline/--followup, not both")
    sequences = tuple((key, path) for key, path in ((("t1", 0), baseline_t1), (("t1", 1), followup_t1),
                                                    (("t2", 0), baseline_t2), (("t2", 1), followup_t2))
                      if path is not None)
    if case is not None:
        spec = pipeline.CaseInput(case.name, folder=case, ground_truth=ground_truth, sequences=sequences)
    elif baseline is not None and followup is not None:
        name = out.name   # the run's own name, not the follow-up file's (the report is titled with it)
        spec = pipeline.CaseInput(name, baseline=baseline, followup=followup, ground_truth=ground_truth,
                                  sequences=sequences)
    else:
        raise InputError("no input; give a case folder, or both --baseline and --followup")
    settings, base = pipeline.load_config(config)
    if sequences and not (settings["segment"]["enabled"] and settings["segment"]["model"] == "multiseq"):
        raise InputError("T1/T2 scans are read by the segment stage with model multiseq; enable it in the config "
                         "(segment: {enabled: true, model: multiseq, weights: RUN/model.pt}) or leave them out")
    from mstools.jobs.segment import progress_unit

    # each stage as it starts and ends, and the steps inside it, on stderr (nothing with -q);
    # nothing before the first stage, so a run refused up front says one line
    with common.run_progress(units={"segment": progress_unit(settings["segment"]["model"])}) as progress:
        result = pipeline.run_case(spec, out, settings, base, verbose=common.STATE.level >= 1, progress=progress,
                                   config_file=config)
    record = result.record
    said = {"reused": "done earlier"}
    common.log("stages: " + ", ".join(f"{name} {said.get(stage['status'], stage['status'])}"
                                      for name, stage in record["stages"].items() if stage["status"] != "off"))
    if as_json:
        common.emit(as_json=True, payload={**record, "evaluation": result.evaluation})
        return
    final = record["final"]
    print(out / final["mask"])
    print(out / final["table"])
    count = int(record["new_lesions"])
    common.log(f"{count} new lesion{'' if count == 1 else 's'}, {record['new_lesion_volume_mm3']:.1f} mm3 "
               f"(final stage: {record['final_stage']}){_counting_note(count, result.evaluation, record)}")
    activity = record.get("activity")
    if activity:
        common.log(f"{activity['enlarging_lesions']} enlarging, {activity['shrinking_lesions']} shrinking "
                   f"({out / 'lesion_changes.tsv'}); active: {'yes' if activity['active'] else 'no'} "
                   f"(probability {activity['activity_probability']:.2f})"
                   + ("" if activity.get("baseline_lesions") else "; no baseline lesion map: every change "
                      "counted as new"))
    if result.evaluation:
        for line in evaluation_lines(result.evaluation):
            print(line)


run_command = common.command(run_command)
