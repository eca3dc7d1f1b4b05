"""``run_case`` over a cohort (:func:`run_cohort`): cases in parallel on Dask, finished cases
skipped, failures collected, and the cohort table."""

from __future__ import annotations

import json
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mstools import run_layout as rl
from mstools.errors import InputError
from mstools.messages import log
from mstools.pipeline.run import RunProgress

#: Memory bound of one worker. Measured peaks of one worker process
#: (benchmarks/bench_batch.py, 20 simulated 1 mm cases, default chain): 0.83 GB; with
#: register, 1.85 GB for the elastix process (benchmarks/bench_register.py); segment
#: 0.5-0.6 GB. 4 GiB leaves room for larger grids.
MEMORY_PER_WORKER = "4GiB"


#: The Dask event topic that carries each case's stage progress from its worker to the client.
PROGRESS_TOPIC = "mstools-run-progress"


class CohortProgress:
    """What :func:`run_cohort` says while cases run on the workers; every method does nothing here."""

    def case(self, case: str) -> RunProgress:
        """The progress hook of one case's run (its stages as they start and end, their steps)."""
        return RunProgress()

    def case_done(self, case: str) -> None:
        """The case finished or failed."""


class _WorkerProgress(RunProgress):
    """A case's stage progress, sent from its Dask worker to the client as events of
    :data:`PROGRESS_TOPIC` (counted work at most every ``every_s`` seconds)."""

    every_s = 1.0

    def __init__(self, case: str):
        from distributed import get_worker

        self.case, self.last = case, 0.0
        self.worker = get_worker()     # here, on the task's thread: steps may come from another thread

    def _send(self, method: str, *args) -> None:
        self.worker.log_event(PROGRESS_TOPIC, {"case": self.case, "method": method, "args": list(args)})

    def plan(self, stages):
        self._send("plan", list(stages))

    def started(self, stage):
        self._send("started", stage)

    def finished(self, stage, status, seconds=0.0):
        self._send("finished", stage, status, seconds)

    def step(self, stage, message):
        self._send("step", stage, message)

    def count(self, stage, done, total):
        now = time.monotonic()
        if done >= total or now - self.last >= self.every_s:
            self.last = now
            self._send("count", stage, done, total)


def _hear(progress: CohortProgress):
    """The client's handler of :data:`PROGRESS_TOPIC` events: each goes to its case's hook."""

    def handler(event) -> None:
        message = event[1]
        try:
            getattr(progress.case(message["case"]), message["method"])(*message["args"])
        except Exception:  # noqa: BLE001 - a display problem must not stop the cohort
            pass

    return handler


def run_case_task(case, run_dir: str, config: dict, base: str, config_file: Optional[str] = None,
                  report_progress: bool = False) -> dict:
    """One case on a worker: the pipeline, then its cohort row (raises on failure); with
    ``report_progress``, its stages' progress goes to the client as Dask events."""
    from mstools.parallel import worker_address
    from mstools.pipeline.run import run_case

    start = time.perf_counter()
    result = run_case(case, Path(run_dir), config, Path(base), config_file=Path(config_file) if config_file else None,
                      progress=_WorkerProgress(case.case) if report_progress else None)
    row = cohort_row(case.case, result.record, status="done", seconds=time.perf_counter() - start,
                     run_folder=Path(run_dir).name)
    row["_worker"] = worker_address()
    row["_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def cohort_row(case: str, record: dict, *, status: str, seconds: float, run_folder: str) -> dict:
    metrics = record.get("metrics") or {}
    row = {"case": case, "status": status, "new_lesions": record.get("new_lesions"),
           "new_lesion_volume_mm3": record.get("new_lesion_volume_mm3"), "seconds": round(seconds, 1),
           "run_folder": run_folder}
    activity = record.get("activity") or {}
    row["enlarging_lesions"] = activity.get("enlarging_lesions", "n/a")
    row["active"] = ("yes" if activity["active"] else "no") if activity else "n/a"
    row["activity_probability"] = activity.get("activity_probability", "n/a")
    for key in ("gt_lesions", "lesion_sensitivity", "lesion_ppv", "lesion_f1", "dice"):
        row[key] = metrics.get(key, math.nan) if metrics else math.nan
    if not metrics:
        row["gt_lesions"] = "n/a"
    return row


def finished_record(run_dir: Path, key: str) -> Optional[dict]:
    """The run record of a case already done with this key and whose outputs are intact
    (their sha256 as the record has them), else None."""
    from mstools.pipeline.run import final_outputs_intact

    try:
        record = json.loads((run_dir / rl.RUN_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") != "complete" or record.get("run_key") != key:
        return None
    return record if final_outputs_intact(run_dir, record) else None


@dataclass
class CohortResult:
    rows: list[dict]                     # one per case, in the cohort's order (rl.COHORT_COLUMNS)
    errors: list[dict]                   # rl.ERROR_COLUMNS
    wall_seconds: float
    peaks: dict[str, float] = field(default_factory=dict)   # worker -> peak RSS (MB)


def plan_cohort(cases: list, out: Path, config: dict, base: Path) -> tuple[dict, list, list]:
    """(rows of skipped and unusable cases, errors, cases to run)."""
    from mstools.case import check_case_input
    from mstools.pipeline.run import run_key

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
            check_case_input(case)
            key = run_key(case, config, base)
        except InputError as exc:
            errors.append({"case": case.case, "stage": "input", "message": str(exc)})
            rows[case.case] = cohort_row(case.case, {}, status="failed", seconds=0.0, run_folder=case.case)
            continue
        record = finished_record(run_dir, key)
        if record is not None:
            seconds = sum(float(stage.get("seconds") or 0.0) for stage in record.get("stages", {}).values())
            rows[case.case] = cohort_row(case.case, record, status="skipped", seconds=seconds, run_folder=case.case)
        else:
            todo.append(case)
    return rows, errors, todo


def run_cohort(cases: list, out: Path, config: dict, base: Path, *, config_file: Optional[Path] = None,
               scheduler: Optional[str] = None, workers: Optional[int] = None,
               memory_per_worker: str = MEMORY_PER_WORKER, scheduler_timeout: float = 30.0,
               progress: Optional[CohortProgress] = None) -> CohortResult:
    """Run every case not already finished with this configuration into ``out/<case>``, in
    parallel on Dask (a local cluster started and stopped here, or ``scheduler``'s).

    A failing case is collected in the errors; the others go on. ``progress`` hears each
    case's stages from its worker (:class:`CohortProgress`).
    """
    from mstools.parallel import check_memory, cohort_cluster, connect

    check_memory(memory_per_worker)
    rows, errors, todo = plan_cohort(cases, out, config, base)
    log(f"{len(cases)} case(s): {len(todo)} to run, {sum(r['status'] == 'skipped' for r in rows.values())} "
        f"already done, {len(errors)} unusable")
    start = time.perf_counter()
    peaks: dict[str, float] = {}
    if todo:
        from distributed import Client, as_completed

        cluster = None if scheduler else cohort_cluster(workers, memory_per_worker, len(todo))
        if scheduler:
            client = connect(scheduler, scheduler_timeout,
                             message="--scheduler {scheduler}: no Dask scheduler answered ({exc}); check the address")
        else:
            client = Client(cluster)
        out.mkdir(parents=True, exist_ok=True)
        if progress is not None:
            client.subscribe_topic(PROGRESS_TOPIC, _hear(progress))
        try:
            futures = {client.submit(run_case_task, case, str(out / case.case), config, str(base),
                                     str(config_file) if config_file is not None else None, progress is not None,
                                     pure=False, retries=0, key=f"mstools-run-{case.case}"): case for case in todo}
            for number, future in enumerate(as_completed(futures), start=1):
                case = futures[future]
                if progress is not None:
                    progress.case_done(case.case)
                try:
                    row = future.result()
                except Exception as exc:  # noqa: BLE001 - one failing case must not stop the others
                    stage = getattr(exc, "stage", "") or type(exc).__name__
                    message = " ".join(str(exc).split()) or type(exc).__name__
                    errors.append({"case": case.case, "stage": stage, "message": message})
                    rows[case.case] = cohort_row(case.case, {}, status="failed", seconds=0.0, run_folder=case.case)
                    log(f"[{number}/{len(todo)}] {case.case}: FAILED ({message})")
                    continue
                worker, peak = row.pop("_worker"), row.pop("_peak_rss_mb")
                peaks[worker] = max(peaks.get(worker, 0.0), round(peak, 1))
                rows[case.case] = row
                log(f"[{number}/{len(todo)}] {case.case}: {row['new_lesions']} new lesion(s), {row['seconds']:.1f} s")
        finally:
            if progress is not None:
                client.unsubscribe_topic(PROGRESS_TOPIC)
            client.close()
            if cluster is not None:
                cluster.close()
    return CohortResult([rows[c.case] for c in cases], errors, time.perf_counter() - start, peaks)
