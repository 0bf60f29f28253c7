"""Serve planned (coalesced) requests: one patch, or one reason, per footprint.

The single place where a plan of :class:`~.coalesce.CoalescedRequest` becomes
pixels, shared by campaign units (:func:`rsembed_dask.campaign.tasks.fetch_unit`) and the
single-ROI API (:func:`rsembed_dask.api.get_embeddings_batch`). When Earth Engine
gives up on a coalesced request's work (``Computation timed out.``, ``User memory
limit exceeded.``) the request is split in two halves of its members
(:func:`~.coalesce.split_request`) and each half is fetched, down to single
footprints; only a single footprint that still fails is reported failed.

Examples
--------
>>> results = fetch_coalesced(provider, grids, plan, sensor, temporal)   # doctest: +SKIP
>>> [r if isinstance(r, Exception) else r.valid_fraction for r in results]   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ..errors import ComputationTooLargeError, NoImageryError, PermanentProviderError, SpecError
from ..geo.grid import PixelGrid
from ..specs import SensorSpec, TemporalSpec
from .base import Patch, Provider, RequestStats
from .coalesce import CoalescedRequest, split_request

__all__ = ["fetch_coalesced", "MemberResult"]

log = logging.getLogger(__name__)

#: A footprint's outcome: its patch, or the error that left it without one.
MemberResult = Patch | NoImageryError | PermanentProviderError


def fetch_coalesced(provider: Provider, grids: Sequence[PixelGrid], plan: Sequence[CoalescedRequest],
                    sensor: SensorSpec, temporal: TemporalSpec, threads: int = 8,
                    thread_name: str = "fetch") -> list[MemberResult]:
    """Fetch every request of ``plan`` and crop each member's patch from its answer.

    Parameters
    ----------
    provider : Provider
    grids : sequence of PixelGrid
        The footprints; ``plan`` refers to them by index.
    plan : sequence of CoalescedRequest
        Every index of ``grids`` in exactly one request (:func:`~.coalesce.plan_requests`).
    sensor, temporal
        What to fetch.
    threads : int
        Requests in flight at once (the halves of a split request are fetched in
        the thread of the request they replace).

    Returns
    -------
    list
        Per footprint, in ``grids`` order: its :class:`~.base.Patch`, or the
        :class:`NoImageryError` / :class:`PermanentProviderError` that left it without
        one (for a coalesced request, shared by every member it served). The
        provider's ``RequestStats`` count ``split`` requests and ``reused``
        footprints (answered by a final request beyond its first member), so
        ``planned - split + reused`` is the number of footprints.

    Raises
    ------
    TransientProviderError
        Retries were exhausted (the caller's unit is retried as a whole); requests
        not yet started are then not sent.
    ConfigurationError
        Credentials, project, collection or bands cannot work: nothing else will.
    """
    grids = list(grids)
    out: list[MemberResult | None] = [None] * len(grids)
    stats = getattr(provider, "stats", None)

    def serve(request: CoalescedRequest) -> list[tuple[int, MemberResult]]:
        try:
            patch = provider.fetch(request.grid, sensor, temporal)
        except ComputationTooLargeError as e:
            if len(request.members) == 1:
                return [(request.members[0], e)]
            halves = split_request(request, grids)
            if isinstance(stats, RequestStats):
                # The provider counted the request failed; it is split (its footprints asked again).
                stats.add(split=1, failed=-1)
            log.info("Earth Engine gave up on a %dx%d px request for %d footprints; fetching halves of %d "
                     "and %d", request.grid.height, request.grid.width, len(request.members),
                     len(halves[0].members), len(halves[1].members))
            return serve(halves[0]) + serve(halves[1])
        except (NoImageryError, PermanentProviderError) as e:
            reuse(request)
            return [(i, e) for i in request.members]
        reuse(request)
        # Cropped here, in the fetching thread, so the large answer is freed early.
        return [(i, patch if grids[i] == patch.grid else patch.crop_to(grids[i])) for i in request.members]

    def reuse(request: CoalescedRequest) -> None:
        """Count the footprints a final request answered beyond its first."""
        if len(request.members) > 1 and isinstance(stats, RequestStats):
            stats.add(reused=len(request.members) - 1)

    abort = threading.Event()

    def guarded(request: CoalescedRequest) -> list[tuple[int, MemberResult]]:
        """``serve``, unless another request already failed the whole call (no requests wasted)."""
        if abort.is_set():
            return []
        try:
            return serve(request)
        except BaseException:
            abort.set()
            raise

    if len(plan) == 1:
        results = [serve(plan[0])]
    else:
        workers = max(1, min(threads, len(plan)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name) as pool:
            results = list(pool.map(guarded, plan))
    for group in results:
        for i, result in group:
            out[i] = result
    missing = [i for i, r in enumerate(out) if r is None]
    if missing:
        raise SpecError("plan", f"{len(plan)} requests missing footprints {missing[:5]}",
                        "every index of grids in exactly one request")
    return out  # type: ignore[return-value]
