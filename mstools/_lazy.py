"""One lazy-loading helper for the packages' public names (scikit-image's lazy_loader idea).

A package lists ``name -> module`` and gets a module ``__getattr__`` and ``__dir__`` that
import the module on first use, so that importing the package stays light::

    __getattr__, __dir__, __all__ = lazy_exports(__name__, {"evaluate_case": "mstools.metrics.case"})
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable, Callable, list[str]]:
    """(``__getattr__``, ``__dir__``, ``__all__``) of a package whose names load on first use."""

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            setattr(sys.modules[package], name, value)   # once loaded, a plain attribute
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__, sorted(exports)
