"""Slice pictures drawn with NumPy and Pillow: arrays in, PNG bytes out.

A picture is built as one 8-bit array of palette indices: indices ``0 .. GREYS - 1`` are a
linear grey ramp (0 black, ``WHITE`` white), the indices above it are the few colours
of the outlines and boxes. Slices are windowed to the ramp, enlarged by whole-voxel
(nearest-neighbour) sampling to the size that keeps their physical aspect, outlined by
the boundary pixels of a mask enlarged the same way, and captioned with Pillow's
default font. Pillow then writes a palette PNG with no text chunk (the report's pages
carry no web address, not even in image metadata). Nothing here depends on the clock,
the machine's fonts (the font is the one Pillow bundles) or a random state: the same
arrays give the same bytes with the same Pillow.

Drawing the report's rows this way takes a few tens of milliseconds where matplotlib
took about half a second per row plus a second to import (``benchmarks/bench_report.py``).
"""

from __future__ import annotations

import io as _bytes_io
from functools import lru_cache
from typing import Sequence

import numpy as np

#: Grey levels of the palette (indices 0 .. GREYS - 1); the colours follow.
GREYS = 248
BLACK = 0
WHITE = GREYS - 1
#: Palette index of each outline / box colour (hex codes of :mod:`mstools.report.figures`).
RED, CYAN, YELLOW = GREYS, GREYS + 1, GREYS + 2
COLOURS = {RED: "#ff2020", CYAN: "#00e5ff", YELLOW: "#ffd200"}
#: Height (px) of Pillow's default font on titles and letters.
FONT_PX = 11


def palette(colours: dict[int, str] = COLOURS) -> list[int]:
    """The 256-entry RGB palette: the grey ramp, then ``colours`` (index -> hex code)."""
    ramp = np.round(np.arange(GREYS) * 255.0 / (GREYS - 1)).astype(int)
    entries = [int(v) for g in ramp for v in (g, g, g)]
    for index in range(GREYS, 256):
        code = colours.get(index, "#000000").lstrip("#")
        entries += [int(code[n:n + 2], 16) for n in (0, 2, 4)]
    return entries


def grey(plane: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Palette indices of ``plane`` windowed linearly to ``[lo, hi]`` (clipped; NaN black)."""
    lo, hi = float(window[0]), float(window[1])
    scaled = (np.asarray(plane, dtype=np.float32) - lo) * np.float32((GREYS - 1) / max(hi - lo, 1e-12))
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=GREYS - 1, neginf=0.0)
    return np.clip(np.rint(scaled), 0, GREYS - 1).astype(np.uint8)


def screen(plane: np.ndarray) -> np.ndarray:
    """A display-grid slice ``[i, j]`` (i towards Right, j towards Anterior) as picture rows and
    columns: Right on the right, Anterior at the top (a view, nothing copied)."""
    return np.asarray(plane).T[::-1]


def fit(n_i: int, n_j: int, spacing: Sequence[float], max_width: int, max_height: int | None = None) -> tuple[int, int]:
    """Width and height (px) of an ``n_i`` x ``n_j`` voxel slice of voxel sizes ``spacing[:2]``
    (mm), as large as fits in ``max_width`` x ``max_height`` with the physical aspect kept."""
    width_mm, height_mm = n_i * float(spacing[0]), n_j * float(spacing[1])
    scale = max_width / max(width_mm, 1e-9)
    if max_height is not None:
        scale = min(scale, max_height / max(height_mm, 1e-9))
    return max(int(round(width_mm * scale)), 1), max(int(round(height_mm * scale)), 1)


def enlarge(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` (rows, columns) resampled to ``height`` x ``width`` px, nearest neighbour: each
    pixel takes the voxel its centre falls in."""
    image = np.asarray(image)
    rows = ((np.arange(height) + 0.5) * image.shape[0] / height).astype(np.intp)
    columns = ((np.arange(width) + 0.5) * image.shape[1] / width).astype(np.intp)
    # the indices never decrease: repeating each voxel is the same picture, faster than a gather
    return np.repeat(np.repeat(image, np.bincount(rows, minlength=image.shape[0]), axis=0),
                     np.bincount(columns, minlength=image.shape[1]), axis=1)


def dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` grown by ``steps`` pixels (square neighbourhood: a max filter, row then column)."""
    out = np.asarray(mask, bool)
    if steps <= 0 or not out.any():
        return out.copy()
    out = out.copy()
    for axis in (0, 1):
        grown = out.copy()
        for shift in range(1, steps + 1):
            ahead = [slice(None)] * 2
            behind = [slice(None)] * 2
            ahead[axis], behind[axis] = slice(shift, None), slice(None, -shift)
            grown[tuple(behind)] |= out[tuple(ahead)]
            grown[tuple(ahead)] |= out[tuple(behind)]
        out = grown
    return out


def ring(mask: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` pixels just outside ``mask``'s boundary (the mask's own pixels stay visible)."""
    mask = np.asarray(mask, bool)
    return dilate(mask, width) & ~mask


def dashed_box(canvas: np.ndarray, top: int, left: int, bottom: int, right: int, colour: int, *,
               dash: int = 4) -> None:
    """A 1-px dashed rectangle (rows ``top..bottom``, columns ``left..right``, inclusive, clipped
    to ``canvas``) drawn in place."""
    height, width = canvas.shape
    top, bottom = max(top, 0), min(bottom, height - 1)
    left, right = max(left, 0), min(right, width - 1)
    if top > bottom or left > right:
        return
    columns = np.arange(left, right + 1)
    rows = np.arange(top, bottom + 1)
    on_c = columns[((columns - left) // dash) % 2 == 0]
    on_r = rows[((rows - top) // dash) % 2 == 0]
    canvas[top, on_c] = colour
    canvas[bottom, on_c] = colour
    canvas[on_r, left] = colour
    canvas[on_r, right] = colour


@lru_cache(maxsize=4)
def font(size: int = FONT_PX):
    """Pillow's default font (its bundled FreeType face at ``size`` px when Pillow has FreeType,
    else its bitmap font): the same glyphs on every machine."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or without FreeType
        return ImageFont.load_default()


def text_size(text: str, size: int = FONT_PX) -> tuple[int, int]:
    left, top, right, bottom = font(size).getbbox(text)
    return int(right - min(left, 0)), int(bottom)


@lru_cache(maxsize=256)
def _glyphs(text: str, size: int) -> np.ndarray:
    """Coverage (0..1) of ``text``'s glyphs, one pixel of padding left and right."""
    from PIL import Image, ImageDraw

    width, height = text_size(text, size)
    glyphs = Image.new("L", (width + 2, height + 2), 0)
    ImageDraw.Draw(glyphs).text((1, 0), text, fill=255, font=font(size))
    alpha = np.asarray(glyphs, dtype=np.float32) / 255.0
    alpha.flags.writeable = False
    return alpha


def write(canvas: np.ndarray, text: str, row: int, column: int, *, colour: int = BLACK, size: int = FONT_PX,
          align: str = "left") -> None:
    """Draw ``text`` in place, its top-left corner (``align="left"``), top centre
    (``"centre"``) or top-right (``"right"``) at (``row``, ``column``).

    ``colour`` is a grey index; the glyphs' anti-aliasing is blended on the grey ramp
    (over a coloured pixel, a glyph pixel more than half covered replaces it).
    """
    if not text:
        return
    alpha = _glyphs(text, size)
    width = alpha.shape[1] - 2
    if align == "centre":
        column -= width // 2
    elif align == "right":
        column -= width
    r0, c0 = row, column - 1
    r1, c1 = min(r0 + alpha.shape[0], canvas.shape[0]), min(c0 + alpha.shape[1], canvas.shape[1])
    a0, b0 = max(-r0, 0), max(-c0, 0)
    r0, c0 = max(r0, 0), max(c0, 0)
    if r1 <= r0 or c1 <= c0:
        return
    alpha = alpha[a0:a0 + r1 - r0, b0:b0 + c1 - c0]
    region = canvas[r0:r1, c0:c1]
    is_grey = region < GREYS
    blended = np.rint(region.astype(np.float32) * (1 - alpha) + float(colour) * alpha).astype(np.uint8)
    region[...] = np.where(is_grey, blended, np.where(alpha > 0.5, np.uint8(colour), region))


def png(canvas: np.ndarray, colours: dict[int, str] = COLOURS) -> bytes:
    """The palette PNG of ``canvas`` (palette indices), with no metadata text."""
    from PIL import Image

    canvas = np.ascontiguousarray(canvas, dtype=np.uint8)
    image = Image.frombytes("P", (canvas.shape[1], canvas.shape[0]), canvas.tobytes())
    image.putpalette(palette(colours))
    buffer = _bytes_io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)  # as small as 6 here, twice as fast
    return buffer.getvalue()
