"""The client-side loop of a campaign: a bounded window of units, actor health, retries, progress.

Each unit is three tasks: a fetch (any worker, preferring fetch-only ones), an
embed pinned to an actor's worker (two at a time per GPU, see
:data:`EMBED_TASKS_PER_GPU`), and a write of
the unit's vectors to the cube (preferring fetch-only workers, so that the GPU's
process only feeds the GPU; on the actor's worker for grid cubes, whose token
grids are too large to ship).
When an actor's worker dies the actor is recreated on a live GPU worker and
its units re-run; a unit that lost its worker too often is marked failed. When
no GPU worker is left (the only one was preempted or ran out of memory), the
runner waits ``gpu_wait_s`` for its nanny or the cluster manager to bring one
back. A unit that already holds decided cells (a ``retry_failed`` run, a re-run
after a lost summary) fetches only its pending and failed cells.
"""

from __future__ import annotations

import collections
import logging
import sys
import time
import uuid
from typing import Any

import numpy as np

from ..cluster.local import GPU_RESOURCE, embed_workers, fetch_workers
from ..errors import ProviderError, RsEmbedError, StoreLockedError
from ..sampling.units import WorkUnit
from ..store.layout import FAILED, PENDING
from .actors import start_actor
from .jobs import Job
from .options import RunOptions
from .progress import CampaignReport, ProgressBar
from .tasks import UnitSummary, embed_unit, fetch_unit, mark_unit_failed, write_unit

__all__ = ["Runner"]

log = logging.getLogger(__name__)

#: Units in flight per actor: enough for fetches to run ahead of the model.
UNITS_PER_ACTOR = 4
#: Embed tasks running at once on a GPU worker (each asks for this share of its GPU resource):
#: while one runs its forward, the next unpickles, stacks and pins its chips, so the GPU does
#: not wait for that CPU work between units. The embedder's device lock keeps the forwards
#: one at a time (and GPU memory to one batch's activations).
EMBED_TASKS_PER_GPU = 2
#: Seconds between checks that every actor's worker is alive.
HEALTH_CHECK_S = 1.0
#: Times a unit is re-run after losing its worker before it is marked failed.
MAX_UNIT_ATTEMPTS = 4
#: Seconds to read a finished unit's small summary before taking its worker for lost.
RESULT_TIMEOUT_S = 10.0
#: Seconds between looks for a GPU worker while waiting for one.
GPU_POLL_S = 0.5
#: On an interrupt (Ctrl-C, SIGTERM), seconds to let units already embedding finish their
#: write; the others are cancelled and stay pending. Within a SLURM or Kubernetes grace period.
DRAIN_S = 20.0


class Runner:
    """The client-side loop over the units of one or more jobs, sharing actors and a window.

    Parameters
    ----------
    client : distributed.Client
    provider : Provider
        Sent with every fetch task.
    jobs : list of Job
        Their model specs must agree (one model per campaign).
    report : CampaignReport
        Updated with every finished unit.
    options : RunOptions
        ``max_in_flight``, ``fetch_threads``, ``unit_retries``, ``coalesce``, ``progress``,
        ``on_unit``, and ``gpu_wait_s``: how long to wait for a worker declaring ``GPU=1``
        when there is none, at start or after the last one died, before giving up (the
        units not run stay pending).
    """

    def __init__(self, client: Any, provider: Any, jobs: list[Job], report: CampaignReport,
                 options: RunOptions | None = None, lock: Any = None):
        options = options or RunOptions()
        self.lock = lock  # the cube's StoreLock: checked before each submission
        self.c, self.provider, self.jobs, self.report = client, provider, jobs, report
        self.gpu_wait_s = options.gpu_wait_s
        self.model = jobs[0].spec.model
        self.fetch_threads, self.unit_retries, self.coalesce = (options.fetch_threads, options.unit_retries,
                                                                options.coalesce)
        self.on_unit = options.on_unit
        self.progress_on = options.progress
        self.actors: dict[str, Any] = {}
        self.max_in_flight = options.max_in_flight
        # write future -> (job index, unit, actor address, fetch future, embed future)
        self.inflight: dict[Any, tuple[int, WorkUnit, str, Any, Any]] = {}
        self.attempts: collections.Counter = collections.Counter()
        self.fetch_addrs: list[str] = []
        self._last_check = 0.0
        # Task keys are unique per run, so a second run on the same scheduler never
        # picks up a stale key of an earlier (interrupted) one.
        self.run_token = uuid.uuid4().hex[:8]

    def _ensure_actors(self) -> None:
        live = embed_workers(self.c)
        for addr in [a for a in self.actors if a not in live]:
            log.warning("actor worker %s is gone; re-running its units elsewhere", addr)
            del self.actors[addr]
            self.report.actors_lost += 1
            for fut, (j, unit, a, fetch, _) in list(self.inflight.items()):
                if a == addr:
                    self._cancel(fut, keep_fetch=True)
                    del self.inflight[fut]
                    self._requeue(j, unit, fetch)
        # Fetches prefer fetch-only workers (loosely: any worker may take them when those are
        # gone or busy), so the model's process is not also decoding answers under the GIL.
        self.fetch_addrs = fetch_workers(self.c)
        for addr in live:
            if addr not in self.actors:
                self.actors[addr] = start_actor(self.c, self.model, addr)
                info = self.actors[addr].describe().result()
                # What ran, as the worker resolved it: dtype="auto" and batch_size=None depend on it.
                self.report.models.add(f"{info['device']} {info['precision']} batch {info['batch_size']}")
                self.report.actors_started += 1
        if not self.actors:
            self._wait_for_gpu_worker()
            self._ensure_actors()

    def _wait_for_gpu_worker(self) -> None:
        """Block until some worker declares ``GPU=1``, at most ``gpu_wait_s`` seconds.

        Fetches already submitted keep running meanwhile. Raises RsEmbedError when none
        comes; units not run stay pending in the cube (a rerun resumes them).
        """
        if embed_workers(self.c):
            return
        msg = (f"no worker declares the GPU resource: waiting up to {self.gpu_wait_s:g} s for a GPU "
               f"worker (`dask worker --resources GPU=1`)...")
        if self.progress_on:  # beside the progress bar, where the user looks
            print(msg, flush=True)
        else:
            log.warning(msg)
        t0 = time.monotonic()
        deadline = t0 + self.gpu_wait_s
        while not embed_workers(self.c):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RsEmbedError(
                    f"no worker declares the GPU resource after waiting {self.gpu_wait_s:g} s "
                    f"(gpu_wait_s): start workers with `dask worker --resources GPU=1` (one per GPU), "
                    f"then run the same campaign again: the units not run stay pending and resume")
            time.sleep(min(GPU_POLL_S, left))
        self.report.gpu_wait_s += time.monotonic() - t0
        log.info("a GPU worker is back after %.1f s", time.monotonic() - t0)

    def _requeue(self, j: int, unit: WorkUnit, fetch=None) -> None:
        self.attempts[j, unit] += 1
        self.report.units_rerun += 1
        if self.attempts[j, unit] >= MAX_UNIT_ATTEMPTS:
            mark_unit_failed(self.jobs[j].cube, unit, f"lost its worker {self.attempts[j, unit]} times")
            self.report.units_failed += 1
            self.bar.update(1)
            return
        self.pending.appendleft((j, unit, fetch if fetch is not None and fetch.status != "error" else None))

    def _cells_to_fetch(self, job: Job, unit: WorkUnit) -> list[int] | None:
        """Indices (in the unit) of its pending and failed cells; None when that is all of them."""
        status = job.cube.unit_status(unit.start, unit.scale_index)
        todo = np.flatnonzero(np.isin(status, (PENDING, FAILED)))
        return None if len(todo) == len(status) else todo.tolist()

    def _submit(self, j: int, unit: WorkUnit, fetch) -> None:
        job = self.jobs[j]
        tag = f"{self.run_token}-j{j}-{unit.chunk}-{unit.scale_index}-a{self.attempts[j, unit]}"
        if fetch is None:
            only = self._cells_to_fetch(job, unit)
            if only is not None and not only:
                # Every cell is decided already (e.g. a re-run whose first write did land).
                log.debug("unit %s: nothing left to fetch", unit.key)
                self.report.units_done += 1
                self.bar.update(1, self.report.postfix())
                return
            where = {"workers": self.fetch_addrs, "allow_other_workers": True} if self.fetch_addrs else {}
            fetch = self.c.submit(fetch_unit, self.provider,
                                  job.table.slice(unit.start, unit.stop), unit, job.spec,
                                  self.fetch_threads, coalesce=self.coalesce, only=only, key=f"fetch-{tag}",
                                  retries=self.unit_retries, pure=False, **where)
        addr = min(self.actors, key=lambda a: sum(1 for v in self.inflight.values() if v[2] == a))
        cube = job.cube
        embed = self.c.submit(embed_unit, fetch, self.actors[addr].key, cube.embed_dim, cube.grid_shape,
                              job.spec.output, key=f"embed-{tag}-{addr.rsplit(':', 1)[-1]}",
                              workers=[addr], allow_other_workers=False,
                              resources={GPU_RESOURCE: 1 / EMBED_TASKS_PER_GPU}, pure=False)
        if cube.grid_shape is not None:  # token grids: n x D x gy x gx floats, written where they are
            where = {"workers": [addr], "allow_other_workers": True}
        else:  # n x D floats: cheap to ship, and the write's CPU stays off the GPU's process
            where = {"workers": self.fetch_addrs, "allow_other_workers": True} if self.fetch_addrs else {}
        fut = self.c.submit(write_unit, embed, cube, key=f"write-{tag}", pure=False, **where)
        self.inflight[fut] = (j, unit, addr, fetch, embed)

    def run(self, todo: list[tuple[int, WorkUnit]]) -> None:
        """Run ``(job index, unit)`` pairs to completion (or failure recorded in the cube)."""
        from distributed import wait

        if self.progress_on:
            print(f"Dask dashboard: {self.c.dashboard_link}")
        self.bar = ProgressBar(len(todo), enabled=self.progress_on)
        self.pending: collections.deque = collections.deque((j, u, None) for j, u in todo)
        t_start = time.perf_counter()
        try:
            self._ensure_actors()
            # Throughput is counted from here: model loading is reported apart (startup_s).
            t0 = time.perf_counter()
            self.report.startup_s = t0 - t_start
            window = self.max_in_flight or UNITS_PER_ACTOR * len(self.actors)
            while self.pending or self.inflight:
                if self.lock is not None:
                    self.lock.check()  # lost to another run: submit nothing more, drain, exit 3
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
        except (KeyboardInterrupt, StoreLockedError):
            self._drain()
            raise
        finally:
            for fut in self.inflight:
                self._cancel(fut)
            self.bar.close()
            self.report.elapsed_s = time.perf_counter() - t_start - self.report.startup_s

    def _cancel(self, fut, *, keep_fetch: bool = False) -> None:
        """Cancel an in-flight unit's write task and its embed task (and its fetch, unless kept for a re-run)."""
        _, _, _, fetch, embed = self.inflight[fut]
        fut.cancel()
        embed.cancel()
        if not keep_fetch:
            fetch.cancel()

    def _drain(self, grace_s: float = DRAIN_S) -> None:
        """After an interrupt: submit nothing more, let units that may be writing finish.

        A unit whose fetch is done may be embedding and writing: it gets ``grace_s``
        seconds, so no unit is cut between its data and the status vouching for it.
        Everything else is cancelled (its cells stay pending; a rerun resumes them). A
        second interrupt stops the wait.
        """
        from distributed import wait

        self.pending.clear()
        writing = []
        for fut, (_, _, _, fetch, _) in list(self.inflight.items()):
            if fetch.status == "finished" and not fut.done():
                writing.append(fut)
            elif not fut.done():
                self._cancel(fut)
        deadline = time.monotonic() + grace_s
        if writing:
            msg = (f"interrupted: letting {len(writing)} unit(s) being embedded finish their writes "
                   f"(at most {grace_s:g} s; interrupt again to stop now)")
            print(msg, file=sys.stderr, flush=True)
            try:
                wait(writing, timeout=grace_s)
            except TimeoutError:
                log.warning("interrupted: units still embedding after %g s are cancelled and stay pending",
                            grace_s)
        # Cancelled tasks already running go on in their worker threads (Dask cannot stop a
        # thread): a fetch holding an Earth Engine lease, say. Wait for them too, so that
        # the cluster is not closed under them (lease releases that fail, killed workers).
        while time.monotonic() < deadline and self._tasks_running():
            time.sleep(0.2)
        for fut in [f for f in self.inflight if f.status == "finished"]:
            self._finish(fut)  # counted in the report; the rest is cancelled by run()

    def _tasks_running(self) -> int:
        """Tasks of this run still running in worker threads (cancelled ones included)."""
        counts = self.c.run(_running_tasks, token=self.run_token, on_error="ignore")
        return sum(n for n in counts.values() if isinstance(n, int))

    def _finish(self, fut) -> None:
        from distributed import KilledWorker
        from distributed.client import FutureCancelledError
        from distributed.comm import CommClosedError

        j, unit, addr, fetch, _ = self.inflight.pop(fut)
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
                self._requeue(j, unit)
                return
            self.report.add(summary)
            self.bar.update(1, self.report.postfix())
            if self.on_unit is not None:
                self.on_unit(summary)
            return
        if fut.status != "error":
            # "cancelled", or "lost": its result went down with its worker.
            fut.cancel()
            self._requeue(j, unit)
            return
        exc = fut.exception(timeout=RESULT_TIMEOUT_S)
        if isinstance(exc, ProviderError):
            # Retries are spent (the provider's, then Dask's per unit): record, go on.
            log.warning("unit %s failed: %s", unit.key, exc)
            mark_unit_failed(self.jobs[j].cube, unit, f"{type(exc).__name__}: {exc}")
            self.report.units_failed += 1
            self.bar.update(1, self.report.postfix())
        elif isinstance(exc, (FutureCancelledError, KilledWorker, CommClosedError)):
            # The unit's worker died: run it again (its fetch again too if that was lost).
            self._requeue(j, unit, None if isinstance(exc, KilledWorker) else fetch)
        else:
            raise exc


def _running_tasks(token: str, dask_worker=None) -> int:
    """On a worker (``client.run``): its running tasks whose key holds ``token``."""
    state = dask_worker.state
    return sum(1 for ts in (*state.executing, *state.long_running) if token in str(ts.key))
