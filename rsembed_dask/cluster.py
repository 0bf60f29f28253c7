"""Where the campaign runs: a local cluster by default, or an existing scheduler.

Embed workers declare the resource ``GPU=1`` (one GPU per worker process, pinned
with ``CUDA_VISIBLE_DEVICES``); a machine without GPUs gets one CPU embed worker
that declares the same resource, so the same graph runs everywhere. Fetch-only
workers carry no resource and take the I/O-bound fetch tasks.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from .errors import RsEmbedError, SpecError

log = logging.getLogger(__name__)

__all__ = ["GPU_RESOURCE", "count_gpus", "local_cluster", "connect", "embed_workers", "fetch_workers",
           "ClusterSemaphore"]

GPU_RESOURCE = "GPU"

#: Set in worker processes before they start (glibc reads them once). Dask's nanny sets
#: MALLOC_TRIM_THRESHOLD_=65536, which also switches off glibc's adaptive mmap threshold:
#: every activation buffer of a forward pass is then mmapped, page-faulted and unmapped
#: again, which cost 20 % of CPU inference speed here (test-small, batch 32: 2.13 s vs
#: 1.76 s). Keep buffers up to 32 MiB (glibc's largest mmap threshold) on the heap and
#: trim only large free tops (1.66 s).
WORKER_MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": 2**30, "MALLOC_MMAP_THRESHOLD_": 2**25}


def count_gpus() -> int:
    """Number of NVIDIA GPUs visible to this machine (0 without ``nvidia-smi``).

    Uses ``nvidia-smi -L`` so the client need not import torch or initialise CUDA.
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        log.warning("nvidia-smi failed (%s); assuming no GPUs", exc)
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def local_cluster(*, n_gpus: int | None = None, n_fetch_workers: int = 1, fetch_threads: int = 4,
                  processes: bool = True, dashboard_address: str | None = ":8787",
                  memory_limit: str | int = "auto", silence_logs: int = logging.WARNING,
                  host: str = "127.0.0.1"):
    """A local Dask cluster laid out for embedding campaigns.

    Parameters
    ----------
    n_gpus : int, optional
        Embed workers to start, one per GPU (default: the GPUs found, or one CPU
        embed worker when there are none).
    n_fetch_workers : int
        Workers without the GPU resource, for fetch tasks.
    fetch_threads : int
        Threads per fetch worker.
    processes : bool
        Worker processes (``Nanny``) or in-process threads (tests).
    dashboard_address : str or None
        Where the scheduler serves its dashboard (``None`` disables it).
    host : str
        Interface the scheduler and workers listen on (loopback by default).

    Returns
    -------
    distributed.SpecCluster
    """
    from distributed import Nanny, Scheduler, SpecCluster, Worker

    found = count_gpus() if n_gpus is None else n_gpus
    if found < 0:
        raise SpecError("n_gpus", n_gpus, "a number of GPUs >= 0")
    if n_fetch_workers < 0:
        raise SpecError("n_fetch_workers", n_fetch_workers, "a number of workers >= 0")
    cls = Nanny if processes else Worker
    workers: dict[str, dict[str, Any]] = {}
    base: dict[str, Any] = {"host": host}
    if processes:
        base["memory_limit"] = memory_limit
    for i in range(max(found, 1)):
        opts = dict(base, nthreads=2, resources={GPU_RESOURCE: 1}, name=f"embed-{i}")
        if processes and found:
            opts["env"] = {"CUDA_VISIBLE_DEVICES": str(i)}
        workers[f"embed-{i}"] = {"cls": cls, "options": opts}
    for i in range(n_fetch_workers):
        workers[f"fetch-{i}"] = {"cls": cls, "options": dict(base, nthreads=fetch_threads,
                                                              name=f"fetch-{i}")}
    # Without a dashboard the scheduler still serves health/metrics over HTTP: on a free
    # port, not on 8787 (where it would collide with another cluster's dashboard).
    sched_opts: dict[str, Any] = {"host": host, "dashboard": dashboard_address is not None,
                                  "dashboard_address": dashboard_address or f"{host}:0"}
    scheduler = {"cls": Scheduler, "options": sched_opts}
    log.info("starting local cluster: %d embed worker(s) (%s), %d fetch worker(s)",
             len(workers) - n_fetch_workers, "GPU" if found else "CPU", n_fetch_workers)
    import dask

    prefix = "distributed.nanny.pre-spawn-environ."
    with dask.config.set({prefix + k: v for k, v in WORKER_MALLOC_ENV.items()}):
        return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=silence_logs,
                           name="rsembed-dask")


@contextlib.contextmanager
def connect(client: Any = None, **local_options) -> Iterator[Any]:
    """Yield a ``distributed.Client`` for ``client``.

    ``None`` starts (and afterwards stops) :func:`local_cluster`; a string is a
    scheduler address (``"tcp://host:8786"``); a ``Client`` is used as is; a
    callable is called (only now) for a context manager yielding a Client, e.g.
    ``lambda: start_cluster(recipe)``.
    """
    from distributed import Client

    if callable(client) and not isinstance(client, Client):
        with client() as c:
            yield c
        return
    if client is None:
        cluster = local_cluster(**local_options)
        try:
            with Client(cluster) as c:
                yield c
        finally:
            cluster.close()
        return
    if isinstance(client, Client):
        yield client
        return
    if isinstance(client, str):
        with Client(client) as c:
            yield c
        return
    raise SpecError("client", client, "None, a distributed.Client, a scheduler address string or a "
                                      "callable returning a context manager that yields a Client")


def _workers(client) -> dict[str, Any]:
    """Per-worker information, asked of the scheduler now.

    Not ``client.scheduler_info()``: it returns the client's cached identity, which the
    client's own periodic refresh (without per-worker details) may overwrite between the
    fetch and the return, so a live worker would look gone.
    """
    return client.sync(client.scheduler.identity, n_workers=-1)["workers"]


def fetch_workers(client) -> list[str]:
    """Addresses of the workers without the ``GPU`` resource (fetch-only), sorted."""
    return sorted(addr for addr, w in _workers(client).items()
                  if not w.get("resources", {}).get(GPU_RESOURCE, 0))


def embed_workers(client) -> list[str]:
    """Addresses of the workers that declare the ``GPU`` resource, sorted."""
    return sorted(addr for addr, w in _workers(client).items()
                  if w.get("resources", {}).get(GPU_RESOURCE, 0) >= 1)


# --------------------------------------------------------------------------- cluster-wide bound

#: One ``distributed.Semaphore`` per (worker or client, name, bound), shared by its task threads.
_SEMAPHORES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SEMAPHORES_LOCK = threading.Lock()


class ClusterSemaphore:
    """A cluster-wide bound (``distributed.Semaphore``) whose leases stay alive on every worker.

    A ``distributed.Semaphore`` keeps a lease by refreshing it from a periodic
    callback that its constructor starts on a known event loop. Unpickled inside a
    task it has no loop yet, so the callback never starts: the scheduler takes the
    lease back after ``distributed.scheduler.locks.lease-timeout`` (30 s by default)
    although the request is still running, and another request gets in (the bound
    no longer holds for long requests such as large coalesced composites).

    This wrapper pickles to its name and bound only. :meth:`register`, called on the
    task's thread, builds (once per worker, shared by the worker's threads) a
    ``Semaphore`` bound to that worker's scheduler connection and event loop, which
    starts the refresh there; threads the task starts (a fetch pool) then use it.

    Parameters
    ----------
    name : str
        Name of the semaphore on the scheduler.
    max_leases : int
        Holders at once, across the whole cluster.

    Examples
    --------
    >>> limiter = ClusterSemaphore("rsembed-ee-my-project-40", 40)  # doctest: +SKIP
    >>> with limiter:  # in a task: at most 40 of these blocks run at once, cluster-wide
    ...     send_request()  # doctest: +SKIP
    """

    def __init__(self, name: str, max_leases: int):
        if not (isinstance(max_leases, int) and max_leases >= 1):
            raise SpecError("ClusterSemaphore.max_leases", max_leases, "an integer >= 1")
        self.name, self.max_leases = str(name), max_leases
        self._held = threading.local()
        self._bound = None

    def __reduce__(self):
        return (ClusterSemaphore, (self.name, self.max_leases))

    def __repr__(self) -> str:
        return f"ClusterSemaphore({self.name!r}, max_leases={self.max_leases})"

    def semaphore(self):
        """The ``distributed.Semaphore`` of this thread's worker (or client), registered."""
        from distributed import Semaphore, get_client, get_worker

        try:
            owner = get_worker()
        except ValueError:
            try:
                owner = get_client()
            except ValueError:
                raise RsEmbedError(f"{self!r} is used outside a Dask worker or client: expected a "
                                   f"task on a cluster, or a connected distributed.Client") from None
        with _SEMAPHORES_LOCK:
            per_owner = _SEMAPHORES.setdefault(owner, {})
            sem = per_owner.get((self.name, self.max_leases))
            if sem is None:
                # Given a loop, the constructor starts the lease refresh on it.
                sem = Semaphore(max_leases=self.max_leases, name=self.name,
                                scheduler_rpc=owner.scheduler, loop=owner.loop)
                per_owner[self.name, self.max_leases] = sem
        sem.register()  # once per instance (idempotent on the scheduler)
        return sem

    def register(self) -> None:
        """Bind to this thread's worker and register on the scheduler.

        Call it on the task's thread: threads without a worker context (e.g. a
        ``ThreadPoolExecutor`` started by the task) then use the bound semaphore.
        """
        self._bound = self.semaphore()

    def __enter__(self) -> ClusterSemaphore:
        sem = self._bound if self._bound is not None else self.semaphore()
        sem.acquire()
        stack = getattr(self._held, "stack", None)
        if stack is None:
            stack = self._held.stack = []
        stack.append(sem)
        return self

    def __exit__(self, *exc) -> None:
        self._held.stack.pop().release()
