"""Campaigns: a GeoDataFrame (or a tiling) becomes fetch → embed → write tasks on Dask, into Zarr.

The client plans (:mod:`~rsembed_dask.campaign.jobs`: one planner per input kind, both
returning :class:`~rsembed_dask.campaign.jobs.Jobs`) and hands the units to
:class:`~rsembed_dask.campaign.runner.Runner`, which keeps a bounded window in flight;
pixels and embeddings stay on the workers. A :class:`~rsembed_dask.sampling.tiling.Tiling`
instead of a GeoDataFrame runs a tiling campaign: one sample cube per scale, then the
per-zone georeferenced grids (:mod:`rsembed_dask.store.tiling`). How a run goes about it
(window, retries, concurrency, repair...) is a :class:`~rsembed_dask.campaign.options.RunOptions`.

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
from collections.abc import Mapping
from typing import Any, Literal

import xarray as xr

from ..cluster.local import connect
from ..embed.weights import check_weights
from ..errors import NoImageryWarning, RsEmbedError, SpecError
from ..providers.backends import check_backend, open_backend
from ..sampling.samples import SampleTable
from ..sampling.tiling import Tiling
from ..specs import DEFAULT_SCALES, CampaignSpec, OutputSpec, SensorSpec, TemporalSpec
from ..store.cube import Cube
from ..store.open import check_free_space, check_writable, open_cube
from ..store.layout import COMPLETED_WINDOWS_ATTR, LAST_RUN_ATTR, REQUEST_ACCOUNT_ATTR, RUNS_ATTR
from ..store.location import StoreLocation
from ..store.lock import held_lock, one_writer
from ..store.size import StoreSize
from ..store.tiling import set_completed_windows
from .jobs import Jobs, Preflight, plan_samples, plan_tiling
from .options import RunOptions
from .progress import CampaignReport
from .runner import Runner
from .tasks import REQUESTS_TOPIC

__all__ = ["run_campaign", "plan_campaign", "RunOptions"]

log = logging.getLogger(__name__)


def _with_cluster_limit(provider, client, max_requests: int, requests_per_s: float | None = None):
    """Share one cluster-wide semaphore of ``max_requests`` leases among all fetches, and a
    cluster-wide rate limit of ``requests_per_s`` when given.

    Only for Earth Engine (its quota is per project, whatever the number of workers).
    A :class:`~rsembed_dask.cluster.local.ClusterSemaphore`, not a bare ``distributed.Semaphore``:
    unpickled in a task, the latter never refreshes its leases, so a request longer than
    the scheduler's lease timeout lost its lease and the bound did not hold.
    """
    import dataclasses

    from ..cluster.local import ClusterRateLimit, ClusterSemaphore
    from ..providers.gee import GEEProvider

    if not isinstance(provider, GEEProvider):
        return provider
    # One pool per project and bound (the scheduler refuses one name with two bounds).
    name = f"rsembed-ee-{provider.project or 'default'}-{max_requests}"
    rate = (None if requests_per_s is None
            else ClusterRateLimit(f"rsembed-ee-rate-{provider.project or 'default'}", requests_per_s))
    # A process may use the whole cluster bound (the cluster semaphore shares it out); its
    # connection pool is as large, so no connection is dropped and opened again.
    return dataclasses.replace(provider, limiter=ClusterSemaphore(name, max_requests), rate_limiter=rate,
                               max_concurrency=max(provider.max_concurrency, max_requests))


@one_writer("out")  # it may create, append to or repair the cube
def plan_campaign(gdf: Any, out: Any, *, scales: Any = DEFAULT_SCALES, temporal: TemporalSpec,
                  sensor: SensorSpec | None = None, model: Any = None, output: OutputSpec | None = None,
                  chunk_size: int | None = None, buffer_m: float | None = None, batch_size: int | None = None,
                  id_column: str | None = None, on_invalid: Literal["raise", "skip"] = "raise", repair: bool = False,
                  update: bool = False, append: bool = False,
                  storage_options: Mapping[str, Any] | None = None) -> tuple[CampaignSpec, SampleTable, Cube, list]:
    """Validate everything and create (or reopen) the cube of a sample campaign; nothing is fetched.

    :func:`~rsembed_dask.campaign.jobs.plan_samples`, unpacked: returns
    ``(spec, table, cube, units)``; ``table`` row ``r`` is the sample at cube row ``r``.
    """
    job = plan_samples(gdf, StoreLocation.parse(out, storage_options), scales=scales, temporal=temporal,
                       sensor=sensor, model=model, output=output, chunk_size=chunk_size, buffer_m=buffer_m,
                       batch_size=batch_size, id_column=id_column, on_invalid=on_invalid, repair=repair,
                       update=update, append=append).jobs[0]
    return job.spec, job.table, job.cube, job.units  # type: ignore[return-value]


def _plan(source: Any, out: Any, options: RunOptions, *, scales: Any, temporal: TemporalSpec,
          sensor: SensorSpec | None, model: Any, output: OutputSpec | None, batch_size: int | None,
          chunk_size: int | None, buffer_m: float | None, id_column: str | None,
          on_invalid: Literal["raise", "skip"], preflight: Preflight | None = None) -> Jobs:
    """The planner of ``source``'s kind: a tiling's, or the samples'."""
    common = dict(temporal=temporal, sensor=sensor, model=model, output=output, batch_size=batch_size,
                  chunk_size=chunk_size, repair=options.repair, retry_failed=options.retry_failed,
                  retry_no_data=options.retry_no_data,
                  preflight=preflight)
    if isinstance(source, Tiling):
        for name, value in (("buffer_m", buffer_m), ("id_column", id_column)):
            if value is not None:
                raise SpecError(name, value, "None for a tiling campaign (tiles are their own footprints)")
        if options.update or options.append:  # tiles derive from the AOI: a tiling store never changes samples
            raise SpecError("update" if options.update else "append", True, "False for a tiling campaign")
        return plan_tiling(source, out, scales=scales, append_windows=options.append_windows, **common)
    return plan_samples(source, out, scales=DEFAULT_SCALES if scales is None else scales, buffer_m=buffer_m,
                        id_column=id_column, on_invalid=on_invalid, update=options.update,
                        append=options.append, append_windows=options.append_windows, table_if_needed=True,
                        **common)


def _lock_options(bound: Mapping[str, Any]) -> Mapping[str, Any]:
    """The writer lock's keywords from ``run_campaign``'s ``options`` and ``knobs``."""
    knobs = {k: v for k, v in bound.get("knobs", {}).items() if k in ("break_lock", "wait_lock_s", "lock_stale_s")}
    # A lost lock interrupts the run wherever it waits (as Ctrl-C would), then exits 3.
    return {**(bound.get("options") or RunOptions()).replace(**knobs).lock_options(), "interrupt": True}


@one_writer("out", _lock_options)  # one run writes a store at a time (rsembed_dask.store.lock)
def run_campaign(gdf: Any, out: Any, *, scales: Any = None, temporal: TemporalSpec,
                 sensor: SensorSpec | None = None, model: Any = None,
                 output: OutputSpec | None = None, backend: Any = "gee", client: Any = None,
                 batch_size: int | None = None, chunk_size: int | None = None, buffer_m: float | None = None,
                 id_column: str | None = None, on_invalid: Literal["raise", "skip"] = "raise",
                 gee_options: Mapping[str, Any] | None = None, cluster_options: Mapping[str, Any] | None = None,
                 stac_dir: str | os.PathLike | None = None, options: RunOptions | None = None,
                 storage_options: Mapping[str, Any] | None = None, **knobs: Any) -> xr.Dataset | xr.DataTree:
    """Embed every sample of ``gdf`` at every scale into the Zarr cube ``out``.

    Parameters
    ----------
    gdf : geopandas.GeoDataFrame or Tiling
        Points, polygons or multipolygons in any CRS; ids from the index or ``id_column``.
        Or a :class:`~rsembed_dask.sampling.tiling.Tiling` from :func:`~rsembed_dask.sampling.tiling.tile_aoi`:
        a tiling campaign (its own footprints at each of its scales, plus georeferenced grids).
    out : str, path or StoreLocation
        The cube: a local path, or an ``s3://``, ``gs://``, ``az://`` URL (credentials from
        the environment, e.g. ``AWS_*``, or ``storage_options``). An existing cube with the
        same spec resumes (only units not done run); a different spec is refused naming the differing fields, unless no
        unit has finished in the cube: it is then recreated (a warning names what
        changed), as is a store whose creation was interrupted. Before the cube is
        created (or resumed with work left) the model's weights are resolved and read,
        ``out`` is checked writable with room for the store (refused when even its lower
        estimate does not fit, a warning when only its upper bound does; see
        :mod:`rsembed_dask.store.size`) and the backend's configuration is checked: a
        failure leaves no cube behind. A finished cube is left alone: no check, no backend.
    scales : sequence of float, optional
        Pixel sizes in metres (default 10, 20, 40; a tiling's own scales for a tiling).
    temporal, sensor, model, output
        As in :func:`rsembed_dask.get_embedding`; ``model`` a ModelSpec or id. ``temporal``
        may be several windows (a sequence, ``TemporalSpec.years(...)``): a sample cube then
        has a ``time`` dimension (docs/guide/time.md); a tiling takes one window.
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
    chunk_size : int, optional
        Samples per work unit and cube chunk (default: an existing cube's own, else 512; for a
        tiling, whole blocks of tiles: 8 blocks of 8 x 8).
    buffer_m, id_column, on_invalid
        As in :func:`~rsembed_dask.sampling.samples.build_sample_table` (samples only).
    gee_options : mapping, optional
        Passed to :class:`~rsembed_dask.providers.gee.GEEProvider` (project, URL, retry...).
    cluster_options : mapping, optional
        Passed to :func:`~rsembed_dask.cluster.local.connect` when it starts a cluster.
    stac_dir : str or path, optional
        At the end, write a STAC catalogue of the cube there (:func:`rsembed_dask.store.stac.write_stac`).
    options : RunOptions, optional
        How the run goes about it: ``max_in_flight``, ``fetch_threads``, ``unit_retries``,
        ``ee_concurrency`` (Earth Engine requests in flight across the cluster, default 40),
        ``coalesce``, ``progress``, ``summary`` (print the final summary; default as
        ``progress``), ``gpu_wait_s``, ``retry_failed``, ``repair`` (read the
        whole store first, restore what is damaged and re-run damaged units), ``update``
        (re-embed samples whose geometry changed), ``append`` (add new ids as new chunks),
        ``append_windows`` (add date windows to a cube with ``time``), ``on_unit`` (called with each finished unit's summary). See :class:`RunOptions`.
    storage_options : mapping, optional
        For a URL ``out``: obstore config keys (never written anywhere; the workers get them
        with the pickled cube). See :mod:`rsembed_dask.store.location`.
    **knobs
        Any :class:`RunOptions` field as a keyword (``retry_failed=True``...), applied over
        ``options``.

    Returns
    -------
    xarray.Dataset or xarray.DataTree
        The cube, opened with :func:`rsembed_dask.store.open.open_cube` (a DataTree for a tiling).

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
    TypeError
        A keyword that is neither a parameter nor a :class:`RunOptions` field.
    """
    opts = (options or RunOptions()).replace(**knobs)
    out = StoreLocation.parse(out, storage_options)
    check_backend(backend)  # before any cube or cluster exists
    with contextlib.ExitStack() as stack:
        # Weights, free space and backend are checked before the store changes in any way (it is
        # created, repaired, updated, appended, or has work left; a finished store is left alone):
        # the store asks for them (store.prepare), so a bad model or configuration changes nothing.
        checks = _Preflight(stack, backend, dict(gee_options or {}))
        jobs = _plan(gdf, out, opts, scales=scales, temporal=temporal, sensor=sensor, model=model, output=output,
                     batch_size=batch_size, chunk_size=chunk_size, buffer_m=buffer_m, id_column=id_column,
                     on_invalid=on_invalid, preflight=checks.run)
        todo = jobs.todo(retry_failed=opts.retry_failed, retry_no_data=opts.retry_no_data)
        for j, job in enumerate(jobs):  # read-only storage: fine when finished, refused when there is work
            job.cube.require_writable(sum(1 for k, _ in todo if k == j))
        if todo:  # the store asked for the checks already; never run without them
            checks.run(jobs.path, jobs.spec)
        log.info("campaign %s: %d samples, %d units, %d to run", jobs.path, jobs.n_samples, jobs.n_units,
                 len(todo))
        report = CampaignReport(path=str(jobs.path), units_total=jobs.n_units, units_todo=len(todo))
        sync = jobs.grids_to_sync(todo)
        if todo or sync:
            c = stack.enter_context(connect(client, **dict(cluster_options or {})))
            if todo:
                jobs.mark_grids_unsynced()
                provider = _with_cluster_limit(checks.provider, c, opts.ee_concurrency, opts.ee_requests_per_s)
                runner = Runner(c, provider, jobs.jobs, report, opts, lock=held_lock(out))
                # one cube per store (the windows of a cube with time share its attributes)
                cubes = list({job.cube.path: job.cube for job in reversed(jobs.jobs)}.values())
                with _Ledger(cubes, report, preflight=checks.checked, lock=held_lock(out)) as ledger, \
                        _RequestAccount(c, runner.run_token) as account:
                    ledger.follow(account)
                    runner.run(todo)
            if sync:
                jobs.sync_grids(c, progress=opts.progress, windows=sync)
    counts: dict[str, int] = {}
    failures: collections.Counter = collections.Counter()
    pending: dict[str, int] = {}  # per window start (every scale of a tiling)
    for job in jobs:  # a run with nothing to do counts from the status read when planning
        status = job.cube.status_array() if todo else job.status
        job_counts = job.cube.status_counts(status)
        for k, v in job_counts.items():
            counts[k] = counts.get(k, 0) + v
        failures.update(job.cube.failure_reasons(status))
        pending[job.spec.temporal.start] = pending.get(job.spec.temporal.start, 0) + job_counts["pending"]
    report.finish(counts, failures)
    if jobs.jobs[0].cube.has_time:  # which windows are done, as GeoTessera's years_complete
        completed = [start for start, n in pending.items() if not n]
        for cube in {job.cube.path: job.cube for job in jobs.jobs}.values():
            cube.set_attrs(**{COMPLETED_WINDOWS_ATTR: completed})
        if jobs.tiling is not None:
            set_completed_windows(jobs.path, completed)
    if todo:  # a run with nothing to do keeps the report of the run that did the work
        lock = held_lock(out)
        if lock is not None:
            lock.check()  # a run that lost its lock writes nothing more
        for cube in {job.cube.path: job.cube for job in reversed(jobs.jobs)}.values():
            cube.set_attrs(**{LAST_RUN_ATTR: report.as_dict()})
    if opts.progress if opts.summary is None else opts.summary:
        print(report.summary())
    _warn_if_no_imagery(counts, jobs.spec)
    if stac_dir is not None:
        from ..store.stac import write_stac

        write_stac(jobs.path, stac_dir)
    return open_cube(jobs.path)


class _Preflight:
    """The checks before a campaign writes: model weights, output path and free space, backend.

    :meth:`run` is the planner's ``preflight`` hook: the store calls it before it changes in
    any way (created, repaired, updated, appended, units left to write; see
    :mod:`rsembed_dask.store.prepare`), never for a finished store that a rerun leaves alone.
    It runs once. The provider it opens (:func:`~rsembed_dask.providers.backends.open_backend`)
    stays open in ``stack``.
    """

    def __init__(self, stack: contextlib.ExitStack, backend: Any, gee_options: dict[str, Any]):
        self.stack, self.backend, self.gee_options = stack, backend, gee_options
        self.provider: Any = None
        self.checked = False  # an Earth Engine preflight request was sent
        self.done = False

    def run(self, path: StoreLocation, spec: CampaignSpec, size: StoreSize | None = None, reclaim: int = 0) -> None:
        """Check weights, path, free space for ``size`` (local paths only) and backend; once."""
        if self.done:
            return
        check_weights(spec.model)
        check_writable(path)
        if size is not None:
            check_free_space(path, size, reclaim=reclaim)
        # The provider exists, and its configuration is checked, before any cluster starts or
        # any model loads: a bad project, URL, collection or band stops here.
        self.provider = self.stack.enter_context(open_backend(self.backend, gee_options=self.gee_options))
        self.checked = _preflight(self.provider, spec)
        self.done = True


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
    """Sum the request counts every fetch attempt of one run publishes (:data:`~rsembed_dask.campaign.tasks.REQUESTS_TOPIC`).

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

    def snapshot(self) -> collections.Counter:
        """The counts so far (a copy)."""
        with self._lock:
            return collections.Counter(self.totals)

    def __enter__(self) -> _RequestAccount:
        self.c.subscribe_topic(REQUESTS_TOPIC, self._on_event)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.c.log_event(REQUESTS_TOPIC, {"marker": self._marker})
            if not self._done.wait(ACCOUNT_WAIT_S):
                log.warning("the request account may be incomplete: its closing event did not arrive "
                            "within %g s", ACCOUNT_WAIT_S)
        finally:
            self.c.unsubscribe_topic(REQUESTS_TOPIC)


#: Seconds to wait for the request account's closing event.
ACCOUNT_WAIT_S = 10.0
#: Seconds between writes of a running campaign's account to its cubes (what a killed run
#: spent is lost for at most this long).
LEDGER_WRITE_S = 10.0
#: Runs kept in the ``runs`` attribute (the oldest dropped first; the totals keep them).
MAX_RUNS = 1000


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class _Ledger:
    """The campaign's account over the cube's whole life: ``request_account`` and ``runs``.

    On entry, a record of this run (``ended: "running"``) is added to the cubes' ``runs``
    (a record still ``running`` from an earlier run is that of a run killed without a word:
    it becomes ``killed``). While the run goes on, its requests so far
    (:class:`_RequestAccount`) are added to the totals of the runs before it and written
    every :data:`LEDGER_WRITE_S`; on exit, whatever ended the run (done, an interrupt, an
    error), once more with how it ended. So a run killed with SIGKILL loses at most the last
    ``LEDGER_WRITE_S`` of its account, and ``request_account`` is the sum of the runs'
    requests.
    """

    def __init__(self, cubes: list[Cube], report: CampaignReport, *, preflight: bool, lock: Any = None):
        self.cubes, self.report, self.preflight = cubes, report, preflight
        self.lock = lock  # the cube's StoreLock: a run that lost it writes nothing more
        self.account: _RequestAccount | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        attrs = cubes[0].attrs
        runs = attrs.get(RUNS_ATTR)
        self.runs: list[dict[str, Any]] = [dict(r) for r in runs] if isinstance(runs, list) else []
        for r in self.runs:
            if r.get("ended") == "running":
                r["ended"] = "killed"
        base = attrs.get(REQUEST_ACCOUNT_ATTR)
        self.base = collections.Counter({k: v for k, v in base.items() if isinstance(v, int)}
                                        if isinstance(base, dict) else {})
        self.record: dict[str, Any] = {"start": _now(), "end": None, "ended": "running"}

    def follow(self, account: _RequestAccount) -> None:
        self.account = account

    def _requests(self) -> collections.Counter:
        totals = self.account.snapshot() if self.account is not None else collections.Counter()
        if self.preflight:
            totals["preflight"] += 1
        return totals

    def write(self, ended: str | None = None) -> None:
        """Write the totals and the runs (this one as it stands) to every cube (not once this run
        lost its writer lock: the cube is another run's then)."""
        with self._lock:
            if self.lock is not None and self.lock.lost is not None:
                log.info("the campaign's account is not written: %s", self.lock.lost)
                return
            requests = self._requests()
            r = self.report
            self.record.update(
                end=_now(), ended=ended or "running", units_run=r.units_todo, units_done=r.units_done,
                units_failed=r.units_failed, units_rerun=r.units_rerun, samples_embedded=r.samples_embedded,
                requests=dict(requests),
                workers=[{k: w[k] for k in ("name", "address", "units", "embeddings", "load_s", "state")}
                         for w in r.workers],
                quarantined=dict(r.quarantined))
            total = collections.Counter(self.base)
            total.update(requests)  # (not ``+``: it drops the zero counts)
            runs = (self.runs + [self.record])[-MAX_RUNS:]
            for cube in self.cubes:
                cube.set_attrs(**{REQUEST_ACCOUNT_ATTR: dict(total), RUNS_ATTR: runs})

    def _loop(self) -> None:
        while not self._stop.wait(LEDGER_WRITE_S):
            try:
                self.write()
            except RsEmbedError as e:  # a store that refuses a write now: the next one may pass
                log.warning("could not write the campaign's account: %s", e)

    def __enter__(self) -> _Ledger:
        self.write()
        self._thread = threading.Thread(target=self._loop, name="rsembed-ledger", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc_type is None:
            ended = "done"
        elif issubclass(exc_type, KeyboardInterrupt):
            ended = "interrupted"
        else:
            ended = f"failed: {type(exc).__name__}: {exc}"[:300]
        self.report.requests = self._requests()
        self.write(ended)


def _warn_if_no_imagery(counts: dict[str, int], spec: CampaignSpec) -> None:
    """Warn when no sample of the cube found imagery (every finished cell is no_data)."""
    if counts.get("ok", 0) or not counts.get("no_data", 0):
        return
    s, t = spec.sensor, spec.temporal
    warnings.warn(NoImageryWarning(
        f"no sample found imagery: all {counts['no_data']} finished cells are no_data for {s.collection} in "
        f"[{t.start}, {t.end}) with {s.cloud_property} <= {s.cloudy_pct:g}: check the temporal window "
        f"(scenes exist in it?), the cloud filter and the collection"), stacklevel=3)
