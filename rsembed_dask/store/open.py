"""Where cubes live on disk: probing a path, opening a cube with xarray, nearest-sample lookup.

Also the store's own view of a cube, for finding damage without trusting Zarr's
fill values: every array's metadata (``<array>/zarr.json``) and the chunks an
array really has on disk (:func:`chunk_keys`; Zarr reads a missing chunk as its
fill value, silently). Writing and resuming are :class:`rsembed_dask.store.cube.Cube`'s.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
import zarr
from dask.utils import format_bytes

from .location import STORE_ERRORS, StoreLocation
from .layout import (CREATING_ATTR, CUBE_VERSION, MARKER_ATTR, ROOT_COPY_KEY, SPEC_ATTR, TILING_MARKER, TIME_WINDOWS_ATTR,
                     read_segments, segment_rows)
from .quantize import QUANTISED, is_quantised_dtype
from ..errors import CubeDamagedError, CubeError

__all__ = ["LOCATION_ENCODING", "probe_store", "check_writable", "check_free_space", "free_space", "unfinished_store", "store_bytes",
           "CREATING_ATTR", "open_cube", "plain_strings", "dequantize_dataset", "nearest_sample",
           "is_tiling_store", "array_of", "group_of", "attr_text",
           "cube_array_names", "array_meta_problem", "read_array_meta", "chunk_keys", "missing_coordinate_chunks",
           "damage_hint", "DECODE_ERRORS", "stored_chunk_size", "TIME_NAMES"]

#: What reading a damaged chunk raises: numcodecs' Zstd errors (RuntimeError), a decoded
#: size or UTF-8 that does not fit the array (ValueError), an unreadable file (OSError).
DECODE_ERRORS = (RuntimeError, ValueError, OSError)

#: Key of ``Dataset.encoding`` holding the :class:`StoreLocation` a cube was opened from.
LOCATION_ENCODING = "rsembed_location"

#: Coordinate arrays of a cube, then its data arrays (``grid`` only in grid mode).
COORD_NAMES = ("sample", "lon", "lat", "geohash", "geometry", "scale", "feature")
DATA_NAMES = ("embedding", "status", "input_res_m", "valid_fraction", "error")
#: The coordinates of a cube with a ``time`` dimension (several windows): window starts and CF bounds.
TIME_NAMES = ("time", "time_bnds")

_EARTH_RADIUS_M = 6_371_008.8

#: Names a tiling store's root holds: ``samples`` and one group per scale (``10m``, ``2.5m``).
_TILING_ENTRY = re.compile(r"^(samples|[0-9][0-9.e+]*m)$")

log = logging.getLogger(__name__)


def _read_group_meta(loc: StoreLocation) -> dict[str, Any] | None:
    """The parsed ``zarr.json`` of ``loc``, or None when it is unreadable or not JSON."""
    try:
        raw = loc.read("zarr.json")
        meta = None if raw is None else json.loads(raw)
    except STORE_ERRORS + (ValueError,):
        return None
    return meta if isinstance(meta, dict) else None


def _has_status_chunk(loc: StoreLocation) -> bool:
    """Whether any ``status`` array under ``loc`` has a stored chunk (some unit finished there)."""
    if not loc.local:  # an unfinished store on a bucket: one listing of what it holds
        return any(re.search(r"(^|/)status/c([./]|$)", key) for key, _ in loc.walk())
    path = loc.path
    for root, dirs, files in os.walk(path):
        if os.path.basename(root) == "status" and "zarr.json" in files:
            chunks = os.path.join(root, "c")
            if (any(f.startswith("c.") for f in files) or os.path.isfile(chunks)
                    or any(fs for _, _, fs in os.walk(chunks))):
                return True
        dirs[:] = [d for d in dirs if d != "c"]  # chunk directories of other arrays: not walked
    return False


def unfinished_store(path: str | os.PathLike | StoreLocation, *, tiling: bool = False) -> str | None:
    """Why ``path`` holds a store whose creation by rsembed_dask was interrupted; None if it does not.

    Such a store (a crash or a full disk while the cube was laid out) has a ``zarr.json``
    without the marker written last, and is recognised as ours: its group holds
    :data:`CREATING_ATTR` (written first), or, from before that attribute existed or
    when its ``zarr.json`` could not be written whole, it holds no attributes and only
    the names a cube (``tiling``: a tiling store) has. It is safe to recreate only
    because no unit finished in it: a store with a stored ``status`` chunk is never one.

    Parameters
    ----------
    path : str, path-like or StoreLocation
    tiling : bool
        Recognise a tiling store's root instead of a sample cube.

    Returns
    -------
    str or None
        What was found, for a warning.
    """
    loc = StoreLocation.parse(path)
    if not loc.is_file("zarr.json"):
        return None
    entries = loc.children() - {"zarr.json"}
    kind = "a tiling store" if tiling else "a cube"
    if not (all(_TILING_ENTRY.match(e) for e in entries) if tiling
            else entries <= set(COORD_NAMES + DATA_NAMES + TIME_NAMES + ("grid",))):
        return None  # names that are not ours: a foreign store, refused
    meta = _read_group_meta(loc)
    marker = TILING_MARKER if tiling else MARKER_ATTR
    names = ", ".join(sorted(entries)) or "none yet"
    if meta is None:
        why = f"its zarr.json is unreadable and it holds only {kind}'s arrays ({names})"
    else:
        attrs = meta.get("attributes") or {}
        if meta.get("node_type") != "group" or not isinstance(attrs, dict) or marker in attrs:
            return None
        if CREATING_ATTR in attrs:
            why = (f"its {CREATING_ATTR!r} attribute, written first (at {attrs[CREATING_ATTR]}), is there; "
                   f"the {marker!r} marker, written last, is not")
        elif not attrs:
            why = f"its group has no attributes and it holds only {kind}'s arrays ({names})"
        else:
            return None  # attributes that are not ours
    if _has_status_chunk(loc):
        return None
    return why


def store_bytes(path: str | os.PathLike | StoreLocation) -> int:
    """Bytes the files under ``path`` occupy on disk, or its objects hold (0 when it does not exist)."""
    return sum(size for _, size in StoreLocation.parse(path).walk())


def array_of(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of ``group``.

    Raises
    ------
    CubeDamagedError
        ``name`` is a group where the layout has an array.
    """
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise CubeDamagedError(f"{group.store_path}/{name} is a group where the store's layout has an array")
    return node


def group_of(group: zarr.Group, name: str) -> zarr.Group:
    """The group ``name`` of ``group`` (CubeDamagedError when it is an array)."""
    node = group[name]
    if not isinstance(node, zarr.Group):
        raise CubeDamagedError(f"{group.store_path}/{name} is an array where the store's layout has a group")
    return node


def attr_text(attrs: Mapping[str, Any], name: str) -> str:
    """The string attribute ``name`` (CubeDamagedError when missing or not a string)."""
    value = attrs.get(name)
    if not isinstance(value, str):
        raise CubeDamagedError(f"store attribute {name!r} is {value!r}, expected a string (JSON or WKB hex)")
    return value


def probe_store(path: str | os.PathLike | StoreLocation, *, arrays: bool = True) -> dict[str, Any] | None:
    """Classify ``path``: None when it does not exist or is an empty directory.

    Returns the group metadata (parsed ``zarr.json``) of an existing cube.

    Parameters
    ----------
    path : str, path-like or StoreLocation
        The cube directory or URL.
    arrays : bool
        Also check that every array's metadata (``<array>/zarr.json``) is readable and
        that every coordinate chunk is stored (a few small files and directory
        listings), so that a damaged cube is refused with its diagnosis instead of
        failing later inside Zarr or reading fill values as ids.

    Raises
    ------
    CubeDamagedError
        An array's metadata is missing or unreadable.
    CubeError
        When ``path`` is a file, or a directory that is not a finished cube.
    """
    loc = StoreLocation.parse(path)
    path = str(loc)
    if loc.local and os.path.exists(path) and not os.path.isdir(path):
        raise CubeError(f"cube path {path!r} exists and is a file, not a Zarr cube directory")
    try:
        raw = loc.read("zarr.json")
    except IsADirectoryError:
        raw = None
    except STORE_ERRORS as exc:
        raise CubeError(f"cube path {path!r} cannot be read ({type(exc).__name__}: {exc})") from exc
    if raw is None:
        if not loc.children():
            if not loc.local and loc.is_file():
                raise CubeError(f"cube path {path!r} exists and is an object, not a Zarr cube prefix")
            return None
        _refuse_lost_root(loc, "its root zarr.json is missing (no zarr.json)")
        raise CubeError(f"cube path {path!r} exists and is not an rsembed_dask cube "
                        "(no zarr.json); choose another path or remove it")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        if unfinished_store(loc) is not None:
            raise CubeError(_unfinished_message(path, f"cannot read zarr.json ({exc})")) from exc
        _refuse_lost_root(loc, f"cannot read zarr.json ({exc})")
        raise CubeDamagedError(f"cube path {path!r}: cannot read zarr.json ({exc}); if this is a cube, its group "
                               "metadata (which holds the campaign spec) is damaged and no run can repair it: "
                               "restore it from a copy") from exc
    attrs = meta.get("attributes") or {} if isinstance(meta, dict) else {}
    if not isinstance(meta, dict) or meta.get("node_type") != "group" or MARKER_ATTR not in attrs:
        why = unfinished_store(loc)
        if why is not None:
            raise CubeError(_unfinished_message(path, why))
        _refuse_lost_root(loc, "its root zarr.json holds no rsembed_dask cube attributes")
        raise CubeError(f"cube path {path!r} is a Zarr store but not a finished rsembed_dask cube "
                        f"(no {MARKER_ATTR!r} attribute); choose another path or remove it")
    if attrs[MARKER_ATTR] != CUBE_VERSION:
        raise CubeError(f"cube {path!r} has layout version {attrs[MARKER_ATTR]!r}; "
                        f"this rsembed_dask reads version {CUBE_VERSION}")
    if arrays:
        found = []
        for name in cube_array_names(attrs):
            meta_a, why = array_meta_problem(loc, name)
            if meta_a is None:
                found.append(why or f"array {name!r} is unreadable")
            elif name in COORD_NAMES:
                segments = (read_segments(attrs, int(meta_a["shape"][0]), 1)
                            if name not in ("scale", "feature") else None)
                lost = missing_coordinate_chunks(loc, name, meta_a, segments)
                if lost:
                    lo, hi = lost[0]
                    more = f" (and {len(lost) - 1} more chunks)" if len(lost) > 1 else ""
                    found.append(f"the chunk of coordinate {name!r} holding samples {lo}..{hi - 1} is missing{more}")
        if found:
            raise CubeDamagedError(f"cube {path!r} is damaged: " + "; ".join(found) + "; " + damage_hint(path))
    return meta


def _refuse_lost_root(path: str | StoreLocation, why: str) -> None:
    """Raise CubeDamagedError when ``path`` holds a cube's arrays under a root that cannot serve:
    ``--repair`` rebuilds such a root (:mod:`rsembed_dask.store.rootcopy`)."""
    loc = StoreLocation.parse(path)
    if loc.is_file("status/zarr.json"):
        raise CubeDamagedError(f"cube {loc.url!r} is damaged: {why}, but its arrays are there; running the campaign "
                               "that wrote it again with --repair (run_campaign(..., repair=True)) rebuilds it")


def _unfinished_message(path: str, why: str) -> str:
    return (f"cube path {path!r} holds a cube whose creation was interrupted ({why}; no unit finished): "
            "running the campaign again recreates it")


def missing_coordinate_chunks(path: str | StoreLocation, name: str, meta: dict[str, Any],
                              segments: Sequence[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the chunks of 1-D coordinate ``name`` that the store lacks.

    Every coordinate chunk holding samples has values other than the fill value, so a
    missing one is damage; except where the fill value may be legitimate: a chunk of
    one integer id (``0``), or ``feature`` of length 1. With ``segments`` (the rows
    holding samples, see ``sample_segments``), chunks made only of padding rows left
    by an append are never written and not reported.
    """
    n = int(meta["shape"][0])
    c = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
    int_ids = name == "sample" and meta.get("data_type") == "int64"
    stored = chunk_keys(path, name, meta)

    def holds_samples(lo: int, hi: int) -> bool:
        return segments is None or any(a < hi and lo < b for a, b in segments)

    return [(lo, min(lo + c, n)) for lo in range(0, n, c)
            if (lo // c,) not in stored and holds_samples(lo, min(lo + c, n))
            and not ((int_ids or name == "feature") and min(lo + c, n) - lo == 1)]


def damage_hint(path: str | StoreLocation) -> str:
    """What to do about a damaged cube: where the damage is listed, how it is repaired."""
    return (f"`rsembed-dask inspect --verify {path}` lists the damage; running the campaign again with "
            "--repair (run_campaign(..., repair=True)) repairs it")


def cube_array_names(attrs: dict[str, Any]) -> tuple[str, ...]:
    """The arrays a cube with group attributes ``attrs`` has: coordinates, data, ``grid`` in grid mode,
    the scale arrays of an int8 cube (``embedding_scale``, ``grid_scale``), and ``time``, ``time_bnds``
    in a cube with a ``time`` dimension."""
    try:
        output = json.loads(attrs[SPEC_ATTR])["output"]
        mode = output["mode"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CubeDamagedError(f"the cube's group attributes hold no readable campaign_spec ({exc!r}); "
                               "it cannot be repaired") from exc
    data = DATA_NAMES + (("grid",) if mode == "grid" else ())
    if is_quantised_dtype(output.get("dtype", "float32")):
        data += tuple(QUANTISED[name] for name in data if name in QUANTISED)
    return COORD_NAMES + data + (TIME_NAMES if attrs.get(TIME_WINDOWS_ATTR) is not None else ())


def array_meta_problem(path: str | StoreLocation, name: str) -> tuple[dict[str, Any] | None, str | None]:
    """``(meta, None)`` with the parsed ``<name>/zarr.json`` of the store at ``path``, or ``(None, why)``."""
    try:
        raw = StoreLocation.parse(path).read(f"{name}/zarr.json")
        if raw is None:
            return None, f"array {name!r} is missing (no {name}/zarr.json)"
        meta = json.loads(raw)
    except STORE_ERRORS + (ValueError,) as exc:
        return None, (f"the metadata of array {name!r} ({name}/zarr.json) cannot be read "
                      f"({type(exc).__name__}: {exc})")
    if not isinstance(meta, dict) or meta.get("node_type") != "array" or not isinstance(meta.get("shape"), list):
        return None, f"{name}/zarr.json is not Zarr array metadata"
    return meta, None


def read_array_meta(path: str | StoreLocation, name: str) -> dict[str, Any]:
    """The parsed ``zarr.json`` of array ``name`` of the cube at ``path``.

    Raises
    ------
    CubeDamagedError
        The file is missing, unreadable, not JSON or not array metadata; the message
        names the file and what is wrong.
    """
    meta, why = array_meta_problem(path, name)
    if meta is None:
        raise CubeDamagedError(f"cube {path!r} is damaged: {why}; " + damage_hint(path))
    return meta


def chunk_keys(path: str | StoreLocation, name: str, meta: dict[str, Any] | None = None) -> set[tuple[int, ...]]:
    """Indices of the chunks that array ``name`` really has in the store (the directory listing).

    Zarr reads a chunk that is not stored as the fill value without a word; this
    listing tells a missing chunk from a stored one. Only Zarr v3's ``default``
    chunk key encoding (``<array>/c/<i>/<j>/...``, also with ``.`` as separator) is known.

    Parameters
    ----------
    path : str or StoreLocation
        The cube (or any Zarr v3 group) directory or URL (one listing request per 1,000 chunks).
    name : str
        Path of the array inside it (e.g. ``"embedding"`` or ``"10m/EPSG32632/status"``).
    meta : dict, optional
        The array's parsed ``zarr.json`` (read when not given).

    Returns
    -------
    set of tuple of int
    """
    meta = read_array_meta(path, name) if meta is None else meta
    enc = meta.get("chunk_key_encoding") or {}
    sep = (enc.get("configuration") or {}).get("separator", "/")
    if enc.get("name") != "default" or sep not in ("/", "."):
        raise CubeError(f"array {name!r} of {path!r} uses chunk key encoding {enc!r}; "
                        "only Zarr v3's 'default' encoding is supported")
    ndim = len(meta["shape"])
    loc = StoreLocation.parse(path)
    keys: set[tuple[int, ...]] = set()
    if ndim == 0:
        return {()} if loc.is_file(f"{name}/c") else set()
    parts_of: Iterator[list[str]]
    if sep == ".":
        names = (f for f in loc.children(name) if f.startswith("c."))
        parts_of = (f.split(".")[1:] for f in names)
    else:
        skip = len(name.strip("/")) + 3  # "<name>/c/"
        parts_of = (key[skip:].split("/") for key, _ in loc.walk(f"{name}/c"))
    for parts in parts_of:
        if len(parts) == ndim and all(p.isdigit() for p in parts):
            keys.add(tuple(int(p) for p in parts))
    return keys


def is_tiling_store(path: str | os.PathLike | StoreLocation) -> bool:
    """Whether ``path`` holds a finished tiling store (see :mod:`rsembed_dask.store.tiling`)."""
    loc = StoreLocation.parse(path)
    try:
        raw = loc.read("zarr.json")
        if raw is None:
            return False
        meta = json.loads(raw)
    except IsADirectoryError:
        return False
    except STORE_ERRORS + (ValueError,) as exc:
        if loc.is_file("status/zarr.json"):
            return False  # a sample cube's arrays under a broken root (probe_store says so; --repair rebuilds it)
        raise CubeError(f"cube path {loc.url!r}: cannot read zarr.json ({exc})") from exc
    return isinstance(meta, dict) and TILING_MARKER in (meta.get("attributes") or {})


def _existing_ancestor(path: str) -> str:
    """``path`` or its nearest ancestor that exists."""
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    return probe


def check_writable(path: str | StoreLocation) -> None:
    """Raise CubeError unless ``path`` (or its nearest existing ancestor) is writable.

    Local paths only: an object store says whether a write is allowed when one is made
    (nothing is checked for a URL)."""
    loc = StoreLocation.parse(path)
    if not loc.local:
        return
    path = loc.path
    probe = _existing_ancestor(path)
    if not os.access(probe, os.W_OK):
        raise CubeError(f"cube path {path!r} is not writable ({probe!r} denies writing)")


def free_space(path: str) -> int:
    """Bytes free for this user on the filesystem of the existing ``path`` (``shutil.disk_usage``)."""
    return int(shutil.disk_usage(path).free)


def check_free_space(path: str | os.PathLike | StoreLocation, size: Any, *, free: int | None = None,
                     block_size: int | None = None, reclaim: int = 0) -> None:
    """Refuse a store that cannot fit in the free space of its filesystem; warn when it may not.

    Parameters
    ----------
    path : str or path-like
        The store (it, or its nearest existing ancestor, tells the filesystem).
    size : rsembed_dask.store.size.StoreSize
        What the store (or what is left to write in it) takes: a lower estimate and an upper bound.
    free : int, optional
        Free bytes (default: :func:`free_space` of the nearest existing ancestor of ``path``).
    block_size : int, optional
        The filesystem's block size (default from ``os.statvfs``); each file may waste one.
    reclaim : int
        Bytes of an existing store that the new one replaces (freed before it is written).

    Raises
    ------
    CubeError
        Even the lower estimate does not fit: naming both figures, the free space and the path.

    Local paths only: an object store has no free space to check (nothing is checked for a URL).
    """
    loc = StoreLocation.parse(path)
    if not loc.local:
        log.debug("store %s is an object store: no free-space check", loc)
        return
    path = loc.path
    probe = _existing_ancestor(path)
    if free is None:
        free = free_space(probe)
    if block_size is None:
        block_size = min(max(os.statvfs(probe).f_frsize, 512), 65536)
    available = int(free) + int(reclaim)
    lower, upper = int(size.lower), size.upper(block_size)

    fmt = format_bytes
    if lower > available:
        raise CubeError(f"not enough free space for the store {path!r}: it needs at least {fmt(lower)} (its "
                        f"embeddings, compressed; up to {fmt(upper)}), and {fmt(available)} are free on "
                        f"{probe!r}: free some space or write the store elsewhere")
    if upper > available:
        log.warning("the store %s may not fit: it needs between %s and %s (uncompressed), and %s are free on %s",
                    path, fmt(lower), fmt(upper), fmt(available), probe)
    else:
        log.debug("store %s needs at most %s; %s free on %s", path, fmt(upper), fmt(available), probe)


def open_cube(path: str | os.PathLike | StoreLocation, *, dequantize: bool = True,
              storage_options: Mapping[str, Any] | None = None, **kwargs: Any) -> xr.Dataset | xr.DataTree:
    """Open a cube lazily (Dask-backed) as an :class:`xarray.Dataset`.

    A tiling store opens as an :class:`xarray.DataTree`: ``tree["samples/10m"]`` is
    the 10 m sample cube, ``tree["10m/EPSG32632"]`` the 10 m grid of zone 32632
    with ``embedding(y, x, feature)`` readable by rioxarray (``rio.crs``, ``rio.transform()``).

    Parameters
    ----------
    path : str, path-like or StoreLocation
        The cube directory, or its ``s3://``, ``gs://``, ``az://`` URL.
    dequantize : bool
        For an int8 cube (``OutputSpec(dtype="int8")``): True (default) gives float32
        ``embedding`` (and ``grid``) as ``int8 * scale`` (lazily; NaN where there is
        none) and drops the scale arrays; False gives the stored int8 arrays with
        ``embedding_scale`` (and ``grid_scale``) beside them. No effect on float32 cubes.
    storage_options : mapping, optional
        For a URL: obstore config keys (credentials otherwise come from the environment).
    **kwargs
        Passed to :func:`xarray.open_zarr` (e.g. ``chunks``).

    Returns
    -------
    xarray.Dataset
        Indexed by ``sample`` (the ids, every sample once: padding rows left by appends
        are not shown) and ``scale`` (metres), so
        ``ds.sel(scale=20.0, sample="id-3")`` works. ``ds.attrs["campaign_spec"]``
        is the spec as a JSON string. Strings (ids, geohashes, geometries, errors) are
        ``object`` arrays of Python ``str``, so ``ds.sample.values.astype(str)`` works.

    Raises
    ------
    CubeError
        ``path`` is missing or not a cube.
    """
    loc = StoreLocation.parse(path, storage_options)
    path = str(loc)
    kwargs.setdefault("chunks", {})
    if is_tiling_store(loc):
        tree = xr.open_datatree(loc.zarr_store(read_only=True), engine="zarr", zarr_format=3,
                                consolidated=False, **kwargs)
        return tree.map_over_datasets(lambda ds: _plain(ds, dequantize))
    if probe_store(loc) is None:
        raise CubeError(f"no cube at {path!r}")
    try:  # the index coordinates (sample, scale) are read now
        ds = xr.open_zarr(loc.zarr_store(read_only=True), consolidated=False, zarr_format=3, **kwargs)
    except DECODE_ERRORS as exc:
        raise CubeDamagedError(f"cube {path!r} cannot be opened ({type(exc).__name__}: {exc}): a chunk of its "
                               "coordinates is probably damaged; " + damage_hint(path)) from exc
    ds["scale"].attrs.pop(ROOT_COPY_KEY, None)  # the copy of the root attributes: ds.attrs has them
    segments = read_segments(ds.attrs, ds.sizes["sample"], 1)
    if sum(b - a for a, b in segments) != ds.sizes["sample"]:  # a cube that grew: hide its padding rows
        ds = ds.isel(sample=segment_rows(segments))
    ds = _plain(ds, dequantize)
    # Where it was read from (a store object leaves xarray's "source" unset): readers that name
    # a damaged chunk open the same location again (rsembed_dask.store.damage).
    ds.encoding.update({"source": loc.url, LOCATION_ENCODING: loc})
    return ds


def _plain(ds: xr.Dataset, dequantize: bool) -> xr.Dataset:
    """``ds`` with plain ``object`` strings and, if asked, dequantised int8 arrays."""
    ds = plain_strings(ds)
    return dequantize_dataset(ds) if dequantize else ds


def plain_strings(ds: xr.Dataset) -> xr.Dataset:
    """Variables of NumPy's variable-width ``StringDType`` (how xarray reads Zarr v3 strings)
    as ``object`` arrays of ``str``: ``.astype(str)``, pandas and older code take those.
    Dask-backed variables stay lazy."""
    index = {k: np.asarray(ds[k].values).astype(object) for k in ds.indexes if ds[k].dtype.kind == "T"}
    if index:
        ds = ds.assign_coords(index)
    coords = {k: ds[k].astype(object) for k in ds.coords if k not in ds.indexes and ds[k].dtype.kind == "T"}
    if coords:
        ds = ds.assign_coords(coords)
    data = {k: ds[k].astype(object) for k in ds.data_vars if ds[k].dtype.kind == "T"}
    return ds.assign(data) if data else ds


def dequantize_dataset(ds: xr.Dataset) -> xr.Dataset:
    """int8 ``embedding``/``grid`` of ``ds`` as float32 ``value * scale``, their scale arrays dropped.

    Works on sample cubes and on the zone grids of a tiling store (``embedding(y, x, feature)``
    with ``embedding_scale(y, x)``); a dataset without int8 arrays is returned as is.
    """
    done = []
    for name, scale in QUANTISED.items():
        if name not in ds.data_vars or scale not in ds.data_vars or ds[name].dtype.kind not in "iu":
            continue
        raw = ds[name]
        value = (raw.astype("float32") * ds[scale]).transpose(*raw.dims)
        attrs = {k: v for k, v in raw.attrs.items() if k != "quantization"}
        if isinstance(attrs.get("long_name"), str):
            attrs["long_name"] = attrs["long_name"].split(", int8:")[0]
        value.attrs = attrs
        value.encoding = {}
        ds = ds.assign({name: value})
        done.append(scale)
    return ds.drop_vars(done) if done else ds


def nearest_sample(ds: xr.Dataset, lon: float, lat: float) -> Any:
    """The id of the sample whose centroid is nearest to ``(lon, lat)`` (great-circle).

    Parameters
    ----------
    ds : xarray.Dataset
        A cube from :func:`open_cube` (needs ``lon``/``lat`` coordinates on ``sample``).
    lon, lat : float
        Query point in degrees (EPSG:4326).

    Returns
    -------
    str or int
        The sample id, usable as ``ds.sel(sample=...)``.
    """
    lons = np.radians(np.asarray(ds["lon"].values, dtype="float64"))
    lats = np.radians(np.asarray(ds["lat"].values, dtype="float64"))
    qlon, qlat = np.radians(float(lon)), np.radians(float(lat))
    a = (np.sin((lats - qlat) / 2) ** 2
         + np.cos(qlat) * np.cos(lats) * np.sin((lons - qlon) / 2) ** 2)
    dist = 2 * _EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    found = ds["sample"].values[int(np.argmin(dist))]
    return found.item() if isinstance(found, np.generic) else found


def stored_chunk_size(path: str | os.PathLike | StoreLocation) -> int | None:
    """Samples per chunk (= per unit) of the cube at ``path``, from its ``status`` array's metadata;
    None where no cube (or no readable ``status`` metadata) is there.

    Read from the array rather than the group attributes, so a cube whose root ``zarr.json``
    is damaged still resumes (and is repaired) with the chunk size it was created with.
    """
    meta, _ = array_meta_problem(path if isinstance(path, StoreLocation) else os.fspath(path), "status")
    try:
        if meta is None:
            return None
        names = meta.get("dimension_names") or ["sample"]  # (time, sample, scale) in a cube with time
        return int(meta["chunk_grid"]["configuration"]["chunk_shape"][list(names).index("sample")])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None
