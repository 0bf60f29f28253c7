"""A campaign on a multi-process Dask cluster whose actor worker is killed mid-run."""

import signal
import time

import numpy as np
import pytest

from rsembed_dask.store.cube import OK, Cube
from rsembed_dask.campaign.run import run_campaign

from ..conftest import dask_processes
from ..integration.test_pipeline import TINY, WINDOW, _points


@pytest.fixture
def process_cluster():
    with dask_processes(n_gpu=2) as (addr, procs):
        yield addr, procs["gpu"]


@pytest.mark.timeout(300)
def test_multiprocess_cluster_and_actor_worker_killed(tmp_path, process_cluster, emulator):
    addr, workers = process_cluster
    gdf = _points(48, seed=3)
    opts = {"api_url": emulator.url, "credentials": "anonymous", "project": "test-project"}
    clean = run_campaign(gdf, tmp_path / "clean.zarr", scales=[10], temporal=WINDOW, model=TINY, backend="gee",
                         gee_options=opts, client=addr, chunk_size=4, progress=False)
    assert (clean.status.values == OK).all()
    # Both GPU workers get an actor (which of them embeds how many units depends on which
    # model loads first: the elastic runner feeds ready actors).
    records = Cube.open(tmp_path / "clean.zarr").attrs["last_run"]["workers"]
    assert len({w["address"] for w in records}) == 2
    assert sum(w["units"] for w in records) == 12

    killed = []

    def kill_one(summary):
        if not killed:
            workers[0].send_signal(signal.SIGKILL)
            killed.append(time.time())

    ds = run_campaign(gdf, tmp_path / "killed.zarr", scales=[10], temporal=WINDOW, model=TINY, backend="gee",
                      gee_options=opts, client=addr, chunk_size=4, progress=False, on_unit=kill_one)
    assert killed and (ds.status.values == OK).all()
    np.testing.assert_allclose(ds.embedding.values, clean.embedding.values, rtol=1e-5, atol=1e-6)
    last = Cube.open(tmp_path / "killed.zarr").attrs["last_run"]
    assert last["actors_lost"] == 1 and last["units_done"] == 12


@pytest.mark.timeout(300)
def test_writes_run_off_the_gpu_worker(tmp_path, emulator):
    """Fetch and write tasks on the fetch worker, only the forward on the GPU worker."""
    from distributed import Client, get_task_stream

    gdf = _points(24, seed=5)
    opts = {"api_url": emulator.url, "credentials": "anonymous", "project": "test-project"}
    with dask_processes(n_gpu=1, n_fetch=1) as (addr, procs), Client(addr) as client:
        by_name = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
        with get_task_stream(client) as ts:
            ds = run_campaign(gdf, tmp_path / "c.zarr", scales=[10], temporal=WINDOW, model=TINY, backend="gee",
                              gee_options=opts, client=client, chunk_size=4, progress=False)
        assert (ds.status.values == OK).all()
        # The fetch worker converts chips in numpy: it never imports torch (~470 MiB).
        def imports_torch() -> bool:  # nested: pickled by value (workers cannot import `tests`)
            import sys

            return "torch" in sys.modules

        assert client.run(imports_torch, workers=[by_name["fetch-0"]]) == {by_name["fetch-0"]: False}
    ran = {}
    for rec in ts.data:
        ran.setdefault(str(rec["key"]).split("-")[0], set()).add(rec["worker"])
    assert ran["embed"] == {by_name["gpu-0"]}
    assert ran["write"] == {by_name["fetch-0"]} and ran["fetch"] == {by_name["fetch-0"]}
