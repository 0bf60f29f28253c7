"""Worker-side work of one unit (a chunk of samples x one scale): fetch, then embed + write.

Both functions run on Dask workers. ``fetch_unit`` runs anywhere and returns
the unit's pixels (they stay in worker memory and travel worker to worker);
``embed_unit`` runs on an actor's worker, embeds with the actor's model and
writes the unit's cube chunk, then its status, and returns a small summary:
no pixel or embedding array reaches the client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .cube import FAILED, NO_DATA, OK, PENDING, Cube
from .errors import NoImageryError, PermanentProviderError, SpecError
from .providers.base import Provider, RequestStats
from .providers.coalesce import CoalescedRequest, plan_requests
from .sampling import SampleTable, WorkUnit
from .specs import CampaignSpec

__all__ = ["UnitPixels", "UnitSummary", "fetch_unit", "embed_unit"]

log = logging.getLogger(__name__)


@dataclass
class UnitPixels:
    """Fetched chips of one unit, in sample order; ``None`` where there is no chip."""

    unit: WorkUnit
    images: list[np.ndarray | None]
    rois: list[tuple[float, float, float, float]]
    status: np.ndarray  # int8: OK for fetched chips, NO_DATA or FAILED otherwise
    errors: list[str]
    valid_fraction: np.ndarray
    requests: dict[str, int]
    fetch_s: float


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
    first (so ``planned + reused`` is the number of samples answered).

    No imagery and permanent errors are recorded per sample (for a coalesced
    request, on every sample it serves); a transient error that survived the
    provider's retries fails the task, so Dask re-runs it.

    ``only`` (indices into the unit) fetches just those samples, e.g. the cells a
    ``retry_failed`` run re-does; the others are returned :data:`PENDING` ("not
    touched"), which :meth:`Cube.write_unit` leaves as stored.
    """
    t0 = time.perf_counter()
    n = len(table)
    image_size = spec.model.image_size
    fps = [table.footprint(i, unit.scale_m, image_size, spec.buffer_m) for i in range(n)]
    sensor = spec.sensor_at(unit.scale_m)
    wanted = list(range(n)) if only is None else sorted({int(i) for i in only})
    if wanted and not 0 <= wanted[0] <= wanted[-1] < n:
        raise SpecError("only", only, f"indices into the unit's {n} samples")
    if coalesce:
        plan = [CoalescedRequest(r.grid, tuple(wanted[k] for k in r.members))
                for r in plan_requests([fps[i].grid for i in wanted], len(sensor.bands))]
    else:
        plan = [CoalescedRequest(fps[i].grid, (i,)) for i in wanted]
    limiter = getattr(provider, "limiter", None)
    if limiter is not None:
        # A distributed.Semaphore binds to the worker of the thread that first uses it:
        # bind it here, on the task's thread, before the fetch threads use it.
        limiter.register()
    stats = getattr(provider, "stats", None)
    before = stats.as_dict() if isinstance(stats, RequestStats) else {}

    def one(request: CoalescedRequest):
        """Member patches of one request (cropped here, so the large answer is freed early)."""
        try:
            patch = provider.fetch(request.grid, sensor, spec.temporal)
        except NoImageryError as e:
            return None, ("no_data", str(e))
        except PermanentProviderError as e:
            return None, ("failed", str(e))
        return [patch if fps[i].grid == patch.grid else patch.crop_to(fps[i].grid)
                for i in request.members], None

    workers = max(1, min(threads, len(plan)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool:
        results = list(pool.map(one, plan))
    status = np.full(n, PENDING, np.int8)
    status[wanted] = OK
    errors = [""] * n
    images: list[np.ndarray | None] = [None] * n
    valid = np.zeros(n, np.float32)
    for request, (patches, problem) in zip(plan, results):
        if problem is not None:
            status[list(request.members)] = NO_DATA if problem[0] == "no_data" else FAILED
            for i in request.members:
                errors[i] = problem[1][:200]
            continue
        for i, patch in zip(request.members, patches):
            if patch.valid_fraction == 0:
                status[i], errors[i] = NO_DATA, "every pixel of the composite is masked"
            else:
                images[i], valid[i] = patch.data, patch.valid_fraction
    reused = len(wanted) - len(plan)
    if reused and isinstance(stats, RequestStats):
        stats.add(reused=reused)
    after = stats.as_dict() if isinstance(stats, RequestStats) else {}
    requests = {k: after[k] - before.get(k, 0) for k in after}
    if reused:
        log.debug("%s: %d samples in %d requests", unit.key, len(wanted), len(plan))
    return UnitPixels(unit, images, [fp.roi for fp in fps], status, errors, valid, requests,
                      time.perf_counter() - t0)


def embed_unit(pixels: UnitPixels, actor_key: str, cube: Cube, spec: CampaignSpec) -> UnitSummary:
    """Embed the fetched chips with the local actor's model and write the unit's chunk.

    Data first, status last: a crash in between leaves the unit as it was. Cells the
    fetch did not touch (:data:`PENDING`) and cells already decided in the cube keep
    what is stored (:meth:`Cube.write_unit`).
    """
    from distributed import get_worker

    from .actors import local_actor

    t0 = time.perf_counter()
    unit = pixels.unit
    n = len(pixels.images)
    ok = np.flatnonzero(pixels.status == OK)
    D = cube.embed_dim
    vectors = np.full((n, D), np.nan, np.float32)
    input_res = np.full(n, np.nan, np.float32)
    grid = None
    if cube.grid_shape is not None:
        grid = np.full((n, D) + tuple(cube.grid_shape), np.nan, np.float32)
    if len(ok):
        res = local_actor(actor_key).embed([pixels.images[i] for i in ok], unit.scale_m,
                                       output=spec.output, roi=[pixels.rois[i] for i in ok])
        vectors[ok] = res.vectors
        input_res[ok] = res.input_res_m
        if grid is not None:
            for j, i in enumerate(ok):
                g = res.grids[j]
                grid[i, :, :g.shape[1], :g.shape[2]] = g
    cube.write_unit(unit.start, unit.stop, unit.scale_index, embedding=vectors, status=pixels.status,
                    input_res_m=input_res, valid_fraction=pixels.valid_fraction, error=pixels.errors,
                    grid=grid)
    counts = {"ok": int((pixels.status == OK).sum()), "no_data": int((pixels.status == NO_DATA).sum()),
              "failed": int((pixels.status == FAILED).sum()),
              "untouched": int((pixels.status == PENDING).sum())}
    return UnitSummary(unit, counts, pixels.requests, pixels.fetch_s, time.perf_counter() - t0,
                       get_worker().address, [e for e in pixels.errors if e][:3])


def mark_unit_failed(cube: Cube, unit: WorkUnit, reason: str) -> None:
    """Record a unit whose tasks failed for good: its samples ``failed`` with ``reason``.

    Cells already ``ok`` (or ``no_data``) keep their data and status: :meth:`Cube.write_unit`
    never overwrites a decided cell.
    """
    n = unit.stop - unit.start
    D = cube.embed_dim
    grid = None if cube.grid_shape is None else np.full((n, D) + tuple(cube.grid_shape), np.nan, np.float32)
    cube.write_unit(unit.start, unit.stop, unit.scale_index, embedding=np.full((n, D), np.nan, np.float32),
                    status=np.full(n, FAILED, np.int8), input_res_m=np.full(n, np.nan, np.float32),
                    valid_fraction=np.zeros(n, np.float32), error=[reason[:200]] * n, grid=grid)
