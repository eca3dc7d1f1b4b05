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
        except (InputError, ModuleNotFoundError) as exc:
            if isinstance(exc, ModuleNotFoundError):
                from mstools.errors import missing_extra

                exc = missing_extra(exc) or exc
                if not isinstance(exc, InputError):
                    raise
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
                                TimeRemainingColumn(), console=stderr_console(), transient=True,
                                redirect_stdout=False)
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


def stderr_console():
    """rich's console on stderr (rich's default console writes on stdout, which carries results)."""
    from rich.console import Console

    return Console(stderr=True)


class run_progress:
    """What ``mstools run`` shows on stderr while its stages work (a
    :class:`mstools.pipeline.RunProgress`): on a terminal a rich display, one row per stage
    (``[2/3] refine``, its current step or ``120/504 windows``, the elapsed time), removed
    when the run ends; otherwise plain lines: a stage's start and its end (``done in 2.9 s``
    or ``done earlier``), each step inside it, and counted work at most every
    :attr:`plain_every_s` seconds and when complete. Nothing with -q.
    ``with run_progress(units={"segment": "windows"}) as progress: run_case(..., progress=progress)``;
    ``console``: a rich Console to draw on even when stderr is not a terminal (tests)."""

    plain_every_s = 10.0

    def __init__(self, *, units: Mapping[str, str] | None = None, console=None):
        import threading

        self.units = dict(units or {})
        self.console = console
        self.stages: list[str] = []
        self.bar = None
        self.tasks: dict[str, Any] = {}
        self.last_count: dict[str, float] = {}
        self.lock = threading.Lock()     # steps may come from register's log watcher thread

    def __enter__(self):
        if STATE.level < 0:
            return None
        if self.console is not None or progress_enabled():
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.bar = Progress(SpinnerColumn(finished_text=" "), TextColumn("{task.description}"),
                                BarColumn(bar_width=24), TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                                console=self.console or stderr_console(), transient=True, redirect_stdout=False)
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def label(self, stage: str) -> str:
        number = self.stages.index(stage) + 1 if stage in self.stages else 0
        return f"[{number}/{len(self.stages)}] {stage}"

    def say(self, stage: str, detail: str) -> None:
        print(f"{self.label(stage)}: {detail}", file=sys.stderr, flush=True)

    def show(self, stage: str, detail: str, *, done: bool = False, completed=None, total=None) -> None:
        """The stage's row of the rich display: added when first shown, then updated."""
        with self.lock:
            task = self.tasks.get(stage)
            if task is None:
                task = self.tasks[stage] = self.bar.add_task(self.label(stage), total=None, detail=detail)
            self.bar.update(task, detail=detail, **({"completed": completed, "total": total} if total else {}))
            if done:
                self.bar.update(task, completed=1, total=1)
                self.bar.stop_task(task)
            self.bar.refresh()

    # the RunProgress methods

    def plan(self, stages: list[str]) -> None:
        self.stages = list(stages)

    def started(self, stage: str) -> None:
        if self.bar is not None:
            self.show(stage, "running")
        else:
            self.say(stage, "started")

    def finished(self, stage: str, status: str, seconds: float = 0.0) -> None:
        detail = "done earlier" if status == "reused" else f"done in {seconds:.1f} s"
        if self.bar is not None:
            self.show(stage, detail, done=True)
        else:
            self.say(stage, detail)

    def step(self, stage: str, message: str) -> None:
        if self.bar is not None:
            self.show(stage, message)
        else:
            self.say(stage, message)

    def count(self, stage: str, done: int, total: int) -> None:
        import time

        detail = f"{done}/{total} {self.units.get(stage, '')}".rstrip()
        if self.bar is not None:
            self.show(stage, detail, completed=done, total=total)
            return
        now = time.monotonic()
        last = self.last_count.setdefault(stage, now)    # the first line after plain_every_s, or at the end
        if done >= total or now - last >= self.plain_every_s:
            self.say(stage, detail)
            self.last_count[stage] = now


class cohort_progress:
    """What ``mstools batch`` shows on stderr while its cases run on the Dask workers (a
    :class:`mstools.pipeline.CohortProgress`): on a terminal, one row per running case with
    its stage (``[2/3] refine``), the step inside it and the elapsed time, gone when the case
    is done (its result line stays above); otherwise nothing more than that line per case.
    ``console``: a rich Console to draw on even when stderr is not a terminal (tests)."""

    def __init__(self, *, units: Mapping[str, str] | None = None, console=None):
        import threading

        self.units = dict(units or {})
        self.console = console
        self.bar = None
        self.rows: dict[str, Any] = {}          # case -> its row of the display
        self.stages: dict[str, list[str]] = {}  # case -> its run's stages
        self.done: set[str] = set()
        self.lock = threading.Lock()            # events come on the Dask client's thread

    def __enter__(self):
        if STATE.level < 0 or not (self.console is not None or progress_enabled()):
            return None
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.fields[detail]}"),
                            TimeElapsedColumn(), console=self.console or stderr_console(), transient=True,
                            redirect_stdout=False)
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def show(self, case: str, stage: str, detail: str = "") -> None:
        with self.lock:
            if case in self.done:           # an event that came after the case's end
                return
            stages = self.stages.get(case, [])
            number = stages.index(stage) + 1 if stage in stages else 0
            text = f"[{number}/{len(stages)}] {stage}" + (f": {detail}" if detail else "")
            if case not in self.rows:
                self.rows[case] = self.bar.add_task(case, total=None, detail=text)
            self.bar.update(self.rows[case], detail=text)
            self.bar.refresh()

    # the CohortProgress methods

    def case(self, case: str) -> "_CaseRow":
        return _CaseRow(self, case)

    def case_done(self, case: str) -> None:
        with self.lock:
            self.done.add(case)
            row = self.rows.pop(case, None)
            if row is not None:
                self.bar.remove_task(row)
                self.bar.refresh()


class _CaseRow:
    """One case's :class:`mstools.pipeline.RunProgress`, drawn as its row of :class:`cohort_progress`."""

    def __init__(self, display: cohort_progress, case: str):
        self.display, self.case = display, case

    def plan(self, stages: list[str]) -> None:
        self.display.stages[self.case] = list(stages)

    def started(self, stage: str) -> None:
        self.display.show(self.case, stage)

    def finished(self, stage: str, status: str, seconds: float = 0.0) -> None:
        self.display.show(self.case, stage, "done earlier" if status == "reused" else f"done in {seconds:.1f} s")

    def step(self, stage: str, message: str) -> None:
        self.display.show(self.case, stage, message)

    def count(self, stage: str, done: int, total: int) -> None:
        self.display.show(self.case, stage, f"{done}/{total} {self.display.units.get(stage, '')}".rstrip())
