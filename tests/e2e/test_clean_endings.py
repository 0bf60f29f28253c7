"""Clean endings and early checks, met where users meet them: `rsembed-dask` processes.

A dead scheduler, a bad backend or ``demo --samples 0`` are refused in one line before
any cube or cluster exists; SIGTERM ends a run like Ctrl-C (units finish or stay
pending, the cube verifies, one line says how to resume); a successful run ends
without tracebacks; a finished cube on read-only storage has nothing to do; the order
of ``--scales`` does not matter.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import geopandas as gpd
import numpy as np
import pytest

from rsembed_dask.store.cube import OK, PENDING, Cube, open_cube
from rsembed_dask.errors import ClusterError, CubeError
from rsembed_dask.emulator import GEEEmulator

CLI = [sys.executable, "-m", "rsembed_dask.cli"]
WINDOW = ["--start", "2022-01-01", "--end", "2022-02-01"]


def _cli(*args, timeout=120, **kw):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    rng = np.random.default_rng(3)
    n = 40
    gdf = gpd.GeoDataFrame({"plot": [f"plot-{i:02d}" for i in range(n)]},
                           geometry=gpd.points_from_xy(3 + rng.uniform(0, .3, n), 31 + rng.uniform(0, .3, n)),
                           crs="EPSG:4326")
    path = tmp_path_factory.mktemp("samples") / "plots.geojson"
    gdf.to_file(path)
    return path


@pytest.mark.parametrize("extra, words", [
    (["--scheduler", "tcp://127.0.0.1:{port}"], ["tcp://127.0.0.1:{port}", "dask scheduler", "cluster/local.sh"]),
    (["--scheduler", "127.0.0.1"], ["scheduler", "host:port"]),
    (["--backend", "foo"], ["backend='foo'", "'gee', 'emulator', 'local:PATH'"]),
    (["--backend", "local:/no/such/rasters"], ["local:/no/such/rasters"]),
])
def test_bad_scheduler_or_backend_is_one_line_before_any_cube(tmp_path, samples, extra, words):
    port = _free_port()  # nothing listens there
    out = tmp_path / "c.zarr"
    t0 = time.perf_counter()
    r = _cli("run", samples, "--out", out, "--scales", "10", *WINDOW, "--model", "test-tiny", "--id-column", "plot",
             *[e.format(port=port) for e in extra])
    elapsed = time.perf_counter() - t0
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert all(w.format(port=port) in lines[0] for w in words), lines[0]
    assert not out.exists()  # checked before the cube is created
    assert "Dask dashboard" not in r.stdout and elapsed < 20  # and before any cluster started


def test_silent_scheduler_times_out_after_the_given_seconds(tmp_path, samples):
    with socket.socket() as server:  # accepts connections, never speaks Dask
        server.bind(("127.0.0.1", 0))
        server.listen()
        addr = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        t0 = time.perf_counter()
        r = _cli("run", samples, "--out", tmp_path / "c.zarr", *WINDOW, "--scheduler", addr,
                 "--scheduler-timeout", "1.5", "--backend", "emulator")
        elapsed = time.perf_counter() - t0
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert addr in r.stderr and "1.5 s" in r.stderr and "dask scheduler" in r.stderr
    assert 1.5 <= elapsed < 15 and not (tmp_path / "c.zarr").exists()


def test_connect_to_a_dead_address_is_a_cluster_error():
    from rsembed_dask.cluster.local import check_scheduler, connect

    addr = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(ClusterError, match="dask scheduler"):
        check_scheduler(addr)
    assert time.perf_counter() - t0 < 5  # a refused port fails at once, not after the timeout
    with pytest.raises(ClusterError, match=addr):
        with connect(addr, scheduler_timeout=1):
            pass


def test_demo_checks_its_arguments_before_doing_anything(tmp_path):
    out = tmp_path / "demo"
    r = _cli("demo", "--samples", "0", "--out", out, timeout=60)
    assert r.returncode == 2 and "--samples" in r.stderr and ">= 1" in r.stderr
    assert "[1/3]" not in r.stdout and not out.exists()
    (tmp_path / "file").write_text("not a directory")
    r = _cli("demo", "--out", tmp_path / "file", timeout=60)
    assert r.returncode == 2 and "not a file" in r.stderr and "[1/3]" not in r.stdout


def test_plan_of_an_aoi_drawn_across_the_antimeridian(tmp_path):
    import json

    ring = tmp_path / "ring.geojson"
    ring.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {},
        "geometry": {"type": "Polygon", "coordinates": [[[179, 0], [-179, 0], [-179, 1], [179, 1], [179, 0]]]}}]}))
    r = _cli("plan", ring, "--model", "test-tiny", "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["aoi"]["bounds"] == [179.0, 0.0, -179.0, 1.0]  # west > east: across 180°, not around the world
    footprints = sum(s["footprints"] for s in plan["scales"])
    assert 1000 < footprints < 10000, footprints  # thousands, not 1,134,392
    assert all(s["zones"] == 2 for s in plan["scales"])  # zones 60 and 1, not 60 zones
    assert "antimeridian" in r.stderr and "Traceback" not in r.stderr


def _sigint_default() -> None:
    """In the child before exec: SIGINT at its default disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_an_ok_cell(out, proc, timeout_s: float = 120) -> None:
    """Until the run writing ``out`` has stored an ok cell (or ended): mid-run."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if Cube.open(out).status_counts().get("ok", 0):
                return
        except CubeError:  # not created yet
            pass
        time.sleep(0.2)


@pytest.fixture(scope="module")
def interrupted_then_resumed(samples, tmp_path_factory):
    """One `run` against a slow emulator ended by SIGTERM mid-run, its cube verified, then resumed."""
    out = tmp_path_factory.mktemp("sigterm") / "cube.zarr"
    found = {}
    with GEEEmulator(seed=0, latency_s=1.0) as emu:
        args = [*CLI, "run", str(samples), "--out", str(out), "--scales", "10,20", *WINDOW, "--model", "test-tiny",
                "--id-column", "plot", "--chunk-size", "4", "--backend", "gee", "--ee-url", emu.url,
                "--credentials", "anonymous", "--ee-project", "p", "--no-progress"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for_an_ok_cell(out, proc)
            proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        found["term"] = (proc.returncode, stdout, stderr, time.monotonic() - t0)
        found["status_after_term"] = open_cube(out).status.values.copy()
        verify = _cli("inspect", out, "--verify", timeout=60)
        found["verify"] = (verify.returncode, verify.stdout + verify.stderr)
        resumed = subprocess.run(args, capture_output=True, text=True, timeout=180)
        found["resume"] = (resumed.returncode, resumed.stdout, resumed.stderr)
    found["args"], found["out"] = args, out
    return found


@pytest.mark.timeout(400)
def test_sigterm_ends_a_run_like_ctrl_c_and_the_cube_verifies(interrupted_then_resumed):
    rc, stdout, stderr, took = interrupted_then_resumed["term"]
    assert rc == 143, stderr
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if "interrupted (SIGTERM)" in ln]
    assert len(lines) == 1 and "run the same command again to resume: rsembed-dask run" in lines[0]
    assert took < 45  # in-flight units get at most 20 s to finish their writes
    status = interrupted_then_resumed["status_after_term"]
    assert (status == OK).any() and (status == PENDING).any()  # stopped mid-run, not after it
    rc, report = interrupted_then_resumed["verify"]
    assert rc == 0 and "verify: consistent" in report, report


@pytest.mark.timeout(400)
def test_resume_after_sigterm_completes_and_ends_without_tracebacks(interrupted_then_resumed):
    rc, stdout, stderr = interrupted_then_resumed["resume"]
    assert rc == 0, stderr
    assert "Traceback" not in stderr and "CommClosedError" not in stderr, stderr
    assert "INFO distributed" not in stderr  # the Dask stack's INFO chatter only with -vv
    assert (open_cube(interrupted_then_resumed["out"]).status.values == OK).all()


def _read_only(path, args):
    """``args`` run with ``path`` on read-only storage: a read-only bind mount (root), else chmod."""
    if os.geteuid() != 0:
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chmod(os.path.join(root, name), 0o555 if name in dirs else 0o444)
        os.chmod(path, 0o555)
        return args, lambda: subprocess.run(["chmod", "-R", "u+w", str(path)], check=True)
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount read-only as root")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {path} {path} && "
                            f"mount -o remount,bind,ro {path} {path} && ! touch {path}/probe"],
                           capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"cannot mount read-only here: {probe.stderr.strip()}")
    script = f'mount --bind "{path}" "{path}" && mount -o remount,bind,ro "{path}" "{path}" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, "sh", *args], lambda: None


@pytest.mark.timeout(400)
def test_finished_cube_on_read_only_storage_has_nothing_to_do(interrupted_then_resumed):
    out, args = interrupted_then_resumed["out"], interrupted_then_resumed["args"]
    cmd, restore = _read_only(out, [a for a in args if a != "--no-progress"])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        restore()
    assert r.returncode == 0, r.stderr
    assert "not writable" not in r.stderr and "0/0 units run this time" in r.stdout
    assert "Dask dashboard" not in r.stdout  # no cluster for a finished cube


@pytest.mark.timeout(400)
def test_scales_in_another_order_resume_the_same_cube(interrupted_then_resumed):
    out, args = interrupted_then_resumed["out"], list(interrupted_then_resumed["args"])
    args[args.index("10,20")] = "20,10"
    r = subprocess.run([a for a in args if a != "--no-progress"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "different campaign spec" not in r.stderr and "0/0 units run this time" in r.stdout
    assert open_cube(out).scale.values.tolist() == [10.0, 20.0]  # the cube's own order is kept


@pytest.mark.timeout(300)
def test_ctrl_c_reaches_the_process_group_and_only_the_client_answers(samples, tmp_path):
    """Ctrl-C in a terminal signals every process of the group, the local cluster's workers too."""
    out = tmp_path / "cube.zarr"
    with GEEEmulator(seed=0, latency_s=1.0) as emu:
        # As from a terminal: Ctrl-C at its default. A test run started in the background by a
        # non-interactive shell has SIGINT ignored, and the CLI would inherit that and ignore it.
        proc = subprocess.Popen([*CLI, "run", str(samples), "--out", str(out), "--scales", "10", *WINDOW,
                                 "--model", "test-tiny", "--id-column", "plot", "--chunk-size", "2", "--backend", "gee",
                                 "--ee-url", emu.url, "--credentials", "anonymous", "--ee-project", "p",
                                 "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, preexec_fn=_sigint_default)
        try:
            _wait_for_an_ok_cell(out, proc)
            os.killpg(proc.pid, signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "interrupted (SIGINT)" in stderr and "resume" in stderr
    assert (open_cube(out).status.values == PENDING).any()
    verify = _cli("inspect", out, "--verify", timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
