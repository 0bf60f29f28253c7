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
GeoDataFrame. An AOI of a hundred million tiles (the world at 10 m) is tiled one
zone at a time by :func:`tile_zones` (what :func:`tile_aoi` assembles, and what
the campaign planner counts without holding it): each zone's tiles
(:class:`ZoneTiles`) and :func:`table_order`, which places them in the table.

Tiling a zone is vectorised over blocks: blocks are tested against the AOI as
boxes, and only the tiles of blocks on the AOI's edge are tested one by one; the
zone rule (:func:`~rsembed_dask.geo.grid.utm_epsg` of each tile's centre) is
applied to the tiles of blocks near the zone's edges, blocks well inside the zone
(:data:`_CORE_DEG`) keep all their tiles and blocks well outside have none.

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

import functools
import hashlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
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

__all__ = ["DEFAULT_BLOCK", "TileLattice", "TileTable", "Tiling", "tile_aoi", "aoi_geometry",
           "ZoneTiles", "ZonedTiling", "table_order", "tile_zones"]

log = logging.getLogger(__name__)

#: Tiles per block side: 8 x 8 = 64 tiles (the default work unit) of 224 px at 3 uint16
#: bands is 1792 x 1792 px = 18.4 MiB, one request well under Earth Engine's 48 MiB.
DEFAULT_BLOCK = 8
# Lon/lat edges are densified to this step (degrees) before projecting to UTM, so a
# projected AOI edge is within metres of the true curve.
_DENSIFY_DEG = 0.05
# Tiles of blocks this far (degrees) inside their zone's band take the zone without their
# centres being projected back to lon/lat, blocks this far outside are skipped (the zone
# rule decides for the others) ...
_CORE_DEG = 0.01
# ... up to this latitude (UTM's coverage ends at 84 N and 80 S).
_CORE_MAX_LAT = 89.0
# Candidate blocks tested at once (bounds the memory of tiling a zone).
_BATCH_BLOCKS = 16384


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

    def tile_bounds(self, row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(left, bottom, right, top)`` arrays of tiles ``(row, col)``: each tile's
        ``tile_grid(row, col).bounds``, to the bit."""
        t = self.tile_m
        left, top = np.asarray(col, np.int64) * t, (np.asarray(row, np.int64) + 1) * t
        side = self.image_size * float(self.scale_m)
        return left, top - side, left + side, top

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
        if self._one_zone():
            return [int(self.epsg[0])]
        codes, first = np.unique(self.epsg, return_index=True)
        return [int(c) for c in codes[np.argsort(first)]]

    def _one_zone(self) -> bool:
        """All tiles in one zone (a zone's table: no sorting to find its zones)."""
        return len(self) > 0 and int(self.epsg.min()) == int(self.epsg.max())

    def rows(self, start: int, stop: int) -> TileTable:
        """Rows ``start:stop`` as a TileTable (views of this one's arrays)."""
        sl = slice(int(start), int(stop))
        return TileTable(self.scale_m, self.image_size, self.block, self.epsg[sl], self.row[sl], self.col[sl])

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
        if self._one_zone() and int(self.epsg[0]) == epsg:
            row, col = self.row, self.col
        else:
            m = self.epsg == epsg
            row, col = self.row[m], self.col[m]
        return int(row.min()), int(row.max()), int(col.min()), int(col.max())


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
        Every tile of every scale, in memory (20 bytes a tile): for areas of tens of
        millions of tiles, :func:`tile_zones` gives the same tables zone by zone.
    """
    return tile_zones(aoi, scales, image_size, block=block).tiling()


def tile_zones(aoi: Any, scales: Sequence[float] = DEFAULT_SCALES, image_size: int = DEFAULT_IMAGE_SIZE, *,
               block: int = DEFAULT_BLOCK) -> ZonedTiling:
    """The tiling of :func:`tile_aoi`, to be built one UTM zone at a time.

    Nothing is tiled yet: :meth:`ZonedTiling.zone_tiles` tiles one zone of one scale
    per step, :meth:`ZonedTiling.tiling` all of them (which is :func:`tile_aoi`).
    Parameters
    ----------
    aoi, scales, image_size, block
        As in :func:`tile_aoi`.

    Returns
    -------
    ZonedTiling

    Raises
    ------
    SpecError
        As :func:`tile_aoi`.
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
    return ZonedTiling(scales_t, int(image_size), int(block), geom.wkb, tuple(_zone_crs(geom)), geom)


@dataclass(frozen=True)
class ZoneTiles:
    """One zone's tiles at one scale, in table order: its complete blocks, then its incomplete ones.

    Attributes
    ----------
    table : TileTable
        The zone's tiles (one EPSG code; empty when the AOI misses the zone at this scale).
    n_full : int
        Rows of complete blocks (``block ** 2`` tiles each, block order) at the head of ``table``;
        the incomplete blocks (at the AOI's edges and the zone's seams) follow.
    """

    table: TileTable
    n_full: int

    def full(self) -> TileTable:
        """The complete blocks."""
        return self.table.rows(0, self.n_full)

    def partial(self) -> TileTable:
        """The incomplete blocks (a copy, which :func:`table_order` holds: a view would keep
        the whole zone's table alive until the last zone is tiled)."""
        part = self.table.rows(self.n_full, len(self.table))
        return TileTable(part.scale_m, part.image_size, part.block, part.epsg.copy(), part.row.copy(), part.col.copy())


def table_order(parts: Iterable[ZoneTiles]) -> Iterator[TileTable]:
    """A scale's tile table in consecutive pieces, from its zones' tiles in zone order.

    The table holds the complete blocks of every zone first (each yielded as its zone
    comes), then the incomplete ones (yielded after the last zone, in zone order): with
    chunks of ``block ** 2`` rows, each complete block is exactly one work unit. Empty
    pieces are yielded too (one complete piece per zone).

    Parameters
    ----------
    parts : iterable of ZoneTiles
        One scale's tiles, zone by zone.

    Yields
    ------
    TileTable
        Consecutive pieces of the scale's table.
    """
    held = []
    for part in parts:
        yield part.full()
        held.append(part.partial())
    yield from held


@dataclass(frozen=True, eq=False)
class ZonedTiling:
    """An AOI's tiling (:func:`tile_aoi`'s), tiled one UTM zone at a time (see :func:`tile_zones`).

    Attributes
    ----------
    scales : tuple of float
        Ascending.
    image_size, block : int
    aoi_wkb : bytes
        The AOI (EPSG:4326) as WKB.
    zones : tuple
        ``(epsg, (minlon, minlat, maxlon, maxlat))`` of each zone the AOI's bounds touch, with
        the zone's band, in table order (zones the AOI misses at a scale have no tiles).
    geom : shapely geometry
        The AOI (``aoi_wkb`` read once).
    """

    scales: tuple[float, ...]
    image_size: int
    block: int
    aoi_wkb: bytes
    zones: tuple[tuple[int, tuple[float, float, float, float]], ...]
    geom: Any = field(repr=False)

    def zone_tiles(self, scale_m: float) -> Iterator[ZoneTiles]:
        """Each zone's tiles at ``scale_m``, in zone order, tiled as they are asked for."""
        for epsg, band in self.zones:
            yield _tile_zone(self.geom, epsg, band, float(scale_m), self.image_size, self.block)

    def table(self, scale_m: float) -> TileTable:
        """The whole tile table of one scale (:func:`table_order` of its zones)."""
        pieces = list(table_order(self.zone_tiles(scale_m)))
        return TileTable(scale_m, self.image_size, self.block, *(
            np.concatenate([getattr(p, a) for p in pieces]) for a in ("epsg", "row", "col")))

    def tiling(self) -> Tiling:
        """Every scale's whole table: the :class:`Tiling` of :func:`tile_aoi`."""
        tables = tuple(self.table(s) for s in self.scales)
        for s, t in zip(self.scales, tables):
            log.info("tiled AOI at %g m: %d tiles in %d zones", s, len(t), len(t.zones()))
        return Tiling(self.scales, self.image_size, self.block, tables, self.aoi_wkb)


def _zone_lon(zone: int) -> tuple[float, float]:
    """Western and eastern longitude of UTM zone ``zone`` (1..60)."""
    return -180.0 + 6 * (zone - 1), -180.0 + 6 * zone


def _zone_crs(geom) -> list[tuple[int, tuple[float, float, float, float]]]:
    """UTM EPSG codes touched by ``geom``, with each zone's lon/lat band box."""
    minlon, minlat, maxlon, maxlat = geom.bounds
    # Zone numbers (EPSG code % 100) of the western and eastern edges, by the one zone rule.
    first, last = (int(code) % 100 for code in utm_epsg(np.array([minlon, maxlon]), 0.0, check=False))
    out = []
    for zone in range(first, last + 1):
        lo, hi = _zone_lon(zone)
        if maxlat >= 0:
            out.append((32600 + zone, (lo, 0.0, hi, UTM_MAX_LAT)))
        if minlat < 0:
            out.append((32700 + zone, (lo, UTM_MIN_LAT, hi, 0.0)))
    return out


@functools.lru_cache(maxsize=128)
def _zone_cores(epsg: int):
    """The zone's band shrunk and widened by :data:`_CORE_DEG` on its zone-rule edges (its
    longitudes, the equator), projected into the zone and prepared: a tile centre inside the
    first is in this zone by the zone rule, one outside the second is not. (Their chords stray
    from the projected curves by under a metre; the margin is over 100 m.)"""
    import shapely

    lo, hi = _zone_lon(epsg % 100)
    e = _CORE_DEG
    north = epsg < 32700
    inner = (lo + e, e, hi - e, _CORE_MAX_LAT) if north else (lo + e, -_CORE_MAX_LAT, hi - e, -e)
    outer = (lo - e, -e, hi + e, 90.0) if north else (lo - e, -90.0, hi + e, e)
    out = []
    for box in (inner, outer):
        band = shapely.segmentize(shapely.box(*box), _DENSIFY_DEG)
        band = shapely.transform(band, lambda c: np.column_stack(lonlat_to_xy(c[:, 0], c[:, 1], f"EPSG:{epsg}")))
        shapely.prepare(band)
        out.append(band)
    return tuple(out)


def _tile_zone(geom, epsg: int, band, scale_m: float, image_size: int, block: int) -> ZoneTiles:
    """Tiles of one zone: centre inside the zone's band, intersecting the AOI, in block order
    (serpentine from the north-west, row-major inside a block), complete blocks first."""
    import shapely

    crs, t = f"EPSG:{epsg}", scale_m * image_size
    lo, s, hi, n = band
    # Tiles whose centre is in the band reach at most half a diagonal beyond it: clip
    # the AOI to the band widened by a generous margin before projecting.
    margin = 2 * t / (111_000.0 * max(math.cos(math.radians(max(abs(s), abs(n)))), 0.05))
    region = shapely.intersection(geom, shapely.box(lo - margin, max(s - margin, -90), hi + margin,
                                                    min(n + margin, 90)))
    if region.is_empty:
        return _no_tiles(scale_m, image_size, block)
    region = shapely.transform(shapely.segmentize(region, _DENSIFY_DEG),
                               lambda c: np.column_stack(lonlat_to_xy(c[:, 0], c[:, 1], crs)))
    shapely.prepare(region)
    core, shell = _zone_cores(epsg)
    x0, y0, x1, y1 = region.bounds
    # Block-aligned index ranges, so blocks are the same whatever the AOI.
    b = block
    c_lo, c_hi = math.floor(x0 / t) // b * b, math.floor(x1 / t) // b * b + b - 1
    r_lo, r_hi = math.floor(y0 / t) // b * b, math.floor(y1 / t) // b * b + b - 1
    brows = np.arange(r_hi // b, r_lo // b - 1, -1, dtype=np.int64)  # north to south
    bcols = np.arange(c_lo // b, c_hi // b + 1, dtype=np.int64)
    k = np.arange(b * b)
    d_row, d_col = b - 1 - k // b, k % b  # a block's tiles, row-major from its north-west corner
    full: list[tuple[np.ndarray, np.ndarray]] = []
    part: list[tuple[np.ndarray, np.ndarray]] = []
    step = max(1, _BATCH_BLOCKS // len(bcols))
    for first in range(0, len(brows), step):  # a batch of block rows
        nr = len(brows[first:first + step])
        bcol = np.tile(bcols, (nr, 1))
        bcol[(first + np.arange(nr)) % 2 == 1] = bcols[::-1]  # serpentine: consecutive blocks are neighbours
        brow, bcol = np.repeat(brows[first:first + step], len(bcols)), bcol.ravel()
        boxes = shapely.box(bcol * b * t, brow * b * t, (bcol + 1) * b * t, (brow + 1) * b * t)
        hit = shapely.intersects(region, boxes)
        hit[hit] = shapely.intersects(shell, boxes[hit])  # a block wholly past the zone's edges has no tile
        if not hit.any():
            continue
        brow, bcol, boxes = brow[hit], bcol[hit], boxes[hit]
        row, col = brow[:, None] * b + d_row, bcol[:, None] * b + d_col  # (blocks, b * b)
        keep = np.ones(row.shape, bool)
        # A tile belongs to the zone and hemisphere of its centre: the zone rule decides for the
        # tiles of blocks not inside the zone's core (centres may lie a little past the coverage).
        check = np.repeat(~shapely.contains(core, boxes)[:, None], b * b, axis=1)
        if check.any():
            rr, cc = row[check], col[check]
            lon, lat = xy_to_lonlat((cc + 0.5) * t, (rr + 0.5) * t, crs)
            keep[check] = utm_epsg(lon, lat, check=False) == epsg
        # Blocks not inside the AOI, tile by tile: a tile intersects the AOI when its centre is
        # inside, else when its box does.
        edge = ~shapely.contains(region, boxes)[:, None] & keep
        if edge.any():
            rr, cc = row[edge], col[edge]
            hit = shapely.contains_xy(region, (cc + 0.5) * t, (rr + 0.5) * t)
            out = np.flatnonzero(~hit)
            hit[out] = shapely.intersects(region, shapely.box(cc[out] * t, rr[out] * t, (cc[out] + 1) * t,
                                                              (rr[out] + 1) * t))
            keep[edge] = hit
        whole = keep.all(axis=1)
        full.append((row[whole].ravel(), col[whole].ravel()))
        part.append((row[~whole][keep[~whole]], col[~whole][keep[~whole]]))
    if not full:
        return _no_tiles(scale_m, image_size, block)
    pieces = full + part
    row_all = np.concatenate([r for r, _ in pieces])
    col_all = np.concatenate([c for _, c in pieces])
    n_full = sum(len(r) for r, _ in full)
    return ZoneTiles(TileTable(scale_m, image_size, block, np.full(len(row_all), epsg, np.int32), row_all, col_all),
                     n_full)


def _no_tiles(scale_m: float, image_size: int, block: int) -> ZoneTiles:
    return ZoneTiles(TileTable(scale_m, image_size, block, np.zeros(0), np.zeros(0), np.zeros(0)), 0)
