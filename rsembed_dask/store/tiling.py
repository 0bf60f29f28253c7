"""The store of a tiling campaign: per-scale sample cubes plus georeferenced per-zone grids.

Layout (one Zarr v3 store, opened as an :class:`xarray.DataTree`)::

    out.zarr/                   attrs: tiling (scales, image size, block, token), campaign spec
      samples/10m/              a sample-layout cube (see store.layout) of the 10 m tiles
      10m/EPSG32632/            embedding([time,] y, x, feature), status([time,] y, x), sample_index(y, x)
      10m/EPSG32633/            ... one group per UTM zone: each is one CRS, one grid
      40m/EPSG32632/

Each zone group has one cell per tile on the scale's tile lattice (cell size =
tile side), ``x``/``y`` cell-centre coordinates in metres and a ``spatial_ref``
coordinate with the CRS as WKT, so ``rioxarray`` reads ``rio.crs`` and
``rio.transform()``; its attributes carry the same as ``proj:code`` and
``spatial:transform``/``shape``/``bbox`` (Zarr conventions). Every group carries the
``geoemb:`` attributes (:mod:`rsembed_dask.store.geoemb`; chips on a regular grid). In an
int8 store (``OutputSpec(dtype="int8")``) the zone grids hold int8 ``embedding``
with ``embedding_scale(y, x)``, copied from the sample cubes as stored. The campaign writes
the sample cubes unit by unit; the grids are filled from them block by block (a block of tiles = one grid chunk,
so block writes never share a chunk) when a run ends.

A campaign over several date windows (``temporal=[...]``) makes a store with ``time``: every
sample cube has a ``time`` dimension (:class:`~rsembed_dask.store.cube.Cube`), and so does every
per-cell variable of the zone grids (``embedding``, ``embedding_scale``, ``status``; chunk 1
along ``time``), with the same ``time`` (window start) and CF ``time_bnds`` coordinates; the root
carries ``time_windows`` and ``completed_windows``. ``sample_index`` (the tile of a cell) is the
same in every window and has no ``time``. A store of one window has no ``time`` anywhere (the
layout and spec hash of stores written before). Windows are added later
(:func:`create_or_open_tiling` with ``append_windows``) without rewriting any chunk.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import zarr
from affine import Affine

from ..errors import CubeError, SpecMismatchError
from ..sampling.tiling import TileTable, Tiling
from ..specs import CampaignSpec, TemporalSpec
from .cube import Cube
from .geoemb import geoemb_attrs, merge_conventions, zone_attrs
from .layout import (AOI_ATTR, COL_LEFT_ATTR, CREATING_ATTR, CRS_ATTR, FLAG_ATTRS, IMAGE_SIZE_ATTR, NO_TILE,
                     ROW_TOP_ATTR, SPEC_ATTR, STATUS_NAMES, SYNCED_ATTR, TILE_M_ATTR, TILING_IDENTITY_ATTR,
                     TILING_MARKER, TIME_WINDOWS_ATTR, COMPLETED_WINDOWS_ATTR, chunk_codecs, default_versions, scale_name, time_defs,
                     window_days)
from .open import (array_of, attr_text, check_writable, group_of, is_tiling_store, probe_store,
                   unfinished_store)
from .location import STORE_ERRORS, StoreLocation
from .lock import confirm_held
from .quantize import QUANTISED, is_quantised_dtype

__all__ = ["TILING_MARKER", "NO_TILE", "scale_name", "create_or_open_tiling", "sample_cube_names", "is_tiling_store",
           "grid_mapping", "grid_extent", "rasterise_blocks", "block_batches", "set_synced", "tiling_windows",
           "set_completed_windows"]

log = logging.getLogger(__name__)

TILING_VERSION = 1
#: Blocks filled per task when grids are rasterised.
BLOCKS_PER_TASK = 16


def _identity(tiling: Tiling, spec: CampaignSpec) -> dict[str, Any]:
    return {"tiling": {"scales": list(tiling.scales), "image_size": tiling.image_size,
                       "block": tiling.block, "token": tiling.token()},
            "campaign": spec.identity()}


def create_or_open_tiling(path: str | os.PathLike | StoreLocation, tiling: Tiling, spec: CampaignSpec, *,
                          embed_dim: int,
                          grid_shape: tuple[int, int] | None = None,
                          versions: Mapping[str, str] | None = None,
                          windows: Sequence[TemporalSpec] | None = None, append_windows: bool = False,
                          before_append: Callable[[], None] | None = None) -> dict[float, Cube]:
    """Create (or resume) the tiling store at ``path``; returns the sample cube per scale.

    A store whose creation was interrupted (:func:`~rsembed_dask.store.open.unfinished_store`),
    or in which no unit has finished and that holds another AOI, tiling or spec, is
    recreated with a warning.

    ``windows`` (``spec.temporal`` first): several make a store with ``time`` (see the module
    doc); an existing one must hold them, or their first ones with ``append_windows``: the
    others are then added along ``time`` to every sample cube and zone grid (arrays resized,
    no chunk rewritten; ``before_append()`` is called first), the root's ``time_windows``
    last (the commit). A store of one window cannot grow a ``time`` dimension.

    Raises
    ------
    SpecMismatchError
        The store holds another AOI, tiling or campaign spec, and some unit finished in it.
    CubeError
        ``path`` is a file, or a directory that is not a tiling store.
    """
    loc = StoreLocation.parse(path)
    path = loc.url
    identity = json.loads(json.dumps(_identity(tiling, spec), sort_keys=True))
    why = unfinished_store(loc, tiling=True)
    if why is not None:
        why = f"its creation was interrupted ({why})"
    elif is_tiling_store(loc):
        root = zarr.open_group(loc.zarr_store(), mode="r", zarr_format=3)
        stored = json.loads(attr_text(root.attrs, TILING_IDENTITY_ATTR))
        if stored == identity:
            return _resume(loc, tiling, windows, append_windows, before_append)
        diffs = " and ".join(k for k in ("tiling", "campaign") if stored.get(k) != identity.get(k))
        if _any_finished(loc):
            raise SpecMismatchError(f"tiling store {path!r} was written for another {diffs} "
                                    f"(stored {stored}, given {identity})")
        why = f"no unit has finished in it and it was written for another {diffs}"
    elif probe_store(loc) is not None:  # CubeError for files and foreign stores
        raise CubeError(f"{path!r} is a sample cube, not a tiling store; choose another path")
    check_writable(loc)
    if why is not None:
        log.warning("tiling store %s: %s; it is recreated", path, why)
    try:
        return _create_tiling(loc, tiling, spec, identity, embed_dim, grid_shape, versions,
                              tuple(windows) if windows is not None and len(windows) > 1 else None)
    except STORE_ERRORS as exc:
        raise CubeError(f"cannot create tiling store at {path!r}: {exc}; no unit ran in it, so running the "
                        "campaign again recreates it") from exc


def _resume(loc: StoreLocation, tiling: Tiling, windows: Sequence[TemporalSpec] | None, append_windows: bool,
            before_append: Callable[[], None] | None) -> dict[float, Cube]:
    """The sample cubes of an existing store of the same campaign, with the given windows
    matched (and new ones added: every sample cube, then the grids, then the root's list)."""
    cubes = {s: Cube.open(loc.child("samples", scale_name(s))) for s in tiling.scales}
    given = None if windows is None else tuple(windows)
    stored = tiling_windows(loc)
    if given is None or (len(given) == 1 and stored is None):
        return cubes
    asked = [False]

    def before(_changes: Any) -> None:
        if before_append is not None and not asked[0]:
            before_append()
        asked[0] = True

    for cube in cubes.values():
        # A cube holds the root's windows, or more after an interrupted backfill (added again
        # idempotently below): matching against the root's list refuses as a cube would.
        attrs = cube.attrs if stored is None else {**cube.attrs, TIME_WINDOWS_ATTR: [[w.start, w.end] for w in stored]}
        cube._resume_windows(attrs, given, append_windows=append_windows, before_change=before)
    if stored is not None and len(given) > len(stored):
        _append_grid_windows(loc, tiling, given)
    return cubes


def tiling_windows(path: str | os.PathLike | StoreLocation) -> tuple[TemporalSpec, ...] | None:
    """The date windows of the tiling store at ``path`` along its ``time``.

    Parameters
    ----------
    path : str, path-like or StoreLocation
        A tiling store.

    Returns
    -------
    tuple of TemporalSpec or None
        Its windows in ``time`` order (the root's ``time_windows``); None for a store of one
        window (no ``time`` dimension).
    """
    loc = StoreLocation.parse(path)
    raw: Any = zarr.open_group(loc.zarr_store(), mode="r", zarr_format=3).attrs.get(TIME_WINDOWS_ATTR)
    return None if raw is None else tuple(TemporalSpec(str(a), str(b)) for a, b in raw)


def _append_grid_windows(loc: StoreLocation, tiling: Tiling, windows: tuple[TemporalSpec, ...]) -> None:
    """Resize every zone grid array with ``time`` first to ``windows`` (metadata only), write
    the new ``time``/``time_bnds`` values, then the root's ``time_windows`` (the commit)."""
    n = len(windows)
    try:
        root = zarr.open_group(loc.zarr_store(), mode="r+", zarr_format=3)
        for s in tiling.scales:
            for _, g in sorted(group_of(root, scale_name(s)).groups()):
                for _, arr in g.arrays():
                    names = getattr(arr.metadata, "dimension_names", None) or ()
                    if names and names[0] == "time" and arr.shape[0] != n:
                        arr.resize((n,) + arr.shape[1:])
                _write_times(g, windows)
        root.attrs[TIME_WINDOWS_ATTR] = [[w.start, w.end] for w in windows]
    except STORE_ERRORS as exc:
        raise CubeError(f"cannot add windows to tiling store {loc.url!r}: {exc}") from exc
    log.warning("tiling store %s: %d window(s) along time: %s", loc.url, n, [w.label for w in windows])


def _write_times(g: zarr.Group, windows: Sequence[TemporalSpec]) -> None:
    """The ``time`` (window starts) and ``time_bnds`` values of a zone grid, for every window.

    Only the chunks of windows whose value is not stored yet are written."""
    days = np.array([window_days(w.start) for w in windows], "int64")
    bnds = np.array([[window_days(w.start), window_days(w.end)] for w in windows], "int64")
    time, time_bnds = array_of(g, "time"), array_of(g, "time_bnds")
    stored = np.asarray(time[...])
    for t in range(len(windows)):
        if stored[t] != days[t]:
            time[t] = days[t]
            time_bnds[t] = bnds[t]


def _create_tiling(loc: StoreLocation, tiling: Tiling, spec: CampaignSpec, identity: dict[str, Any], embed_dim: int,
                   grid_shape: tuple[int, int] | None, versions: Mapping[str, str] | None,
                   windows: tuple[TemporalSpec, ...] | None = None) -> dict[float, Cube]:
    """Lay out the tiling store: the creating attribute first, the marker last (replacing it)."""
    versions = default_versions(versions)
    confirm_held(loc)  # never over the store of a run that took over meanwhile
    root = zarr.open_group(loc.zarr_store(), mode="w", zarr_format=3, attributes={
        CREATING_ATTR: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    root.create_group("samples", attributes=geoemb_attrs(spec, embed_dim, layout="regular_grid", versions=versions))
    cubes = {}
    for s, table in zip(tiling.scales, tiling.tables):
        sub = spec.replace(scales=(s,))
        chunk = spec.chunk_size
        cubes[s] = Cube.create_or_open(
            loc.child("samples", scale_name(s)), spec=sub, embed_dim=embed_dim,
            grid_shape=grid_shape, versions=versions, n_samples=len(table),
            chunks=_table_chunks(table, max(chunk, 4096)), windows=windows)
        # Tiles lie side by side: the sample cube's chips are a regular grid (Cube writes "irregular").
        zarr.open_group(cubes[s].location.zarr_store(), mode="r+", zarr_format=3).attrs.update(
            geoemb_attrs(sub, embed_dim, layout="regular_grid", versions=versions))
        scale_geoemb = geoemb_attrs(sub, embed_dim, layout="regular_grid", spatial_layout="utm_zones",
                                    versions=versions)
        _create_grids(root.create_group(scale_name(s), attributes={
            **scale_geoemb, "scale_m": s, TILE_M_ATTR: table.tile_m, IMAGE_SIZE_ATTR: table.image_size}),
            table, embed_dim, geoemb_attrs(sub, embed_dim, layout="regular_grid", versions=versions),
            spec.output.dtype, windows)
    root.attrs.put({
        **({} if windows is None else {TIME_WINDOWS_ATTR: [[w.start, w.end] for w in windows]}),
        **geoemb_attrs(spec, embed_dim, layout="regular_grid", spatial_layout="utm_zones", versions=versions),
        TILING_IDENTITY_ATTR: json.dumps(identity, sort_keys=True),
        SPEC_ATTR: spec.to_json(), AOI_ATTR: tiling.aoi_wkb.hex(),
        SYNCED_ATTR: False, TILING_MARKER: TILING_VERSION})
    return cubes


def _table_chunks(table: TileTable, rows: int) -> Callable[[], Iterator[dict[str, Any]]]:
    """A factory of the table's per-sample inputs, ``rows`` tiles at a time (see ``Cube.create_or_open``)."""
    def chunks() -> Iterator[dict[str, Any]]:
        for _, t in table.chunks(rows):
            yield {"ids": t.ids, "lon": t.lon, "lat": t.lat, "geohash": t.geohash, "wkb": t.wkb}
    return chunks


def sample_cube_names(path: str | os.PathLike | StoreLocation) -> list[str]:
    """Names of the sample cubes (one per scale) under ``samples/`` of a tiling store, sorted."""
    loc = StoreLocation.parse(path)
    return sorted(name for name in loc.children("samples") if loc.is_dir(f"samples/{name}"))


def _any_finished(loc: StoreLocation) -> bool:
    """Whether any cell of the store's sample cubes is not pending."""
    return any(Cube.open(loc.child("samples", name))._any_finished() for name in sample_cube_names(loc))


def grid_extent(table: TileTable, epsg: int) -> tuple[int, int, int, int]:
    """Block-aligned ``(row_top, n_rows, col_left, n_cols)`` of a zone's grid."""
    b = table.block
    r_min, r_max, c_min, c_max = table.extent(epsg)
    row_top = (r_max // b + 1) * b - 1
    col_left = (c_min // b) * b
    return row_top, row_top - (r_min // b) * b + 1, col_left, (c_max // b + 1) * b - col_left


def grid_mapping(epsg: int, transform: Affine) -> dict[str, Any]:
    """Attributes of a zone grid's ``spatial_ref`` variable: the CRS as complete CF
    grid-mapping attributes (:meth:`pyproj.crs.CRS.to_cf`), its WKT again as ``spatial_ref``,
    and the GDAL ``GeoTransform`` (what GDAL and rioxarray read)."""
    from pyproj import CRS

    cf = CRS.from_epsg(epsg).to_cf()
    return {**cf, "spatial_ref": cf["crs_wkt"], "GeoTransform": " ".join(str(v) for v in transform.to_gdal())}


def _create_grids(group: zarr.Group, table: TileTable, embed_dim: int, geoemb: dict[str, Any],
                  dtype: str = "float32", windows: Sequence[TemporalSpec] | None = None) -> None:
    """One group per zone: ``embedding(y, x, feature)`` (int8 with ``embedding_scale(y, x)`` when
    ``dtype`` is int8), ``status``, ``sample_index``, coordinates, the CF grid mapping
    (:func:`grid_mapping`), and the ``geoemb:`` (``geoemb``), ``proj:`` and ``spatial:`` attributes.
    With several ``windows``: ``time`` first (chunk 1) on the per-cell variables but
    ``sample_index``, and the ``time``/``time_bnds`` coordinates."""
    b, t = table.block, table.tile_m
    int8 = is_quantised_dtype(dtype)
    tt = () if windows is None else (len(windows),)
    t1, td = (1,) * len(tt), ("time",) * len(tt)
    for epsg in table.zones():
        row_top, ny, col_left, nx = grid_extent(table, epsg)
        transform = Affine(*table.lattice(epsg).raster_transform(row_top, col_left))
        g = group.create_group(f"EPSG{epsg}", attributes={
            **merge_conventions(geoemb, zone_attrs(epsg, transform, (ny, nx))),
            CRS_ATTR: f"EPSG:{epsg}", ROW_TOP_ATTR: row_top, COL_LEFT_ATTR: col_left})
        ref = {"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"}
        scale = QUANTISED["embedding"]
        g.create_array("embedding", shape=tt + (ny, nx, embed_dim), dtype="int8" if int8 else "float32",
                       chunks=t1 + (b, b, embed_dim), fill_value=0 if int8 else np.nan,
                       dimension_names=td + ("y", "x", "feature"), compressors=chunk_codecs(True),
                       attributes={**ref, "long_name": "pooled embedding of the tile"
                                   + (f", int8: multiply by {scale}" if int8 else "")})
        if int8:
            g.create_array(scale, shape=tt + (ny, nx), dtype="float32", chunks=t1 + (b, b), fill_value=np.nan,
                           dimension_names=td + ("y", "x"), compressors=chunk_codecs(True), attributes={
                               **ref, "long_name": f"dequantisation scale of embedding per tile "
                                                   f"(embedding * {scale}; NaN: no data)"})
        g.create_array("status", shape=tt + (ny, nx), dtype="int8", chunks=t1 + (b, b), fill_value=NO_TILE,
                       dimension_names=td + ("y", "x"), compressors=chunk_codecs(True), attributes={
                           **ref, "long_name": "embedding status",
                           "flag_values": [NO_TILE, *FLAG_ATTRS["flag_values"]],
                           "flag_meanings": "no_tile " + " ".join(STATUS_NAMES)})
        g.create_array("sample_index", shape=(ny, nx), dtype="int64", chunks=(b, b), fill_value=-1,
                       dimension_names=("y", "x"), compressors=chunk_codecs(True), attributes={
                           **ref, "long_name": f"row of the tile in samples/{scale_name(table.scale_m)}"})
        for name, n, start, step, std in (("x", nx, transform.c, transform.a, "projection_x_coordinate"),
                                          ("y", ny, transform.f, transform.e, "projection_y_coordinate")):
            arr = g.create_array(name, shape=(n,), dtype="float64", chunks=(n,), fill_value=np.nan,
                                 dimension_names=(name,), attributes={"standard_name": std, "units": "m"})
            arr[...] = start + step * (np.arange(n) + 0.5)
        g.create_array("feature", shape=(embed_dim,), dtype="int64", chunks=(embed_dim,), fill_value=0,
                       dimension_names=("feature",))[...] = np.arange(embed_dim)
        g.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0,
                       attributes=grid_mapping(epsg, transform))
        if windows is not None:
            for d in time_defs(len(windows)):
                g.create_array(d.name, shape=d.shape, dtype=d.dtype, chunks=d.chunks, fill_value=d.fill_value,
                               dimension_names=d.dims, attributes=d.attrs, compressors=d.compressors)
            _write_times(g, windows)
        log.debug("grid %s/EPSG%d: %d x %d cells of %g m", group.path, epsg, ny, nx, t)


def block_batches(table: TileTable, per_task: int = BLOCKS_PER_TASK) -> list[list[tuple]]:
    """The table's blocks ``(epsg, brow, bcol, start, stop)`` in batches of ``per_task``."""
    blocks = list(table.blocks())
    return [blocks[i:i + per_task] for i in range(0, len(blocks), per_task)]


def rasterise_blocks(path: str | StoreLocation, scale_m: float, block: int, blocks: list[tuple], row: np.ndarray,
                     col: np.ndarray, window: int | None = None) -> int:
    """Copy the tiles of ``blocks`` from the scale's sample cube into its zone grids.

    ``blocks`` are consecutive ``(epsg, brow, bcol, start, stop)`` of the tile table;
    ``row``/``col`` its tile indices from the first block's ``start`` to the last
    one's ``stop`` (only those travel to the worker). Each block is written as one
    whole grid chunk (cells without a tile get ``NO_TILE``), so batches may run
    concurrently. In a store with ``time``, ``window`` is the index along ``time`` copied
    (only that window's chunks are written; ``sample_index``, the same in every window,
    with window 0). Returns the tiles copied.
    """
    name = scale_name(scale_m)
    loc = StoreLocation.parse(path)
    samples = zarr.open_group(loc.child("samples", name).zarr_store(), mode="r", zarr_format=3)
    grids = zarr.open_group(loc.child(name).zarr_store(), mode="r+", zarr_format=3)
    t: tuple[int, ...] = () if window is None else (int(window),)
    b, base, copied = int(block), blocks[0][3], 0
    for epsg, brow, bcol, start, stop in blocks:
        g = group_of(grids, f"EPSG{epsg}")
        row_top, col_left = int(str(g.attrs[ROW_TOP_ATTR])), int(str(g.attrs[COL_LEFT_ATTR]))
        tiles: tuple[int | slice, ...] = (*t, slice(start, stop), 0)  # the block's rows at the scale (and window)
        emb = np.asarray(array_of(samples, "embedding")[tiles])
        status = np.asarray(array_of(samples, "status")[tiles])
        top = (brow + 1) * b - 1  # tile row of the block's first grid row
        r = top - np.asarray(row[start - base:stop - base])
        c = np.asarray(col[start - base:stop - base]) - bcol * b
        int8 = emb.dtype.kind == "i"  # int8 store: values and scales are copied as stored
        out_e = np.full((b, b, emb.shape[1]), 0 if int8 else np.nan, emb.dtype)
        out_s = np.full((b, b), NO_TILE, np.int8)
        out_i = np.full((b, b), -1, np.int64)
        out_e[r, c], out_s[r, c], out_i[r, c] = emb, status, np.arange(start, stop)
        r0, c0 = row_top - top, bcol * b - col_left
        cells: tuple[int | slice, ...] = (*t, slice(r0, r0 + b), slice(c0, c0 + b))
        array_of(g, "embedding")[cells] = out_e
        if int8:
            scale = QUANTISED["embedding"]
            out_q = np.full((b, b), np.nan, np.float32)
            out_q[r, c] = np.asarray(array_of(samples, scale)[tiles])
            array_of(g, scale)[cells] = out_q
        if not t or t[0] == 0:
            array_of(g, "sample_index")[r0:r0 + b, c0:c0 + b] = out_i
        array_of(g, "status")[cells] = out_s  # status last, as in the sample cubes
        copied += stop - start
    return copied


def set_synced(path: str | StoreLocation, synced: bool) -> None:
    """Record whether the grids reflect the sample cubes (False while a run is going on)."""
    zarr.open_group(StoreLocation.parse(path).zarr_store(), mode="r+", zarr_format=3).attrs[SYNCED_ATTR] = bool(synced)


def set_completed_windows(path: str | StoreLocation, starts: Sequence[str]) -> None:
    """Record on the root of a tiling store with ``time`` the start dates of the windows in which no
    cell of any scale is pending (``completed_windows``); nothing is written when unchanged.

    Parameters
    ----------
    path : str or StoreLocation
        The tiling store.
    starts : sequence of str
        The completed windows' start dates (ISO), in ``time`` order.
    """
    group = zarr.open_group(StoreLocation.parse(path).zarr_store(), mode="r", zarr_format=3)
    if group.attrs.get(COMPLETED_WINDOWS_ATTR) != list(starts):
        zarr.open_group(StoreLocation.parse(path).zarr_store(), mode="r+", zarr_format=3).attrs[
            COMPLETED_WINDOWS_ATTR] = list(starts)
