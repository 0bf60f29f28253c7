"""Export a cube's ok embeddings to GeoParquet 1.1, streamed chunk by chunk.

One row per ``ok`` cell (sample x scale, and x window for a cube with a ``time``
dimension), in the cube's order: scales one after the other, within a scale the windows
in ``time`` order, within a window the samples in Hilbert order::

    id              int64 or string   the sample id (tile id for tilings)
    scale           double            pixel size in metres
    geometry        binary (WKB)      the footprint in EPSG:4326 (see below)
    bbox            struct<xmin, ymin, xmax, ymax: double>   GeoParquet 1.1 covering of geometry
                                      (``xmin > xmax`` for a footprint across the antimeridian)
    lon, lat        double            the sample's centroid (EPSG:4326)
    embedding       fixed_size_list<float32>[D]   (int8 for a quantised cube; see below)
    embedding_scale float             only for int8 with one dequantisation factor per cell
    input_res_m     float             ground sample distance given to the model
    valid_fraction  float             fraction of valid pixels in the footprint
    start_datetime, end_datetime      timestamp[ms, UTC] the row's compositing window (end
                                      inclusive, i.e. one second before the window's exclusive end);
                                      a cube with ``time``: the window of that row's ``time`` slice

``geometry="footprint"`` (default) writes what the embedding describes: the square of
pixels fetched at that scale (a point's ``2 * buffer_m`` square, a polygon's bounding
square, a tile itself), snapped to the scale's UTM pixel lattice and projected to
EPSG:4326 (:func:`rsembed_dask.footprints.stored_footprints`). ``geometry="sample"``
writes the geometry the campaign was given instead.

The file carries GeoParquet ``geo`` metadata (version 1.1.0, WKB, EPSG:4326 PROJJSON,
counter-clockwise polygons, the ``bbox`` covering) and an ``emb`` entry describing the
embeddings (:func:`rsembed_dask.emb_metadata.describe_embeddings`: model, dimensions,
collection, window, quantisation, runtime parameters), both in the Parquet footer and in
the Arrow schema's metadata (``pq.read_schema(f).metadata``, ``pyarrow.dataset``); so a
first pass over the geometries (no embeddings) finds the file's bbox and geometry types.
Paths in ``emb`` are relative to the file's folder (or the URL the user gave).

Footprints across the antimeridian are MultiPolygons split at +/-180; their ``bbox``
covering is written as GeoParquet 1.1 says, ``xmin > xmax`` (e.g. 179.99 .. -179.99), so a
bbox query near longitude 0 does not return them; the file's ``bbox`` likewise spans the
shortest arc of longitudes holding every row. Compression is ZSTD; row groups
hold about ``row_group_bytes`` (128 MiB) of uncompressed data. The cube is read one
block of whole chunks at a time and rows are buffered only up to one row group, so
memory does not grow with the cube. The file is written under a temporary name and
renamed when complete.

An int8 cube (group attribute ``geoemb:quantization``) is exported as int8 with its
dequantisation (``value = q * scale + offset``) in ``emb.quantization``, or with one
factor per row in ``embedding_scale``; ``dequantize=True`` writes float32 instead.

Examples
--------
>>> report = export_geoparquet("campaign.zarr", "campaign.parquet")       # doctest: +SKIP
>>> gpd.read_parquet("campaign.parquet").head()                           # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import CubeError, OutputError, SpecError
from .cube import Cube
from .damage import named_damage
from .footprints import split_antimeridian, stored_footprints
from .layout import (OK, SPEC_ATTR, SPEC_HASH_ATTR, STATUS_NAMES, VERSIONS_ATTR, count_statuses,
                     scale_name)
from .metadata import EMB_VERSION, describe_embeddings, read_quantization
from .location import StoreLocation
from .open import array_of, attr_text, is_tiling_store

__all__ = ["output_error", "export_geoparquet", "ExportReport", "rows_per_group", "store_parts", "StorePart",
           "OkCells", "DEFAULT_ROW_GROUP_BYTES", "GEOPARQUET_VERSION", "covering_bounds", "lon_extent",
           "portable_href", "part_scales", "part_windows"]

log = logging.getLogger(__name__)

GEOPARQUET_VERSION = "1.1.0"
#: Target uncompressed size of one row group (the GeoParquet best practice: ~128 MB).
DEFAULT_ROW_GROUP_BYTES = 128 * 2**20
#: Embedding bytes read from the cube at a time (rounded to whole chunks)...
READ_BLOCK_BYTES = 8 * 2**20
#: ... and at most this many rows (ids and geometries are Python objects while a block is converted).
READ_BLOCK_ROWS = 16_384
GEOMETRY_MODES = ("footprint", "sample")
_BBOX = ("xmin", "ymin", "xmax", "ymax")
#: Columns whose row-group statistics are written (embeddings and geometry get none).
_STATS_COLUMNS = ["id", "scale", "lon", "lat", *(f"bbox.{k}" for k in _BBOX), "start_datetime", "end_datetime"]


@dataclass(frozen=True)
class StorePart:
    """One sample cube of a store and the scale exported from it.

    Attributes
    ----------
    cube : Cube
        The sample cube (the store itself, or ``samples/<scale>`` of a tiling store).
    scale_m : float
        Pixel size in metres.
    scale_index : int
        Position of ``scale_m`` along the cube's ``scale`` axis.
    tiles : bool
        The cube holds tiles (their geometries are their footprints).
    window : int or None
        Index along ``time`` of the window read (``cube`` is then bound to it, see
        :meth:`Cube.at_window`); None for a cube without ``time``.
    """

    cube: Cube
    scale_m: float
    scale_index: int
    tiles: bool
    window: int | None = None


@dataclass
class ExportReport:
    """What :func:`export_geoparquet` wrote.

    ``cells`` counts the cells read per status (only ``ok`` ones become rows).
    """

    path: str
    rows: int
    row_groups: int
    rows_per_group: int
    file_bytes: int
    seconds: float
    scales: list[float]
    cells: dict[str, int] = field(default_factory=dict)
    #: Start dates of the windows exported (a cube with ``time``; empty without).
    windows: list[str] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_s": round(self.rows_per_s, 1)}

    def summary(self) -> str:
        skipped = {k: v for k, v in self.cells.items() if k != "ok" and v}
        extra = f"; cells not ok, not exported: {skipped}" if skipped else ""
        windows = f" in {len(self.windows)} window(s) ({', '.join(self.windows)})" if self.windows else ""
        return (f"{self.path}: {self.rows} rows at scales {', '.join(f'{s:g}' for s in self.scales)} m{windows}, "
                f"{self.row_groups} row group(s) of up to {self.rows_per_group} rows, "
                f"{self.file_bytes / 2**20:.1f} MiB in {self.seconds:.1f}s ({self.rows_per_s:.0f} rows/s){extra}")


def covering_bounds(geoms: Any) -> np.ndarray:
    """Bounds ``(n, 4)`` of lon/lat geometries as GeoParquet 1.1 coverings: a geometry split at
    the antimeridian (parts touching +180 and -180) gets ``xmin`` of its eastern parts and
    ``xmax`` of its western ones, so ``xmin > xmax``.

    Examples
    --------
    >>> import shapely
    >>> fiji = shapely.MultiPolygon([shapely.box(179.99, -17.0, 180.0, -16.9), shapely.box(-180.0, -17.0, -179.98, -16.9)])
    >>> covering_bounds([fiji, shapely.box(0, 0, 1, 1)]).round(2).tolist()
    [[179.99, -17.0, -179.98, -16.9], [0.0, 0.0, 1.0, 1.0]]
    """
    import shapely

    geoms = np.asarray(geoms, dtype=object)
    b = shapely.bounds(geoms)
    across = np.flatnonzero((b[:, 0] <= -180.0) & (b[:, 2] >= 180.0)
                            & (shapely.get_type_id(geoms) == 6))
    for i in across:
        pb = shapely.bounds(shapely.get_parts(geoms[i]))
        east, west = pb[pb[:, 0] >= 0.0], pb[pb[:, 2] <= 0.0]
        if len(east) and len(west) and len(east) + len(west) == len(pb):
            b[i, 0], b[i, 2] = east[:, 0].min(), west[:, 2].max()
    return b


def lon_extent(xmin: Any, xmax: Any) -> tuple[float, float]:
    """The shortest arc of longitudes ``(west, east)`` holding every interval ``[xmin, xmax]``
    (``xmin > xmax``: an interval across the antimeridian); ``west > east`` when the arc crosses it.

    Examples
    --------
    >>> lon_extent([0.0, 10.0], [1.0, 12.0])
    (0.0, 12.0)
    >>> lon_extent([179.9, 178.0, -179.5], [-179.9, 179.0, -179.0])
    (178.0, -179.0)
    """
    lo, hi = np.asarray(xmin, np.float64).ravel(), np.asarray(xmax, np.float64).ravel()
    if not lo.size or lo.shape != hi.shape:
        raise SpecError("xmin", f"{lo.size} starts and {hi.size} ends", "one or more longitude intervals")
    hi = np.where(hi < lo, hi + 360.0, hi)  # unwrapped: [lo, hi] with hi up to 540
    # The covered set on the circle: the intervals and their copies a turn west, merged,
    # clipped to [-180, 180].
    a, b = np.r_[lo, lo - 360.0], np.r_[hi, hi - 360.0]
    order = np.argsort(a, kind="stable")
    covered: list[list[float]] = []
    for x0, x1 in zip(a[order], b[order]):
        if covered and x0 <= covered[-1][1]:
            covered[-1][1] = max(covered[-1][1], x1)
        else:
            covered.append([x0, x1])
    covered = [[max(x0, -180.0), min(x1, 180.0)] for x0, x1 in covered if x1 >= -180.0 and x0 <= 180.0]
    if covered[0][0] <= -180.0 and covered[0][1] >= 180.0:
        return -180.0, 180.0
    # The widest gap between covered arcs (the first "gap" runs across the antimeridian).
    gaps = [(180.0 - covered[-1][1]) + (covered[0][0] + 180.0)]
    gaps += [covered[k + 1][0] - covered[k][1] for k in range(len(covered) - 1)]
    k = int(np.argmax(gaps))
    if k == 0:
        return float(covered[0][0]), float(covered[-1][1])
    return float(covered[k][0]), float(covered[k - 1][1])


def portable_href(target: str, base_dir: str) -> str:
    """``target`` as a reference a catalogue can carry: a URL (not ``file:``) unchanged, a local
    path (or ``file:`` URI) relative to ``base_dir``, POSIX-style.

    >>> portable_href("s3://bucket/cube.zarr", "/tmp/out")
    's3://bucket/cube.zarr'
    >>> portable_href("/data/cube.zarr", "/data/stac/item")
    '../../cube.zarr'
    """
    from urllib.parse import unquote, urlparse

    parsed = urlparse(target)
    if parsed.scheme == "file":
        target = unquote(parsed.path)
    elif parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        return target
    rel = os.path.relpath(os.path.abspath(target), os.path.abspath(base_dir))
    return rel.replace(os.sep, "/")


def rows_per_group(bytes_per_row: float, target_bytes: int = DEFAULT_ROW_GROUP_BYTES) -> int:
    """Rows per row group so that one holds about ``target_bytes`` of uncompressed data (at least 1).

    Examples
    --------
    >>> rows_per_group(4096, 128 * 2**20)
    32768
    >>> rows_per_group(10_000, 1000)
    1
    """
    if not target_bytes >= 1:
        raise SpecError("row_group_bytes", target_bytes, "a positive number of bytes")
    return max(1, int(target_bytes // max(1.0, float(bytes_per_row))))


def _pick_scale(scales: list[float], scale: Any) -> list[int]:
    """Indices of the scales to export: all when ``scale`` is None, else the one matching."""
    if scale is None:
        return list(range(len(scales)))
    if isinstance(scale, (int, float, np.integer, np.floating)) and not isinstance(scale, bool):
        for i, s in enumerate(scales):
            if math.isclose(s, float(scale), rel_tol=1e-9, abs_tol=1e-9):
                return [i]
    raise SpecError("scale", scale, "one of the store's scales: " + ", ".join(f"{s:g}" for s in scales) + " (m)")


def _pick_windows(cube: Cube, window: int | None) -> list[int | None]:
    """Indices along ``time`` to export (all when ``window`` is None); ``[None]`` without ``time``."""
    n = 1 if cube.windows is None else len(cube.windows)
    if window is not None and (isinstance(window, bool) or not isinstance(window, (int, np.integer))
                               or not 0 <= int(window) < n):
        raise SpecError("window", window, f"an index along the cube's time dimension, 0..{n - 1}")
    if cube.windows is None:
        return [None]
    return list(range(n)) if window is None else [int(window)]


def store_parts(store: str | os.PathLike, scale: float | None = None, *,
                window: int | None = None) -> list[StorePart]:
    """The sample cubes of ``store`` (a cube or a tiling store), scales and windows to read, in
    export order: scale by scale, and within a scale window by window (a cube with ``time``).

    Parameters
    ----------
    store : str or path
        A cube or a tiling store.
    scale : float, optional
        Only this scale (metres); default every scale.
    window : int, optional
        Only this window (its index along ``time``); default every window.

    Returns
    -------
    list of StorePart
        One per scale (and window, for a cube with ``time``).

    Raises
    ------
    CubeError
        ``store`` is not a cube or a tiling store.
    SpecError
        ``scale`` is not one of the store's scales, or ``window`` not one of its windows.
    """
    path = StoreLocation.parse(store)
    if is_tiling_store(path):
        import zarr

        from ..specs import CampaignSpec

        root = zarr.open_group(path.zarr_store(read_only=True), mode="r", zarr_format=3)
        scales = list(CampaignSpec.from_json(attr_text(root.attrs, SPEC_ATTR)).scales)
        parts = []
        for i in _pick_scale(scales, scale):  # each scale's sample cube (with time: its windows)
            cube = Cube.open(path.child("samples", scale_name(scales[i])))
            parts += [StorePart(cube if w is None else cube.at_window(w), scales[i], 0, True, w)
                      for w in _pick_windows(cube, window)]
        return parts
    cube = Cube.open(path)
    scales = [float(s) for s in cube.scales]
    windows = _pick_windows(cube, window)
    return [StorePart(cube if w is None else cube.at_window(w), scales[i], i, False, w)
            for i in _pick_scale(scales, scale) for w in windows]


def part_scales(parts: list[StorePart]) -> list[float]:
    """The distinct scales (m) of ``parts``, in their order."""
    return list(dict.fromkeys(p.scale_m for p in parts))


def part_windows(parts: list[StorePart]) -> list[tuple[str, str]]:
    """The distinct windows ``(start, end)`` of ``parts``, in ``time`` order (one, the spec's, for
    cubes without ``time``)."""
    seen: dict[tuple[str, str], None] = {}
    for p in sorted(parts, key=lambda p: -1 if p.window is None else p.window):
        t = p.cube.spec.temporal
        seen.setdefault((t.start, t.end), None)
    return list(seen)


def _schema(id_type, value_type, dim: int, per_row_scale: bool):
    import pyarrow as pa

    bbox = pa.struct([(k, pa.float64()) for k in _BBOX])
    fields = [pa.field("id", id_type, nullable=False), pa.field("scale", pa.float64(), nullable=False),
              pa.field("geometry", pa.binary(), nullable=False), pa.field("bbox", bbox, nullable=False),
              pa.field("lon", pa.float64()), pa.field("lat", pa.float64()),
              pa.field("embedding", pa.list_(value_type, dim), nullable=False)]
    if per_row_scale:
        fields.append(pa.field("embedding_scale", pa.float32(), nullable=False))
    fields += [pa.field("input_res_m", pa.float32()), pa.field("valid_fraction", pa.float32()),
               pa.field("start_datetime", pa.timestamp("ms", tz="UTC")),
               pa.field("end_datetime", pa.timestamp("ms", tz="UTC"))]
    return pa.schema(fields)


class OkCells:
    """The ok cells of one store part, read a block of whole chunks at a time.

    Iterating yields one dict per block holding ok cells: ``id``, ``geometry`` (shapely,
    see :func:`export_geoparquet`'s ``geometry``), ``lon``, ``lat``, ``input_res_m``,
    ``valid_fraction`` and, with ``embeddings=True``, ``embedding`` (``[n, D]`` of
    :attr:`value_dtype`) and ``embedding_scale`` (per-cell factors, or None). ``cells``
    counts the cells read per status code.

    Parameters
    ----------
    part : StorePart
    geometry : {"footprint", "sample"}
    dequantize : bool
        int8 embeddings as float32.
    block_rows : int, optional
        Rows per block (default: whole chunks, about 8 MiB of embeddings).
    embeddings : bool
        Read the embeddings (False: only coordinates and geometry, e.g. for extents).
    """

    def __init__(self, part: StorePart, *, geometry: str = "footprint", dequantize: bool = False,
                 block_rows: int | None = None, embeddings: bool = True):
        import zarr

        self.part = part
        self.group = zarr.open_group(part.cube.location.zarr_store(read_only=True), mode="r", zarr_format=3)
        self.emb = array_of(self.group, "embedding")
        self.quant = read_quantization(dict(self.group.attrs), self.emb.dtype)
        self.dequantize = bool(dequantize) and self.quant is not None
        self.geometry = geometry
        self.embeddings = bool(embeddings)
        self.spec = part.cube.spec
        cs = part.cube.chunk_size
        per_chunk = cs * part.cube.embed_dim * self.emb.dtype.itemsize
        self.block_rows = block_rows or max(1, min(READ_BLOCK_BYTES // max(1, per_chunk), READ_BLOCK_ROWS // cs)) * cs
        self.cells = np.zeros(len(STATUS_NAMES), dtype=np.int64)

    def _cells(self, arr: Any, r0: int, r1: int, *rest: Any) -> Any:
        """``arr[r0:r1, scale, *rest]`` of this part's window (``time`` first: its slice)."""
        key: tuple[Any, ...] = (slice(r0, r1), self.part.scale_index, *rest)
        if self.part.window is not None and tuple(getattr(arr.metadata, "dimension_names", None) or ())[:1] == ("time",):
            key = (self.part.window, *key)
        return arr[key]

    @property
    def value_dtype(self) -> np.dtype:
        return np.dtype("float32") if self.quant is None or self.dequantize else self.emb.dtype

    @property
    def per_row_scale(self) -> bool:
        return self.quant is not None and not self.dequantize and "scale_array" in self.quant

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for a, b in self.part.cube.segments:
            for r0 in range(a, b, self.block_rows):
                out = self._block(r0, min(r0 + self.block_rows, b))
                if out is not None:
                    yield out

    def _block(self, r0: int, r1: int) -> dict[str, Any] | None:
        """Rows ``[r0, r1)``'s ok cells; a chunk that does not decode is named (CubeDamagedError)."""
        with named_damage(self.part.cube.path, scale_index=self.part.scale_index, rows=(r0, r1),
                          window=self.part.window):
            return self._read_block(r0, r1)

    def _read_block(self, r0: int, r1: int) -> dict[str, Any] | None:
        import shapely

        g = self.group
        status = np.asarray(self._cells(array_of(g, "status"), r0, r1), dtype=np.int8)
        self.cells += count_statuses(status)[0]
        ok = np.flatnonzero(status == OK)
        if not ok.size:
            return None
        ids = np.asarray(array_of(g, "sample")[r0:r1])[ok]
        ids = ids.astype(np.int64) if ids.dtype.kind in "iu" else np.asarray(ids.tolist(), dtype=object)
        wkb = np.asarray(array_of(g, "geometry")[r0:r1])[ok].tolist()
        if self.geometry == "footprint":
            geoms = stored_footprints(ids.tolist(), wkb, scale_m=self.part.scale_m,
                                      image_size=self.spec.model.image_size, buffer_m=self.spec.buffer_m,
                                      tiles=self.part.tiles)
        else:
            geoms = split_antimeridian(shapely.from_wkb(np.asarray(wkb, dtype=object)))
        out: dict[str, Any] = {"id": ids, "geometry": geoms,
               "lon": np.asarray(array_of(g, "lon")[r0:r1], dtype=np.float64)[ok],
               "lat": np.asarray(array_of(g, "lat")[r0:r1], dtype=np.float64)[ok],
               "input_res_m": np.asarray(self._cells(array_of(g, "input_res_m"), r0, r1), dtype=np.float32)[ok],
               "valid_fraction": np.asarray(self._cells(array_of(g, "valid_fraction"), r0, r1), dtype=np.float32)[ok]}
        if self.embeddings:
            out["embedding"], out["embedding_scale"] = self._embeddings(r0, r1, ok)
        return out

    def _embeddings(self, r0: int, r1: int, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The ok rows' embeddings (dequantised when asked) and their per-cell factors (or None)."""
        emb = np.asarray(self._cells(self.emb, r0, r1, slice(None)))[ok]
        factor = None
        if self.quant is not None and "scale_array" in self.quant:
            factor = np.asarray(self._cells(array_of(self.group, self.quant["scale_array"]), r0, r1),
                                dtype=np.float32)[ok]
        if self.dequantize and self.quant is not None:
            if factor is not None:
                emb = emb.astype(np.float32) * factor[:, None]
            else:
                emb = emb.astype(np.float32) * np.float32(self.quant["scale"]) + np.float32(self.quant["offset"])
            factor = None
        return np.ascontiguousarray(emb, dtype=self.value_dtype), factor


def _table(block: dict[str, Any], schema, scale_m: float, window: tuple[Any, Any]):
    """One block's rows as an Arrow table of ``schema``."""
    import pyarrow as pa
    import shapely

    n, emb = len(block["id"]), block["embedding"]
    b = covering_bounds(block["geometry"])
    value_type = schema.field("embedding").type.value_type
    cols: dict[str, Any] = {
        "id": pa.array(block["id"], type=schema.field("id").type),
        "scale": pa.array(np.full(n, scale_m), pa.float64()),
        "geometry": pa.array(shapely.to_wkb(block["geometry"]), pa.binary()),
        "bbox": pa.StructArray.from_arrays([pa.array(b[:, i], pa.float64()) for i in range(4)], names=list(_BBOX)),
        "lon": pa.array(block["lon"]), "lat": pa.array(block["lat"]),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), value_type), emb.shape[1]),
    }
    if "embedding_scale" in schema.names:
        cols["embedding_scale"] = pa.array(block["embedding_scale"], pa.float32())
    cols["input_res_m"] = pa.array(block["input_res_m"])
    cols["valid_fraction"] = pa.array(block["valid_fraction"])
    for name, value in zip(("start_datetime", "end_datetime"), window):
        cols[name] = pa.array(np.full(n, value), schema.field(name).type)
    return pa.table(cols, schema=schema)


def _geo_metadata(types: set[str], bbox: list[float] | None) -> dict[str, Any]:
    from pyproj import CRS

    column: dict[str, Any] = {
        "encoding": "WKB", "geometry_types": sorted(types), "crs": CRS.from_epsg(4326).to_json_dict(),
        "edges": "planar", "orientation": "counterclockwise",
        "covering": {"bbox": {k: ["bbox", k] for k in _BBOX}}}
    if bbox is not None:
        column["bbox"] = bbox
    return {"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": column}}


class _RowGroupWriter:
    """Buffers tables and writes row groups of exactly ``rows_per_group`` rows (the last one fewer)."""

    def __init__(self, writer, target_bytes: int):
        self.writer, self.target = writer, target_bytes
        self.rows_per_group: int | None = None
        self.buffer: list = []
        self.buffered = 0
        self.row_groups = 0

    def add(self, table) -> None:
        if self.rows_per_group is None:
            self.rows_per_group = rows_per_group(table.nbytes / max(1, table.num_rows), self.target)
        self.buffer.append(table)
        self.buffered += table.num_rows
        if self.buffered >= self.rows_per_group:
            self._write(self.buffered // self.rows_per_group * self.rows_per_group)

    def _write(self, n: int) -> None:
        import pyarrow as pa

        per = self.rows_per_group
        if per is None:  # nothing was added
            return
        whole = pa.concat_tables(self.buffer)
        self.writer.write_table(whole.slice(0, n), row_group_size=per)
        self.row_groups += -(-n // per)
        rest = whole.slice(n)
        self.buffer = [rest] if rest.num_rows else []
        self.buffered = rest.num_rows

    def close(self) -> None:
        if self.buffered:
            self._write(self.buffered)


def export_geoparquet(store: str | os.PathLike, out: str | os.PathLike, scale: float | None = None, *,
                      geometry: str = "footprint", dequantize: bool = False,
                      row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
                      read_block_rows: int | None = None, window: int | None = None) -> ExportReport:
    """Write the ok embeddings of a cube (or tiling store) to a GeoParquet 1.1 file.

    Parameters
    ----------
    store : str or path
        A cube, or a tiling store (its ``samples/<scale>`` cubes are exported).
    out : str or path
        The ``.parquet`` file to write (replaced if it exists).
    scale : float, optional
        Export only this scale (metres); default every scale, one after the other.
    geometry : {"footprint", "sample"}
        The fetched footprint at each scale (default), or the sample's own geometry.
    dequantize : bool
        For an int8 cube: write float32 values instead of int8 and their scale.
    row_group_bytes : int
        Target uncompressed bytes per row group (default 128 MiB).
    read_block_rows : int, optional
        Cube rows read at a time (default: whole chunks, about 8 MiB of embeddings).
    window : int, optional
        A cube with ``time``: export only this window (its index along ``time``); default
        every window, each row carrying its window in ``start_datetime``/``end_datetime``.

    Returns
    -------
    ExportReport
        Rows, row groups, file size, time and the cells read per status.

    Raises
    ------
    CubeError
        ``store`` is not a cube, or int8 embeddings without a dequantisation attribute.
    SpecError
        An unknown ``scale``, ``window`` or ``geometry`` mode, or a bad ``row_group_bytes``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .metadata import window_datetimes

    if geometry not in GEOMETRY_MODES:
        raise SpecError("geometry", geometry, " or ".join(map(repr, GEOMETRY_MODES)))
    rows_per_group(1, row_group_bytes)  # checks the target
    t0 = time.perf_counter()
    target = StoreLocation.parse(out)
    out = target.url
    parts = store_parts(store, scale, window=window)
    readers = [OkCells(p, geometry=geometry, dequantize=dequantize, block_rows=read_block_rows) for p in parts]
    first = readers[0]
    dims = {p.cube.embed_dim for p in parts}
    if len(dims) != 1 or len({r.value_dtype for r in readers}) != 1:
        raise CubeError(f"store {str(StoreLocation.parse(store))!r}: its sample cubes hold embeddings of different widths or "
                        f"types ({sorted(dims)}); export one scale at a time with scale=")
    id_type = pa.int64() if np.dtype(array_of(first.group, "sample").dtype).kind in "iu" else pa.string()
    attrs = first.part.cube.attrs
    quant = None if first.dequantize else first.quant
    emb = describe_embeddings(attrs[SPEC_ATTR], embed_dim=first.part.cube.embed_dim,
                              data_type=first.value_dtype.name, quantization=quant,
                              scales=part_scales(parts), tiling=first.part.tiles,
                              versions=attrs.get(VERSIONS_ATTR), spec_hash=attrs.get(SPEC_HASH_ATTR),
                              windows=part_windows(parts))
    # References a reader can follow: relative to a local file, as given beside a URL.
    here = os.path.dirname(out) if target.local else None

    def href(where: str) -> str:
        return portable_href(where, here) if here is not None else where

    emb = {"version": EMB_VERSION, **emb, "geometry": geometry, "source_store": href(StoreLocation.parse(store).url)}
    emb["model"] = {**emb["model"], "source": href(emb["model"]["source"])}
    geo = _extent_metadata(parts, geometry)
    schema = _schema(id_type, pa.from_numpy_dtype(first.value_dtype), first.part.cube.embed_dim,
                     first.per_row_scale).with_metadata({"geo": json.dumps(geo), "emb": json.dumps(emb)})

    try:
        if target.local:
            os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
            tmp = f"{out}.part-{os.getpid()}"
        else:  # written here, then uploaded whole (multipart): readers never see a partial object
            fd, tmp = tempfile.mkstemp(prefix="rsembed-export-", suffix=".parquet")
            os.close(fd)
        writer = pq.ParquetWriter(tmp, schema, compression="zstd", write_statistics=_STATS_COLUMNS,
                                  use_dictionary=["scale", "start_datetime", "end_datetime"])
    except OSError as exc:
        raise output_error(out, exc) from exc
    groups = _RowGroupWriter(writer, int(row_group_bytes))
    rows = 0
    try:
        for reader in readers:
            temporal = reader.spec.temporal  # the part's window (a Cube bound to it)
            w0, w1 = window_datetimes(temporal.start, temporal.end)
            stamps = (np.datetime64(w0.replace(tzinfo=None), "ms"), np.datetime64(w1.replace(tzinfo=None), "ms"))
            for block in reader:
                table = _table(block, schema, reader.part.scale_m, stamps)
                rows += table.num_rows
                groups.add(table)
        groups.close()
        writer.close()
        if target.local:
            os.replace(tmp, out)
        else:
            target.parent().upload(target.name, tmp)
    except OSError as exc:  # the disk filled, the folder went away (a damaged chunk is a CubeDamagedError)
        writer.close()
        if os.path.exists(tmp):
            os.remove(tmp)
        raise output_error(out, exc) from exc
    except BaseException:
        writer.close()
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    cells = np.sum([r.cells for r in readers], axis=0)
    report = ExportReport(path=out, rows=rows, row_groups=groups.row_groups,
                          rows_per_group=groups.rows_per_group or 0, file_bytes=target.size(),
                          seconds=time.perf_counter() - t0, scales=part_scales(parts),
                          cells={name: int(c) for name, c in zip(STATUS_NAMES, cells)},
                          windows=[] if first.part.window is None else [w[0] for w in part_windows(parts)])
    if not rows:
        log.warning("export %s: no ok cell in %s; the file holds no rows", out, StoreLocation.parse(store))
    log.info("export: %s", report.summary())
    return report


def _extent_metadata(parts: list[StorePart], geometry: str) -> dict[str, Any]:
    """The ``geo`` metadata of the rows ``parts`` export: a pass over their ok cells'
    geometries (no embeddings read) for the geometry types and the bbox."""
    import shapely

    types: set[int] = set()
    lo = [math.inf, math.inf]
    hi = [-math.inf, -math.inf]
    west: list[float] = []
    east: list[float] = []
    for part in parts:
        for block in OkCells(part, geometry=geometry, embeddings=False):
            types.update(shapely.get_type_id(block["geometry"]).tolist())
            b = covering_bounds(block["geometry"])
            lo[1], hi[1] = min(lo[1], float(b[:, 1].min())), max(hi[1], float(b[:, 3].max()))
            w, e = lon_extent(b[:, 0], b[:, 2])  # one arc per block keeps memory flat
            west.append(w)
            east.append(e)
    bbox = None
    if west:
        w, e = lon_extent(west, east)
        bbox = [w, lo[1], e, hi[1]]
    return _geo_metadata({_TYPE_NAMES[t] for t in types}, bbox)


#: GeoParquet's geometry type names by shapely type id.
_TYPE_NAMES = {0: "Point", 1: "LineString", 3: "Polygon", 4: "MultiPoint", 5: "MultiLineString",
               6: "MultiPolygon", 7: "GeometryCollection"}


def output_error(out: str | os.PathLike, exc: OSError) -> OutputError:
    """The one-line error of an output that cannot be written at ``out`` (export, STAC, quicklook)."""
    reason = exc.strerror or str(exc)
    where = exc.filename or os.fspath(out)
    return OutputError(f"cannot write {os.fspath(out)!r}: {reason} ({where}); choose a folder you can write "
                       "(and with free space), or fix its permissions")
