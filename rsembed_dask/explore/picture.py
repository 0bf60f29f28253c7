"""Map pictures a person can read: a grid of cells as a PNG with a title, a legend and a scale bar.

A tiling store's zone grid holds one cell per tile: a few dozen cells a side, which as a
PNG of one pixel per cell is a stamp. :func:`map_png` draws such a grid upsampled by
nearest neighbour (each cell a square block of pixels) to at least :data:`MIN_LONG_SIDE`
pixels on its long side, cells without data transparent (alpha 0, shown over a light
checkerboard-free page), a title (zone, scale, what the colours are), a legend (swatches
for the RGB channels and "no data", or a colour bar for a scalar map such as a change
score) and a scale bar in kilometres. Pillow only (no matplotlib).

Examples
--------
>>> rgba = np.zeros((2, 3, 4), np.uint8); rgba[0, 0] = (255, 0, 0, 255)
>>> layout = map_png(rgba, "/tmp/map.png", "EPSG32631, 20 m", cell_m=4480.0)  # doctest: +SKIP
>>> layout.factor                                                               # doctest: +SKIP
171
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..errors import SpecError

__all__ = ["map_png", "scalar_rgba", "bin_points", "MapLayout", "MIN_LONG_SIDE", "CHANGE_COLOURS"]

#: Pixels on the long side of a map's drawing area, at least (cells are upsampled to reach it).
MIN_LONG_SIDE = 512
#: Colour ramp of scalar maps (a change score: low dark blue, high yellow; viridis-like stops).
CHANGE_COLOURS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], np.float64)
_MARGIN = 16
_TITLE_H = 34
_LEGEND_H = 54
_BAR_W = 260
_NO_DATA = "no data (transparent)"
_PAGE = (255, 255, 255, 255)
_INK = (20, 20, 20, 255)


@dataclass(frozen=True)
class MapLayout:
    """Where the cells went: cell ``(r, c)`` covers pixels ``[y0 + r*factor, y0 + (r+1)*factor)``
    by ``[x0 + c*factor, ...)`` of the PNG, whose size is ``(width, height)``."""

    x0: int
    y0: int
    factor: int
    width: int
    height: int


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font, one size
        return ImageFont.load_default()


def scalar_rgba(values: ArrayLike, vmin: float | None = None, vmax: float | None = None,
                colours: np.ndarray = CHANGE_COLOURS) -> tuple[np.ndarray, float, float]:
    """Colour a scalar grid ``(H, W)`` (NaN: no data) with a ramp.

    Parameters
    ----------
    values : array_like
        The grid, NaN where there is no data (transparent).
    vmin, vmax : float, optional
        The ends of the ramp (default the finite values' range).
    colours : ndarray
        ``(K, 3)`` uint8 colours of the ramp.

    Returns
    -------
    tuple of (ndarray, float, float)
        ``(rgba (H, W, 4) uint8, vmin, vmax)``.
    """
    v = np.asarray(values, np.float64)
    if v.ndim != 2:
        raise SpecError("values", f"an array of shape {v.shape}", "a 2-D grid (rows, columns)")
    finite = np.isfinite(v)
    lo = float(np.nanmin(v)) if vmin is None and finite.any() else float(vmin or 0.0)
    hi = float(np.nanmax(v)) if vmax is None and finite.any() else float(vmax if vmax is not None else 1.0)
    if not hi > lo:
        hi = lo + 1.0
    t = np.clip((np.where(finite, v, lo) - lo) / (hi - lo), 0.0, 1.0) * (len(colours) - 1)
    k = np.minimum(t.astype(int), len(colours) - 2)
    f = (t - k)[..., None]
    rgb = colours[k] * (1 - f) + colours[k + 1] * f
    rgba = np.zeros(v.shape + (4,), np.uint8)
    rgba[..., :3] = np.rint(rgb).astype(np.uint8)
    rgba[..., 3] = np.where(finite, 255, 0)
    return rgba, lo, hi


def _scale_bar_km(map_width_px: int, factor: int, cell_m: float) -> tuple[float, int]:
    """A round length (km) about a quarter of the map's width, and its length in pixels."""
    metres_per_px = cell_m / factor
    target = map_width_px * metres_per_px / 4 / 1000.0
    nice = min((v * 10.0 ** e for e in range(-2, 5) for v in (1, 2, 5)), key=lambda v: abs(np.log(v / target)))
    return nice, max(1, int(round(nice * 1000.0 / metres_per_px)))


def map_png(rgba: ArrayLike, path: str | os.PathLike, title: str, *, cell_m: float | None = None,
            channels: Sequence[str] | None = None, colour_bar: tuple[float, float, str] | None = None,
            min_long_side: int = MIN_LONG_SIDE, metadata: Mapping[str, str] | None = None) -> MapLayout:
    """Write a grid of cells ``(H, W, 4)`` uint8 RGBA as a readable PNG.

    Parameters
    ----------
    rgba : array_like ``(H, W, 4)`` uint8
        One colour per cell; alpha 0 where there is no data (kept transparent in the PNG).
    path : str or path
        The PNG to write.
    title : str
        Drawn above the map (say the zone, the scale and what the colours are).
    cell_m : float, optional
        Ground size of a cell (m): a scale bar in km is drawn.
    channels : sequence of three str, optional
        Names of the red, green and blue channels (e.g. ``("PC1", "PC2", "PC3")``): a legend
        of swatches. Ignored with ``colour_bar``.
    colour_bar : (vmin, vmax, label), optional
        A scalar map: a colour bar of :data:`CHANGE_COLOURS` from ``vmin`` to ``vmax``.
    min_long_side : int
        Pixels on the long side of the map area, at least.
    metadata : mapping of str to str, optional
        PNG text chunks written beside the picture (``Image.open(path).text``); ``Title``
        is always ``title``.

    Returns
    -------
    MapLayout
        Where each cell was drawn (for tests and overlays).
    """
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    a = np.asarray(rgba)
    if a.ndim != 3 or a.shape[2] != 4 or a.dtype != np.uint8 or 0 in a.shape[:2]:
        raise SpecError("rgba", f"an array of shape {a.shape} and dtype {a.dtype}", "(H, W, 4) uint8 with H, W >= 1")
    h, w = a.shape[:2]
    factor = max(1, -(-int(min_long_side) // max(h, w)))
    big = np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)
    mw, mh = w * factor, h * factor
    title_font, font = _font(16), _font(13)
    measure = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    title_w = int(measure.textlength(title, font=title_font))
    legend_w = 40 + int(measure.textlength(_NO_DATA, font=font))
    if colour_bar is not None:
        legend_w += _BAR_W + 24 + int(measure.textlength(colour_bar[2], font=font))
    elif channels is not None:
        legend_w += sum(24 + int(measure.textlength(c, font=font)) for c in channels)
    width = max(mw + 2 * _MARGIN, title_w + 2 * _MARGIN, legend_w + 2 * _MARGIN, 420)
    height = _TITLE_H + mh + _LEGEND_H + _MARGIN
    page = Image.new("RGBA", (width, height), _PAGE)
    x0, y0 = (width - mw) // 2, _TITLE_H
    # The map area is transparent where there is no data (the page shows through nowhere there).
    page.paste(Image.new("RGBA", (mw, mh), (0, 0, 0, 0)), (x0, y0))
    page.paste(Image.fromarray(big, "RGBA"), (x0, y0))
    draw = ImageDraw.Draw(page)
    draw.text((_MARGIN, 8), title, fill=_INK, font=title_font)
    draw.rectangle([x0 - 1, y0 - 1, x0 + mw, y0 + mh], outline=(120, 120, 120, 255))
    ly = y0 + mh + 12
    x = _MARGIN
    if colour_bar is not None:
        vmin, vmax, label = colour_bar
        bar_w = _BAR_W
        ramp, _, _ = scalar_rgba(np.linspace(0.0, 1.0, bar_w)[None, :], 0.0, 1.0)
        page.paste(Image.fromarray(np.repeat(ramp, 12, axis=0), "RGBA"), (x, ly))
        draw.text((x, ly + 15), f"{vmin:.3g}", fill=_INK, font=font)
        right = f"{vmax:.3g}"
        draw.text((x + bar_w - draw.textlength(right, font=font), ly + 15), right, fill=_INK, font=font)
        draw.text((x + bar_w + 8, ly - 1), label, fill=_INK, font=font)
        x += bar_w + 8 + int(draw.textlength(label, font=font)) + 16
    elif channels is not None:
        for name, colour in zip(channels, ((220, 30, 30), (30, 170, 30), (40, 60, 220))):
            draw.rectangle([x, ly, x + 12, ly + 12], fill=(*colour, 255))
            draw.text((x + 16, ly - 1), name, fill=_INK, font=font)
            x += 24 + int(draw.textlength(name, font=font))
    # "no data": an outlined empty swatch (the map is transparent there).
    draw.rectangle([x, ly, x + 12, ly + 12], outline=(120, 120, 120, 255))
    draw.text((x + 16, ly - 1), _NO_DATA, fill=_INK, font=font)
    if cell_m is not None and cell_m > 0:
        km, px = _scale_bar_km(mw, factor, float(cell_m))
        px = min(px, mw)
        bx, by = x0 + mw - px, ly + 28
        draw.rectangle([bx, by, bx + px, by + 4], fill=_INK)
        text = f"{km:g} km"
        draw.text((bx + px - draw.textlength(text, font=font), by + 6), text, fill=_INK, font=font)
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    info = PngInfo()
    for key, value in {"Title": title, **dict(metadata or {})}.items():
        info.add_text(str(key), str(value))
    page.save(os.fspath(path), pnginfo=info)
    return MapLayout(x0, y0, factor, width, height)


def bin_points(lon: ArrayLike, lat: ArrayLike, values: ArrayLike, cells: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Average ``values`` of points on a grid of square ground cells, at most ``cells`` a side.

    Longitudes are shrunk by the cosine of the mean latitude so that cells are about square
    on the ground (a map of a few hundred kilometres; not an equal-area projection).

    Parameters
    ----------
    lon, lat : array_like ``(N,)``
        Points in degrees (EPSG:4326).
    values : array_like ``(N, K)``
        What each point carries (e.g. an RGB colour); rows holding a NaN are left out.
    cells : int
        Cells on the long side of the grid.

    Returns
    -------
    tuple of (ndarray, ndarray, float)
        ``(mean (rows, cols, K) float64, NaN where no point falls; count (rows, cols) int;
        cell size in metres, approximate)``. Row 0 is the north.

    Examples
    --------
    >>> mean, count, cell_m = bin_points([0.0, 1.0], [0.0, 0.0], [[1.0], [3.0]], cells=2)
    >>> mean[..., 0].tolist(), count.tolist()
    ([[1.0, 3.0]], [[1, 1]])
    """
    x0, y = np.asarray(lon, np.float64), np.asarray(lat, np.float64)
    v = np.asarray(values, np.float64)
    if v.ndim != 2 or v.shape[0] != x0.shape[0] or y.shape != x0.shape or not x0.size:
        raise SpecError("values", f"{v.shape} values at {x0.shape} / {y.shape} points",
                        "one row of values per point, and at least one point")
    shrink = max(float(np.cos(np.radians(np.nanmean(y)))), 1e-6)
    x = x0 * shrink
    w, s_, e, n = float(x.min()), float(y.min()), float(x.max()), float(y.max())
    span = max(e - w, n - s_, 1e-9)
    cols = max(1, int(round(cells * (e - w) / span)))
    rows = max(1, int(round(cells * (n - s_) / span)))
    c = np.minimum(((x - w) / span * cells).astype(int), cols - 1)
    r = np.minimum(((n - y) / span * cells).astype(int), rows - 1)
    keep = np.isfinite(v).all(axis=1)
    total = np.zeros((rows, cols, v.shape[1]))
    count = np.zeros((rows, cols), np.int64)
    np.add.at(total, (r[keep], c[keep]), v[keep])
    np.add.at(count, (r[keep], c[keep]), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count[..., None] > 0, total / count[..., None], np.nan)
    return mean, count, span / cells * 111_320.0
