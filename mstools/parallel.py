"""Dask set-up in one place: local clusters, connecting to a scheduler, quiet stdout;
and the threads one case's work may use side by side (:func:`side_by_side`).

Used by the cohort pipeline (:func:`mstools.pipeline.run_cohort`, one case per worker)
and by refine training (lightgbm.dask). Dask is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Optional

from mstools.errors import InputError
from mstools.messages import log


#: Threads one case's independent pieces of work run in (k-d tree queries, refine's box
#: filters and tree walks): 2, the cores of the machine the speed target is set on (issue 17,
#: "2 cores"), as preprocess runs its two scans side by side. Fewer when OMP_NUM_THREADS
#: says so (a batch's Dask workers are single-threaded). Results never depend on it.
CASE_THREADS = 2


def case_threads() -> int:
    """:data:`CASE_THREADS`, or OMP_NUM_THREADS when that is smaller."""
    try:
        limit = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        limit = CASE_THREADS
    return max(1, min(CASE_THREADS, limit))


def side_by_side(job, arguments: list[tuple]) -> list:
    """``job(*args)`` for each argument tuple, in :func:`case_threads` threads (NumPy, SciPy
    and zlib release the GIL in their loops); results in the arguments' order, the first
    failure (in that order) raised."""
    threads = min(case_threads(), len(arguments))
    if threads <= 1:
        return [job(*args) for args in arguments]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda args: job(*args), arguments))


@contextlib.contextmanager
def stdout_to_stderr():
    """Send what Python and child processes write on stdout to stderr for a while
    (stdout carries results only; Dask and LightGBM print their chatter there)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def connect(scheduler: str, timeout_s: float, *, message: str):
    """A client of an existing scheduler; InputError with ``message`` (formatted with
    ``scheduler`` and ``exc``) when none answers."""
    from distributed import Client

    try:
        return Client(scheduler, timeout=f"{timeout_s}s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(message.format(scheduler=scheduler, exc=exc)) from None


def training_cluster(workers: int):
    """A local cluster of single-threaded worker processes for lightgbm.dask, and its client."""
    from distributed import Client, LocalCluster

    with stdout_to_stderr():  # the worker processes inherit stderr as their stdout
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, host="127.0.0.1")
    return cluster, Client(cluster)


def check_memory(memory: str) -> None:
    """A worker memory bound Dask understands (e.g. 4GiB)."""
    try:
        from dask.utils import parse_bytes

        parse_bytes(memory)
    except (ValueError, TypeError):
        raise InputError(f"--memory-per-worker {memory!r}: not a size; write e.g. 4GiB or 3000MB") from None


def cohort_cluster(workers: Optional[int], memory: str, cases: int):
    """A local cluster for a cohort: one single-threaded worker per core, bounded by memory."""
    from dask.system import CPU_COUNT
    from dask.utils import parse_bytes
    from distributed import LocalCluster
    from distributed.system import MEMORY_LIMIT

    per_worker = parse_bytes(memory)
    if workers is None:
        workers = max(1, min(CPU_COUNT, int(0.8 * MEMORY_LIMIT // per_worker), cases))
    log(f"local Dask cluster: {workers} worker(s), 1 thread and {memory} each")
    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=per_worker,
                        dashboard_address=None, silence_logs=50,
                        env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})


def worker_address() -> str:
    """The address of the Dask worker running this code, or ``local``."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"
