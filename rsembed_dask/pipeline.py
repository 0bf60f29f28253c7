"""Campaigns: a GeoDataFrame becomes fetch → embed → write tasks on Dask, into a Zarr cube.

The client plans (sample table, work units, cube), keeps a bounded window of
units in flight and tracks their small summaries; pixels and embeddings stay
on the workers. Each unit is a fetch task (any worker) and an embed+write task
pinned to an actor's worker with ``resources={"GPU": 1}``. When an actor's
worker dies, the actor is recreated on a live GPU worker and its units re-run.

Examples
--------
>>> cube = run_campaign(gdf, "campaign.zarr", scales=[10, 20, 40],
...                     temporal=TemporalSpec.range("2022-01-01", "2022-04-01"),
...                     model=ModelSpec("test-small"), backend="emulator")   # doctest: +SKIP
>>> cube.embedding.sel(scale=20)                                            # doctest: +SKIP
"""

from __future__ import annotations

import collections
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from .actors import start_actor
from .backends import open_backend
from .cluster import connect, embed_workers, fetch_workers
from .cube import Cube, open_cube
from .errors import ProviderError, RsEmbedError, SpecError
from .progress import CampaignReport, ProgressBar
from .sampling import SampleTable, WorkUnit, build_sample_table, work_units
from .specs import CampaignSpec, ModelSpec, OutputSpec, SensorSpec, TemporalSpec
from .units import UnitSummary, embed_unit, fetch_unit, mark_unit_failed

__all__ = ["run_campaign", "plan_campaign"]

log = logging.getLogger(__name__)

#: Units in flight per actor: enough for fetches to run ahead of the model.
UNITS_PER_ACTOR = 4
#: Seconds between checks that every actor's worker is alive.
HEALTH_CHECK_S = 1.0
#: Times a unit is re-run after losing its worker before it is marked failed.
MAX_UNIT_ATTEMPTS = 4
#: Seconds to read a finished unit's small summary before taking its worker for lost.
RESULT_TIMEOUT_S = 10.0
#: Earth Engine's default quota: 40 concurrent requests per project.
EE_CONCURRENT_REQUESTS = 40


def _with_cluster_limit(provider, client, max_requests: int):
    """Share one ``distributed.Semaphore`` of ``max_requests`` leases among all fetches.

    Only for Earth Engine (its quota is per project, whatever the number of workers).
    """
    import dataclasses

    from distributed import Semaphore

    from .providers.gee import GEEProvider

    if not isinstance(provider, GEEProvider):
        return provider
    # One pool per project and bound (the scheduler refuses one name with two bounds).
    name = f"rsembed-ee-{provider.project or 'default'}-{max_requests}"
    sem = Semaphore(max_leases=max_requests, name=name, scheduler_rpc=client.scheduler, loop=client.loop)
    return dataclasses.replace(provider, limiter=sem)


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
                  id_column: str | None = None, on_invalid: str = "raise"):
    """Validate everything and create (or reopen) the cube; nothing is fetched.

    Returns ``(spec, table, cube, units)``.
    """
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
    cube = Cube.create_or_open(out, spec=spec, ids=table.ids, lon=table.lon, lat=table.lat,
                               geohash=table.geohash, wkb=table.wkb, embed_dim=info.embed_dim,
                               grid_shape=grid_shape, versions=_versions())
    if len(table.skipped):
        cube.set_attrs(skipped_rows=table.skipped.astype(str).to_dict(orient="records"))
    return spec, table, cube, work_units(len(table), spec.scales, spec.chunk_size)


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


def run_campaign(gdf, out, *, scales=(10, 20, 40), temporal: TemporalSpec,
                 sensor: SensorSpec | None = None, model: Any = None,
                 output: OutputSpec | None = None, backend: Any = "gee", client: Any = None,
                 batch_size: int | None = None, max_in_flight: int | None = None,
                 chunk_size: int = 64, buffer_m: float | None = None, id_column: str | None = None,
                 on_invalid: str = "raise", gee_options: Mapping[str, Any] | None = None,
                 retry_failed: bool = False, progress: bool = True, fetch_threads: int = 8,
                 unit_retries: int = 2, cluster_options: Mapping[str, Any] | None = None,
                 ee_concurrency: int = EE_CONCURRENT_REQUESTS,
                 on_unit: Callable[[UnitSummary], None] | None = None):
    """Embed every sample of ``gdf`` at every scale into the Zarr cube ``out``.

    Parameters
    ----------
    gdf : geopandas.GeoDataFrame
        Points, polygons or multipolygons in any CRS; ids from the index or ``id_column``.
    out : str or path
        The cube. An existing cube with the same spec resumes (only units not
        done run); a different spec is refused naming the differing fields.
    scales : sequence of float
        Pixel sizes in metres.
    temporal, sensor, model, output
        As in :func:`rsembed_dask.get_embedding`; ``model`` a ModelSpec or id.
    backend : str or Provider
        ``"gee"``, ``"emulator"`` (served from this process over loopback),
        ``"local:PATH"`` or a provider.
    client : None, distributed.Client or str
        None starts a local cluster (one embed worker per GPU, or one on CPU);
        a scheduler address makes this a cluster submission.
    batch_size : int, optional
        Images per forward pass (default 8 on CPU, 32 on CUDA).
    max_in_flight : int, optional
        Units submitted and not finished (default 4 per actor): bounds memory.
    retry_failed : bool
        Also re-run units holding ``failed`` samples.
    ee_concurrency : int
        Earth Engine requests in flight across the whole cluster (default 40,
        Earth Engine's per-project quota), enforced with a ``distributed.Semaphore``.
    progress : bool
        Show a progress bar (terminal or notebook) and print the dashboard link.
    on_unit : callable, optional
        Called with each finished unit's :class:`~rsembed_dask.units.UnitSummary`.

    Returns
    -------
    xarray.Dataset
        The cube, opened with :func:`rsembed_dask.cube.open_cube`.
    """
    if not (isinstance(ee_concurrency, int) and ee_concurrency >= 1):
        raise SpecError("ee_concurrency", ee_concurrency, "an integer >= 1")
    spec, table, cube, units = plan_campaign(
        gdf, out, scales=scales, temporal=temporal, sensor=sensor, model=model, output=output,
        chunk_size=chunk_size, buffer_m=buffer_m, batch_size=batch_size, id_column=id_column,
        on_invalid=on_invalid)
    todo = cube.incomplete_units(units, retry_failed=retry_failed)
    log.info("campaign %s: %d samples x %d scales = %d units, %d to run", cube.path, len(table),
             len(spec.scales), len(units), len(todo))
    report = CampaignReport(path=str(cube.path), units_total=len(units), units_todo=len(todo))
    if todo:
        with open_backend(backend, gee_options=dict(gee_options or {})) as provider, \
                connect(client, **dict(cluster_options or {})) as c:
            provider = _with_cluster_limit(provider, c, ee_concurrency)
            _Runner(c, provider, table, cube, spec, report, max_in_flight=max_in_flight,
                    fetch_threads=fetch_threads, unit_retries=unit_retries, progress=progress,
                    on_unit=on_unit).run(todo)
    report.finish(cube.status_counts())
    cube.set_attrs(request_account=dict(report.requests), last_run=report.as_dict())
    if progress:
        print(report.summary())
    return open_cube(cube.path)


class _Runner:
    """The client-side loop: bounded window, actor health, retries, progress."""

    def __init__(self, client, provider, table: SampleTable, cube: Cube, spec: CampaignSpec,
                 report: CampaignReport, *, max_in_flight, fetch_threads, unit_retries, progress, on_unit):
        self.c, self.provider, self.table, self.cube, self.spec = client, provider, table, cube, spec
        self.report, self.fetch_threads, self.unit_retries = report, fetch_threads, unit_retries
        self.on_unit = on_unit
        self.progress_on = progress
        self.actors: dict[str, Any] = {}
        self.max_in_flight = max_in_flight
        # embed future -> (unit, actor address, fetch future, attempt)
        self.inflight: dict[Any, tuple[WorkUnit, str, Any, int]] = {}
        self.attempts: collections.Counter = collections.Counter()
        self.fetch_addrs: list[str] = []
        self._last_check = 0.0
        # Task keys are unique per run, so a second run on the same scheduler never
        # picks up a stale key of an earlier (interrupted) one.
        self.run_token = uuid.uuid4().hex[:8]

    # ------------------------------------------------------------------ actors
    def _ensure_actors(self) -> None:
        live = embed_workers(self.c)
        for addr in [a for a in self.actors if a not in live]:
            log.warning("actor worker %s is gone; re-running its units elsewhere", addr)
            del self.actors[addr]
            self.report.actors_lost += 1
            for fut, (unit, a, fetch, attempt) in list(self.inflight.items()):
                if a == addr:
                    fut.cancel()
                    del self.inflight[fut]
                    self._requeue(unit, fetch)
        # Fetches prefer fetch-only workers (loosely: any worker may take them when those are
        # gone or busy), so the model's process is not also decoding answers under the GIL.
        self.fetch_addrs = fetch_workers(self.c)
        for addr in live:
            if addr not in self.actors:
                self.actors[addr] = start_actor(self.c, self.spec.model, addr)
                self.report.actors_started += 1
        if not self.actors:
            self.c.wait_for_workers(1, timeout=300)  # raises TimeoutError with no GPU worker at all
            if not embed_workers(self.c):
                raise RsEmbedError("no worker declares the GPU resource: start workers with "
                                   "`dask worker --resources GPU=1` (one per GPU)")
            self._ensure_actors()

    def _requeue(self, unit: WorkUnit, fetch=None) -> None:
        self.attempts[unit] += 1
        self.report.units_rerun += 1
        if self.attempts[unit] >= MAX_UNIT_ATTEMPTS:
            mark_unit_failed(self.cube, unit, f"lost its worker {self.attempts[unit]} times")
            self.report.units_failed += 1
            self.bar.update(1)
            return
        self.pending.appendleft((unit, fetch if fetch is not None and fetch.status != "error" else None))

    # ------------------------------------------------------------------ submit
    def _submit(self, unit: WorkUnit, fetch) -> None:
        addr = min(self.actors, key=lambda a: sum(1 for v in self.inflight.values() if v[1] == a))
        attempt = self.attempts[unit]
        tag = f"{self.run_token}-{unit.chunk}-{unit.scale_index}-a{attempt}"
        if fetch is None:
            where = {"workers": self.fetch_addrs, "allow_other_workers": True} if self.fetch_addrs else {}
            fetch = self.c.submit(fetch_unit, self.provider, self.table.slice(unit.start, unit.stop),
                                  unit, self.spec, self.fetch_threads, key=f"fetch-{tag}",
                                  retries=self.unit_retries, pure=False, **where)
        fut = self.c.submit(embed_unit, fetch, self.actors[addr].key, self.cube, self.spec,
                            key=f"embed-{tag}-{addr.rsplit(':', 1)[-1]}",
                            workers=[addr], allow_other_workers=False, resources={"GPU": 1}, pure=False)
        self.inflight[fut] = (unit, addr, fetch, attempt)

    # ------------------------------------------------------------------ loop
    def run(self, todo: list[WorkUnit]) -> None:
        from distributed import wait

        if self.progress_on:
            print(f"Dask dashboard: {self.c.dashboard_link}")
        self.bar = ProgressBar(len(todo), enabled=self.progress_on)
        self.pending: collections.deque = collections.deque((u, None) for u in todo)
        t_start = time.perf_counter()
        try:
            self._ensure_actors()
            # Throughput is counted from here: model loading is reported apart (startup_s).
            t0 = time.perf_counter()
            self.report.startup_s = t0 - t_start
            window = self.max_in_flight or UNITS_PER_ACTOR * len(self.actors)
            while self.pending or self.inflight:
                while self.pending and len(self.inflight) < window:
                    self._submit(*self.pending.popleft())
                try:
                    done, _ = wait(list(self.inflight), timeout=HEALTH_CHECK_S,
                                   return_when="FIRST_COMPLETED")
                except TimeoutError:  # nothing finished within the health-check period
                    done = ()
                for fut in done:
                    self._finish(fut)
                if time.monotonic() - self._last_check >= HEALTH_CHECK_S:
                    self._last_check = time.monotonic()
                    self._ensure_actors()
        finally:
            for fut in self.inflight:
                fut.cancel()
            self.bar.close()
            self.report.elapsed_s = time.perf_counter() - t_start - self.report.startup_s

    def _finish(self, fut) -> None:
        from distributed import KilledWorker
        from distributed.client import FutureCancelledError
        from distributed.comm import CommClosedError

        unit, addr, fetch, _ = self.inflight.pop(fut)
        if fut.status == "finished":
            try:
                if not self.c.who_has([fut]).get(fut.key):
                    raise TimeoutError  # its worker is already gone
                summary: UnitSummary = fut.result(timeout=RESULT_TIMEOUT_S)
            except TimeoutError:
                # Finished, but its worker died before the summary was read: the unit is
                # probably written; running it again is safe (same chunk, same data).
                log.warning("unit %s: summary lost with worker %s; running it again", unit.key, addr)
                fut.cancel()
                self._requeue(unit)
                return
            self.report.add(summary)
            self.bar.update(1, self.report.postfix())
            if self.on_unit is not None:
                self.on_unit(summary)
            return
        if fut.status != "error":
            # "cancelled", or "lost": its result went down with its worker.
            fut.cancel()
            self._requeue(unit)
            return
        exc = fut.exception(timeout=RESULT_TIMEOUT_S)
        if isinstance(exc, ProviderError):
            # Retries are spent (the provider's, then Dask's per unit): record, go on.
            log.warning("unit %s failed: %s", unit.key, exc)
            mark_unit_failed(self.cube, unit, f"{type(exc).__name__}: {exc}")
            self.report.units_failed += 1
            self.bar.update(1, self.report.postfix())
        elif isinstance(exc, (FutureCancelledError, KilledWorker, CommClosedError)):
            # The unit's worker died: run it again (its fetch again too if that was lost).
            self._requeue(unit, None if isinstance(exc, KilledWorker) else fetch)
        else:
            raise exc
