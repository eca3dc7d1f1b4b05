"""Pictures of a run: arrays in, PNG bytes out (matplotlib's Agg canvas, no pyplot, no files).

Display convention. Every volume is first reoriented to the closest RAS orientation of
its affine (``nibabel.orientations``: ``io_orientation`` -> ``ornt_transform`` ->
``apply_orientation``), so the display grid's axes run left->Right, posterior->Anterior,
inferior->Superior whatever the stored orientation or obliquity. An axial slice is
drawn with Right on the right and Anterior at the top: the neurological convention,
nilearn's default (``radiological=False``); the panels carry L/R letters. Pixels keep
their physical aspect (voxel sizes of the display axes).

Windowing. Baseline and follow-up share one grey window, the 1st-99th percentile of
both scans inside the brain mask (as ``mstools preprocess``'s QC picture does); the
difference is shown in grey on a symmetric window, +-99.9th percentile of its absolute
value inside the brain, so new hyperintensities are bright and noise stays grey. Under
each lesion's row, the same three images zoomed on a field of ``ZOOM_MM`` around the
lesion (the field is drawn as a yellow box on the full slices); the zoomed follow-up
has no outline, so that a small lesion is not hidden under its own contour. Lesions are outlined with
``matplotlib`` contours of the mask slice at 0.5: detections in red, ground truth in cyan.
"""

from __future__ import annotations

import io as _bytes_io
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

#: Outline colours: detections, ground truth.
DETECTION_COLOUR = "#ff2020"
TRUTH_COLOUR = "#00e5ff"
#: Lesions shown per case when the caller does not say (largest first).
DEFAULT_MAX_LESIONS = 10
#: Figure width (inches) and resolution: a 9 in x 90 dpi row is 810 px wide, a few
#: tens of kB per PNG, fast enough for a 1 mm case (see the README's figures).
FIGURE_WIDTH_IN = 9.0
DPI = 90
#: Voxels kept around the brain's bounding box when panels are cropped.
CROP_MARGIN = 3
#: Subsampling step of the brain voxels used for the percentile windows (a window,
#: not a statistic: every 4th voxel is plenty and 4x cheaper on 1 mm grids).
WINDOW_STRIDE = 4
#: Difference window: +- this percentile of |difference| in the brain. At the 99th the
#: noise of a 1 mm simulated case already saturates (99th 1.0 vs 1.7, the median of its
#: new lesions on ``mstools subtract``'s map); at 99.9 (1.5) noise stays grey and new
#: lesions are the white objects (measured on ``mstools simulate --voxel-mm 1``).
DIFFERENCE_PERCENTILE = 99.9
#: Side of the zoomed field under each lesion's row (mm); at least 3 equivalent diameters.
ZOOM_MM = 40.0
ZOOM_COLOUR = "#ffd200"


@dataclass(frozen=True)
class Figure:
    """One picture of a case page: PNG bytes and the caption the page prints under it."""

    png: bytes
    caption: str
    kind: str                 # "lesion" (a detection), "missed" (a ground-truth lesion not detected), "overview"
    label: int | None         # the detection's (or ground-truth component's) label
    slice_index: int          # axial slice of the display (RAS) grid


# --------------------------------------------------------------------------- orientation


def display_transform(affine: np.ndarray) -> np.ndarray:
    """The ``nibabel`` orientation transform from the array axes to the closest RAS axes."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    return ornt_transform(io_orientation(np.asarray(affine, dtype=np.float64)), axcodes2ornt("RAS"))


def to_display(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``volume`` on the display grid (a view: axes permuted and flipped, never resampled)."""
    from nibabel.orientations import apply_orientation

    return apply_orientation(np.asarray(volume), display_transform(affine))


def display_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the display axes (R, A, S)."""
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    out = np.zeros(3)
    for axis, (target, _flip) in enumerate(display_transform(affine)):
        out[int(target)] = spacing[axis]
    return tuple(float(v) for v in out)  # type: ignore[return-value]


def orientation_codes(affine: np.ndarray) -> str:
    """The stored orientation, e.g. ``"LPS"`` (``nibabel.aff2axcodes``), for captions."""
    from nibabel.orientations import aff2axcodes

    return "".join(c or "?" for c in aff2axcodes(np.asarray(affine, dtype=np.float64)))


# --------------------------------------------------------------------------- windows


def intensity_window(baseline: np.ndarray, followup: np.ndarray, brain: np.ndarray | None) -> tuple[float, float]:
    """1st-99th percentile of both scans inside the brain (all voxels without a mask)."""
    inside = _inside(baseline, brain)
    values = np.concatenate([np.asarray(baseline)[inside][::WINDOW_STRIDE],
                             np.asarray(followup)[inside][::WINDOW_STRIDE]])
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, (1, 99)))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def difference_window(difference: np.ndarray, brain: np.ndarray | None) -> float:
    """Half-width of the symmetric difference window: the ``DIFFERENCE_PERCENTILE`` of
    |difference| inside the brain."""
    values = np.abs(np.asarray(difference)[_inside(difference, brain)][::WINDOW_STRIDE])
    half = float(np.percentile(values, DIFFERENCE_PERCENTILE)) if values.size else 0.0
    return half if half > 0 else 1.0


def _inside(volume: np.ndarray, brain: np.ndarray | None) -> np.ndarray:
    if brain is not None and np.any(brain):
        return np.asarray(brain) > 0
    return np.ones(np.shape(volume), bool)


def crop_box(brain: np.ndarray | None, shape: tuple[int, ...], *, margin: int = CROP_MARGIN) -> tuple[slice, slice]:
    """In-plane (i, j) bounding box of the brain plus a margin (the whole plane without a brain)."""
    if brain is None or not np.any(brain):
        return slice(0, shape[0]), slice(0, shape[1])
    brain = np.asarray(brain) > 0
    boxes = []
    for axis, other in ((0, (1, 2)), (1, (0, 2))):
        hit = np.flatnonzero(brain.any(axis=other))
        boxes.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + margin + 1, shape[axis])))
    return boxes[0], boxes[1]


# --------------------------------------------------------------------------- lesions


def component_centroids(labels: np.ndarray) -> dict[int, tuple[int, np.ndarray]]:
    """Label -> (voxel count, centroid in the array's indices), visiting labelled voxels only."""
    flat = np.flatnonzero(labels)
    if flat.size == 0:
        return {}
    lab = np.asarray(labels).ravel()[flat].astype(np.int64)
    sizes = np.bincount(lab)
    coords = np.unravel_index(flat, np.shape(labels))
    present = np.flatnonzero(sizes)
    present = present[present > 0]
    sums = np.stack([np.bincount(lab, weights=c, minlength=sizes.size) for c in coords], axis=1)
    return {int(p): (int(sizes[p]), sums[p] / sizes[p]) for p in present}


def _largest_first(centroids: Mapping[int, tuple[int, np.ndarray]], limit: int) -> list[int]:
    return sorted(centroids, key=lambda label: (-centroids[label][0], label))[:max(limit, 0)]


# --------------------------------------------------------------------------- figures


def case_figures(baseline: np.ndarray, followup: np.ndarray, labels: np.ndarray, affine: np.ndarray, *,
                 difference: np.ndarray | None = None, ground_truth: np.ndarray | None = None,
                 brain_mask: np.ndarray | None = None, lesions: Sequence[Mapping] = (),
                 max_lesions: int = DEFAULT_MAX_LESIONS, show_missed: bool = True,
                 difference_name: str = "follow-up - baseline", zoom_mm: float = ZOOM_MM,
                 dpi: int = DPI, width_in: float = FIGURE_WIDTH_IN) -> list[Figure]:
    """The pictures of a case page, one row (baseline | follow-up | difference) each.

    One row per new lesion (connected label of ``labels``), largest first, at most
    ``max_lesions``, on the display-grid axial slice through the lesion's centroid; then,
    when a ground truth is given and ``show_missed``, one row per ground-truth lesion
    that no detection touches (largest first, at most ``max_lesions``). Without any
    detection, one row on the brain's middle slice says that none was found (unless a
    missed ground-truth lesion is shown instead).
    ``lesions`` (rows of the detector's lesion table, optional) adds the world
    centroid and score to the captions. ``difference`` defaults to follow-up minus
    baseline. ``zoom_mm`` > 0 adds, under each lesion's row, the three images zoomed on
    a field of that size (mm, at least 3 equivalent diameters of the lesion) around it.
    Inputs share one grid (``affine``); they are not modified.
    """
    shape = np.shape(baseline)
    for name, volume in (("followup", followup), ("labels", labels), ("difference", difference),
                         ("ground_truth", ground_truth), ("brain_mask", brain_mask)):
        if volume is not None and np.shape(volume) != shape:
            raise ValueError(f"{name} has shape {np.shape(volume)}, baseline has {shape}")
    if difference is None:
        difference = np.asarray(followup, np.float32) - np.asarray(baseline, np.float32)
    view = {name: (to_display(v, affine) if v is not None else None)
            for name, v in (("baseline", baseline), ("followup", followup), ("difference", difference),
                            ("labels", labels), ("truth", ground_truth), ("brain", brain_mask))}
    spacing = display_spacing(affine)
    brain = view["brain"]
    window = intensity_window(view["baseline"], view["followup"], brain)
    half = difference_window(view["difference"], brain)
    box = crop_box(brain, view["baseline"].shape)
    panels = (("baseline", view["baseline"], window), ("follow-up", view["followup"], window),
              (difference_name, view["difference"], (-half, half)))
    truth = view["truth"]
    legend = "red: detected new lesions" + ("; cyan: ground truth" if truth is not None else "")
    rows = {str(row.get("label")): row for row in lesions}
    voxel_mm3 = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))

    def draw(k: int, centre=None, voxels: int = 0) -> bytes:
        zoom = None
        if centre is not None and zoom_mm > 0:
            field = max(zoom_mm, 3 * (6 * voxels * voxel_mm3 / np.pi) ** (1 / 3))
            zoom = _zoom_box(centre, field, spacing, view["baseline"].shape)
            if _area(zoom) >= 0.5 * _area(box):  # the slice itself is small enough
                zoom = None
        return _row_png(panels, view["labels"], truth, k, box, zoom, spacing, dpi, width_in)

    figures: list[Figure] = []
    detected = component_centroids(view["labels"])
    ranked = _largest_first(detected, max_lesions)
    for rank, label in enumerate(ranked, 1):
        voxels, centre = detected[label]
        k = int(round(centre[2]))
        text = _lesion_caption(label, rank, len(detected), voxels, affine, rows.get(str(label)))
        figures.append(Figure(png=draw(k, centre, voxels), caption=f"{text}; display axial slice {k}. {legend}.",
                              kind="lesion", label=label, slice_index=k))
    if truth is not None and show_missed and np.any(truth):
        from mstools.lesions import label_components

        gt_labels, _ = label_components(truth, connectivity=26)
        touched = set(np.unique(gt_labels[view["labels"] > 0]).tolist())
        missed = {g: c for g, c in component_centroids(gt_labels).items() if g not in touched}
        for rank, label in enumerate(_largest_first(missed, max_lesions), 1):
            voxels, centre = missed[label]
            k = int(round(centre[2]))
            figures.append(Figure(
                png=draw(k, centre, voxels),
                caption=(f"Missed ground-truth lesion {rank} of {len(missed)} ({voxels * voxel_mm3:.1f} mm3, "
                         f"no detection touches it); display axial slice {k}. {legend}."),
                kind="missed", label=label, slice_index=k))
    if not detected and not figures:
        k = _middle_slice(brain, view["baseline"].shape)
        figures.append(Figure(png=draw(k), kind="overview", label=None, slice_index=k,
                              caption=f"No new lesion was found; middle axial slice {k} of the brain. {legend}."))
    return figures


def _lesion_caption(label: int, rank: int, total: int, voxels: int, affine: np.ndarray,
                    row: Mapping | None) -> str:
    volume = voxels * abs(float(np.linalg.det(np.asarray(affine)[:3, :3])))
    text = f"New lesion {label} ({rank} of {total} by size): {volume:.1f} mm3"
    if row is not None:
        centre = [_number(row.get(f"centroid_{axis}_mm")) for axis in "xyz"]
        if all(c is not None for c in centre):
            text += ", centroid (" + ", ".join(f"{c:.1f}" for c in centre) + ") mm"
        voxel = [_number(row.get(f"centroid_{axis}")) for axis in "ijk"]
        if all(v is not None for v in voxel):
            text += ", voxel (" + ", ".join(f"{v:.0f}" for v in voxel) + ") of the stored grid"
        score = _number(row.get("score_max"))
        if score is not None:
            text += f", score max {score:.3g}"
    return text


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _middle_slice(brain: np.ndarray | None, shape: tuple[int, ...]) -> int:
    if brain is not None and np.any(brain):
        ks = np.flatnonzero(np.asarray(brain).any(axis=(0, 1)))
        return int((ks[0] + ks[-1]) // 2)
    return shape[2] // 2


def _new_figure(width_in: float, height_in: float, dpi: int):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(width_in, height_in), dpi=dpi)


def _png(figure) -> bytes:
    buffer = _bytes_io.BytesIO()
    # No metadata: the default "Software" text carries a web address; the page has none.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _area(box: tuple[slice, slice]) -> int:
    return (box[0].stop - box[0].start) * (box[1].stop - box[1].start)


def _zoom_box(centre, field_mm: float, spacing, shape) -> tuple[slice, slice]:
    """In-plane (i, j) box of ``field_mm`` around a display-grid centre, inside the grid."""
    out = []
    for axis in (0, 1):
        half = max(int(round(field_mm / 2 / spacing[axis])), 2)
        c = int(round(centre[axis]))
        out.append(slice(max(c - half, 0), min(c + half + 1, shape[axis])))
    return out[0], out[1]


def _draw_panel(axis, image, window, detection, truth_slice, aspect, *, outline: bool = True) -> None:
    axis.imshow(image, origin="lower", cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect,
                interpolation="nearest")
    # Ground truth underneath and wider, detections on top: where both agree the
    # outline is red with a cyan rim.
    if outline and truth_slice is not None and truth_slice.any():
        axis.contour(truth_slice, levels=[0.5], colors=TRUTH_COLOUR, linewidths=2.4)
    if outline and detection.any():
        axis.contour(detection, levels=[0.5], colors=DETECTION_COLOUR, linewidths=1.1)
    axis.set_xticks([])
    axis.set_yticks([])


def _row_png(panels, labels, truth, k: int, box: tuple[slice, slice], zoom: tuple[slice, slice] | None,
             spacing, dpi: int, width_in: float) -> bytes:
    """Baseline | follow-up | difference on axial slice ``k`` (cropped to ``box``), and under
    them, when ``zoom`` is given, the same zoomed on that box."""
    from matplotlib.patches import Rectangle

    n = len(panels)
    panel_w = width_in / n
    aspect = spacing[1] / spacing[0]

    def height(b: tuple[slice, slice]) -> float:
        return panel_w * ((b[1].stop - b[1].start) * spacing[1]) / max((b[0].stop - b[0].start) * spacing[0], 1e-6)

    title_in = 0.3
    full_h = height(box)
    zoom_h = min(height(zoom), panel_w) * 0.75 if zoom is not None else 0.0
    figure = _new_figure(width_in, title_in + full_h + zoom_h + (0.05 if zoom is not None else 0.0), dpi)
    total = figure.get_figheight()
    figure.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=1 - title_in / total, wspace=0.02,
                           hspace=0.05 / max(full_h, 1e-6))
    grid = figure.add_gridspec(2 if zoom is not None else 1, n,
                               height_ratios=[full_h, zoom_h] if zoom is not None else None)
    truth_k = np.asarray(truth[:, :, k] > 0) if truth is not None else None
    detection_k = np.asarray(labels[:, :, k] > 0)
    for column, (title, volume, window) in enumerate(panels):
        plane = np.asarray(volume[:, :, k], dtype=np.float32)
        for row, b in enumerate((box, zoom) if zoom is not None else (box,)):
            axis = figure.add_subplot(grid[row, column])
            bi, bj = b
            # The zoomed follow-up stays clean: outlines would hide a small lesion.
            _draw_panel(axis, plane[bi, bj].T, window, detection_k[bi, bj].T.astype(float),
                        truth_k[bi, bj].T.astype(float) if truth_k is not None else None, aspect,
                        outline=not (row == 1 and column == 1))
            if row == 0:
                axis.set_title(title, fontsize=9, pad=2)
                for x, letter in ((0.02, "L"), (0.98, "R")):
                    axis.text(x, 0.5, letter, color="white", fontsize=8, transform=axis.transAxes,
                              ha="left" if letter == "L" else "right", va="center")
                if zoom is not None:
                    zi, zj = zoom
                    axis.add_patch(Rectangle((zi.start - bi.start - 0.5, zj.start - bj.start - 0.5),
                                             zi.stop - zi.start, zj.stop - zj.start, fill=False,
                                             edgecolor=ZOOM_COLOUR, linewidth=0.7, linestyle="--"))
    return _png(figure)


def cohort_histograms(counts: Sequence[float], case_volumes: Sequence[float], lesion_volumes: Sequence[float] = (),
                      *, dpi: int = DPI, width_in: float = FIGURE_WIDTH_IN) -> bytes:
    """Histograms of new lesions per case, new-lesion volume per case and, when given,
    the volume of each new lesion (log axis), side by side, as one PNG."""
    counts = np.asarray([c for c in counts if np.isfinite(c)], dtype=float)
    case_volumes = np.asarray([v for v in case_volumes if np.isfinite(v)], dtype=float)
    lesion_volumes = np.asarray([v for v in lesion_volumes if np.isfinite(v) and v > 0], dtype=float)
    n_panels = 3 if lesion_volumes.size else 2
    figure = _new_figure(width_in, 2.8, dpi)
    axes = [figure.add_subplot(1, n_panels, n + 1) for n in range(n_panels)]
    top = int(counts.max()) if counts.size else 0
    axes[0].hist(counts, bins=np.arange(-0.5, top + 1.5, 1.0), color="#4a78b5", edgecolor="white")
    axes[0].set_xlabel("new lesions per case", fontsize=8)
    axes[1].hist(case_volumes, bins=min(max(case_volumes.size, 1), 20), color="#b5654a", edgecolor="white")
    axes[1].set_xlabel("new-lesion volume per case (mm3)", fontsize=8)
    if n_panels == 3:
        low, high = lesion_volumes.min(), lesion_volumes.max()
        bins = np.geomspace(low, high * 1.0001, min(lesion_volumes.size, 20) + 1) if high > low else 1
        axes[2].hist(lesion_volumes, bins=bins, color="#5a9a5a", edgecolor="white")
        if high > low:
            from matplotlib.ticker import LogFormatter, NullFormatter

            axes[2].set_xscale("log")
            axes[2].xaxis.set_major_formatter(LogFormatter(labelOnlyBase=True))
            axes[2].xaxis.set_minor_formatter(NullFormatter())
        axes[2].set_xlabel("volume of each new lesion (mm3)", fontsize=8)
    for axis in axes:
        axis.set_ylabel("count", fontsize=8)
        axis.tick_params(which="both", labelsize=7)
        axis.yaxis.get_major_locator().set_params(integer=True)
    figure.tight_layout()
    return _png(figure)
