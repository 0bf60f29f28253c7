"""`rsembed-dask run` and `inspect` on a sample file, with the emulator and the default local cluster."""

import json

import geopandas as gpd
import numpy as np
import pytest

from rsembed_dask.cli.commands import main
from rsembed_dask.store.cube import OK, Cube, open_cube


@pytest.mark.timeout(300)
@pytest.mark.parametrize("suffix, extra", [(".geojson", ["--stac-dir", "stac"]), (".parquet", ["--precision", "auto"])])
def test_run_then_inspect(tmp_path, capsys, suffix, extra):
    rng = np.random.default_rng(1)
    gdf = gpd.GeoDataFrame({"plot": [f"plot-{i}" for i in range(6)]},
                           geometry=gpd.points_from_xy(3 + rng.uniform(0, .2, 6), 31 + rng.uniform(0, .2, 6)),
                           crs="EPSG:4326").to_crs("EPSG:3857")
    samples = tmp_path / f"samples{suffix}"
    gdf.to_parquet(samples) if suffix == ".parquet" else gdf.to_file(samples)
    out = tmp_path / "cube.zarr"
    rc = main(["run", str(samples), "--out", str(out), "--scales", "10,40", "--start", "2022-01-01",
               "--end", "2022-02-01", "--model", "test-tiny", "--backend", "emulator", "--id-column", "plot",
               "--chunk-size", "4", "--no-progress", *[str(tmp_path / a) if a == "stac" else a for a in extra]])
    assert rc == 0
    ds = open_cube(out)
    assert (ds.status.values == OK).all() and set(ds.sample.values.tolist()) == set(gdf["plot"])
    printed = capsys.readouterr()
    # --no-progress hides the bar and the dashboard link, never the final summary; no library INFO logs.
    assert "4/4 units run this time" in printed.out and "Dask dashboard" not in printed.out
    assert "INFO" not in printed.err and "Traceback" not in printed.err
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["status"]["ok"] == 12 and info["scales"] == [10.0, 40.0]
    assert info["spec"]["model"]["model_id"] == "test-tiny"
    # The spec keeps what was asked ("auto"); last_run says what the actor made of it here.
    assert info["spec"]["model"].get("dtype", "float32") == ("auto" if "--precision" in extra else "float32")
    if "--stac-dir" in extra:  # the catalogue written after the run, as `rsembed-dask stac` would
        collection = json.loads((tmp_path / "stac" / "collection.json").read_text())
        assert collection["type"] == "Collection" and f"STAC catalogue: {tmp_path / 'stac'}" in printed.out
    assert Cube.open(out).attrs["last_run"]["models"] == ["cpu float32 batch 8"]
    account = info["request_account"]
    assert account["sent"] == account["planned"] and account["planned"] + account["reused"] == 12
    assert info["variables"]["embedding"]["dims"] == ["sample", "scale", "feature"]


def test_run_refuses_a_missing_file(tmp_path, capsys):
    rc = main(["run", str(tmp_path / "nope.gpkg"), "--out", str(tmp_path / "c.zarr"), "--start", "2022-01-01",
               "--end", "2022-02-01", "--backend", "emulator"])
    assert rc == 2 and "samples" in capsys.readouterr().err
