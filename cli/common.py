"""What every command shares: verbosity, the error contract, results on stdout, and options
built from the jobs' declarations.

Error contract: bad input raises :class:`mstools.errors.InputError`; :func:`command`
turns it into one line on stderr and exit code 1 (traceback only with ``-v``).
Usage errors are Typer's/Click's and exit with 2.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from enum import Enum
from typing import Any, Callable, Iterable, Mapping

import typer
from typer.core import TyperGroup

from mstools.detections import add_table  # noqa: F401  (batch's tables)
from mstools.errors import InputError
from mstools.jobs.options import specs
from mstools.messages import INTERRUPTED, STATE, check_finite_options, log, progress_enabled  # noqa: F401


class Group(TyperGroup):
    """A command group whose own ``--help`` flag defaults to False instead of None.

    Typer coerces every parameter value that is not already a bool through pydantic; the
    group's unused help flag (None) was the only one on the way to a subcommand's
    ``--help``, and importing pydantic for it was a quarter of ``mstools <command> --help``
    (benchmarks/cli_startup.py). A bool default skips it; nothing else changes.
    """

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None and option.default is None:
            option.default = False
        return option


def command(func: Callable) -> Callable:
    """Wrap a command body with the error contract."""
    name = func.__name__.replace("_", "-").removesuffix("-command")
    # a group's commands by the words a user types: `filter` (apply is the default), `filter train`
    for group in ("filter", "refine"):
        if name == f"{group}-apply":
            name = group
        elif name.startswith(f"{group}-"):
            name = name.replace("-", " ", 1)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            check_finite_options(kwargs)
            return func(*args, **kwargs)
        except InputError as exc:
            if STATE.level >= 1:
                traceback.print_exc(file=sys.stderr)
            print(f"mstools {name}: error: {exc}", file=sys.stderr)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            print(f"mstools {name}: {INTERRUPTED}", file=sys.stderr)
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


def report(result, *, as_json: bool) -> None:
    """A job's result on stdout: its written paths, or its JSON summary."""
    emit(result.written, as_json=as_json, payload=result.payload)


def choices(enum_name: str, options_class, name: str) -> type[Enum]:
    """The str Enum of a choice option's values (Typer shows and checks them)."""
    return Enum(enum_name, {value: value for value in specs(options_class)[name].choices}, type=str)  # type: ignore


def opt(options_class, name: str, enum: type[Enum] | None = None, **extra: Any):
    """The Typer option of a job option: default, flags, help and range as the job declares them."""
    spec = specs(options_class)[name]
    default = enum(spec.default) if enum is not None and spec.default is not None else spec.default
    flags = list(spec.flags)
    if spec.secondary:
        flags = [f"{spec.flag}/{spec.secondary}", *flags[1:]]
    kwargs: dict[str, Any] = {"help": spec.help}
    if spec.min is not None:
        kwargs["min"] = spec.min
    if spec.max is not None:
        kwargs["max"] = spec.max
    kwargs.update(extra)
    return typer.Option(default, *flags, **kwargs)


def values(options_class, params: Mapping[str, Any]) -> dict[str, Any]:
    """The job options among a command's parameters, as plain values (Enums by value, paths as text)."""
    found = {}
    for name in specs(options_class):
        value = params[name]
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, (list, tuple)):
            value = [str(v) for v in value] if value else None
        elif value is not None and not isinstance(value, (bool, int, float, str)):
            value = str(value)
        found[name] = value
    return found


def options(options_class, params: Mapping[str, Any]):
    """The job's options dataclass from a command's parameters."""
    return options_class(**values(options_class, params))


class progress_bar:
    """Progress of a long step on stderr: a rich bar on a terminal, else a plain line at
    most every :attr:`plain_every_s` seconds and at the end (nothing with -q);
    ``with progress_bar("segment", "windows") as update: job(progress=update)``."""

    plain_every_s = 10.0

    def __init__(self, title: str, unit: str = "windows"):
        self.title, self.unit = title, unit
        self.bar = None
        self.task = None
        self.last_plain = None

    def plain(self, done: int, total: int) -> None:
        import time

        now = time.monotonic()
        if self.last_plain is None:
            self.last_plain = now           # the first line comes after plain_every_s, or at the end
        if done >= total or now - self.last_plain >= self.plain_every_s:
            print(f"{self.title}: {done}/{total} {self.unit}", file=sys.stderr, flush=True)
            self.last_plain = now

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(self.title), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                TimeRemainingColumn(), transient=True)
            self.task = self.bar.add_task(self.title, total=None)
            self.bar.start()
        self.bar.update(self.task, completed=done, total=total)

    def __enter__(self):
        if progress_enabled():
            return self.update
        return self.plain if STATE.level >= 0 else None

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
