"""GeoDataFrame -> :class:`SampleTable`: ids, centroids, UTM zones, Hilbert order, work units.

Every sample is placed in the UTM zone of its centroid. Point footprints are
squares of ``2 * buffer_m`` around the point; polygon footprints are the
bounding square of the polygon's UTM bounding box. Rows are sorted along a
Hilbert curve so that consecutive chunks (work units) are spatially compact:
``table.slice(u.start, u.stop)`` for each ``u`` in ``work_units(len(table), scales, chunk)`` (:mod:`~rsembed_dask.sampling.units`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from ..errors import SpecError
from ..geo.grid import UTM_MAX_LAT, UTM_MIN_LAT, PixelGrid, lonlat_to_xy, point_grid, utm_epsg, xy_to_lonlat
from ..geo.keys import geohash_encode, hilbert_order

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = ["Footprint", "SampleTable", "build_sample_table", "samples_digest", "hilbert_order", "geohash_encode",
           "SKIP_INVALID"]

logger = logging.getLogger(__name__)

MAX_LISTED_IDS = 5
_SUPPORTED_IDS = (0, 3, 6)  # shapely type ids of Point, Polygon, MultiPolygon


@dataclass(frozen=True)
class Footprint:
    """Snapped UTM fetch ``grid`` of one sample at one scale, and ``roi``: the
    ``(top, left, bottom, right)`` fractions in [0, 1] of it covered by the geometry's
    bounding box (``(0, 0, 1, 1)`` for points)."""

    grid: PixelGrid
    roi: tuple[float, float, float, float]


_COLUMNS = ("ids", "lon", "lat", "geohash", "wkb", "epsg", "kind", "x", "y", "half_w", "half_h",
            "box_x", "box_y")


class SampleTable:
    """Columnar sample table in Hilbert order (build it with :func:`build_sample_table`).

    Attributes
    ----------
    ids : object array of the original ids (str or int).
    lon, lat : float64 EPSG:4326 centroid; ``geohash``: its precision-9 geohash.
    wkb : object array of WKB bytes of the EPSG:4326 geometry.
    epsg : int32 UTM EPSG code of the centroid's zone; ``kind``: "point" or "polygon".
    x, y : centroid in its UTM zone (metres).
    half_w, half_h : half extents of the UTM bounding box (0 for points);
        ``box_x, box_y``: its centre (the footprint is centred there, not on the centroid).
    skipped : pandas.DataFrame ``(id, reason)`` of rows left out by ``on_invalid="skip"``.
    id_name : name of the id (index name or id column).
    """

    ids: np.ndarray
    lon: np.ndarray
    lat: np.ndarray
    geohash: np.ndarray
    wkb: np.ndarray
    epsg: np.ndarray
    kind: np.ndarray
    x: np.ndarray
    y: np.ndarray
    half_w: np.ndarray
    half_h: np.ndarray
    box_x: np.ndarray
    box_y: np.ndarray

    def __init__(self, columns: dict[str, np.ndarray], skipped: pd.DataFrame | None = None,
                 id_name: str = "sample_id"):
        for name in _COLUMNS:
            if name not in columns or len(columns[name]) != len(columns["ids"]):
                raise SpecError(f"SampleTable.{name}", None, f"a column of {len(columns['ids'])} values")
            setattr(self, name, columns[name])
        self.skipped = skipped if skipped is not None else pd.DataFrame(
            {"id": pd.Series([], dtype=object), "reason": pd.Series([], dtype=object)})
        self.id_name = id_name

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        zones = np.unique(self.epsg).size if len(self) else 0
        return (f"SampleTable({len(self)} samples, {int((self.kind == 'point').sum())} points, "
                f"{zones} UTM zones, {len(self.skipped)} skipped)")

    def take(self, indices: np.ndarray | slice) -> SampleTable:
        """Rows at ``indices`` (integer array or slice), as a new table."""
        return SampleTable({k: getattr(self, k)[indices] for k in _COLUMNS}, self.skipped, self.id_name)

    def with_skipped(self, ids: Iterable[Any], reason: str) -> SampleTable:
        """This table with ``ids`` recorded as skipped for ``reason`` (rows already removed)."""
        more = pd.DataFrame({"id": pd.Series(list(ids), dtype=object), "reason": reason})
        return SampleTable({k: getattr(self, k) for k in _COLUMNS},
                           pd.concat([self.skipped, more], ignore_index=True), self.id_name)

    def extend(self, other: SampleTable) -> SampleTable:
        """This table's rows followed by ``other``'s (keeps this table's ``skipped`` and ``id_name``)."""
        return SampleTable({k: np.concatenate([getattr(self, k), getattr(other, k)]) for k in _COLUMNS},
                           self.skipped, self.id_name)

    def skipped_records(self) -> list[dict[str, Any]]:
        """:attr:`skipped` as JSON-safe records ``{"id", "reason"}`` (for the cube's attributes).

        Ids stay str or int; a missing id (None, NaN, NA) becomes None, and its reason
        names the input row; any other value becomes its text.
        """
        return [{"id": _json_id(i), "reason": str(r)}
                for i, r in zip(self.skipped["id"].tolist(), self.skipped["reason"].tolist())]

    def slice(self, start: int, stop: int) -> SampleTable:
        """Rows ``start:stop``, e.g. the samples of one :class:`~rsembed_dask.sampling.units.WorkUnit`."""
        return self.take(slice(start, stop))

    def __dask_tokenize__(self):
        h = hashlib.sha256(repr(self.ids.tolist()).encode())
        for name in ("lon", "lat", "epsg", "half_w", "half_h", "box_x", "box_y"):
            h.update(np.ascontiguousarray(getattr(self, name)).tobytes())
        h.update(b"".join(self.wkb))
        return ("SampleTable", h.hexdigest())

    def footprint(self, i: int, scale_m: float, image_size: int,
                  buffer_m: float | None = None) -> Footprint:
        """The snapped fetch grid of sample ``i`` at ``scale_m``, with its ROI fractions.

        Points: a square of half-side ``buffer_m`` (default ``image_size * scale_m / 2``,
        i.e. ``image_size`` pixels). Polygons: the bounding square of the UTM box,
        snapped to multiples of ``scale_m`` (one pixel more when needed to contain it).
        """
        if not scale_m > 0:
            raise SpecError("scale_m", scale_m, "a positive pixel size in metres")
        crs = f"EPSG:{int(self.epsg[i])}"
        if self.kind[i] == "point":
            buffer = buffer_m if buffer_m is not None else image_size * scale_m / 2
            grid = point_grid(float(self.lon[i]), float(self.lat[i]), buffer, scale_m, crs=crs)
            return Footprint(grid, (0.0, 0.0, 1.0, 1.0))
        s = float(scale_m)
        hw, hh = float(self.half_w[i]), float(self.half_h[i])
        cx, cy = float(self.box_x[i]), float(self.box_y[i])
        minx, maxx, miny, maxy = cx - hw, cx + hw, cy - hh, cy + hh
        n = max(1, math.ceil(2 * max(hw, hh) / s - 1e-9))
        while (x0 := _snap_start(minx, maxx, n, s)) is None or \
                (y_bottom := _snap_start(miny, maxy, n, s)) is None:
            n += 1
        y0 = y_bottom + n * s
        grid = PixelGrid(crs, float(x0), float(y0), s, n, n)
        side = n * s
        top, left, bottom, right = (float(np.clip(v, 0.0, 1.0)) for v in (
            (y0 - maxy) / side, (minx - x0) / side, (y0 - miny) / side, (maxx - x0) / side))
        return Footprint(grid, (top, left, bottom, right))

    def to_geodataframe(self) -> gpd.GeoDataFrame:
        """The samples as a GeoDataFrame in EPSG:4326, indexed by id, in Hilbert order."""
        import geopandas as gpd
        import shapely

        df = pd.DataFrame({k: getattr(self, k) for k in ("lon", "lat", "geohash", "epsg", "kind")},
                          index=pd.Index(self.ids, name=self.id_name))
        return gpd.GeoDataFrame(df, geometry=shapely.from_wkb(self.wkb), crs="EPSG:4326")


#: How messages name the way to leave invalid rows out (the CLI names its ``--skip-invalid`` instead).
SKIP_INVALID = "on_invalid='skip'"


def _snap_start(lo: float, hi: float, n: int, s: float) -> float | None:
    """Lattice start ``k*s`` so that ``[k*s, k*s + n*s]`` contains ``[lo, hi]``, centred if possible."""
    first = math.ceil((hi - n * s) / s - 1e-9)  # smallest k with k*s + n*s >= hi
    last = math.floor(lo / s + 1e-9)  # largest k with k*s <= lo
    if first > last:
        return None
    centred = round(((lo + hi) / 2 - n * s / 2) / s)
    return min(max(centred, first), last) * s


def _raise_first(why: np.ndarray, field: np.ndarray, allowed: np.ndarray, ids: np.ndarray) -> None:
    """Raise SpecError for the kind of problem of the first bad row, listing up to 5 ids."""
    first = int(np.flatnonzero(why != None)[0])  # noqa: E711
    rows = np.flatnonzero((field == field[first]) & (allowed == allowed[first]))
    listed = [_py(i) for i in ids[rows[:MAX_LISTED_IDS]]]
    more = f" and {len(rows) - MAX_LISTED_IDS} more" if len(rows) > MAX_LISTED_IDS else ""
    raise SpecError(field[first], f"ids {listed}{more} ({len(rows)} rows; first: {why[first]})",
                    f"{allowed[first]} (or {SKIP_INVALID} to leave such rows out)")


def _py(v):  # numpy scalars -> Python scalars, so ids pickle and print plainly
    return v.item() if isinstance(v, np.generic) else v


def _json_id(v: Any) -> str | int | None:
    """An id as JSON can hold it: str and int as they are, a missing id None, others as text."""
    v = _py(v)
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and math.isnan(v):
        return None
    if pd.api.types.is_scalar(v) and pd.isna(v):  # pd.NA, NaT, None-likes
        return None
    return str(v)


def build_sample_table(gdf: gpd.GeoDataFrame, *, id_column: str | None = None,
                       on_invalid: Literal["raise", "skip"] = "raise") -> SampleTable:
    """Validate a GeoDataFrame and turn it into a :class:`SampleTable` in Hilbert order.

    Parameters
    ----------
    gdf : geopandas.GeoDataFrame
        Points, polygons or multipolygons in any CRS (reprojected to EPSG:4326).
    id_column : str, optional
        Column holding the sample ids (str or int); default: the index.
    on_invalid : {"raise", "skip"}
        ``"raise"``: the first kind of problem raises SpecError naming the field
        (``"id"``, ``"geometry"``, ``"lat"``, ``"lon"``), up to five offending ids and
        what is allowed. ``"skip"``: offending rows are left out, listed in
        ``table.skipped`` with a reason, and a warning gives the count. Of duplicate
        ids the first row is kept.

    Returns
    -------
    SampleTable
        The samples in Hilbert order, with their footprints per scale to come.

    Raises
    ------
    SpecError
        Empty input, no CRS, unknown ``id_column``, a bad row with ``"raise"``, or no
        row left after skipping.
    """
    import geopandas as gpd
    import shapely

    if on_invalid not in ("raise", "skip"):
        raise SpecError("on_invalid", on_invalid, "'raise' or 'skip'")
    if isinstance(gdf, gpd.GeoSeries):
        gdf = gpd.GeoDataFrame(geometry=gdf)
    if not isinstance(gdf, gpd.GeoDataFrame):
        raise SpecError("gdf", type(gdf).__name__, "a geopandas GeoDataFrame")
    if len(gdf) == 0:
        raise SpecError("gdf", "an empty GeoDataFrame", "at least one row")
    if gdf.crs is None:
        raise SpecError("crs", None, "a GeoDataFrame with a CRS (use gdf.set_crs(...))")
    if id_column is not None and id_column not in gdf.columns:
        raise SpecError("id_column", id_column, "one of the columns " + ", ".join(map(str, gdf.columns[:20])))
    if id_column is not None:
        ids_raw, id_name = gdf[id_column].to_numpy(dtype=object), str(id_column)
    else:
        ids_raw, id_name = gdf.index.to_numpy(dtype=object), gdf.index.name or "sample_id"
    ids = np.array([_py(v) for v in ids_raw], dtype=object)
    n = len(ids)
    why, field, allowed = (np.full(n, None, dtype=object) for _ in range(3))

    def mark(mask, fld: str, reasons, ok: str) -> None:  # the first problem of a row wins
        """``reasons``: one text, or a function of the marked rows' indices giving one text each
        (only called when some row is marked: a million valid rows cost no message)."""
        mask = np.asarray(mask, dtype=bool) & (why == None)  # noqa: E711
        if not mask.any():
            return
        rows = np.flatnonzero(mask)
        texts = reasons(rows) if callable(reasons) else [reasons] * len(rows)
        why[rows], field[rows], allowed[rows] = np.asarray(texts, dtype=object), fld, ok

    is_null = pd.isna(pd.Series(ids, dtype=object)).to_numpy()
    mark(is_null, "id", lambda rows: [f"missing id (input row {i})" for i in rows], "non-null ids")
    ok_type = np.array([isinstance(v, (str, numbers.Integral)) and not isinstance(v, bool) for v in ids])
    mark(~ok_type, "id", lambda rows: [f"unsupported id type {type(ids[i]).__name__}" for i in rows],
         "str or int ids")
    dup = pd.Series(ids, dtype=object).duplicated(keep="first").to_numpy() & ~is_null
    mark(dup, "id", "duplicate id (first occurrence kept)", "unique ids")

    geoms = np.asarray(gdf.geometry.array, dtype=object)
    missing = shapely.is_missing(geoms)
    mark(missing, "geometry", "missing geometry", "a Point, Polygon or MultiPolygon per row")
    safe = np.where(missing, shapely.Point(), geoms)
    mark(shapely.is_empty(safe), "geometry", "empty geometry", "non-empty geometries")
    types = shapely.get_type_id(safe)
    mark(~np.isin(types, _SUPPORTED_IDS), "geometry",
         lambda rows: [f"unsupported geometry type {shapely.GeometryType(types[i]).name}" for i in rows],
         "Point, Polygon or MultiPolygon geometries (buffer lines first)")
    coords, idx = shapely.get_coordinates(safe, return_index=True)
    nonfinite = np.bincount(idx[~np.isfinite(coords).all(axis=1)], minlength=n) > 0
    mark(nonfinite, "geometry", "NaN or infinite coordinates", "finite coordinates")
    invalid = ~shapely.is_valid(safe) & (why == None)  # noqa: E711
    mark(invalid, "geometry", lambda rows: [f"invalid geometry: {shapely.is_valid_reason(safe[i])}" for i in rows],
         "valid geometries (try gdf.make_valid())")

    # reproject the rows still good, then check lon/lat ranges
    good = why == None  # noqa: E711
    geo = np.asarray(gpd.GeoSeries(np.where(good, safe, shapely.Point(0, 0)), crs=gdf.crs)
                     .to_crs("EPSG:4326").array, dtype=object)
    b = np.where(good[:, None], shapely.bounds(geo), 0.0)
    mark(~np.isfinite(b).all(axis=1), "geometry", "coordinates cannot be projected to EPSG:4326",
         "coordinates valid in the GeoDataFrame's CRS")
    b = np.nan_to_num(b)
    mark((b[:, 1] < UTM_MIN_LAT) | (b[:, 3] > UTM_MAX_LAT), "lat",
         lambda rows: [f"latitude outside [{UTM_MIN_LAT:g}, {UTM_MAX_LAT:g}]: {b[i, 1]:g}..{b[i, 3]:g}" for i in rows],
         f"latitudes in [{UTM_MIN_LAT:g}, {UTM_MAX_LAT:g}] (UTM coverage; polar areas unsupported)")
    mark((b[:, 0] < -180) | (b[:, 2] > 180), "lon",
         lambda rows: [f"longitude outside [-180, 180]: {b[i, 0]:g}..{b[i, 2]:g}" for i in rows],
         "longitudes in [-180, 180]")

    bad = why != None  # noqa: E711
    skipped = pd.DataFrame({"id": pd.Series(ids[bad], dtype=object),
                            "reason": pd.Series(why[bad], dtype=object)})
    if bad.any():
        if on_invalid == "raise":
            _raise_first(why, field, allowed, ids)
        logger.warning("build_sample_table: skipped %d of %d rows (see table.skipped); first: %s=%r (%s)",
                       int(bad.sum()), n, id_name, skipped["id"].iloc[0], skipped["reason"].iloc[0])
        if bad.all():
            raise SpecError("gdf", f"{n} rows, all invalid (first: {skipped['reason'].iloc[0]})",
                            "at least one valid row")
    keep = np.flatnonzero(~bad)
    columns = _geometry_columns(geo[keep])
    columns["ids"] = ids[keep]
    order = hilbert_order(columns["lon"], columns["lat"])
    return SampleTable({k: v[order] for k, v in columns.items()}, skipped, id_name)


#: Changes whenever :func:`build_sample_table` would build another table from the same input
#: (a digest of an older builder's input then no longer matches, and the full check runs).
TABLE_BUILDER_VERSION = 1


def samples_digest(gdf: Any, *, id_column: str | None = None, on_invalid: str = "raise", salt: str = "") -> str | None:
    """A digest of what :func:`build_sample_table` is given: ids, geometries (WKB, as given), CRS, options.

    The same digest means the same table: a rerun of a finished campaign on the same samples
    is recognised without building it (no reprojection, centroid or geohash of a million rows).
    ``salt`` adds what else the caller's result depends on (the campaign spec, the windows).

    Parameters
    ----------
    gdf : geopandas.GeoDataFrame
        The samples, as given to :func:`build_sample_table`.
    id_column : str, optional
        Column of the ids (default: the index).
    on_invalid : str
        As given to :func:`build_sample_table` (which rows it keeps depends on it).
    salt : str
        Anything else the digest must cover.

    Returns
    -------
    str or None
        A hex BLAKE2b digest; None for input :func:`build_sample_table` refuses outright
        (not a GeoDataFrame, no CRS, an unknown id column): the caller builds the table and says why.

    Examples
    --------
    >>> import geopandas as gpd
    >>> gdf = gpd.GeoDataFrame({"site": ["a", "b"]}, geometry=gpd.points_from_xy([3, 4], [31, 32]), crs=4326)
    >>> samples_digest(gdf, id_column="site") == samples_digest(gdf.copy(), id_column="site")
    True
    >>> samples_digest(gdf, id_column="site") == samples_digest(gdf[::-1], id_column="site")
    False
    """
    import geopandas as gpd
    import shapely

    if not isinstance(gdf, gpd.GeoDataFrame) or gdf.crs is None or len(gdf) == 0:
        return None
    if id_column is not None and id_column not in gdf.columns:
        return None
    ids = gdf[id_column] if id_column is not None else gdf.index.to_series()
    h = hashlib.blake2b(digest_size=20)
    for part in (str(TABLE_BUILDER_VERSION), salt, str(id_column), on_invalid, gdf.crs.to_wkt(), str(len(gdf)),
                 str(ids.dtype)):
        h.update(part.encode() + b"\0")
    values = ids.to_numpy()
    if values.dtype.kind in "iu":  # integer ids: their bytes
        h.update(np.ascontiguousarray(values, dtype=np.int64).tobytes())
    elif isinstance(ids.dtype, pd.StringDtype):  # pandas strings (Arrow-backed: no copy)
        _update_binary(h, _arrow_array(ids, "string"))
    elif values.dtype == object and pd.api.types.infer_dtype(values, skipna=False) == "string":
        _update_binary(h, _arrow_array(values, "string"))  # str ids: their UTF-8 bytes and offsets
    else:  # anything else: its type and its text
        _update_binary(h, _arrow_array([f"{type(v).__name__}:{v}" for v in values.tolist()], "string"))
    geoms = np.asarray(gdf.geometry.array, dtype=object)
    types = shapely.get_type_id(geoms)  # -1: missing
    h.update(types.astype(np.int8).tobytes())
    if (types == 0).all() and not shapely.is_empty(geoms).any():  # points: their coordinates say it all
        h.update(np.ascontiguousarray(shapely.get_coordinates(geoms, include_z=True)).tobytes())
    else:
        _update_binary(h, _arrow_array(shapely.to_wkb(geoms), "binary"))
    return h.hexdigest()


def _arrow_array(values: Any, kind: str) -> Any:
    """``values`` as a pyarrow array of ``kind`` ("string" or "binary": 64-bit offsets)."""
    import pyarrow as pa

    return pa.array(values, type=pa.large_string() if kind == "string" else pa.large_binary(), from_pandas=True)


def _update_binary(h: Any, arr: Any) -> None:
    """Feed an Arrow (large) string/binary array to the hash ``h``: validity, offsets, then the bytes
    (so no two lists of items hash alike by joining alike)."""
    arr = arr.combine_chunks() if hasattr(arr, "combine_chunks") else arr
    validity, offsets, data = arr.buffers()
    start, stop = arr.offset, arr.offset + len(arr)
    off = np.frombuffer(offsets, dtype=np.int64)[start:stop + 1]
    h.update(np.asarray(arr.is_null(), dtype=bool).tobytes())
    h.update((off - off[0]).tobytes())
    if data is not None:
        h.update(memoryview(data)[int(off[0]):int(off[-1])])


def _geometry_columns(geoms: np.ndarray) -> dict[str, np.ndarray]:
    """Centroid, UTM zone and UTM bounding box of EPSG:4326 geometries."""
    import shapely

    n = len(geoms)
    is_point = shapely.get_type_id(geoms) == 0
    # Zone guessed from the lon/lat bounding-box centre; the centroid is computed in that
    # zone, and once more in the centroid's own zone where that differs.
    b = shapely.bounds(geoms)
    # (coordinates were range-checked by build_sample_table; a centroid projected back may
    # round a hair past them)
    epsg = utm_epsg((b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, check=False)
    out = {k: np.zeros(n) for k in ("lon", "lat", "x", "y", "half_w", "half_h", "box_x", "box_y")}
    todo = np.ones(n, dtype=bool)
    for _ in range(2):
        for code in np.unique(epsg[todo]):
            rows = np.flatnonzero(todo & (epsg == code))
            _fill_zone(out, rows, geoms[rows], f"EPSG:{code}")
        new = utm_epsg(out["lon"], out["lat"], check=False)
        todo = new != epsg
        if not todo.any():
            break
        epsg = np.where(todo, new, epsg)
    out["lon"][is_point], out["lat"][is_point] = b[is_point, 0], b[is_point, 1]  # exact input
    out["half_w"][is_point] = out["half_h"][is_point] = 0.0
    out.update(epsg=epsg, kind=np.where(is_point, "point", "polygon").astype(object),
               wkb=np.array(list(shapely.to_wkb(geoms)), dtype=object),
               geohash=geohash_encode(out["lon"], out["lat"]))
    return out


def _fill_zone(out: dict, rows: np.ndarray, geoms: np.ndarray, crs: str) -> None:
    """Project ``geoms`` to ``crs`` and fill centroid and bounding-box columns at ``rows``."""
    import shapely

    projected = shapely.transform(
        geoms, lambda c: np.column_stack(lonlat_to_xy(c[:, 0], c[:, 1], crs)))
    cen = shapely.centroid(projected)
    cx, cy = shapely.get_x(cen), shapely.get_y(cen)
    lon, lat = xy_to_lonlat(cx, cy, crs)
    b = shapely.bounds(projected)
    out["x"][rows], out["y"][rows] = cx, cy
    out["lon"][rows], out["lat"][rows] = lon, lat
    out["half_w"][rows], out["half_h"][rows] = (b[:, 2] - b[:, 0]) / 2, (b[:, 3] - b[:, 1]) / 2
    out["box_x"][rows], out["box_y"][rows] = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
