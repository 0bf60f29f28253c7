"""The client-side loop of a campaign: a window that follows the cluster, actor health, retries, progress.

Each unit is three tasks: a fetch (any worker, preferring fetch-only ones), an
embed pinned to an actor's worker (two at a time per GPU, see
:data:`EMBED_TASKS_PER_GPU`), and a write of the unit's vectors to the cube
(preferring fetch-only workers, so that the GPU's process only feeds the GPU; on
the actor's worker for grid cubes, whose token grids are too large to ship).

The window is recomputed on every turn of the loop:

- fetches run ahead of the model up to the Earth Engine bound (1.5 x ``ee_concurrency``
  units fetching at once: each holds at least one request, and those beyond the bound
  wait on their worker for a lease, ready to start) and a memory budget for
  the chips fetched and not yet embedded (``fetch_memory_mb``), whatever the number
  of GPUs; ``max_in_flight`` caps the units in flight in all;
- embed tasks go only to workers whose actor is *ready*, :data:`UNITS_PER_ACTOR` at a
  time each, so a GPU worker that joins mid-run gets work as soon as its model is loaded.

Actors start without blocking the loop: their creation is a future polled on each
health check (every :data:`HEALTH_CHECK_S`), while the other actors are fed. Faults stay
where they happen: a unit whose embed fails is re-run on another actor; a worker whose
actor fails :data:`QUARANTINE_AFTER` times (construction or forward) is quarantined (no
more embed tasks, named in the progress line and the summary). A worker that dies, also
while its model loads, is noticed on the next health check and its units re-run; a worker
restarting under the same address is a new worker. The campaign stops only when no healthy
GPU worker is left for ``gpu_wait_s``, naming the workers that failed and why. A unit that
already holds decided cells (a ``retry_failed`` run, a re-run after a lost summary) fetches
only the cells left to do.
"""

from __future__ import annotations

import collections
import logging
import math
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..cluster.local import GPU_RESOURCE, worker_roster
from ..errors import ProviderError, RsEmbedError, StoreLockedError
from ..sampling.units import WorkUnit
from ..store.layout import FAILED, NO_DATA, PENDING
from .actors import ACTOR_PRIORITY, describe_actor, submit_actor
from .jobs import Job
from .options import RunOptions
from .progress import CampaignReport, ProgressBar
from .tasks import UnitSummary, embed_unit, fetch_unit, mark_unit_failed, write_unit

__all__ = ["Runner"]

log = logging.getLogger(__name__)

#: Embed tasks assigned at once to one ready actor (queued on its worker: the next unit is
#: there when a forward ends).
UNITS_PER_ACTOR = 4
#: Units fetching at once, per request of the Earth Engine bound: those beyond the bound wait
#: for a lease of the cluster semaphore on their worker, so a request starts as soon as
#: another ends (not after a round trip through the client and the scheduler).
FETCH_AHEAD = 1.5
#: Embed tasks running at once on a GPU worker (each asks for this share of its GPU resource):
#: while one runs its forward, the next unpickles, stacks and pins its chips, so the GPU does
#: not wait for that CPU work between units. The embedder's device lock keeps the forwards
#: one at a time (and GPU memory to one batch's activations).
EMBED_TASKS_PER_GPU = 2
#: Seconds between checks of the cluster (workers come, go, restart; actors load).
HEALTH_CHECK_S = 1.0
#: Times a unit is re-run (its worker lost, or its actor failed) before it is marked failed.
MAX_UNIT_ATTEMPTS = 4
#: Failures of a worker's actor (construction or forward) after which the worker gets no more work.
QUARANTINE_AFTER = 2
#: Seconds to read a finished unit's small summary before taking its worker for lost.
RESULT_TIMEOUT_S = 10.0
#: On an interrupt (Ctrl-C, SIGTERM), seconds to let units already embedding finish their
#: write; the others are cancelled and stay pending. Within a SLURM or Kubernetes grace period.
DRAIN_S = 20.0
#: Characters of a worker's last error kept for the summary.
ERROR_CHARS = 200

#: States of a GPU worker's actor.
LOADING, READY, QUARANTINED = "loading", "ready", "quarantined"


@dataclass(eq=False)
class _Slot:
    """One GPU worker (one server: a restart under the same address is another slot) and its actor."""

    addr: str
    server_id: str
    name: str
    record: dict[str, Any]  # this worker's entry in the report (units, embeddings, load_s, state, error)
    fut: Any = None  # the actor's creation future (its key is the actor's key)
    probe: Any = None  # describe task, submitted once the actor exists
    state: str = LOADING
    failures: int = 0
    last_error: str = ""
    t_start: float = field(default_factory=time.monotonic)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.addr})" if self.name and self.name != self.addr else self.addr


@dataclass(eq=False)
class _Unit:
    """A unit in flight: its fetch, and once given to an actor, its embed and write."""

    j: int
    unit: WorkUnit
    fetch: Any
    slot: _Slot | None = None
    embed: Any = None
    write: Any = None


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
        ``max_in_flight``, ``ee_concurrency``, ``fetch_memory_mb``, ``fetch_threads``,
        ``unit_retries``, ``coalesce``, ``progress``, ``on_unit``, and ``gpu_wait_s``: how
        long to wait for a healthy worker declaring ``GPU=1`` when there is none, at start or
        after the last one died or was quarantined, before giving up (the units not run stay
        pending).
    """

    def __init__(self, client: Any, provider: Any, jobs: list[Job], report: CampaignReport,
                 options: RunOptions | None = None, lock: Any = None):
        options = options or RunOptions()
        self.lock = lock  # the cube's StoreLock: checked before each submission
        self.c, self.provider, self.jobs, self.report = client, provider, jobs, report
        self.opts = options
        self.gpu_wait_s = options.gpu_wait_s
        self.model = jobs[0].spec.model
        self.fetch_threads, self.unit_retries, self.coalesce = (options.fetch_threads, options.unit_retries,
                                                                options.coalesce)
        self.on_unit = options.on_unit
        self.progress_on = options.progress
        self.slots: dict[str, _Slot] = {}  # by server id
        self.flight: list[_Unit] = []
        self.attempts: collections.Counter = collections.Counter()
        self.fetch_addrs: list[str] = []
        self.fetch_slots = 0  # threads of the fetch-only workers
        self.pending: collections.deque = collections.deque()
        self._last_check = 0.0
        self._no_gpu_since: float | None = None
        self._t_run = time.perf_counter()
        self._ready_once = False
        # Task keys are unique per run, so a second run on the same scheduler never
        # picks up a stale key of an earlier (interrupted) one.
        self.run_token = uuid.uuid4().hex[:8]

    # -- the window ---------------------------------------------------------------------------

    def _unit_bytes(self, j: int, unit: WorkUnit) -> int:
        """Bytes of one unit's fetched chips (uint8, bands x image_size^2 per sample)."""
        spec = self.jobs[j].spec
        size = spec.model.image_size
        return max(1, (unit.stop - unit.start) * len(spec.sensor_at(unit.scale_m).bands) * size * size)

    def window(self) -> tuple[int, int]:
        """``(units fetching at most, units in flight at most)`` now.

        Fetching: :data:`FETCH_AHEAD` times the Earth Engine bound (a unit holds at least
        one request), at most the threads of the fetch-only workers when there are some. In flight
        (fetching, fetched, embedding): what the memory budget for fetched chips holds,
        at least the actors' share, and at most ``max_in_flight`` when given.
        """
        ready = sum(1 for s in self.slots.values() if s.state == READY)
        fetching = math.ceil(FETCH_AHEAD * self.opts.ee_concurrency)
        if self.fetch_slots:
            # No more than the fetch workers' threads: a fetch past them would wait for one, or be
            # stolen by a GPU worker (whose threads feed the model).
            fetching = min(fetching, self.fetch_slots)
        if self.pending:
            j, unit, _ = self.pending[0]
            by_memory = self.opts.fetch_memory_mb * 2**20 // self._unit_bytes(j, unit)
        else:
            by_memory = fetching
        total = max(int(by_memory), UNITS_PER_ACTOR * max(ready, 1))
        if self.opts.max_in_flight is not None:
            total = self.opts.max_in_flight
        return min(fetching, total), total

    def _fill(self) -> None:
        """Submit fetches up to the window; hand fetched (or fetching) units to ready actors."""
        max_fetching, max_total = self.window()
        fetching = sum(1 for u in self.flight if u.slot is None and not u.fetch.done())
        while self.pending and len(self.flight) < max_total and fetching < max_fetching:
            if self._start(*self.pending.popleft()):
                fetching += 1
        ready = [s for s in self.slots.values() if s.state == READY]
        if not ready:
            return
        load = collections.Counter(u.slot.server_id for u in self.flight if u.slot is not None)
        # Oldest first: those whose fetch is done (or nearly) go to the model first.
        for u in sorted((u for u in self.flight if u.slot is None), key=lambda u: not u.fetch.done()):
            # Least loaded first; ties to the one given fewer units (fetch-bound, all idle: in turn).
            slot = min(ready, key=lambda s: (load[s.server_id], s.record["assigned"]))
            if load[slot.server_id] >= UNITS_PER_ACTOR:
                break
            self._assign(u, slot)
            load[slot.server_id] += 1

    def _cells_to_fetch(self, job: Job, unit: WorkUnit) -> list[int] | None:
        """Indices (in the unit) of the cells to run; None when that is all of them."""
        status = job.cube.unit_status(unit.start, unit.scale_index)
        todo_codes = (PENDING, FAILED, NO_DATA) if self.opts.retry_no_data else (PENDING, FAILED)
        if self.opts.retry_no_data and not self.opts.retry_failed:
            todo_codes = (PENDING, NO_DATA)
        todo = np.flatnonzero(np.isin(status, todo_codes))
        return None if len(todo) == len(status) else todo.tolist()

    def _tag(self, j: int, unit: WorkUnit) -> str:
        return f"{self.run_token}-j{j}-{unit.chunk}-{unit.scale_index}-a{self.attempts[j, unit]}"

    def _start(self, j: int, unit: WorkUnit, fetch) -> bool:
        """Put a unit in flight (its fetch submitted unless kept from an earlier attempt)."""
        job = self.jobs[j]
        if fetch is None:
            only = self._cells_to_fetch(job, unit)
            if only is not None and not only:
                # Every cell is decided already (e.g. a re-run whose first write did land).
                log.debug("unit %s: nothing left to fetch", unit.key)
                self.report.units_done += 1
                self.bar.update(1, self.report.postfix())
                return False
            where = {"workers": self.fetch_addrs, "allow_other_workers": True} if self.fetch_addrs else {}
            assert job.table is not None, "a job with units to run has its sample table (plan_samples)"
            fetch = self.c.submit(fetch_unit, self.provider,
                                  job.table.slice(unit.start, unit.stop), unit, job.spec,
                                  self.fetch_threads, coalesce=self.coalesce, only=only,
                                  key=f"fetch-{self._tag(j, unit)}", retries=self.unit_retries, pure=False,
                                  **where)
        self.flight.append(_Unit(j, unit, fetch))
        return True

    def _assign(self, u: _Unit, slot: _Slot) -> None:
        """Submit the unit's embed on ``slot``'s actor, and its write."""
        cube = self.jobs[u.j].cube
        tag = self._tag(u.j, u.unit)
        u.slot = slot
        slot.record["assigned"] += 1
        u.embed = self.c.submit(embed_unit, u.fetch, slot.fut.key, cube.embed_dim, cube.grid_shape,
                                self.jobs[u.j].spec.output, key=f"embed-{tag}-{slot.addr.rsplit(':', 1)[-1]}",
                                workers=[slot.addr], allow_other_workers=False,
                                resources={GPU_RESOURCE: 1 / EMBED_TASKS_PER_GPU}, pure=False)
        if cube.grid_shape is not None:  # token grids: n x D x gy x gx floats, written where they are
            where = {"workers": [slot.addr], "allow_other_workers": True}
        else:  # n x D floats: cheap to ship, and the write's CPU stays off the GPU's process
            where = {"workers": self.fetch_addrs, "allow_other_workers": True} if self.fetch_addrs else {}
        u.write = self.c.submit(write_unit, u.embed, cube, self.opts.retry_no_data, key=f"write-{tag}",
                                pure=False, **where)

    def _unassign(self, u: _Unit) -> None:
        """Take a unit back from its actor (its fetch kept): it goes to the next ready actor."""
        for f in (u.write, u.embed):
            if f is not None:
                f.cancel()
        u.slot = u.embed = u.write = None

    # -- workers and actors -------------------------------------------------------------------

    def _check_workers(self) -> None:
        """Notice workers that joined, left or restarted; start actors; poll those loading."""
        roster = worker_roster(self.c)
        self.fetch_addrs = sorted(a for a, w in roster.items() if not w.gpu)
        self.fetch_slots = sum(roster[a].nthreads for a in self.fetch_addrs)
        live = {w.server_id: a for a, w in roster.items() if w.gpu}
        for sid, slot in list(self.slots.items()):
            if sid not in live:
                self._gone(slot)
        for sid, addr in live.items():
            if sid not in self.slots:
                name = roster[addr].name
                record = {"address": addr, "name": name, "units": 0, "embeddings": 0, "assigned": 0, "load_s": None,
                          "state": LOADING, "error": ""}
                self.report.workers.append(record)
                slot = self.slots[sid] = _Slot(addr, sid, name, record)
                self._create_actor(slot)
        for slot in list(self.slots.values()):
            if slot.state == LOADING:
                self._poll_actor(slot)
        self._check_gpu_left()

    def _create_actor(self, slot: _Slot) -> None:
        slot.state, slot.probe, slot.t_start = LOADING, None, time.monotonic()
        slot.record["state"] = LOADING
        slot.fut = submit_actor(self.c, self.model, slot.addr)

    def _poll_actor(self, slot: _Slot) -> None:
        """Move a loading actor on: created -> described (ready); a failure counts against the worker."""
        if slot.probe is None:
            if slot.fut.status == "finished":
                slot.probe = self.c.submit(describe_actor, slot.fut.key, workers=[slot.addr],
                                           allow_other_workers=False, pure=False, priority=ACTOR_PRIORITY,
                                           key=f"describe-{self.run_token}-{slot.fut.key}")
            elif slot.fut.status == "error":
                self._fault(slot, slot.fut.exception(timeout=RESULT_TIMEOUT_S), "loading its model")
                return
            else:
                return
        if slot.probe.status == "finished":
            info = slot.probe.result(timeout=RESULT_TIMEOUT_S)
            slot.state = slot.record["state"] = READY
            slot.record["load_s"] = round(float(info["load_s"]), 3)
            # What ran, as the worker resolved it: dtype="auto" and batch_size=None depend on it.
            self.report.models.add(f"{info['device']} {info['precision']} batch {info['batch_size']}")
            self.report.actors_started += 1
            log.info("actor ready on %s after %.1f s (model loaded in %.1f s)", slot.label,
                     time.monotonic() - slot.t_start, info["load_s"])
            if not self._ready_once:
                self._ready_once = True
                # Throughput is counted from here: model loading is reported apart (startup_s).
                self.report.startup_s = time.perf_counter() - self._t_run
        elif slot.probe.status == "error":
            self._fault(slot, slot.probe.exception(timeout=RESULT_TIMEOUT_S), "loading its model")

    def _fault(self, slot: _Slot, exc: BaseException | None, doing: str) -> None:
        """An actor failed (construction or forward): count it; quarantine or start it again."""
        slot.failures += 1
        slot.last_error = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS] if exc is not None else "unknown error"
        slot.record["error"] = slot.last_error
        log.warning("GPU worker %s failed %s (%d of %d): %s", slot.label, doing, slot.failures,
                    QUARANTINE_AFTER, slot.last_error)
        if slot.failures >= QUARANTINE_AFTER:
            self._quarantine(slot)
        elif slot.state == LOADING:
            self._release_actor(slot)
            self._create_actor(slot)

    def _quarantine(self, slot: _Slot) -> None:
        slot.state = slot.record["state"] = QUARANTINED
        self.report.quarantined[slot.label] = slot.last_error
        msg = f"GPU worker {slot.label} quarantined after {slot.failures} failures: {slot.last_error}"
        if self.progress_on:
            print(msg, file=sys.stderr, flush=True)
        log.warning(msg)
        for u in self.flight:
            if u.slot is slot and not u.write.done():
                self._unassign(u)
        self._release_actor(slot)
        self._check_gpu_left()

    def _release_actor(self, slot: _Slot) -> None:
        for f in (slot.probe, slot.fut):
            if f is not None:
                f.release()
        slot.fut = slot.probe = None

    def _gone(self, slot: _Slot) -> None:
        """A worker left (or restarted as a new server): re-run its units elsewhere."""
        log.warning("GPU worker %s is gone; re-running its units elsewhere", slot.label)
        del self.slots[slot.server_id]
        if slot.state != QUARANTINED:
            self.report.actors_lost += 1
            slot.record["state"] = "lost"
        for u in list(self.flight):
            if u.slot is slot and not u.write.done():
                self._unassign(u)
                self._count_attempt(u, keep_fetch=True)
        self._release_actor(slot)

    def _check_gpu_left(self) -> None:
        """Start (or stop) the wait for a healthy GPU worker; give up after ``gpu_wait_s``."""
        healthy = [s for s in self.slots.values() if s.state != QUARANTINED]
        now = time.monotonic()
        if healthy:
            if self._no_gpu_since is not None:
                self.report.gpu_wait_s += now - self._no_gpu_since
                log.info("a GPU worker is back after %.1f s", now - self._no_gpu_since)
            self._no_gpu_since = None
            return
        if self._no_gpu_since is None:
            self._no_gpu_since = now
            why = (f" ({len(self.report.quarantined)} quarantined: {self._quarantine_text()})"
                   if self.report.quarantined else "")
            msg = (f"no healthy worker declares the GPU resource{why}: waiting up to {self.gpu_wait_s:g} s "
                   f"for a GPU worker (`dask worker --resources GPU=1`)...")
            if self.progress_on:  # beside the progress bar, where the user looks
                print(msg, flush=True)
            else:
                log.warning(msg)
        elif now - self._no_gpu_since >= self.gpu_wait_s:
            self.report.gpu_wait_s += now - self._no_gpu_since
            if self.report.quarantined:
                raise RsEmbedError(
                    f"no healthy GPU worker left after waiting {self.gpu_wait_s:g} s (gpu_wait_s): "
                    f"quarantined {self._quarantine_text()}; fix or replace those workers (a restarted "
                    f"worker is a new one) and run the same campaign again: the units not run stay pending")
            raise RsEmbedError(
                f"no worker declares the GPU resource after waiting {self.gpu_wait_s:g} s "
                f"(gpu_wait_s): start workers with `dask worker --resources GPU=1` (one per GPU), "
                f"then run the same campaign again: the units not run stay pending and resume")

    def _quarantine_text(self) -> str:
        return "; ".join(f"{k}: {v}" for k, v in self.report.quarantined.items())

    # -- the loop -----------------------------------------------------------------------------

    def run(self, todo: list[tuple[int, WorkUnit]]) -> None:
        """Run ``(job index, unit)`` pairs to completion (or failure recorded in the cube)."""
        from distributed import wait

        if self.progress_on:
            print(f"Dask dashboard: {self.c.dashboard_link}")
        self.bar = ProgressBar(len(todo), enabled=self.progress_on)
        self.pending = collections.deque((j, u, None) for j, u in todo)
        self._t_run = time.perf_counter()
        try:
            while self.pending or self.flight:
                if self.lock is not None:
                    self.lock.check()  # lost to another run: submit nothing more, drain, exit 3
                if time.monotonic() - self._last_check >= HEALTH_CHECK_S:
                    self._last_check = time.monotonic()
                    self._check_workers()
                self._fill()
                watch = [f for f in (u.write if u.write is not None else u.fetch for u in self.flight)
                         if not f.done()]
                watch += [s.probe or s.fut for s in self.slots.values()
                          if s.state == LOADING and (s.probe or s.fut) is not None]
                left = HEALTH_CHECK_S - (time.monotonic() - self._last_check)
                if watch and left > 0:
                    try:
                        wait(watch, timeout=left, return_when="FIRST_COMPLETED")
                    except TimeoutError:  # nothing finished within the health-check period
                        pass
                elif left > 0:
                    time.sleep(min(left, 0.2))
                for u in list(self.flight):
                    if u.write is not None and u.write.done():
                        self._finish(u)
                    elif u.write is None and u.fetch.status in ("error", "cancelled", "lost"):
                        self._fetch_failed(u)
        except (KeyboardInterrupt, StoreLockedError):
            self._drain()
            raise
        finally:
            for u in self.flight:
                self._cancel(u)
            for slot in self.slots.values():
                self._release_actor(slot)
            self.bar.close()
            if not self._ready_once:
                self.report.startup_s = time.perf_counter() - self._t_run
            self.report.elapsed_s = time.perf_counter() - self._t_run - self.report.startup_s

    def _cancel(self, u: _Unit, *, keep_fetch: bool = False) -> None:
        """Cancel an in-flight unit's write and embed tasks (and its fetch, unless kept for a re-run)."""
        for f in (u.write, u.embed):
            if f is not None:
                f.cancel()
        if not keep_fetch:
            u.fetch.cancel()

    def _drain(self, grace_s: float = DRAIN_S) -> None:
        """After an interrupt: submit nothing more, let units that may be writing finish.

        A unit whose fetch is done and that is on an actor may be embedding and writing: it
        gets ``grace_s`` seconds, so no unit is cut between its data and the status vouching
        for it. Everything else is cancelled (its cells stay pending; a rerun resumes them).
        A second interrupt stops the wait.
        """
        from distributed import wait

        self.pending.clear()
        writing = []
        for u in list(self.flight):
            if u.write is not None and u.fetch.status == "finished" and not u.write.done():
                writing.append(u.write)
            elif u.write is None or not u.write.done():
                self._cancel(u)
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
        for u in [u for u in self.flight if u.write is not None and u.write.status == "finished"]:
            self._finish(u)  # counted in the report; the rest is cancelled by run()

    def _tasks_running(self) -> int:
        """Tasks of this run still running in worker threads (cancelled ones included)."""
        counts = self.c.run(_running_tasks, token=self.run_token, on_error="ignore")
        return sum(n for n in counts.values() if isinstance(n, int))

    def _count_attempt(self, u: _Unit, *, keep_fetch: bool) -> None:
        """The unit lost its worker or its actor failed: run it again, or mark it failed after too many."""
        key = (u.j, u.unit)
        self.attempts[key] += 1
        self.report.units_rerun += 1
        if self.attempts[key] >= MAX_UNIT_ATTEMPTS:
            self._cancel(u)
            self.flight.remove(u)
            mark_unit_failed(self.jobs[u.j].cube, u.unit, f"lost its worker or model {self.attempts[key]} times")
            self.report.units_failed += 1
            self.bar.update(1, self.report.postfix())
            return
        if keep_fetch and u.fetch.status in ("pending", "finished"):
            return  # stays in flight, unassigned: the next ready actor takes it
        self._cancel(u)
        self.flight.remove(u)
        self.pending.appendleft((u.j, u.unit, None))

    def _fetch_failed(self, u: _Unit) -> None:
        """A fetch not yet given to an actor ended without a result."""
        from distributed import KilledWorker
        from distributed.client import FutureCancelledError
        from distributed.comm import CommClosedError

        if u.fetch.status != "error":  # cancelled or lost with its worker
            self._count_attempt(u, keep_fetch=False)
            return
        exc = u.fetch.exception(timeout=RESULT_TIMEOUT_S)
        if isinstance(exc, ProviderError):
            self._unit_failed(u, exc)
        elif isinstance(exc, (FutureCancelledError, KilledWorker, CommClosedError)):
            self._count_attempt(u, keep_fetch=False)
        else:
            raise exc

    def _unit_failed(self, u: _Unit, exc: BaseException) -> None:
        # Retries are spent (the provider's, then Dask's per unit): record, go on.
        log.warning("unit %s failed: %s", u.unit.key, exc)
        self.flight.remove(u)
        mark_unit_failed(self.jobs[u.j].cube, u.unit, f"{type(exc).__name__}: {exc}")
        self.report.units_failed += 1
        self.bar.update(1, self.report.postfix())

    def _finish(self, u: _Unit) -> None:
        from distributed import KilledWorker
        from distributed.client import FutureCancelledError
        from distributed.comm import CommClosedError

        fut, slot = u.write, u.slot
        assert fut is not None and slot is not None
        if fut.status == "finished":
            try:
                if not self.c.who_has([fut]).get(fut.key):
                    raise TimeoutError  # its worker is already gone
                summary: UnitSummary = fut.result(timeout=RESULT_TIMEOUT_S)
            except TimeoutError:
                # Finished, but its worker died before the summary was read: the unit is
                # probably written; running it again is safe (same chunk, same data).
                log.warning("unit %s: summary lost with worker %s; running it again", u.unit.key, slot.addr)
                self._unassign(u)
                self._count_attempt(u, keep_fetch=False)
                return
            self.flight.remove(u)
            self.report.add(summary)
            slot.record["units"] += 1
            slot.record["embeddings"] += summary.counts["ok"]
            self.bar.update(1, self.report.postfix())
            if self.on_unit is not None:
                self.on_unit(summary)
            return
        if fut.status != "error":
            # "cancelled", or "lost": its result went down with its worker.
            self._unassign(u)
            self._count_attempt(u, keep_fetch=True)
            return
        if u.fetch.status == "error":  # the fetch's error, carried through embed and write
            self._fetch_failed(u)
            return
        if u.embed.status == "error":
            exc = u.embed.exception(timeout=RESULT_TIMEOUT_S)
            self._unassign(u)
            if isinstance(exc, (FutureCancelledError, KilledWorker, CommClosedError)):
                self._count_attempt(u, keep_fetch=True)
                return
            # The model failed on that worker (a CUDA error, out of memory, a lost actor): the
            # unit runs again on another actor; the worker is quarantined after repeated failures.
            if slot.state != QUARANTINED and slot.server_id in self.slots:
                self._fault(slot, exc, "embedding")
            self._count_attempt(u, keep_fetch=True)
            return
        exc = fut.exception(timeout=RESULT_TIMEOUT_S)
        if isinstance(exc, (FutureCancelledError, KilledWorker, CommClosedError)):
            self._unassign(u)
            self._count_attempt(u, keep_fetch=True)
            return
        raise exc


def _running_tasks(token: str, dask_worker=None) -> int:
    """On a worker (``client.run``): its running tasks whose key holds ``token``."""
    state = dask_worker.state
    return sum(1 for ts in (*state.executing, *state.long_running) if token in str(ts.key))
