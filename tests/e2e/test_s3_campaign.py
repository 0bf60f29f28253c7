"""A campaign into a bucket on real `dask worker` processes: a loopback S3 server (moto) reached with the
standard AWS_* variables, the client SIGKILLed then resumed, --append, --update, verify and repair of a
deleted and of a corrupted chunk object, export and STAC from the bucket; embeddings bit-identical to the
same campaign written to a local path."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import obstore
import pytest
import shapely

from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.cli import main
from rsembed_dask.emulator import GEEEmulator
from rsembed_dask.errors import CubeError
from rsembed_dask.store.cube import OK, Cube, open_cube
from rsembed_dask.store.location import StoreLocation

from ..conftest import dask_processes
from .test_resilience import TINY, WINDOW, _cli, _gdf


def _done_units(url, chunk=4):
    try:
        status = Cube.open(url).status_array()
    except CubeError:  # still being created
        return set()
    return {(s // chunk, j) for s in range(0, status.shape[0], chunk) for j in range(status.shape[1])
            if (status[s:s + chunk, j] != 0).all()}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_campaign_in_a_bucket_on_dask_worker_processes(tmp_path, s3_bucket, s3_server, capsys):
    samples = tmp_path / "samples.geojson"
    gdf = _gdf(48)
    gdf.to_file(samples)
    url = f"{s3_bucket}/cube.zarr"
    store = StoreLocation.parse(url)
    with GEEEmulator(seed=0, latency_s=0.05) as emu, \
            dask_processes(n_gpu=1, n_fetch=1, env=s3_server.env) as (addr, _):
        opts = {"api_url": emu.url, "credentials": "anonymous", "project": "p"}
        kw = dict(scales=[10, 20], temporal=WINDOW, model=TINY, backend="gee", gee_options=opts, client=addr,
                  chunk_size=4, progress=False, id_column="site")
        local = run_campaign(gdf, tmp_path / "local.zarr", **kw)

        # 1. the client is SIGKILLed mid-run; the same command resumes
        client = subprocess.Popen(_cli(samples, url, addr, emu.url), stdout=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and len(_done_units(url)) < 4:
            time.sleep(0.3)
        client.send_signal(signal.SIGKILL)
        client.wait(30)
        time.sleep(3)
        done_before = _done_units(url)
        assert 4 <= len(done_before) < 24
        rc = subprocess.run(_cli(samples, url, addr, emu.url), timeout=300, stdout=subprocess.DEVNULL).returncode
        assert rc == 0
        ds = open_cube(url)
        assert (ds.status.values == OK).all()
        np.testing.assert_array_equal(ds.embedding.values, local.embedding.values)  # bit-identical
        assert Cube.open(url).attrs["last_run"]["units_run"] <= 24 - len(done_before)

        # 2. a resume of the finished cube: status read once, no chunk listing
        n0 = len(s3_server.requests)
        run_campaign(gdf, url, **kw)
        print(f"resume requests per unit: {(len(s3_server.requests) - n0) / 24:.2f} (24 units: the fixed "
              "cost of opening dominates; see tests/integration/test_s3_store.py for many units)")

        # 3. a deleted and a corrupted chunk object: verify names them, --repair re-runs them
        obs = store.object_store()
        obstore.delete(obs, "embedding/c/1/0/0")
        obstore.put(obs, "embedding/c/2/1/0", b"\x00garbage, not a zstd frame\x00")
        capsys.readouterr()
        assert main(["inspect", url, "--verify", "--json"]) == 1
        problems = json.loads(capsys.readouterr().out)["problems"]
        assert any("missing" in p for p in problems) and any("cannot be decoded" in p for p in problems)
        repaired = run_campaign(gdf, url, repair=True, **kw)
        assert (repaired.status.values == OK).all()
        np.testing.assert_array_equal(repaired.embedding.values, local.embedding.values)
        assert main(["inspect", url, "--verify"]) == 0
        capsys.readouterr()

        # 4. --update (two samples moved) and --append (eight new ones)
        moved = gdf.copy()
        moved.loc[moved.index[:2], "geometry"] = moved.geometry.iloc[:2].apply(
            lambda p: shapely.affinity.translate(p, 0.01, 0.0))
        updated = run_campaign(moved, url, update=True, **kw)
        assert (updated.status.values == OK).all()
        extra = _gdf(8)
        extra["site"] = [f"new{i}" for i in range(8)]
        extra["geometry"] = extra.geometry.translate(0.05, 0.05)
        grown = pd.concat([moved, extra], ignore_index=True)
        appended = run_campaign(grown, url, append=True, **kw)
        assert appended.sizes["sample"] == 56 and (appended.status.values == OK).all()

    # 5. export to the bucket, STAC from the bucket
    assert main(["export", url, f"{s3_bucket}/export/cube.parquet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 56 * 2 and report["path"] == f"{s3_bucket}/export/cube.parquet"
    head = obstore.head(StoreLocation.parse(f"{s3_bucket}/export").object_store(), "cube.parquet")
    assert head["size"] == report["file_bytes"] > 0
    assert main(["stac", url, "--out", str(tmp_path / "stac")]) == 0
    collection = json.loads((tmp_path / "stac" / "collection.json").read_text())
    assert collection["id"] == "cube"
