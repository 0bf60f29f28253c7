"""Repair a damaged cube: ``rsembed-dask run ... --repair`` and ``run_campaign(..., repair=True)``.

In the order a run meets them:

0. :func:`~rsembed_dask.store.rootcopy.rebuild_root`: a lost or broken root ``zarr.json``
   over intact arrays is written again, from the copy of its attributes the cube keeps
   (``rsembed_dask_root.json``), or for older cubes from the campaign given.
1. :func:`repair_sample_cube` (from ``run_campaign``, before ``Cube.create_or_open`` reads
   the cube), through :func:`repair_layout`: array metadata that cannot be read is written
   again from the cube's layout (the chunks stay and are checked next), and damaged
   coordinate chunks (ids, lon/lat, geohash, geometry, scale, feature) are rewritten from
   the given samples, once these are checked to be the cube's: by their ids where the ids
   are intact, else by their lon/lat or geometry. Where neither can be checked the repair is refused.
2. :func:`reset_damaged_units` (from ``run_campaign``, before the units to run are
   computed): every unit found damaged goes back to ``pending`` (status first, then
   its data chunks are removed), so the run embeds it again and a crash half-way leaves
   it visibly pending. A plain run finds only units marked done whose chunks are
   missing (:meth:`Cube.units_missing_chunks`: the store listing, no data read); a
   repair reads everything (:func:`~rsembed_dask.store.verify.check_cube`). In a
   tiling store damaged grids are marked unsynced so the run fills them again.

For a tiling store, step 1 is :func:`repair_tiling_layout` (from ``run_campaign``,
before the store is opened): the layout comes from each sample cube's stored spec,
the coordinates from the tile tables. A grid's metadata is not repaired.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.core.sync import sync

from .cube import Cube
from .layout import (PENDING, SEGMENTS_ATTR, SPEC_ATTR, SPEC_IDENTITY_ATTR, TILING_IDENTITY_ATTR, TIME_WINDOWS_ATTR, ArrayDef,
                     array_defs, check_inputs, coord_defs, has_checksums, normalise_identity, scale_name,
                     spec_differences, time_defs, window_days)
from .location import StoreLocation
from .open import (DECODE_ERRORS, array_meta_problem, array_of, attr_text, check_writable, chunk_keys,
                   cube_array_names, is_tiling_store, probe_store, unfinished_store)
from .lock import confirm_held, one_writer
from .rootcopy import rebuild_root
from .verify import CubeHealth, check_cube, check_grids
from ..errors import CubeDamagedError, CubeError
from ..specs import CampaignSpec, TemporalSpec

if TYPE_CHECKING:
    from ..sampling.tiling import Tiling

__all__ = ["repair_layout", "repair_sample_cube", "repair_tiling_layout", "reset_units", "reset_damaged_units"]

log = logging.getLogger(__name__)

#: Samples per chunk when a table's coordinates are read back for a repair.
_TABLE_CHUNK = 65_536
_SAMPLE_COORDS = ("sample", "lon", "lat", "geohash", "geometry")


def repair_layout(path: str | StoreLocation, *, spec: CampaignSpec, n_samples: int, embed_dim: int,
                  grid_shape: tuple[int, int] | None,
                  source: Callable[[], Iterator[dict[str, Any]]]) -> list[str]:
    """Restore the metadata and coordinates of a damaged cube from the given campaign and samples.

    Nothing is written when ``path`` holds no cube, one whose creation was interrupted,
    another campaign or another number of samples (resuming recreates or refuses those
    next, with its own message).

    Parameters
    ----------
    path : str
        The cube directory.
    spec, n_samples, embed_dim, grid_shape
        As given to :meth:`Cube.create_or_open`.
    source : callable
        Yields the checked per-sample inputs chunk by chunk (see
        :func:`rsembed_dask.store.layout.sample_chunks`).

    Returns
    -------
    list of str
        What was repaired, one line each.

    Raises
    ------
    CubeDamagedError
        The group metadata is unreadable, or damaged coordinates cannot be checked
        against the given samples.
    CubeError
        The given samples are not the cube's.
    """
    path = StoreLocation.parse(path)
    if not path.is_file("zarr.json") or unfinished_store(path) is not None:
        return []  # no cube, or one whose creation was interrupted: Cube.create_or_open recreates it
    meta = probe_store(path, arrays=False)  # CubeError when not a cube or its zarr.json is unreadable
    if meta is None:
        return []
    stored = json.loads(meta["attributes"][SPEC_IDENTITY_ATTR])
    if spec_differences(stored, normalise_identity(spec.identity())):
        return []
    first = next(iter(source()))
    segments = None
    if SEGMENTS_ATTR in meta["attributes"]:  # samples were appended: padded rows, in segments
        raw = meta["attributes"][SEGMENTS_ATTR]
        segments = tuple((int(a), int(b)) for a, b in (json.loads(raw) if isinstance(raw, str) else raw))
        if sum(b - a for a, b in segments) != n_samples:
            return []  # other samples than the cube's: resuming says how they differ
    n_rows = n_samples if segments is None else segments[-1][1]
    checksum = _checksummed(path, cube_array_names(meta["attributes"]))
    windows = meta["attributes"].get(TIME_WINDOWS_ATTR)
    n_times = None if windows is None else len(windows)
    defs = coord_defs(n_rows, len(spec.scales), embed_dim, first["id_dtype"], checksum)
    defs += array_defs(n_rows, len(spec.scales), spec.chunk_size, embed_dim, grid_shape, spec.output.dtype,
                       checksum, n_times=n_times)
    if n_times is not None:
        defs += time_defs(n_times, checksum)
    for d in defs:
        have, _ = array_meta_problem(path, d.name)
        if have is not None and not _fits(have, d):
            return []  # another cube's layout: resuming says how it differs
    done = [f"metadata of {name!r} restored" for name in _restore_metadata(path, defs)]
    done += repair_coordinates(path, spec, source, segments=segments)
    done += _reset_undecodable_status(path)
    return done


@one_writer("path")
def repair_sample_cube(path: str | StoreLocation, table: Any, *, spec: CampaignSpec, embed_dim: int,
                       grid_shape: tuple[int, int] | None,
                       windows: Sequence[TemporalSpec] | None = None) -> list[str]:
    """:func:`repair_layout` of the cube at ``path`` from a sample table, before the cube is opened.

    Parameters
    ----------
    path : str or path-like
        The cube directory (nothing happens when it holds no cube).
    table : SampleTable
        The samples given to the run, in the order given to :meth:`Cube.create_or_open`.
    spec, embed_dim, grid_shape
        As given to :meth:`Cube.create_or_open`.
    windows : sequence of TemporalSpec, optional
        The campaign's windows (a cube with ``time``): a lost root is rebuilt with them when
        the cube keeps no copy of its attributes.

    Returns
    -------
    list of str
        What was repaired.
    """
    path = StoreLocation.parse(path)
    check_writable(path)
    confirm_held(path)  # a run resumed from a pause repairs nothing of another run's cube
    done = rebuild_root(path, spec=spec, n_samples=len(table), embed_dim=int(embed_dim), windows=windows)
    return done + repair_layout(path, spec=spec, n_samples=len(table), embed_dim=int(embed_dim),
                                grid_shape=grid_shape, source=_table_source(_in_stored_order(path, table)))


def _in_stored_order(path: StoreLocation, table: Any) -> Any:
    """``table`` in the order of the cube's sample rows (appended samples come after the others),
    when the stored ids are readable and are the given ones; else ``table`` as given."""
    if not path.is_file("zarr.json"):
        return table
    try:
        group = zarr.open_group(path.zarr_store(read_only=True), mode="r", zarr_format=3)
        raw: Any = group.attrs.get(SEGMENTS_ATTR)
        if raw is None:
            return table  # no appends: rows are the given order
        rows = np.concatenate([np.arange(int(a), int(b)) for a, b in raw])
        stored = np.asarray(array_of(group, "sample")[:])[rows]
    except (*DECODE_ERRORS, OSError, ValueError, KeyError, CubeError):
        return table
    where = {str(v): i for i, v in enumerate(np.asarray(table.ids))}
    order = [where.get(str(v), -1) for v in stored]
    if len(order) != len(table) or min(order, default=0) < 0:
        return table
    return table.take(np.asarray(order, dtype=np.int64))


@one_writer("path")
def repair_tiling_layout(path: str | StoreLocation, tiling: Tiling) -> list[str]:
    """:func:`repair_layout` for the sample cubes of a tiling store, before it is opened.

    Each cube's layout comes from its stored campaign spec (chunk size, output mode,
    model) and the tiling's number of tiles at its scale; damaged coordinates are
    rewritten from the tile tables. Nothing is written when the store holds another
    tiling (opening it says how it differs).

    Parameters
    ----------
    path : str or path-like
        The tiling store (nothing happens when it is none).
    tiling : Tiling
        The run's tiling.

    Returns
    -------
    list of str
        What was repaired.
    """
    from ..embed.weights import model_info

    path = StoreLocation.parse(path)
    if not is_tiling_store(path):
        return []
    root = zarr.open_group(path.zarr_store(), mode="r", zarr_format=3)
    stored_scales = json.loads(attr_text(root.attrs, TILING_IDENTITY_ATTR))["tiling"]["scales"]
    if [float(s) for s in stored_scales] != [float(s) for s in tiling.scales]:
        return []
    done = []
    for s, table in zip(tiling.scales, tiling.tables):
        cube_path = path.child("samples", scale_name(s))
        meta = probe_store(cube_path, arrays=False)
        if meta is None:
            continue
        spec = CampaignSpec.from_json(meta["attributes"][SPEC_ATTR])
        info = model_info(spec.model)
        grid_shape = (info.grid_size, info.grid_size) if spec.output.mode == "grid" else None
        n = len(table)
        checksum = _checksummed(cube_path, cube_array_names(meta["attributes"]))
        defs = coord_defs(n, 1, info.embed_dim, str, checksum) + array_defs(
            n, 1, spec.chunk_size, info.embed_dim, grid_shape, spec.output.dtype, checksum)
        if any((have := array_meta_problem(cube_path, d.name)[0]) is not None and tuple(have["shape"]) != d.shape
               for d in defs):
            continue  # another layout: opening the store says so
        done += [f"samples/{scale_name(s)}: metadata of {name!r} restored"
                 for name in _restore_metadata(cube_path, defs)]
        done += [f"samples/{scale_name(s)}: {line}"
                 for line in repair_coordinates(cube_path, spec, _table_source(table))]
    return done


def _fits(meta: dict[str, Any], d: ArrayDef) -> bool:
    """Whether stored array metadata has the shape of ``d``; along ``time``, at least as many windows
    (a backfill interrupted after resizing its arrays leaves more: the next one goes on from there)."""
    shape = tuple(int(v) for v in meta["shape"])
    if d.dims[:1] == ("time",):
        return len(shape) == len(d.shape) and shape[1:] == tuple(d.shape[1:]) and shape[0] >= d.shape[0]
    return shape == tuple(d.shape)


def _checksummed(path: str | StoreLocation, names: Sequence[str]) -> bool:
    """Whether the cube's arrays carry CRC-32C checksums, from the metadata of those still readable
    (a cube created before checksums keeps its codecs when an array's metadata is restored)."""
    for name in names:
        meta, _ = array_meta_problem(path, name)
        if meta is not None:
            return has_checksums(meta)
    return True


def _metadata_bytes(d: ArrayDef) -> bytes:
    """The ``zarr.json`` that :meth:`Cube._create` writes for ``d`` (created in a scratch store)."""
    with tempfile.TemporaryDirectory(prefix="rsembed-meta-") as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        group.create_array(d.name, shape=d.shape, dtype=d.dtype, chunks=d.chunks, fill_value=d.fill_value,
                           dimension_names=d.dims, attributes=d.attrs, compressors=d.compressors)
        with open(os.path.join(tmp, d.name, "zarr.json"), "rb") as fh:
            return fh.read()


def _restore_metadata(path: StoreLocation, defs: Sequence[ArrayDef]) -> list[str]:
    """Write ``<array>/zarr.json`` again (atomically) for every array whose metadata cannot be read."""
    restored = []
    for d in defs:
        meta, why = array_meta_problem(path, d.name)
        if meta is not None:
            continue
        path.write(f"{d.name}/zarr.json", _metadata_bytes(d))  # whole (local: renamed over)
        log.warning("cube %s: %s; restored it from the cube's layout", path, why)
        restored.append(d.name)
    return restored


def _in(ranges: list[tuple[int, int]], lo: int, hi: int) -> bool:
    return any(a < hi and lo < b for a, b in ranges)


def _delete_chunk(arr: zarr.Array, coords: tuple[int, ...]) -> None:
    sync((arr.store_path / arr.metadata.encode_chunk_key(coords)).delete())


def _placed(source: Callable[[], Iterator[dict[str, Any]]], segments: Sequence[tuple[int, int]] | None
            ) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(first row, inputs)`` of the given samples, in the cube's rows: sample ``i`` at row ``i``, or,
    for a cube that took appends, at the ``i``-th row of its segments (pieces split at segment ends)."""
    start = 0
    if segments is None:
        for inputs in source():
            yield start, inputs
            start += inputs["sample"].shape[0]
        return
    seg = list(segments)
    k, row = 0, seg[0][0]
    for inputs in source():
        n = inputs["sample"].shape[0]
        pos = 0
        while pos < n:
            while row >= seg[k][1]:
                k += 1
                row = seg[k][0]
            take = min(n - pos, seg[k][1] - row)
            yield row, {key: (v[pos:pos + take] if isinstance(v, np.ndarray) and v.shape[:1] == (n,) else v)
                        for key, v in inputs.items()}
            pos += take
            row += take


def repair_coordinates(path: str | StoreLocation, spec: CampaignSpec, source: Callable[[], Iterator[dict[str, Any]]],
                       segments: Sequence[tuple[int, int]] | None = None) -> list[str]:
    """Rewrite the damaged coordinate chunks of the cube at ``path`` from the given samples.

    ``segments``: the cube's sample rows when samples were appended (the given samples
    fill them in order), else sample ``i`` is at row ``i``.

    First every damaged range is checked against the given samples using what is
    intact there: the ids, else lon/lat, else the geometry. Then the damaged chunks
    are removed and written again.

    Returns
    -------
    list of str
        One line per coordinate rewritten.

    Raises
    ------
    CubeDamagedError
        The ids, lon/lat and geometry of some damaged range are all damaged: nothing
        tells whether the given samples are the cube's.
    CubeError
        An intact coordinate differs from the given samples.
    """
    health = check_cube(path, units=False)
    if health.fatal or health.unreadable:
        raise CubeDamagedError(f"cube {path!r} is still damaged after its metadata was restored: "
                               + "; ".join(health.problems))
    damaged = health.damaged_coords
    if not damaged:
        return []
    group = zarr.open_group(StoreLocation.parse(path).zarr_store(), mode="r+", zarr_format=3)
    done = []
    for name, values in (("scale", np.asarray(spec.scales, "float64")),
                         ("feature", np.arange(array_of(group, "feature").shape[0], dtype="int64"))):
        if name in damaged:
            _delete_chunk(array_of(group, name), (0,))
            array_of(group, name)[...] = values
            done.append(f"{name} rewritten")
    done += _repair_time(path, group, damaged)
    ranges = {name: damaged.get(name, []) for name in _SAMPLE_COORDS}
    if not any(ranges.values()):
        return done
    # 1. check: the given samples must be the cube's wherever something is rewritten
    for start, inputs in _placed(source, segments):
        stop = start + inputs["sample"].shape[0]
        for lo, hi in sorted({r for rs in ranges.values() for r in rs}):
            a, b = max(lo, start), min(hi, stop)
            if a < b:
                _check_given(path, group, ranges, inputs, start, a, b)
    # 2. rewrite: damaged chunks go first, so that partial writes do not read them
    for name in _SAMPLE_COORDS:
        arr = array_of(group, name)
        for lo, _ in ranges[name]:
            _delete_chunk(arr, (lo // arr.chunks[0],))
    for start, inputs in _placed(source, segments):
        stop = start + inputs["sample"].shape[0]
        for name in _SAMPLE_COORDS:
            for lo, hi in ranges[name]:
                a, b = max(lo, start), min(hi, stop)
                if a < b:
                    array_of(group, name)[a:b] = inputs[name][a - start:b - start]
    for name in _SAMPLE_COORDS:
        if ranges[name]:
            n = sum(hi - lo for lo, hi in ranges[name])
            log.warning("cube %s: rewrote %d values of %r from the given samples", path, n, name)
            done.append(f"{n} values of {name!r} rewritten from the given samples")
    return done


def _repair_time(path: str | StoreLocation, group: zarr.Group, damaged: dict[str, list[tuple[int, int]]]) -> list[str]:
    """Rewrite damaged ``time`` / ``time_bnds`` of a cube with ``time`` from its ``time_windows`` attribute."""
    raw: Any = group.attrs.get(TIME_WINDOWS_ATTR)
    if raw is None:
        return []
    windows = [(str(a), str(b)) for a, b in raw]
    values = {"time": np.array([window_days(a) for a, _ in windows], "int64"),
              "time_bnds": np.array([[window_days(a), window_days(b)] for a, b in windows], "int64")}
    done = []
    for name, v in values.items():
        if name not in damaged:
            continue
        arr = array_of(group, name)
        for t in range(len(windows)):
            _delete_chunk(arr, (t,) + (0,) * (arr.ndim - 1))  # it may not decode: never read it
        arr[:len(windows)] = v
        log.warning("cube %s: rewrote %r from its %s attribute", path, name, TIME_WINDOWS_ATTR)
        done.append(f"{name} rewritten from the cube's windows")
    return done


def _check_given(path: str | StoreLocation, group: zarr.Group, ranges: dict[str, list[tuple[int, int]]],
                 inputs: dict[str, Any], start: int, a: int, b: int) -> None:
    """Raise unless samples ``[a, b)`` given (``inputs`` begins at ``start``) are the cube's there."""
    for names in (("sample",), ("lon", "lat"), ("geometry",)):
        if any(_in(ranges[name], a, b) for name in names):
            continue
        for name in names:
            stored = np.asarray(array_of(group, name)[a:b]).tolist()
            given = np.asarray(inputs[name][a - start:b - start]).tolist()
            if stored != given:
                i = next(i for i, (s, g) in enumerate(zip(stored, given)) if s != g)
                raise CubeError(f"cube {path!r} holds other samples than given (position {a + i}: stored "
                                f"{name} {stored[i]!r}, given {given[i]!r}); it is not repaired")
        return
    raise CubeDamagedError(
        f"cube {path!r} cannot be repaired: at positions {a}..{b - 1} its sample ids, lon/lat and geometry are "
        "all damaged, so nothing tells whether the given samples are the cube's; write a new cube (another "
        "--out) or restore this one from a copy")


def reset_units(cube: Cube, units: Sequence[Any]) -> None:
    """Put ``units`` back to pending: status first (a crash after it leaves them visibly pending),
    then their data chunks are removed (the re-run writes them whole). In a cube with ``time``,
    in the window of ``cube`` (:meth:`Cube.at_window`) only."""
    window: tuple[int, ...] = (cube.window,) if cube.has_time else ()
    _reset_chunks(cube.location, [window + (int(u.start) // cube.chunk_size, int(u.scale_index)) for u in units])


def _reset_chunks(path: StoreLocation, keys: Sequence[tuple[int, ...]]) -> None:
    """:func:`reset_units` by the keys of their ``status`` chunks: ``(chunk index along sample, scale
    index)``, with the window's index first in a cube with ``time``."""
    group = zarr.open_group(path.zarr_store(), mode="r+", zarr_format=3)
    status = array_of(group, "status")
    t0 = status.ndim - 2  # the position of ``sample``: 1 after ``time``
    cs, n = status.chunks[t0], status.shape[t0]
    for key in keys:
        *window, ci, si = (int(k) for k in key)
        _delete_chunk(status, tuple(key))  # it may not decode: never read it
        status[tuple(window) + (slice(ci * cs, min(ci * cs + cs, n)), si)] = PENDING  # (the fill value: no-op)
    for name in ("embedding", "input_res_m", "valid_fraction", "error", "grid", "embedding_scale", "grid_scale"):
        if name not in group:
            continue
        arr = array_of(group, name)
        stored = chunk_keys(path, name)
        for key in keys:
            full = tuple(int(k) for k in key) + (0,) * (arr.ndim - len(key))
            if full in stored:
                _delete_chunk(arr, full)


def _reset_undecodable_status(path: StoreLocation) -> list[str]:
    """Units whose status chunk does not decode go back to pending (so the cube can be resumed)."""
    status = zarr.open_array(path.child("status").zarr_store(), mode="r", zarr_format=3)
    t0 = status.ndim - 2
    cs = status.chunks[t0]
    bad = []
    for key in sorted(chunk_keys(path, "status")):
        *window, ci, si = key
        try:
            status[tuple(window) + (slice(ci * cs, ci * cs + cs), si)]
        except DECODE_ERRORS:
            bad.append(key)
    if bad:
        log.warning("cube %s: %d status chunks cannot be decoded; their units go back to pending", path, len(bad))
        _reset_chunks(path, bad)
    return [f"status of {len(bad)} units that did not decode reset to pending"] if bad else []


def _table_source(table) -> Callable[[], Iterator[dict[str, Any]]]:
    """Checked per-sample inputs of a sample or tile table, chunk by chunk."""
    def chunks() -> Iterator[dict[str, Any]]:
        for start in range(0, len(table), _TABLE_CHUNK):
            t = table.slice(start, min(start + _TABLE_CHUNK, len(table)))
            yield check_inputs(t.ids, t.lon, t.lat, t.geohash, t.wkb)
    return chunks


def reset_damaged_units(path: str | StoreLocation, jobs: Sequence[tuple[Any, Sequence[Any]]], *, repair: bool,
                        before_reset: Callable[[int], None] | None = None) -> int:
    """Before a run computes its units: put every damaged unit of its cubes back to pending.

    Parameters
    ----------
    path : str
        The cube, or the tiling store, of the run.
    jobs : sequence of (Job, units)
        As planned by ``run_campaign``: each job's cube and its units.
    repair : bool
        False: units marked done whose chunks are missing (store listing, cheap).
        True: every unit a full check finds damaged; in a tiling store also the grids
        (marked unsynced when damaged, so the run fills them again).
    before_reset : callable, optional
        Called with the number of damaged units before any is reset (the run's checks).

    Returns
    -------
    int
        Units put back to pending.

    Raises
    ------
    CubeDamagedError
        Damage a run cannot repair (a tiling store's grid metadata, or coordinates that
        cannot be checked).
    """
    tiling = is_tiling_store(path)
    reset = 0
    checked: dict[str, CubeHealth] = {}  # the windows of a cube with time: one check for all
    for job, units in jobs:
        cube = job.cube
        if repair:
            health = checked.get(cube.path)
            if health is None:
                health = checked[cube.path] = check_cube(cube.location)
                if not health.openable or health.damaged_coords:
                    raise CubeDamagedError(f"cube {cube.path!r} is still damaged: " + "; ".join(health.problems))
                if health.problems:
                    log.warning("cube %s: %s", cube.path, "\n  ".join(["repairing:"] + health.problems))
            in_window = health.damaged_windows.get(cube.window if cube.has_time else 0, set())
            damaged = [u for u in units if (int(u.start), int(u.scale_index)) in in_window]
        else:
            damaged = cube.units_missing_chunks(units)
            if damaged:
                log.warning("cube %s: %d units marked done have lost chunks (first: %s); running them again",
                            cube.path, len(damaged), ", ".join(u.key for u in damaged[:3]))
        if damaged:
            if before_reset is not None:
                before_reset(len(damaged))
            reset_units(cube, damaged)
        reset += len(damaged)
    if repair and tiling:
        _repair_grids(StoreLocation.parse(path), [job.cube for job, _ in jobs])
    return reset


def _repair_grids(path: StoreLocation, cubes: Sequence[Cube]) -> None:
    """Mark the grids of a tiling store unsynced when any is damaged (the run fills every block again)."""
    from .tiling import set_synced

    problems = []
    for cube in cubes:
        base = path.child(scale_name(cube.scales[0]))
        zones = sorted(z for z in base.children() if base.is_dir(z))
        for zone in zones:
            for a in ("status", "sample_index", "embedding"):
                meta, why = array_meta_problem(base, f"{zone}/{a}")
                if meta is None:
                    raise CubeDamagedError(f"tiling store {path!r}: {scale_name(cube.scales[0])}/{zone}: {why}; "
                                           "a run cannot repair a grid's metadata: write a new store (another "
                                           "--out) or restore this one from a copy")
        problems += check_grids(path, cube.scales[0], None)
    if problems:
        log.warning("tiling store %s: %s", path, "\n  ".join(["grids to fill again:"] + problems))
        set_synced(path, False)
