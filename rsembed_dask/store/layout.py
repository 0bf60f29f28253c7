"""Layout of the Zarr v3 datacube: status codes, array definitions, input checks.

This module holds what :mod:`rsembed_dask.store.cube` needs to lay out and check a
cube without touching the store: the status codes and their CF attributes, the
names, dimensions, dtypes and chunks of every array, and the comparison of a
stored campaign spec with a given one.

Layout (see ``DESIGN.md``, section "Cube")::

    embedding      (sample, scale, feature)          float32, NaN where not written
    grid           (sample, scale, feature, gy, gx)  float32, grid mode only
    (int8 cubes: embedding and grid are int8, with float32 embedding_scale(sample, scale)
    and grid_scale(sample, scale, gy, gx), NaN where not written; see rsembed_dask.quantize)
    status         (sample, scale)                   int8: 0 pending, 1 ok, 2 no_data, 3 failed
    input_res_m    (sample, scale)                   float32
    valid_fraction (sample, scale)                   float32
    error          (sample, scale)                   str, short reason ("" when none)
    coordinates: sample (ids), lon, lat, geohash, geometry (WKB hex), scale (m), feature

Every data array is chunked ``chunk_size`` along ``sample`` (one chunk = one work unit).
Cubes created since checksums came (:data:`CHECKSUM_CODEC`) end every array's codec chain
with Zarr v3's ``crc32c`` codec: a chunk whose bytes changed fails to decode ("Stored and
computed checksum do not match") instead of decoding to wrong numbers. Older cubes keep
the codecs they were created with (:func:`has_checksums` reads which from the metadata).
A cube that grew (``Cube.append_samples``) holds its samples in *segments*: the group
attribute ``sample_segments`` lists the ``[start, stop)`` rows of the Zarr arrays that hold
samples, each segment starting on a chunk boundary. Rows between a segment's end and the
next chunk boundary are padding: never written (id fill value, empty ``geometry``, NaN
``lon``/``lat``, status pending) and hidden by ``open_cube``. Without the attribute (cubes
written before appends existed) every row is a sample.

Strings (sample ids, geohashes, geometries as WKB hex, error reasons) use
Zarr v3's variable-length UTF-8 data type, which xarray reads back as
``numpy.dtypes.StringDType`` whose elements are ``str``; ``open_cube`` turns them
into ``object`` arrays of ``str`` (plain NumPy/pandas types).

The group attributes also carry the ``geoemb:`` convention (:mod:`rsembed_dask.geoemb`);
they are not part of the spec identity.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import CubeError, SpecError
from .quantize import QUANTISED, geoemb_quantization, is_quantised_dtype, scale_name_of

logger = logging.getLogger(__name__)

__all__ = [
    "statuses_to_run",
    "PENDING",
    "OK",
    "NO_DATA",
    "FAILED",
    "STATUS_NAMES",
    "FLAG_ATTRS",
    "CUBE_VERSION",
    "MARKER_ATTR",
    "MAX_ERROR_LEN",
    "ArrayDef",
    "array_defs",
    "coord_defs",
    "check_inputs",
    "check_shapes",
    "sample_chunks",
    "check_same_ids",
    "spec_differences",
    "SEGMENTS_ATTR",
    "DIGESTS_ATTR",
    "CREATING_ATTR",
    "SPEC_ATTR",
    "SPEC_IDENTITY_ATTR",
    "SPEC_HASH_ATTR",
    "CREATED_ATTR",
    "VERSIONS_ATTR",
    "REQUEST_ACCOUNT_ATTR",
    "LAST_RUN_ATTR",
    "RUNS_ATTR",
    "SKIPPED_ATTR",
    "INPUT_DIGEST_ATTR",
    "TILING_IDENTITY_ATTR",
    "AOI_ATTR",
    "SYNCED_ATTR",
    "TILE_M_ATTR",
    "IMAGE_SIZE_ATTR",
    "CRS_ATTR",
    "ROW_TOP_ATTR",
    "COL_LEFT_ATTR",
    "read_segments",
    "segment_rows",
    "TILING_MARKER",
    "NO_TILE",
    "scale_name",
    "vouched_arrays",
    "count_statuses",
    "CHECKSUM_CODEC",
    "chunk_codecs",
    "has_checksums",
    "ROOT_COPY_KEY",
    "ROOT_COPY_ATTRS",
    "TIME_WINDOWS_ATTR",
    "COMPLETED_WINDOWS_ATTR",
    "TIME_UNITS",
    "time_defs",
    "window_days",
    "refuse_time",
]

PENDING = 0
OK = 1
NO_DATA = 2
FAILED = 3
#: Status names by code, in code order (also the keys of ``Cube.status_counts``).
STATUS_NAMES: tuple[str, ...] = ("pending", "ok", "no_data", "failed")
#: CF attributes of the ``status`` array.
FLAG_ATTRS: dict[str, Any] = {
    "flag_values": [PENDING, OK, NO_DATA, FAILED],
    "flag_meanings": " ".join(STATUS_NAMES),
    "long_name": "embedding status",
}

CUBE_VERSION = 1
#: Group attribute whose presence marks a directory as a finished cube.
MARKER_ATTR = "rsembed_dask_cube_version"
#: Root attribute marking a finished tiling store (per-scale cubes and grids; see tile_cube).
TILING_MARKER = "rsembed_dask_tiling_version"
#: Group attribute written first when a cube or tiling store is created, and removed when its
#: marker is written last: a store holding it was being created by rsembed_dask and never finished.
CREATING_ATTR = "rsembed_dask_creating"
#: Group attribute: ``[[start, stop], ...]`` rows of the arrays holding samples (see module doc).
SEGMENTS_ATTR = "sample_segments"
#: Group attribute: ``{"rows": R, "blake2b": [hex, ...]}``, a digest of the ids and geometries of
#: every block of R rows (see :mod:`rsembed_dask.store.digests`): a resume compares them instead
#: of reading every id and geometry.
DIGESTS_ATTR = "sample_digests"
#: Group attributes of a cube (``SPEC_ATTR`` also of a tiling store's root): the campaign
#: spec as JSON, its identity (what must match to resume) and hash, the creation time and
#: the software versions; written once, at creation.
SPEC_ATTR = "campaign_spec"
SPEC_IDENTITY_ATTR = "spec_identity"
SPEC_HASH_ATTR = "spec_hash"
CREATED_ATTR = "created"
VERSIONS_ATTR = "versions"
#: Group attributes a run writes on its cubes: the Earth Engine request account and the
#: run's report (of the last run that had work), and the rows skipped as invalid.
REQUEST_ACCOUNT_ATTR = "request_account"
LAST_RUN_ATTR = "last_run"
#: One record per run over the cube's life (start, end, how it ended, counts, workers);
#: ``request_account`` is the sum of their requests.
RUNS_ATTR = "runs"
SKIPPED_ATTR = "skipped_rows"
#: Group attribute: ``{"digest": hex, "samples": n}``, the digest of the GeoDataFrame (and spec
#: and windows) the cube last matched (:func:`~rsembed_dask.sampling.samples.samples_digest`) and
#: how many samples it held: a plain rerun of a finished campaign on the same input is recognised
#: from it without building the sample table.
INPUT_DIGEST_ATTR = "input_digest"
#: Root attributes of a tiling store: what must match to resume, the AOI (WKB hex), and
#: whether the zone grids reflect the sample cubes.
TILING_IDENTITY_ATTR = "tiling_identity"
AOI_ATTR = "aoi_wkb_hex"
SYNCED_ATTR = "raster_synced"
#: Attributes of a tiling store's scale groups (tile side in metres, in pixels) and zone
#: groups (CRS, and the tile row and column of the grid's top-left cell).
TILE_M_ATTR = "tile_m"
IMAGE_SIZE_ATTR = "image_size"
CRS_ATTR = "crs"
ROW_TOP_ATTR = "row_top"
COL_LEFT_ATTR = "col_left"
#: Grid status of cells without a tile (outside the AOI or in another zone), in a tiling store.
NO_TILE = -1
#: Error reasons longer than this are truncated when written.
MAX_ERROR_LEN = 200
#: Non-dimension coordinates on ``sample``, listed in each data variable's CF
#: ``coordinates`` attribute so that xarray attaches them.
SAMPLE_COORDS = ("lon", "lat", "geohash", "geometry")
# 1-D coordinate arrays are written once; big chunks keep the file count low (a million
# samples: 4 objects per coordinate, 20 in all, against ~8,000 data objects at 3 scales).
_COORD_CHUNK = 262_144
#: Name (in ``zarr.json``'s codec list) of the checksum codec that closes every new array's
#: codec chain: CRC-32C of the encoded chunk, checked on every read.
CHECKSUM_CODEC = "crc32c"
#: Attribute of the ``scale`` coordinate array holding a copy (JSON text) of the root attributes
#: that identify the cube (spec, identity, hash, versions, creation time, segments, marker):
#: ``--repair`` rebuilds a lost or broken root ``zarr.json`` from it when the arrays are intact.
#: (An array's attributes rather than an object of its own: Zarr warns about every object in a
#: group that is not a node, whenever the group's members are listed.)
ROOT_COPY_KEY = "rsembed_dask_root_copy"
#: Group attribute of a cube with a ``time`` dimension: its windows, ``[[start, end], ...]``
#: (ISO dates, end exclusive), in ``time`` order. Absent: a cube of one window, no ``time``
#: dimension (every cube written before windows, and every single-window campaign).
TIME_WINDOWS_ATTR = "time_windows"
#: Group attribute of a cube with a ``time`` dimension: the start dates of the windows in which
#: no cell is pending (written at the end of every run).
COMPLETED_WINDOWS_ATTR = "completed_windows"
#: CF units of the ``time`` and ``time_bnds`` arrays (int64 days; xarray decodes datetime64).
TIME_UNITS = "days since 1970-01-01"
#: The root attributes kept in :data:`ROOT_COPY_KEY` (the others are a run's reports).
ROOT_COPY_ATTRS = (SPEC_ATTR, SPEC_IDENTITY_ATTR, SPEC_HASH_ATTR, VERSIONS_ATTR, CREATED_ATTR,
                   SEGMENTS_ATTR, DIGESTS_ATTR, MARKER_ATTR, TIME_WINDOWS_ATTR)


def chunk_codecs(checksum: bool) -> Any:
    """The ``compressors`` to create an array with: Zstd, then CRC-32C when ``checksum``.

    ``"auto"`` (Zarr's default: Zstd alone) without a checksum, so a repaired array of
    an old cube gets the metadata it was created with.
    """
    if not checksum:
        return "auto"
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return (ZstdCodec(level=0, checksum=False), Crc32cCodec())


def has_checksums(meta: Mapping[str, Any]) -> bool:
    """Whether parsed array metadata (a ``zarr.json``) ends its codec chain with ``crc32c``."""
    codecs = meta.get("codecs") or []
    return any(isinstance(c, Mapping) and c.get("name") == CHECKSUM_CODEC for c in codecs)


def vouched_arrays(cells: np.ndarray, has_grid: bool, quantised: bool = False) -> tuple[str, ...]:
    """Data arrays whose chunk a unit must have, given its status codes ``cells``.

    Zarr stores no chunk that holds only the fill value, so a missing chunk is damage
    only where the status vouches for data: ``ok`` cells hold an embedding, an input
    resolution (and a token grid), ``ok`` and ``no_data`` cells a valid fraction. A
    ``failed`` cell vouches for no data (marking a unit failed writes only its status and
    reason), and its reason is not vouched for either: a retry interrupted between its data
    and status writes may leave ``failed`` cells whose reasons were cleared (the chunk of an
    all-empty ``error`` is not stored), and such a cell is re-run anyway. An int8 cube
    (``quantised``) vouches for the scale arrays of ``ok`` cells too.
    """
    cells = np.asarray(cells)
    out: list[str] = []
    if (cells == OK).any():
        out += ["embedding", "input_res_m"] + (["grid"] if has_grid else [])
        if quantised:
            out += [QUANTISED["embedding"]] + ([QUANTISED["grid"]] if has_grid else [])
    if np.isin(cells, (OK, NO_DATA)).any():
        out.append("valid_fraction")
    return tuple(out)


def statuses_to_run(*, retry_failed: bool = False, retry_no_data: bool = False) -> tuple[int, ...]:
    """The status codes a run takes as work: pending, and failed / no_data when asked.

    >>> statuses_to_run(retry_failed=True)
    (0, 3)
    """
    return (PENDING,) + ((FAILED,) if retry_failed else ()) + ((NO_DATA,) if retry_no_data else ())


def count_statuses(status: Any) -> np.ndarray:
    """Cells per status code and scale of a ``(sample, scale)`` status array.

    Returns
    -------
    numpy.ndarray
        ``(n_scales, len(STATUS_NAMES))`` int64: column ``k`` counts code ``k``
        (:data:`STATUS_NAMES` order). Codes outside them are not counted.

    Examples
    --------
    >>> count_statuses(np.array([[OK, PENDING], [OK, FAILED]], dtype="int8")).tolist()
    [[0, 2, 0, 0], [1, 0, 0, 1]]
    """
    st = np.asarray(status).astype(np.int64)
    st = st.reshape(st.shape[0], -1)
    n = len(STATUS_NAMES)
    out = np.zeros((st.shape[1], n), np.int64)
    for si in range(st.shape[1]):
        col = st[:, si]
        out[si] = np.bincount(col[(col >= 0) & (col < n)], minlength=n)
    return out


def scale_name(scale_m: float) -> str:
    """Group name of a scale in a tiling store: ``10.0 -> "10m"``, ``2.5 -> "2.5m"``."""
    return f"{float(scale_m):g}m"


class ArrayDef:
    """Name, dimensions, shape, dtype, chunks, fill value and attributes of one array.

    Parameters
    ----------
    name : str
        Array name in the group.
    dims : tuple of str
        Dimension names (stored as Zarr v3 ``dimension_names``).
    shape, chunks : tuple of int
        Array and chunk shape.
    dtype : str or type
        NumPy dtype, or ``str`` for variable-length UTF-8.
    fill_value : object
        Value of cells never written.
    attrs : dict
        Array attributes.
    checksum : bool
        End the codec chain with ``crc32c`` (:func:`chunk_codecs`); False for arrays of
        cubes created before checksums.
    """

    @property
    def compressors(self) -> Any:
        """The ``compressors`` argument of ``zarr.Group.create_array`` for this array."""
        return chunk_codecs(self.checksum)

    __slots__ = ("name", "dims", "shape", "dtype", "chunks", "fill_value", "attrs", "checksum")

    def __init__(self, name: str, dims: tuple[str, ...], shape: tuple[int, ...], dtype: Any,
                 chunks: tuple[int, ...], fill_value: Any, attrs: dict[str, Any] | None = None,
                 checksum: bool = True):
        self.checksum = bool(checksum)
        self.name = name
        self.dims = dims
        self.shape = shape
        self.dtype = dtype
        self.chunks = chunks
        self.fill_value = fill_value
        self.attrs = dict(attrs or {})

    def __repr__(self) -> str:
        return f"ArrayDef({self.name!r}, dims={self.dims}, shape={self.shape}, dtype={self.dtype!r})"


def array_defs(n_samples: int, n_scales: int, chunk_size: int, embed_dim: int,
               grid_shape: tuple[int, int] | None, dtype: str = "float32",
               checksum: bool = True, n_times: int | None = None) -> list[ArrayDef]:
    """The data arrays of a cube (everything but the coordinates).

    Parameters
    ----------
    n_samples, n_scales, chunk_size, embed_dim : int
        Cube extent; one chunk along ``sample`` is one work unit.
    grid_shape : tuple of int or None
        ``(gy, gx)`` of token grids, or None for a pooled-only cube.
    dtype : str
        ``OutputSpec.dtype``: ``"float32"``, or ``"int8"`` for quantised ``embedding``
        (and ``grid``) with float32 ``embedding_scale(sample, scale)`` (and
        ``grid_scale(sample, scale, gy, gx)``) beside them (see :mod:`rsembed_dask.quantize`).
    n_times : int, optional
        Windows of a cube with a ``time`` dimension: every array gets ``time`` first,
        chunked 1 along it (so a window added later writes new chunks only). None: no
        ``time`` dimension (a cube of one window).

    Returns
    -------
    list of ArrayDef
    """
    # Always chunk_size (also when the cube holds fewer samples): a cube that grows keeps
    # "one chunk = one unit" for the new chunks (Zarr cannot change a chunk shape).
    cs = int(chunk_size)
    ss = ("sample", "scale")
    coords = {"coordinates": " ".join(SAMPLE_COORDS)}
    int8 = is_quantised_dtype(dtype)
    if not int8 and dtype != "float32":
        raise SpecError("dtype", dtype, "'float32' or 'int8'")

    def data(name: str, dims: tuple[str, ...], shape: tuple[int, ...], chunks: tuple[int, ...],
             long_name: str) -> list[ArrayDef]:
        if not int8:
            return [ArrayDef(name, dims, shape, "float32", chunks, np.nan, {**coords, "long_name": long_name})]
        scale = scale_name_of(name)
        keep = tuple(i for i, d in enumerate(dims) if d != "feature")
        return [ArrayDef(name, dims, shape, "int8", chunks, 0,
                         {**coords, "long_name": f"{long_name}, int8: multiply by {scale}",
                          "quantization": geoemb_quantization(scale)}),
                ArrayDef(scale, tuple(dims[i] for i in keep), tuple(shape[i] for i in keep),
                         "float32", tuple(chunks[i] for i in keep), np.nan,
                         {**coords, "long_name": f"dequantisation scale of {name} per vector "
                                                 f"({name} * {scale}; NaN: no data)"})]

    defs = data("embedding", ss + ("feature",), (n_samples, n_scales, embed_dim), (cs, 1, embed_dim),
                "pooled embedding")
    defs += [
        ArrayDef("status", ss, (n_samples, n_scales), "int8", (cs, 1), PENDING,
                 {**coords, **FLAG_ATTRS}),
        ArrayDef("input_res_m", ss, (n_samples, n_scales), "float32", (cs, 1), np.nan,
                 {**coords, "long_name": "input resolution given to the model", "units": "m"}),
        ArrayDef("valid_fraction", ss, (n_samples, n_scales), "float32", (cs, 1), np.nan,
                 {**coords, "long_name": "fraction of valid (unmasked) pixels"}),
        ArrayDef("error", ss, (n_samples, n_scales), str, (cs, 1), "",
                 {**coords, "long_name": "short reason where status is failed or no_data"}),
    ]
    if grid_shape is not None:
        gy, gx = grid_shape
        defs += data("grid", ss + ("feature", "gy", "gx"), (n_samples, n_scales, embed_dim, gy, gx),
                     (cs, 1, embed_dim, gy, gx), "patch-token embedding grid")
    for d in defs:
        d.checksum = checksum
        if n_times is not None:
            d.dims, d.shape, d.chunks = ("time",) + d.dims, (int(n_times),) + d.shape, (1,) + d.chunks
    return defs


def window_days(date: Any) -> int:
    """Days since 1970-01-01 of an ISO date (or ``datetime.date``): the stored ``time`` values.

    >>> window_days("1970-01-02")
    1
    """
    return int(np.datetime64(str(date), "D").astype("int64"))


def refuse_time(attrs: Mapping[str, Any], path: Any, what: str) -> None:
    """Raise CubeError when the cube with group attributes ``attrs`` has a ``time`` dimension and
    ``what`` (an export, a verify...) does not handle it yet.

    >>> refuse_time({}, "c.zarr", "export")  # a cube of one window: nothing to refuse
    """
    windows = attrs.get(TIME_WINDOWS_ATTR)
    if windows is not None:
        raise CubeError(f"cube {str(path)!r} has a time dimension ({len(windows)} windows): {what} does not "
                        "handle cubes with time yet; read it with open_cube / explore.change, or run one "
                        "campaign (one cube) per window for this")


def time_defs(n_times: int, checksum: bool = True) -> list[ArrayDef]:
    """The ``time`` coordinate (window starts) and its CF ``time_bnds(time, bnds)`` ([start, end)).

    Both int64 days (:data:`TIME_UNITS`), chunk 1 along ``time``: a window added later writes
    its own chunks and rewrites none.
    """
    n = int(n_times)
    defs = [
        ArrayDef("time", ("time",), (n,), "int64", (1,), 0,
                 {"standard_name": "time", "long_name": "window start", "units": TIME_UNITS,
                  "calendar": "proleptic_gregorian", "bounds": "time_bnds"}),
        ArrayDef("time_bnds", ("time", "bnds"), (n, 2), "int64", (1, 2), 0,
                 {"long_name": "window [start, end), end exclusive", "units": TIME_UNITS,
                  "calendar": "proleptic_gregorian"}),
    ]
    for d in defs:
        d.checksum = checksum
    return defs


def coord_defs(n_samples: int, n_scales: int, embed_dim: int, id_dtype: Any,
               checksum: bool = True) -> list[ArrayDef]:
    """The coordinate arrays of a cube (written once, at creation; ``checksum`` as :func:`array_defs`)."""
    c = min(n_samples, _COORD_CHUNK)
    defs = [
        ArrayDef("sample", ("sample",), (n_samples,), id_dtype, (c,),
                 "" if id_dtype is str else 0, {"long_name": "sample id"}),
        ArrayDef("lon", ("sample",), (n_samples,), "float64", (c,), np.nan,
                 {"standard_name": "longitude", "units": "degrees_east"}),
        ArrayDef("lat", ("sample",), (n_samples,), "float64", (c,), np.nan,
                 {"standard_name": "latitude", "units": "degrees_north"}),
        ArrayDef("geohash", ("sample",), (n_samples,), str, (c,), "",
                 {"long_name": "geohash of the centroid"}),
        ArrayDef("geometry", ("sample",), (n_samples,), str, (c,), "",
                 {"long_name": "sample footprint", "wkb_encoding": "hex", "crs": "EPSG:4326"}),
        ArrayDef("scale", ("scale",), (n_scales,), "float64", (n_scales,), np.nan,
                 {"long_name": "pixel size", "units": "m"}),
        ArrayDef("feature", ("feature",), (embed_dim,), "int64", (embed_dim,), 0,
                 {"long_name": "embedding feature index"}),
    ]
    for d in defs:
        d.checksum = checksum
    return defs


def _ids_array(ids: Any) -> tuple[np.ndarray, Any]:
    """Sample ids as int64 or object-of-str, and the Zarr dtype to store them with."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise SpecError("ids", f"array of shape {arr.shape}", "a 1-D sequence of sample ids")
    if arr.size == 0:
        raise SpecError("ids", "[]", "at least one sample id")
    if arr.dtype.kind == "O" and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                     for v in arr.tolist()):
        arr = arr.astype("int64")  # integer ids from a GeoDataFrame index, held as objects
    if arr.dtype.kind in "iu":
        return arr.astype("int64"), "int64"
    if arr.dtype.kind in "USOT":
        if not all(isinstance(v, (str, np.str_)) for v in arr.tolist()):
            bad = next(v for v in arr.tolist() if not isinstance(v, (str, np.str_)))
            raise SpecError("ids", bad, "sample ids that are all strings or all integers")
        return np.array([str(v) for v in arr.tolist()], dtype=object), str
    raise SpecError("ids", f"dtype {arr.dtype}", "sample ids that are all strings or all integers")


def _wkb_hex(values: Sequence[Any]) -> np.ndarray:
    """WKB given as bytes, hex strings or shapely geometries, as hex strings."""
    out = []
    for i, v in enumerate(values):
        if isinstance(v, (bytes, bytearray, memoryview)):
            out.append(bytes(v).hex())
        elif isinstance(v, str):
            out.append(v)
        elif hasattr(v, "wkb_hex"):
            out.append(v.wkb_hex)
        elif v is None:
            out.append("")
        else:
            raise SpecError(f"wkb[{i}]", type(v).__name__, "WKB bytes, a hex string or a shapely geometry")
    return np.array(out, dtype=object)


def check_inputs(ids: Any, lon: Any, lat: Any, geohash: Any, wkb: Any) -> dict[str, Any]:
    """Validate per-sample inputs and return them as arrays ready to write.

    Returns
    -------
    dict
        ``sample`` (int64 or object of str), ``id_dtype``, ``lon``, ``lat``
        (float64), ``geohash`` and ``geometry`` (object of str, WKB as hex).

    Raises
    ------
    SpecError
        On duplicate ids, mismatched lengths or bad coordinates.
    """
    sample, id_dtype = _ids_array(ids)
    n = sample.shape[0]
    import pandas as pd

    dup = pd.Index(sample).duplicated()  # hashed: a sort of a million string ids costs seconds
    if dup.any():
        raise SpecError("ids", sample[dup][0], "unique sample ids")
    out: dict[str, Any] = {"sample": sample, "id_dtype": id_dtype}
    for name, values, lo, hi in (("lon", lon, -180, 180), ("lat", lat, -90, 90)):
        a = np.asarray(values, dtype="float64")
        if a.shape != (n,):
            raise SpecError(name, f"shape {a.shape}", f"one value per sample ({n})")
        if not np.all(np.isfinite(a) & (a >= lo) & (a <= hi)):
            raise SpecError(name, a[~(np.isfinite(a) & (a >= lo) & (a <= hi))][0],
                            f"finite values in [{lo}, {hi}]")
        out[name] = a
    gh = [str(v) for v in geohash]
    if len(gh) != n:
        raise SpecError("geohash", f"{len(gh)} values", f"one value per sample ({n})")
    out["geohash"] = np.array(gh, dtype=object)
    geom = _wkb_hex(list(wkb))
    if geom.shape[0] != n:
        raise SpecError("wkb", f"{geom.shape[0]} values", f"one value per sample ({n})")
    out["geometry"] = geom
    return out


def check_shapes(mode: str, embed_dim: Any, grid_shape: Any) -> tuple[int, int] | None:
    """Validate ``embed_dim`` and ``grid_shape`` for an output ``mode``; the grid shape to use.

    Raises
    ------
    SpecError
        ``embed_dim`` not a positive integer, or a bad ``grid_shape`` in grid mode.
    """
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, (int, np.integer)) or embed_dim < 1:
        raise SpecError("embed_dim", embed_dim, "a positive integer")
    if mode != "grid":
        return None
    if grid_shape is None or len(grid_shape) != 2 or min(int(g) for g in grid_shape) < 1:
        raise SpecError("grid_shape", grid_shape, "(gy, gx) positive integers when output.mode is 'grid'")
    return int(grid_shape[0]), int(grid_shape[1])


def sample_chunks(ids: Any, lon: Any, lat: Any, geohash: Any, wkb: Any, *,
                  chunks: Callable[[], Iterable[Mapping[str, Any]]] | None,
                  n_samples: Any) -> tuple[int, Callable[[], Iterator[dict[str, Any]]]]:
    """The number of samples and a factory of checked per-chunk inputs (see :func:`check_inputs`).

    Either whole arrays (``ids`` ... ``wkb``) or ``chunks()`` yielding dicts with those
    keys, ``n_samples`` rows in all (ids are then checked unique within each chunk only).
    """
    if chunks is None:
        whole = check_inputs(ids, lon, lat, geohash, wkb)
        return whole["sample"].shape[0], lambda: iter([whole])
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise SpecError("n_samples", n_samples, "the number of rows chunks() yields (>= 1)")
    return int(n_samples), lambda: (check_inputs(c["ids"], c["lon"], c["lat"], c["geohash"], c["wkb"])
                                    for c in chunks())


def check_same_ids(stored: Any, source: Callable[[], Iterator[dict[str, Any]]], n_given: int,
                   path: str) -> None:
    """Raise CubeError unless the stored ``sample`` array holds the ids ``source()`` yields."""
    if stored.shape[0] != n_given:
        raise CubeError(f"cube {path!r} holds other sample ids than given "
                        f"(stored {stored.shape[0]} samples, given {n_given})")
    start = 0
    for inputs in source():
        given = inputs["sample"].tolist()
        have = stored[start:start + len(given)].tolist()
        if have != given:
            i = next(i for i, (a, b) in enumerate(zip(have, given)) if a != b)
            raise CubeError(f"cube {path!r} holds other sample ids than given (first difference "
                            f"at position {start + i}: stored {have[i]!r}, given {given[i]!r})")
        start += len(given)


def read_segments(attrs: Mapping[str, Any], n_rows: int, chunk_size: int) -> tuple[tuple[int, int], ...]:
    """The ``[start, stop)`` row segments holding samples, from the group attributes.

    Absent attribute: one segment of every row. Raises CubeError on segments that are
    not sorted, overlap, leave the arrays or do not start on a chunk boundary.
    """
    raw = attrs.get(SEGMENTS_ATTR)
    if raw is None:
        return ((0, int(n_rows)),)
    segs = tuple((int(a), int(b)) for a, b in raw)
    prev = 0
    for a, b in segs:
        if a < prev or b <= a or b > n_rows or a % chunk_size:
            raise CubeError(f"cube attribute {SEGMENTS_ATTR}={raw!r} is inconsistent: expected sorted "
                            f"[start, stop) row ranges within {n_rows} rows, each starting at a "
                            f"multiple of chunk_size={chunk_size}")
        prev = b
    return segs


def segment_rows(segments: Sequence[tuple[int, int]]) -> np.ndarray:
    """Rows (int64, sorted) of the arrays that hold samples."""
    return np.concatenate([np.arange(a, b, dtype="int64") for a, b in segments])


_ABSENT = object()
#: Identity fields left out when they hold their default (so older specs keep their hash):
#: an absent one means this value.
_OMITTED_DEFAULTS = {"output.dtype": "float32"}


def _fmt(v: Any, path: str = "") -> str:
    if v is _ABSENT:
        return f"{_OMITTED_DEFAULTS[path]!r} (the default)" if path in _OMITTED_DEFAULTS else "<absent>"
    return repr(v)


def spec_differences(stored: Mapping[str, Any], given: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Fields that differ between two spec identities, as dotted paths.

    Parameters
    ----------
    stored, given : mapping
        JSON-like spec identities (nested dicts).

    Returns
    -------
    list of str
        One line per differing leaf, e.g.
        ``"model.model_id: stored 'test-tiny', given 'test-small'"``.
    """
    lines: list[str] = []
    for key in sorted(set(stored) | set(given)):
        path = f"{prefix}.{key}" if prefix else str(key)
        a, b = stored.get(key, _ABSENT), given.get(key, _ABSENT)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            lines.extend(spec_differences(a, b, path))
        elif a != b:
            lines.append(f"{path}: stored {_fmt(a, path)}, given {_fmt(b, path)}")
    return lines


def normalise_identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    """A spec identity as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(identity, sort_keys=True))


def check_unit_arrays(n: int, embed_dim: int, grid_shape: tuple[int, int] | None, *,
                      embedding: Any, status: Any, input_res_m: Any, valid_fraction: Any,
                      error: Sequence[str | None], grid: Any) -> dict[str, np.ndarray]:
    """Coerce and shape-check the arrays of one unit write.

    Raises
    ------
    CubeError
        On a wrong shape, an unknown status code, or a grid given to a pooled cube.
    """
    def arr(name: str, value: Any, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        a = np.asarray(value, dtype=dtype)
        if a.shape != shape:
            raise CubeError(f"write_unit: {name} has shape {a.shape}, expected {shape}")
        return a

    out = {
        "embedding": arr("embedding", embedding, "float32", (n, embed_dim)),
        "input_res_m": arr("input_res_m", input_res_m, "float32", (n,)),
        "valid_fraction": arr("valid_fraction", valid_fraction, "float32", (n,)),
    }
    st = np.asarray(status)
    if st.shape != (n,) or st.dtype.kind not in "iu":
        raise CubeError(f"write_unit: status must be {n} integer codes, got {st.dtype} {st.shape}")
    if st.size and (st.min() < PENDING or st.max() > FAILED):
        raise CubeError(f"write_unit: status codes must be in {FLAG_ATTRS['flag_values']}, "
                        f"got {sorted(set(st.tolist()))}")
    out["status"] = st.astype("int8")
    errs = [("" if e is None else str(e))[:MAX_ERROR_LEN] for e in error]
    if len(errs) != n:
        raise CubeError(f"write_unit: error has {len(errs)} entries, expected {n}")
    out["error"] = np.array(errs, dtype=object)
    if grid is not None:
        if grid_shape is None:
            raise CubeError("write_unit: grid given but the cube is pooled-only (output.mode='pooled')")
        out["grid"] = arr("grid", grid, "float32", (n, embed_dim, *grid_shape))
    return out


def default_versions(versions: Mapping[str, str] | None) -> dict[str, str]:
    """Version strings for the cube attributes: those given, plus rsembed_dask and zarr."""
    from zarr import __version__ as zarr_version

    out = {str(k): str(v) for k, v in (versions or {}).items()}
    if "rsembed_dask" not in out:
        from importlib.metadata import PackageNotFoundError, version

        try:
            out["rsembed_dask"] = version("rsembed_dask")
        except PackageNotFoundError:
            out["rsembed_dask"] = "unknown"
    out.setdefault("zarr", zarr_version)
    return out
