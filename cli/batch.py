"""`mstools batch`: `mstools run` over a cohort, in parallel on Dask, resumable."""

from __future__ import annotations

import json
import math
import resource
import time
from pathlib import Path
from typing import Optional

import typer

from cli import common
from mstools import run_layout as rl
from mstools.errors import InputError

#: Memory bound of one worker. Measured peaks of one worker process
#: (benchmarks/bench_batch.py, 20 simulated 1 mm cases, default chain): 0.83 GB; with
#: register, 1.85 GB for the elastix process (benchmarks/bench_register.py); segment
#: 0.5-0.6 GB. 4 GiB leaves room for larger grids.
MEMORY_PER_WORKER = "4GiB"


def run_case_task(case, run_dir: str, config: dict, base: str, config_file: Optional[str] = None) -> dict:
    """One case on a worker: the pipeline, then its cohort row (raises on failure)."""
    from cli import pipeline

    start = time.perf_counter()
    result = pipeline.run_pipeline(case, Path(run_dir), config, Path(base),
                                   config_file=Path(config_file) if config_file else None)
    row = cohort_row(case.case, result.record, status="done", seconds=time.perf_counter() - start,
                     run_folder=Path(run_dir).name)
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):
        worker = "local"
    row["_worker"] = worker
    row["_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def cohort_row(case: str, record: dict, *, status: str, seconds: float, run_folder: str) -> dict:
    metrics = record.get("metrics") or {}
    row = {"case": case, "status": status, "new_lesions": record.get("new_lesions"),
           "new_lesion_volume_mm3": record.get("new_lesion_volume_mm3"), "seconds": round(seconds, 1),
           "run_folder": run_folder}
    for key in ("gt_lesions", "lesion_sensitivity", "lesion_ppv", "lesion_f1", "dice"):
        row[key] = metrics.get(key, math.nan) if metrics else math.nan
    if not metrics:
        row["gt_lesions"] = "n/a"
    return row


def _finished(run_dir: Path, key: str) -> Optional[dict]:
    """The run record of a case already done with this key, else None."""
    try:
        record = json.loads((run_dir / rl.RUN_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("status") == "complete" and record.get("run_key") == key else None


def _local_cluster(workers: Optional[int], memory: str, cases: int):
    from dask.utils import parse_bytes
    from distributed import LocalCluster
    from dask.system import CPU_COUNT
    from distributed.system import MEMORY_LIMIT

    per_worker = parse_bytes(memory)
    if workers is None:
        workers = max(1, min(CPU_COUNT, int(0.8 * MEMORY_LIMIT // per_worker), cases))
    common.log(f"local Dask cluster: {workers} worker(s), 1 thread and {memory} each")
    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=per_worker,
                        dashboard_address=None, silence_logs=50,
                        env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})


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
    from cli import pipeline
    from mstools.cohort_inputs import discover_cases
    from mstools.io import OutputBatch
    from mstools.provenance import sidecar

    cases = discover_cases(source)
    settings, base = pipeline.load_config(config)
    pipeline.check_config(settings)
    try:
        from dask.utils import parse_bytes

        parse_bytes(memory_per_worker)
    except (ValueError, TypeError):
        raise InputError(f"--memory-per-worker {memory_per_worker!r}: not a size; write e.g. 4GiB or 3000MB") from None
    from mstools.io import check_writable
    from mstools.provenance import sidecar_path

    read = [source, *([config] if config is not None else [])]
    for name in (rl.COHORT_TABLE, rl.ERRORS_TABLE, rl.COHORT_REPORT):  # fail before the work
        for target in (out / name, sidecar_path(out / name)):
            if out.is_dir():
                check_writable(target, inputs=read, force=True)
    rows: dict[str, dict] = {}
    errors: list[dict] = []
    todo = []
    for case in cases:
        run_dir = out / case.case
        if case.problem:
            errors.append({"case": case.case, "stage": "input", "message": case.problem})
            rows[case.case] = cohort_row(case.case, {}, status="failed", seconds=0.0, run_folder=case.case)
            continue
        try:
            pipeline.check_case_input(case)
            key = pipeline.run_key(case, settings, base)
        except InputError as exc:
            errors.append({"case": case.case, "stage": "input", "message": str(exc)})
            rows[case.case] = cohort_row(case.case, {}, status="failed", seconds=0.0, run_folder=case.case)
            continue
        record = _finished(run_dir, key)
        if record is not None:
            seconds = sum(float(stage.get("seconds") or 0.0) for stage in record.get("stages", {}).values())
            rows[case.case] = cohort_row(case.case, record, status="skipped", seconds=seconds, run_folder=case.case)
        else:
            todo.append(case)
    common.log(f"{len(cases)} case(s): {len(todo)} to run, {sum(r['status'] == 'skipped' for r in rows.values())} "
               f"already done, {len(errors)} unusable")
    start = time.perf_counter()
    peaks: dict[str, float] = {}
    if todo:
        from distributed import Client, as_completed

        cluster = None if scheduler else _local_cluster(workers, memory_per_worker, len(todo))
        try:
            client = Client(scheduler, timeout=f"{scheduler_timeout}s") if scheduler else Client(cluster)
        except (OSError, TimeoutError) as exc:
            raise InputError(f"--scheduler {scheduler}: no Dask scheduler answered ({exc}); check the address") from None
        out.mkdir(parents=True, exist_ok=True)
        try:
            futures = {client.submit(run_case_task, case, str(out / case.case), settings, str(base),
                                     str(config) if config is not None else None, pure=False,
                                     retries=0, key=f"mstools-run-{case.case}"): case for case in todo}
            for number, future in enumerate(as_completed(futures), start=1):
                case = futures[future]
                try:
                    row = future.result()
                except Exception as exc:  # noqa: BLE001 - one failing case must not stop the others
                    stage = getattr(exc, "stage", "") or type(exc).__name__
                    message = " ".join(str(exc).split()) or type(exc).__name__
                    errors.append({"case": case.case, "stage": stage, "message": message})
                    rows[case.case] = cohort_row(case.case, {}, status="failed", seconds=0.0, run_folder=case.case)
                    common.log(f"[{number}/{len(todo)}] {case.case}: FAILED ({message})")
                    continue
                worker, peak = row.pop("_worker"), row.pop("_peak_rss_mb")
                peaks[worker] = max(peaks.get(worker, 0.0), round(peak, 1))
                rows[case.case] = row
                common.log(f"[{number}/{len(todo)}] {case.case}: {row['new_lesions']} new lesion(s), "
                           f"{row['seconds']:.1f} s")
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    wall = time.perf_counter() - start
    table = [rows[c.case] for c in cases]
    record = sidecar(command="batch", parameters={"source": str(source), "config": settings,
                                                  "scheduler": scheduler, "memory_per_worker": memory_per_worker},
                     inputs={}, extra={"wall_seconds": round(wall, 1), "peak_rss_mb_per_worker": peaks})
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
    summary = {"cases": len(table), "done": done, "skipped": skipped, "failed": len(errors),
               "wall_seconds": round(wall, 1), "peak_rss_mb_per_worker": peaks,
               "written": [str(p) for p in written]}
    common.log(f"{done} done, {skipped} skipped, {len(errors)} failed in {wall:.1f} s")
    common.emit(written, as_json=as_json, payload=summary)
    if errors:
        raise InputError(f"{len(errors)} of {len(table)} case(s) failed; see {out / rl.ERRORS_TABLE}")


batch_command = common.command(batch_command)
