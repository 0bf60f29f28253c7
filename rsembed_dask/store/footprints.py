"""Footprints of stored samples in EPSG:4326: what each embedding was computed from.

A cube stores each sample's geometry as given (a point, a polygon, or a tile). The
embedding at one scale describes the pixels fetched for it: for a point, the square
of ``2 * buffer_m`` around it; for a polygon, the bounding square of its UTM box; for
a tile, the tile itself. Both are snapped to the scale's pixel lattice in the sample's
UTM zone (the rule is :meth:`rsembed_dask.sampling.SampleTable.footprint`'s, used here
as is). This module turns those UTM squares into EPSG:4326 polygons for interchange
formats (GeoParquet, STAC).

Polygons are counter-clockwise; a square crossing the antimeridian becomes a
MultiPolygon split at +/-180 degrees, so every longitude stays in [-180, 180].

Examples
--------
>>> import shapely
>>> fp = stored_footprints(["a"], [shapely.Point(10.0, 45.0).wkb_hex], scale_m=10.0, image_size=224)
>>> fp[0].geom_type, len(fp[0].exterior.coords)
('Polygon', 5)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import SpecError
from ..geo.grid import lonlat_to_xy, utm_epsg, xy_to_lonlat

__all__ = ["stored_footprints", "split_antimeridian", "DENSIFY_M"]

log = logging.getLogger(__name__)

#: Footprint edges longer than this (metres) get intermediate vertices before projecting to
#: lon/lat, so a large polygon footprint follows the curved edge within centimetres.
DENSIFY_M = 5_000.0


def _geometries(wkb: Sequence[Any]) -> np.ndarray:
    """Stored geometries (WKB bytes or hex, as the cube's ``geometry`` coordinate holds them)."""
    import shapely

    # Hex decoded here: GEOS parses hex WKB about 3x slower than bytes.fromhex and binary WKB.
    values = np.asarray([w if isinstance(w, (bytes, bytearray)) else _unhex(str(w)) for w in wkb], dtype=object)
    return np.asarray(shapely.from_wkb(values), dtype=object)


def _unhex(text: str) -> bytes | str:
    """Hex WKB as bytes (text that is not hex is left to shapely, which says what is wrong with it)."""
    try:
        return bytes.fromhex(text)
    except ValueError:
        return text


def stored_footprints(ids: Sequence[Any], wkb: Sequence[Any], *, scale_m: float, image_size: int,
                      buffer_m: float | None = None, tiles: bool = False) -> np.ndarray:
    """The fetched footprint of each stored sample at ``scale_m``, as EPSG:4326 polygons.

    Parameters
    ----------
    ids : sequence of str or int
        Sample ids (unique), in the order wanted.
    wkb : sequence of bytes or hex str
        The samples' stored geometries (EPSG:4326), aligned with ``ids``.
    scale_m : float
        Pixel size in metres.
    image_size : int
        The campaign's model input size (a point's default footprint is that many pixels).
    buffer_m : float, optional
        The campaign's ``buffer_m`` (half-side of point footprints), None for the default.
    tiles : bool
        The geometries are tiles of a tiling store: they are their own footprints.

    Returns
    -------
    numpy.ndarray of shapely geometries
        Polygons (MultiPolygons across the antimeridian), counter-clockwise, in ``ids`` order.

    Raises
    ------
    SpecError
        ``ids`` and ``wkb`` differ in length, or a geometry is missing.
    """
    import shapely

    ids = list(ids)
    geoms = _geometries(wkb)
    if len(ids) != len(geoms):
        raise SpecError("wkb", f"{len(geoms)} geometries", f"one per id ({len(ids)})")
    absent = shapely.is_missing(geoms)
    missing = absent | shapely.is_empty(np.where(absent, np.array(None, dtype=object), geoms))
    if missing.any():
        raise SpecError("wkb", f"no geometry for sample {ids[int(np.flatnonzero(missing)[0])]!r}",
                        "a stored geometry for every sample")
    if tiles:
        return split_antimeridian(geoms)
    return _sample_footprints(ids, geoms, float(scale_m), int(image_size), buffer_m)


def _sample_footprints(ids: list, geoms: np.ndarray, scale_m: float, image_size: int,
                       buffer_m: float | None) -> np.ndarray:
    """Footprints of points and polygons by the sample table's own footprint rule.

    Points (the bulk of a campaign) are done on arrays, one projection per UTM zone
    (:func:`_point_bounds`: the numbers :func:`~rsembed_dask.geo.grid.point_grid` gives one
    by one); polygons go through :func:`~rsembed_dask.sampling.samples.build_sample_table`
    and :meth:`~rsembed_dask.sampling.samples.SampleTable.footprint`, one by one.
    """
    import shapely

    n = len(ids)
    bounds = np.empty((n, 4))
    epsg = np.empty(n, dtype=np.int64)
    ref_lon = np.empty(n)
    points = shapely.get_type_id(geoms) == 0
    if points.any():  # a point's lon/lat are its own, its zone the rule's (as build_sample_table)
        lon, lat = shapely.get_x(geoms[points]), shapely.get_y(geoms[points])
        epsg[points], ref_lon[points] = utm_epsg(lon, lat, check=False), lon
        half = buffer_m if buffer_m is not None else image_size * scale_m / 2
        for code in np.unique(epsg[points]):
            rows = np.flatnonzero(points & (epsg == code))
            bounds[rows] = _point_bounds(ref_lon[rows], shapely.get_y(geoms[rows]), f"EPSG:{int(code)}",
                                         half, scale_m)
    if not points.all():
        import geopandas as gpd
        import pandas as pd

        from ..sampling.samples import build_sample_table

        rows = np.flatnonzero(~points)
        sub = [ids[i] for i in rows]
        table = build_sample_table(gpd.GeoDataFrame(index=pd.Index(sub, dtype=object), geometry=geoms[rows],
                                                    crs="EPSG:4326"))
        where = {v: i for i, v in enumerate(table.ids.tolist())}
        table = table.take(np.array([where[v] for v in sub], dtype=np.int64))
        for j, i in enumerate(rows):
            grid = table.footprint(j, scale_m, image_size, buffer_m).grid
            bounds[i], epsg[i], ref_lon[i] = grid.bounds, grid.epsg, table.lon[j]
    out = np.empty(n, dtype=object)
    for code in np.unique(epsg):
        rows = np.flatnonzero(epsg == code)
        b = bounds[rows]
        boxes = shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3])
        long = np.flatnonzero(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) > DENSIFY_M)
        if long.size:
            boxes[long] = shapely.segmentize(boxes[long], DENSIFY_M)
        ref = ref_lon[rows]
        counts = shapely.get_num_coordinates(boxes)
        out[rows] = shapely.transform(
            boxes, lambda c, crs=f"EPSG:{int(code)}", ref=np.repeat(ref, counts): _near_lonlat(c, crs, ref))
    return split_antimeridian(out)


def _point_bounds(lon: np.ndarray, lat: np.ndarray, crs: str, buffer_m: float, scale_m: float) -> np.ndarray:
    """``(left, bottom, right, top)`` of the point footprints, as
    :func:`~rsembed_dask.geo.grid.point_grid` snaps them one by one (the same numbers, on arrays)."""
    if not buffer_m > 0:
        raise SpecError("buffer_m", buffer_m, "a positive distance in metres")
    cx, cy = lonlat_to_xy(np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64), crs)
    n = max(1, round(2 * buffer_m / scale_m))
    half = n * scale_m / 2
    x0 = np.round((np.asarray(cx) - half) / scale_m) * scale_m
    y0 = np.round((np.asarray(cy) + half) / scale_m) * scale_m
    side = n * scale_m
    return np.column_stack([x0, y0 - side, x0 + side, y0])


def _near_lonlat(xy: np.ndarray, crs: str, ref_lon: np.ndarray) -> np.ndarray:
    """UTM coordinates as lon/lat, each longitude within 180 degrees of ``ref_lon`` (no wrap)."""
    lon, lat = xy_to_lonlat(xy[:, 0], xy[:, 1], crs)
    lon = ref_lon + (np.asarray(lon) - ref_lon + 180.0) % 360.0 - 180.0
    return np.column_stack([lon, lat])


def split_antimeridian(geoms: Any) -> np.ndarray:
    """Polygons reaching past +/-180 degrees split into MultiPolygons within [-180, 180].

    A footprint across the antimeridian is stored (and built) with longitudes that run
    past 180 (or below -180) rather than wrapping around the world; each such geometry
    becomes the union of its parts on either side. Every result is oriented
    counter-clockwise (exterior rings), as GeoParquet's ``orientation`` declares.
    """
    import shapely

    geoms = np.asarray(geoms, dtype=object)
    b = shapely.bounds(geoms)
    past = (b[:, 0] < -180.0) | (b[:, 2] > 180.0)
    out = geoms.copy()
    for i in np.flatnonzero(past):
        g = geoms[i]
        parts = []
        for shift in (-360.0, 0.0, 360.0):
            moved = shapely.transform(g, lambda c, s=shift: c + np.array([s, 0.0]))
            part = shapely.clip_by_rect(moved, -180.0, -90.0, 180.0, 90.0)
            if not part.is_empty and part.area > 0:
                parts.extend(shapely.get_parts(part).tolist())
        out[i] = shapely.MultiPolygon(parts) if len(parts) > 1 else parts[0]
    if past.any():
        log.debug("split %d footprint(s) at the antimeridian", int(past.sum()))
    return np.asarray(shapely.orient_polygons(out, exterior_cw=False), dtype=object)
