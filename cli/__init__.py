"""The ``mstools`` command line: a thin Typer layer over the ``mstools`` library."""
