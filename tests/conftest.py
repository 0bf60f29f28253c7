import contextlib
import os
import socket
import subprocess
import sys

import pytest
from distributed import Client

from rsembed_dask.providers.gee import GEEProvider
from rsembed_dask.providers.retry import RetryPolicy
from rsembed_dask.testing import GEEEmulator

FAST_RETRY = RetryPolicy(max_retries=6, base_s=0.005, cap_s=0.05)


@pytest.fixture(scope="session")
def emulator():
    with GEEEmulator(seed=0) as emu:
        yield emu


@pytest.fixture
def emu(emulator):
    """The session emulator with counters reset and no faults left over."""
    emulator.stats.reset()
    emulator._forced.clear()
    yield emulator
    emulator._forced.clear()


@pytest.fixture(scope="module")
def client():
    """An in-process local cluster (threads): one CPU embed worker and one fetch worker."""
    from rsembed_dask.cluster import local_cluster

    cluster = local_cluster(n_gpus=0, n_fetch_workers=1, processes=False, dashboard_address=None)
    with Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture
def provider(emu):
    return GEEProvider(api_url=emu.url, credentials="anonymous", project="test-project",
                       retry=FAST_RETRY)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dask_processes(n_gpu: int = 2, n_fetch: int = 0):
    """A `dask scheduler` and `dask worker` processes on loopback: GPU=1 ones and fetch-only ones.

    Yields the scheduler address and ``{"gpu": [Popen...], "fetch": [Popen...]}``.
    """
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    sched = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], **quiet)
    procs = {"gpu": [], "fetch": []}
    common = ["--host", "127.0.0.1", "--no-nanny", "--no-dashboard"]
    try:
        with Client(addr, timeout=60) as c:
            for i in range(n_gpu):
                procs["gpu"].append(subprocess.Popen(
                    [dask, "worker", addr, *common, "--nthreads", "2", "--resources", "GPU=1", "--name", f"gpu-{i}"], **quiet))
            for i in range(n_fetch):
                procs["fetch"].append(subprocess.Popen(
                    [dask, "worker", addr, *common, "--nthreads", "4", "--name", f"fetch-{i}"], **quiet))
            c.wait_for_workers(n_gpu + n_fetch, timeout=120)
        yield addr, procs
    finally:
        for p in [sched, *procs["gpu"], *procs["fetch"]]:
            p.kill()
            p.wait(20)
