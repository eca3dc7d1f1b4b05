"""Options of a job, declared once: default, command-line flag, help, range, choices.

A job's options are a frozen dataclass whose fields are made with :func:`option`. The
same declaration gives the command's options (``mstools_cli`` builds its Typer options
from it), the pipeline's configuration keys and defaults (``mstools run --print-config``)
and the checks of a configuration file. Light to import (no NumPy): ``mstools --help``
reads these.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from mstools.errors import InputError

#: Kinds of values: how a configuration value is read and checked.
KINDS = ("float", "int", "bool", "str", "choice", "path", "paths")


def option(default: Any, *flags: str, kind: str, help: str, min: Optional[float] = None,
           max: Optional[float] = None, choices: tuple[str, ...] = (), secondary: Optional[str] = None,
           show_default: Any = True) -> Any:
    """A dataclass field with what a command line and a config file need to know of it.

    ``flags``: the option's names (default ``--name-with-dashes``); ``secondary``: the
    negative flag of a boolean (``--no-qc``); ``min``/``max``: the closed range;
    ``choices``: the allowed strings of a ``choice``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    metadata = {"flags": flags, "kind": kind, "help": help, "min": min, "max": max, "choices": tuple(choices),
                "secondary": secondary, "show_default": show_default}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Spec:
    """One option as declared: its name, default and metadata."""

    name: str
    default: Any
    kind: str
    help: str
    flags: tuple[str, ...]
    secondary: Optional[str]
    min: Optional[float]
    max: Optional[float]
    choices: tuple[str, ...]
    show_default: Any

    @property
    def flag(self) -> str:
        return self.flags[0]

    @property
    def multiple(self) -> bool:
        return self.kind == "paths"


def specs(options_class) -> dict[str, Spec]:
    """The declared options of an options dataclass, in declaration order."""
    found = {}
    for f in dataclasses.fields(options_class):
        if "kind" not in f.metadata:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        m = f.metadata
        flags = m["flags"] or ("--" + f.name.replace("_", "-"),)
        found[f.name] = Spec(f.name, default, m["kind"], m["help"], tuple(flags), m["secondary"], m["min"],
                             m["max"], m["choices"], m["show_default"])
    return found


def defaults(options_class) -> dict[str, Any]:
    """name -> default, as plain values (what a configuration file holds)."""
    return {name: spec.default for name, spec in specs(options_class).items()}


def _bound(value: float) -> str:
    """A range bound as the command line's messages print it (0.0 -> 0, 0.95 -> 0.95)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _out_of_range(spec: Spec, number: float) -> Optional[str]:
    """The command line's message for a number outside the option's range (NaN is outside)."""
    if spec.max is not None and not number <= spec.max:
        return f"Input should be less than or equal to {_bound(spec.max)}"
    if spec.min is not None and not number >= spec.min:
        return f"Input should be greater than or equal to {_bound(spec.min)}"
    return None


def convert(spec: Spec, value: Any) -> Any:
    """A configuration value read as the command line reads its text; ValueError says why not,
    in the command line's words.

    A value is taken as the text it would be on the command line (a YAML ``3`` for a
    float option is 3.0, ``"2.5"`` for an int option is refused, NaN is outside any
    range), so that a config file and a command line accept the same values.
    """
    flag = spec.flag
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, not {value!r}")
        return value
    if spec.kind == "paths":
        items = value if isinstance(value, list) else [value]
        return [str(item) for item in items]
    if isinstance(value, (list, dict)):
        raise ValueError(f"must be one value, not {value!r}")
    text = str(value)
    if spec.kind == "float":
        try:
            number: Any = float(text)
        except ValueError:
            raise ValueError(f"Invalid value for '{flag}': Input should be a valid number, unable to parse "
                             "string as a number") from None
    elif spec.kind == "int":
        try:
            number = int(text)
        except ValueError:
            raise ValueError(f"Invalid value for '{flag}': Input should be a valid integer, unable to parse "
                             "string as an integer") from None
    elif spec.kind == "choice":
        if text not in spec.choices:
            raise ValueError(f"Invalid value for '{flag}': Value error, '{text}' is not one of "
                             + ", ".join(f"'{c}'" for c in spec.choices) + ".")
        return text
    else:  # str, path
        return text
    problem = _out_of_range(spec, number)
    if problem:
        raise ValueError(f"Invalid value for '{flag}': {problem}")
    return number


def build(options_class, values: dict[str, Any], *, where: str = ""):
    """An options object from configured values (None keeps the default); InputError on a bad value.

    ``where`` prefixes the messages (``"config: subtract: "``).
    """
    declared = specs(options_class)
    given = {}
    for name, value in values.items():
        if name not in declared:
            raise InputError(f"{where}no option {name!r}; valid: {', '.join(declared)}")
        if value is None:
            continue
        try:
            given[name] = convert(declared[name], value)
        except ValueError as exc:
            raise InputError(f"{where}{exc}") from None
    return options_class(**given)


def command_line(options_class, values: dict[str, Any]) -> list[str]:
    """The command-line options that give these values (None: the command's default)."""
    declared = specs(options_class)
    args: list[str] = []
    for name, value in values.items():
        if value is None or name not in declared:
            continue
        spec = declared[name]
        if spec.kind == "bool":
            if value:
                args.append(spec.flag)
            elif spec.secondary:
                args.append(spec.secondary)
        elif spec.kind == "paths":
            for item in value if isinstance(value, list) else [value]:
                args += [spec.flag, str(item)]
        else:
            args += [spec.flag, str(value)]
    return args


def as_dict(options) -> dict[str, Any]:
    """The declared options' values of an options object."""
    return {name: getattr(options, name) for name in specs(type(options))}
