"""What every command shares: verbosity, the error contract, outputs with sidecars.

Error contract: bad input raises :class:`mstools.errors.InputError`; :func:`command`
turns it into one line on stderr and exit code 1 (traceback only with ``-v``).
Usage errors are Typer's/Click's and exit with 2.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import traceback
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import typer

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
    return STATE.level >= 0 and sys.stderr.isatty()


def check_finite_options(values: Mapping[str, object], *, where: str = "") -> None:
    """Refuse a number option that is NaN or infinite (click reads ``nan`` and ``inf`` as floats)."""
    for name, value in values.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                option = f"{where}{name}" if where else f"--{name.replace('_', '-')}"
                raise InputError(f"{option} {item}: not a finite number; give a number")


def command(func: Callable) -> Callable:
    """Wrap a command body with the error contract."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            check_finite_options(kwargs)
            return func(*args, **kwargs)
        except InputError as exc:
            if STATE.level >= 1:
                traceback.print_exc(file=sys.stderr)
            print(f"mstools {func.__name__.replace('_', '-').removesuffix('-command')}: error: {exc}",
                  file=sys.stderr)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            print(f"mstools {func.__name__.replace('_', '-').removesuffix('-command')}: {INTERRUPTED}",
                  file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


def emit(paths: Iterable[object] = (), *, as_json: bool = False, payload: Mapping | None = None) -> None:
    """Results on stdout: the written paths one per line, or a JSON document."""
    if as_json:
        print(json.dumps(payload if payload is not None else {"written": [str(p) for p in paths]},
                         indent=2, default=str))
    else:
        for p in paths:
            print(p)


def add_image(batch, path, data, reference, dtype, record: Mapping) -> None:
    """Queue an image and its provenance sidecar in an OutputBatch."""
    from mstools.provenance import sidecar_path

    batch.image(path, data, reference, dtype)
    batch.json(sidecar_path(path), record)


def add_table(batch, path, rows, columns, record: Mapping) -> None:
    """Queue a TSV table and its provenance sidecar in an OutputBatch."""
    from mstools.provenance import sidecar_path

    batch.table(path, rows, columns)
    batch.json(sidecar_path(path), record)


def add_detections(batch, prefix: str, detections, reference, record: Mapping, *,
                   table: list | None = None, columns: Iterable[str] | None = None) -> None:
    """Queue a detector's common outputs (PREFIX_score, _mask, _labels, _lesions.tsv; see
    :mod:`mstools.lesions`) with their sidecars. ``table``/``columns`` replace the standard
    lesion table when a detector adds columns of its own."""
    import numpy as np

    from mstools.lesions import LESION_COLUMNS, output_paths

    names = output_paths(prefix)
    add_image(batch, names["score"], detections.score, reference, np.float32, record)
    add_image(batch, names["mask"], detections.mask, reference, np.uint8, record)
    add_image(batch, names["labels"], detections.labels, reference, np.int32, record)
    add_table(batch, names["table"], detections.table if table is None else table,
              LESION_COLUMNS if columns is None else tuple(columns), record)
