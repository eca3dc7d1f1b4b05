"""File names of a `mstools run` folder and of a `mstools batch` derivatives folder.

A run folder (one case)::

    RUN/run.json                  the run record (see below)
    RUN/config.yaml               the configuration the run used, defaults filled in
    RUN/case/                     `preprocess` output (a case folder), only when raw scans came in
    RUN/<stage>/<stage>_*         each stage's outputs (common detector convention,
                                  :mod:`mstools.detections`), with JSON sidecars
    RUN/<stage>/stage.json        what the stage ran with (its key); an unchanged key is not rerun
    RUN/new_lesions_{score,mask,labels}.nii.gz, RUN/new_lesions_lesions.tsv
                                  the final result: a copy of the final stage's outputs
    RUN/new_lesions_{mask,labels}_native.nii.gz
                                  raw input only: the final result on the raw follow-up's grid
    RUN/enlarging_lesions_{mask,labels}.nii.gz, RUN/lesion_changes.tsv
                                  lesion activity (the activity stage): grown parts of
                                  enlarging lesions (labelled as their baseline lesion) and
                                  one row per new, enlarging or shrinking lesion
    RUN/evaluation.tsv            when a ground truth is known: one row per detector stage
    RUN/report.html               `mstools report`

``run.json`` holds: ``case`` (name), ``status`` ("complete"), ``run_key``,
``inputs`` (``case_folder``, ``baseline``, ``followup``, ``brain_mask``,
``ground_truth`` or null: the files the detectors read, on one grid), ``config``,
``stages`` (name -> ``status`` ran / reused / off, ``seconds``, ``prefix``),
``final_stage``, ``final`` (``score``, ``mask``, ``labels``, ``table`` paths),
``final_native`` (raw input only), ``new_lesions``, ``new_lesion_volume_mm3``, ``activity``
(the activity stage's patient summary: ``active``, ``activity_probability``, counts of new,
enlarging and shrinking lesions; null when the stage is off), ``metrics`` (the final
stage's evaluation, or null) and ``outputs`` (path -> sha256 of the final files, evaluation
and report: batch reruns a case whose files changed). Paths in it are relative to the run
folder when inside it. A run removes an earlier ``run.json`` when it starts and writes its
own last.

A derivatives folder (a cohort)::

    DERIV/<case>/                 one run folder per case
    DERIV/cohort.tsv              one row per case (``COHORT_COLUMNS``)
    DERIV/errors.tsv              the cases that failed, with the stage and message
    DERIV/cohort.html             `mstools report` of the cohort
"""

from __future__ import annotations

from pathlib import Path

RUN_RECORD = "run.json"
CONFIG = "config.yaml"
CASE_DIR = "case"
STAGE_RECORD = "stage.json"
FINAL_PREFIX = "new_lesions"
NATIVE_SUFFIX = "_native"
EVALUATION = "evaluation.tsv"
REPORT = "report.html"

#: Stages in their default order (filter and refine swap when filter reads subtract and
#: refine reads filter); detectors are the stages whose output can be final.
STAGES = ("preprocess", "subtract", "register", "segment", "refine", "filter", "activity")
DETECTORS = ("subtract", "register", "segment", "refine", "filter", "activity")

#: Lesion activity's results in the run folder (copies of the activity stage's).
ENLARGING_PREFIX = "enlarging_lesions"      # RUN/enlarging_lesions_{mask,labels}.nii.gz
LESION_CHANGES = "lesion_changes.tsv"

COHORT_TABLE = "cohort.tsv"
ERRORS_TABLE = "errors.tsv"
COHORT_REPORT = "cohort.html"
COHORT_COLUMNS = ("case", "status", "new_lesions", "new_lesion_volume_mm3", "enlarging_lesions", "active",
                  "activity_probability", "seconds",
                  "gt_lesions", "lesion_sensitivity", "lesion_ppv", "lesion_f1", "dice", "run_folder")
ERROR_COLUMNS = ("case", "stage", "message")

#: Evaluation columns kept in ``evaluation.tsv`` (keys of :func:`mstools.metrics.evaluate_case`).
EVALUATION_COLUMNS = ("stage", "gt_lesions", "pred_lesions", "msseg2_detected", "msseg2_fp",
                      "lesion_sensitivity", "lesion_ppv", "lesion_f1", "dice")


def stage_prefix(run_dir: str | Path, stage: str) -> Path:
    """Output prefix of a detector stage: RUN/<stage>/<stage>."""
    return Path(run_dir) / stage / stage


def final_prefix(run_dir: str | Path) -> Path:
    return Path(run_dir) / FINAL_PREFIX


LOCK = ".mstools-run.lock"


def _link_or_create(record: Path, lock: Path) -> None:
    """Put ``record`` in place as ``lock``, failing with FileExistsError if the lock exists.
    A hard link is atomic with content; file systems without hard links get O_EXCL + write."""
    import errno
    import os

    try:
        os.link(record, lock)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(record.read_text())


class RunLock:
    """One `mstools run` at a time in a run folder: ``RUN/.mstools-run.lock`` holds the
    owner's pid, host and case, created atomically with its content. A second run refuses at once
    and names the first; the lock of a process that no longer runs (same host) is taken over.
    """

    def __init__(self, run_dir: str | Path, case: str):
        self.path = Path(run_dir) / LOCK
        self.case = case
        self.held = False

    def __enter__(self) -> "RunLock":
        import json
        import os
        import socket
        import time

        from mstools.errors import InputError
        from mstools.io import pid_alive

        me = {"pid": os.getpid(), "host": socket.gethostname(), "case": self.case,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        # The owner's record is written to a private file first and then hard-linked into
        # place, so the lock never exists without its content (a run stopped between the
        # two steps leaves only its private file, which it removes).
        record = self.path.with_name(f"{LOCK}.{me['pid']}.tmp")
        record.write_text(json.dumps(me) + "\n")
        try:
            for _ in range(3):
                try:
                    _link_or_create(record, self.path)
                except FileExistsError:
                    try:
                        owner = json.loads(self.path.read_text())
                        pid, host = int(owner.get("pid", 0)), str(owner.get("host", ""))
                    except (OSError, ValueError, TypeError, AttributeError):
                        owner, pid, host = {}, 0, ""
                    if owner and (host != me["host"] or pid_alive(pid)):
                        raise InputError(
                            f"{self.path.parent}: in use by another mstools run (case {owner.get('case')!r}, pid {pid} "
                            f"on {host}, since {owner.get('started')}); wait for it, or use another -o folder "
                            f"(delete {self.path} only if that run is gone)") from None
                    self.path.unlink(missing_ok=True)   # stale or unreadable: its process is gone
                    continue
                self.held = True
                return self
        finally:
            record.unlink(missing_ok=True)
        raise InputError(f"{self.path}: could not take the run folder's lock; delete it if no run uses the folder")

    def __exit__(self, *exc) -> bool:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        return False
