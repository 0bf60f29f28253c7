"""How a campaign runs: the runtime knobs of ``run_campaign``, in one frozen :class:`RunOptions`.

What a campaign embeds (samples or a tiling, scales, window, model, output) makes its cube
and is checked against it on resume; these knobs do not: they change how a run goes about
it (window size, retries, concurrency, waiting, what a run may change in an existing cube).

Examples
--------
>>> opts = RunOptions(retry_failed=True, ee_concurrency=10)
>>> opts.replace(progress=False).progress
False
>>> RunOptions(fetch_threads=0)
Traceback (most recent call last):
...
rsembed_dask.errors.SpecError: RunOptions.fetch_threads=0 is invalid: expected an integer >= 1
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._validate import number, strict_int
from ..errors import SpecError
from ..providers.limits import EE_CONCURRENCY

__all__ = ["RunOptions", "GPU_WAIT_S", "FETCH_MEMORY_MB"]

#: Seconds to wait for a GPU worker when there is none (at start, or after losing the last one).
GPU_WAIT_S = 300.0
#: MiB of fetched chips (not yet embedded) a campaign holds on its workers at most, by default.
FETCH_MEMORY_MB = 2048


@dataclass(frozen=True)
class RunOptions:
    """The runtime knobs of a campaign run (none of them is part of the cube's identity).

    Attributes
    ----------
    max_in_flight : int or None
        Units in flight at most (fetching, fetched, embedding). None: as many as
        ``ee_concurrency`` units fetching and ``fetch_memory_mb`` of fetched chips allow
        (at least 4 per ready actor): the window follows the cluster and the quota.
    fetch_threads : int
        Threads per fetch task (concurrent requests of one unit).
    unit_retries : int
        Times Dask re-runs a fetch task that raised before its unit is marked failed.
    ee_concurrency : int
        Earth Engine requests in flight across the whole cluster (default 40, Earth
        Engine's per-project quota), enforced with a cluster-wide semaphore; also the
        units fetching at once (each holds at least one request).
    ee_requests_per_s : float or None
        Earth Engine requests started per second across the whole cluster (Earth Engine's
        per-project quota is 100); None: not limited. Enforced with a cluster-wide token
        bucket (:class:`~rsembed_dask.cluster.local.ClusterRateLimit`).
    fetch_memory_mb : int
        Memory budget (MiB) for chips fetched and not yet embedded, held on the workers:
        caps the units in flight when ``max_in_flight`` is None.
    coalesce : bool
        Serve neighbouring footprints of a unit with one request, cropped per sample.
    progress : bool
        Show a progress bar and print the dashboard link.
    summary : bool or None
        Print the final summary (None: as ``progress``; the CLI always prints it).
    gpu_wait_s : float
        When no worker declares ``GPU=1``, wait this long for one before giving up.
    retry_failed : bool
        Also re-run units holding ``failed`` cells.
    retry_no_data : bool
        Also re-run ``no_data`` cells (e.g. a window reaching recent dates whose scenes
        were not ingested yet); an ``ok`` cell is never re-run nor changed.
    repair : bool
        Read the whole store first: restore unreadable metadata and damaged coordinates,
        and run again every unit found damaged (see :mod:`rsembed_dask.store.repair`).
    update : bool
        Re-embed samples of an existing cube whose geometry changed (same id).
    append : bool
        Add ids an existing cube does not hold, as new chunks.
    append_windows : bool
        Add date windows an existing cube with a ``time`` dimension does not hold, along ``time``
        (no existing chunk is rewritten); without it a run with more windows than the cube is refused.
    on_unit : callable or None
        Called with each finished unit's :class:`~rsembed_dask.campaign.tasks.UnitSummary`.
    break_lock : bool
        Take the cube's writer lock over at once, whoever holds it (the holder is named).
    wait_lock_s : float
        Seconds to wait for a live run holding the cube's lock to finish (default 0: give up
        at once, :class:`~rsembed_dask.errors.StoreLockedError`).
    lock_stale_s : float or None
        Seconds without a heartbeat after which a lock is taken over, and after which this
        run stops when it cannot confirm its own (None: 60 s; heartbeats every sixth of it).
    """

    max_in_flight: int | None = None
    fetch_threads: int = 8
    unit_retries: int = 2
    ee_concurrency: int = EE_CONCURRENCY
    ee_requests_per_s: float | None = None
    fetch_memory_mb: int = FETCH_MEMORY_MB
    coalesce: bool = True
    progress: bool = True
    summary: bool | None = None
    gpu_wait_s: float = GPU_WAIT_S
    retry_failed: bool = False
    retry_no_data: bool = False
    repair: bool = False
    update: bool = False
    append: bool = False
    append_windows: bool = False
    on_unit: Callable[[Any], None] | None = None
    break_lock: bool = False
    wait_lock_s: float = 0.0
    lock_stale_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_in_flight is not None:
            strict_int("RunOptions.max_in_flight", self.max_in_flight)
        strict_int("RunOptions.fetch_threads", self.fetch_threads)
        strict_int("RunOptions.unit_retries", self.unit_retries, lo=0)
        strict_int("RunOptions.ee_concurrency", self.ee_concurrency)
        strict_int("RunOptions.fetch_memory_mb", self.fetch_memory_mb)
        if self.ee_requests_per_s is not None:
            object.__setattr__(self, "ee_requests_per_s",
                               number("RunOptions.ee_requests_per_s", self.ee_requests_per_s, lo=0.1))
        object.__setattr__(self, "gpu_wait_s", number("RunOptions.gpu_wait_s", self.gpu_wait_s, lo=0))
        object.__setattr__(self, "wait_lock_s", number("RunOptions.wait_lock_s", self.wait_lock_s, lo=0))
        if self.lock_stale_s is not None:
            object.__setattr__(self, "lock_stale_s", number("RunOptions.lock_stale_s", self.lock_stale_s, lo=0))
            if not self.lock_stale_s > 0:
                raise SpecError("RunOptions.lock_stale_s", self.lock_stale_s, "None or a number of seconds > 0")
        for name in ("coalesce", "progress", "retry_failed", "retry_no_data", "repair", "update", "append",
                     "append_windows", "break_lock"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(f"RunOptions.{name}", getattr(self, name), "True or False")
        if self.summary is not None and not isinstance(self.summary, bool):
            raise SpecError("RunOptions.summary", self.summary, "None, True or False")
        if self.on_unit is not None and not callable(self.on_unit):
            raise SpecError("RunOptions.on_unit", self.on_unit, "None or a callable taking a UnitSummary")

    def lock_options(self) -> dict[str, Any]:
        """Keywords of :func:`~rsembed_dask.store.lock.store_lock` for these options."""
        out: dict[str, Any] = {"break_lock": self.break_lock, "wait_s": self.wait_lock_s}
        if self.lock_stale_s is not None:
            out.update(stale_s=self.lock_stale_s, heartbeat_s=self.lock_stale_s / 6)
        return out

    def replace(self, **changes: Any) -> RunOptions:
        """A copy with ``changes`` applied (validated again).

        Raises
        ------
        TypeError
            A name that is not a field (the message lists the fields).
        """
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {unknown}: the run options are "
                            + ", ".join(f.name for f in dataclasses.fields(self)))
        return dataclasses.replace(self, **changes)
