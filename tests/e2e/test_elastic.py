"""The runner follows the cluster on real `dask worker` processes: late GPU workers, faulty ones, kills."""

import logging
import os
import random
import signal
import textwrap
import threading
import time

import geopandas as gpd
import numpy as np
import pytest

from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.emulator import GEEEmulator
from rsembed_dask.errors import RsEmbedError
from rsembed_dask.specs import ModelSpec, TemporalSpec
from rsembed_dask.store.cube import OK, Cube
from rsembed_dask.store.verify import verify_cube

from ..conftest import dask_processes, dask_worker

WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")
TINY = ModelSpec("test-tiny", device="cpu")
#: Made faulty from outside the package: every torch module call (the forward) raises a CUDA-like error.
FAULTY_SITECUSTOMIZE = textwrap.dedent('''
    import torch

    def _broken_call(self, *args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected by sitecustomize)")

    torch.nn.Module.__call__ = _broken_call
''')


def _gdf(n, seed=11):
    rng = np.random.default_rng(seed)
    return gpd.GeoDataFrame({"site": [f"s{i:03d}" for i in range(n)]},
                            geometry=gpd.points_from_xy(3 + rng.uniform(0, 2, n), 31 + rng.uniform(0, 2, n)),
                            crs="EPSG:4326")


def _kw(emu, addr, **extra):
    opts = {"api_url": emu.url, "credentials": "anonymous", "project": "p"}
    return dict(scales=[10], temporal=WINDOW, model=TINY, backend="gee", gee_options=opts, client=addr,
                chunk_size=4, progress=False, id_column="site", **extra)


def _faulty_env(tmp_path):
    site = tmp_path / "faulty-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAULTY_SITECUSTOMIZE)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


class _OnLog(logging.Handler):
    """Calls ``action`` once, on the first record whose message holds ``words``."""

    def __init__(self, words, action):
        super().__init__()
        self.words, self.action, self.fired = words, action, False

    def emit(self, record):
        if not self.fired and self.words in record.getMessage():
            self.fired = True
            self.action()


@pytest.mark.timeout(400)
def test_a_faulty_gpu_worker_is_quarantined_and_its_units_run_elsewhere(tmp_path):
    with GEEEmulator(seed=0) as emu, dask_processes(n_gpu=0, n_fetch=1) as (addr, procs):
        from distributed import Client

        procs["gpu"].append(dask_worker(addr, "gpu-bad", gpu=True, env=_faulty_env(tmp_path)))
        with Client(addr) as c:
            c.wait_for_workers(2, timeout=120)
        # Alone, the faulty worker is quarantined; with no healthy GPU worker the run stops after
        # --gpu-wait, naming it and its error; its units stay pending.
        with pytest.raises(RsEmbedError, match=r"no healthy GPU worker left.*gpu-bad.*CUDA error"):
            run_campaign(_gdf(48), tmp_path / "c.zarr", **_kw(emu, addr, gpu_wait_s=2))
        assert (Cube.open(tmp_path / "c.zarr").status_array() != OK).all()
        # Again: once it is quarantined a healthy worker joins, and takes every unit.
        hook = _OnLog("quarantined", lambda: procs["gpu"].append(dask_worker(addr, "gpu-0", gpu=True)))
        runner_log = logging.getLogger("rsembed_dask.campaign.runner")
        runner_log.addHandler(hook)
        try:
            ds = run_campaign(_gdf(48), tmp_path / "c.zarr", **_kw(emu, addr, gpu_wait_s=120))
        finally:
            runner_log.removeHandler(hook)
    assert hook.fired
    assert (ds.status.values == OK).all() and verify_cube(tmp_path / "c.zarr") == []
    last = Cube.open(tmp_path / "c.zarr").attrs["last_run"]
    (bad,) = [k for k in last["quarantined"] if "gpu-bad" in k]
    assert "CUDA error" in last["quarantined"][bad]
    by_name = {w["name"]: w for w in last["workers"]}
    assert by_name["gpu-bad"]["state"] == "quarantined" and by_name["gpu-bad"]["units"] == 0
    assert by_name["gpu-0"]["units"] == 12 and by_name["gpu-0"]["load_s"] > 0
    assert last["units_failed"] == 0 and last["units_rerun"] >= 2


@pytest.mark.timeout(400)
def test_a_gpu_worker_joining_mid_run_gets_a_fair_share(tmp_path):
    # Paced by Earth Engine (2 requests at once, 0.5 s each): about 45 s of work for one GPU worker.
    with GEEEmulator(seed=0, latency_s=0.5) as emu, dask_processes(n_gpu=1, n_fetch=1) as (addr, procs):
        finished = []  # (time, worker)
        joined = {}

        def join_later():
            time.sleep(15)
            joined["t"] = time.monotonic()
            procs["gpu"].append(dask_worker(addr, "gpu-late", gpu=True))

        threading.Thread(target=join_later, daemon=True).start()
        ds = run_campaign(_gdf(180), tmp_path / "c.zarr", **_kw(
            emu, addr, ee_concurrency=2, on_unit=lambda s: finished.append((time.monotonic(), s.worker))))
    assert (ds.status.values == OK).all()
    last = Cube.open(tmp_path / "c.zarr").attrs["last_run"]
    by_name = {w["name"]: w for w in last["workers"]}
    late = by_name["gpu-late"]
    assert late["state"] == "ready" and late["load_s"] > 0
    assert all(t > joined["t"] for t, w in finished if w == late["address"])
    first = min(t for t, w in finished if w == late["address"])
    after = [w for t, w in finished if t >= first]
    late_units = sum(1 for w in after if w == late["address"])
    assert late["units"] == late_units
    # A fair share of what was left once its model was loaded (half; a third on a loaded machine).
    assert late_units >= len(after) / 3, (late_units, len(after))


def _chaos(procs, addr, kills, join_at):
    """SIGKILL ``procs["gpu"][i]`` at each ``(seconds, i)`` of ``kills``; a new GPU worker joins at ``join_at``."""
    t0 = time.monotonic()
    events = sorted([(t, "kill", i) for t, i in kills] + [(join_at, "join", None)], key=lambda e: e[0])
    for t, what, i in events:
        time.sleep(max(0.0, t0 + t - time.monotonic()))
        if what == "kill":
            procs["gpu"][i].send_signal(signal.SIGKILL)
        else:
            procs["gpu"].append(dask_worker(addr, "gpu-third", gpu=True))


def _killed_run(tmp_path, n, kills, join_at, **extra):
    with GEEEmulator(seed=0, latency_s=0.2) as emu, dask_processes(n_gpu=2, n_fetch=1) as (addr, procs):
        clean = run_campaign(_gdf(n), tmp_path / "clean.zarr", **_kw(emu, addr))
        chaos = threading.Thread(target=_chaos, args=(procs, addr, kills, join_at), daemon=True)
        chaos.start()
        ds = run_campaign(_gdf(n), tmp_path / "c.zarr", **_kw(emu, addr, gpu_wait_s=120, **extra))
        chaos.join()
    assert (ds.status.values == OK).all()
    np.testing.assert_array_equal(ds.embedding.values, clean.embedding.values)
    assert verify_cube(tmp_path / "c.zarr") == []
    return Cube.open(tmp_path / "c.zarr").attrs["last_run"]


@pytest.mark.timeout(400)
def test_gpu_worker_killed_while_its_model_loads_costs_no_more_than_a_health_check(tmp_path):
    # gpu-0 dies half a second in (its model is loading), a third worker joins at 4 s.
    last = _killed_run(tmp_path, 48, kills=[(0.5, 0)], join_at=4.0)
    assert last["actors_lost"] >= 1 and last["units_failed"] == 0
    assert any(w["name"] == "gpu-0" and w["state"] == "lost" for w in last["workers"])


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", [1, 2])
def test_gpu_workers_killed_at_random_in_the_first_30_s_with_a_third_joining(tmp_path, seed):
    rng = random.Random(seed)
    kills = [(rng.uniform(0, 30), 0), (rng.uniform(0, 30), 1)]
    last = _killed_run(tmp_path, 160, kills=kills, join_at=rng.uniform(5, 25), ee_concurrency=2)
    assert last["units_failed"] == 0
