"""Quality-control picture of a preprocessed pair (PNG bytes, drawn with NumPy and Pillow).

Rows: baseline, follow-up, follow-up minus baseline; columns: a few axial slices
through the brain, with the brain mask's outline (yellow, the pixels just outside it).
Given the pair's ``affine``, slices are drawn as the report's lesion panels are
(:mod:`mstools.report.figures`): on the display grid (closest RAS orientation of the
affine), Right on the right, Anterior at the top, pixels in their physical aspect;
the ``k`` printed over each column is the display grid's axial slice. The scans share
the report's grey window (1st-99th percentile inside the brain); the difference is
grey on a symmetric window of +- the ``DIFFERENCE_PERCENTILE`` of its absolute value in
the brain, so that a misregistration shows as bright/dark rims. The caller writes the
bytes (``mstools/io.py`` owns files).
"""

from __future__ import annotations

import numpy as np

#: Size of the picture: ``PANEL_PX`` wide per slice, ``HEIGHT_PX`` high for the three rows
#: (2.2 in per slice x 6.6 in at 100 dpi, the size it has always had); each slice is as
#: large as fits in its cell with its physical aspect, centred.
PANEL_PX = 220
HEIGHT_PX = 660
#: Symmetric difference window: +- this percentile of |follow-up - baseline| in the brain.
DIFFERENCE_PERCENTILE = 99.0
#: Subsampling step of the brain voxels used for the windows (as the report's figures).
WINDOW_STRIDE = 4


def qc_png(baseline: np.ndarray, followup: np.ndarray, brain_mask: np.ndarray, *, n_slices: int = 4,
           title: str = "", spacing_mm=(1.0, 1.0, 1.0), affine: np.ndarray | None = None) -> bytes:
    """A PNG (bytes) showing both time points, their difference and the mask outline.

    ``affine`` (the pair's grid) puts the slices in the report's display orientation
    (anterior at the top whatever the stored orientation) and gives the voxel sizes;
    without it the array axes are drawn as they are stored (i to the right, j up,
    slices along k) with voxel sizes ``spacing_mm``. Inputs are not modified.
    """
    from mstools.report import raster
    from mstools.report.figures import display_spacing, font_px, intensity_window, to_display

    shape = np.shape(baseline)
    for name, volume in (("followup", followup), ("brain_mask", brain_mask)):
        if np.shape(volume) != shape:
            raise ValueError(f"{name} has shape {np.shape(volume)}, baseline has {shape}")
    if affine is not None:
        baseline, followup, brain_mask = (to_display(v, affine) for v in (baseline, followup, brain_mask))
        spacing = display_spacing(affine)
    else:
        spacing = tuple(float(s) for s in spacing_mm)
    mask = np.asarray(brain_mask) > 0
    ks = np.flatnonzero(mask.any(axis=(0, 1)))
    if ks.size == 0:
        ks = np.arange(mask.shape[2])
    slices = np.unique(np.linspace(ks[0], ks[-1], n_slices + 2)[1:-1].round().astype(int))
    window = intensity_window(baseline, followup, mask if mask.any() else None)
    inside = mask if mask.any() else np.ones(mask.shape, bool)
    sample = (np.asarray(followup, np.float32)[inside][::WINDOW_STRIDE]
              - np.asarray(baseline, np.float32)[inside][::WINDOW_STRIDE])
    half = float(np.percentile(np.abs(sample), DIFFERENCE_PERCENTILE)) if sample.size else 0.0
    half = half if half > 0 else 1.0

    text = font_px(90)
    pad = 2
    title_h = text + 6 if title else 0
    label_h = text + 4
    rows = (("baseline", None), ("follow-up", None), ("follow-up - baseline", (-half, half)))
    row_h = (HEIGHT_PX - title_h) // len(rows)
    size = raster.fit(mask.shape[0], mask.shape[1], spacing, PANEL_PX - 2 * pad, row_h - label_h - pad)
    width = len(slices) * PANEL_PX
    canvas = np.full((HEIGHT_PX, width), raster.WHITE, np.uint8)
    if title:
        raster.write(canvas, title, 3, width // 2, size=text, align="centre")
    for r, (label, diff_window) in enumerate(rows):
        y = title_h + r * row_h + label_h
        for c, k in enumerate(slices):
            x = c * PANEL_PX + (PANEL_PX - size[0]) // 2
            b = np.asarray(baseline[:, :, k], np.float32)
            f = np.asarray(followup[:, :, k], np.float32)
            plane = f - b if diff_window else (b if label == "baseline" else f)
            panel = raster.enlarge(raster.grey(raster.screen(plane), diff_window or window), *size)
            panel[raster.ring(raster.enlarge(raster.screen(mask[:, :, k]), *size), 1)] = raster.YELLOW
            canvas[y:y + size[1], x:x + size[0]] = panel
            raster.write(canvas, f"{label}, k = {k}", y - label_h + 1, c * PANEL_PX + pad, size=text)
    return raster.png(canvas)
