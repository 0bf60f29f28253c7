"""The writer lock against real faults: paused and resumed runs, a real S3 server, one-line CLI errors.

A paused run (SIGSTOP) past the stale window loses its lock to a second run and, resumed,
stops with exit 3 naming the new holder, leaving that holder's lock alone. On a loopback S3
server (moto's ``ThreadedMotoServer``, which honours ``If-None-Match`` and ``If-Match`` on
PUT), of runs starting together exactly one gets the lock, and break, wait and lost work as
on a local disk.
"""

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from rsembed_dask.cli.commands import EXIT_LOCKED, main
from rsembed_dask.emulator import GEEEmulator
from rsembed_dask.errors import StoreLockedError
from rsembed_dask.specs import CampaignSpec, ModelSpec, TemporalSpec
from rsembed_dask.store.cube import OK, Cube, open_cube
from rsembed_dask.store.lock import lock_path, read_lock, store_lock

from .test_store_lock import dead_pid, run_args, write_lock, write_samples

CLI = [sys.executable, "-m", "rsembed_dask.cli"]


def _env():
    return {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _one_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# --- one-line CLI errors (issue 21) ---------------------------------------------------------------

def test_out_under_a_missing_folder_is_one_line_exit_2(tmp_path, emu, capsys):
    samples = write_samples(tmp_path / "samples.geojson")
    rc = main(run_args(samples, tmp_path / "missing" / "cube.zarr", emu.url))
    err = capsys.readouterr().err
    assert rc == 2, err
    line = _one_line_error(err)
    assert "rsembed-dask run: error:" in line and f"the folder {tmp_path / 'missing'} does not exist" in line


def test_a_lock_of_garbage_bytes_is_one_line_exit_2(tmp_path, emu, capsys):
    samples = write_samples(tmp_path / "samples.geojson")
    out = tmp_path / "cube.zarr"
    with open(lock_path(out), "wb") as fh:
        fh.write(bytes(range(200, 256)))
    rc = main(run_args(samples, out, emu.url))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "56 bytes that are not an rsembed lock record: remove it, or run with --break-lock" in _one_line_error(err)
    assert emu.stats.requests == 0


@pytest.mark.timeout(120)
def test_a_new_cube_in_a_read_only_folder_is_not_writable_exit_2(tmp_path, emu):
    samples = write_samples(tmp_path / "samples.geojson")
    ro = tmp_path / "ro"
    ro.mkdir()
    args = CLI + run_args(samples, ro / "cube.zarr", emu.url)
    if os.geteuid() != 0:
        ro.chmod(0o555)
        cmd = args
    else:  # root ignores permissions: a read-only bind mount in a private mount namespace
        probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {ro} {ro} && "
                                f"mount -o remount,bind,ro {ro} {ro}"], capture_output=True, text=True)
        if probe.returncode:
            pytest.skip(f"cannot mount read-only here: {probe.stderr.strip()}")
        cmd = ["unshare", "-m", "sh", "-c", f'mount --bind "{ro}" "{ro}" && mount -o remount,bind,ro "{ro}" "{ro}" '
               f'&& exec "$@"', "sh", *args]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=100, env=_env())
    finally:
        ro.chmod(0o755)
    assert r.returncode == 2, r.stderr
    line = _one_line_error(r.stderr)
    assert "is not writable" in line and "lock" in line


def test_inspect_names_a_lock_whose_holder_is_gone_as_stale(tmp_path, capsys):
    store = tmp_path / "c.zarr"
    spec = CampaignSpec(temporal=TemporalSpec.year(2022), model=ModelSpec("test-tiny", image_size=32),
                        scales=(10.0,), chunk_size=4)
    Cube.create_or_open(store, spec=spec, ids=["a", "b"], lon=[3.0, 3.1], lat=[31.0, 31.1], geohash=["x", "y"],
                        wkb=["00", "00"], embed_dim=4)
    pid = dead_pid()
    write_lock(store, pid=pid)
    assert main(["inspect", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"writer lock: stale lock of pid {pid} on {socket.gethostname()}" in out
    assert "is gone; the next run takes it over" in out and "being written by" not in out
    assert main(["inspect", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["writer"].startswith("stale lock of")


# --- a paused run loses its lock -------------------------------------------------------------------

def _wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.timeout(400)
def test_a_paused_run_loses_its_lock_to_a_second_run_and_exits_3_leaving_it_alone(tmp_path, client):
    """Two real ``rsembed-dask run`` processes on one cluster (the module's scheduler): the first is
    paused (SIGSTOP) past the stale window, the second takes over, the first is resumed."""
    samples = write_samples(tmp_path / "samples.geojson", n=12)
    out = tmp_path / "cube.zarr"
    stale = ["--lock-stale", "3", "--scheduler", client.scheduler.address]
    with GEEEmulator(latency_s=4.0) as slow_a, GEEEmulator(latency_s=4.0) as slow_b:
        logs = {name: open(tmp_path / f"{name}.err", "w+") for name in ("first", "second")}
        first = subprocess.Popen(CLI + run_args(samples, out, slow_a.url, *stale), env=_env(),
                                 stdout=subprocess.DEVNULL, stderr=logs["first"], text=True)
        second = None
        try:
            _wait_for(lambda: (read_lock(out) or None) is not None and read_lock(out).counter >= 1
                      and slow_a.stats.requests > 0, 200, "the first run never took the lock and started")
            first.send_signal(signal.SIGSTOP)
            t0 = time.monotonic()
            second = subprocess.Popen(CLI + run_args(samples, out, slow_b.url, *stale), env=_env(),
                                      stdout=subprocess.DEVNULL, stderr=logs["second"], text=True)
            _wait_for(lambda: read_lock(out) is not None and read_lock(out).pid == second.pid, 120,
                      "the second run never took over the paused run's lock")
            assert time.monotonic() - t0 >= 3.0  # not before the stale window
            theirs = read_lock(out).token
            first.send_signal(signal.SIGCONT)
            first.wait(timeout=150)
            err_a = (tmp_path / "first.err").read_text()
            assert first.returncode == EXIT_LOCKED, err_a
            assert (f"this run lost its writer lock: it is now held by pid {second.pid} on "
                    f"{socket.gethostname()}") in err_a
            assert "Traceback" not in err_a and err_a.strip().splitlines()[-1].startswith("rsembed-dask run: "), err_a
            held = read_lock(out)
            assert held is None or held.token == theirs  # the second run's lock, untouched
            second.wait(timeout=200)
            err_b = (tmp_path / "second.err").read_text()
        finally:
            for p in (first, second):
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
                    p.wait()
    assert second.returncode == 0, err_b
    assert f"taking over a stale lock of pid {first.pid}" in err_b and "did not advance" in err_b
    assert "changed under this run" not in err_b and "no longer ours" not in err_b
    assert read_lock(out) is None and not os.path.exists(lock_path(out))
    assert (open_cube(out).status.values == OK).all()


# --- a real S3 server ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on loopback, reached through the standard AWS variables; yields a bucket URL."""
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1").create_bucket(Bucket="cubes")
    try:
        yield "s3://cubes"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def _try_lock(store, barrier, results):
    barrier.wait()
    try:
        with store_lock(store):
            results.put("got it")
            time.sleep(1.5)
    except StoreLockedError:
        results.put("refused")


@pytest.mark.timeout(180)
def test_on_s3_of_processes_starting_together_exactly_one_gets_the_lock(s3):
    store = f"{s3}/together.zarr"
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_try_lock, args=(store, barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    got = sorted(results.get(timeout=5) for _ in procs)
    assert got == ["got it", "refused", "refused", "refused"]
    assert read_lock(store) is None  # released: the object stays, marked released


def test_on_s3_the_lock_beats_is_lost_to_a_breaker_and_a_waiter_gets_it_after_release(s3):
    import threading

    store = f"{s3}/beat.zarr"
    fast = dict(heartbeat_s=0.2, stale_s=2.0)
    with store_lock(store, **fast) as lock:
        time.sleep(1.0)
        assert read_lock(store).token == lock.token and read_lock(store).counter >= 2
        got = {}

        def waiter():
            try:
                with store_lock(store, wait_s=0.5, **fast):
                    got["lock"] = True
            except StoreLockedError as exc:
                got["error"] = str(exc)
        t = threading.Thread(target=waiter)
        t.start()
        t.join(60)
        assert "after waiting 0.5 s" in got["error"] and f"pid {os.getpid()}" in got["error"]
    from rsembed_dask.store.lock import StoreLock

    first = StoreLock(store, **fast)
    first.acquire()
    second = StoreLock(store, break_lock=True, **fast)
    second.acquire()
    _wait_for(lambda: first.lost is not None, 30, "the broken holder never noticed")
    with pytest.raises(StoreLockedError, match="lost its writer lock: it is now held by pid"):
        first.check()
    first.release()  # leaves the breaker's lock alone
    assert read_lock(store).token == second.token
    third = StoreLock(store, wait_s=30, **fast)
    threading.Timer(0.5, second.release).start()
    third.acquire()  # waits for the release, then takes the released object over
    assert read_lock(store).token == third.token
    third.release()
    assert read_lock(store) is None


def test_on_s3_a_dead_holder_is_taken_over_after_the_stale_window(s3):
    """A client SIGKILLed on another node left its lock object; its counter no longer moves."""
    from obstore.store import from_url

    store = f"{s3}/dead.zarr"
    record = {"user": "someone", "host": "node-17.cluster", "pid": 1, "started": "2031-01-01T00:00:00+00:00",
              "token": "theirs", "counter": 41, "boot_id": "b", "pid_ns": "pid:[1]", "heartbeat_s": 0.2,
              "stale_s": 1.0}
    from_url(s3).put("dead.zarr.rsembed-lock", json.dumps(record).encode(), mode="create")
    assert read_lock(store).host == "node-17.cluster"
    t0 = time.monotonic()
    with store_lock(store, heartbeat_s=0.2, stale_s=1.0) as lock:
        assert read_lock(store).token == lock.token
    assert time.monotonic() - t0 >= 1.0


# --- --wait-lock and --break-lock through the CLI -------------------------------------------------

@pytest.mark.timeout(300)
def test_wait_lock_exits_3_after_the_given_seconds_and_break_lock_takes_over(tmp_path, client, emu, capsys,
                                                                             caplog):
    import logging
    import threading

    samples = write_samples(tmp_path / "samples.geojson")
    out = tmp_path / "cube.zarr"
    held, release, broken = threading.Event(), threading.Event(), {}

    def holder():  # another run, in another thread (this thread's own lock would be re-entrant)
        with store_lock(out, heartbeat_s=0.2, stale_s=2.0) as lock:
            held.set()
            release.wait(120)
            broken["lost"] = lock.lost
    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(30)
    try:
        t0 = time.monotonic()
        rc = main(run_args(samples, out, emu.url, "--wait-lock", "1.5", "--scheduler", client.scheduler.address))
        err = capsys.readouterr().err
        assert rc == EXIT_LOCKED and time.monotonic() - t0 >= 1.5, err
        assert f"is being written by pid {os.getpid()}" in _one_line_error(err) and "after waiting 1.5 s" in err
        assert emu.stats.requests == 0
        with caplog.at_level(logging.WARNING, logger="rsembed_dask.store.lock"):
            rc = main(run_args(samples, out, emu.url, "--break-lock", "--scheduler", client.scheduler.address))
        assert rc == 0, capsys.readouterr().err
        assert f"broke the writer lock of pid {os.getpid()} on {socket.gethostname()}" in caplog.text
    finally:
        release.set()
        t.join(60)
    assert "it is now held by" in broken["lost"]
    assert not os.path.exists(lock_path(out))  # the broken holder left the breaker's release alone
    assert (open_cube(out).status.values == OK).all()
