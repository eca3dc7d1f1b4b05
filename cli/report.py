"""`mstools report`: a self-contained HTML page of a run folder, or of a cohort and its cases."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from mstools_cli import common

#: = mstools.report.figures.DEFAULT_MAX_LESIONS (a test checks), written here so that --help stays light.
DEFAULT_MAX_LESIONS = 10


def report_command(
    folder: Path = typer.Argument(..., help="A run folder (holding run.json, from mstools run) or a derivatives folder (holding cohort.tsv, from mstools batch)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Page to write (default: RUN/report.html, or DERIV/cohort.html)."),
    max_lesions: int = typer.Option(DEFAULT_MAX_LESIONS, "--max-lesions", min=0, help="Lesions pictured per case, largest first (the table lists all)."),
    case_pages: bool = typer.Option(True, "--case-pages/--no-case-pages", help="Cohort: also write each case's RUN/report.html (existing ones are linked, rewritten only with --force)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing pages."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the written paths."),
) -> None:
    """Write an HTML report that works offline: lesion images, tables, metrics, QC.

    A case page shows baseline, follow-up and difference on the slice of
    each new lesion (outlined in red, ground truth in cyan), the lesion
    table, the metrics and the QC. A cohort page lists the cases with
    links to their pages, histograms of counts and volumes, mean metrics
    and the errors.

    \b
    Examples:
      mstools report runs/sim-001
      mstools report derivatives --max-lesions 5
    """
    from mstools.report.build import folder_kind, render_case_report

    start = time.perf_counter()
    kind = folder_kind(folder)
    if kind == "case":
        from mstools import run_layout
        from mstools.io import OutputBatch, check_writable
        from mstools.report.build import report_inputs

        target = out if out is not None else folder / run_layout.REPORT
        inputs = report_inputs(folder)
        check_writable(target, inputs=inputs, force=force, create_dirs=True)
        report = render_case_report(folder, max_lesions=max_lesions)
        with OutputBatch(inputs=inputs, force=force, create_dirs=True) as batch:
            batch.text(target, report.html)
        written = list(batch.written)
        summary = {"kind": "case", "case": report.case, "new_lesions": report.new_lesions,
                   "figures": report.figures}
    else:
        written = _cohort(folder, out, case_pages, max_lesions, force)
        summary = {"kind": "cohort", "case_pages": len(written) - 1}
    seconds = time.perf_counter() - start
    size_kb = written[0].stat().st_size / 1024
    common.log(f"report: {written[0]} ({size_kb:.0f} kB, {seconds:.1f} s)")
    common.emit(written, as_json=as_json, payload={**summary, "report": str(written[0]),
                                                    "written": [str(p) for p in written],
                                                    "seconds": round(seconds, 2)})


def _cohort(folder: Path, out: Optional[Path], case_pages: bool, max_lesions: int, force: bool) -> list[Path]:
    """The cohort page and case pages, with a progress bar over the cases on a terminal."""
    from mstools import run_layout
    from mstools.io import read_tsv
    from mstools.report.build import write_cohort_reports

    total = len(read_tsv(folder / run_layout.COHORT_TABLE))
    bar = None
    if common.progress_enabled() and total > 1:
        from rich.console import Console
        from rich.progress import Progress

        bar = Progress(console=Console(stderr=True), transient=True)
        bar.start()
        task = bar.add_task("report", total=total)

    def on_case(case: str, message: str) -> None:
        common.log(f"report: {case}: {message}", level=1)
        if bar is not None:
            bar.advance(task)

    try:
        return write_cohort_reports(folder, out, case_pages=case_pages, max_lesions=max_lesions, force=force,
                                    on_case=on_case)
    finally:
        if bar is not None:
            bar.stop()


report_command = common.command(report_command)
