"""Areas of interest as users give them: bbox text, vector files, GeoDataFrames, shapely geometries.

:func:`read_aoi` turns command-line text (``"minlon,minlat,maxlon,maxlat"`` or a
vector file) into a bbox tuple or a GeoDataFrame; :func:`aoi_geometry` turns any
accepted form into the one validated EPSG:4326 (multi)polygon that
:func:`~rsembed_dask.sampling.tiling.tile_aoi` tiles.

An AOI across the antimeridian is split at 180° into parts on each side: a ring
drawn from 179° to -179° (an edge longer than 180° of longitude is read the short
way, with a warning), a box ``179,0,-179,1`` (minlon > maxlon), or longitudes
beyond 180° (179..181). Never a band around the world.

Examples
--------
>>> read_aoi("-10,35,40,70")
(-10.0, 35.0, 40.0, 70.0)
>>> aoi_geometry((10.0, 45.0, 10.5, 45.3)).bounds
(10.0, 45.0, 10.5, 45.3)
>>> [g.bounds for g in aoi_geometry((179.0, 0.0, -179.0, 1.0)).geoms]
[(179.0, 0.0, 180.0, 1.0), (-180.0, 0.0, -179.0, 1.0)]
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SpecError
from .grid import UTM_MAX_LAT, UTM_MIN_LAT

if TYPE_CHECKING:
    import geopandas as gpd
    import shapely

__all__ = ["aoi_geometry", "aoi_bounds", "read_aoi"]

log = logging.getLogger(__name__)


def aoi_geometry(aoi: Any) -> shapely.Geometry:
    """The AOI as one shapely (multi)polygon in EPSG:4326.

    Parameters
    ----------
    aoi : GeoDataFrame, GeoSeries, shapely geometry or tuple
        A GeoDataFrame or GeoSeries (any CRS; rows are unioned), a shapely geometry
        (taken as EPSG:4326), or ``(minlon, minlat, maxlon, maxlat)``.

    Returns
    -------
    shapely.Polygon or shapely.MultiPolygon

    Raises
    ------
    SpecError
        ``field="aoi"`` (or ``"aoi.crs"``): not an area, invalid, empty, or outside
        UTM coverage.
    """
    import geopandas as gpd
    import shapely

    if isinstance(aoi, (tuple, list)) and len(aoi) == 4 and all(isinstance(v, (int, float)) for v in aoi):
        minlon, minlat, maxlon, maxlat = map(float, aoi)
        if not (minlon != maxlon and minlat < maxlat):
            raise SpecError("aoi", aoi, "a box (minlon, minlat, maxlon, maxlat) with min < max "
                                        "(minlon > maxlon: a box across the antimeridian)")
        if minlon > maxlon and -180 <= maxlon and minlon <= 180 and maxlon + 360 - minlon < 180:
            maxlon += 360.0  # e.g. (179, 0, -179, 1): 2° across 180°, split there below
        elif minlon > maxlon:  # (1, 0, 0, 1) is a swap, not 359° the other way round
            raise SpecError("aoi", aoi, "a box (minlon, minlat, maxlon, maxlat) with min < max (or, across "
                                        "the antimeridian, less than 180° from minlon east to maxlon)")
        geom = shapely.box(minlon, minlat, maxlon, maxlat)
        if maxlon - minlon > 180:  # densified: a bbox means what it says (-170..170 is 340° wide)
            geom = shapely.segmentize(geom, 90.0)
    elif isinstance(aoi, (gpd.GeoDataFrame, gpd.GeoSeries)):
        if aoi.crs is None:
            raise SpecError("aoi.crs", None, "an AOI with a CRS (use aoi.set_crs(...))")
        if len(aoi) == 0:
            raise SpecError("aoi", "an empty GeoDataFrame", "at least one polygon")
        geom = shapely.union_all(np.asarray(aoi.to_crs("EPSG:4326").geometry.array, dtype=object))
    elif isinstance(aoi, shapely.Geometry):
        geom = aoi
    else:
        raise SpecError("aoi", type(aoi).__name__,
                        "a GeoDataFrame, GeoSeries, shapely geometry or (minlon, minlat, maxlon, maxlat)")
    if geom.is_empty or shapely.get_type_id(geom) not in (3, 6):
        raise SpecError("aoi", geom.geom_type if not geom.is_empty else "an empty geometry",
                        "a Polygon or MultiPolygon area")
    geom = _across_antimeridian(geom)
    if not geom.is_valid:
        raise SpecError("aoi", f"invalid geometry: {shapely.is_valid_reason(geom)}",
                        "a valid polygon (try make_valid())")
    minlon, minlat, maxlon, maxlat = geom.bounds
    if minlat < UTM_MIN_LAT or maxlat > UTM_MAX_LAT:
        raise SpecError("aoi", f"latitudes {minlat:g}..{maxlat:g}",
                        f"latitudes in [{UTM_MIN_LAT:g}, {UTM_MAX_LAT:g}] (UTM coverage)")
    if minlon < -180 or maxlon > 180:
        raise SpecError("aoi", f"longitudes {minlon:g}..{maxlon:g}",
                        "longitudes in [-180, 180] (an AOI across the antimeridian may also run to 180 + x)")
    return geom


def _unwrap(lon: np.ndarray) -> np.ndarray:
    """Longitudes of a ring with every edge taken the short way (no step longer than 180°)."""
    steps = np.round(np.diff(lon) / 360.0)
    return lon - 360.0 * np.r_[0.0, np.cumsum(steps)]


def _unwrap_polygon(poly):
    """``poly`` with rings whose edges jump more than 180° of longitude read the short way."""
    import shapely

    ext = np.asarray(poly.exterior.coords)
    lon = _unwrap(ext[:, 0])
    if abs(lon[-1] - lon[0]) > 1e-9:
        raise SpecError("aoi", "a ring that winds around the globe",
                        "polygons that do not circle a pole (split the AOI at a meridian)")
    centre = 0.5 * (lon.min() + lon.max())
    holes = []
    for ring in poly.interiors:
        xy = np.asarray(ring.coords)
        hl = _unwrap(xy[:, 0])
        hl = hl + 360.0 * np.round((centre - 0.5 * (hl.min() + hl.max())) / 360.0)
        holes.append(np.column_stack([hl, xy[:, 1]]))
    return shapely.Polygon(np.column_stack([lon, ext[:, 1]]), holes)


def _across_antimeridian(geom):
    """Split a polygon across the antimeridian at 180° into parts within [-180, 180].

    Two signatures: an edge spanning more than 180° of longitude (a ring drawn from
    179° to -179° means the short way across 180°, not a band around the world), and
    longitudes beyond ±180° (179..181). Other geometries are returned as they are.
    """
    import shapely

    polys = list(geom.geoms) if shapely.get_type_id(geom) == 6 else [geom]
    jumps = any(np.any(np.abs(np.diff(np.asarray(r.coords)[:, 0])) > 180.0)
                for p in polys for r in (p.exterior, *p.interiors))
    minlon, _, maxlon, _ = geom.bounds
    if not jumps and -180.0 <= minlon and maxlon <= 180.0:
        return geom
    before = (minlon, maxlon)
    if jumps:
        polys = [_unwrap_polygon(p) for p in polys]
    world = shapely.MultiPolygon(polys) if len(polys) > 1 else polys[0]
    if not world.is_valid:
        return geom  # refused by the caller as it was given
    lo, _, hi, _ = world.bounds
    if hi - lo > 360.0 or lo < -540.0 or hi > 540.0:
        return geom  # longitudes out of range: refused by the caller
    parts = []
    for k in (-1, 0, 1):
        piece = shapely.intersection(world, shapely.box(-180.0 + 360 * k, -90.0, 180.0 + 360 * k, 90.0))
        piece = shapely.transform(piece, lambda c, k=k: c - np.array([360.0 * k, 0.0]))
        parts += [g for g in shapely.get_parts(piece) if shapely.get_type_id(g) == 3 and g.area > 0]
    out = shapely.MultiPolygon(parts) if len(parts) > 1 else parts[0]
    ranges = ", ".join(f"{g.bounds[0]:g}..{g.bounds[2]:g}" for g in parts)
    if jumps:
        log.warning("the AOI crosses the antimeridian (an edge spans more than 180° of longitude, "
                    "%g..%g): read the short way across 180° and split there into %d polygon(s) (longitudes %s); "
                    "to mean the long way round, add vertices so that no edge spans more than 180°",
                    *before, len(parts), ranges)
    else:
        log.info("the AOI reaches beyond ±180° (%g..%g): split at the antimeridian into %d polygon(s) "
                 "(longitudes %s)", *before, len(parts), ranges)
    return out


def aoi_bounds(geom: shapely.Geometry) -> tuple[float, float, float, float]:
    """``(west, south, east, north)`` of an EPSG:4326 AOI; ``west > east`` across the antimeridian.

    As a GeoJSON bbox (RFC 7946): the parts of an AOI split at 180° (179..180 and
    -180..-179) give ``(179, ., -179, .)``, not ``(-180, ., 180, .)``.

    Parameters
    ----------
    geom : shapely.Geometry
        The AOI in EPSG:4326 (as :func:`aoi_geometry` returns it).

    Returns
    -------
    tuple of float
        ``(west, south, east, north)`` in degrees.
    """
    import shapely

    minlon, minlat, maxlon, maxlat = (float(v) for v in geom.bounds)
    if minlon > -180.0 or maxlon < 180.0:
        return minlon, minlat, maxlon, maxlat
    parts = shapely.get_parts(geom)
    west = [p for p in parts if p.bounds[2] <= 0.0]
    east = [p for p in parts if p.bounds[2] > 0.0]
    if not west or not east:
        return minlon, minlat, maxlon, maxlat
    lo = min(p.bounds[0] for p in east)
    hi = max(p.bounds[2] for p in west) + 360.0
    if hi - lo >= maxlon - minlon:  # no narrower across 180°: a band around the world
        return minlon, minlat, maxlon, maxlat
    return lo, minlat, hi - 360.0, maxlat


def read_aoi(text: str) -> tuple[float, float, float, float] | gpd.GeoDataFrame:
    """The AOI named by ``text``: ``"minlon,minlat,maxlon,maxlat"`` or a vector file.

    Files are read with geopandas (GeoJSON, GeoPackage, Shapefile ...; ``.parquet``
    as GeoParquet).

    Parameters
    ----------
    text : str
        Four comma-separated numbers (degrees) or the path of an existing vector file.

    Returns
    -------
    tuple of float or geopandas.GeoDataFrame
        What :func:`~rsembed_dask.sampling.tiling.tile_aoi` (through :func:`aoi_geometry`) takes.

    Raises
    ------
    SpecError
        ``field="aoi"``: neither four comma-separated numbers nor a readable vector file.
    """
    allowed = ("'minlon,minlat,maxlon,maxlat' (degrees, e.g. -10,35,40,70) or an existing "
               "GeoJSON / GeoPackage / GeoParquet file")
    if not isinstance(text, str) or not text.strip():
        raise SpecError("aoi", text, allowed)
    path = Path(text).expanduser()
    if path.is_file():
        import geopandas as gpd
        from pyogrio.errors import DataSourceError

        try:
            gdf = gpd.read_parquet(path) if path.suffix.lower() in (".parquet", ".geoparquet") else gpd.read_file(path)
        except (OSError, ValueError, DataSourceError) as e:
            raise SpecError("aoi", text, f"{allowed} (reading it failed: {e})") from None
        log.debug("read AOI %s: %d rows", path, len(gdf))
        return gdf
    parts = text.split(",")
    if len(parts) == 4:
        try:
            box = tuple(float(p) for p in parts)
        except ValueError:
            raise SpecError("aoi", text, allowed) from None
        if not all(math.isfinite(v) for v in box):
            raise SpecError("aoi", text, allowed)
        return box
    raise SpecError("aoi", text, allowed)
