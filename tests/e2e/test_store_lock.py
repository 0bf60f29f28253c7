"""One writer per store: two real `rsembed-dask run` processes on one cube, stale locks, the lock itself."""

import json
import logging
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import geopandas as gpd
import numpy as np
import pytest

from rsembed_dask.cli.commands import EXIT_LOCKED, main
from rsembed_dask.store.cube import OK, Cube, open_cube
from rsembed_dask.errors import StoreLockedError
from rsembed_dask.specs import CampaignSpec, ModelSpec, TemporalSpec
from rsembed_dask.store.lock import STALE_S, lock_path, read_lock, store_lock
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
    holder = {"user": "someone", "host": socket.gethostname(), "pid": os.getpid(), "pid_start": None,
              "started": "2024-01-01T00:00:00+00:00", "store": str(store), "token": "theirs"}
    holder.update(fields)
    with open(lock_path(store), "w") as fh:
        json.dump(holder, fh)


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


def test_a_live_holder_is_named_and_nothing_is_taken(tmp_path):
    store = tmp_path / "c.zarr"
    with store_lock(store):
        holder = read_lock(store)
        assert holder.pid == os.getpid() and holder.host == socket.gethostname()
        with pytest.raises(StoreLockedError, match=rf"c.zarr is being written by pid {os.getpid()} on "
                                                   rf"{socket.gethostname()} since .* \(user "):
            with store_lock(store):
                pass
        assert read_lock(store).token == holder.token  # still the first holder's
    assert read_lock(store) is None


def test_other_hosts_are_judged_by_their_heartbeat(tmp_path, caplog):
    store = tmp_path / "c.zarr"
    write_lock(store, host="node-17.cluster", pid=1)
    with pytest.raises(StoreLockedError, match="pid 1 on node-17.cluster"):
        with store_lock(store):
            pass
    old = time.time() - STALE_S - 60
    os.utime(lock_path(store), (old, old))
    with caplog.at_level(logging.WARNING, logger="rsembed_dask.store.lock"):
        with store_lock(store):
            assert read_lock(store).pid == os.getpid()
    assert "heartbeat is" in caplog.text and "node-17.cluster" in caplog.text
    assert read_lock(store) is None


def test_the_heartbeat_refreshes_the_lock(tmp_path):
    store = tmp_path / "c.zarr"
    with store_lock(store, heartbeat_s=0.05):
        old = time.time() - 100
        os.utime(lock_path(store), (old, old))
        time.sleep(0.3)
        assert read_lock(store).heartbeat_age_s < 5


def test_the_lock_is_released_on_ctrl_c_and_errors(tmp_path):
    store = tmp_path / "c.zarr"
    for exc in (KeyboardInterrupt, RuntimeError):
        with pytest.raises(exc):
            with store_lock(store):
                raise exc()
        assert not os.path.exists(lock_path(store))


def test_an_empty_lock_file_is_held_briefly_then_stale(tmp_path):
    store = tmp_path / "c.zarr"
    open(lock_path(store), "w").close()  # a holder between creating and writing it
    with pytest.raises(StoreLockedError, match="has not yet written its name"):
        with store_lock(store):
            pass
    old = time.time() - 60
    os.utime(lock_path(store), (old, old))
    with store_lock(store):
        assert read_lock(store).pid == os.getpid()


def _try_lock(store, barrier, results):
    barrier.wait()
    try:
        with store_lock(store):
            results.put("got it")
            time.sleep(1.0)
    except StoreLockedError:
        results.put("refused")


def test_of_processes_starting_together_exactly_one_gets_the_lock(tmp_path):
    store = tmp_path / "c.zarr"
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_try_lock, args=(str(store), barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    got = sorted(results.get(timeout=5) for _ in procs)
    assert got == ["got it", "refused", "refused", "refused"]


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
