"""Map overlays of a tiling store's zone grids: one RGBA PNG per zone, in Web Mercator.

A web map stretches an image overlay linearly between two corners in its own
projection (Web Mercator, EPSG:3857), so the overlay is resampled onto a Web
Mercator pixel grid: each pixel's centre is carried into the zone's UTM CRS and
takes the colour of the grid cell it falls in (nearest; transparent where there is
no tile). Tile edges then land within one overlay pixel of where the grid's
transform puts them, whatever the zone's meridian convergence.

Examples
--------
>>> ov = zone_overlay("tiles.zarr", "20m/EPSG32631", colour_of_row)   # doctest: +SKIP
>>> ov.bounds                                                        # doctest: +SKIP
((30.24, 3.49), (30.68, 4.06))
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...store.layout import CRS_ATTR
from ...store.open import array_of, attr_text

__all__ = ["ZoneOverlay", "zone_overlay", "MERCATOR_R", "OVERLAY_PX_PER_TILE", "MAX_OVERLAY_PX",
           "mercator_to_lonlat", "lonlat_to_mercator"]

log = logging.getLogger(__name__)

#: Radius of the Web Mercator sphere (EPSG:3857), metres.
MERCATOR_R = 6_378_137.0
#: Overlay pixels along a tile's side (at most), so edges are sharp when zoomed in.
OVERLAY_PX_PER_TILE = 8
#: Longest side of an overlay, pixels: a continent's zone is drawn coarser, never bigger.
MAX_OVERLAY_PX = 2048


def lonlat_to_mercator(lon, lat) -> tuple[np.ndarray, np.ndarray]:
    """EPSG:4326 degrees to EPSG:3857 metres (spherical Web Mercator)."""
    lon, lat = np.asarray(lon, np.float64), np.asarray(lat, np.float64)
    return np.radians(lon) * MERCATOR_R, MERCATOR_R * np.log(np.tan(np.pi / 4 + np.radians(lat) / 2))


def mercator_to_lonlat(x, y) -> tuple[np.ndarray, np.ndarray]:
    """EPSG:3857 metres to EPSG:4326 degrees."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.degrees(x / MERCATOR_R), np.degrees(2 * np.arctan(np.exp(y / MERCATOR_R)) - np.pi / 2)


@dataclass(frozen=True)
class ZoneOverlay:
    """An overlay: PNG bytes, and its Web Mercator extent as ``((south, west), (north, east))`` degrees.

    ``mercator`` is ``(left, bottom, right, top)`` in EPSG:3857 metres; ``shape`` ``(height, width)``.
    """

    png: bytes
    bounds: tuple[tuple[float, float], tuple[float, float]]
    mercator: tuple[float, float, float, float]
    shape: tuple[int, int]


def _apply(t: Any, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Affine ``t`` applied to arrays of ``x``, ``y``."""
    return t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f


def zone_overlay(store: str, group: str, colour_of_row: Callable[[np.ndarray], np.ndarray]) -> ZoneOverlay:
    """Draw the zone grid ``group`` (e.g. ``"20m/EPSG32631"``) of the tiling store ``store``.

    Parameters
    ----------
    colour_of_row : callable
        ``(N,)`` int64 rows of the scale's sample cube (the grid's ``sample_index``) to
        ``(N, 4)`` uint8 RGBA (alpha 0: not drawn).

    Returns
    -------
    ZoneOverlay
    """
    import zarr
    from affine import Affine
    from PIL import Image
    from pyproj import Transformer

    root = zarr.open_group(store, mode="r", zarr_format=3)
    g = root[group]
    index = np.asarray(array_of(g, "sample_index")[...])  # type: ignore[arg-type]
    ny, nx = index.shape
    geo = attr_text(array_of(g, "spatial_ref").attrs, "GeoTransform")  # type: ignore[arg-type]
    transform = Affine.from_gdal(*(float(v) for v in geo.split()))
    crs = str(g.attrs[CRS_ATTR])
    # The grid's outline (densified edges) in Web Mercator gives the overlay's extent.
    t = np.linspace(0.0, 1.0, 33)
    edge_c = np.concatenate([t * nx, np.full_like(t, nx), (1 - t) * nx, np.zeros_like(t)])
    edge_r = np.concatenate([np.zeros_like(t), t * ny, np.full_like(t, ny), (1 - t) * ny])
    ex, ey = _apply(transform, edge_c, edge_r)
    to_merc = Transformer.from_crs(crs, "EPSG:3857", always_xy=True)
    mx, my = to_merc.transform(ex, ey)
    left, right, bottom, top = float(np.min(mx)), float(np.max(mx)), float(np.min(my)), float(np.max(my))
    # Pixel size: OVERLAY_PX_PER_TILE per tile side (a ground metre is 1/cos(lat) Mercator metres).
    _, lat_c = mercator_to_lonlat((left + right) / 2, (bottom + top) / 2)
    cell_merc = abs(transform.a) / max(math.cos(math.radians(float(lat_c))), 1e-6)
    px = max(cell_merc / OVERLAY_PX_PER_TILE, (right - left) / MAX_OVERLAY_PX, (top - bottom) / MAX_OVERLAY_PX)
    width, height = max(1, math.ceil((right - left) / px)), max(1, math.ceil((top - bottom) / px))
    right, bottom = left + width * px, top - height * px
    # Each pixel centre, carried into the zone's CRS, falls in one cell (or none).
    xs = left + (np.arange(width) + 0.5) * px
    ys = top - (np.arange(height) + 0.5) * px
    gx, gy = np.meshgrid(xs, ys)
    ux, uy = Transformer.from_crs("EPSG:3857", crs, always_xy=True).transform(gx.ravel(), gy.ravel())
    col, row = _apply(~transform, np.asarray(ux), np.asarray(uy))
    col, row = np.floor(col).astype(np.int64), np.floor(row).astype(np.int64)
    inside = (col >= 0) & (col < nx) & (row >= 0) & (row < ny)
    rows = np.full(col.shape, -1, np.int64)
    rows[inside] = index[row[inside], col[inside]]
    rgba = np.zeros((rows.size, 4), np.uint8)
    has = rows >= 0
    if has.any():
        uniq, inverse = np.unique(rows[has], return_inverse=True)
        rgba[has] = colour_of_row(uniq)[inverse]
    buf = io.BytesIO()
    Image.fromarray(rgba.reshape(height, width, 4), "RGBA").save(buf, format="PNG", optimize=False)
    west, south = mercator_to_lonlat(left, bottom)
    east, north = mercator_to_lonlat(right, top)
    log.debug("overlay %s: %d x %d px of %.1f m (Mercator)", group, width, height, px)
    return ZoneOverlay(buf.getvalue(), ((float(south), float(west)), (float(north), float(east))),
                       (left, bottom, right, top), (height, width))
