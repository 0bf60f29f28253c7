"""Pixel grids in local UTM zones, snapped to multiples of the pixel size.

ScaleMAE is conditioned on ground sample distance, so every fetch happens in the
sample's UTM zone at true ground metres. Grids are snapped so that their edges
are multiples of ``scale_m``: neighbouring samples share one pixel lattice and
can be served by one larger request and cropped.

Examples
--------
>>> g = point_grid(3.0, 31.2, buffer_m=1120, scale_m=10)
>>> g.crs, g.width, g.height, g.scale_m
('EPSG:32631', 224, 224, 10.0)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
from numpy.typing import ArrayLike

from ..errors import SpecError

__all__ = ["PixelGrid", "utm_epsg", "point_grid", "bbox_grid", "lonlat_to_xy", "xy_to_lonlat"]

# UTM is defined from 80S to 84N; beyond that one needs polar stereographic (UPS).
UTM_MIN_LAT = -80.0
UTM_MAX_LAT = 84.0


@dataclass(frozen=True)
class PixelGrid:
    """A north-up pixel grid: CRS, top-left corner, pixel size and shape.

    Attributes
    ----------
    crs : str
        ``"EPSG:326zz"`` or ``"EPSG:327zz"`` (or any projected CRS in metres).
    x0, y0 : float
        Left and top edges in CRS units (metres).
    scale_m : float
        Pixel size in metres (square pixels).
    width, height : int
        Shape in pixels.
    """

    crs: str
    x0: float
    y0: float
    scale_m: float
    width: int
    height: int

    def __post_init__(self):
        if self.width < 1 or self.height < 1:
            raise SpecError("PixelGrid.shape", (self.height, self.width), "at least 1 x 1 pixels")
        if not self.scale_m > 0:
            raise SpecError("PixelGrid.scale_m", self.scale_m, "a positive pixel size in metres")

    @property
    def transform(self) -> tuple[float, float, float, float, float, float]:
        """GDAL/affine order ``(a, b, c, d, e, f)``: ``x = a*col + b*row + c``."""
        return (self.scale_m, 0.0, self.x0, 0.0, -self.scale_m, self.y0)

    @property
    def epsg(self) -> int:
        return int(self.crs.split(":")[1])

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in CRS units."""
        return (self.x0, self.y0 - self.height * self.scale_m,
                self.x0 + self.width * self.scale_m, self.y0)

    @property
    def center_xy(self) -> tuple[float, float]:
        left, bottom, right, top = self.bounds
        return (left + right) / 2, (bottom + top) / 2

    def nbytes(self, bands: int, itemsize: int) -> int:
        """Bytes of a ``bands x height x width`` array of ``itemsize``-byte values."""
        return bands * self.height * self.width * itemsize

    def crop(self, row: int, col: int, height: int, width: int) -> PixelGrid:
        """The sub-grid starting at pixel ``(row, col)``."""
        if row < 0 or col < 0 or row + height > self.height or col + width > self.width:
            raise SpecError("PixelGrid.crop", (row, col, height, width),
                            f"a window inside {self.height} x {self.width} pixels")
        return PixelGrid(self.crs, self.x0 + col * self.scale_m, self.y0 - row * self.scale_m,
                         self.scale_m, width, height)

    def offset_of(self, other: PixelGrid) -> tuple[int, int]:
        """Pixel ``(row, col)`` of ``other``'s top-left corner inside this grid.

        Raises SpecError unless ``other`` lies on the same lattice and inside.
        """
        if other.crs != self.crs or other.scale_m != self.scale_m:
            raise SpecError("PixelGrid", other, f"a grid in {self.crs} at {self.scale_m} m")
        col = (other.x0 - self.x0) / self.scale_m
        row = (self.y0 - other.y0) / self.scale_m
        r, c = round(row), round(col)
        if abs(row - r) > 1e-6 or abs(col - c) > 1e-6:
            raise SpecError("PixelGrid", other, "a grid on the same pixel lattice (snapped edges)")
        if r < 0 or c < 0 or r + other.height > self.height or c + other.width > self.width:
            raise SpecError("PixelGrid", other, "a grid inside the enclosing grid")
        return r, c

    @classmethod
    def union(cls, grids: Iterable[PixelGrid]) -> PixelGrid:
        """The smallest grid on the same lattice that covers all ``grids``."""
        grids = list(grids)
        if not grids:
            raise SpecError("PixelGrid.union", grids, "at least one grid")
        first = grids[0]
        for g in grids[1:]:
            if g.crs != first.crs or g.scale_m != first.scale_m:
                raise SpecError("PixelGrid.union", g, f"grids in {first.crs} at {first.scale_m} m")
        s = first.scale_m
        left = min(g.bounds[0] for g in grids)
        bottom = min(g.bounds[1] for g in grids)
        right = max(g.bounds[2] for g in grids)
        top = max(g.bounds[3] for g in grids)
        return cls(first.crs, left, top, s, round((right - left) / s), round((top - bottom) / s))


@overload
def utm_epsg(lon: float, lat: float, *, check: bool = True) -> int: ...
@overload
def utm_epsg(lon: ArrayLike, lat: ArrayLike, *, check: bool = True) -> np.ndarray: ...


def utm_epsg(lon: Any, lat: Any, *, check: bool = True) -> Any:
    """EPSG code of the standard UTM zone containing each ``(lon, lat)``: the one zone rule.

    Zones are the regular 6-degree bands, zone 60 ending at 180 degrees inclusive; the
    equator is north (EPSG:326zz), south of it EPSG:327zz. The Norway/Svalbard exceptions
    are not applied, so the zone is a pure function of longitude. Every sample, tile and
    grid is placed with this function: changing it refuses every existing cube (pinned
    byte for byte by ``tests/integration/test_golden.py``).

    Parameters
    ----------
    lon, lat : float or array-like
        Degrees (EPSG:4326); broadcast against each other.
    check : bool
        Refuse coordinates outside UTM's coverage (latitudes beyond [-80, 84]) or
        longitudes beyond [-180, 180]. False for points that may lie just beyond the
        coverage (tile centres past an AOI's edge): the rule is then applied as is.

    Returns
    -------
    int or numpy.ndarray of int32
        An int for scalar inputs, else an array of the broadcast shape.

    Raises
    ------
    SpecError
        With ``check``, naming the first coordinate outside the coverage.

    Examples
    --------
    >>> utm_epsg(3.0, 31.2)
    32631
    >>> utm_epsg(np.array([-180.0, 179.9, 180.0]), np.array([-1.0, 0.0, 84.0]))
    array([32701, 32660, 32660], dtype=int32)
    """
    lon_a = np.asarray(lon, dtype=np.float64)
    lat_a = np.asarray(lat, dtype=np.float64)
    if check:
        bad_lat = ~((lat_a >= UTM_MIN_LAT) & (lat_a <= UTM_MAX_LAT))
        if bad_lat.any():
            raise SpecError("lat", _first(lat, bad_lat), f"a latitude in [{UTM_MIN_LAT:g}, {UTM_MAX_LAT:g}] "
                                                         "(UTM coverage; polar areas are not supported)")
        bad_lon = ~((lon_a >= -180.0) & (lon_a <= 180.0))
        if bad_lon.any():
            raise SpecError("lon", _first(lon, bad_lon), "a longitude in [-180, 180]")
    zone = np.minimum(np.floor((lon_a + 180.0) / 6.0).astype(np.int64) + 1, 60)
    code = np.where(lat_a >= 0, 32600, 32700) + zone
    if code.ndim == 0:
        return int(code)
    return code.astype(np.int32)


def _first(given: Any, bad: np.ndarray) -> Any:
    """The first value of ``given`` where ``bad``, as given (a scalar stays itself)."""
    if np.ndim(given) == 0:
        return given
    return np.broadcast_to(np.asarray(given), bad.shape)[bad].ravel()[0].item()


@functools.lru_cache(maxsize=256)
def _transformer(src: str, dst: str):
    from pyproj import Transformer

    return Transformer.from_crs(src, dst, always_xy=True)


def lonlat_to_xy(lon: ArrayLike, lat: ArrayLike, crs: str) -> tuple[Any, Any]:
    """Project lon/lat (EPSG:4326) to ``crs``; works on scalars and arrays.

    Parameters
    ----------
    lon, lat : float or array-like
        Degrees.
    crs : str
        The target CRS, e.g. ``"EPSG:32631"``.

    Returns
    -------
    (x, y)
        Coordinates in ``crs`` (floats, or arrays shaped like the input).

    Examples
    --------
    >>> x, y = lonlat_to_xy(3.0, 0.0, "EPSG:32631")
    >>> round(float(x)), round(float(y))
    (500000, 0)
    """
    return _transformer("EPSG:4326", crs).transform(lon, lat)


def xy_to_lonlat(x: ArrayLike, y: ArrayLike, crs: str) -> tuple[Any, Any]:
    """Inverse of :func:`lonlat_to_xy`.

    Parameters
    ----------
    x, y : float or array-like
        Coordinates in ``crs``.
    crs : str
        Their CRS.

    Returns
    -------
    (lon, lat)
        Degrees (EPSG:4326), floats or arrays shaped like the input.
    """
    return _transformer(crs, "EPSG:4326").transform(x, y)


def point_grid(lon: float, lat: float, buffer_m: float, scale_m: float,
               crs: str | None = None) -> PixelGrid:
    """A square grid of side ``round(2 * buffer_m / scale_m)`` pixels centred on the point.

    The corner is snapped to the ``scale_m`` lattice of the UTM zone (or ``crs``).

    Parameters
    ----------
    lon, lat : float
        The centre, in degrees (EPSG:4326).
    buffer_m : float
        Half the side of the square, in metres.
    scale_m : float
        Pixel size in metres.
    crs : str, optional
        The grid's CRS (default: the UTM zone of the point, :func:`utm_epsg`).

    Returns
    -------
    PixelGrid

    Examples
    --------
    >>> g = point_grid(3.0, 31.2, 1120, 10)
    >>> g.crs, g.width, g.height
    ('EPSG:32631', 224, 224)
    """
    if not buffer_m > 0:
        raise SpecError("buffer_m", buffer_m, "a positive distance in metres")
    if not scale_m > 0:
        raise SpecError("scale_m", scale_m, "a positive pixel size in metres")
    crs = crs or f"EPSG:{utm_epsg(lon, lat)}"
    cx, cy = lonlat_to_xy(lon, lat, crs)
    n = max(1, round(2 * buffer_m / scale_m))
    half = n * scale_m / 2
    x0 = round((cx - half) / scale_m) * scale_m
    y0 = round((cy + half) / scale_m) * scale_m
    return PixelGrid(crs, float(x0), float(y0), float(scale_m), n, n)


def bbox_grid(minlon: float, minlat: float, maxlon: float, maxlat: float, scale_m: float,
              crs: str | None = None) -> PixelGrid:
    """The snapped grid covering a lon/lat box, in the UTM zone of its centre (or ``crs``).

    Parameters
    ----------
    minlon, minlat, maxlon, maxlat : float
        The box, in degrees (EPSG:4326).
    scale_m : float
        Pixel size in metres.
    crs : str, optional
        The grid's CRS (default: the UTM zone of the box's centre).

    Returns
    -------
    PixelGrid
    """
    if not scale_m > 0:
        raise SpecError("scale_m", scale_m, "a positive pixel size in metres")
    crs = crs or f"EPSG:{utm_epsg((minlon + maxlon) / 2, (minlat + maxlat) / 2)}"
    left, bottom, right, top = _transformer("EPSG:4326", crs).transform_bounds(
        minlon, minlat, maxlon, maxlat, densify_pts=21)
    x0 = math.floor(left / scale_m) * scale_m
    y0 = math.ceil(top / scale_m) * scale_m
    width = max(1, math.ceil(right / scale_m) - math.floor(left / scale_m))
    height = max(1, math.ceil(top / scale_m) - math.floor(bottom / scale_m))
    return PixelGrid(crs, float(x0), float(y0), float(scale_m), width, height)
