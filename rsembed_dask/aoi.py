"""Areas of interest as users give them: bbox text, vector files, GeoDataFrames, shapely geometries.

:func:`read_aoi` turns command-line text (``"minlon,minlat,maxlon,maxlat"`` or a
vector file) into a bbox tuple or a GeoDataFrame; :func:`aoi_geometry` turns any
accepted form into the one validated EPSG:4326 (multi)polygon that
:func:`~rsembed_dask.tiling.tile_aoi` tiles.

Examples
--------
>>> read_aoi("-10,35,40,70")
(-10.0, 35.0, 40.0, 70.0)
>>> aoi_geometry((10.0, 45.0, 10.5, 45.3)).bounds
(10.0, 45.0, 10.5, 45.3)
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from .errors import SpecError
from .grid import UTM_MAX_LAT, UTM_MIN_LAT

__all__ = ["aoi_geometry", "read_aoi"]

log = logging.getLogger(__name__)


def aoi_geometry(aoi):
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
        if not (minlon < maxlon and minlat < maxlat):
            raise SpecError("aoi", aoi, "a box (minlon, minlat, maxlon, maxlat) with min < max")
        geom = shapely.box(minlon, minlat, maxlon, maxlat)
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
    if not geom.is_valid:
        raise SpecError("aoi", f"invalid geometry: {shapely.is_valid_reason(geom)}",
                        "a valid polygon (try make_valid())")
    minlon, minlat, maxlon, maxlat = geom.bounds
    if minlat < UTM_MIN_LAT or maxlat > UTM_MAX_LAT:
        raise SpecError("aoi", f"latitudes {minlat:g}..{maxlat:g}",
                        f"latitudes in [{UTM_MIN_LAT:g}, {UTM_MAX_LAT:g}] (UTM coverage)")
    if minlon < -180 or maxlon > 180:
        raise SpecError("aoi", f"longitudes {minlon:g}..{maxlon:g}", "longitudes in [-180, 180]")
    return geom


def read_aoi(text: str):
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
        What :func:`~rsembed_dask.tiling.tile_aoi` (through :func:`aoi_geometry`) takes.

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
