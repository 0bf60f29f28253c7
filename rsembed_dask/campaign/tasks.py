"""Worker-side work of one unit (a chunk of samples x one scale): fetch, embed, write.

All three run on Dask workers. ``fetch_unit`` runs anywhere (preferably on a
fetch worker) and returns the unit's pixels (they stay in worker memory and
travel worker to worker); ``embed_unit`` runs on an actor's (GPU) worker, embeds
with the actor's model and returns the unit's vectors (:class:`UnitVectors`,
small); ``write_unit`` runs on a CPU worker, writes the unit's cube chunk, then
its status, and returns a small summary: no pixel or embedding array reaches the
client. Keeping the Zarr write out of the GPU worker frees the GPU for the next
unit as soon as the forward is done, and keeps the write's CPU off the process
that feeds the GPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..store.cube import FAILED, NO_DATA, OK, PENDING, Cube
from ..embed.preprocess import check_chw, to_uint8_array
from ..errors import NoImageryError, SpecError
from ..providers.base import Provider, RequestStats
from ..providers.coalesce import CoalescedRequest, plan_requests
from ..providers.fetching import fetch_coalesced
from ..sampling.samples import SampleTable
from ..sampling.units import WorkUnit
from ..specs import CampaignSpec, OutputSpec

__all__ = ["UnitPixels", "UnitVectors", "UnitSummary", "fetch_unit", "embed_unit", "write_unit",
           "REQUESTS_TOPIC"]

log = logging.getLogger(__name__)


@dataclass
class UnitPixels:
    """Fetched chips of one unit, in sample order, as uint8 images (:func:`~rsembed_dask.embed.preprocess.to_uint8_array`);
    ``None`` where there is no chip."""

    unit: WorkUnit
    images: list[np.ndarray | None]
    rois: list[tuple[float, float, float, float]]
    status: np.ndarray  # int8: OK for fetched chips, NO_DATA or FAILED otherwise
    errors: list[str]
    valid_fraction: np.ndarray
    requests: dict[str, int]
    fetch_s: float


@dataclass
class UnitVectors:
    """One unit's embeddings and per-sample record: what the GPU worker hands to the writer.

    ``embedding`` is ``[n, D]`` float32 (NaN rows where there is no chip), ``grid``
    ``[n, D, gy, gx]`` for grid cubes; the rest is the fetch's record (:class:`UnitPixels`).
    """

    unit: WorkUnit
    embedding: np.ndarray
    input_res_m: np.ndarray
    grid: np.ndarray | None
    status: np.ndarray
    errors: list[str]
    valid_fraction: np.ndarray
    requests: dict[str, int]
    fetch_s: float
    embed_s: float
    worker: str


@dataclass
class UnitSummary:
    """What the client learns of a finished unit."""

    unit: WorkUnit
    counts: dict[str, int]
    requests: dict[str, int]
    fetch_s: float
    embed_s: float
    worker: str = ""
    errors: list[str] = field(default_factory=list)


def fetch_unit(provider: Provider, table: SampleTable, unit: WorkUnit, spec: CampaignSpec,
               threads: int = 8, *, coalesce: bool = True,
               only: Sequence[int] | None = None) -> UnitPixels:
    """Fetch every sample of ``unit`` (``table`` holds exactly the unit's samples).

    With ``coalesce`` (default), neighbouring footprints on one UTM lattice are
    served by one request for their union grid (:func:`~.providers.coalesce.plan_requests`)
    and cropped per sample: the same pixels as one request per sample, in fewer
    requests. ``requests["reused"]`` counts the samples a request served beyond its
    first; a request Earth Engine gives up on (``Computation timed out.``) is split
    and its halves fetched (:func:`~.providers.fetching.fetch_coalesced`), so
    ``planned - split + reused`` is the number of samples.

    No imagery and permanent errors are recorded per sample (for a coalesced
    request, on every sample it serves); a transient error that survived the
    provider's retries fails the task, so Dask re-runs it; a
    :class:`~.errors.ConfigurationError` fails it too, and stops the campaign.

    ``only`` (indices into the unit) fetches just those samples, e.g. the cells a
    ``retry_failed`` run re-does; the others are returned :data:`PENDING` ("not
    touched"), which :meth:`Cube.write_unit` leaves as stored.

    On a Dask worker, the requests this attempt made (also when it raises) are
    published as an event on :data:`REQUESTS_TOPIC`, with the task's key, so the
    campaign's account counts every attempt, including those Dask re-ran.
    """
    t0 = time.perf_counter()
    n = len(table)
    image_size = spec.model.image_size
    fps = [table.footprint(i, unit.scale_m, image_size, spec.buffer_m) for i in range(n)]
    sensor = spec.sensor_at(unit.scale_m)
    wanted = list(range(n)) if only is None else sorted({int(i) for i in only})
    if wanted and not 0 <= wanted[0] <= wanted[-1] < n:
        raise SpecError("only", only, f"indices into the unit's {n} samples")
    grids = [fps[i].grid for i in wanted]  # plan indices refer to this list
    if coalesce:
        plan = plan_requests(grids, len(sensor.bands))
    else:
        plan = [CoalescedRequest(g, (k,)) for k, g in enumerate(grids)]
    for name in ("limiter", "rate_limiter"):
        limiter = getattr(provider, name, None)
        if limiter is not None:
            # A distributed.Semaphore binds to the worker of the thread that first uses it:
            # bind it here, on the task's thread, before the fetch threads use it.
            limiter.register()
    stats = getattr(provider, "stats", None)
    before = stats.as_dict() if isinstance(stats, RequestStats) else {}
    try:
        results = fetch_coalesced(provider, grids, plan, sensor, spec.temporal, threads)
    finally:
        after = stats.as_dict() if isinstance(stats, RequestStats) else {}
        requests = {k: after[k] - before.get(k, 0) for k in after}
        _publish_requests(requests)
    status = np.full(n, PENDING, np.int8)
    errors = [""] * n
    images: list[np.ndarray | None] = [None] * n
    valid = np.zeros(n, np.float32)
    for i, result in zip(wanted, results):
        if isinstance(result, Exception):
            status[i] = NO_DATA if isinstance(result, NoImageryError) else FAILED
            errors[i] = str(result)[:200]
            continue
        vf = result.valid_fraction  # a pass over the chip's mask: once
        if vf == 0:
            status[i], errors[i] = NO_DATA, "every pixel of the composite is masked"
        else:
            # Converted here, on a CPU worker: rs-embed's uint8 image is half the bytes of
            # the raw chip to ship, and its conversion is CPU the GPU's process is spared.
            check_chw(result.data, field=f"chip[{i}] of unit {unit.key}")
            status[i] = OK
            images[i], valid[i] = to_uint8_array(result.data), vf
    if len(plan) < len(wanted):
        log.debug("%s: %d samples in %d planned requests", unit.key, len(wanted), len(plan))
    return UnitPixels(unit, images, [fp.roi for fp in fps], status, errors, valid, requests,
                      time.perf_counter() - t0)


#: Dask event topic of the per-attempt request counts of fetch tasks.
REQUESTS_TOPIC = "rsembed-requests"


def _publish_requests(requests: dict[str, int]) -> None:
    """Log this fetch attempt's request counts as a Dask event (only on a worker, only if any)."""
    if not any(requests.values()):
        return
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not running in a Dask task
        return
    key = worker.get_current_task()
    worker.log_event(REQUESTS_TOPIC, {"key": str(key), "requests": requests})


def embed_unit(pixels: UnitPixels, actor_key: str, embed_dim: int, grid_shape: tuple[int, int] | None,
               output: OutputSpec) -> UnitVectors:
    """Embed the fetched chips with the local actor's model; the vectors go on to :func:`write_unit`.

    Runs on the actor's worker, two at a time (``runner.EMBED_TASKS_PER_GPU``): the
    embedder's device lock lets one prepare its batch while the other runs its forward.
    Chips with status other than :data:`OK` get NaN rows.
    """
    from distributed import get_worker

    from .actors import local_actor

    t0 = time.perf_counter()
    n = len(pixels.images)
    ok = np.flatnonzero(pixels.status == OK)
    vectors = np.full((n, embed_dim), np.nan, np.float32)
    input_res = np.full(n, np.nan, np.float32)
    grid = None
    if grid_shape is not None:
        grid = np.full((n, embed_dim) + tuple(grid_shape), np.nan, np.float32)
    if len(ok):
        res = local_actor(actor_key).embed([pixels.images[i] for i in ok], pixels.unit.scale_m,
                                           output=output, roi=[pixels.rois[i] for i in ok], uint8=True)
        vectors[ok] = res.vectors
        input_res[ok] = res.input_res_m
        if grid is not None:
            for j, i in enumerate(ok):
                g = res.grids[j]
                grid[i, :, :g.shape[1], :g.shape[2]] = g
    return UnitVectors(pixels.unit, vectors, input_res, grid, pixels.status, pixels.errors,
                       pixels.valid_fraction, pixels.requests, pixels.fetch_s, time.perf_counter() - t0,
                       get_worker().address)


def write_unit(vectors: UnitVectors, cube: Cube, retry_no_data: bool = False) -> UnitSummary:
    """Write one embedded unit's chunk to ``cube``, data first, status last.

    A crash in between leaves the unit as it was. Cells the fetch did not touch
    (:data:`PENDING`) and cells already decided in the cube keep what is stored
    (:meth:`Cube.write_unit`; ``no_data`` ones take an ``ok`` result with ``retry_no_data``). Returns the unit's summary; ``embed_s`` includes the write.
    """
    t0 = time.perf_counter()
    unit, status = vectors.unit, vectors.status
    cube.write_unit(unit.start, unit.stop, unit.scale_index, embedding=vectors.embedding, status=status,
                    input_res_m=vectors.input_res_m, valid_fraction=vectors.valid_fraction,
                    error=vectors.errors, grid=vectors.grid, retry_no_data=retry_no_data)
    counts = {"ok": int((status == OK).sum()), "no_data": int((status == NO_DATA).sum()),
              "failed": int((status == FAILED).sum()), "untouched": int((status == PENDING).sum())}
    return UnitSummary(unit, counts, vectors.requests, vectors.fetch_s,
                       vectors.embed_s + time.perf_counter() - t0, vectors.worker,
                       [e for e in vectors.errors if e][:3])


def mark_unit_failed(cube: Cube, unit: WorkUnit, reason: str) -> None:
    """Record a unit whose tasks failed for good: its undecided samples ``failed`` with ``reason``.

    Only ``status`` and ``error`` are written (a failed cell vouches for no data); cells
    already ``ok`` or ``no_data``, or whose vectors a still-running write has put in, keep
    theirs (:meth:`Cube.mark_failed`).
    """
    cube.mark_failed(unit.start, unit.stop, unit.scale_index, reason)
