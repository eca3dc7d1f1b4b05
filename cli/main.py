"""The ``mstools`` application: global options and the list of subcommands.

Subcommand modules import only light libraries at module level; torch, lightgbm and
itk are imported inside the commands that need them, so ``mstools --help`` is fast.
"""

from __future__ import annotations

import sys
import traceback

import typer

from mstools import __version__
from mstools_cli import common
from mstools_cli.simulate import simulate_command
from mstools_cli.evaluate import evaluate_command
from mstools_cli.subtract import subtract_command
from mstools_cli.activity import activity_command
from mstools_cli.filter import filter_app
from mstools_cli.refine import refine_app
from mstools_cli.register import register_command, warp_command
from mstools_cli.preprocess import apply_transform_command, preprocess_command
from mstools_cli.segment import segment_command
from mstools_cli.train import train_command
from mstools_cli.report import report_command
from mstools_cli.run import run_command
from mstools_cli.batch import batch_command
from mstools_cli.import_open_ms import import_open_ms_command

app = typer.Typer(
    name="mstools",
    help="Find new multiple sclerosis lesions in two FLAIR scans of one patient.\n\n"
         "Each subcommand does one job, files in and files out; chain them in shell scripts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=common.Group,
)


def _version(value: bool) -> None:
    if value:
        print(f"mstools {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More logging; tracebacks on errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors on stderr."),
    # A bool default, not None: Typer coerces a None through pydantic (see common.Group).
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Global options."""
    common.STATE.level = 1 if verbose else (-1 if quiet else 0)


app.command("simulate")(simulate_command)
app.command("evaluate")(evaluate_command)
app.command("subtract")(subtract_command)
app.add_typer(filter_app, name="filter")
app.add_typer(refine_app, name="refine")
app.command("register")(register_command)
app.command("warp")(warp_command)
app.command("preprocess")(preprocess_command)
app.command("apply-transform")(apply_transform_command)
app.command("segment")(segment_command)
app.command("activity")(activity_command)
app.command("train")(train_command)
app.command("report")(report_command)
app.command("run")(run_command)
app.command("batch")(batch_command)
app.command("import-open-ms")(import_open_ms_command)


def main() -> None:
    """Console entry point: unexpected errors become one line (traceback with -v)."""
    verbose = common.STATE.level >= 1 or "-v" in sys.argv or "--verbose" in sys.argv
    try:
        app(standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print(f"mstools: {common.INTERRUPTED}", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:  # the user's environment (disk full, permissions, ...), not a bug
        if verbose:
            traceback.print_exc()
        import errno

        from mstools.io import output_error

        where = exc.filename if exc.filename is not None else "a file"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS):
            message = str(output_error(exc, where))
        else:
            message = f"{where}: {exc.strerror or exc}; check the path, its permissions and the disk"
        print(f"mstools: error: {message}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:  # a bug, not bad input: say so briefly
        if verbose:
            traceback.print_exc()
        print(f"mstools: internal error: {type(exc).__name__}: {exc} (rerun with -v for the traceback "
              "and please report it)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
