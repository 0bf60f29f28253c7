"""Find the damage in a cube or a tiling store: ``rsembed-dask inspect --verify``.

A cube is read array by array and chunk by chunk (a bounded batch of chunks
at a time), never trusting what Zarr makes up:

- every array's metadata (``<array>/zarr.json``) must be readable;
- a chunk the status vouches for (:func:`~rsembed_dask.store.cube.vouched_arrays`) must
  be in the store listing: Zarr reads a missing chunk as its fill value, silently;
- every stored chunk must decode;
- coordinates hold real values: no id that is the fill value (``""``), finite
  lon/lat in range, a geohash and a geometry per sample, the spec's scales;
- status vouches for data: ``ok`` cells hold a finite embedding and input
  resolution (and a token grid), ``no_data``/``failed`` cells hold none, finished
  cells a valid fraction, ``failed`` cells a reason, and no code is unknown.

``pending`` cells may hold anything (a write that was interrupted before its
status). Each kind of problem is one line naming the array, the scale, the
number of cells, the first sample ids and the first chunks (their keys in the store,
e.g. ``embedding/c/1/0/0``). A cube with a ``time`` dimension (several date windows)
is checked window by window: its lines also name the window (its start date), and its
``time`` and ``time_bnds`` coordinates must hold the windows of its ``time_windows``
attribute. :func:`check_cube` also returns what a
repair needs (:mod:`rsembed_dask.store.repair`): the damaged units, coordinate
chunks and arrays. A tiling store (:func:`verify_tiling_store`) is checked scale
by scale: its sample cubes as above, its zone grids chunk by chunk and, once
synced, against their samples.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from .layout import (FAILED, NO_DATA, NO_TILE, OK, PENDING, SPEC_ATTR, STATUS_NAMES, SYNCED_ATTR, TILING_IDENTITY_ATTR,
                     TIME_WINDOWS_ATTR, scale_name, vouched_arrays, window_days)
from .location import STORE_ERRORS, StoreLocation
from .windowed import at_window, has_time
from .open import (
    COORD_NAMES, DECODE_ERRORS, TIME_NAMES, array_meta_problem, chunk_keys, cube_array_names,
    missing_coordinate_chunks, attr_text, probe_store,
)
from .layout import read_segments, segment_rows
from ..errors import CubeError, SpecError
from ..specs import CampaignSpec

__all__ = ["CubeHealth", "check_cube", "verify_cube", "check_grids", "verify_tiling_store"]

log = logging.getLogger(__name__)

#: Sample ids (or grid cells) named per problem line before "and N more".
FIRST = 5
#: Chunks named per problem line before "and N more".
FIRST_CHUNKS = 3
#: Bytes read per batch of chunks: memory stays at a few of these.
BATCH_BYTES = 64 * 2**20
#: What a chunk that fails to decode is, in problem lines.
UNDECODABLE = "cells in a chunk that cannot be decoded"


@dataclass
class CubeHealth:
    """What :func:`check_cube` found in one cube.

    Attributes
    ----------
    path : str
    problems : list of str
        One line per kind of problem (empty: the cube is consistent).
    unreadable : list of str
        Arrays whose metadata is missing or unreadable (their cells were not checked).
    damaged_units : set of (int, int)
        ``(start, scale_index)`` of units with a missing, undecodable or inconsistent chunk
        (in any window of a cube with ``time``: :attr:`damaged_windows` says which).
    damaged_windows : dict of int to set of (int, int)
        Window index along ``time`` -> its damaged units ``(start, scale_index)``; a cube
        without ``time`` has one window, 0.
    windows : list of str or None
        The start dates of the windows checked (a cube with ``time``), else None.
    damaged_coords : dict
        Coordinate name -> ``[(start, stop), ...]`` sample ranges of its damaged chunks
        (``time``, ``time_bnds``: window ranges).
    fatal : bool
        The group metadata is unreadable: nothing else could be checked.
    status_counts : dict
        Cells per status name, plus ``"unreadable"`` for cells whose status chunk did not decode.
    """

    path: str
    problems: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    damaged_units: set[tuple[int, int]] = field(default_factory=set)
    damaged_windows: dict[int, set[tuple[int, int]]] = field(default_factory=dict)
    windows: list[str] | None = None
    damaged_coords: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    fatal: bool = False
    status_counts: dict[str, int] = field(default_factory=dict)

    def damage(self, start: int, scale_index: int, window: int = 0) -> None:
        """Record the unit at ``start``, ``scale_index`` of window ``window`` as damaged."""
        self.damaged_units.add((start, scale_index))
        self.damaged_windows.setdefault(window, set()).add((start, scale_index))

    @property
    def openable(self) -> bool:
        """Whether xarray and :class:`~rsembed_dask.store.cube.Cube` can open the cube (all metadata readable)."""
        return not self.fatal and not self.unreadable


class _Tally:
    """Problems grouped by (array, scale, window, what): a count, the first few positions, one detail,
    the first few chunks."""

    def __init__(self, is_row: np.ndarray | None = None) -> None:
        self.groups: dict[tuple[str, int | None, int | None, str], list[Any]] = {}
        self.is_row = is_row  # sample rows holding samples (False: padding left by an append)

    def add(self, array: str, si: int | None, what: str, positions: np.ndarray, detail: str = "",
            chunk: str | None = None, window: int | None = None) -> None:
        positions = np.asarray(positions).ravel()
        if self.is_row is not None:
            positions = positions[self.is_row[positions]]
        if not positions.size:
            return
        g = self.groups.setdefault((array, si, window, what), [0, [], detail, [], 0])
        g[0] += int(positions.size)
        if len(g[1]) < FIRST:
            g[1].extend(int(p) for p in positions[:FIRST - len(g[1])])
        if chunk is not None and chunk not in g[3]:
            g[4] += 1
            if len(g[3]) < FIRST_CHUNKS:
                g[3].append(chunk)


def _chunk_name(arr: zarr.Array, name: str, coords: tuple[int, ...]) -> str:
    """The key of chunk ``coords`` of array ``name`` in the store (``embedding/c/1/0/0``)."""
    coords = tuple(coords) + (0,) * (arr.ndim - len(coords))
    return f"{name}/{arr.metadata.encode_chunk_key(coords)}"


def _chunks_text(chunks: list[str], count: int) -> str:
    if not chunks:
        return ""
    more = f" and {count - len(chunks)} more" if count > len(chunks) else ""
    return f" (chunk{'s' if count > 1 else ''} {', '.join(chunks)}{more})"


class _Ids:
    """Sample ids by position, one coordinate chunk decoded at a time; None where unreadable."""

    def __init__(self, arr: zarr.Array | None, damaged: list[tuple[int, int]]):
        self.arr, self.damaged = arr, damaged
        self.lo, self.hi = 0, 0
        self.values: np.ndarray = np.zeros(0)

    def name(self, i: int) -> str | None:
        if self.arr is None or any(lo <= i < hi for lo, hi in self.damaged):
            return None
        if not self.lo <= i < self.hi:
            c = self.arr.chunks[0]
            self.lo, self.hi = i // c * c, min(i // c * c + c, self.arr.shape[0])
            self.values = np.asarray(self.arr[self.lo:self.hi])
        v = self.values[i - self.lo]
        return repr(v.item() if isinstance(v, np.generic) else v)


def _names(ids: _Ids, positions: list[int], count: int) -> str:
    names = [ids.name(i) for i in positions]
    known = [n for n in names if n is not None]
    if len(known) == len(names):
        text = "ids " + ", ".join(known)
    else:
        text = "positions " + ", ".join(str(i) for i in positions) + " (ids unreadable)"
    return text + (f" and {count - len(positions)} more" if count > len(positions) else "")


def _read(arr: zarr.Array, sel: tuple) -> np.ndarray | str:
    """The selection as an array, or why it could not be decoded."""
    try:
        return np.asarray(arr[sel])
    except DECODE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"


def _open(path: str | StoreLocation, name: str) -> tuple[zarr.Array | None, dict[str, Any] | None, str | None]:
    """``(array, meta, None)`` or ``(None, None, why)`` for array ``name`` of the group at ``path``."""
    meta, why = array_meta_problem(path, name)
    if meta is None:
        return None, None, why
    try:
        return zarr.open_array(StoreLocation.parse(path).child(name).zarr_store(read_only=True), mode="r",
                               zarr_format=3), meta, None
    except (ValueError, TypeError, KeyError) as exc:  # JSON that Zarr cannot take for array metadata
        return None, None, f"{name}/zarr.json is not valid Zarr array metadata ({type(exc).__name__}: {exc})"


def _group_attrs(path: StoreLocation) -> tuple[dict[str, Any] | None, str | None]:
    """The group attributes of the cube at ``path``, or why they cannot be read.

    Raises
    ------
    CubeError
        ``path`` is not a cube at all (missing, a file, a foreign store).
    """
    if path.is_file("zarr.json"):
        try:
            json.loads(path.read("zarr.json") or b"")
        except STORE_ERRORS + (ValueError,) as exc:
            return None, f"the cube's group metadata (zarr.json) cannot be read ({type(exc).__name__}: {exc})"
    meta = probe_store(path, arrays=False)
    if meta is None:
        raise CubeError(f"no cube at {path!r}")
    return meta["attributes"], None


def check_cube(path: str | os.PathLike | StoreLocation, *, units: bool = True) -> CubeHealth:
    """Read every chunk of every array of the cube at ``path`` and report what is damaged.

    Never raises for damage: each problem is a line of :attr:`CubeHealth.problems`.

    Parameters
    ----------
    path : str or path-like
        A sample cube.
    units : bool
        Also check the data arrays unit by unit (False: metadata and coordinates only).

    Returns
    -------
    CubeHealth

    Raises
    ------
    CubeError
        ``path`` is not a cube (missing, a file, another kind of store).
    """
    loc = StoreLocation.parse(path)
    h = CubeHealth(loc.url)
    attrs, why = _group_attrs(loc)
    if attrs is None:
        h.fatal = True
        h.problems.append(f"{why}; nothing else can be checked")
        return h
    try:
        spec = CampaignSpec.from_json(attrs[SPEC_ATTR])
        names = cube_array_names(attrs)
    except (KeyError, SpecError, CubeError) as exc:
        h.fatal = True
        h.problems.append(f"the cube's campaign_spec attribute cannot be read ({exc}); nothing else can be checked")
        return h
    try:
        windows = _windows(attrs)
    except CubeError as exc:
        h.fatal = True
        h.problems.append(f"{exc}; nothing else can be checked")
        return h
    h.windows = None if windows is None else [w[0] for w in windows]
    arrays: dict[str, zarr.Array] = {}
    for name in names:
        arr, _, why = _open(loc, name)
        if arr is None:
            h.unreadable.append(name)
            h.problems.append(f"{name}: {why}; none of its cells can be checked")
        else:
            arrays[name] = arr
    n_scales = len(spec.scales)
    layout = _layout(arrays, n_scales, None if windows is None else len(windows), h)
    if layout is None:
        return h
    n, embed_dim = layout
    try:  # rows that hold samples: a cube grown by appends has never-written padding rows
        segments = read_segments(attrs, n, spec.chunk_size)
    except CubeError as exc:
        h.problems.append(f"{exc}; every row is checked as a sample")
        segments = ((0, n),)
    is_row = np.zeros(n, bool)
    is_row[segment_rows(segments)] = True
    tally = _Tally(is_row)
    _check_coords(loc, arrays, spec, n, embed_dim, tally, h, segments)
    if windows is not None:
        _check_time(arrays, windows, h)
    if units:
        _check_units(loc, arrays, n, n_scales, spec.chunk_size, tally, h, None if windows is None else len(windows))
    ids = _Ids(arrays.get("sample"), h.damaged_coords.get("sample", []))
    for (array, si, t, what), (count, first, detail, chunks, n_chunks) in tally.groups.items():
        where = array if si is None else f"{array} at {float(spec.scales[si]):g} m"
        if t is not None and windows is not None:
            where += f" in window {windows[t][0]}"
        more = f" ({detail})" if detail else ""
        h.problems.append(f"{where}: {count} {what}{more}: {_names(ids, first, count)}"
                          f"{_chunks_text(chunks, n_chunks)}")
    log.info("checked cube %s: %d problems, %d damaged units", loc, len(h.problems),
             sum(len(u) for u in h.damaged_windows.values()))
    return h


def _windows(attrs: dict[str, Any]) -> list[tuple[str, str]] | None:
    """``[(start, end), ...]`` of a cube with ``time`` (its ``time_windows`` attribute), else None.

    Raises
    ------
    CubeError
        The attribute is not a list of ``[start, end]`` ISO dates.
    """
    raw = attrs.get(TIME_WINDOWS_ATTR)
    if raw is None:
        return None
    try:
        out = [(str(a), str(b)) for a, b in raw]
        for a, b in out:
            window_days(a), window_days(b)
    except (TypeError, ValueError) as exc:
        raise CubeError(f"its {TIME_WINDOWS_ATTR} attribute {raw!r} is not a list of [start, end] dates") from exc
    if not out:
        raise CubeError(f"its {TIME_WINDOWS_ATTR} attribute is empty")
    return out


def _layout(arrays: dict[str, zarr.Array], n_scales: int, n_times: int | None,
            h: CubeHealth) -> tuple[int, int] | None:
    """``(n_samples, embed_dim)`` from the readable arrays; arrays of another shape become unreadable.

    In a cube with ``time`` (``n_times`` windows) every data array has ``time`` first, chunk 1,
    and at least ``n_times`` along it (more where a backfill was interrupted: those windows are
    not the cube's yet, and not checked)."""
    t = 0 if n_times is None else 1
    along = [a.shape[0] for name, a in arrays.items() if name in COORD_NAMES and name not in ("scale", "feature")]
    along += [a.shape[t] for name, a in arrays.items() if name not in COORD_NAMES + TIME_NAMES and a.ndim > t]
    if not along:
        h.problems.append("no array says how many samples the cube has; nothing else can be checked")
        return None
    n = along[0]
    dims = [a.shape[0] for name, a in arrays.items() if name == "feature"]
    dims += [a.shape[t + 2] for name, a in arrays.items() if name in ("embedding", "grid") and a.ndim > t + 2]
    embed_dim = dims[0] if dims else 0
    for name, a in list(arrays.items()):
        shape, chunks = tuple(a.shape), tuple(a.chunks)
        if name == "time":
            fits = a.ndim == 1 and shape[0] >= (n_times or 0)
        elif name == "time_bnds":
            fits = a.ndim == 2 and shape[0] >= (n_times or 0) and shape[1] == 2
        else:
            if name == "scale":
                expected: tuple[int, ...] = (n_scales,)
            elif name == "feature":
                expected = (embed_dim,)
            elif name in COORD_NAMES:
                expected = (n,)
            elif name in ("embedding", "grid"):
                expected = (n, n_scales, embed_dim) + tuple(a.shape[t + 3:])
            elif name == "grid_scale":  # int8 cubes: one scale per token (sample, scale, gy, gx)
                expected = (n, n_scales) + tuple(a.shape[t + 2:])
            else:
                expected = (n, n_scales)
            if t and name not in COORD_NAMES:  # (time, ...), one window per chunk
                fits = (len(shape) == len(expected) + 1 and shape[1:] == expected and shape[0] >= (n_times or 0)
                        and chunks[0] == 1 and (name not in ("embedding", "grid") or chunks[2] == 1))
            else:
                fits = shape == expected and (name not in ("embedding", "grid") or chunks[1] == 1)
        if not fits:
            h.unreadable.append(name)
            size = f"{n_times} windows, " if n_times is not None else ""
            h.problems.append(f"{name}: shape {shape} and chunks {chunks} do not fit the cube "
                              f"({size}{n} samples, {n_scales} scales, D={embed_dim}); none of its cells can be checked")
            del arrays[name]
    return n, embed_dim


def _check_time(arrays: dict[str, zarr.Array], windows: list[tuple[str, str]], h: CubeHealth) -> None:
    """``time`` and ``time_bnds`` hold the windows of the ``time_windows`` attribute (int64 days)."""
    starts = np.array([window_days(a) for a, _ in windows], "int64")
    bounds = np.array([[window_days(a), window_days(b)] for a, b in windows], "int64")
    for name, expected in (("time", starts), ("time_bnds", bounds)):
        arr = arrays.get(name)
        if arr is None:
            continue
        bad = []
        for t in range(len(windows)):
            v = _read(arr, (slice(t, t + 1),))
            if isinstance(v, str):
                bad.append(f"window {windows[t][0]}: its chunk {_chunk_name(arr, name, (t,))} cannot be decoded ({v})")
            elif not np.array_equal(np.asarray(v).reshape(expected[t:t + 1].shape), expected[t:t + 1]):
                got = np.asarray(v)[0].astype("int64").astype("datetime64[D]").astype(str).tolist()
                bad.append(f"window {windows[t][0]}: holds {got} (chunk {_chunk_name(arr, name, (t,))})")
        if bad:
            h.problems.append(f"{name}: " + "; ".join(bad) + " (expected the windows of the cube's "
                              f"{TIME_WINDOWS_ATTR} attribute)")
            h.damaged_coords[name] = [(0, len(windows))]


_COORD_CHECKS = {
    "lon": ("longitudes that are not finite numbers in [-180, 180]",
            lambda v: ~(np.isfinite(v) & (v >= -180) & (v <= 180))),
    "lat": ("latitudes that are not finite numbers in [-90, 90]",
            lambda v: ~(np.isfinite(v) & (v >= -90) & (v <= 90))),
    "geohash": ("empty geohashes (the fill value)", lambda v: np.array([not x for x in v.tolist()], bool)),
    "geometry": ("empty geometries (the fill value)", lambda v: np.array([not x for x in v.tolist()], bool)),
}


def _bad_ids(v: np.ndarray) -> list[tuple[str, np.ndarray]]:
    values = v.tolist()
    out = []
    if v.dtype.kind not in "iu":
        out.append(("empty ids (the fill value)", np.array([x == "" for x in values], bool)))
    _, first, counts = np.unique(np.asarray(values, dtype=object if v.dtype.kind not in "iu" else v.dtype),
                                 return_index=True, return_counts=True)
    dup = np.zeros(len(values), bool)
    dup[first[counts > 1]] = True
    out.append(("ids that repeat within their chunk", dup))
    return out


def _check_coords(path: StoreLocation, arrays: dict[str, zarr.Array], spec: CampaignSpec, n: int, embed_dim: int,
                  tally: _Tally, h: CubeHealth, segments: tuple[tuple[int, int], ...]) -> None:
    """Per-sample coordinates chunk by chunk (padding rows left out), then ``scale`` and ``feature`` whole."""
    for name in ("sample", "lon", "lat", "geohash", "geometry"):
        arr = arrays.get(name)
        if arr is None:
            continue
        meta, _ = array_meta_problem(path, name)
        lost = missing_coordinate_chunks(path, name, meta, segments) if meta is not None else []
        c = arr.chunks[0]
        for lo in range(0, n, c):
            hi = min(lo + c, n)
            pos = np.arange(lo, hi)
            chunk = _chunk_name(arr, name, (lo // c,))
            if (lo, hi) in lost:
                tally.add(name, None, "values whose chunk is missing (read as the fill value)", pos, chunk=chunk)
                h.damaged_coords.setdefault(name, []).append((lo, hi))
                continue
            v = _read(arr, (slice(lo, hi),))
            if isinstance(v, str):
                tally.add(name, None, "values in a chunk that cannot be decoded", pos, v, chunk=chunk)
                h.damaged_coords.setdefault(name, []).append((lo, hi))
                continue
            if name == "sample":
                checks = _bad_ids(v)
            else:
                what, test = _COORD_CHECKS[name]
                checks = [(what, test(v))]
            bad = False
            for what, mask in checks:
                if tally.is_row is not None:
                    mask = mask & tally.is_row[lo:hi]
                tally.add(name, None, what, pos[mask], chunk=chunk)
                bad |= bool(mask.any())
            if bad:
                h.damaged_coords.setdefault(name, []).append((lo, hi))
    for name, expected in (("scale", np.asarray(spec.scales, "float64")), ("feature", np.arange(embed_dim))):
        arr = arrays.get(name)
        if arr is None:
            continue
        meta, _ = array_meta_problem(path, name)
        if meta is not None and missing_coordinate_chunks(path, name, meta):
            h.problems.append(f"{name}: its chunk is missing (read as the fill value)")
            h.damaged_coords[name] = [(0, len(expected))]
            continue
        v = _read(arr, (slice(None),))
        if isinstance(v, str):
            h.problems.append(f"{name}: its chunk cannot be decoded ({v})")
            h.damaged_coords[name] = [(0, len(expected))]
        elif not np.array_equal(v, expected):
            h.problems.append(f"{name}: holds {v.tolist()[:8]}, expected {expected.tolist()[:8]}")
            h.damaged_coords[name] = [(0, len(expected))]


#: Status codes a cell may hold.
_CODES = (PENDING, OK, NO_DATA, FAILED)
#: Which cells vouch for each data array's chunk, in words and as a mask.
_VOUCHERS = {
    "embedding": ("ok", lambda c: c == OK),
    "input_res_m": ("ok", lambda c: c == OK),
    "grid": ("ok", lambda c: c == OK),
    "embedding_scale": ("ok", lambda c: c == OK),
    "grid_scale": ("ok", lambda c: c == OK),
    "valid_fraction": ("finished", lambda c: c != PENDING),
    "error": ("failed", lambda c: c == FAILED),
}


def _content_problems(name: str, cells: np.ndarray, v: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """What a decoded chunk of data array ``name`` says against the status ``cells`` of its unit."""
    ok = cells == OK
    empty = np.isin(cells, (NO_DATA, FAILED))
    if name in ("embedding", "grid") and v.dtype.kind == "i":  # int8: its scale array says what is empty
        held = (v != 0).reshape(v.shape[0], -1).any(-1)
        return [(f"no_data or failed cells that hold {'an embedding' if name == 'embedding' else 'a token grid'}",
                 empty & held)]
    if name in ("embedding_scale", "grid_scale"):
        fin = np.isfinite(v).reshape(v.shape[0], -1)
        return [(f"ok cells without a finite {name}", ok & ~fin.any(-1)),
                (f"no_data or failed cells with a finite {name}", empty & fin.any(-1))]
    if name == "embedding":
        fin = np.isfinite(v)
        return [("ok cells with a non-finite embedding", ok & ~fin.all(-1)),
                ("no_data or failed cells that hold an embedding", empty & fin.any(-1))]
    if name == "grid":
        fin = np.isfinite(v).reshape(v.shape[0], -1)
        return [("ok cells with an empty token grid", ok & ~fin.any(-1)),
                ("no_data or failed cells that hold a token grid", empty & fin.any(-1))]
    if name == "input_res_m":
        return [("ok cells without an input resolution", ok & ~np.isfinite(v))]
    if name == "valid_fraction":
        return [("finished cells without a valid fraction", (cells != PENDING) & ~np.isfinite(v))]
    if name == "error":
        return [("failed cells without a reason", (cells == FAILED) & np.array([not e for e in v.tolist()], bool))]
    return []


def _check_units(path: StoreLocation, arrays: dict[str, zarr.Array], n: int, n_scales: int, chunk_size: int,
                 tally: _Tally, h: CubeHealth, n_times: int | None = None) -> None:
    """Every unit's chunks: stored where the status vouches, decodable, consistent with the status;
    in a cube with ``time`` (``n_times`` windows), every window's."""
    names = [k for k in ("embedding", "input_res_m", "valid_fraction", "error", "grid", "embedding_scale",
                         "grid_scale") if k in arrays]
    status = arrays.get("status")
    t0 = 0 if n_times is None else 1  # the position of ``sample`` in a data array's dimensions
    cs = status.chunks[t0] if status is not None else (arrays[names[0]].chunks[t0] if names else chunk_size)
    stored = {name: {key[:t0 + 2] for key in chunk_keys(path, name)} for name in names}
    unit_bytes = max([cs * int(np.prod(arrays[k].shape[t0 + 2:], dtype="int64")) * 4 for k in names] + [cs])
    per_batch = max(1, BATCH_BYTES // unit_bytes)
    counts = np.zeros(len(STATUS_NAMES), "int64")
    unreadable_cells = 0
    for t in range(n_times or 1):
        window = None if n_times is None else t
        prefix: tuple[int, ...] = () if n_times is None else (t,)
        for si in range(n_scales):
            for b0 in range(0, n, cs * per_batch):
                starts = list(range(b0, min(n, b0 + cs * per_batch), cs))
                batch = {name: _read_units(arrays[name], prefix, si, starts, cs, n) for name in
                         (["status"] if status is not None else []) + names}
                for start in starts:
                    stop = min(start + cs, n)
                    pos = np.arange(start, stop)
                    key = prefix + (start // cs, si)
                    damaged = False
                    cells = batch["status"][start] if status is not None else None
                    if isinstance(cells, str):
                        assert status is not None
                        tally.add("status", si, UNDECODABLE, pos, cells, _chunk_name(status, "status", key), window)
                        unreadable_cells += stop - start
                        damaged, cells = True, None
                    elif cells is not None:
                        known = np.isin(cells, _CODES)
                        counts += np.bincount(cells[known].astype("int64"), minlength=len(STATUS_NAMES))
                        if not known.all():
                            assert status is not None
                            tally.add("status", si, "cells with an unknown status code", pos[~known],
                                      chunk=_chunk_name(status, "status", key), window=window)
                            damaged = True
                    vouched = (vouched_arrays(cells, "grid" in arrays, "embedding_scale" in arrays)
                               if cells is not None else ())
                    for name in names:
                        v = batch[name][start]
                        chunk = _chunk_name(arrays[name], name, key)
                        if isinstance(v, str):
                            tally.add(name, si, UNDECODABLE, pos, v, chunk, window)
                            damaged = True
                            continue
                        if cells is None:
                            continue
                        if name in vouched and key not in stored[name]:
                            who, vouches = _VOUCHERS[name]
                            tally.add(name, si, f"{who} cells whose chunk is missing", pos[vouches(cells)],
                                      chunk=chunk, window=window)
                            damaged = True
                            continue
                        for what, mask in _content_problems(name, cells, v):
                            tally.add(name, si, what, pos[mask], chunk=chunk, window=window)
                            damaged |= bool(mask.any())
                    if damaged:
                        h.damage(start, si, t)
    h.status_counts = {name: int(counts[i]) for i, name in enumerate(STATUS_NAMES)}
    if status is None:
        h.status_counts = {}
    else:
        h.status_counts["unreadable"] = unreadable_cells


def _read_units(arr: zarr.Array, prefix: tuple[int, ...], si: int, starts: list[int], cs: int,
                n: int) -> dict[int, np.ndarray | str]:
    """Each unit's chunk of ``arr`` at scale ``si`` (of window ``prefix``: ``(t,)`` in a cube with ``time``,
    else ``()``): one read for the batch, unit by unit where that fails."""
    lo, hi = starts[0], min(starts[-1] + cs, n)
    whole = _read(arr, prefix + (slice(lo, hi), si))
    if not isinstance(whole, str):
        return {s: whole[s - lo:min(s + cs, n) - lo] for s in starts}
    return {s: _read(arr, prefix + (slice(s, min(s + cs, n)), si)) for s in starts}


def verify_cube(path: str | os.PathLike | StoreLocation) -> list[str]:
    """Problems found in the cube at ``path`` (an empty list when it is consistent).

    See :func:`check_cube`; reads chunk by chunk, memory stays at a few batches of chunks.

    Raises
    ------
    CubeError
        ``path`` is not a cube.
    """
    return check_cube(path).problems


def check_grids(path, scale_m: float, sample_status: np.ndarray | None) -> list[str]:
    """Problems in the zone grids of one scale of the tiling store at ``path``.

    Every chunk of every grid's ``embedding``, ``status`` and ``sample_index`` must
    decode; with ``sample_status`` (the scale's sample cube status, given only when
    the grids are synced) every grid cell naming a tile must exist in the sample cube
    and hold its status, cells without a tile no status, and ``ok`` cells a finite
    embedding whose chunk is stored.

    Parameters
    ----------
    path : str or path-like
        The tiling store.
    scale_m : float
    sample_status : numpy.ndarray or None
        ``status[:, 0]`` of ``samples/<scale>m`` (``status[:, :, 0]``, per window, in a store with
        ``time``: each window's grid is compared with that window's samples); None skips the comparisons.

    Returns
    -------
    list of str
        One line per grid and kind of problem, naming the first cells ``(y, x)``.
    """
    base = StoreLocation.parse(path).child(scale_name(scale_m))
    name = scale_name(scale_m)
    problems = []
    zones = sorted(z for z in base.children() if base.is_dir(z))
    if not zones:
        return [f"{name}: no zone grid in the store"]
    root = zarr.open_group(StoreLocation.parse(path).zarr_store(read_only=True), mode="r", zarr_format=3)
    raw: Any = root.attrs.get(TIME_WINDOWS_ATTR) or []
    windows = [str(w[0]) for w in raw]  # start dates, by position
    for zone in zones:
        arrs = {}
        names: tuple[str, ...] = ("status", "sample_index", "embedding")
        if base.is_dir(f"{zone}/embedding_scale"):  # an int8 store
            names += ("embedding_scale",)
        for a in names:
            arr, _, why = _open(base, f"{zone}/{a}")
            if arr is None:
                problems.append(f"{name}/{zone}: {why}; its cells cannot be checked")
            else:
                arrs[a] = arr
        if len(arrs) < len(names):
            continue
        timed = has_time(arrs["status"])
        stored_keys = list(chunk_keys(base, f"{zone}/embedding"))
        for t in (range(arrs["status"].shape[0]) if timed else [None]):
            where = f"{name}/{zone}" + (f" in window {windows[t]}" if t is not None and t < len(windows) else
                                        f" in window {t}" if t is not None else "")
            emb_stored = {k[:2] for k in stored_keys} if t is None else {k[1:3] for k in stored_keys if k[0] == t}
            status_t = None if sample_status is None else (sample_status if t is None else sample_status[t])
            problems += _check_zone_grid({k: at_window(a, t) for k, a in arrs.items()}, where, emb_stored, status_t)
    return problems


def _check_zone_grid(arrs: dict[str, Any], where: str, emb_stored: set, sample_status: np.ndarray | None) -> list[str]:
    """Problems of one zone grid (one window of it, for a store with time): see :func:`check_grids`."""
    problems = []
    tally = _Tally()
    ny, nx = arrs["status"].shape
    by, bx = arrs["status"].chunks
    row_bytes = by * nx * arrs["embedding"].shape[2] * 4
    cols = max(bx, (BATCH_BYTES // max(row_bytes // nx, 1)) // bx * bx)
    for y0 in range(0, ny, by):
        for x0 in range(0, nx, cols):
            for (ya, yb, xa, xb), got in _read_blocks(arrs, y0, min(y0 + by, ny), x0, min(x0 + cols, nx),
                                                      by, bx):
                cellpos = np.stack(np.meshgrid(np.arange(ya, yb), np.arange(xa, xb), indexing="ij"), -1)
                cellpos = cellpos.reshape(-1, 2)
                bad = [k for k, v in got.items() if isinstance(v, str)]
                for k in bad:
                    _tally_cells(tally, k, UNDECODABLE, cellpos, np.ones(len(cellpos), bool), got[k])
                if bad or sample_status is None:
                    continue
                idx, cells, emb = (got[k].reshape(len(cellpos), *got[k].shape[2:])
                                   for k in ("sample_index", "status", "embedding"))
                has = idx >= 0
                outside = has & (idx >= len(sample_status))
                has &= ~outside
                differ = has & (cells != sample_status[np.where(has, idx, 0)])
                stray = ~has & ~outside & (cells != NO_TILE)
                ok = has & (cells == OK)
                finite = (np.isfinite(got["embedding_scale"].reshape(len(cellpos))) if "embedding_scale" in got
                          else np.isfinite(emb).all(-1))
                stored = np.array([(y // by, x // bx) in emb_stored for y, x in cellpos.tolist()], bool)
                for what, mask in (
                        ("grid cells naming a sample the sample cube does not have", outside),
                        ("grid cells whose status is not their sample's", differ),
                        ("grid cells with a status but no sample index", stray),
                        ("ok grid cells whose embedding chunk is missing", ok & ~stored),
                        ("ok grid cells with a non-finite embedding", ok & stored & ~finite)):
                    _tally_cells(tally, "", what, cellpos, mask)
    for (array, _, _, what), (count, first, detail, _, _) in tally.groups.items():
        cells = ", ".join(f"(y={y}, x={x})" for y, x in first)
        more = f" and {count - len(first)} more" if count > len(first) else ""
        extra = f" ({detail})" if detail else ""
        problems.append(f"{where}{'/' + array if array else ''}: {count} {what}{extra}: {cells}{more}")
    return problems


def _tally_cells(tally: _Tally, array: str, what: str, cellpos: np.ndarray, mask: np.ndarray,
                 detail: str = "") -> None:
    """Like :meth:`_Tally.add` with ``(y, x)`` cells instead of sample positions."""
    sel = cellpos[mask]
    if not len(sel):
        return
    g = tally.groups.setdefault((array, None, None, what), [0, [], detail, [], 0])
    g[0] += len(sel)
    g[1].extend((int(y), int(x)) for y, x in sel[:max(0, FIRST - len(g[1]))])


def _read_blocks(arrs: dict[str, zarr.Array], ya: int, yb: int, xa: int, xb: int, by: int, bx: int):
    """``((ya, yb, xa, xb), {array: values or why})`` for the region, chunk by chunk where a read fails."""
    got = {k: _read(a, (slice(ya, yb), slice(xa, xb))) for k, a in arrs.items()}
    if not any(isinstance(v, str) for v in got.values()):
        return [((ya, yb, xa, xb), got)]
    out = []
    for x in range(xa, xb, bx):
        region = (ya, yb, x, min(x + bx, xb))
        out.append((region, {k: _read(a, (slice(ya, yb), slice(*region[2:]))) for k, a in arrs.items()}))
    return out


def verify_tiling_store(path: str | os.PathLike | StoreLocation) -> list[str]:
    """Problems found in the tiling store at ``path`` (an empty list when it is consistent).

    Every per-scale sample cube goes through :func:`check_cube`, every zone grid
    through :func:`check_grids`; the grids are compared with their samples only when
    the root attribute ``raster_synced`` says they reflect them (a run going on or
    interrupted leaves them unsynced).

    Parameters
    ----------
    path : str or path-like
        A tiling store (see :mod:`rsembed_dask.store.tiling`).

    Returns
    -------
    list of str
        One line per kind of problem, prefixed with the group it was found in.
    """
    path = StoreLocation.parse(path)
    root = zarr.open_group(path.zarr_store(read_only=True), mode="r", zarr_format=3)
    scales = json.loads(attr_text(root.attrs, TILING_IDENTITY_ATTR))["tiling"]["scales"]
    synced = bool(root.attrs.get(SYNCED_ATTR, False))
    problems = []
    for s in scales:
        name = scale_name(s)
        sample_path = path.child("samples", name)
        health = check_cube(sample_path)
        problems += [f"samples/{name}: {p}" for p in health.problems]
        sample_status = None
        if synced and "status" not in health.unreadable and not health.fatal:
            arr = zarr.open_array(sample_path.child("status").zarr_store(read_only=True), mode="r", zarr_format=3)
            status = _read(arr, (slice(None), slice(None), 0) if has_time(arr) else (slice(None), 0))
            sample_status = None if isinstance(status, str) else status
        problems += check_grids(path, s, sample_status)
    if not synced:
        log.info("tiling store %s: grids not synced; grid cells not compared with the samples", path)
    return problems
