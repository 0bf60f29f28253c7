"""Planning a campaign: one planner per input kind, both returning the same :class:`Jobs`.

- :func:`plan_samples`: a GeoDataFrame of samples becomes one job (its sample table, its
  cube, the campaign spec, the units of the cube's chunks).
- :func:`plan_tiling`: a :class:`~rsembed_dask.sampling.tiling.Tiling` becomes one job
  per scale and date window (its tile table, its sample cube in the tiling store bound to
  the window, the spec at that scale and window); after the units ran, the per-zone grids
  are filled from the sample cubes by tasks on the cluster (:meth:`Jobs.sync_grids`), one
  batch of blocks (of one window) per task, so no embedding passes through the client.

Nothing is fetched while planning: the specs are validated and the store is created or
reopened (and repaired when asked).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import zarr

from ..errors import CubeError, SpecError
from ..providers.limits import BYTES_PER_SAMPLE, REQUEST_BYTE_LIMIT
from ..sampling.samples import SampleTable, build_sample_table, samples_digest
from ..sampling.units import WorkUnit, default_unit_size, work_units
from ..sampling.tiling import TileTable, Tiling
from ..specs import DEFAULT_SCALES, CampaignSpec, ModelSpec, OutputSpec, SensorSpec, TemporalSpec, TemporalWindows
from ..store.cube import Cube
from ..store.layout import SKIPPED_ATTR, SYNCED_ATTR, refuse_time, scale_name
from ..store.location import StoreLocation
from ..store.open import stored_chunk_size
from ..store.prepare import finished_rerun, open_for_run, record_input, work_left
from ..store.repair import repair_tiling_layout, reset_damaged_units
from ..store.size import StoreSize, sample_store_size, tiling_store_size
from ..store.tiling import block_batches, create_or_open_tiling, is_tiling_store, rasterise_blocks, set_synced
from .progress import ProgressBar

__all__ = ["Job", "Jobs", "Preflight", "plan_samples", "plan_tiling", "model_spec", "software_versions",
           "grids_synced"]

log = logging.getLogger(__name__)

#: Samples per work unit (and cube chunk) of a new sample cube when none is given (an existing
#: cube keeps its own: :func:`unit_size`).
DEFAULT_CHUNK_SIZE = default_unit_size()

#: Called by a planner before the store changes (it is created, updated, appended, repaired, or
#: units are left to write in it), with the store's location, the campaign spec, the size of
#: what is left to write and the bytes of an interrupted store it replaces. It raises to stop.
Preflight = Callable[[StoreLocation, CampaignSpec, StoreSize, int], None]


@dataclass
class Job:
    """The units of one cube: its table (row ``r`` is the sample at cube row ``r``), cube, spec and units.

    A sample campaign is one job, a tiling campaign one job per scale.
    """

    #: None for a finished campaign rerun on the same samples (nothing runs: see ``plan_samples``).
    table: SampleTable | TileTable | None
    cube: Cube
    spec: CampaignSpec
    units: list[WorkUnit] = field(default_factory=list)
    #: The cube's status as planned (None: read when needed).
    status: np.ndarray | None = None


@dataclass
class Jobs:
    """What a campaign runs, whatever its input: one :class:`Job` per cube of the store at ``path``.

    Attributes
    ----------
    path : StoreLocation
        The cube, or the tiling store.
    jobs : list of Job
    tiling : Tiling or None
        The tiling whose zone grids follow the sample cubes (None for a sample campaign).
    """

    path: StoreLocation
    jobs: list[Job]
    tiling: Tiling | None = None

    @property
    def spec(self) -> CampaignSpec:
        """The campaign spec (of the first cube: a tiling's differ only in their scale)."""
        return self.jobs[0].spec

    @property
    def n_units(self) -> int:
        return sum(len(job.units) for job in self.jobs)

    @property
    def n_samples(self) -> int:
        return sum(job.cube.n_rows if job.table is None else len(job.table) for job in self.jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs)

    def todo(self, *, retry_failed: bool = False, retry_no_data: bool = False) -> list[tuple[int, WorkUnit]]:
        """``(job index, unit)`` of the units not done (pending cells; also failed ones with ``retry_failed``,
        no_data ones with ``retry_no_data``)."""
        return [(j, u) for j, job in enumerate(self.jobs)
                for u in job.cube.incomplete_units(job.units, retry_failed=retry_failed,
                                                   retry_no_data=retry_no_data, status=job.status)]

    def grids_to_sync(self, todo: Sequence[tuple[int, WorkUnit]]) -> list[int]:
        """The windows (indices along ``time``; ``[0]`` for a store of one window) whose zone grids
        must be filled after this run: those with units to run, every window when the grids are
        not synced (an interrupted run), none for a sample campaign. Read before the run starts."""
        if self.tiling is None:
            return []
        windows = sorted({job.cube.window for job in self.jobs})
        if not grids_synced(self.path):
            return windows
        return sorted({self.jobs[j].cube.window for j, _ in todo})

    def mark_grids_unsynced(self) -> None:
        """Before units run: the grids lag the samples until :meth:`sync_grids` (tilings only)."""
        if self.tiling is not None:
            set_synced(self.path, False)

    def sync_grids(self, client: Any, *, progress: bool = True, windows: Sequence[int] | None = None) -> int:
        """Fill the zone grids from the sample cubes, one task per batch of blocks of one window.

        ``windows``: the indices along ``time`` to fill (default every window; see
        :meth:`grids_to_sync`), so a backfill writes its new window's grid chunks only.
        Returns the number of tiles copied. Idempotent: every block is rewritten whole.
        """
        from distributed import as_completed

        if self.tiling is None:
            return 0
        has_time = self.jobs[0].cube.has_time
        if windows is None:
            windows = sorted({job.cube.window for job in self.jobs})
        futures = []
        for t in windows:
            for s, table in zip(self.tiling.scales, self.tiling.tables):
                for i, batch in enumerate(block_batches(table)):
                    lo, hi = batch[0][3], batch[-1][4]
                    futures.append(client.submit(rasterise_blocks, self.path, s, table.block, batch,
                                                 table.row[lo:hi], table.col[lo:hi], t if has_time else None,
                                                 pure=False,
                                                 key=f"rasterise-{s:g}m-w{t}-{i}-{os.urandom(4).hex()}"))
        bar = ProgressBar(len(futures), enabled=progress, desc="grids")
        copied = 0
        try:
            for fut in as_completed(futures):
                copied += fut.result()
                bar.update(1)
        finally:
            bar.close()
        set_synced(self.path, True)
        log.info("grids of %s synced: %d tiles", self.path, copied)
        return copied


def grids_synced(path: str | StoreLocation) -> bool:
    """Whether the tiling store at ``path`` has grids that reflect its sample cubes."""
    loc = StoreLocation.parse(path)
    if not is_tiling_store(loc):
        return False
    return bool(zarr.open_group(loc.zarr_store(), mode="r", zarr_format=3).attrs.get(SYNCED_ATTR, False))


def software_versions() -> dict[str, str]:
    """Versions recorded in a new cube's attributes (``"not installed"`` where absent)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("rsembed_dask", "rshf", "torch", "earthengine-api", "zarr", "dask", "distributed"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def model_spec(model: Any, batch_size: int | None = None) -> ModelSpec:
    """A :class:`ModelSpec` from a spec, a model id or None (the environment's defaults)."""
    if model is None:
        spec = ModelSpec.from_env()
    elif isinstance(model, str):
        spec = ModelSpec.from_env(model_id=model)
    elif isinstance(model, ModelSpec):
        spec = model
    else:
        raise SpecError("model", model, "a ModelSpec, a model id or None")
    return spec.replace(batch_size=batch_size) if batch_size is not None else spec


def _campaign_windows(temporal: Any) -> TemporalWindows:
    """The checked windows of a campaign, from a :class:`TemporalSpec` or a sequence of windows."""
    return TemporalWindows.of(temporal)


def unit_size(chunk_size: int | None, cube_path: str | os.PathLike | StoreLocation, block: int | None = None) -> int:
    """Samples per unit: ``chunk_size`` when given, else the existing cube's own chunk size, else
    the default for a new cube (:func:`~rsembed_dask.sampling.units.default_unit_size`).

    So a cube created with another default (64 before version 0.2) resumes without
    ``--chunk-size``: its spec (whose identity holds the chunk size) still matches.
    """
    if chunk_size is not None:
        return chunk_size
    stored = stored_chunk_size(cube_path)
    return stored if stored is not None else default_unit_size(block)


def _grid_shape(spec: CampaignSpec) -> tuple[int, tuple[int, int] | None]:
    """``(embed_dim, grid_shape)`` of the cube of ``spec``'s model and output."""
    from ..embed.weights import model_info

    info = model_info(spec.model)
    return info.embed_dim, (info.grid_size, info.grid_size) if spec.output.mode == "grid" else None


def plan_samples(gdf: Any, out: str | os.PathLike | StoreLocation, *, temporal: TemporalSpec,
                 scales: Any = DEFAULT_SCALES,
                 sensor: SensorSpec | None = None, model: Any = None, output: OutputSpec | None = None,
                 chunk_size: int | None = None, buffer_m: float | None = None, batch_size: int | None = None,
                 id_column: str | None = None, on_invalid: Literal["raise", "skip"] = "raise", repair: bool = False,
                 update: bool = False, append: bool = False, retry_failed: bool = False, retry_no_data: bool = False,
                 versions: Callable[[], dict[str, str]] = software_versions,
                 preflight: Preflight | None = None, append_windows: bool = False,
                 table_if_needed: bool = False) -> Jobs:
    """Plan a sample campaign: validate everything and create (or reopen) the cube; nothing is fetched.

    The store is asked once (:func:`~rsembed_dask.store.prepare.open_for_run`): ``repair``
    restores a damaged cube's metadata and coordinates from the samples and re-runs damaged
    units (see :mod:`rsembed_dask.store.repair`). A reopened cube is matched id by id
    (:mod:`rsembed_dask.store.samples`, by digest where it can): moved samples need ``update``,
    new ids ``append``; stored ids not given are kept and no unit made only of them is run.
    ``preflight(location, spec, size, reclaim)`` is called before the store changes in any
    way (``size``: the share left to write of :func:`~rsembed_dask.store.size.sample_store_size`);
    a finished cube with nothing to change is not checked.

    Several windows (``temporal`` a sequence) make a cube with a ``time`` dimension, one job
    per window (each with that window as its spec's ``temporal``, so its units fetch it);
    ``append_windows`` adds windows to an existing one (:meth:`~rsembed_dask.store.cube.Cube.create_or_open`).

    With ``table_if_needed`` (what ``run_campaign`` asks), a plain rerun of a finished cube on
    the very samples it last matched (the same :func:`~rsembed_dask.sampling.samples.samples_digest`
    of the GeoDataFrame, spec and windows) builds no sample table: its jobs have ``table`` None
    and nothing to run (:func:`~rsembed_dask.store.prepare.finished_rerun`).

    Returns
    -------
    Jobs
        One job per window: its table's row ``r`` is the sample at cube row ``r``
        (:func:`~rsembed_dask.store.samples.table_in_cube_rows`).
    """
    windows = _campaign_windows(temporal)
    temporal = windows[0]
    spec = CampaignSpec(temporal=temporal, sensor=sensor or SensorSpec(),
                        model=model_spec(model, batch_size), output=output or OutputSpec.pooled(),
                        scales=tuple(scales) if not isinstance(scales, (int, float)) else (scales,),
                        chunk_size=unit_size(chunk_size, StoreLocation.parse(out)), buffer_m=buffer_m)
    digest = samples_digest(gdf, id_column=id_column, on_invalid=on_invalid,
                            salt=f"{spec.spec_hash()}|{[(w.start, w.end) for w in windows]}")
    plain = not (update or append or repair or retry_failed or retry_no_data or append_windows)
    finished = finished_rerun(out, digest) if table_if_needed and plain else None
    if finished is not None and finished.cube.spec.spec_hash() == spec.spec_hash():
        log.info("cube %s: finished, and these are the samples it holds; nothing to do", finished.cube.location)
        return Jobs(finished.cube.location, [Job(None, c, c.spec, units, status)
                                             for c, units, status in finished.windows])
    table = _check_request_sizes(build_sample_table(gdf, id_column=id_column, on_invalid=on_invalid),
                                 spec, on_invalid)
    embed_dim, grid_shape = _grid_shape(spec)
    size = sample_store_size(table.ids, table.wkb, n_scales=len(spec.scales), embed_dim=embed_dim,
                             chunk_size=spec.chunk_size, grid_shape=grid_shape, dtype=spec.output.dtype)

    def checks(where: StoreLocation, fraction: float, reclaim: int) -> None:
        if preflight is not None:
            preflight(where, spec, size.scaled(fraction), reclaim)

    ready = open_for_run(out, table, spec=spec, embed_dim=embed_dim, grid_shape=grid_shape, versions=versions(),
                         update=update, append=append, repair=repair, retry_failed=retry_failed,
                         retry_no_data=retry_no_data, checks=checks, windows=tuple(windows),
                         append_windows=append_windows)
    cube = ready.cube
    if len(table.skipped):
        cube.set_attrs(**{SKIPPED_ATTR: table.skipped_records()})
    record_input(cube, digest, len(table))
    # cube.spec: an existing cube's scale order (the same scales given in another order)
    return Jobs(cube.location, [Job(ready.table, c, c.spec, units, status) for c, units, status in ready.windows])


def _check_request_sizes(table: SampleTable, spec: CampaignSpec, on_invalid: str) -> SampleTable:
    """Refuse (or skip) samples whose footprint exceeds one request's 48 MiB at some scale."""
    bands = len(spec.sensor.bands)
    max_px = int((REQUEST_BYTE_LIMIT / (bands * BYTES_PER_SAMPLE)) ** 0.5)
    too_big = np.zeros(len(table), bool)
    for scale in spec.scales:
        if spec.buffer_m is not None:
            side = np.where(table.kind == "point", 2 * spec.buffer_m, 2 * np.maximum(table.half_w, table.half_h))
        else:
            side = np.where(table.kind == "point", spec.model.image_size * scale,
                            2 * np.maximum(table.half_w, table.half_h))
        too_big |= np.ceil(side / scale) + 1 > max_px
    if not too_big.any():
        return table
    ids = [str(i) for i in table.ids[too_big][:5]]
    allowed = (f"footprints of at most {max_px} px a side at every scale (48 MiB per Earth Engine "
               f"request for {bands} uint16 bands): split the polygon or drop the finest scale")
    if on_invalid != "skip":
        raise SpecError("geometry", f"ids {ids} ({int(too_big.sum())} samples too large)", allowed)
    log.warning("skipping %d samples too large for one request: %s", int(too_big.sum()), ids)
    return table.take(np.flatnonzero(~too_big)).with_skipped(table.ids[too_big], "too large for one request")


def plan_tiling(tiling: Tiling, out: str | os.PathLike | StoreLocation, *, temporal: TemporalSpec,
                scales: Any = None,
                sensor: SensorSpec | None = None, model: Any = None, output: OutputSpec | None = None,
                chunk_size: int | None = None, batch_size: int | None = None, repair: bool = False,
                retry_failed: bool = False, retry_no_data: bool = False,
                versions: Callable[[], dict[str, str]] = software_versions,
                preflight: Preflight | None = None, append_windows: bool = False) -> Jobs:
    """Plan a tiling campaign: validate, create (or reopen) the tiling store; nothing is fetched.

    Several windows (``temporal`` a sequence) make a store with ``time`` (its sample cubes and
    zone grids; :mod:`rsembed_dask.store.tiling`), one job per scale and window;
    ``append_windows`` adds windows to an existing one (no chunk rewritten).

    ``scales`` must be None or the tiling's own; the model's image size must be the
    tiling's tile size. ``repair`` restores unreadable array metadata of the sample
    cubes before they are opened (:func:`~rsembed_dask.store.repair.repair_tiling_layout`)
    and re-runs damaged units. ``preflight(location, spec, size, reclaim)`` is called before
    the store changes (``size``: the share left of :func:`~rsembed_dask.store.size.tiling_store_size`).

    Returns
    -------
    Jobs
        One job per window and scale (window-major), and the tiling (its grids are synced after the run).
    """
    windows = _campaign_windows(temporal)
    temporal = windows[0]
    if scales is not None and sorted(float(s) for s in  # order does not matter (the tiling's are sorted)
                                     ([scales] if isinstance(scales, (int, float)) else scales)) != sorted(tiling.scales):
        raise SpecError("scales", scales, f"None or the tiling's own scales {list(tiling.scales)}")
    model = model_spec(model, batch_size)
    if model.image_size != tiling.image_size:
        raise SpecError("model.image_size", model.image_size,
                        f"the tiling's tile size {tiling.image_size} px (tiles are fetched at model size)")
    spec = CampaignSpec(temporal=temporal, sensor=sensor or SensorSpec(), model=model,
                        output=output or OutputSpec.pooled(), scales=tiling.scales,
                        chunk_size=unit_size(chunk_size, StoreLocation.parse(out).child("samples", scale_name(tiling.scales[0])),
                                             tiling.block),
                        buffer_m=None)
    path = StoreLocation.parse(out)
    embed_dim, grid_shape = _grid_shape(spec)
    one = tiling_store_size(tiling.tables, embed_dim=embed_dim, chunk_size=spec.chunk_size,
                            grid_shape=grid_shape, dtype=spec.output.dtype)
    size = one
    for _ in range(len(windows) - 1):  # every window holds the same cells (coordinates counted again: an upper bound)
        size = size + one
    if repair and is_tiling_store(path):
        refuse_time(zarr.open_group(path.zarr_store(), mode="r", zarr_format=3).attrs.asdict(), path.url,
                    "--repair of a tiling store")
    try:
        left = work_left(path, tiling=True, retry_failed=retry_failed, retry_no_data=retry_no_data)  # read-only
    except CubeError:
        if not repair:
            raise
        left = None
    if preflight is not None and (repair or (left is not None and left.any)):
        preflight(path, spec, size.scaled(left.fraction if left is not None else 0.0),
                  left.reclaim if left is not None else 0)
    if repair:  # unreadable array metadata of its sample cubes, before they are opened
        repair_tiling_layout(path, tiling)
    cubes = create_or_open_tiling(path, tiling, spec, embed_dim=embed_dim, grid_shape=grid_shape,
                                  versions=versions(), windows=tuple(windows), append_windows=append_windows,
                                  before_append=lambda: preflight(path, spec, one.scaled(1.0), 0)
                                  if preflight is not None else None)
    n_windows = len(windows) if cubes[tiling.scales[0]].has_time else 1
    jobs = []
    for t in range(n_windows):
        for s, table in zip(tiling.scales, tiling.tables):
            cube = cubes[s].at_window(t)
            jobs.append(Job(table, cube, cube.spec,
                            [replace(u, window=t) for u in work_units(len(table), (s,), spec.chunk_size)]))
    reset_damaged_units(path, [(job, job.units) for job in jobs], repair=repair,
                        before_reset=lambda n: preflight(path, spec, size, 0) if preflight is not None else None)
    return Jobs(path, jobs, tiling)
