import contextlib
import os
import socket
import subprocess
import sys

import pytest
from distributed import Client

from rsembed_dask.providers.gee import GEEProvider
from rsembed_dask.providers.retry import RetryPolicy
from rsembed_dask.emulator import GEEEmulator

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
    from rsembed_dask.cluster.local import local_cluster

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


def dask_worker(addr: str, name: str, *, gpu: bool, nthreads: int | None = None, env: dict | None = None):
    """Start one `dask worker` process (no nanny) on loopback: ``GPU=1`` or fetch-only."""
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    args = [dask, "worker", addr, "--host", "127.0.0.1", "--no-nanny", "--no-dashboard",
            "--nthreads", str(nthreads or (2 if gpu else 4)), "--name", name]
    if gpu:
        args += ["--resources", "GPU=1"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=None if env is None else {**os.environ, **env})


@contextlib.contextmanager
def dask_processes(n_gpu: int = 2, n_fetch: int = 0, *, env: dict | None = None, fetch_threads: int = 4):
    """A `dask scheduler` and `dask worker` processes on loopback: GPU=1 ones and fetch-only ones.

    ``env`` is added to every process's environment (e.g. ``DASK_DISTRIBUTED__...`` config).
    Yields the scheduler address and ``{"gpu": [Popen...], "fetch": [Popen...]}``; processes
    appended to those lists by the test are stopped too.
    """
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    sched = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                             env=None if env is None else {**os.environ, **env}, **quiet)
    procs = {"gpu": [], "fetch": []}
    try:
        with Client(addr, timeout=60) as c:
            for i in range(n_gpu):
                procs["gpu"].append(dask_worker(addr, f"gpu-{i}", gpu=True, env=env))
            for i in range(n_fetch):
                procs["fetch"].append(dask_worker(addr, f"fetch-{i}", gpu=False, nthreads=fetch_threads, env=env))
            c.wait_for_workers(n_gpu + n_fetch, timeout=120)
        yield addr, procs
    finally:
        for p in [sched, *procs["gpu"], *procs["fetch"]]:
            p.kill()
            p.wait(20)


class S3Server:
    """moto's S3 server on a free loopback port, counting the requests it receives.

    ``requests`` holds ``(method, path)`` of every request, in order; ``env`` the standard
    variables that reach it (``AWS_ENDPOINT_URL``...), for this process and for `dask worker`s.
    """

    def __init__(self):
        from moto.server import ThreadedMotoServer
        from moto.moto_server.werkzeug_app import MotoRequestHandler

        self.requests: list[tuple[str, str]] = []
        seen = self.requests

        class Counting(MotoRequestHandler):
            def log_request(self, code="-", size="-"):  # every request, answered; not printed
                seen.append((self.command, self.path))

        port = _free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)

        def entry():
            from werkzeug.serving import make_server
            from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

            server._server = make_server("127.0.0.1", port, DomainDispatcherApplication(create_backend_app),
                                         True, request_handler=Counting)
            server._server_ready_event.set()
            server._server.serve_forever()

        server._server_entry = entry
        server.start()
        self._server = server
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing-key-id",
                    "AWS_SECRET_ACCESS_KEY": "testing-secret-key", "AWS_REGION": "us-east-1",
                    "AWS_ALLOW_HTTP": "true"}

    def create_bucket(self, name: str) -> str:
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")).close()
        return f"s3://{name}"

    def stop(self):
        self._server.stop()


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch, request):
    """A new, empty bucket on the loopback S3 server, its ``s3://`` URL; the AWS_* variables set."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    name = "b-" + request.node.name.lower().replace("_", "-")[:40].strip("-[]") + "-" + os.urandom(3).hex()
    return s3_server.create_bucket("".join(c if c.isalnum() or c == "-" else "-" for c in name))
