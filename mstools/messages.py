"""Log lines and progress on stderr, shared by the jobs and the command line.

stdout carries results only; what a job says while it works goes to stderr through
:func:`log`, hidden by ``-q`` (level -1) and detailed by ``-v`` (level 1). The level
lives in :data:`STATE`, set by the command line's global options and, while a stage
runs, by :func:`mstools.pipeline.run_case` (stages are quiet unless the run is verbose).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Mapping

from mstools.errors import InputError


@dataclass
class Verbosity:
    level: int = 0  # -1 quiet, 0 normal, 1 verbose


STATE = Verbosity()

#: What an interrupted command says (exit code 130, as shells report SIGINT).
INTERRUPTED = ("interrupted (Ctrl-C); no output was left half-written (each is renamed into place "
               "when complete); rerun the command to finish")


def log(message: str, *, level: int = 0) -> None:
    """A log line on stderr (hidden by -q; level 1 lines only with -v)."""
    if STATE.level >= level:
        print(message, file=sys.stderr)


def progress_enabled() -> bool:
    """Progress bars only on a terminal and when not quiet."""
    return STATE.level >= 0 and sys.stderr.isatty()


def check_finite_options(values: Mapping[str, object], *, where: str = "") -> None:
    """Refuse a number option that is NaN or infinite (``nan`` and ``inf`` parse as floats)."""
    for name, value in values.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                option = f"{where}{name}" if where else f"--{name.replace('_', '-')}"
                raise InputError(f"{option} {item}: not a finite number; give a number")
