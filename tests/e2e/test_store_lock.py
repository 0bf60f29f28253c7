"""One writer per store: two real `rsembed-dask run` processes on one cube, stale locks, the lock itself."""

import datetime
import json
import logging
import multiprocessing
import os
import socket
import subprocess
import re
import sys
import threading
import time

import geopandas as gpd
import numpy as np
import pytest

from rsembed_dask.cli.commands import EXIT_LOCKED, main
from rsembed_dask.store.cube import OK, Cube, open_cube
from rsembed_dask.errors import CubeError, StoreLockedError
from rsembed_dask.specs import CampaignSpec, ModelSpec, TemporalSpec
from rsembed_dask.store.lock import _boot_id, _pid_namespace, lock_path, read_lock, store_lock
from rsembed_dask.emulator import GEEEmulator

WINDOW = ["--start", "2022-01-01", "--end", "2022-02-01"]


def write_samples(path, n=6):
    rng = np.random.default_rng(2)
    gdf = gpd.GeoDataFrame({"plot": [f"plot-{i}" for i in range(n)]},
                           geometry=gpd.points_from_xy(3 + rng.uniform(0, .2, n), 31 + rng.uniform(0, .2, n)),
                           crs="EPSG:4326")
    gdf.to_file(path)
    return path


def run_args(samples, out, url, *extra):
    return ["run", str(samples), "--out", str(out), "--scales", "10,40", *WINDOW, "--model", "test-tiny",
            "--id-column", "plot", "--chunk-size", "4", "--no-progress", "--backend", "gee", "--ee-url", url,
            "--ee-project", "test-project", "--credentials", "anonymous", *extra]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_lock(store, **fields):
    """A lock record as another run writes it (this machine's boot id and pid namespace unless given)."""
    holder = {"user": "someone", "host": socket.gethostname(), "pid": os.getpid(), "pid_start": None,
              "boot_id": _boot_id(), "pid_ns": _pid_namespace(), "counter": 0,
              "started": "2024-01-01T00:00:00+00:00", "store": str(store), "token": "theirs"}
    holder.update(fields)
    tmp = lock_path(store) + ".w"
    with open(tmp, "w") as fh:
        json.dump(holder, fh)
    os.replace(tmp, lock_path(store))


@pytest.mark.timeout(180)
def test_a_second_run_on_a_cube_being_written_stops_naming_the_holder(tmp_path):
    samples = write_samples(tmp_path / "samples.geojson", n=4)  # one unit per scale
    out = tmp_path / "cube.zarr"
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cli = [sys.executable, "-m", "rsembed_dask.cli"]
    # The first run's Earth Engine answers slowly, so it is still running when the second starts.
    with GEEEmulator(latency_s=10.0) as slow, GEEEmulator() as other:
        first = subprocess.Popen(cli + run_args(samples, out, slow.url), env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 90
            while read_lock(out) is None:
                assert first.poll() is None, first.communicate()
                assert time.monotonic() < deadline, "the first run never took the lock"
                time.sleep(0.1)
            t0 = time.monotonic()
            second = subprocess.run(cli + run_args(samples, out, other.url), env=env, capture_output=True,
                                    text=True, timeout=90)
            took = time.monotonic() - t0
            assert first.poll() is None, "the first run ended before the second was refused: no overlap tested"
            assert second.returncode == EXIT_LOCKED, second.stderr
            assert f"is being written by pid {first.pid} on {socket.gethostname()} since" in second.stderr
            assert "wait for that run to end" in second.stderr and "Traceback" not in second.stderr
            assert other.stats.requests == 0  # no Earth Engine request at all
            print(f"second run refused in {took:.1f} s")
            stdout, stderr = first.communicate(timeout=150)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        assert first.returncode == 0, stderr
        assert slow.stats.compute_pixels > 0
    assert read_lock(out) is None and not os.path.exists(lock_path(out))  # released at the end
    assert (open_cube(out).status.values == OK).all()


@pytest.mark.timeout(120)
def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, client, emu, caplog):
    samples = write_samples(tmp_path / "samples.geojson")
    out = tmp_path / "cube.zarr"
    pid = dead_pid()
    write_lock(out, pid=pid)
    with caplog.at_level(logging.WARNING, logger="rsembed_dask.store.lock"):
        rc = main(run_args(samples, out, emu.url, "--scheduler", client.scheduler.address))
    assert rc == 0
    warned = [r.getMessage() for r in caplog.records if r.name == "rsembed_dask.store.lock"]
    assert len(warned) == 1 and f"stale lock of pid {pid}" in warned[0] and "is gone" in warned[0]
    assert not os.path.exists(lock_path(out))
    assert (open_cube(out).status.values == OK).all()


def in_thread(fn):
    """``fn()``'s result or exception, from another thread (this thread's own lock is re-entrant)."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc
    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    return box


def test_a_live_holder_is_named_and_nothing_is_taken(tmp_path):
    store = tmp_path / "c.zarr"
    with store_lock(store) as lock:
        holder = read_lock(store)
        assert holder.pid == os.getpid() and holder.host == socket.gethostname() and holder.token == lock.token

        def second():
            with store_lock(store):
                pass
        err = in_thread(second)["error"]
        assert isinstance(err, StoreLockedError)
        assert re.search(rf"c.zarr is being written by pid {os.getpid()} on {socket.gethostname()} since .* "
                         rf"\(user ", str(err)), err
        assert read_lock(store).token == holder.token  # still the first holder's
        with store_lock(store) as inner:  # the same thread: re-entrant (run_campaign -> repair)
            assert inner is lock
    assert read_lock(store) is None


class Beating:
    """A holder "on another machine": a thread bumping the counter of a lock record, or not."""

    def __init__(self, store, period=0.1, **fields):
        self.store, self.period, self.fields = store, period, fields
        self.counter, self.stop = 0, threading.Event()
        write_lock(store, counter=0, **fields)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(self.period):
            self.counter += 1
            write_lock(self.store, counter=self.counter, **self.fields)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


OTHER_HOST = dict(host="node-17.cluster", pid=1, boot_id="b0", pid_ns="pid:[1]", heartbeat_s=0.1, stale_s=1.0)
FAST = dict(heartbeat_s=0.1, stale_s=1.0)


@pytest.mark.parametrize("skew", [0, 10 * 365 * 86400, -10 * 365 * 86400], ids=["no-skew", "future", "past"])
def test_other_hosts_are_judged_by_their_counter_on_our_clock_whatever_their_clocks(tmp_path, caplog, skew):
    """A holder whose clock (its recorded start, the file's mtime) is years off is neither taken early
    (while its counter advances) nor kept forever (once it stops)."""
    store = tmp_path / "c.zarr"
    started = (datetime.datetime.now(datetime.timezone.utc)
               + datetime.timedelta(seconds=skew)).isoformat(timespec="seconds")
    with Beating(store, started=started, **OTHER_HOST):
        t = time.time() + skew
        os.utime(lock_path(store), (t, t))
        t0 = time.monotonic()
        with pytest.raises(StoreLockedError, match=re.escape(f"pid 1 on node-17.cluster since {started}")):
            with store_lock(store, **FAST):
                pass
        assert time.monotonic() - t0 < 10  # refused once a heartbeat was seen, well within the window
    t = time.time() + skew  # it stopped beating: taken over after the window, not before
    os.utime(lock_path(store), (t, t))
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="rsembed_dask.store.lock"):
        with store_lock(store, **FAST):
            assert read_lock(store).pid == os.getpid()
    assert time.monotonic() - t0 >= 1.0
    assert "did not advance" in caplog.text and "node-17.cluster" in caplog.text
    assert read_lock(store) is None


@pytest.mark.parametrize("other", ["pid_ns", "boot_id"])
def test_same_host_in_another_pid_namespace_or_boot_waits_for_the_counter(tmp_path, other):
    """Same host name, a pid that is gone here, but another pid namespace (a container with host
    networking) or boot: the pid says nothing, so a beating holder keeps its lock."""
    store = tmp_path / "c.zarr"
    me = dict(host=socket.gethostname(), pid=dead_pid(), boot_id=_boot_id(), pid_ns=_pid_namespace(),
              heartbeat_s=0.1, stale_s=1.0)
    write_lock(store, **me)  # same machine, process gone: taken at once
    t0 = time.monotonic()
    with store_lock(store, **FAST):
        pass
    assert time.monotonic() - t0 < 0.9
    me[other] = "something else"
    with Beating(store, **me):
        with pytest.raises(StoreLockedError, match=f"pid {me['pid']} on {socket.gethostname()}"):
            with store_lock(store, **FAST):
                pass


def test_the_heartbeat_advances_the_counter(tmp_path):
    store = tmp_path / "c.zarr"
    with store_lock(store, **FAST) as lock:
        time.sleep(0.6)
        assert read_lock(store).counter >= 3 and lock.lost is None
        lock.check()


def test_the_lock_is_released_on_ctrl_c_and_errors(tmp_path):
    store = tmp_path / "c.zarr"
    for exc in (KeyboardInterrupt, RuntimeError):
        with pytest.raises(exc):
            with store_lock(store):
                raise exc()
        assert not os.path.exists(lock_path(store))


def test_an_empty_lock_file_waits_for_the_stale_window_then_is_taken(tmp_path):
    store = tmp_path / "c.zarr"
    open(lock_path(store), "w").close()  # an older run between creating and writing it
    t0 = time.monotonic()
    with store_lock(store, **FAST):
        assert read_lock(store).pid == os.getpid()
    assert time.monotonic() - t0 >= 1.0


def test_a_lock_of_garbage_bytes_is_an_error_until_broken(tmp_path):
    store = tmp_path / "c.zarr"
    with open(lock_path(store), "wb") as fh:
        fh.write(b"\xff\xfe\x00garbage\x81")
    with pytest.raises(CubeError, match="holds 11 bytes that are not an rsembed lock record: remove it, or run "
                                        "with --break-lock"):
        with store_lock(store):
            pass
    assert "11 bytes that are not" in read_lock(store).describe()
    with store_lock(store, break_lock=True):
        assert read_lock(store).pid == os.getpid()


def test_a_lock_taken_by_another_run_is_lost_and_left_alone(tmp_path, caplog):
    store = tmp_path / "c.zarr"
    with caplog.at_level(logging.WARNING, logger="rsembed_dask.store.lock"):
        with store_lock(store, **FAST) as lock:
            write_lock(store, **OTHER_HOST)  # another run took it over (as if we had been paused)
            deadline = time.monotonic() + 10
            while lock.lost is None and time.monotonic() < deadline:
                time.sleep(0.05)
            with pytest.raises(StoreLockedError, match="lost its writer lock: it is now held by pid 1 on "
                                                       "node-17.cluster"):
                lock.check()
            theirs = open(lock_path(store)).read()
    assert open(lock_path(store)).read() == theirs and '"token": "theirs"' in theirs  # untouched
    assert "it is now held by" in str(lock.lost)


def test_a_paused_holder_finds_its_lock_lost_before_anything_else(tmp_path):
    """check() after a pause longer than two beats confirms the lock itself (the thread may lag)."""
    store = tmp_path / "c.zarr"
    with store_lock(store, heartbeat_s=3600, stale_s=7200) as lock:
        write_lock(store, **OTHER_HOST)
        lock._last_ok -= 3 * 3600  # what a SIGSTOP of three hours looks like on the monotonic clock
        with pytest.raises(StoreLockedError, match="node-17.cluster"):
            lock.check()


def test_a_holder_that_has_not_noticed_a_takeover_lays_out_no_cube_over_the_new_holders(tmp_path):
    """Creating a cube confirms the lock first, whatever the last beat's age: a run resumed from a
    pause, whose heartbeat has not yet run, stops there (CI caught one laying out its group)."""
    store = tmp_path / "c.zarr"
    spec = CampaignSpec(temporal=TemporalSpec.year(2022), model=ModelSpec("test-tiny", image_size=32),
                        scales=(10.0,), chunk_size=4)
    with store_lock(store, heartbeat_s=3600, stale_s=7200) as lock:
        write_lock(store, **OTHER_HOST)  # the lock was taken over; our last beat is recent
        with pytest.raises(StoreLockedError, match="lost its writer lock: it is now held by pid 1 on node-17"):
            Cube.create_or_open(store, spec=spec, ids=["a", "b"], lon=[3.0, 3.1], lat=[31.0, 31.1],
                                geohash=["x", "y"], wkb=["00", "00"], embed_dim=4)
        assert lock.lost is not None
    assert not store.exists()  # nothing laid out where the new holder is about to
    assert json.loads(open(lock_path(store)).read())["token"] == "theirs"


def test_failed_beats_are_retried_and_the_lock_kept(tmp_path, caplog):
    """The lock path made unreadable from outside (a directory in its place, as an ESTALE/EIO would),
    then the lock file removed: beats fail and are retried; the lock stays ours."""
    store = tmp_path / "c.zarr"
    path = lock_path(store)
    with caplog.at_level(logging.WARNING, logger="rsembed_dask.store.lock"):
        with store_lock(store, heartbeat_s=0.1, stale_s=5.0) as lock:
            os.rename(path, path + ".aside")
            os.mkdir(path)
            time.sleep(0.5)
            os.rmdir(path)
            os.rename(path + ".aside", path)
            time.sleep(0.4)
            assert lock.lost is None and read_lock(store).token == lock.token
            n = read_lock(store).counter
            os.unlink(path)  # removed: put back by the next beat
            time.sleep(0.4)
            assert lock.lost is None and read_lock(store).token == lock.token and read_lock(store).counter > n
            lock.check()
    assert "heartbeat failed" in caplog.text and "retrying" in caplog.text
    assert read_lock(store) is None


def test_beats_failing_longer_than_the_stale_window_stop_the_run(tmp_path):
    store = tmp_path / "c.zarr"
    path = lock_path(store)
    with store_lock(store, heartbeat_s=0.1, stale_s=0.5) as lock:
        os.rename(path, path + ".aside")
        os.mkdir(path)
        time.sleep(1.2)
        with pytest.raises(StoreLockedError, match="could not be confirmed for"):
            lock.check()
        os.rmdir(path)
    assert not os.path.exists(path)  # a lost lock is not touched at the end


def entered(store, **kw):
    """A StoreLock taken (in the calling thread) and held until ``.release()``; the manager is kept
    alive on it (a collected generator would release the lock)."""
    cm = store_lock(store, **kw)
    lock = cm.__enter__()
    lock.manager = cm
    return lock


def test_wait_lock_gives_up_after_the_given_seconds_and_break_lock_takes_over(tmp_path, caplog):
    store = tmp_path / "c.zarr"
    with store_lock(store, **FAST) as lock:
        t0 = time.monotonic()
        err = in_thread(lambda: entered(store, wait_s=1.5, **FAST))["error"]
        assert isinstance(err, StoreLockedError) and "after waiting 1.5 s" in str(err)
        assert time.monotonic() - t0 >= 1.5
        with caplog.at_level(logging.WARNING, logger="rsembed_dask.store.lock"):
            box = in_thread(lambda: entered(store, break_lock=True, **FAST))
        assert f"broke the writer lock of pid {os.getpid()}" in caplog.text
        broke = box["value"]
        time.sleep(0.5)
        with pytest.raises(StoreLockedError, match="lost its writer lock"):
            lock.check()
    assert read_lock(store).token == broke.token  # the first holder left the breaker's lock alone
    broke.release()
    assert read_lock(store) is None


def test_wait_lock_gets_the_lock_when_the_holder_ends(tmp_path):
    store = tmp_path / "c.zarr"
    held = entered(store, **FAST)
    threading.Timer(0.8, held.release).start()
    box = in_thread(lambda: entered(store, wait_s=30, **FAST))
    lock = box["value"]
    assert read_lock(store).token == lock.token
    lock.release()


def test_inspect_never_takes_the_lock_and_names_the_writer(tmp_path, capsys):
    store = tmp_path / "c.zarr"
    spec = CampaignSpec(temporal=TemporalSpec.year(2022), model=ModelSpec("test-tiny", image_size=32),
                        scales=(10.0,), chunk_size=4)
    Cube.create_or_open(store, spec=spec, ids=["a", "b"], lon=[3.0, 3.1], lat=[31.0, 31.1], geohash=["x", "y"],
                        wkb=["00", "00"], embed_dim=4)
    with store_lock(store):
        capsys.readouterr()
        assert main(["inspect", str(store), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["writer"].startswith(f"pid {os.getpid()} on {socket.gethostname()}")
        assert read_lock(store).pid == os.getpid()
    assert main(["inspect", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["writer"] is None


def test_a_run_blocked_anywhere_is_interrupted_when_its_lock_is_lost(tmp_path):
    """With ``interrupt`` (as run_campaign takes it), a lost lock stops the main thread wherever it
    waits (here a long sleep, as a blocked actor start would) with StoreLockedError, not Ctrl-C."""
    from rsembed_dask.store.lock import one_writer

    store = tmp_path / "c.zarr"

    @one_writer("out", lambda bound: {"interrupt": True, "heartbeat_s": 0.1, "stale_s": 1.0})
    def blocked(out):
        threading.Timer(0.3, lambda: write_lock(store, **OTHER_HOST)).start()  # another run took it
        time.sleep(60)

    t0 = time.monotonic()
    with pytest.raises(StoreLockedError, match="lost its writer lock: it is now held by pid 1 on node-17"):
        blocked(store)
    assert time.monotonic() - t0 < 30
    assert read_lock(store).host == "node-17.cluster"  # left alone
