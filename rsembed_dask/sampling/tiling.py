"""Tiling an area of interest: non-overlapping footprints per scale on per-UTM-zone lattices.

At scale ``s`` a tile is ``image_size`` pixels of ``s`` metres a side (2,240 m at
10 m for 224 px). Tile ``(row, col)`` of a zone covers ``x`` in ``[col*T, (col+1)*T]``
and ``y`` in ``[row*T, (row+1)*T]`` of that UTM zone (``T`` the tile side): tiles are
snapped to the pixel lattice, so neighbours share one pixel grid and a block of
them is one Earth Engine request.

A tile belongs to the zone (and hemisphere) of its centre, so the zones'
tilings meet at the seams without gaps or double coverage farther than one
footprint from the seam. Tiles are kept when they intersect the AOI; they are
grouped in blocks of ``block x block`` tiles (row-major inside, blocks serpentine
per zone), which is the order of the sample table: the complete blocks of every
zone first, then the incomplete ones at the AOI's edges and the seams. With the
default chunk size (``block**2``) every complete block is exactly one work unit,
served by one request.

The table holds three integers per tile; ids, geometries and the per-sample
columns the pipeline needs are generated per chunk (:meth:`TileTable.slice`,
:meth:`TileTable.chunks`), so an AOI of millions of tiles never exists as one
GeoDataFrame.

Examples
--------
>>> from shapely import box
>>> tiling = tile_aoi(box(10.0, 45.0, 10.5, 45.3), scales=[10, 40])
>>> [len(t) for t in tiling.tables]
[287, 20]
>>> tiling.tables[0].slice(0, 2).ids.tolist()
['32632_10m_2239_264', '32632_10m_2239_265']
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..geo.aoi import aoi_geometry  # re-exported: AOI input handling lives in rsembed_dask.geo.aoi
from ..errors import SpecError
from ..geo.grid import UTM_MAX_LAT, UTM_MIN_LAT, PixelGrid, lonlat_to_xy, utm_epsg, xy_to_lonlat
from .samples import SampleTable
from ..geo.keys import geohash_encode
from ..specs import DEFAULT_IMAGE_SIZE, DEFAULT_SCALES

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = ["DEFAULT_BLOCK", "TileLattice", "TileTable", "Tiling", "tile_aoi", "aoi_geometry"]

log = logging.getLogger(__name__)

#: Tiles per block side: 8 x 8 = 64 tiles (the default work unit) of 224 px at 3 uint16
#: bands is 1792 x 1792 px = 18.4 MiB, one request well under Earth Engine's 48 MiB.
DEFAULT_BLOCK = 8
# Lon/lat edges are densified to this step (degrees) before projecting to UTM, so a
# projected AOI edge is within metres of the true curve.
_DENSIFY_DEG = 0.05


@dataclass(frozen=True)
class TileLattice:
    """The tile lattice of one scale in one UTM zone.

    Attributes
    ----------
    epsg : int
        UTM zone (EPSG:326zz north, 327zz south).
    scale_m : float
        Pixel size in metres.
    image_size : int
        Tile side in pixels.
    """

    epsg: int
    scale_m: float
    image_size: int

    @property
    def tile_m(self) -> float:
        """Tile side in metres."""
        return self.scale_m * self.image_size

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    def tile_grid(self, row: int, col: int) -> PixelGrid:
        """The pixel grid of tile ``(row, col)``."""
        t = self.tile_m
        return PixelGrid(self.crs, col * t, (row + 1) * t, float(self.scale_m), self.image_size,
                         self.image_size)

    def raster_transform(self, row_max: int, col_min: int) -> tuple[float, ...]:
        """Affine ``(a, b, c, d, e, f)`` of a raster with one cell per tile, north-up,
        whose top-left cell is tile ``(row_max, col_min)``."""
        t = self.tile_m
        return (t, 0.0, col_min * t, 0.0, -t, (row_max + 1) * t)


class TileTable:
    """The tiles of one scale, in block order; a lazy :class:`~rsembed_dask.sampling.samples.SampleTable`.

    Attributes
    ----------
    scale_m : float
    image_size, block : int
    epsg, row, col : numpy.ndarray
        Zone and tile indices per tile (int32, int64, int64).
    skipped : pandas.DataFrame
        Always empty (tiles are valid by construction); kept for the pipeline.
    """

    id_name = "tile_id"

    def __init__(self, scale_m: float, image_size: int, block: int, epsg: np.ndarray,
                 row: np.ndarray, col: np.ndarray):
        import pandas as pd

        self.scale_m, self.image_size, self.block = float(scale_m), int(image_size), int(block)
        self.epsg = np.asarray(epsg, np.int32)
        self.row = np.asarray(row, np.int64)
        self.col = np.asarray(col, np.int64)
        self.skipped = pd.DataFrame({"id": pd.Series([], dtype=object),
                                     "reason": pd.Series([], dtype=object)})

    def __len__(self) -> int:
        return len(self.epsg)

    def __repr__(self) -> str:
        return (f"TileTable({len(self)} tiles of {self.image_size} px at {self.scale_m:g} m, "
                f"{len(self.zones())} UTM zones)")

    def __dask_tokenize__(self):
        h = hashlib.sha256(repr((self.scale_m, self.image_size, self.block)).encode())
        for a in (self.epsg, self.row, self.col):
            h.update(np.ascontiguousarray(a).tobytes())
        return ("TileTable", h.hexdigest())

    @property
    def tile_m(self) -> float:
        return self.scale_m * self.image_size

    def lattice(self, epsg: int) -> TileLattice:
        return TileLattice(int(epsg), self.scale_m, self.image_size)

    def zones(self) -> list[int]:
        """EPSG codes of the zones with tiles, in table order."""
        codes, first = np.unique(self.epsg, return_index=True)
        return [int(c) for c in codes[np.argsort(first)]]

    def ids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Tile ids ``"{epsg}_{scale}m_{row}_{col}"`` of rows ``start:stop`` (object of str)."""
        sl = slice(start, stop)
        return np.array([f"{e}_{self.scale_m:g}m_{r}_{c}" for e, r, c in
                         zip(self.epsg[sl].tolist(), self.row[sl].tolist(), self.col[sl].tolist())],
                        dtype=object)

    def slice(self, start: int, stop: int) -> SampleTable:
        """Rows ``start:stop`` as a :class:`SampleTable` of square polygons (their footprints
        at ``scale_m`` are exactly the tiles)."""
        import shapely

        sl = slice(int(start), int(stop))
        epsg, row, col = self.epsg[sl], self.row[sl], self.col[sl]
        n, t = len(epsg), self.tile_m
        x, y = (col + 0.5) * t, (row + 0.5) * t
        lon, lat, wkb = np.zeros(n), np.zeros(n), np.empty(n, dtype=object)
        for code in np.unique(epsg):
            rows = np.flatnonzero(epsg == code)
            crs = f"EPSG:{int(code)}"
            lon[rows], lat[rows] = xy_to_lonlat(x[rows], y[rows], crs)
            boxes = shapely.box(x[rows] - t / 2, y[rows] - t / 2, x[rows] + t / 2, y[rows] + t / 2)
            # Corners only: a UTM tile edge of a few km bends by millimetres in lon/lat. Corners
            # are kept on the side of their tile's centre: a tile across 180° runs to 180.01°,
            # it does not wrap to -179.99° (a polygon around the world).
            ref = np.repeat(lon[rows], 5)  # five coordinates per box, in order
            geo = shapely.transform(boxes, lambda c, crs=crs, ref=ref: _corners_lonlat(c, crs, ref))
            wkb[rows] = list(shapely.to_wkb(geo))
        half = np.full(n, t / 2)
        return SampleTable({"ids": self.ids(start, stop), "lon": lon, "lat": lat,
                            "geohash": geohash_encode(lon, lat), "wkb": wkb, "epsg": epsg.copy(),
                            "kind": np.full(n, "polygon", dtype=object), "x": x, "y": y,
                            "half_w": half, "half_h": half.copy(), "box_x": x.copy(), "box_y": y.copy()},
                           self.skipped, self.id_name)

    def chunks(self, size: int) -> Iterator[tuple[int, SampleTable]]:
        """``(start, table)`` for consecutive chunks of ``size`` rows."""
        for start in range(0, len(self), int(size)):
            yield start, self.slice(start, min(start + int(size), len(self)))

    def to_geodataframe(self, start: int = 0, stop: int | None = None) -> gpd.GeoDataFrame:
        """Rows ``start:stop`` (default all: mind the size) as a GeoDataFrame in EPSG:4326."""
        return self.slice(start, len(self) if stop is None else stop).to_geodataframe()

    def blocks(self) -> Iterator[tuple[int, int, int, int, int]]:
        """``(epsg, block_row, block_col, start, stop)`` of each block's contiguous rows."""
        if not len(self):
            return
        brow, bcol = self.row // self.block, self.col // self.block
        change = np.flatnonzero((np.diff(self.epsg) != 0) | (np.diff(brow) != 0) | (np.diff(bcol) != 0)) + 1
        starts = np.r_[0, change]
        stops = np.r_[change, len(self)]
        for s, e in zip(starts.tolist(), stops.tolist()):
            yield int(self.epsg[s]), int(brow[s]), int(bcol[s]), s, e

    def extent(self, epsg: int) -> tuple[int, int, int, int]:
        """``(row_min, row_max, col_min, col_max)`` of the zone's tiles."""
        m = self.epsg == epsg
        return (int(self.row[m].min()), int(self.row[m].max()), int(self.col[m].min()), int(self.col[m].max()))


def _corners_lonlat(xy: np.ndarray, crs: str, ref_lon: np.ndarray) -> np.ndarray:
    """Tile corners in lon/lat, each within 180° of its tile centre's longitude ``ref_lon``."""
    lon, lat = xy_to_lonlat(xy[:, 0], xy[:, 1], crs)
    lon = ref_lon + (np.asarray(lon) - ref_lon + 180.0) % 360.0 - 180.0
    return np.column_stack([lon, lat])


@dataclass(frozen=True, eq=False)
class Tiling:
    """Tilings of one AOI at several scales (one :class:`TileTable` per scale).

    Attributes
    ----------
    scales : tuple of float
    image_size, block : int
    tables : tuple of TileTable
        In ``scales`` order (ascending).
    aoi_wkb : bytes
        The AOI (EPSG:4326) as WKB.
    """

    scales: tuple[float, ...]
    image_size: int
    block: int
    tables: tuple[TileTable, ...]
    aoi_wkb: bytes

    def __len__(self) -> int:
        return sum(len(t) for t in self.tables)

    def __repr__(self) -> str:
        per = ", ".join(f"{s:g} m: {len(t)}" for s, t in zip(self.scales, self.tables))
        return f"Tiling({per} tiles of {self.image_size} px)"

    def __dask_tokenize__(self):
        return ("Tiling", self.token())

    def token(self) -> str:
        """A hash of the AOI and the tiling parameters (the identity of a tiling cube)."""
        h = hashlib.sha256(repr((self.scales, self.image_size, self.block)).encode())
        h.update(self.aoi_wkb)
        return h.hexdigest()[:16]

    def table(self, scale_m: float) -> TileTable:
        for s, t in zip(self.scales, self.tables):
            if s == float(scale_m):
                return t
        raise SpecError("scale_m", scale_m, f"one of the tiling's scales {list(self.scales)}")


def tile_aoi(aoi: Any, scales: Sequence[float] = DEFAULT_SCALES, image_size: int = DEFAULT_IMAGE_SIZE, *,
             block: int = DEFAULT_BLOCK) -> Tiling:
    """Cover ``aoi`` with non-overlapping ``image_size``-pixel tiles at each scale.

    Parameters
    ----------
    aoi : GeoDataFrame, GeoSeries, shapely geometry or bbox tuple
        The area (see :func:`~rsembed_dask.geo.aoi.aoi_geometry`).
    scales : sequence of float
        Pixel sizes in metres; each gets its own tiling. Their order does not matter:
        the tiling holds them sorted (so ``20, 10`` and ``10, 20`` are the same tiling).
    image_size : int
        Tile side in pixels (the model's input size: no resampling at fetch).
    block : int
        Tiles per block side (block order = table order).

    Returns
    -------
    Tiling
    """
    if isinstance(scales, (int, float)):
        scales = [scales]
    scales_t = tuple(float(s) for s in scales)
    if all(math.isfinite(s) for s in scales_t):
        scales_t = tuple(sorted(scales_t))
    if not scales_t or not all(math.isfinite(s) and s > 0 for s in scales_t) or len(set(scales_t)) != len(scales_t):
        raise SpecError("scales", list(scales), "distinct positive pixel sizes in metres")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
        raise SpecError("image_size", image_size, "an integer >= 16 (pixels per tile side)")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise SpecError("block", block, "an integer >= 1 (tiles per block side)")
    geom = aoi_geometry(aoi)
    tables = tuple(_tile_scale(geom, s, image_size, block) for s in scales_t)
    for s, t in zip(scales_t, tables):
        log.info("tiled AOI at %g m: %d tiles in %d zones", s, len(t), len(t.zones()))
    return Tiling(scales_t, int(image_size), int(block), tables, geom.wkb)


def _zone_crs(geom) -> list[tuple[int, tuple[float, float, float, float]]]:
    """UTM EPSG codes touched by ``geom``, with each zone's lon/lat band box."""
    minlon, minlat, maxlon, maxlat = geom.bounds
    # Zone numbers (EPSG code % 100) of the western and eastern edges, by the one zone rule.
    first, last = (int(code) % 100 for code in utm_epsg(np.array([minlon, maxlon]), 0.0, check=False))
    out = []
    for zone in range(first, last + 1):
        lo, hi = -180.0 + 6 * (zone - 1), -180.0 + 6 * zone
        if maxlat >= 0:
            out.append((32600 + zone, (lo, 0.0, hi, UTM_MAX_LAT)))
        if minlat < 0:
            out.append((32700 + zone, (lo, UTM_MIN_LAT, hi, 0.0)))
    return out


def _tile_scale(geom, scale_m: float, image_size: int, block: int) -> TileTable:
    parts = [_tile_zone(geom, epsg, band, scale_m, image_size, block) for epsg, band in _zone_crs(geom)]
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return TileTable(scale_m, image_size, block, np.zeros(0), np.zeros(0), np.zeros(0))
    epsg, row, col = (np.concatenate(a) for a in zip(*parts))
    # Complete blocks first (every zone's), then the incomplete ones at the AOI's edges and
    # zone seams: with chunks of block**2 rows, each complete block is exactly one unit.
    starts = np.r_[0, np.flatnonzero((np.diff(epsg) != 0) | (np.diff(row // block) != 0)
                                     | (np.diff(col // block) != 0)) + 1]
    sizes = np.diff(np.r_[starts, len(epsg)])
    full = np.repeat(sizes == block * block, sizes)
    order = np.r_[np.flatnonzero(full), np.flatnonzero(~full)]
    return TileTable(scale_m, image_size, block, epsg[order], row[order], col[order])


def _tile_zone(geom, epsg: int, band, scale_m: float, image_size: int, block: int):
    """Tiles of one zone: centre inside the zone's band, intersecting the AOI, in block order."""
    import shapely

    crs, t = f"EPSG:{epsg}", scale_m * image_size
    lo, s, hi, n = band
    # Tiles whose centre is in the band reach at most half a diagonal beyond it: clip
    # the AOI to the band widened by a generous margin before projecting.
    margin = 2 * t / (111_000.0 * max(math.cos(math.radians(max(abs(s), abs(n)))), 0.05))
    region = shapely.intersection(geom, shapely.box(lo - margin, max(s - margin, -90), hi + margin,
                                                    min(n + margin, 90)))
    if region.is_empty:
        return np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    region = shapely.transform(shapely.segmentize(region, _DENSIFY_DEG),
                               lambda c: np.column_stack(lonlat_to_xy(c[:, 0], c[:, 1], crs)))
    shapely.prepare(region)
    x0, y0, x1, y1 = region.bounds
    # Block-aligned index ranges, so blocks are the same whatever the AOI.
    b = block
    c_lo, c_hi = math.floor(x0 / t) // b * b, math.floor(x1 / t) // b * b + b - 1
    r_lo, r_hi = math.floor(y0 / t) // b * b, math.floor(y1 / t) // b * b + b - 1
    rows_out, cols_out = [], []
    brows = list(range(r_hi // b, r_lo // b - 1, -1))  # north to south
    for k, brow in enumerate(brows):
        bcols = list(range(c_lo // b, c_hi // b + 1))
        if k % 2:
            bcols.reverse()  # serpentine: consecutive blocks are neighbours
        bc = np.asarray(bcols, np.int64)
        boxes = shapely.box(bc * b * t, brow * b * t, (bc + 1) * b * t, (brow + 1) * b * t)
        hit = shapely.intersects(region, boxes)
        inside = hit & shapely.contains(region, boxes)
        for bcol, h, full in zip(bcols, hit.tolist(), inside.tolist()):
            if not h:
                continue
            r2, c2 = np.meshgrid(np.arange((brow + 1) * b - 1, brow * b - 1, -1),
                                 np.arange(bcol * b, (bcol + 1) * b), indexing="ij")
            rr, cc = r2.ravel(), c2.ravel()  # row-major from the north-west corner
            if not full:
                keep = shapely.intersects(region, shapely.box(cc * t, rr * t, (cc + 1) * t, (rr + 1) * t))
                rr, cc = rr[keep], cc[keep]
            rows_out.append(rr)
            cols_out.append(cc)
    if not rows_out:
        return np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    row, col = np.concatenate(rows_out), np.concatenate(cols_out)
    # A tile belongs to the zone and hemisphere of its centre.
    lon, lat = xy_to_lonlat((col + 0.5) * t, (row + 0.5) * t, crs)
    own = utm_epsg(lon, lat, check=False) == epsg  # centres may lie a little past the coverage
    return np.full(int(own.sum()), epsg, np.int32), row[own], col[own]
