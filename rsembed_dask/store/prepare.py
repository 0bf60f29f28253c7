"""The store's one face to a run: a cube ready to run, and what is left to do in it.

A campaign asks the store once (:func:`open_for_run`) instead of reaching into its
repair, layout, verify and size modules one by one. The store works in two phases so
that nothing changes before the run's checks pass:

1. **Look** (read-only, :func:`work_left`): does the store exist, was its creation
   interrupted, how many cells are left. One read of the group metadata and one of each
   ``status`` chunk (issued concurrently by Zarr); no listing, no id or geometry read.
2. **Check**: the caller's ``preflight`` (weights, backend, free space) runs whenever the
   store may change: there is work left, ``--repair`` was asked, or the samples given
   need ``--update``/``--append`` (found by comparing digests, still before any write),
   or damaged units are to be reset. A failing check leaves the store byte for byte as it was.
3. **Apply**: repair, create or resume (update, append), reset damaged units; the
   ``status`` read in phase 1 is reused when nothing was written.

What a plain run checks: the status (what is done) and, on a local store, that the data
chunks an ``ok`` status vouches for exist (a directory listing). On an object store a
plain run does not list chunks (a LIST per 1,000 objects of six arrays would cost more
than the resume itself): ``rsembed-dask inspect --verify`` finds lost or corrupted chunks
and ``--repair`` re-runs them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import zarr

from .cube import Cube
from .layout import INPUT_DIGEST_ATTR, read_segments, segment_rows, statuses_to_run
from .location import StoreLocation
from .open import DECODE_ERRORS, array_meta_problem, damage_hint, is_tiling_store, probe_store, store_bytes, unfinished_store
from .repair import repair_sample_cube, reset_damaged_units
from .samples import SampleChanges, table_in_cube_rows
from .tiling import sample_cube_names
from ..errors import CubeDamagedError, CubeError
from ..sampling.units import WorkUnit, work_units
from ..specs import CampaignSpec

__all__ = ["WorkLeft", "CubeForRun", "work_left", "open_for_run", "finished_rerun", "record_input", "Checks"]

log = logging.getLogger(__name__)

#: Status chunks read at once from an object store on resume (Zarr's default is 10): each is
#: one small GET, so the resume of a large cube is bound by round trips, not bytes.
STATUS_READ_CONCURRENCY = 64

#: Called before the store changes: ``checks(location, fraction_of_cells_to_write, bytes_reclaimed)``.
#: It raises to stop the run; the store is then left as it was.
Checks = Callable[[StoreLocation, float, int], None]


@dataclass(frozen=True)
class WorkLeft:
    """What a read-only look at a store found.

    Attributes
    ----------
    fraction : float
        Share of the store's cells left to write (1.0: it does not exist, or is recreated).
    reclaim : int
        Bytes of an interrupted store that the new one replaces.
    status : dict of str to ndarray, or None
        The ``status`` array read, per sample cube path (reused when nothing is written).
    """

    fraction: float
    reclaim: int = 0
    status: Mapping[str, np.ndarray] | None = None

    @property
    def any(self) -> bool:
        return self.fraction > 0


def _read_status(loc: StoreLocation) -> np.ndarray:
    """The whole ``status`` array of the cube at ``loc`` (its chunks fetched concurrently by Zarr)."""
    if array_meta_problem(loc, "status")[0] is None:
        probe_store(loc)  # CubeDamagedError naming every damaged array
    try:
        status = zarr.open_array(loc.child("status").zarr_store(), mode="r", zarr_format=3)
        if loc.local:
            return np.asarray(status[...], dtype="int8")
        with zarr.config.set({"async.concurrency": STATUS_READ_CONCURRENCY}):  # one GET per unit, in parallel
            return np.asarray(status[...], dtype="int8")
    except DECODE_ERRORS as exc:
        raise CubeDamagedError(f"cube {loc.url!r} is damaged: its status cannot be read "
                               f"({type(exc).__name__}: {exc}); " + damage_hint(loc.url)) from exc


def work_left(path: str | os.PathLike | StoreLocation, *, tiling: bool = False,
              retry_failed: bool = False, retry_no_data: bool = False) -> WorkLeft | None:
    """Read-only: what is left to do in the store at ``path``.

    Parameters
    ----------
    path : str, path-like or StoreLocation
        The cube, or the tiling store with ``tiling=True``.
    tiling : bool
        ``path`` is a tiling store (its sample cubes are read).
    retry_failed, retry_no_data : bool
        Failed (no_data) cells count as work left.

    Returns
    -------
    WorkLeft or None
        None for a finished store (nothing pending; nor failed with ``retry_failed``, nor
        no_data with ``retry_no_data``) or
        one that a run refuses (a foreign store: planning says why).
    """
    loc = StoreLocation.parse(path)
    if tiling:
        if unfinished_store(loc, tiling=True) is not None:
            return WorkLeft(1.0, store_bytes(loc))
        if not is_tiling_store(loc):
            return WorkLeft(1.0) if probe_store(loc, arrays=False) is None else None
        subs = [loc.child("samples", name) for name in sample_cube_names(loc)]
        cubes = [(c, probe_store(c, arrays=False)) for c in subs]
    else:
        try:
            meta = probe_store(loc, arrays=False)
        except CubeDamagedError:
            raise
        except CubeError:
            if unfinished_store(loc) is not None:
                return WorkLeft(1.0, store_bytes(loc))
            return None  # refused when planned, with the reason
        if meta is None:
            return WorkLeft(1.0)
        cubes = [(loc, meta)]
    left = total = 0
    statuses = {}
    for cube, attrs in cubes:
        if attrs is None:
            continue
        status = _read_status(cube)
        statuses[cube.url] = status
        n_rows = status.shape[-2]  # (sample, scale), or (time, sample, scale)
        rows = segment_rows(read_segments(attrs["attributes"], n_rows, 1))
        cells = status[..., rows, :] if len(rows) != n_rows else status
        left += int(np.isin(cells, statuses_to_run(retry_failed=retry_failed, retry_no_data=retry_no_data)).sum())
        total += cells.size
    return WorkLeft(left / total, 0, statuses) if left else WorkLeft(0.0, 0, statuses)


@dataclass
class CubeForRun:
    """A cube ready for a run, and what is left to do in it.

    Attributes
    ----------
    cube : Cube
    table : SampleTable
        The samples laid out like the cube's rows (row ``r`` is the sample at cube row ``r``).
    units : list of WorkUnit
        Every unit holding a given sample.
    status : ndarray
        The cube's status when it was prepared (``[n_rows, n_scales]``).
    changes : SampleChanges
        How the samples given compared with the stored ones (moved, new, missing).
    reset : int
        Units found damaged and put back to pending.
    windows : list of (Cube, list of WorkUnit, ndarray)
        Per date window of the cube (one for a cube without ``time``): its cube handle
        (:meth:`Cube.at_window`), units and status; the first is ``(cube, units, status)``.
    """

    cube: Cube
    table: Any
    units: list[WorkUnit]
    status: np.ndarray
    changes: SampleChanges
    reset: int = 0
    windows: list[tuple[Cube, list[WorkUnit], np.ndarray]] = field(default_factory=list)

    def todo(self, *, retry_failed: bool = False, retry_no_data: bool = False) -> list[WorkUnit]:
        """The units with a pending cell (or a failed one with ``retry_failed``, a no_data one with
        ``retry_no_data``)."""
        return self.cube.incomplete_units(self.units, retry_failed=retry_failed, retry_no_data=retry_no_data,
                                          status=self.status)


def open_for_run(out: str | os.PathLike | StoreLocation, table: Any, *, spec: CampaignSpec, embed_dim: int,
                 grid_shape: tuple[int, int] | None, versions: Mapping[str, str] | None = None,
                 update: bool = False, append: bool = False, repair: bool = False, retry_failed: bool = False,
                 retry_no_data: bool = False, checks: Checks | None = None,
                 windows: Any = None, append_windows: bool = False) -> CubeForRun:
    """Open or create the sample cube of a run, as the options say, and say what is left to do.

    Parameters
    ----------
    out : str, path-like or StoreLocation
        The cube.
    table : SampleTable
        The samples of the run.
    spec, embed_dim, grid_shape, versions
        As for :meth:`Cube.create_or_open`.
    update, append
        Re-embed moved samples; add new ids (:meth:`Cube.create_or_open`).
    repair : bool
        Restore damaged metadata and coordinates, read every chunk and reset damaged units.
    retry_failed, retry_no_data : bool
        Failed (no_data) cells count as work left.
    checks : callable, optional
        ``checks(location, fraction, reclaim)``: run before anything is written (see the module doc).
    windows, append_windows
        The campaign's date windows, and whether new ones are added (:meth:`Cube.create_or_open`).

    Returns
    -------
    CubeForRun

    Raises
    ------
    CubeError, SpecMismatchError, CubeDamagedError
        As :meth:`Cube.create_or_open`; whatever ``checks`` raises (nothing written then).
    """
    loc = StoreLocation.parse(out)
    done_checks = False

    def check(fraction: float, reclaim: int = 0) -> None:
        nonlocal done_checks
        if checks is not None and not done_checks:
            checks(loc, fraction, reclaim)
        done_checks = True

    # 1. look (read-only)
    try:
        left = work_left(loc, retry_failed=retry_failed, retry_no_data=retry_no_data)
    except CubeDamagedError:
        if not repair:
            raise
        left = WorkLeft(0.0)
    if repair:
        check(left.fraction if left is not None else 0.0)
    elif left is not None and left.any:
        check(left.fraction, left.reclaim)
    # 2. apply: repair, create or resume (update/append only once checked)
    wrote = repair
    if repair:
        repair_sample_cube(loc, table, spec=spec, embed_dim=embed_dim, grid_shape=grid_shape,
                           windows=None if windows is None else tuple(windows))

    def before_change(changes: SampleChanges) -> None:
        nonlocal wrote
        check((len(changes.moved) + len(changes.new)) / max(len(changes.rows), 1))
        wrote = True

    cube = Cube.create_or_open(loc, spec=spec, ids=table.ids, lon=table.lon, lat=table.lat, geohash=table.geohash,
                               wkb=table.wkb, embed_dim=embed_dim, grid_shape=grid_shape, versions=versions,
                               update=update, append=append, before_change=before_change,
                               windows=windows, append_windows=append_windows)
    assert cube.last_changes is not None
    changes = cube.last_changes
    rows_table, given = table_in_cube_rows(table, cube)
    units = [u for u in work_units(cube.n_rows, cube.spec.scales, cube.spec.chunk_size, segments=cube.segments)
             if given[u.start:u.stop].any()]
    cubes = [cube.at_window(t) for t in range(len(cube.windows or (None,)))]
    window_units = [[replace(u, window=t) for u in units] for t in range(len(cubes))]
    # 3. damage: --repair reads everything; a plain run on a local store lists the data chunks
    reset = 0
    if not (repair or loc.local):
        log.info("cube %s: a plain run trusts the status in a bucket (no listing of data chunks); "
                 "`rsembed-dask inspect %s --verify` finds lost or corrupted chunks, --repair re-runs them",
                 loc, loc)
    if repair or loc.local:
        reset = reset_damaged_units(loc, [(_CubeUnits(c), us) for c, us in zip(cubes, window_units)],
                                    repair=repair, before_reset=lambda n: check(n / max(len(units), 1)))
        wrote = wrote or reset > 0
    status = None if (wrote or left is None or left.status is None) else left.status.get(loc.url)
    if cube.has_time:
        statuses = [c.status_array() for c in cubes]  # a window added just now is not in the look's status
        status = statuses[0]
    else:
        if status is None or status.shape != (cube.n_rows, cube.n_scales):
            status = cube.status_array()
        statuses = [status]
    return CubeForRun(cube, rows_table, units, status, changes, reset,
                      [(c, us, st) for c, us, st in zip(cubes, window_units, statuses)])


@dataclass
class _CubeUnits:
    """What :func:`reset_damaged_units` needs of a job: its cube."""

    cube: Cube


def finished_rerun(path: str | os.PathLike | StoreLocation, input_digest: str | None) -> CubeForRun | None:
    """A plain rerun of a finished campaign on the samples it last matched: the cube, with nothing to do.

    The cheap look for the commonest rerun (a job requeued after its campaign finished, a
    notebook run twice): when the cube's ``input_digest`` is ``input_digest``, no cell is left
    and (on a local store) no data chunk an ``ok`` status vouches for is missing, nothing needs
    the sample table, so it is not built. Anything else (another input, work left, damage, a
    store that is not a finished cube) returns None: :func:`open_for_run` then looks properly.

    Parameters
    ----------
    path : str, path-like or StoreLocation
        The sample cube.
    input_digest : str or None
        :func:`~rsembed_dask.sampling.samples.samples_digest` of this run's input (with the
        spec and windows as salt); None never matches.

    Returns
    -------
    CubeForRun or None
        With ``table`` None, every unit of the cube and its status; None to look properly.
    """
    loc = StoreLocation.parse(path)
    if input_digest is None:
        return None
    try:
        meta = probe_store(loc, arrays=False)
    except CubeError:
        return None  # damaged or not a cube: open_for_run says what to do
    recorded = (meta or {}).get("attributes", {}).get(INPUT_DIGEST_ATTR)
    if not isinstance(recorded, dict) or recorded.get("digest") != input_digest:
        return None
    left = work_left(loc)
    if left is None or left.any:
        return None
    cube = Cube.open(loc)
    cubes = [cube.at_window(t) for t in range(len(cube.windows or (None,)))]
    units = work_units(cube.n_rows, cube.spec.scales, cube.spec.chunk_size, segments=cube.segments)
    read = (left.status or {}).get(loc.url)
    statuses = [read[t] if cube.has_time else read for t in range(len(cubes))] if read is not None \
        else [c.status_array() for c in cubes]
    if loc.local and any(c.units_missing_chunks(units, st) for c, st in zip(cubes, statuses)):
        return None  # damage: the full look resets those units (after the run's checks)
    return CubeForRun(cube, None, units, statuses[0], SampleChanges.identity(cube.n_rows), 0,
                      [(c, [replace(u, window=t) for u in units], st) for t, (c, st) in enumerate(zip(cubes, statuses))])


def record_input(cube: Cube, input_digest: str | None, n_samples: int) -> None:
    """Write the digest of the samples the cube now matches (once per change): see :func:`finished_rerun`."""
    if input_digest is None:
        return
    record = {"digest": input_digest, "samples": int(n_samples)}
    if cube.attrs.get(INPUT_DIGEST_ATTR) != record:
        cube.set_attrs(**{INPUT_DIGEST_ATTR: record})
