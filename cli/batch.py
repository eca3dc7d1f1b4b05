"""`mstools batch`: `mstools run` over a cohort, in parallel on Dask, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mstools_cli import common
from mstools import run_layout as rl
from mstools.errors import InputError

#: = mstools.pipeline.cohort.MEMORY_PER_WORKER (measured there; a test checks they agree).
MEMORY_PER_WORKER = "4GiB"


def batch_command(
    source: Path = typer.Argument(..., help="Manifest TSV, folder of case folders (MSSEG-2 style), or BIDS dataset."),
    out: Path = typer.Option(..., "--out", "-o", help="Derivatives folder: one run folder per case, cohort.tsv, errors.tsv."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML configuration of `mstools run` (see `mstools run --print-config`)."),
    scheduler: Optional[str] = typer.Option(None, help="Existing Dask scheduler address (e.g. tcp://10.0.0.5:8786); default: a local cluster started and stopped here."),
    workers: Optional[int] = typer.Option(None, min=1, help="Local cluster workers (default: cores, bounded by memory / --memory-per-worker)."),
    memory_per_worker: str = typer.Option(MEMORY_PER_WORKER, help="Memory bound of each local worker (a case above it is stopped and reported)."),
    scheduler_timeout: float = typer.Option(30.0, min=0.1, help="Seconds to wait for --scheduler to answer."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Run `mstools run` on every case of a cohort, in parallel, and tabulate the results.

    Cases already finished with the same inputs and configuration are
    skipped; a case that fails goes to OUT/errors.tsv and the others go on
    (exit code 1 if any failed).

    Example: mstools batch data_samples -o out/cohort
    """
    from mstools import pipeline
    from mstools.io import OutputBatch
    from mstools.parallel import check_memory
    from mstools.provenance import check_outputs, sidecar

    cases = pipeline.discover_cases(source)
    settings, base = pipeline.load_config(config)
    pipeline.check_config(settings)
    check_memory(memory_per_worker)
    read = [source, *([config] if config is not None else [])]
    # fail before the work (OUT and its missing parents are created)
    check_outputs([out / name for name in (rl.COHORT_TABLE, rl.ERRORS_TABLE, rl.COHORT_REPORT)], inputs=read,
                  force=True)
    from mstools.jobs.segment import progress_unit

    # on a terminal, a row per running case with its stage and step (the workers send them)
    with common.cohort_progress(units={"segment": progress_unit(settings["segment"]["model"])}) as progress:
        result = pipeline.run_cohort(cases, out, settings, base, config_file=config, scheduler=scheduler,
                                     workers=workers, memory_per_worker=memory_per_worker,
                                     scheduler_timeout=scheduler_timeout, progress=progress)
    table, errors, wall = result.rows, result.errors, result.wall_seconds
    record = sidecar(command="batch", parameters={"source": str(source), "config": settings,
                                                  "scheduler": scheduler, "memory_per_worker": memory_per_worker},
                     inputs={}, extra={"wall_seconds": round(wall, 1), "peak_rss_mb_per_worker": result.peaks})
    out.mkdir(parents=True, exist_ok=True)
    with OutputBatch(inputs=read, force=True) as batch:
        common.add_table(batch, out / rl.COHORT_TABLE, table, rl.COHORT_COLUMNS, record)
        common.add_table(batch, out / rl.ERRORS_TABLE, errors, rl.ERROR_COLUMNS, record)
    written = list(batch.written)
    if settings["report"]:
        from mstools.report import write_cohort_report

        written.append(write_cohort_report(out, case_pages=False, force=True))
    done = sum(r["status"] == "done" for r in table)
    skipped = sum(r["status"] == "skipped" for r in table)
    common.log(f"{done} done, {skipped} done earlier, {len(errors)} failed in {wall:.1f} s")
    common.emit(written, as_json=as_json, payload={
        "cases": len(table), "done": done, "skipped": skipped, "failed": len(errors),
        "wall_seconds": round(wall, 1), "peak_rss_mb_per_worker": result.peaks, "written": [str(p) for p in written]})
    if errors:
        raise InputError(f"{len(errors)} of {len(table)} case(s) failed; see {out / rl.ERRORS_TABLE}")


batch_command = common.command(batch_command)
