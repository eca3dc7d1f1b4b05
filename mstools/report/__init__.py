"""Reports of runs: a self-contained HTML page per case and per cohort (``mstools report``).

* :mod:`~mstools.report.figures` -- arrays in, PNG bytes out: the baseline / follow-up /
  difference row of each new lesion and of each missed ground-truth lesion (NumPy and
  Pillow, :mod:`~mstools.report.raster`), cohort histograms (matplotlib, Agg);
* :mod:`~mstools.report.html` -- dicts and PNG bytes in, one HTML string out (images as
  data URIs, inline stylesheet, no script, no web address: it works offline);
* :mod:`~mstools.report.build` -- the only file-touching part: reads a run folder or a
  derivatives folder (:mod:`mstools.run_layout`) through :mod:`mstools.io` and writes the
  pages atomically; :func:`write_case_report` and :func:`write_cohort_report` are what
  ``mstools run`` / ``mstools batch`` call.

Names are loaded on first use, so that importing this package does not load matplotlib.
"""

from __future__ import annotations

from mstools._lazy import lazy_exports

_EXPORTS = {
    "Figure": "mstools.report.figures",
    "case_figures": "mstools.report.figures",
    "cohort_histograms": "mstools.report.figures",
    "to_display": "mstools.report.figures",
    "missed_lesions": "mstools.report.figures",
    "DEFAULT_MAX_LESIONS": "mstools.report.figures",
    "case_page": "mstools.report.html",
    "cohort_page": "mstools.report.html",
    "render_case_report": "mstools.report.build",
    "write_case_report": "mstools.report.build",
    "write_cohort_report": "mstools.report.build",
    "write_cohort_reports": "mstools.report.build",
    "folder_kind": "mstools.report.build",
    "case_name": "mstools.report.build",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
