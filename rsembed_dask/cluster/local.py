"""Where the campaign runs: a local cluster by default, or an existing scheduler.

Embed workers declare the resource ``GPU=1`` (one GPU per worker process, pinned
with ``CUDA_VISIBLE_DEVICES``); a machine without GPUs gets one CPU embed worker
that declares the same resource, so the same graph runs everywhere. Fetch-only
workers carry no resource and take the I/O-bound fetch tasks.

The GPUs used are those this process may use: every GPU ``nvidia-smi -L`` lists, or,
when ``CUDA_VISIBLE_DEVICES`` is set (a batch scheduler's allocation, say ``"2,5"``),
the devices it lists, each embed worker pinned to one of them (:func:`visible_gpus`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import threading
import weakref
from dataclasses import dataclass
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import ClusterError, RsEmbedError, SpecError

if TYPE_CHECKING:
    from distributed import Client, Semaphore, SpecCluster

log = logging.getLogger(__name__)

__all__ = ["GPU_RESOURCE", "count_gpus", "visible_gpus", "local_cluster", "connect", "check_scheduler", "embed_workers",
           "fetch_workers", "worker_roster", "WorkerInfo", "ClusterSemaphore", "ClusterRateLimit", "SCHEDULER_TIMEOUT_S"]

GPU_RESOURCE = "GPU"

#: Seconds to wait for a scheduler to answer at a given address before giving up.
SCHEDULER_TIMEOUT_S = 10.0
#: How to get a scheduler, for the message when none answers.
START_SCHEDULER_HINT = ("start one with `dask scheduler` (and workers: `dask worker ADDRESS --resources GPU=1`), "
                        "or `cluster/local.sh start`; or leave out the address to run on a local cluster")

#: Set in worker processes before they start (glibc reads them once). Dask's nanny sets
#: MALLOC_TRIM_THRESHOLD_=65536, which also switches off glibc's adaptive mmap threshold:
#: every activation buffer of a forward pass is then mmapped, page-faulted and unmapped
#: again, which cost 20 % of CPU inference speed here (test-small, batch 32: 2.13 s vs
#: 1.76 s). Keep buffers up to 32 MiB (glibc's largest mmap threshold) on the heap and
#: trim only large free tops (1.66 s). Two malloc arenas: a fetch worker's threads otherwise
#: keep freed pixel buffers in arenas of their own and its memory climbs over a campaign
#: (growth 1.36 over a 20,000-sample soak with glibc's default of 8 per core, 1.04 with
#: two; embed worker and throughput unchanged: benchmarks/overhead.py --soak).
WORKER_MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": 2**30, "MALLOC_MMAP_THRESHOLD_": 2**25, "MALLOC_ARENA_MAX": 2}


def count_gpus() -> int:
    """Number of NVIDIA GPUs visible to this machine (0 without ``nvidia-smi``).

    Uses ``nvidia-smi -L`` so the client need not import torch or initialise CUDA.

    Returns
    -------
    int
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


def visible_gpus(cuda_visible_devices: str | None, n_found: int) -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries for its children.

    Parameters
    ----------
    cuda_visible_devices : str or None
        This process's ``CUDA_VISIBLE_DEVICES`` (None: unset).
    n_found : int
        GPUs on the machine (:func:`count_gpus`).

    Returns
    -------
    list of str
        Unset: ``"0"`` .. ``n_found - 1``. Set: its entries, as CUDA reads them: indices
        (below ``n_found``) and ``GPU-``/``MIG-`` UUIDs, up to the first other entry (CUDA
        ignores an invalid entry and every one after it: ``""`` or ``"-1"`` hide all GPUs).
        Empty when ``n_found`` is 0.

    Examples
    --------
    >>> visible_gpus(None, 2), visible_gpus("2,5", 8), visible_gpus("1,-1,3", 4), visible_gpus("", 4)
    (['0', '1'], ['2', '5'], ['1'], [])
    """
    if n_found <= 0:
        return []
    if cuda_visible_devices is None:
        return [str(i) for i in range(n_found)]
    out: list[str] = []
    for entry in cuda_visible_devices.split(","):
        entry = entry.strip()
        if entry.isdigit() and int(entry) < n_found:
            out.append(str(int(entry)))
        elif entry.startswith(("GPU-", "MIG-")):
            out.append(entry)
        else:
            break
    return out


def local_cluster(*, n_gpus: int | None = None, n_fetch_workers: int = 1, fetch_threads: int = 4,
                  processes: bool = True, dashboard_address: str | None = ":8787",
                  memory_limit: str | int = "auto", silence_logs: int = logging.WARNING,
                  host: str = "127.0.0.1", gpus: list[str] | None = None) -> SpecCluster:
    """A local Dask cluster laid out for embedding campaigns.

    Parameters
    ----------
    n_gpus : int, optional
        Embed workers to start, one per GPU (default: one per GPU in ``gpus``, or one
        CPU embed worker when there are none).
    gpus : list of str, optional
        ``CUDA_VISIBLE_DEVICES`` values to pin embed worker ``i`` to ``gpus[i]`` with
        (default: :func:`visible_gpus` of this process's ``CUDA_VISIBLE_DEVICES`` and
        :func:`count_gpus`). Fetch workers see no GPU.
    n_fetch_workers : int
        Workers without the GPU resource, for fetch tasks.
    fetch_threads : int
        Threads per fetch worker.
    processes : bool
        Worker processes (``Nanny``) or in-process threads (tests).
    dashboard_address : str or None
        Where the scheduler serves its dashboard (``None`` disables it).
    silence_logs : int
        Level of the Dask stack's own logs, here and in the worker processes (default
        WARNING: no INFO chatter while workers start and close).
    host : str
        Interface the scheduler and workers listen on (loopback by default).

    Returns
    -------
    distributed.SpecCluster
    """
    from distributed import Nanny, Scheduler, SpecCluster, Worker

    if n_gpus is not None and n_gpus < 0:
        raise SpecError("n_gpus", n_gpus, "a number of GPUs >= 0")
    if n_fetch_workers < 0:
        raise SpecError("n_fetch_workers", n_fetch_workers, "a number of workers >= 0")
    restricted = gpus is not None
    if gpus is None:
        # This process's own allocation (as CUDA reads it), read once: what its workers may use.
        allocation = os.environ.get("CUDA_VISIBLE_DEVICES")
        n_found = count_gpus()
        gpus = visible_gpus(allocation, n_found)
        restricted = n_found > 0 and allocation is not None
    found = len(gpus) if n_gpus is None else n_gpus
    if found > len(gpus):
        if restricted:
            raise SpecError("n_gpus", n_gpus, f"at most the {len(gpus)} GPU(s) this process may use "
                                              f"({','.join(gpus) or 'none'}): one embed worker per GPU")
        gpus = [str(i) for i in range(found)]  # no nvidia-smi, or it sees fewer: trust the caller's count
    cls = Nanny if processes else Worker
    workers: dict[str, dict[str, Any]] = {}
    base: dict[str, Any] = {"host": host}
    if processes:
        base["memory_limit"] = memory_limit
    for i in range(max(found, 1)):
        opts = dict(base, nthreads=2, resources={GPU_RESOURCE: 1}, name=f"embed-{i}")
        if processes and found:
            opts["env"] = {"CUDA_VISIBLE_DEVICES": gpus[i]}  # GPU gpus[i] only, as cuda:0 in the worker
        workers[f"embed-{i}"] = {"cls": cls, "options": opts}
    for i in range(n_fetch_workers):
        opts = dict(base, nthreads=fetch_threads, name=f"fetch-{i}")
        if processes and found:
            opts["env"] = {"CUDA_VISIBLE_DEVICES": ""}  # no CUDA context (and its memory) in fetch workers
        workers[f"fetch-{i}"] = {"cls": cls, "options": opts}
    # Without a dashboard the scheduler still serves health/metrics over HTTP: on a free
    # port, not on 8787 (where it would collide with another cluster's dashboard).
    sched_opts: dict[str, Any] = {"host": host, "dashboard": dashboard_address is not None,
                                  "dashboard_address": dashboard_address or f"{host}:0"}
    scheduler = {"cls": Scheduler, "options": sched_opts}
    log.info("starting local cluster: %d embed worker(s) (%s), %d fetch worker(s)",
             len(workers) - n_fetch_workers, "GPU" if found else "CPU", n_fetch_workers)
    import dask

    prefix = "distributed.nanny.pre-spawn-environ."
    environ: dict[str, Any] = dict(WORKER_MALLOC_ENV)
    if silence_logs and not isinstance(silence_logs, bool):
        # Worker processes configure their logging at import, from the environment: the same
        # level as this process's distributed loggers (no INFO chatter of workers closing).
        name = logging.getLevelName(silence_logs) if isinstance(silence_logs, int) else str(silence_logs)
        environ["DASK_LOGGING__DISTRIBUTED"] = name.lower()
    with dask.config.set({prefix + k: v for k, v in environ.items()}), _children_ignore_sigint(processes):
        return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=silence_logs,
                           name="rsembed-dask")


@contextlib.contextmanager
def _children_ignore_sigint(processes: bool) -> Iterator[None]:
    """Worker processes started meanwhile ignore Ctrl-C.

    Ctrl-C in a terminal reaches the whole process group: worker processes would die
    on it mid-task, with tracebacks, while the client is still ending the campaign in
    order (letting writes finish, then closing the cluster). A signal ignored at exec
    stays ignored, and Python then installs no KeyboardInterrupt handler. Only from the
    main thread (where signal handlers live); this process's handler is restored after.
    """
    import signal

    if not processes or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _scheduler_location(address: Any) -> tuple[str, str, tuple[str, int] | None]:
    """``(scheme, location, (host, port) or None)`` of a scheduler address; SpecError on a bad form."""
    from distributed.comm.addressing import parse_address, parse_host_port

    allowed = "a Dask scheduler address such as tcp://10.0.0.5:8786 (or host:port)"
    if not isinstance(address, str) or not address.strip():
        raise SpecError("scheduler", address, allowed)
    scheme, loc = parse_address(address.strip())
    if scheme not in ("tcp", "tls", "ws", "wss", "ucx", "inproc"):
        raise SpecError("scheduler", address, allowed + f" (unknown protocol {scheme!r})")
    if scheme == "inproc":
        return scheme, loc, None
    try:
        host, port = parse_host_port(loc)
    except ValueError as exc:
        raise SpecError("scheduler", address, f"{allowed} ({exc})") from None
    if not host or not 0 < port < 65536:
        raise SpecError("scheduler", address, allowed)
    return scheme, loc, (host, port)


def _check_dask_framing(sock, address: str, timeout: float) -> None:
    """Read the 8-byte frame length that a Dask server sends first on a new connection."""
    import struct

    head = b""
    try:
        while len(head) < 8:
            more = sock.recv(8 - len(head))
            if not more:
                break
            head += more
    except OSError:  # a timeout, or a reset
        pass
    if len(head) < 8:
        sock.close()
        raise ClusterError(f"no Dask scheduler answers at {address}: something listens there but sent no Dask "
                           f"handshake within {timeout:g} s: {START_SCHEDULER_HINT}")
    (size,) = struct.unpack("<Q", head)
    if size > 2**20:
        sock.close()
        raise ClusterError(f"{address} answers but does not speak Dask's protocol (not a Dask scheduler): "
                           f"give the address `dask scheduler` prints")


def check_scheduler(address: str, timeout: float = SCHEDULER_TIMEOUT_S) -> str:
    """Make sure a Dask scheduler answers at ``address``; return the address with its protocol.

    Opens one connection and asks the server who it is, so nothing (no cube, no
    cluster) is started for an address where no scheduler runs. A refused
    connection fails at once; a silent host after ``timeout`` seconds.

    Parameters
    ----------
    address : str
        ``"tcp://host:8786"`` or ``"host:8786"``.
    timeout : float
        Seconds a silent host is given.

    Returns
    -------
    str
        The address with its protocol.

    Raises
    ------
    SpecError
        ``address`` is not a scheduler address.
    ClusterError
        Nothing answers (one line naming the address and how to start a scheduler),
        or what answers is not a scheduler.
    """
    import asyncio
    import concurrent.futures
    import socket

    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise SpecError("scheduler_timeout", timeout, "a number of seconds > 0")
    scheme, loc, host_port = _scheduler_location(address)
    full = f"{scheme}://{loc}"
    if host_port is not None and scheme in ("tcp", "tls"):
        # A plain TCP connect first: a refused port fails now, not after the timeout.
        try:
            sock = socket.create_connection(host_port, timeout=timeout)
        except OSError as exc:
            why = (f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError)
                   else (exc.strerror or type(exc).__name__).lower())
            raise ClusterError(f"no Dask scheduler answers at {full} ({why}): {START_SCHEDULER_HINT}") from None
        if scheme == "tcp":
            # A Dask server speaks first: its handshake, framed by an 8-byte length. Anything
            # else (silence, an HTTP server, a proxy's garbage) is not a Dask scheduler.
            _check_dask_framing(sock, full, timeout)
        sock.close()
    if scheme != "tcp":
        return full  # tls/ws/ucx need the cluster's security settings to say more

    async def identity():
        from distributed.comm import connect as comm_connect

        comm = await comm_connect(full, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await asyncio.wait_for(comm.read(), timeout)
        finally:
            await comm.close()

    # On a thread of its own: callers may be inside a running event loop (Jupyter).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            info = pool.submit(asyncio.run, identity()).result()
        except (OSError, asyncio.TimeoutError) as exc:
            raise ClusterError(f"no Dask scheduler answers at {full} within {timeout:g} s "
                               f"({type(exc).__name__}): {START_SCHEDULER_HINT}") from None
    kind = info.get("type") if isinstance(info, dict) else None
    if kind != "Scheduler":
        raise ClusterError(f"{full} answers but is not a Dask scheduler (it says {kind or info!r}): give the "
                           f"scheduler's address (`dask scheduler` prints it), not a worker's or another server's")
    return full


@contextlib.contextmanager
def connect(client: Any = None, *, scheduler_timeout: float = SCHEDULER_TIMEOUT_S,
            **local_options: Any) -> Iterator[Client]:
    """Yield a ``distributed.Client`` for ``client``.

    ``None`` starts (and afterwards stops) :func:`local_cluster`; a string is a
    scheduler address (``"tcp://host:8786"``), given ``scheduler_timeout`` seconds
    to answer (else ClusterError, one line); a ``Client`` is used as is; a
    callable is called (only now) for a context manager yielding a Client, e.g.
    ``lambda: start_cluster(recipe)``.

    Parameters
    ----------
    client : None, str, distributed.Client or callable
        What to connect to (see above).
    scheduler_timeout : float
        Seconds a scheduler address has to answer.
    **local_options
        Keyword arguments of :func:`local_cluster` when ``client`` is None.

    Yields
    ------
    distributed.Client

    Raises
    ------
    ClusterError
        No scheduler answers at the address.
    SpecError
        ``client`` is none of the above.
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
        scheme, loc, _ = _scheduler_location(client)
        try:
            c = Client(client, timeout=scheduler_timeout)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"no Dask scheduler answers at {scheme}://{loc} within {scheduler_timeout:g} s "
                               f"({type(exc).__name__}): {START_SCHEDULER_HINT}") from None
        with c:
            yield c
        return
    raise SpecError("client", client, "None, a distributed.Client, a scheduler address string or a "
                                      "callable returning a context manager that yields a Client")


def fetch_workers(client: Client) -> list[str]:
    """Addresses of the workers without the ``GPU`` resource (fetch-only), sorted.

    Parameters
    ----------
    client : distributed.Client

    Returns
    -------
    list of str
    """
    return _workers(client, gpu=False)


@dataclass(frozen=True)
class WorkerInfo:
    """A worker as the scheduler knows it now: its name, its server id, whether it declares ``GPU``.

    ``server_id`` is unique per worker process: a worker restarted under the same address
    (and name) gets a new one.
    """

    name: str
    server_id: str
    gpu: bool
    nthreads: int = 1


def worker_roster(client: Client) -> dict[str, WorkerInfo]:
    """Every worker's :class:`WorkerInfo` by address, asked of the scheduler now (one call).

    Parameters
    ----------
    client : distributed.Client
        A client of the cluster.

    Returns
    -------
    dict of str to WorkerInfo
        Name, server id (new for a worker restarted under the same address) and whether it
        declares the GPU resource, by worker address.
    """
    # A lambda is pickled by value: the scheduler needs no rsembed_dask to run it.
    rows = client.run_on_scheduler(lambda dask_scheduler, gpu=GPU_RESOURCE: {
        addr: (str(ws.name), str(ws.server_id), float(ws.resources.get(gpu, 0)), int(ws.nthreads))
        for addr, ws in dask_scheduler.workers.items()})
    return {addr: WorkerInfo(name, sid, gpu >= 1, n) for addr, (name, sid, gpu, n) in rows.items()}


def embed_workers(client: Client) -> list[str]:
    """Addresses of the workers that declare the ``GPU`` resource, sorted.

    Parameters
    ----------
    client : distributed.Client

    Returns
    -------
    list of str
    """
    return _workers(client, gpu=True)


def _workers(client: Client, *, gpu: bool) -> list[str]:
    """Addresses of the workers that declare the ``GPU`` resource (``gpu``) or not, sorted: one
    question to the scheduler (:func:`worker_roster`)."""
    return sorted(addr for addr, w in worker_roster(client).items() if w.gpu == gpu)


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
        self._bound: Semaphore | None = None

    def __reduce__(self):
        return (ClusterSemaphore, (self.name, self.max_leases))

    def __repr__(self) -> str:
        return f"ClusterSemaphore({self.name!r}, max_leases={self.max_leases})"

    def semaphore(self) -> Semaphore:
        """The ``distributed.Semaphore`` of this thread's worker (or client), registered."""
        from distributed import Semaphore, get_client, get_worker

        owner: Any
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


#: Share of the requests-per-second bound a :class:`ClusterRateLimit` paces at: slots are
#: handed out 1/(0.9 rate) apart, so the jitter between a slot and the request reaching
#: Earth Engine (scheduling, the network) does not push any second over the bound.
RATE_MARGIN = 0.9
#: Seconds of slots one process leases at a time (at least one slot).
RATE_LEASE_S = 0.25


def _slot_granter():
    """The scheduler-side half of :class:`ClusterRateLimit` (a closure: pickled by value, so the
    scheduler needs no rsembed_dask to run it)."""

    def grant(dask_scheduler=None, name: str = "", interval: float = 1.0, k: int = 1) -> float:
        import time as _time

        book = dask_scheduler.extensions.setdefault("rsembed-rate-limits", {})
        now = _time.monotonic()
        start = max(book.get(name, now), now)
        book[name] = start + k * interval
        return start - now

    return grant


class ClusterRateLimit:
    """A cluster-wide bound on requests started per second: time slots leased from the scheduler.

    The scheduler keeps, per name, the next free time slot (a GCRA / virtual-clock token
    bucket without burst): a process asks for ``k`` slots (:data:`RATE_LEASE_S` worth) with
    one ``run_on_scheduler`` call, which answers in the scheduler's event loop (so atomically)
    with the delay until the first one and moves the clock ``k`` slots on. The process's
    threads then take the slots in turn, each waiting for its time: across every process,
    requests start at least ``1 / (RATE_MARGIN * rate)`` seconds apart. A slot passed by more
    than half an interval is dropped unused (never two requests at once from a late slot).

    Cost: one scheduler round trip per ``k`` requests (at 100 requests/s, 20 small calls a
    second for the whole cluster), slots leased and not used (at most ``k - 1`` per lease),
    and the 10 % margin.

    Parameters
    ----------
    name : str
        Name of the bound (one per Earth Engine project).
    rate : float
        Requests started per second, across the whole cluster.
    """

    def __init__(self, name: str, rate: float):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
            raise SpecError("ClusterRateLimit.rate", rate, "a positive number of requests per second")
        self.name, self.rate = str(name), float(rate)

    def __reduce__(self):
        return (ClusterRateLimit, (self.name, self.rate))

    def __repr__(self) -> str:
        return f"ClusterRateLimit({self.name!r}, rate={self.rate:g})"

    @property
    def interval(self) -> float:
        return 1.0 / (RATE_MARGIN * self.rate)

    def _local(self) -> _RateSlots:
        """This process's slots for this bound (one per process, shared by every task and thread)."""
        with _SEMAPHORES_LOCK:
            slots = _RATE_SLOTS.get((self.name, self.rate))
            if slots is None:
                slots = _RATE_SLOTS[self.name, self.rate] = _RateSlots()
            return slots

    def register(self) -> None:
        """On the task's thread: find the client to lease slots with (the worker's own)."""
        local = self._local()
        if local.client is None:
            from distributed import get_client

            try:
                local.client = get_client()
            except ValueError:
                raise RsEmbedError(f"{self!r} is used outside a Dask worker or client: expected a task on a "
                                   f"cluster, or a connected distributed.Client") from None

    def wait(self) -> float:
        """Wait for this process's next slot; returns the seconds waited."""
        import time as _time

        local = self._local()
        if local.client is None:
            self.register()
        interval = self.interval
        k = max(1, int(RATE_LEASE_S / interval))
        with local.lock:
            while True:
                now = _time.monotonic()
                while local.slots and local.slots[0] < now - interval / 2:
                    local.slots.popleft()
                if local.slots:
                    at = local.slots.popleft()
                    break
                delay = local.client.run_on_scheduler(_slot_granter(), name=self.name, interval=interval, k=k)
                first = _time.monotonic() + float(delay)
                local.slots.extend(first + i * interval for i in range(k))
        waited = max(0.0, at - _time.monotonic())
        if waited:
            _time.sleep(waited)
        return waited

    def __enter__(self) -> ClusterRateLimit:
        self.wait()
        return self

    def __exit__(self, *exc) -> None:
        return None


class _RateSlots:
    """One process's leased time slots of a :class:`ClusterRateLimit`."""

    def __init__(self) -> None:
        import collections

        self.lock = threading.Lock()
        self.slots: collections.deque[float] = collections.deque()
        self.client: Any = None


#: Per process: (name, rate) -> its leased slots.
_RATE_SLOTS: dict[tuple[str, float], _RateSlots] = {}
