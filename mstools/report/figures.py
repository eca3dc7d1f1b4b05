"""Pictures of a run: arrays in, PNG bytes out (no files).

Display convention. Every volume is first reoriented to the closest RAS orientation of
its affine (``nibabel.orientations``: ``io_orientation`` -> ``ornt_transform`` ->
``apply_orientation``), so the display grid's axes run left->Right, posterior->Anterior,
inferior->Superior whatever the stored orientation or obliquity. An axial slice is
drawn with Right on the right and Anterior at the top: the neurological convention,
nilearn's default (``radiological=False``); the panels carry L/R letters. Pixels keep
their physical aspect (voxel sizes of the display axes). ``mstools preprocess``'s QC
picture (:mod:`mstools.preprocess.qc`) is drawn the same way.

Windowing. Baseline and follow-up share one grey window, the 1st-99th percentile of
both scans inside the brain mask (as ``mstools preprocess``'s QC picture does); the
difference is shown in grey on a symmetric window, +-99.9th percentile of its absolute
value inside the brain, so new hyperintensities are bright and noise stays grey. Under
each lesion's row, the same three images zoomed on a field of ``ZOOM_MM`` around the
lesion (the field is drawn as a dashed yellow box on the full slices); the zoomed
follow-up has no outline, so that a small lesion is not hidden under its own contour.
Lesions are outlined by the pixels just outside their mask's boundary: ground truth in
cyan (``TRUTH_OUTLINE_PX`` wide, underneath), detections in red on top
(``DETECTION_OUTLINE_PX``); where both agree the outline is red with a cyan rim.

Missed ground truth. A ground-truth lesion is shown as missed when the evaluation
(:mod:`mstools.metrics.lesionwise`, MSSEG-2 rule with its defaults) counts it and
does not detect it: lesions are 6-connected components strictly larger than
``MIN_LESION_MM3`` (3 mm3), so a smaller fragment is neither a lesion of the
evaluation's table nor a missed lesion on the page.

Drawing. The slice rows are palette images drawn with NumPy and Pillow
(:mod:`mstools.report.raster`: tens of milliseconds a row, the same bytes on every
machine); matplotlib draws the cohort histograms only, imported on first use.
"""

from __future__ import annotations

import io as _bytes_io
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from mstools.metrics.defaults import CONNECTIVITY, MIN_LESION_MM3
from mstools.report import raster

#: Outline colours: detections, ground truth; and their widths (px at ``DPI``), the
#: ground truth's wider so that it shows as a rim around a detection drawn over it.
DETECTION_COLOUR = raster.COLOURS[raster.RED]
TRUTH_COLOUR = raster.COLOURS[raster.CYAN]
DETECTION_OUTLINE_PX = 2
TRUTH_OUTLINE_PX = 4
#: Lesions shown per case when the caller does not say (largest first).
DEFAULT_MAX_LESIONS = 10
#: Figure width (inches) and resolution: a 9 in x 90 dpi row is 810 px wide, a few
#: palette PNG of about 120 kB and a few tens of ms per row on a 1 mm case
#: (benchmarks/bench_report.py). Titles and L/R letters are ``FONT_PT`` points high.
FIGURE_WIDTH_IN = 9.0
DPI = 90
FONT_PT = 9
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
ZOOM_COLOUR = raster.COLOURS[raster.YELLOW]
#: Height of the zoomed panels, at most this fraction of a full panel's width.
ZOOM_HEIGHT = 0.75


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


@dataclass(frozen=True)
class MissedLesion:
    """A ground-truth lesion the evaluation counts and does not detect (display grid)."""

    label: int                # component label (6-connected, scan order of the box holding the lesions)
    voxels: int
    centroid: np.ndarray      # display-grid indices (i, j, k)
    reason: str               # the rule's words, e.g. "no detected lesion larger than 3 mm3 overlaps it"


#: How the page says which ground-truth lesions are shown as missed.
MISSED_RULE = (f"Missed as in the metrics table: ground-truth lesions larger than {MIN_LESION_MM3:g} mm3 "
               f"({CONNECTIVITY}-connected components, MSSEG-2 rule)")


def missed_lesions(truth: np.ndarray, detected: np.ndarray, voxel_mm3: float) -> list[MissedLesion]:
    """The ground-truth lesions that the evaluation's default rule misses, largest first.

    Lesions and their matching are those of ``mstools evaluate``: 6-connected
    components strictly larger than ``MIN_LESION_MM3`` on both sides, Anima's MSSEG-2
    rule (:func:`mstools.metrics.lesionwise.msseg2_rule`). A smaller fragment is not a
    lesion there (the sensitivity ignores it), so it is not listed as missed here either.
    """
    from mstools.metrics.lesionwise import (ANIMA_RULE, find_components, lesion_overlap, min_voxels,
                                            msseg2_rule)

    truth, detected = np.asarray(truth) > 0, np.asarray(detected) > 0
    if truth.shape != detected.shape:
        raise ValueError(f"truth has shape {truth.shape}, detections {detected.shape}")
    # label within the box holding both masks (components never leave it): ms, not a full-volume pass
    either = truth | detected
    box = tuple(slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 0)
                for hit in (np.flatnonzero(either.any(axis=tuple(a for a in range(3) if a != axis)))
                            for axis in range(3)))
    gt = find_components(truth[box], connectivity=ANIMA_RULE.connectivity)
    pred = find_components(detected[box], connectivity=ANIMA_RULE.connectivity)
    table = lesion_overlap(gt, pred, min_lesion_voxels=min_voxels(ANIMA_RULE.min_lesion_mm3, voxel_mm3))
    verdict = msseg2_rule(table).ground_truth
    offset = np.array([b.start for b in box], dtype=np.float64)
    missed = [MissedLesion(label=int(g), voxels=int(gt.sizes[g]), centroid=gt.centroids[g] + offset,
                           reason=_plain(verdict.reason[g].removeprefix("missed: ")))
              for g in np.flatnonzero(table.gt_counted & ~verdict.positive)]
    return sorted(missed, key=lambda lesion: (-lesion.voxels, lesion.label))


def _plain(reason: str) -> str:
    """The rule's reason in the page's words (detections, not "counted predicted lesions")."""
    return (reason.replace("counted predicted lesion", f"detected lesion larger than {MIN_LESION_MM3:g} mm3")
            .replace("predicted lesion", "detected lesion"))


# --------------------------------------------------------------------------- figures


def case_figures(baseline: np.ndarray, followup: np.ndarray, labels: np.ndarray, affine: np.ndarray, *,
                 difference: np.ndarray | None = None, ground_truth: np.ndarray | None = None,
                 brain_mask: np.ndarray | None = None, lesions: Sequence[Mapping] = (),
                 max_lesions: int = DEFAULT_MAX_LESIONS, show_missed: bool = True,
                 difference_name: str = "follow-up - baseline", zoom_mm: float = ZOOM_MM,
                 score_name: str | None = "score", dpi: int = DPI,
                 width_in: float = FIGURE_WIDTH_IN, what: str = "new lesion",
                 legend: str | None = None, figure_kind: str = "lesion") -> list[Figure]:
    """The pictures of a case page, one row (baseline | follow-up | difference) each.

    One row per new lesion (connected label of ``labels``), largest first, at most
    ``max_lesions``, on the display-grid axial slice through the lesion's centroid; then,
    when a ground truth is given and ``show_missed``, one row per ground-truth lesion
    the evaluation counts as missed (:func:`missed_lesions`; largest first, at most
    ``max_lesions``). Without any detection, one row on the brain's middle slice says
    that none was found (unless a missed ground-truth lesion is shown instead).
    ``lesions`` (rows of the detector's lesion table, optional) adds the world
    centroid and score to the captions; ``score_name`` names the score (None leaves it
    out: a score that is 1 by construction says nothing). ``difference`` defaults to
    follow-up minus baseline. ``zoom_mm`` > 0 adds, under each lesion's row, the three images zoomed on
    a field of that size (mm, at least 3 equivalent diameters of the lesion) around it.
    ``what`` names the outlined lesions in captions ("new lesion"; "enlarging lesion" for
    the grown parts of :mod:`mstools.activity`), ``legend`` replaces the colour legend and
    ``figure_kind`` the figures' kind. Inputs share one grid (``affine``); they are not modified.
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
    legend = legend or (f"red: detected {what}s" + ("; cyan: ground truth" if truth is not None else ""))
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
        text = _lesion_caption(label, rank, len(detected), voxels, affine, rows.get(str(label)), score_name,
                               what=what)
        figures.append(Figure(png=draw(k, centre, voxels), caption=f"{text}; display axial slice {k}. {legend}.",
                              kind=figure_kind, label=label, slice_index=k))
    if truth is not None and show_missed and np.any(truth):
        missed = missed_lesions(truth, view["labels"] > 0, voxel_mm3)
        for rank, lesion in enumerate(missed[:max(max_lesions, 0)], 1):
            k = int(round(lesion.centroid[2]))
            figures.append(Figure(
                png=draw(k, lesion.centroid, lesion.voxels),
                caption=(f"Missed ground-truth lesion {rank} of {len(missed)} ({lesion.voxels * voxel_mm3:.1f} mm3; "
                         f"{lesion.reason}); display axial slice {k}. {legend}. {MISSED_RULE}."),
                kind="missed", label=lesion.label, slice_index=k))
    if not detected and not figures:
        k = _middle_slice(brain, view["baseline"].shape)
        figures.append(Figure(png=draw(k), kind="overview", label=None, slice_index=k,
                              caption=f"No new lesion was found; middle axial slice {k} of the brain. {legend}."))
    return figures


def _lesion_caption(label: int, rank: int, total: int, voxels: int, affine: np.ndarray,
                    row: Mapping | None, score_name: str | None = "score", *, what: str = "new lesion") -> str:
    volume = voxels * abs(float(np.linalg.det(np.asarray(affine)[:3, :3])))
    text = f"{what[:1].upper()}{what[1:]} {label} ({rank} of {total} by size): {volume:.1f} mm3"
    if row is not None:
        centre = [_number(row.get(f"centroid_{axis}_mm")) for axis in "xyz"]
        if all(c is not None for c in centre):
            text += ", centroid (" + ", ".join(f"{c:.1f}" for c in centre) + ") mm"
        voxel = [_number(row.get(f"centroid_{axis}")) for axis in "ijk"]
        if all(v is not None for v in voxel):
            text += ", voxel (" + ", ".join(f"{v:.0f}" for v in voxel) + ") of the stored grid"
        score, mean = _number(row.get("score_max")), _number(row.get("score_mean"))
        if score is not None and score_name:
            # a score constant over the lesion (the filter's probability) is one number
            text += f", {score_name} {score:.4g}" if mean == score else f", {score_name} max {score:.3g}"
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
    """A matplotlib figure on the Agg canvas (charts only; imported here, on first use)."""
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


def font_px(dpi: int) -> int:
    """Text height (px) of titles and letters: 9 pt at ``dpi``."""
    return max(int(round(FONT_PT * dpi / 72)), 8)


def _panel(plane: np.ndarray, box: tuple[slice, slice], window, size: tuple[int, int]) -> np.ndarray:
    """Palette indices of ``plane[box]`` on screen (R right, A up), enlarged to ``size`` (w, h)."""
    return raster.enlarge(raster.grey(raster.screen(plane[box]), window), *size)


def _outlines(canvas: np.ndarray, detection: np.ndarray, truth: np.ndarray | None, box, size, scale: float) -> None:
    """Ground truth (cyan, wider) then detections (red) outlined in place on one panel."""
    for mask, colour, width in ((truth, raster.CYAN, TRUTH_OUTLINE_PX), (detection, raster.RED, DETECTION_OUTLINE_PX)):
        if mask is None:
            continue
        crop = mask[box]
        if not crop.any():
            continue
        canvas[raster.ring(raster.enlarge(raster.screen(crop), *size), max(int(round(width * scale)), 1))] = colour


def _row_png(panels, labels, truth, k: int, box: tuple[slice, slice], zoom: tuple[slice, slice] | None,
             spacing, dpi: int, width_in: float) -> bytes:
    """Baseline | follow-up | difference on axial slice ``k`` (cropped to ``box``), and under
    them, when ``zoom`` is given, the same zoomed on that box (NumPy + Pillow, see
    :mod:`mstools.report.raster`)."""
    n = len(panels)
    scale = dpi / DPI
    text = font_px(dpi)
    margin, gap, title_h = max(int(round(2 * scale)), 1), max(int(round(4 * scale)), 2), text + 5
    width = max(int(round(width_in * dpi)), n * 16)
    cell = (width - 2 * margin - (n - 1) * gap) // n
    full = raster.fit(box[0].stop - box[0].start, box[1].stop - box[1].start, spacing, cell)
    small = (raster.fit(zoom[0].stop - zoom[0].start, zoom[1].stop - zoom[1].start, spacing, cell,
                        int(round(cell * ZOOM_HEIGHT))) if zoom is not None else (0, 0))
    top = margin + title_h
    height = top + full[1] + (gap + small[1] if zoom is not None else 0) + margin
    canvas = np.full((height, width), raster.WHITE, np.uint8)
    truth_k = np.asarray(truth[:, :, k] > 0) if truth is not None else None
    detection_k = np.asarray(labels[:, :, k] > 0)
    for column, (title, volume, window) in enumerate(panels):
        plane = np.asarray(volume[:, :, k], dtype=np.float32)
        left = margin + column * (cell + gap)
        x = left + (cell - full[0]) // 2
        canvas[top:top + full[1], x:x + full[0]] = _panel(plane, box, window, full)
        _outlines(canvas[top:top + full[1], x:x + full[0]], detection_k, truth_k, box, full, scale)
        raster.write(canvas, title, margin + 1, left + cell // 2, size=text, align="centre")
        middle = top + full[1] // 2 - text // 2
        raster.write(canvas, "L", middle, x + 3, colour=raster.WHITE, size=text)
        raster.write(canvas, "R", middle, x + full[0] - 3, colour=raster.WHITE, size=text, align="right")
        if zoom is None:
            continue
        bi, bj = box
        zi, zj = zoom
        per_i, per_j = full[0] / (bi.stop - bi.start), full[1] / (bj.stop - bj.start)
        raster.dashed_box(canvas[top:top + full[1], x:x + full[0]],
                          int(round((bj.stop - zj.stop) * per_j)), int(round((zi.start - bi.start) * per_i)),
                          int(round((bj.stop - zj.start) * per_j)) - 1, int(round((zi.stop - bi.start) * per_i)) - 1,
                          raster.YELLOW, dash=max(int(round(4 * scale)), 2))
        y, x = top + full[1] + gap, left + (cell - small[0]) // 2
        canvas[y:y + small[1], x:x + small[0]] = _panel(plane, zoom, window, small)
        if column != 1:  # the zoomed follow-up stays clean: outlines would hide a small lesion
            _outlines(canvas[y:y + small[1], x:x + small[0]], detection_k, truth_k, zoom, small, scale)
    return raster.png(canvas)


def cohort_histograms(counts: Sequence[float], case_volumes: Sequence[float], lesion_volumes: Sequence[float] = (),
                      *, dpi: int = DPI, width_in: float = FIGURE_WIDTH_IN) -> bytes:
    """Histograms of new lesions per case, new-lesion volume per case and, when given,
    the volume of each new lesion (log axis), side by side, as one PNG (matplotlib)."""
    return _png(_histogram_figure(counts, case_volumes, lesion_volumes, dpi=dpi, width_in=width_in))


def count_ticks(top: int, *, most: int = 10) -> np.ndarray:
    """Integer ticks 0..``top`` of a count axis, at most ``most`` of them (every n-th integer)."""
    top = max(int(top), 0)
    step = max(int(np.ceil((top + 1) / most)), 1)
    return np.arange(0, top + 1, step)


def _histogram_figure(counts, case_volumes, lesion_volumes=(), *, dpi: int = DPI,
                      width_in: float = FIGURE_WIDTH_IN):
    counts = np.asarray([c for c in counts if np.isfinite(c)], dtype=float)
    case_volumes = np.asarray([v for v in case_volumes if np.isfinite(v)], dtype=float)
    lesion_volumes = np.asarray([v for v in lesion_volumes if np.isfinite(v) and v > 0], dtype=float)
    n_panels = 3 if lesion_volumes.size else 2
    figure = _new_figure(width_in, 2.8, dpi)
    axes = [figure.add_subplot(1, n_panels, n + 1) for n in range(n_panels)]
    top = int(counts.max()) if counts.size else 0
    # one bar per whole number of lesions, centred on it; ticks on the whole numbers only
    axes[0].hist(counts, bins=np.arange(-0.5, top + 1.5, 1.0), color="#4a78b5", edgecolor="white")
    axes[0].set_xticks(count_ticks(top))
    axes[0].set_xlim(-0.5, top + 0.5)
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
    return figure
