"""`mstools preprocess`: two raw FLAIR scans -> an aligned pair with comparable intensities.

* :mod:`~mstools.preprocess.brain_extraction` -- Otsu + morphology (Cabezas et al.),
  deepbet, head and brain-volume checks, union/intersection of the two masks;
* :mod:`~mstools.preprocess.bias_field` -- N4 (SimpleITK);
* :mod:`~mstools.preprocess.rigid` -- rigid registration, halfway space, common grids,
  resampling of images and masks;
* :mod:`~mstools.preprocess.harmonise` -- z-score, joint-histogram linear fit,
  Nyul landmark matching;
* :mod:`~mstools.preprocess.qc` -- the QC picture;
* :mod:`~mstools.preprocess.pipeline` -- :func:`preprocess_pair`, the whole chain.

All functions work on arrays and NIfTI affines in memory; files are read and written
by ``mstools/io.py`` through ``mstools/jobs/preprocess.py``.
"""

from __future__ import annotations

import importlib

__all__ = ["PreprocessOptions", "PreprocessResult", "preprocess_pair"]


def __getattr__(name: str):
    # loaded on first use, so that importing one step (e.g. harmonise's defaults) stays light
    if name in __all__:
        return getattr(importlib.import_module("mstools.preprocess.pipeline"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
