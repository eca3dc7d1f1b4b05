"""Quality-control picture of a preprocessed pair (PNG bytes; matplotlib's Agg backend).

Rows: baseline, follow-up, follow-up minus baseline; columns: a few axial-ish slices
(along the grid's third axis) through the brain, with the brain mask's outline. The
caller writes the bytes (``mstools/io.py`` owns files).
"""

from __future__ import annotations

import io as _bytes_io

import numpy as np


def qc_png(baseline: np.ndarray, followup: np.ndarray, brain_mask: np.ndarray, *, n_slices: int = 4,
           title: str = "", spacing_mm=(1.0, 1.0, 1.0)) -> bytes:
    """A PNG (bytes) showing both time points, their difference and the mask outline."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    mask = np.asarray(brain_mask, bool)
    ks = np.nonzero(mask.any(axis=(0, 1)))[0]
    if ks.size == 0:
        ks = np.arange(baseline.shape[2])
    slices = np.unique(np.linspace(ks[0], ks[-1], n_slices + 2)[1:-1].round().astype(int))
    inside = mask if mask.any() else np.ones(mask.shape, bool)
    lo, hi = np.percentile(np.concatenate([baseline[inside], followup[inside]]), (1, 99))
    difference = followup.astype(np.float32) - baseline.astype(np.float32)
    dmax = float(np.percentile(np.abs(difference[inside]), 99)) or 1.0
    aspect = float(spacing_mm[1]) / float(spacing_mm[0])
    figure = Figure(figsize=(2.2 * len(slices), 6.6), dpi=100)
    rows = (("baseline", baseline, "gray", lo, hi), ("follow-up", followup, "gray", lo, hi),
            ("follow-up - baseline", difference, "RdBu_r", -dmax, dmax))
    for r, (label, volume, cmap, vmin, vmax) in enumerate(rows):
        for c, k in enumerate(slices):
            axis = figure.add_subplot(3, len(slices), r * len(slices) + c + 1)
            axis.imshow(volume[:, :, k].T, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect,
                        interpolation="nearest")
            if mask[:, :, k].any():
                axis.contour(mask[:, :, k].T.astype(float), levels=[0.5], colors="yellow", linewidths=0.6)
            axis.set_xticks([])
            axis.set_yticks([])
            if c == 0:
                axis.set_ylabel(label, fontsize=8)
            if r == 0:
                axis.set_title(f"k = {k}", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    buffer = _bytes_io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
