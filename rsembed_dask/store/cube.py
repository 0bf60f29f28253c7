"""The Zarr v3 datacube that a campaign writes, unit by unit, and xarray reads.

One chunk along ``sample`` (``spec.chunk_size`` samples) at one scale is one work
unit: every write owns whole chunks, so writers in different processes need no
lock. Within a unit the data arrays are written first and ``status`` last, so a
non-pending status vouches for the data beside it.

The layout (arrays, dims, dtypes, chunks) is :mod:`rsembed_dask.store.layout`'s.

Examples
--------
>>> cube = Cube.create_or_open("out.zarr", spec=spec, ids=ids, lon=lon, lat=lat,
...                            geohash=gh, wkb=wkb, embed_dim=768)  # doctest: +SKIP
>>> cube.write_unit(0, 64, 0, embedding=e, status=s, input_res_m=r,
...                 valid_fraction=v, error=errs)  # doctest: +SKIP
>>> ds = open_cube("out.zarr")  # doctest: +SKIP
>>> ds.embedding.sel(scale=20.0, sample="id-3").values  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import datetime as _dt
import errno
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from .samples import SampleChanges, compare_samples, describe_ids
from .layout import (
    CREATED_ATTR, CUBE_VERSION, DIGESTS_ATTR, FAILED, FLAG_ATTRS, MARKER_ATTR, NO_DATA, OK, PENDING, SEGMENTS_ATTR,
    CREATING_ATTR, SPEC_ATTR, SPEC_HASH_ATTR, SPEC_IDENTITY_ATTR, STATUS_NAMES, VERSIONS_ATTR, count_statuses,
    vouched_arrays, COMPLETED_WINDOWS_ATTR, TIME_WINDOWS_ATTR, time_defs, window_days,
    array_defs, check_shapes, check_unit_arrays, coord_defs, default_versions,
    normalise_identity, read_segments, sample_chunks, segment_rows, spec_differences, check_same_ids,
    statuses_to_run,
)
from .open import (
    DECODE_ERRORS, array_of, check_writable, chunk_keys, damage_hint, nearest_sample, open_cube, probe_store,
    unfinished_store,
)
from .digests import differing_blocks, digest_record
from .geoemb import geoemb_attrs
from .location import STORE_ERRORS, StoreLocation
from .lock import confirm_held
from .windowed import WindowSlice
from .rootcopy import write_root_copy
from .quantize import QUANTISED, is_quantised_dtype, quantize_int8
from ..errors import CubeDamagedError, CubeError, SpecError, SpecMismatchError
from ..specs import CampaignSpec, TemporalSpec

if TYPE_CHECKING:
    from ..sampling.samples import SampleTable

logger = logging.getLogger(__name__)

__all__ = ["PENDING", "OK", "NO_DATA", "FAILED", "STATUS_NAMES", "FLAG_ATTRS", "Cube",
           "open_cube", "nearest_sample", "vouched_arrays"]

#: Cell states that a later write never changes (a computed embedding, or a final "no imagery").
FINAL_STATUSES = (OK, NO_DATA)
#: Writes of one unit (each read back) before a unit raced by another writer is given up on.
WRITE_CHECKS = 4


def _fail_non_finite(data: dict[str, np.ndarray]) -> None:
    """Cells written ``ok`` whose vectors are not all finite (NaN, inf) become ``failed``, with the reason."""
    ok = data["status"] == OK
    if not ok.any():
        return
    finite = np.isfinite(data["embedding"]).all(axis=1)
    if "grid" in data:
        finite &= np.isfinite(data["grid"]).reshape(len(finite), -1).all(axis=1)
    bad = ok & ~finite
    if bad.any():
        data["status"] = np.where(bad, np.int8(FAILED), data["status"]).astype("int8")
        data["error"] = data["error"].copy()
        data["error"][bad] = "the model returned a vector that is not finite (NaN or inf): not stored as ok"
        logger.warning("%d ok cell(s) with non-finite vectors stored as failed", int(bad.sum()))

#: Group attributes that describe the campaign and may not be changed by ``set_attrs``.
RESERVED_ATTRS = frozenset({SPEC_ATTR, SPEC_IDENTITY_ATTR, SPEC_HASH_ATTR, CREATED_ATTR, MARKER_ATTR,
                            SEGMENTS_ATTR, CREATING_ATTR, DIGESTS_ATTR})
#: Coordinates on ``sample`` other than the ids, rewritten for a moved sample.
_SAMPLE_COORDS = ("lon", "lat", "geohash", "geometry")


class Cube:
    """Handle on a cube on disk: writes units with Zarr, reports status.

    Create or resume with :meth:`create_or_open`, open an existing cube with
    :meth:`open`. A ``Cube`` pickles to its path and a little metadata and
    reopens the Zarr arrays lazily in each process, so it can be sent to Dask
    workers; distinct units may be written concurrently from any process.

    Attributes
    ----------
    path : str
        Absolute path of the cube directory, or its URL.
    location : StoreLocation
        Where it lives (path or URL, with the storage options the workers open it with).
    spec : CampaignSpec
        The campaign spec (as given to :meth:`create_or_open`, else as stored).
    n_rows, embed_dim : int
        Extent of the Zarr arrays along ``sample`` and ``feature``.
    segments : tuple of (int, int)
        ``[start, stop)`` rows holding samples (one segment unless samples were appended;
        the rows between a segment's end and the next chunk boundary are padding).
    grid_shape : tuple of int or None
        ``(gy, gx)`` in grid mode, else None.
    last_changes : SampleChanges or None
        How the samples given to :meth:`create_or_open` compared with the stored ones
        (given sample ``i`` is at row ``last_changes.rows[i]``); None from :meth:`open`.
    """

    def __init__(self, path: str | StoreLocation, spec: CampaignSpec, n_rows: int, embed_dim: int,
                 grid_shape: tuple[int, int] | None,
                 segments: Sequence[tuple[int, int]] | None = None,
                 windows: Sequence[TemporalSpec] | None = None, window: int = 0):
        self.location = StoreLocation.parse(path)
        self.path = self.location.url
        self.spec = spec
        self.n_rows = int(n_rows)
        self.segments: tuple[tuple[int, int], ...] = (
            ((0, self.n_rows),) if segments is None else tuple((int(a), int(b)) for a, b in segments))
        self.embed_dim = int(embed_dim)
        self.grid_shape = None if grid_shape is None else (int(grid_shape[0]), int(grid_shape[1]))
        self.last_changes: SampleChanges | None = None
        #: The windows along ``time`` (None: no ``time`` dimension, one window: ``spec.temporal``),
        #: and the one this handle reads and writes (see :meth:`at_window`).
        self.windows: tuple[TemporalSpec, ...] | None = None if windows is None else tuple(windows)
        self.window = int(window)
        self._arrays: dict[str, Any] = {}
        self._group: zarr.Group | None = None
        #: False for a cube resumed on storage this process cannot write (see require_writable).
        self.writable = True

    def __getstate__(self) -> dict[str, Any]:
        # The storage options travel to the workers (they open the store themselves); a pickled
        # Cube is for sending to processes, never for writing to disk.
        options = dict(self.location.storage_options)
        times = {} if self.windows is None else {
            "windows": [[w.start, w.end] for w in self.windows], "window": self.window}
        return {"path": self.path, "spec": self.spec.to_json(), "n_rows": self.n_rows,
                "embed_dim": self.embed_dim, "grid_shape": self.grid_shape, "segments": self.segments,
                **times, **({"storage_options": options} if options else {})}

    def __setstate__(self, state: dict[str, Any]) -> None:
        location = StoreLocation.parse(state["path"], state.get("storage_options"))
        windows = state.get("windows")
        Cube.__init__(self, location, CampaignSpec.from_json(state["spec"]), state["n_rows"],
                      state["embed_dim"], state["grid_shape"], state["segments"],
                      None if windows is None else [TemporalSpec(a, b) for a, b in windows],
                      state.get("window", 0))

    def __reduce__(self):
        # Unpickled through a per-process cache: every task of a campaign gets the same Cube
        # (spec parsed once, Zarr arrays opened once) instead of a fresh one per task.
        return _unpickle_cube, (self.__getstate__(),)

    def __repr__(self) -> str:
        grid = f", grid={self.grid_shape}" if self.grid_shape else ""
        return (f"Cube({self.path!r}, samples={self.n_samples}, scales={list(self.scales)}, "
                f"D={self.embed_dim}{grid}, spec_hash={self.spec.spec_hash()!r})")

    @property
    def has_time(self) -> bool:
        """Whether the cube has a ``time`` dimension (it was written with several windows)."""
        return self.windows is not None

    def at_window(self, window: int) -> Cube:
        """A handle on the same cube that reads and writes window ``window`` (its index along
        ``time``), with that window as its spec's ``temporal``: the cube of one job of a run.

        Raises
        ------
        CubeError
            The cube has no ``time`` dimension (only window 0) or ``window`` is out of range.
        """
        n = 1 if self.windows is None else len(self.windows)
        if not 0 <= int(window) < n:
            raise CubeError(f"window {window} out of range: cube {self.path!r} holds {n} window(s)")
        if self.windows is None:
            return self
        cube = Cube(self.location, self.spec.replace(temporal=self.windows[int(window)]), self.n_rows,
                    self.embed_dim, self.grid_shape, self.segments, self.windows, int(window))
        cube.writable = self.writable
        return cube

    @property
    def scales(self) -> tuple[float, ...]:
        """Pixel sizes in metres, in ``scale`` order."""
        return self.spec.scales

    @property
    def quantised(self) -> bool:
        """Whether embeddings (and grids) are stored as int8 with a scale per vector."""
        return is_quantised_dtype(self.spec.output.dtype)

    @property
    def n_scales(self) -> int:
        return len(self.spec.scales)

    @property
    def chunk_size(self) -> int:
        """Samples per unit (the chunk along ``sample``)."""
        return self.spec.chunk_size

    @property
    def n_samples(self) -> int:
        """Number of samples (rows holding one; padding rows left by appends not counted)."""
        return sum(b - a for a, b in self.segments)

    @property
    def n_units(self) -> int:
        """Number of units: sample chunks times scales."""
        return sum(-(-(b - a) // self.chunk_size) for a, b in self.segments) * self.n_scales

    def sample_rows(self) -> np.ndarray:
        """Rows (int64, sorted) of the Zarr arrays that hold samples."""
        return segment_rows(self.segments)

    @property
    def attrs(self) -> dict[str, Any]:
        """The group attributes, read fresh from disk."""
        return dict(zarr.open_group(self.location.zarr_store(), mode="r", zarr_format=3).attrs.asdict())

    @classmethod
    def create_or_open(cls, path: str | os.PathLike | StoreLocation, *, spec: CampaignSpec, ids: Any = None,
                       lon: Any = None, lat: Any = None, geohash: Any = None,
                       wkb: Any = None, embed_dim: int,
                       grid_shape: tuple[int, int] | None = None,
                       versions: Mapping[str, str] | None = None,
                       chunks: Callable[[], Iterable[Mapping[str, Any]]] | None = None,
                       n_samples: int | None = None, update: bool = False,
                       append: bool = False,
                       before_change: Callable[[SampleChanges], None] | None = None,
                       windows: Sequence[TemporalSpec] | None = None,
                       append_windows: bool = False) -> Cube:
        """Create the cube at ``path``, or resume it when it holds the same campaign.

        A cube in which no unit has finished (every status cell pending) and that holds
        another campaign (spec, embedding or grid shape) is recreated, with a warning
        naming what changed; so is a store whose creation was interrupted
        (:func:`~rsembed_dask.cube_store.unfinished_store`). Nothing computed is lost either way.

        An existing cube given whole arrays (``ids`` ... ``wkb``) is matched id by id
        (:mod:`rsembed_dask.store.samples`): ids stored with another geometry are refused
        unless ``update``, ids not stored are refused unless ``append``, stored ids not
        given are kept and reported (a warning). ``last_changes`` tells what matched.

        Parameters
        ----------
        path : str, path-like or StoreLocation
            Local directory or object-store URL of the Zarr v3 store. It may not exist yet or be empty.
        spec : CampaignSpec
            The campaign; its :meth:`~CampaignSpec.identity` must match a stored one.
        ids : sequence of str or int
            Unique sample ids, the ``sample`` dimension coordinate.
        lon, lat : sequence of float
            EPSG:4326 centroids, one per sample.
        geohash : sequence of str
            Location key per sample.
        wkb : sequence of bytes, hex str or shapely geometry
            Footprint geometry per sample; stored as WKB hex strings.
        embed_dim : int
            Embedding size ``D``.
        grid_shape : tuple of int, optional
            ``(gy, gx)`` of token grids; required when ``spec.output.mode == "grid"``,
            ignored otherwise.
        versions : mapping, optional
            Software versions recorded in the ``versions`` attribute (at creation).
        chunks, n_samples : optional
            Instead of ``ids ... wkb``, for tables too large to hold at once: ``chunks()``
            yields consecutive dicts with those five keys, ``n_samples`` rows in all. Ids
            must be unique across chunks (checked within each chunk only). A cube reopened
            this way must hold exactly those ids in that order (tiling stores).
        update : bool
            Re-embed samples whose geometry moved: their coordinates are rewritten and
            their cells reset to pending (:meth:`reset_samples`), in every window of a cube
            with ``time``; the next run embeds them.
        append : bool
            Add ids the cube does not hold as new chunks (:meth:`append_samples`), pending in
            every window of a cube with ``time``.
        before_change : callable, optional
            Called with the :class:`SampleChanges` once the samples are compared and before
            ``update`` or ``append`` writes anything (the run's preflight): if it raises,
            the cube is left as it was.
        windows : sequence of TemporalSpec, optional
            The campaign's windows, ``spec.temporal`` first. Several: a new cube gets a
            ``time`` dimension (one slice per window); one (or None): the layout without
            ``time``. A cube with ``time`` must hold exactly these windows, or the first of
            them with ``append_windows`` (the others are added along ``time``, no chunk
            rewritten: :meth:`append_windows`).
        append_windows : bool
            Add the given windows the cube does not hold yet.

        Returns
        -------
        Cube

        Raises
        ------
        CubeError
            ``path`` is a file, not a cube, not writable, or the cube holds other
            embedding/grid shapes; moved samples without ``update``, new ids without
            ``append`` (the message names the ids and the flag), ids of another kind.
        SpecMismatchError
            The stored spec identity differs and some unit finished; the message names each
            differing field.
        SpecError
            Invalid inputs (duplicate ids, lengths that differ, missing ``grid_shape``).
        """
        if not isinstance(spec, CampaignSpec):
            raise SpecError("spec", type(spec).__name__, "a CampaignSpec")
        path = StoreLocation.parse(path)
        grid_shape = check_shapes(spec.output.mode, embed_dim, grid_shape)
        if chunks is not None and (update or append):
            raise SpecError("update/append", {"update": update, "append": append},
                            "False with chunks= (a cube streamed chunk by chunk holds exactly its ids)")
        n_samples, source = sample_chunks(ids, lon, lat, geohash, wkb, chunks=chunks, n_samples=n_samples)
        versions = default_versions(versions)
        given_windows = None if windows is None else tuple(windows)
        if given_windows is not None and given_windows[0] != spec.temporal:
            raise SpecError("windows", given_windows[0].label, f"spec.temporal ({spec.temporal.label}) first")

        def create(why: str | None) -> Cube:
            check_writable(path)
            if why is not None:
                logger.warning("cube %s: %s; it is recreated", path, why)
            cube = cls(path, spec, int(n_samples), int(embed_dim), grid_shape,
                       windows=given_windows if given_windows is not None and len(given_windows) > 1 else None)
            cube._create(source, versions)
            cube.last_changes = SampleChanges.identity(int(n_samples))
            return cube

        try:
            meta = probe_store(path)
        except CubeDamagedError:
            raise
        except CubeError:  # not a finished cube: one whose creation was interrupted is recreated
            unfinished = unfinished_store(path)
            if unfinished is not None:
                return create(f"its creation was interrupted ({unfinished})")
            raise
        if meta is None:
            return create(None)
        cube = cls(path, spec, 0, int(embed_dim), grid_shape)
        refusal, changed = cube._mismatch(meta["attributes"])
        if refusal is not None:
            if cube._any_finished():
                raise refusal
            return create(f"no unit has finished in it and it holds another campaign ({changed})")
        cube._check_resume(meta["attributes"], source, int(n_samples), whole=chunks is None,
                           update=bool(update), append=bool(append), before_change=before_change)
        cube._resume_windows(meta["attributes"], given_windows, append_windows=bool(append_windows),
                             before_change=before_change)
        return cube

    def _resume_windows(self, attrs: Mapping[str, Any], given: tuple[TemporalSpec, ...] | None, *,
                        append_windows: bool,
                        before_change: Callable[[SampleChanges], None] | None = None) -> None:
        """Match the given windows with the stored ones; add new ones with ``append_windows``."""
        stored_raw = attrs.get(TIME_WINDOWS_ATTR)
        stored = None if stored_raw is None else tuple(TemporalSpec(a, b) for a, b in stored_raw)
        self.windows = stored
        if given is None or len(given) == 1 and stored is None:
            return  # the identity check matched the one window
        labels = [w.label for w in given]
        if stored is None:
            raise CubeError(f"cube {self.path!r} holds one window ({self.spec.temporal.label}) and no time "
                            f"dimension (it was written by a single-window campaign), given {len(given)} windows "
                            f"{labels}: it cannot grow a time dimension; write the windows to a new cube")
        if given[:len(stored)] != stored:
            raise CubeError(f"cube {self.path!r} holds the windows {[w.label for w in stored]}, given {labels}: "
                            "give the stored windows first, in their order (and new ones after them, with "
                            "--append-windows / append_windows=True)")
        new = given[len(stored):]
        if not new:
            return
        if not append_windows:
            raise CubeError(f"cube {self.path!r} holds {len(stored)} window(s); given {len(new)} more "
                            f"({[w.label for w in new]}): run again with --append-windows "
                            "(append_windows=True) to add them along its time dimension, or write them to a new cube")
        if new[0].start < stored[-1].start:
            raise CubeError(f"cube {self.path!r}: new window {new[0].label} starts before the last stored one "
                            f"({stored[-1].label}); windows are added after the last one")
        if before_change is not None:
            before_change(SampleChanges.identity(self.n_rows))
        self.append_windows(new)

    def append_windows(self, new: Sequence[TemporalSpec]) -> None:
        """Add windows at the end of the ``time`` dimension; no existing chunk is rewritten.

        Every array with ``time`` first is resized (its metadata only: chunks are 1 along
        ``time``), the new ``time`` and ``time_bnds`` values written, then the
        ``time_windows`` attribute (the commit) names them. Their cells are pending.

        Raises
        ------
        CubeError
            The cube has no ``time`` dimension, or the store cannot be written.
        """
        if self.windows is None:
            raise CubeError(f"cube {self.path!r} has no time dimension: windows cannot be added to it")
        new = tuple(new)
        if not new:
            return
        n0, n = len(self.windows), len(self.windows) + len(new)
        group = self._zgroup()
        try:
            for _, arr in group.arrays():
                names = getattr(arr.metadata, "dimension_names", None) or ()
                if names and names[0] == "time":
                    arr.resize((n,) + arr.shape[1:])
            self._arrays.clear()
            array_of(group, "time")[n0:n] = np.array([window_days(w.start) for w in new], "int64")
            array_of(group, "time_bnds")[n0:n] = np.array(
                [[window_days(w.start), window_days(w.end)] for w in new], "int64")
            windows = self.windows + new
            group.attrs[TIME_WINDOWS_ATTR] = [[w.start, w.end] for w in windows]  # the commit
            write_root_copy(self.location, group.attrs.asdict())
        except STORE_ERRORS as exc:
            raise CubeError(f"cannot add windows to {self.path!r}: {exc}") from exc
        self.windows = windows
        logger.warning("cube %s: added %d window(s) along time: %s", self.path, len(new),
                       [w.label for w in new])

    @classmethod
    def open(cls, path: str | os.PathLike | StoreLocation) -> Cube:
        """Open an existing cube (its spec and shapes are read from disk).

        Raises
        ------
        CubeError
            ``path`` is missing, a file, or not a cube.
        """
        path = StoreLocation.parse(path)
        meta = probe_store(path)
        if meta is None:
            raise CubeError(f"no cube at {path.url!r}")
        attrs = meta["attributes"]
        spec = CampaignSpec.from_json(attrs[SPEC_ATTR])
        group = zarr.open_group(path.zarr_store(), mode="r", zarr_format=3)
        emb = array_of(group, "embedding")
        grid_shape = tuple(array_of(group, "grid").shape[-2:]) if "grid" in group else None
        raw = attrs.get(TIME_WINDOWS_ATTR)
        windows = None if raw is None else [TemporalSpec(a, b) for a, b in raw]
        segments = read_segments(attrs, emb.shape[-3], spec.chunk_size)
        cube = cls(path, spec, emb.shape[-3], emb.shape[-1], grid_shape, segments,  # type: ignore[arg-type]
                   windows)
        cube.writable = _writable(path)
        return cube

    def _create(self, source: Callable[[], Iterator[dict[str, Any]]], versions: dict[str, str]) -> None:
        """Lay out every array, write the coordinates chunk by chunk, then mark the group a cube."""
        n, s = self.n_samples, self.n_scales
        logger.info("creating cube %s: %d samples x %d scales, D=%d", self.path, n, s, self.embed_dim)
        try:
            group, start, digests = None, 0, None
            for inputs in source():
                if group is None:  # the creating attribute first: an interrupted creation is recognised
                    confirm_held(self.location)  # never over the cube of a run that took over meanwhile
                    group = zarr.open_group(self.location.zarr_store(), mode="w", zarr_format=3, attributes={
                        CREATING_ATTR: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
                    defs = coord_defs(n, s, self.embed_dim, inputs["id_dtype"])
                    defs += array_defs(n, s, self.chunk_size, self.embed_dim, self.grid_shape,
                                       self.spec.output.dtype,
                                       n_times=None if self.windows is None else len(self.windows))
                    if self.windows is not None:
                        defs += time_defs(len(self.windows))
                    for d in defs:
                        group.create_array(d.name, shape=d.shape, dtype=d.dtype, chunks=d.chunks,
                                           fill_value=d.fill_value, dimension_names=d.dims,
                                           attributes=d.attrs, compressors=d.compressors)
                    array_of(group, "scale")[...] = np.asarray(self.scales, dtype="float64")
                    array_of(group, "feature")[...] = np.arange(self.embed_dim, dtype="int64")
                    if self.windows is not None:
                        array_of(group, "time")[...] = np.array([window_days(w.start) for w in self.windows])
                        array_of(group, "time_bnds")[...] = np.array(
                            [[window_days(w.start), window_days(w.end)] for w in self.windows], "int64")
                stop = start + inputs["sample"].shape[0]
                if stop > n:  # zarr would silently drop the excess
                    raise SpecError("chunks", f"more than n_samples={n} rows", f"{n} rows in all")
                for name in ("sample", "lon", "lat", "geohash", "geometry"):
                    array_of(group, name)[start:stop] = inputs[name]
                if start == 0 and stop == n:  # the whole table at once (sample campaigns): digested
                    digests = {DIGESTS_ATTR: digest_record(inputs["sample"], inputs["geometry"])}
                start = stop
            if group is None or start != n:
                raise SpecError("chunks", f"{start} rows", f"n_samples={n} rows in all")
            # The marker goes last, replacing the creating attribute in one write: a store
            # interrupted before this is recreated by the next run, never resumed.
            root = {
                **geoemb_attrs(self.spec, self.embed_dim, versions=versions),
                SPEC_ATTR: self.spec.to_json(),
                SPEC_IDENTITY_ATTR: json.dumps(self.spec.identity(), sort_keys=True),
                SPEC_HASH_ATTR: self.spec.spec_hash(),
                VERSIONS_ATTR: versions,
                CREATED_ATTR: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                SEGMENTS_ATTR: [[0, n]],
                **(digests or {}),
                **({} if self.windows is None else {TIME_WINDOWS_ATTR: [[w.start, w.end] for w in self.windows]}),
                MARKER_ATTR: CUBE_VERSION,
            }
            write_root_copy(self.location, root)  # before the marker: a marked cube always has its copy
            group.attrs.put(root)
        except STORE_ERRORS as exc:
            raise CubeError(f"cannot create cube at {self.path!r}: {exc}; no unit ran in it, so running the "
                            "campaign again recreates it") from exc

    def _mismatch(self, attrs: Mapping[str, Any]) -> tuple[CubeError | None, str]:
        """The error refusing to resume a cube of another campaign or other shapes, and what changed
        in a line; ``(None, "")`` when it holds this campaign (scales in another order are adopted)."""
        stored = json.loads(attrs[SPEC_IDENTITY_ATTR])
        self._adopt_scale_order(stored.get("scales"))
        diffs = spec_differences(stored, normalise_identity(self.spec.identity()))
        if diffs:
            return SpecMismatchError(
                f"cube {self.path!r} was written with a different campaign spec "
                f"(stored hash {attrs.get(SPEC_HASH_ATTR)!r}, given {self.spec.spec_hash()!r}):\n  "
                + "\n  ".join(diffs)), "; ".join(diffs)
        group = self._zgroup()
        stored_dim = array_of(group, "embedding").shape[-1]
        if stored_dim != self.embed_dim:
            why = f"embed_dim: stored {stored_dim}, given {self.embed_dim}"
            return CubeError(f"cube {self.path!r} has embed_dim {stored_dim}, given {self.embed_dim}"), why
        stored_grid = tuple(array_of(group, "grid").shape[-2:]) if "grid" in group else None
        if stored_grid != self.grid_shape:
            why = f"grid_shape: stored {stored_grid}, given {self.grid_shape}"
            return CubeError(f"cube {self.path!r} has grid_shape {stored_grid}, given {self.grid_shape}"), why
        return None, ""

    def _any_finished(self) -> bool:
        """Whether any status cell of the store is not pending (read straight from its ``status`` array)."""
        try:
            status = np.asarray(array_of(self._zgroup(), "status")[...], dtype="int8")
        except DECODE_ERRORS as exc:
            raise CubeDamagedError(f"cube {self.path!r} is damaged: its status cannot be read "
                                   f"({type(exc).__name__}: {exc}); " + damage_hint(self.path)) from exc
        return bool((status != PENDING).any())

    def _check_resume(self, attrs: Mapping[str, Any], source: Callable[[], Iterator[dict[str, Any]]],
                      n_given: int, *, whole: bool, update: bool, append: bool,
                      before_change: Callable[[SampleChanges], None] | None = None) -> None:
        """Resume a cube of this campaign (checked by :meth:`_mismatch`): match the samples."""
        # A read-only cube opens (a finished one has nothing to do); writing asks require_writable.
        self.writable = _writable(self.location)
        group = self._zgroup()
        emb = array_of(group, "embedding")
        self.n_rows = emb.shape[-3]
        self.segments = read_segments(attrs, self.n_rows, self.chunk_size)
        raw = attrs.get(TIME_WINDOWS_ATTR)  # an update or append changes every window
        self.windows = None if raw is None else tuple(TemporalSpec(a, b) for a, b in raw)
        if whole:
            self._sync_samples(next(iter(source())), attrs, update=update, append=append,
                               before_change=before_change)
        else:
            check_same_ids(array_of(group, "sample"), source, n_given, self.path)
            self.last_changes = SampleChanges.identity(self.n_rows)
        logger.info("resuming cube %s (spec_hash %s)", self.path, self.spec.spec_hash())

    def _sync_samples(self, given: dict[str, Any], attrs: Mapping[str, Any], *, update: bool, append: bool,
                      before_change: Callable[[SampleChanges], None] | None = None) -> None:
        """Match given samples (checked inputs) with the stored ones; update and append if allowed.

        Nothing is written unless every change is allowed and ``before_change`` passed.
        Where the cube's rows are the given samples' positions, only blocks whose digest
        differs (:mod:`rsembed_dask.store.digests`) are read; else every id and geometry.
        """
        group = self._zgroup()
        ids = given["sample"]
        aligned = self.segments == ((0, self.n_rows),) and len(ids) == self.n_rows
        blocks = differing_blocks(attrs.get(DIGESTS_ATTR), ids, given["geometry"]) if aligned else None
        if blocks is not None:
            changes = self._compare_blocks(blocks, given)
        else:
            rows = self.sample_rows()
            stored_ids = np.asarray(array_of(group, "sample")[...])[rows]
            stored_geom = np.asarray(array_of(group, "geometry")[...]).astype(object)[rows]
            changes = compare_samples(stored_ids, stored_geom, rows, given, self.path)
        problems = []
        if len(changes.moved) and not update:
            problems.append(
                f"{len(changes.moved)} sample(s) have another geometry than stored "
                f"({describe_ids(ids[changes.moved])}): run again with --update (update=True) to "
                f"re-embed them at their new geometry, or give them new ids")
        if len(changes.new) and not append:
            problems.append(
                f"{len(changes.new)} given sample id(s) are not in the cube "
                f"({describe_ids(ids[changes.new])}): run again with --append (append=True) to add "
                f"them as new chunks, or write them to a new cube")
        if problems:
            raise CubeError(f"cube {self.path!r}: " + "; ".join(problems))
        if before_change is not None and (len(changes.moved) or len(changes.new)):
            before_change(changes)  # e.g. the run's preflight: nothing is written when it raises
        if len(changes.missing_rows):
            missing_ids = np.asarray(array_of(group, "sample")[...])[changes.missing_rows]
            logger.warning("cube %s holds %d sample(s) not among those given (%s): kept, not deleted; "
                           "units made only of them are not run", self.path, len(changes.missing_rows),
                           describe_ids(missing_ids))
        if len(changes.moved):
            moved_rows = changes.rows[changes.moved]
            self.reset_samples(moved_rows)
            order = np.argsort(moved_rows)
            self._write_coords(moved_rows[order], {k: given[k][changes.moved[order]] for k in _SAMPLE_COORDS})
            logger.warning("cube %s: %d moved sample(s) reset to pending at every scale, to be re-embedded: %s",
                           self.path, len(changes.moved), describe_ids(ids[changes.moved]))
        if len(changes.new):
            from ..geo.keys import hilbert_order

            new = changes.new[hilbert_order(given["lon"][changes.new], given["lat"][changes.new])]
            start = self.append_samples({k: given[k] for k in ("sample", "id_dtype", *_SAMPLE_COORDS)}, new)
            changes.rows[new] = np.arange(start, start + len(new), dtype=np.int64)
        if self.windows is not None and (len(changes.moved) or len(changes.new)) \
                and attrs.get(COMPLETED_WINDOWS_ATTR):
            group.attrs[COMPLETED_WINDOWS_ATTR] = []  # every window has pending cells now (the run's end says again)
        self.last_changes = changes
        if aligned and np.array_equal(changes.rows, np.arange(self.n_rows)):
            self._refresh_digests(attrs, given)

    def _compare_blocks(self, blocks: Sequence[tuple[int, int]], given: dict[str, Any]) -> SampleChanges:
        """:func:`compare_samples` reading only the rows of ``blocks`` (rows ``i`` of the others hold the
        given sample ``i``, vouched for by their digests)."""
        n = len(given["sample"])
        changes = SampleChanges.identity(n)
        if not blocks:
            return changes
        rows = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in blocks])
        stored_ids = np.concatenate([np.asarray(self._array("sample")[a:b]) for a, b in blocks])
        stored_geom = np.concatenate([np.asarray(self._array("geometry")[a:b]).astype(object) for a, b in blocks])
        sub = {"sample": given["sample"][rows], "geometry": given["geometry"][rows], "id_dtype": given["id_dtype"]}
        found = compare_samples(stored_ids, stored_geom, rows, sub, self.path)
        changes.rows[rows] = found.rows
        logger.debug("cube %s: %d of the samples' digest blocks differ; read those", self.path, len(blocks))
        return SampleChanges(rows=changes.rows, moved=rows[found.moved], new=rows[found.new],
                             missing_rows=found.missing_rows)

    def _refresh_digests(self, attrs: Mapping[str, Any], given: dict[str, Any]) -> None:
        """Store the digests of the samples now in the cube when they are missing or stale (an old
        cube, an update): the next resume reads none of them."""
        record = digest_record(given["sample"], given["geometry"])
        if attrs.get(DIGESTS_ATTR) == record:
            return
        if not self.writable:
            logger.debug("cube %s: read-only; its sample digests are not refreshed", self.path)
            return
        self._zgroup().attrs[DIGESTS_ATTR] = record
        logger.info("cube %s: sample digests stored (the next resume reads no ids or geometries)", self.path)

    def reset_samples(self, rows: Any) -> None:
        """Invalidate every cell of the samples at ``rows`` (cube rows), at every scale (and in
        every window of a cube with ``time``).

        Status is set to :data:`PENDING` first (it stops vouching for the data), then the
        embedding (and grid), ``input_res_m`` and ``valid_fraction`` become NaN and
        ``error`` empty. The next run embeds those cells again. Unlike :meth:`write_unit`,
        this does overwrite ``ok`` and ``no_data`` cells: it is for samples whose
        geometry changed. Run it from one process, while no campaign writes to the cube.

        Raises
        ------
        CubeError
            A row that holds no sample.
        """
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if not len(rows):
            return
        bad = rows[~np.isin(rows, self.sample_rows())]
        if len(bad):
            raise CubeError(f"reset_samples: rows {bad[:5].tolist()} hold no sample in {self.path!r}")
        for cube in ([self] if self.windows is None else [self.at_window(t) for t in range(len(self.windows))]):
            cube._reset_rows(rows)
        logger.info("cube %s: reset %d sample(s) to pending at every scale%s", self.path, len(rows),
                    "" if self.windows is None else f" in every window ({len(self.windows)})")

    def _reset_rows(self, rows: np.ndarray) -> None:
        """:meth:`reset_samples` of sorted sample ``rows`` in this handle's window."""
        try:
            self._array("status").set_orthogonal_selection((rows, slice(None)), PENDING)
            empty = 0 if self.quantised else np.nan  # int8: value 0, scale NaN
            self._array("embedding").set_orthogonal_selection((rows, slice(None), slice(None)), empty)
            if self.grid_shape is not None:
                self._array("grid").set_orthogonal_selection((rows,) + (slice(None),) * 4, empty)
            if self.quantised:
                for name in self._scale_arrays():
                    arr = self._array(name)
                    arr.set_orthogonal_selection((rows,) + (slice(None),) * (arr.ndim - 1), np.nan)
            for name, value in (("input_res_m", np.nan), ("valid_fraction", np.nan), ("error", "")):
                self._array(name).set_orthogonal_selection((rows, slice(None)), value)
        except STORE_ERRORS as exc:
            raise CubeError(f"cannot reset samples in {self.path!r}: {exc}") from exc

    def _write_coords(self, rows: np.ndarray, coords: Mapping[str, np.ndarray]) -> None:
        """Rewrite ``lon``, ``lat``, ``geohash``, ``geometry`` at sorted ``rows``."""
        for name in _SAMPLE_COORDS:
            self._array(name).set_orthogonal_selection((rows,), coords[name])

    def append_samples(self, given: Mapping[str, Any], order: Any) -> int:
        """Append samples as new chunks after the last segment; returns their first row.

        Parameters
        ----------
        given : mapping
            Checked inputs (``sample``, ``id_dtype``, ``lon``, ``lat``, ``geohash``,
            ``geometry``; see :func:`~rsembed_dask.store.layout.check_inputs`), ids not in the cube.
        order : int array
            Which of them to append, in the order to store them (their own Hilbert order).

        Notes
        -----
        The new segment starts at the first chunk boundary at or after the last sample,
        so no existing chunk is rewritten and every unit stays one chunk; rows left between
        are padding (see :mod:`rsembed_dask.store.layout`). The arrays are resized and the
        coordinates written before the ``sample_segments`` attribute names the new rows:
        an interrupted append leaves rows that hold no sample, reused by the next append.
        In a cube with ``time`` the new rows are pending in every window.

        Raises
        ------
        CubeError
            The cube's chunks are not ``chunk_size`` samples (a cube created, before
            appends existed, with fewer samples than ``chunk_size``), or ids of another kind.
        """
        order = np.asarray(order, dtype=np.int64)
        group = self._zgroup()
        cs = self.chunk_size
        status = array_of(group, "status")
        stored_chunk = status.chunks[status.ndim - 2]  # (sample, scale), or (time, sample, scale)
        if stored_chunk != cs:
            raise CubeError(f"cube {self.path!r} holds its samples in chunks of {stored_chunk}, not "
                            f"chunk_size={cs} (it was created with fewer samples than chunk_size by an "
                            "older rsembed_dask): it cannot take new samples; write them to a new cube")
        if (array_of(group, "sample").dtype.kind in "iu") != (given["id_dtype"] != str):
            raise CubeError(f"cube {self.path!r}: appended ids must be of the stored kind "
                            f"({array_of(group, 'sample').dtype}), given {given['sample'][0]!r}")
        start = -(-self.segments[-1][1] // cs) * cs
        stop = start + len(order)
        segments = [list(s) for s in self.segments]
        try:
            # An old cube gets its segments written before its arrays grow, so that rows
            # added by an interrupted append are never taken for samples.
            group.attrs[SEGMENTS_ATTR] = segments
            for _, arr in group.arrays():
                names = tuple(getattr(arr.metadata, "dimension_names", None) or ())  # Zarr v3 metadata
                if "sample" in names:  # first, or after ``time`` (new rows are pending in every window)
                    ax = names.index("sample")
                    arr.resize(arr.shape[:ax] + (stop,) + arr.shape[ax + 1:])
            self._arrays.clear()
            for name in ("sample", *_SAMPLE_COORDS):
                self._array(name)[start:stop] = given[name][order]
            group.attrs[SEGMENTS_ATTR] = segments + [[start, stop]]  # the commit
            write_root_copy(self.location, group.attrs.asdict())
        except STORE_ERRORS as exc:
            raise CubeError(f"cannot append samples to {self.path!r}: {exc}") from exc
        self.n_rows = stop
        self.segments = self.segments + ((start, stop),)
        logger.warning("cube %s: appended %d new sample(s) at rows %d:%d (%d new chunks): %s", self.path,
                       len(order), start, stop, -(-len(order) // cs), describe_ids(given["sample"][order]))
        return start

    def stored_table(self, rows: Any) -> SampleTable:
        """The samples at cube ``rows`` as a :class:`~rsembed_dask.sampling.samples.SampleTable`, in ``rows`` order,
        rebuilt from their stored ids and geometry."""
        import geopandas as gpd
        import pandas as pd
        import shapely

        from ..sampling.samples import build_sample_table

        rows = np.asarray(rows, dtype=np.int64)
        ids = np.asarray(self._array("sample")[...])[rows]
        ids = [v.item() if isinstance(v, np.generic) else str(v) for v in ids]
        geoms = shapely.from_wkb(np.asarray(self._array("geometry")[...]).astype(object)[rows])
        table = build_sample_table(gpd.GeoDataFrame(index=pd.Index(ids, dtype=object), geometry=geoms, crs="EPSG:4326"))
        where = {v: i for i, v in enumerate(table.ids.tolist())}
        return table.take(np.array([where[v] for v in ids], dtype=np.int64))

    def _adopt_scale_order(self, stored_scales: Any) -> None:
        """Given the stored scales in another order, resume in the cube's order (its ``scale`` axis)."""
        given = list(self.spec.scales)
        if (isinstance(stored_scales, list) and stored_scales != given
                and sorted(map(float, stored_scales)) == sorted(given)):
            logger.info("cube %s: scales %s given in another order; the cube's order %s is kept",
                        self.path, given, stored_scales)
            self.spec = self.spec.replace(scales=tuple(float(s) for s in stored_scales))

    def require_writable(self, todo: int) -> None:
        """Refuse to run ``todo`` units into a cube on storage this process cannot write.

        Raises
        ------
        CubeError
            Naming the path and the units left to do.
        """
        if todo and not self.writable:
            raise CubeError(f"cube path {self.path!r} is not writable, and {todo} unit(s) are left to do: "
                            f"run on writable storage (a finished cube on read-only storage needs no write)")

    def _zgroup(self) -> zarr.Group:
        if self._group is None:
            try:
                self._group = zarr.open_group(self.location.zarr_store(), mode="r+", zarr_format=3)
            except STORE_ERRORS + (ValueError,) as exc:
                raise CubeError(f"cannot open cube {self.path!r}: {exc}") from exc
        return self._group

    def _array(self, name: str) -> Any:
        """The Zarr array ``name``; of a cube with ``time``, its slice at :attr:`window` for the
        arrays with ``time`` first (so every method reads and writes one window alike)."""
        arr = self._arrays.get(name)
        if arr is None:
            arr = array_of(self._zgroup(), name)
            names: tuple[Any, ...] = tuple(getattr(arr.metadata, "dimension_names", None) or ())
            if self.windows is not None and len(names) > 1 and names[0] == "time" and name != "time_bnds":
                arr = WindowSlice(arr, self.window)
            self._arrays[name] = arr
        return arr

    def unit_stop(self, start: int) -> int:
        """End (exclusive) of the unit starting at ``start``; CubeError if not a chunk start.

        A unit ends at the next chunk boundary or at the end of its segment (see ``segments``).
        """
        start = int(start)
        if start % self.chunk_size == 0:
            for a, b in self.segments:
                if a <= start < b:
                    return min(start + self.chunk_size, b)
        raise CubeError(f"unit start {start} is not a chunk start (multiples of {self.chunk_size} "
                        f"within the sample rows {[list(s) for s in self.segments]})")

    def _scale_index(self, scale_index: int) -> int:
        si = int(scale_index)
        if not 0 <= si < self.n_scales:
            raise CubeError(f"scale_index {scale_index} out of range [0, {self.n_scales})")
        return si

    def write_unit(self, start: int, stop: int, scale_index: int, *, embedding: Any, status: Any,
                   input_res_m: Any, valid_fraction: Any, error: Sequence[str | None],
                   grid: Any | None = None, retry_no_data: bool = False) -> None:
        """Write one unit: samples ``[start, stop)`` at one scale, status last.

        Parameters
        ----------
        start, stop : int
            Exactly one chunk along ``sample``: ``start % chunk_size == 0`` and
            ``stop == min(start + chunk_size, n_samples)``.
        scale_index : int
            Index into ``spec.scales``.
        embedding : array ``[n, D]``
            Pooled embeddings (NaN rows for samples without data).
        status : int array ``[n]``
            Codes :data:`OK`, :data:`NO_DATA`, :data:`FAILED` (or :data:`PENDING`).
        input_res_m, valid_fraction : array ``[n]``
        error : sequence of str ``[n]``
            Short reasons (``""`` or None when none); truncated to 200 characters.
        grid : array ``[n, D, gy, gx]``, optional
            Token grids (grid-mode cubes only).
        retry_no_data : bool
            A cell stored :data:`NO_DATA` and written :data:`OK` takes the new data (a re-run
            that found imagery); such cells are first set :data:`PENDING` (one status write),
            so a crash mid-write leaves them to re-run, never ``no_data`` over a vector.
            ``ok`` cells, and ``no_data`` cells written anything but ``ok``, keep what is stored.

        Notes
        -----
        A decided cell is never overwritten: a cell stored :data:`OK` or :data:`NO_DATA`
        keeps its status and data (embedding, grid, ``input_res_m``, ``valid_fraction``,
        ``error``), whatever this write says, and a cell written :data:`PENDING` ("not
        touched by this write") keeps whatever is stored. So a unit re-run with
        ``retry_failed`` (or marked failed after losing its worker) never loses an
        embedding. The kept cells are written back with the values read, so the data
        written before ``status`` never contradicts a status already stored: a crash
        between the two leaves no ``ok`` cell over NaN.

        An int8 cube (``spec.output.dtype == "int8"``) stores ``embedding`` (and ``grid``)
        quantised per vector, with their scales in ``embedding_scale`` (``grid_scale``),
        written with the data before ``status``; a vector that is not entirely finite is
        stored as "no embedding" (value 0, scale NaN). See :mod:`rsembed_dask.quantize`.

        Raises
        ------
        CubeError
            Not exactly one chunk, a bad scale index, or arrays of the wrong shape.
        """
        start, stop = int(start), int(stop)
        si = self._unit(start, stop, scale_index)
        data = check_unit_arrays(stop - start, self.embed_dim, self.grid_shape, embedding=embedding,
                                 status=status, input_res_m=input_res_m, valid_fraction=valid_fraction,
                                 error=error, grid=grid)
        _fail_non_finite(data)
        if self.quantised:
            self._quantise(data)
        try:
            for attempt in range(WRITE_CHECKS):
                stored = self._read_unit(start, stop, si)
                # An ok cell found without its vectors (damage, or a lost race) is not kept as ok.
                empty_ok = (stored["status"] == OK) & ~self._has_data(stored) & (data["status"] == PENDING)
                if empty_ok.any():
                    data = {**data, "status": np.where(empty_ok, np.int8(FAILED), data["status"]).astype("int8"),
                            "error": np.where(empty_ok, "stored ok without its vectors: run it again",
                                              data["error"]).astype(object)}
                keep = self._kept(stored, data["status"])
                if retry_no_data:  # a no_data cell takes an ok result (its data is written before its status)
                    keep &= ~((stored["status"] == NO_DATA) & (data["status"] == OK))
                if keep.all():
                    logger.debug("unit %d:%d scale %d: every cell already decided; nothing written",
                                 start, stop, si)
                    return
                merged = self._merged(stored, data, keep)
                # Data first (the vectors last), then status: a status vouches for what is beside it.
                for name in ("input_res_m", "valid_fraction", "error", *self._data_arrays()):
                    self._array(name)[start:stop, si] = merged[name]
                self._array("status")[start:stop, si] = merged["status"]
                # A writer of the same unit (an orphaned task) may have written in between: read
                # back, and write again until no ok cell stands over missing data and our ok
                # cells hold their ok status.
                bad = self._unvouched(start, stop, si, data)
                if not bad:
                    break
                logger.warning("unit %d:%d scale %d of %s: %s after writing; writing again (check %d)",
                               start, stop, si, self.path, bad, attempt + 1)
            else:
                logger.error("unit %d:%d scale %d of %s: still %s after %d writes", start, stop, si,
                             self.path, bad, WRITE_CHECKS)
        except STORE_ERRORS as exc:
            full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
            raise CubeError(f"cannot write unit ({start}, {stop}, scale {si}) to {self.path!r}: {exc}"
                            + ("; free space (or raise the quota) and run the same command again: finished "
                               "units are kept and only the others run" if full else "")) from exc
        logger.debug("wrote unit %d:%d scale %d to %s", start, stop, si, self.path)

    def mark_failed(self, start: int, stop: int, scale_index: int, reason: str) -> int:
        """Mark the undecided cells of one unit ``failed`` with ``reason``: ``status`` and ``error`` only.

        A failed cell vouches for no data, so nothing else is written. Cells already
        :data:`OK` or :data:`NO_DATA`, and cells whose vectors are already written (a write
        of the unit is on its way to its status), are left alone. After the write the
        vectors are read again: a cell marked failed whose vectors a concurrent write put
        in meanwhile gets its ``ok`` back (vectors are the last data a write puts in, so
        they stand for the whole row).

        Returns
        -------
        int
            Cells marked failed (and left so).

        Raises
        ------
        CubeError
            Not exactly one chunk, a bad scale index, or the store cannot be written.
        """
        start, stop = int(start), int(stop)
        si = self._unit(start, stop, scale_index)
        reason = str(reason)[:200]
        try:
            stored = self._read_unit(start, stop, si)
            target = ~np.isin(stored["status"], FINAL_STATUSES) & ~self._has_data(stored)
            if not target.any():
                return 0
            status, err = stored["status"].copy(), stored["error"].copy()
            status[target], err[target] = FAILED, reason
            self._array("error")[start:stop, si] = err
            self._array("status")[start:stop, si] = status
            after = self._read_unit(start, stop, si)
            back = target & self._has_data(after) & (after["status"] == FAILED)
            if back.any():  # a concurrent write's vectors landed: its ok stands
                status, err = after["status"].copy(), after["error"].copy()
                status[back], err[back] = OK, ""
                self._array("error")[start:stop, si] = err
                self._array("status")[start:stop, si] = status
                logger.warning("unit %d:%d scale %d: %d cell(s) written meanwhile keep their ok",
                               start, stop, si, int(back.sum()))
            return int((target & ~back).sum())
        except OSError as exc:
            raise CubeError(f"cannot mark unit ({start}, {stop}, scale {si}) failed in {self.path!r}: "
                            f"{exc}") from exc

    def _unit(self, start: int, stop: int, scale_index: int) -> int:
        expected = self.unit_stop(start)  # CubeError when start is not a chunk start
        if stop != expected:
            raise CubeError(f"write_unit({start}, {stop}) is not exactly one chunk of "
                            f"{self.chunk_size} samples: the unit at {start} ends at {expected}")
        return self._scale_index(scale_index)

    def _data_arrays(self) -> tuple[str, ...]:
        """The arrays holding a cell's vectors, in write order: ``embedding`` last (it stands for the row)."""
        return (("grid",) if self.grid_shape is not None else ()) + self._scale_arrays() + ("embedding",)

    def _read_unit(self, start: int, stop: int, si: int) -> dict[str, np.ndarray]:
        names = ("status", "input_res_m", "valid_fraction", "error", *self._data_arrays())
        return {name: np.asarray(self._array(name)[start:stop, si]) for name in names}

    def _has_data(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """Cells whose vectors are stored (a finite scale for int8, a finite vector for float32)."""
        if self.quantised:
            return np.asarray(np.isfinite(np.asarray(arrays[QUANTISED["embedding"]], dtype=np.float32)))
        return np.asarray(np.isfinite(np.asarray(arrays["embedding"], dtype=np.float32)).all(axis=1))

    def _kept(self, stored: Mapping[str, np.ndarray], status: np.ndarray) -> np.ndarray:
        """Cells of a unit write that keep what is stored: decided ones (an ok one only with its
        data), and those written pending over a stored status."""
        st = stored["status"]
        decided = (st == NO_DATA) | ((st == OK) & self._has_data(stored))
        return decided | ((status == PENDING) & (st != PENDING))

    def _merged(self, stored: Mapping[str, np.ndarray], data: Mapping[str, np.ndarray],
                keep: np.ndarray) -> dict[str, np.ndarray]:
        """What to write: ``data``, with the kept cells as stored, and the vectors of cells this write
        does not make ok as stored (a failed or no_data cell vouches for no data: whatever another
        write put there stays)."""
        vectors = keep | (data["status"] != OK)
        data_arrays = self._data_arrays()
        out = {}
        for name, value in data.items():
            merged = np.array(value, copy=True)
            cells = vectors if name in data_arrays else keep
            merged[cells] = np.asarray(stored[name])[cells]
            out[name] = merged
        return out

    def _unvouched(self, start: int, stop: int, si: int, data: Mapping[str, np.ndarray]) -> str:
        """What a read-back finds wrong after a unit write ("" when nothing): ok cells without data,
        or this write's ok cells no longer ok (and not no_data)."""
        after = self._read_unit(start, stop, si)
        empty_ok = (after["status"] == OK) & ~self._has_data(after)
        lost_ok = (data["status"] == OK) & ~np.isin(after["status"], FINAL_STATUSES)
        problems = []
        if empty_ok.any():
            problems.append(f"{int(empty_ok.sum())} ok cell(s) without data")
        if lost_ok.any():
            problems.append(f"{int(lost_ok.sum())} ok cell(s) of this write not ok")
        return ", ".join(problems)

    def _scale_arrays(self) -> tuple[str, ...]:
        """The scale arrays of an int8 cube (none for float32)."""
        if not self.quantised:
            return ()
        return (QUANTISED["embedding"],) + ((QUANTISED["grid"],) if self.grid_shape is not None else ())

    @staticmethod
    def _quantise(data: dict[str, np.ndarray]) -> None:
        """Replace float ``embedding`` (and ``grid``) of a unit write by int8 plus their scale arrays."""
        for name in ("embedding", "grid"):
            if name in data:
                data[name], data[QUANTISED[name]] = quantize_int8(data[name], axis=1)

    def unit_status(self, start: int, scale_index: int) -> np.ndarray:
        """Status codes (int8) of the unit starting at ``start`` at ``scale_index``."""
        stop = self.unit_stop(start)
        return np.asarray(self._array("status")[int(start):stop, self._scale_index(scale_index)],
                          dtype="int8")

    def status_array(self) -> np.ndarray:
        """All status codes, ``[n_rows, n_scales]`` int8, by row of the Zarr arrays (padding
        rows left by appends included, as pending: see :meth:`sample_rows`).

        Raises
        ------
        CubeDamagedError
            A status chunk cannot be decoded.
        """
        try:
            return np.asarray(self._array("status")[...], dtype="int8")
        except DECODE_ERRORS as exc:
            raise CubeDamagedError(f"cube {self.path!r} is damaged: its status cannot be read "
                                   f"({type(exc).__name__}: {exc}); " + damage_hint(self.path)) from exc

    def incomplete_units(self, units: Iterable[Any], *, retry_failed: bool = False,
                         retry_no_data: bool = False, status: np.ndarray | None = None) -> list[Any]:
        """The units (objects with ``.start`` and ``.scale_index``) still to run.

        A unit is incomplete when any of its cells is :data:`PENDING`, or, with
        ``retry_failed=True``, :data:`FAILED`, or, with ``retry_no_data=True``, :data:`NO_DATA`.
        ``status``: the status array if already read.
        """
        status = self.status_array() if status is None else status
        todo = statuses_to_run(retry_failed=retry_failed, retry_no_data=retry_no_data)
        out = []
        for u in units:
            stop = self.unit_stop(u.start)
            cells = status[int(u.start):stop, self._scale_index(u.scale_index)]
            if np.isin(cells, todo).any():
                out.append(u)
        return out

    def units_missing_chunks(self, units: Iterable[Any], status: np.ndarray | None = None) -> list[Any]:
        """The units marked done whose data chunks are not in the store.

        A cheap check for resuming: the status array and the store listing
        (:func:`~rsembed_dask.store.open.chunk_keys`), no data read. A unit is listed
        when its status vouches for an array (:func:`vouched_arrays`) whose chunk is
        missing: Zarr would read it as NaN or ``""`` without a word. Undecodable
        chunks are found by a full verify (:func:`rsembed_dask.store.verify.check_cube`).

        Parameters
        ----------
        units : iterable of WorkUnit
            The units to check.
        status : ndarray, optional
            The cube's status, where it was read already (default: read it).

        Returns
        -------
        list of WorkUnit
            Those with a vouched-for chunk missing.

        Raises
        ------
        CubeDamagedError
            The status cannot be decoded.
        """
        status = self.status_array() if status is None else status  # (given: read already)
        names = (("embedding", "input_res_m", "valid_fraction", "error") + (("grid",) if self.grid_shape else ())
                 + self._scale_arrays())
        t = () if self.windows is None else (self.window,)
        stored = {name: {key[:len(t) + 2] for key in chunk_keys(self.location, name)} for name in names}
        out = []
        for u in units:
            stop = self.unit_stop(u.start)
            si = self._scale_index(u.scale_index)
            key = t + (int(u.start) // self.chunk_size, si)
            vouched = vouched_arrays(status[int(u.start):stop, si], self.grid_shape is not None, self.quantised)
            if any(key not in stored[name] for name in vouched):
                out.append(u)
        return out

    def status_counts(self, status: np.ndarray | None = None) -> dict[str, int]:
        """Number of cells per status name: ``{"pending": .., "ok": .., "no_data": .., "failed": ..}``.

        ``status``: the status array if already read (else it is read)."""
        status = self.status_array() if status is None else status
        if self.n_samples != self.n_rows:
            status = status[self.sample_rows()]
        counts = count_statuses(status).sum(axis=0)
        return {name: int(counts[i]) for i, name in enumerate(STATUS_NAMES)}

    def failure_reasons(self, status: np.ndarray | None = None) -> collections.Counter:
        """How many ``failed`` cells give each ``error`` reason (reads only chunks holding failures)."""
        status = self.status_array() if status is None else status
        reasons: collections.Counter = collections.Counter()
        for si in range(self.n_scales):
            rows = np.flatnonzero(status[:, si] == FAILED)
            for chunk in np.unique(rows // self.chunk_size):
                start = int(chunk) * self.chunk_size
                stop = self.unit_stop(start)
                errors = np.asarray(self._array("error")[start:stop, si])
                mask = status[start:stop, si] == FAILED
                reasons.update(str(e) or "(no reason recorded)" for e in errors[mask])
        return reasons

    def set_attrs(self, **kv: Any) -> None:
        """Store JSON-serialisable group attributes (e.g. a request account).

        Raises
        ------
        CubeError
            A reserved key (``campaign_spec``, ``spec_hash``...) or a value JSON cannot hold.
        """
        reserved = sorted(RESERVED_ATTRS.intersection(kv))
        if reserved:
            raise CubeError(f"set_attrs: {reserved} are reserved cube attributes")
        try:
            json.dumps(kv, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise CubeError(f"set_attrs: values must be JSON-serialisable ({exc})") from exc
        stored = self.attrs
        changed = {k: v for k, v in kv.items() if k not in stored or normalise_identity({"v": v})["v"] != stored[k]}
        if changed:  # values already stored are not written again (a read-only finished cube reruns)
            if not self.writable:
                raise CubeError(f"cube path {self.path!r} is not writable (attributes {sorted(changed)})")
            # A group opened now: another handle on this store (another window's) may have written
            # attributes since this one's group was opened, and Zarr rewrites them all from its copy.
            zarr.open_group(self.location.zarr_store(), mode="r+", zarr_format=3).attrs.update(changed)


def _writable(loc: StoreLocation) -> bool:
    """Whether this process may write the store: a local directory's permission; an object store
    is taken as writable (it says otherwise when a write is made)."""
    return os.access(loc.path, os.W_OK) if loc.local else True


#: Cubes unpickled in this process, by their pickled state (path, spec, extent, segments:
#: everything the Zarr arrays' definitions follow from, so a cube re-created alike at the same
#: path reopens alike). A few per process: one per cube a campaign writes, a tiling's scales.
_UNPICKLED_MAX = 16
_unpickled: collections.OrderedDict[str, Cube] = collections.OrderedDict()
_unpickled_lock = threading.Lock()


def _unpickle_cube(state: dict[str, Any]) -> Cube:
    """The :class:`Cube` for a pickled state, shared by the tasks of this process."""
    key = json.dumps(state, sort_keys=True)
    with _unpickled_lock:
        cube = _unpickled.get(key)
        if cube is not None:
            _unpickled.move_to_end(key)
            return cube
    cube = Cube.__new__(Cube)
    cube.__setstate__(state)
    with _unpickled_lock:
        cube = _unpickled.setdefault(key, cube)
        while len(_unpickled) > _UNPICKLED_MAX:
            _unpickled.popitem(last=False)
    return cube
