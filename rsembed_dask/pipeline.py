"""Campaigns: a GeoDataFrame becomes fetch → embed → write tasks on Dask, into a Zarr cube.

The client plans (sample table, work units, cube) and hands the units to
:class:`~rsembed_dask.runner.Runner`, which keeps a bounded window in flight;
pixels and embeddings stay on the workers. A :class:`~rsembed_dask.tiling.Tiling`
instead of a GeoDataFrame runs a tiling campaign: one sample cube per scale,
then the per-zone georeferenced grids (:mod:`rsembed_dask.tile_cube`).

Examples
--------
>>> cube = run_campaign(gdf, "campaign.zarr", scales=[10, 20, 40],
...                     temporal=TemporalSpec.range("2022-01-01", "2022-04-01"),
...                     model=ModelSpec("test-small"), backend="emulator")   # doctest: +SKIP
>>> cube.embedding.sel(scale=20)                                            # doctest: +SKIP
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from .backends import check_backend, open_backend
from .cluster import connect
from .cube import Cube, open_cube
from .cube_store import check_free_space, check_writable, is_tiling_store, probe_store, store_bytes, unfinished_store
from .cube_repair import repair_tiling_layout, reset_damaged_units
from .cube_samples import table_in_cube_rows
from .errors import NoImageryWarning, SpecError
from .progress import CampaignReport
from .runner import GPU_WAIT_S, Job, Runner
from .sampling import SampleTable, build_sample_table, work_units
from .specs import CampaignSpec, ModelSpec, OutputSpec, SensorSpec, TemporalSpec
from .store_lock import one_writer
from .store_size import StoreSize
from .tiling import Tiling
from .units import UnitSummary

__all__ = ["run_campaign", "plan_campaign"]

log = logging.getLogger(__name__)

#: Earth Engine's default quota: 40 concurrent requests per project.
EE_CONCURRENT_REQUESTS = 40


def _with_cluster_limit(provider, client, max_requests: int):
    """Share one cluster-wide semaphore of ``max_requests`` leases among all fetches.

    Only for Earth Engine (its quota is per project, whatever the number of workers).
    A :class:`~rsembed_dask.cluster.ClusterSemaphore`, not a bare ``distributed.Semaphore``:
    unpickled in a task, the latter never refreshes its leases, so a request longer than
    the scheduler's lease timeout lost its lease and the bound did not hold.
    """
    import dataclasses

    from .cluster import ClusterSemaphore
    from .providers.gee import GEEProvider

    if not isinstance(provider, GEEProvider):
        return provider
    # One pool per project and bound (the scheduler refuses one name with two bounds).
    name = f"rsembed-ee-{provider.project or 'default'}-{max_requests}"
    return dataclasses.replace(provider, limiter=ClusterSemaphore(name, max_requests))


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("rsembed_dask", "rshf", "torch", "earthengine-api", "zarr", "dask", "distributed"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _model_spec(model: Any, batch_size: int | None) -> ModelSpec:
    if model is None:
        spec = ModelSpec.from_env()
    elif isinstance(model, str):
        spec = ModelSpec.from_env(model_id=model)
    elif isinstance(model, ModelSpec):
        spec = model
    else:
        raise SpecError("model", model, "a ModelSpec, a model id or None")
    return spec.replace(batch_size=batch_size) if batch_size is not None else spec


def plan_campaign(gdf, out, *, scales=(10, 20, 40), temporal: TemporalSpec,
                  sensor: SensorSpec | None = None, model: Any = None,
                  output: OutputSpec | None = None, chunk_size: int = 64,
                  buffer_m: float | None = None, batch_size: int | None = None,
                  id_column: str | None = None, on_invalid: str = "raise", repair: bool = False,
                  update: bool = False, append: bool = False,
                  preflight: Callable[[str, CampaignSpec, StoreSize], None] | None = None):
    """Validate everything and create (or reopen) the cube; nothing is fetched.

    ``repair`` restores a damaged cube's metadata and coordinates from the samples
    (see :mod:`rsembed_dask.cube_repair`). A reopened cube is matched id by id
    (:mod:`rsembed_dask.cube_samples`): moved samples need ``update``, new ids
    ``append``; stored ids not given are kept and no unit made only of them is run.
    ``preflight(path, spec, size)`` is called once the samples are checked, before the
    cube is created or opened (``size``: :func:`~rsembed_dask.store_size.sample_store_size`).

    Returns ``(spec, table, cube, units)``: ``table`` row ``r`` is the sample at cube
    row ``r`` (:func:`~rsembed_dask.cube_samples.table_in_cube_rows`).
    """
    from .store_size import sample_store_size
    from .weights import model_info

    if not isinstance(temporal, TemporalSpec):
        raise SpecError("temporal", temporal, "a TemporalSpec (TemporalSpec.range(start, end) or .year(y))")
    spec = CampaignSpec(temporal=temporal, sensor=sensor or SensorSpec(),
                        model=_model_spec(model, batch_size), output=output or OutputSpec.pooled(),
                        scales=tuple(scales) if not isinstance(scales, (int, float)) else (scales,),
                        chunk_size=chunk_size, buffer_m=buffer_m)
    table = _check_request_sizes(build_sample_table(gdf, id_column=id_column, on_invalid=on_invalid),
                                 spec, on_invalid)
    info = model_info(spec.model)
    grid_shape = (info.grid_size, info.grid_size) if spec.output.mode == "grid" else None
    if preflight is not None:
        preflight(os.path.abspath(os.fspath(out)), spec, sample_store_size(
            table.ids, table.wkb, n_scales=len(spec.scales), embed_dim=info.embed_dim,
            chunk_size=spec.chunk_size, grid_shape=grid_shape, dtype=spec.output.dtype))
    cube = Cube.create_or_open(out, spec=spec, ids=table.ids, lon=table.lon, lat=table.lat,
                               geohash=table.geohash, wkb=table.wkb, embed_dim=info.embed_dim,
                               grid_shape=grid_shape, versions=_versions(), repair=repair,
                               update=update, append=append)
    if len(table.skipped):
        cube.set_attrs(skipped_rows=table.skipped_records())
    spec = cube.spec  # an existing cube's scale order (the same scales given in another order)
    table, given = table_in_cube_rows(table, cube)
    units = [u for u in work_units(cube.n_rows, spec.scales, spec.chunk_size, segments=cube.segments)
             if given[u.start:u.stop].any()]
    return spec, table, cube, units


def _check_request_sizes(table: SampleTable, spec: CampaignSpec, on_invalid: str) -> SampleTable:
    """Refuse (or skip) samples whose footprint exceeds one request's 48 MiB at some scale."""
    import numpy as np

    from .providers.gee import BYTES_PER_SAMPLE, REQUEST_BYTE_LIMIT

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


@one_writer("out")  # one run writes a store at a time (rsembed_dask.store_lock)
def run_campaign(gdf, out, *, scales=None, temporal: TemporalSpec,
                 sensor: SensorSpec | None = None, model: Any = None,
                 output: OutputSpec | None = None, backend: Any = "gee", client: Any = None,
                 batch_size: int | None = None, max_in_flight: int | None = None,
                 chunk_size: int | None = None, buffer_m: float | None = None, id_column: str | None = None,
                 on_invalid: str = "raise", gee_options: Mapping[str, Any] | None = None,
                 retry_failed: bool = False, progress: bool = True, fetch_threads: int = 8,
                 unit_retries: int = 2, cluster_options: Mapping[str, Any] | None = None,
                 ee_concurrency: int = EE_CONCURRENT_REQUESTS, coalesce: bool = True,
                 on_unit: Callable[[UnitSummary], None] | None = None, gpu_wait_s: float = GPU_WAIT_S,
                 repair: bool = False, update: bool = False, append: bool = False, stac_dir: Any = None,
                 summary: bool | None = None):
    """Embed every sample of ``gdf`` at every scale into the Zarr cube ``out``.

    Parameters
    ----------
    gdf : geopandas.GeoDataFrame or Tiling
        Points, polygons or multipolygons in any CRS; ids from the index or ``id_column``.
        Or a :class:`~rsembed_dask.tiling.Tiling` from :func:`~rsembed_dask.tiling.tile_aoi`:
        a tiling campaign (its own footprints at each of its scales, plus georeferenced grids).
    out : str or path
        The cube. An existing cube with the same spec resumes (only units not
        done run); a different spec is refused naming the differing fields, unless no
        unit has finished in the cube: it is then recreated (a warning names what
        changed), as is a store whose creation was interrupted. Before the cube is
        created (or resumed with work left) the model's weights are resolved and read,
        ``out`` is checked writable with room for the store (refused when even its lower
        estimate does not fit, a warning when only its upper bound does; see
        :mod:`rsembed_dask.store_size`) and the backend's configuration is checked: a
        failure leaves no cube behind. A finished cube is left alone: no check, no backend.
    scales : sequence of float, optional
        Pixel sizes in metres (default 10, 20, 40; a tiling's own scales for a tiling).
    temporal, sensor, model, output
        As in :func:`rsembed_dask.get_embedding`; ``model`` a ModelSpec or id.
    backend : str or Provider
        ``"gee"``, ``"emulator"`` (served from this process over loopback),
        ``"local:PATH"`` or a provider.
    client : None, distributed.Client, str or callable
        None starts a local cluster (one embed worker per GPU, or one on CPU);
        a scheduler address makes this a cluster submission; a callable returning a
        context manager that yields a Client (e.g. ``lambda: start_cluster(recipe)``)
        is called only when there is work to do.
    batch_size : int, optional
        Images per forward pass (default 8 on CPU, 32 on CUDA).
    max_in_flight : int, optional
        Units submitted and not finished (default 4 per actor): bounds memory.
    chunk_size : int, optional
        Samples per work unit and cube chunk (default 64; a tiling's block of tiles).
    retry_failed : bool
        Also re-run units holding ``failed`` samples.
    update : bool
        Re-embed samples of an existing cube whose geometry changed (same id): their
        coordinates are rewritten and their cells reset to pending, then embedded.
        Without it such samples are refused, naming their ids.
    append : bool
        Add ids an existing cube does not hold, as new chunks (existing chunks are not
        touched). Without it new ids are refused, naming them. Ids the cube holds but
        not given are always kept (a warning names them) and their units not run.
    ee_concurrency : int
        Earth Engine requests in flight across the whole cluster (default 40,
        Earth Engine's per-project quota), enforced with a ``distributed.Semaphore``.
    coalesce : bool
        Serve neighbouring footprints of a unit with one request, cropped per sample
        (identical pixels, far fewer requests; see :mod:`rsembed_dask.providers.coalesce`).
    progress : bool
        Show a progress bar (terminal or notebook) and print the dashboard link.
    summary : bool, optional
        Print the final summary (default: as ``progress``; the CLI always prints it).
    on_unit : callable, optional
        Called with each finished unit's :class:`~rsembed_dask.units.UnitSummary`.
    gpu_wait_s : float
        When no worker declares ``GPU=1`` (at start, or after the only one died), wait this
        long for one (a nanny or the cluster manager bringing it back) before giving up;
        units not run stay pending (default 300 s).
    repair : bool
        Read the whole cube first and run again every unit found damaged (a plain run
        re-runs only units marked done whose chunks are missing); restore unreadable
        array metadata and damaged coordinates from the samples
        (:mod:`rsembed_dask.cube_repair`).
    stac_dir : str or path, optional
        At the end, write a STAC catalogue of the cube there (:func:`rsembed_dask.stac.write_stac`).

    Returns
    -------
    xarray.Dataset or xarray.DataTree
        The cube, opened with :func:`rsembed_dask.cube.open_cube` (a DataTree for a tiling).

    Raises
    ------
    ModelError
        The model's weights cannot be resolved or read (before any cube exists).
    ConfigurationError
        The backend's configuration cannot work (before any cube exists).
    CubeError
        ``out`` is not writable, or even the store's lower size estimate exceeds the free space.
    StoreLockedError
        Another run is writing ``out`` (its lock names the holder).
    CubeDamagedError
        The cube is damaged in a way a plain run does not repair (``repair=True`` does).
    """
    if not (isinstance(ee_concurrency, int) and ee_concurrency >= 1):
        raise SpecError("ee_concurrency", ee_concurrency, "an integer >= 1")
    check_backend(backend)  # before any cube or cluster exists
    tiling = gdf if isinstance(gdf, Tiling) else None
    if tiling is not None:
        for name, value in (("buffer_m", buffer_m), ("id_column", id_column)):
            if value is not None:
                raise SpecError(name, value, "None for a tiling campaign (tiles are their own footprints)")
        if update or append:  # tiles derive from the AOI: a tiling store never changes samples
            raise SpecError("update" if update else "append", True, "False for a tiling campaign")
    with contextlib.ExitStack() as stack:
        # Weights, free space and backend are checked before the store is created (or, for a
        # store with nothing left to do, not at all): a bad model or configuration leaves no cube.
        checks = _Preflight(stack, backend, dict(gee_options or {}), retry_failed=retry_failed,
                            tiling=tiling is not None, defer=repair)
        if tiling is not None:
            from .tile_campaign import plan_tiling

            if repair:  # unreadable array metadata of its sample cubes, before they are opened (cube_repair)
                repair_tiling_layout(out, gdf)
            spec, jobs, path = plan_tiling(gdf, out, scales=scales, temporal=temporal, sensor=sensor,
                                           model=_model_spec(model, batch_size), output=output,
                                           chunk_size=chunk_size, versions=_versions(), preflight=checks.before_store)
        else:
            spec, table, cube, units = plan_campaign(
                gdf, out, scales=(10, 20, 40) if scales is None else scales, temporal=temporal,
                sensor=sensor, model=model, output=output, chunk_size=64 if chunk_size is None else chunk_size,
                buffer_m=buffer_m, batch_size=batch_size, id_column=id_column, on_invalid=on_invalid,
                repair=repair, update=update, append=append, preflight=checks.before_store)
            jobs, path = [(Job(table, cube, spec), units)], cube.path
        reset_damaged_units(path, jobs, repair=repair)  # damaged units back to pending (cube_repair)
        todo = [(j, u) for j, (job, units) in enumerate(jobs)
                for u in job.cube.incomplete_units(units, retry_failed=retry_failed)]
        for j, (job, _) in enumerate(jobs):  # read-only storage: fine when finished, refused when there is work
            job.cube.require_writable(sum(1 for k, _ in todo if k == j))
        n_units = sum(len(units) for _, units in jobs)
        if todo:  # work found only now (a cube that looked finished, or --repair): checked before it runs
            checks.run(path, jobs[0][0].spec, fraction=len(todo) / max(n_units, 1))
        log.info("campaign %s: %d samples, %d units, %d to run", path,
                 sum(len(job.table) for job, _ in jobs), n_units, len(todo))
        report = CampaignReport(path=str(path), units_total=n_units, units_todo=len(todo))
        if tiling is not None:
            from .tile_campaign import grids_synced, sync_grids

            sync = bool(todo) or not grids_synced(path)
        else:
            sync = False
        if todo or sync:
            c = stack.enter_context(connect(client, **dict(cluster_options or {})))
            if todo:
                if tiling is not None:
                    from .tile_cube import set_synced

                    set_synced(path, False)  # the grids lag the samples until synced again
                provider = _with_cluster_limit(checks.provider, c, ee_concurrency)
                runner = Runner(c, provider, [job for job, _ in jobs], report, max_in_flight=max_in_flight,
                                fetch_threads=fetch_threads, unit_retries=unit_retries, progress=progress,
                                on_unit=on_unit, coalesce=coalesce, gpu_wait_s=gpu_wait_s)
                with _RequestAccount(c, runner.run_token) as account:
                    runner.run(todo)
                report.requests = collections.Counter(account.totals)
                if checks.checked:
                    report.requests["preflight"] += 1
            if sync:
                sync_grids(c, path, tiling, progress=progress)
    counts: dict[str, int] = {}
    failures: collections.Counter = collections.Counter()
    for job, _ in jobs:
        for k, v in job.cube.status_counts().items():
            counts[k] = counts.get(k, 0) + v
        failures.update(job.cube.failure_reasons())
    report.finish(counts, failures)
    if todo:  # a run with nothing to do keeps the account of the run that did the work
        for job, _ in jobs:
            job.cube.set_attrs(request_account=dict(report.requests), last_run=report.as_dict())
    if progress if summary is None else summary:
        print(report.summary())
    _warn_if_no_imagery(counts, jobs[0][0].spec)
    if stac_dir is not None:
        from .stac import write_stac

        write_stac(path, stac_dir)
    return open_cube(path)


class _Preflight:
    """The checks before a campaign writes: model weights, output path and free space, backend.

    :meth:`before_store` is the planner's ``preflight`` hook: called with the planned store
    before it is created or opened, it runs the checks when the store may hold work (it does
    not exist, its creation was interrupted, or some cell is left to do) and skips them for
    a finished store, which a rerun leaves alone. :meth:`run` runs them once, also when work
    turns up only after planning (units found damaged, samples updated or appended). The
    provider it opens (:func:`~rsembed_dask.backends.open_backend`) stays open in ``stack``.
    """

    def __init__(self, stack: contextlib.ExitStack, backend: Any, gee_options: dict[str, Any], *,
                 retry_failed: bool, tiling: bool, defer: bool = False):
        self.stack, self.backend, self.gee_options = stack, backend, gee_options
        self.retry_failed, self.tiling, self.defer = retry_failed, tiling, defer
        self.size: StoreSize | None = None
        self.provider = None
        self.checked = False  # an Earth Engine preflight request was sent
        self.done = False

    def before_store(self, path: str, spec: CampaignSpec, size: StoreSize) -> None:
        """Check before the store at ``path`` is created or opened, when it may hold work."""
        self.size = size
        if self.defer:  # --repair: what is left to do is known once the store is read whole
            return
        left = _work_left(path, tiling=self.tiling, retry_failed=self.retry_failed)
        if left is None:
            return
        fraction, reclaim = left
        self.run(path, spec, fraction=fraction, reclaim=reclaim)

    def run(self, path: str, spec: CampaignSpec, *, fraction: float = 1.0, reclaim: int = 0) -> None:
        """Check weights, path, free space (for ``fraction`` of the store) and backend; once."""
        from .weights import check_weights

        if self.done:
            return
        check_weights(spec.model)
        check_writable(path)
        if self.size is not None:
            check_free_space(path, self.size.scaled(fraction), reclaim=reclaim)
        # The provider exists, and its configuration is checked, before any cluster starts or
        # any model loads: a bad project, URL, collection or band stops here.
        self.provider = self.stack.enter_context(open_backend(self.backend, gee_options=self.gee_options))
        self.checked = _preflight(self.provider, spec)
        self.done = True


def _work_left(path: str, *, tiling: bool, retry_failed: bool) -> tuple[float, int] | None:
    """What is left to do in the store at ``path``, read without writing: None when it is a finished
    store (or one the planner refuses), else ``(share of cells left, bytes of a store to be replaced)``.

    A store that does not exist, or whose creation was interrupted, is all work; a cube
    the planner recreates (nothing finished, another campaign) is all pending, so all work.
    """
    if tiling:
        why = unfinished_store(path, tiling=True)
        if why is not None:
            return 1.0, store_bytes(path)
        if not is_tiling_store(path):
            return (1.0, 0) if probe_store(path, arrays=False) is None else None  # else refused when planned
        samples = os.path.join(path, "samples")
        cubes = [Cube.open(os.path.join(samples, name)) for name in sorted(os.listdir(samples))
                 if os.path.isdir(os.path.join(samples, name))]
    else:
        why = unfinished_store(path)
        if why is not None:
            return 1.0, store_bytes(path)
        if probe_store(path) is None:
            return 1.0, 0
        cubes = [Cube.open(path)]
    left = total = 0
    for cube in cubes:
        counts = cube.status_counts()
        left += counts["pending"] + (counts["failed"] if retry_failed else 0)
        total += sum(counts.values())
    return (left / total, 0) if left else None


def _preflight(provider, spec: CampaignSpec) -> bool:
    """Check the provider's configuration once before the campaign (Earth Engine only).

    Returns whether a check ran. Raises :class:`~rsembed_dask.errors.ConfigurationError`.
    """
    check = getattr(provider, "preflight", None)
    if not callable(check):
        return False
    before = provider.stats.as_dict().get("preflight", 0) if hasattr(provider, "stats") else 0
    check(spec.sensor, spec.temporal)
    after = provider.stats.as_dict().get("preflight", 0) if hasattr(provider, "stats") else 0
    return after > before


class _RequestAccount:
    """Sum the request counts every fetch attempt of one run publishes (:data:`~.units.REQUESTS_TOPIC`).

    Each attempt, also one that raised and that Dask re-ran or that ended its unit
    failed, logs its counts as a Dask event keyed by its task; events of this run's
    tasks (their keys hold the runner's token) are summed as they arrive. On exit a
    marker event is logged and awaited, so every attempt's event has been received.
    Attempts lost with a killed worker cannot report: the account is then a lower bound.
    """

    def __init__(self, client, run_token: str):
        self.c, self.token = client, run_token
        self.totals: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._marker = f"end-{run_token}"

    def _on_event(self, event) -> None:
        _, msg = event
        if not isinstance(msg, dict):
            return
        if msg.get("marker") == self._marker:
            self._done.set()
        elif self.token in str(msg.get("key", "")):
            with self._lock:
                self.totals.update(msg.get("requests", {}))

    def __enter__(self) -> _RequestAccount:
        from .units import REQUESTS_TOPIC

        self.c.subscribe_topic(REQUESTS_TOPIC, self._on_event)
        return self

    def __exit__(self, *exc) -> None:
        from .units import REQUESTS_TOPIC

        try:
            self.c.log_event(REQUESTS_TOPIC, {"marker": self._marker})
            if not self._done.wait(ACCOUNT_WAIT_S):
                log.warning("the request account may be incomplete: its closing event did not arrive "
                            "within %g s", ACCOUNT_WAIT_S)
        finally:
            self.c.unsubscribe_topic(REQUESTS_TOPIC)


#: Seconds to wait for the request account's closing event.
ACCOUNT_WAIT_S = 10.0


def _warn_if_no_imagery(counts: dict[str, int], spec: CampaignSpec) -> None:
    """Warn when no sample of the cube found imagery (every finished cell is no_data)."""
    if counts.get("ok", 0) or not counts.get("no_data", 0):
        return
    s, t = spec.sensor, spec.temporal
    warnings.warn(NoImageryWarning(
        f"no sample found imagery: all {counts['no_data']} finished cells are no_data for {s.collection} in "
        f"[{t.start}, {t.end}) with {s.cloud_property} <= {s.cloudy_pct:g}: check the temporal window "
        f"(scenes exist in it?), the cloud filter and the collection"), stacklevel=3)
