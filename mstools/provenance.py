"""JSON sidecars: how every output was made.

Each image or table a command writes gets ``<name>.json`` beside it (the NIfTI or
TSV suffix replaced), with the mstools version, the full command line, the
parameters, and the sha256 of every input file and model.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from pathlib import Path
from typing import Iterable, Mapping

from mstools import __version__
from mstools.io import sha256, strip_nifti_suffix


def sidecar_path(output: str | os.PathLike) -> Path:
    text = strip_nifti_suffix(output)
    if text == str(output):
        text = os.path.splitext(text)[0]
    return Path(text + ".json")


def describe_inputs(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """sha256 of each input file, keyed by the path as given."""
    return {str(p): sha256(p) for p in paths if p is not None and Path(p).is_file()}


def sidecar(*, command: str, parameters: Mapping[str, object], inputs: Mapping[str, str],
            models: Mapping[str, str] | None = None, extra: Mapping[str, object] | None = None) -> dict:
    """The provenance record shared by all files of one command run."""
    record = {
        "tool": "mstools",
        "version": __version__,
        "command": command,
        "command_line": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "parameters": dict(parameters),
        "inputs_sha256": dict(inputs),
        "models_sha256": dict(models or {}),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
    }
    if extra:
        record.update(extra)
    return record


def check_outputs(paths: Iterable[str | os.PathLike], *, inputs: Iterable[str | os.PathLike] = (),
                  force: bool = False, sidecars: bool = True) -> None:
    """Before the work: every output (with its ``.json`` sidecar) can be written. A missing
    folder is fine (the writer, an ``OutputBatch(create_dirs=True)``, makes it); an existing
    output without ``force``, an input, or a file or read-only folder on the way is refused."""
    from mstools.io import check_writable

    inputs = [p for p in inputs if p is not None]
    for path in paths:
        check_writable(path, inputs=inputs, force=force, create_dirs=True)
        if sidecars:
            check_writable(sidecar_path(path), inputs=inputs, force=force, create_dirs=True)
