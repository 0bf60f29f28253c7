"""Damage named: a chunk that does not decode, turned into one line saying where and what to do.

Reading a damaged chunk raises whatever the codec chain meets first: ``crc32c``'s
"Stored and computed checksum do not match" in cubes created since checksums came,
a Zstd or UTF-8 decoding error (or, silently, wrong numbers) in older ones. Readers
of a cube (export, STAC, quicklooks, :func:`~rsembed_dask.explore.similar`) wrap their
reads in :func:`named_damage`, which turns such an error into a
:class:`~rsembed_dask.errors.CubeDamagedError` naming the array, the scale, the sample
ids of the chunk and the ``--repair`` command, after finding the chunk by reading the
region again chunk by chunk.

Examples
--------
>>> with named_damage("out.zarr", scale_index=0, rows=(0, 512)):   # doctest: +SKIP
...     emb = zarr.open_array("out.zarr/embedding")[0:512, 0]
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import numpy as np
import zarr

from ..errors import CubeDamagedError, RsEmbedError
from .location import STORE_ERRORS, StoreLocation
from .open import DECODE_ERRORS

__all__ = ["named_damage", "damage_error", "find_damaged_chunks", "REPAIR_HINT"]

log = logging.getLogger(__name__)

#: How a damaged cube is repaired (the campaign's own command, with ``--repair``).
REPAIR_HINT = ("run the campaign that wrote it again with --repair (rsembed-dask run SAMPLES --out {path} "
               "<its options> --repair, or run_campaign(..., repair=True)): damaged units are embedded "
               "again, damaged grids rewritten from them; `rsembed-dask inspect --verify {path}` lists all damage")
#: Sample ids named in a message (then "and N more").
_NAMED_IDS = 3
#: Chunks read one by one to find the damaged one, at most (a region larger than this is
#: named by the error alone).
_MAX_PROBES = 4096


def _dims(arr: zarr.Array) -> tuple[str, ...]:
    names = getattr(arr.metadata, "dimension_names", None)
    return tuple(names or ())


def find_damaged_chunks(path: str | StoreLocation, *, scale_index: int | None = None, rows: tuple[int, int] | None = None,
                        arrays: tuple[str, ...] | None = None, limit: int = 1,
                        window: int | None = None) -> list[tuple[str, tuple[slice, ...]]]:
    """Chunks of the group at ``path`` that do not decode: ``[(array, region), ...]``, at most ``limit``.

    Parameters
    ----------
    path : str or StoreLocation
        A cube (or a tiling store's zone group).
    scale_index : int, optional
        Only this position along ``scale`` (arrays with a ``scale`` dimension).
    rows : (int, int), optional
        Only chunks meeting ``[start, stop)`` along ``sample`` (arrays without one: along their
        first dimension).
    arrays : tuple of str, optional
        Only these arrays (default every array of the group).
    limit : int
        Stop after this many.
    window : int, optional
        Only this position along ``time`` (a cube with ``time``; default every window).

    Returns
    -------
    list of (str, tuple of slice)
        The array's name and the chunk's region, one slice per dimension of the array.
    """
    group = zarr.open_group(StoreLocation.parse(path).zarr_store(read_only=True), mode="r", zarr_format=3)
    found: list[tuple[str, tuple[slice, ...]]] = []
    probes = 0
    for name, arr in sorted(group.arrays()):
        if (arrays is not None and name not in arrays) or not arr.shape:
            continue
        dims = _dims(arr) or ("",) * arr.ndim
        lead = dims.index("sample") if "sample" in dims else 0  # the axis ``rows`` is along
        c0, n0 = arr.chunks[lead], arr.shape[lead]
        lo, hi = (0, n0) if rows is None else (max(0, rows[0]), min(n0, rows[1]))
        times: list[int | None] = [None]
        if lead > 0 and dims[0] == "time":
            times = list(range(arr.shape[0])) if window is None else [int(window)]
        for t in times:
            for a in range(lo // c0 * c0, hi, c0):
                probes += 1
                if probes > _MAX_PROBES:
                    return found
                sel: list[slice] = []
                for i, d in enumerate(dims):
                    if i == lead:
                        sel.append(slice(a, min(a + c0, n0)))
                    elif d == "time" and t is not None:
                        sel.append(slice(t, t + 1))
                    elif d == "scale" and scale_index is not None:
                        sel.append(slice(scale_index, scale_index + 1))
                    else:
                        sel.append(slice(None))
                try:
                    arr[tuple(sel)]
                except DECODE_ERRORS:
                    found.append((name, tuple(sel)))
                    if len(found) >= limit:
                        return found
    return found


def _window(path: StoreLocation, region: tuple[slice, ...], dims: tuple[str, ...]) -> str:
    """`` in window <start date>`` of a region of an array with ``time`` first (else "")."""
    if not dims or dims[0] != "time" or "sample" not in dims:
        return ""
    t = region[0].start or 0
    try:
        day = np.asarray(zarr.open_array(path.zarr_store(read_only=True), path="time", mode="r")[t])
        return f" in window {np.datetime64(int(day), 'D')}"
    except DECODE_ERRORS + STORE_ERRORS + (KeyError, IndexError, TypeError):
        return f" in window {t} (along time)"


def _ids(path: StoreLocation, a: int, b: int) -> str:
    """The sample ids of rows ``[a, b)`` of the cube at ``path`` as a short list, or the rows."""
    try:
        ids = np.asarray(zarr.open_array(path.zarr_store(read_only=True), path="sample", mode="r")[a:b]).tolist()
    except DECODE_ERRORS + STORE_ERRORS + (KeyError,):
        return f"rows {a}-{b - 1} (their ids are unreadable too)"
    ids = [i for i in ids if i not in ("", None)]
    shown = ", ".join(repr(i) for i in ids[:_NAMED_IDS])
    more = f" and {len(ids) - _NAMED_IDS} more" if len(ids) > _NAMED_IDS else ""
    return f"samples {shown}{more} (rows {a}-{b - 1})"


def _scale(path: StoreLocation, region: tuple[slice, ...], dims: tuple[str, ...]) -> str:
    if "scale" not in dims:
        return ""
    si = region[dims.index("scale")].start
    if si is None:  # every scale probed
        return ""
    try:
        value = np.asarray(zarr.open_array(path.zarr_store(read_only=True), path="scale", mode="r")[si])
        return f" at scale {float(value):g} m"
    except DECODE_ERRORS + STORE_ERRORS + (KeyError, IndexError):
        return f" at scale index {si}"


def damage_error(path: str | os.PathLike | StoreLocation, exc: BaseException, *, scale_index: int | None = None,
                 rows: tuple[int, int] | None = None,
                 cube: str | os.PathLike | StoreLocation | None = None,
                 window: int | None = None) -> CubeDamagedError | None:
    """The one-line :class:`CubeDamagedError` for ``exc``, raised reading the group at ``path``;
    None when no chunk of the region fails to decode (``exc`` came from elsewhere).

    ``cube``: the cube to repair when ``path`` is a group inside it (a tiling store's zone grid);
    ``window``: the position along ``time`` that was read (a cube with ``time``; default: every window).
    """
    loc = StoreLocation.parse(path)
    path_url = loc.url
    where = StoreLocation.parse(cube).url if cube is not None else path_url
    why = ("its CRC-32C checksum does not match: the stored bytes changed" if "checksum" in str(exc)
           else f"{type(exc).__name__}: {exc}".replace("\n", " "))
    try:
        found = find_damaged_chunks(loc, scale_index=scale_index, rows=rows, window=window)
    except (*DECODE_ERRORS, KeyError) as probe:  # the group itself cannot be listed
        log.debug("damage probe of %s failed: %r", path_url, probe)
        found = []
    if not found:
        return None
    name, region = found[0]
    arr = zarr.open_array(loc.zarr_store(read_only=True), path=name, mode="r")
    dims = _dims(arr)
    lead = dims.index("sample") if "sample" in dims else 0
    a, b = region[lead].start, region[lead].stop
    if "sample" in dims:
        what = f"array {name!r}{_scale(loc, region, dims)}{_window(loc, region, dims)}, {_ids(loc, a, b)}"
    else:
        group = path_url[len(where):].strip("/") if path_url != where and path_url.startswith(where) else "the store"
        what = f"array {name!r} of {group}, {dims[0] if dims else 'rows'} {a}-{b - 1}"
    return CubeDamagedError(f"cube {where!r} is damaged: {what} does not decode ({why}); "
                            + REPAIR_HINT.format(path=where))


@contextlib.contextmanager
def named_damage(path: str | os.PathLike | StoreLocation, *, scale_index: int | None = None,
                 rows: tuple[int, int] | None = None,
                 cube: str | os.PathLike | StoreLocation | None = None, window: int | None = None) -> Iterator[None]:
    """Reads inside the block that fail to decode raise :func:`damage_error` (one line, named);
    other errors (and errors where no chunk fails to decode) pass unchanged. ``window``: the
    position along ``time`` read, where the cube has ``time``."""
    try:
        yield
    except RsEmbedError:
        raise
    except DECODE_ERRORS as exc:
        named = damage_error(path, exc, scale_index=scale_index, rows=rows, cube=cube, window=window)
        if named is None:
            raise
        raise named from exc

