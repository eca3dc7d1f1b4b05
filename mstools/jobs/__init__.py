"""Jobs: one command's work as a library function, files in and files out.

A job reads its inputs (:mod:`mstools.io`), calls the algorithms, writes its outputs with
provenance sidecars in one all-or-nothing batch, and returns a :class:`JobResult`. It
raises :class:`mstools.errors.InputError` on bad input and never parses arguments or
prints results: ``mstools <command>`` and the pipeline's stage both call the same job,
so a stage does exactly what the command does.

Each job module declares its options as a dataclass (:mod:`mstools.jobs.options`) at
light import cost; heavy libraries are imported inside the job functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class JobResult:
    """What a job wrote, and the summary a command prints with ``--json``."""

    written: list[Path]
    payload: dict[str, Any] = field(default_factory=dict)
