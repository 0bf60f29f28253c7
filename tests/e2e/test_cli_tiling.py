"""`rsembed-dask run --tile` and `inspect` of a tiling store, with the emulator and the default local cluster."""

import json
import shutil

import pytest
import zarr

from rsembed_dask.cli.commands import _unfinished_cells, main
from rsembed_dask.store.cube import FAILED, OK, open_cube
from rsembed_dask.specs import CampaignSpec, ModelSpec, TemporalSpec
from rsembed_dask.store.tiling import create_or_open_tiling
from rsembed_dask.sampling.tiling import tile_aoi

# ~0.05 x 0.05 degrees with a negative first longitude: the bbox must not read as an option.
BBOX = "-3.05,31.0,-3.0,31.05"
WINDOW = ["--start", "2022-01-01", "--end", "2022-02-01"]


@pytest.mark.timeout(300)
def test_run_tile_then_inspect_and_verify(tmp_path, capsys):
    out = tmp_path / "tiles.zarr"
    rc = main(["run", BBOX, "--tile", "--out", str(out), "--scales", "20", "40", *WINDOW,
               "--model", "test-tiny", "--backend", "emulator", "--no-progress"])
    assert rc == 0
    assert "open_cube" in capsys.readouterr().out
    tiling = tile_aoi((-3.05, 31.0, -3.0, 31.05), scales=[20, 40], image_size=ModelSpec.from_env(model_id="test-tiny").image_size)
    tree = open_cube(out)
    for s in (20, 40):
        ds = tree[f"samples/{s}m"].to_dataset()
        assert ds.sizes["sample"] == len(tiling.table(s)) > 0 and (ds.status.values == OK).all()

    assert main(["inspect", str(out), "--json", "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "tiling" and info["scales"] == [20.0, 40.0] and info["raster_synced"] is True
    assert info["problems"] == []
    assert info["spec"]["model"]["model_id"] == "test-tiny"
    for s in (20, 40):
        sc = info["per_scale"][f"{s}m"]
        n = len(tiling.table(s))
        assert sc["tiles"] == n and sc["status"]["ok"] == n and sum(sc["status"].values()) == n
        zones = tiling.table(s).zones()
        assert sorted(sc["zones"]) == [f"EPSG{z}" for z in sorted(zones)]
        for z in zones:
            grid = sc["zones"][f"EPSG{z}"]
            assert grid["crs"] == f"EPSG:{z}" and grid["cell_m"] == s * tiling.image_size
            assert list(tree[f"{s}m/EPSG{z}"].to_dataset().status.shape) == grid["shape"]
    assert info["status"]["ok"] == len(tiling)
    account = info["request_account"]
    assert account["sent"] == account["planned"] > 0

    # quicklooks: a GeoTIFF and a PNG per zone of the scale, printed
    assert main(["quicklook", str(out), "--scale", "20", "--out", str(tmp_path / "ql")]) == 0
    printed = capsys.readouterr().out.split()
    zones20 = tiling.table(20).zones()
    assert sorted(p.rsplit("/", 1)[1] for p in printed) == sorted(
        f"quicklook_20m_EPSG{z}.{ext}" for z in zones20 for ext in ("png", "tif"))
    assert all((tmp_path / "ql" / p.rsplit("/", 1)[1]).is_file() for p in printed)
    assert main(["quicklook", str(out), "--scale", "10", "--out", str(tmp_path / "ql")]) == 2
    # a damaged grid chunk (one flipped byte): one line naming it and the repair, exit 2 (issue 21)
    bad = tmp_path / "bad.zarr"
    shutil.copytree(out, bad)
    chunk = sorted((bad / "20m").glob("EPSG*/embedding/c/*/*/*"))[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["quicklook", str(bad), "--scale", "20", "--out", str(tmp_path / "ql2")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "array 'embedding' of 20m/EPSG" in err and "checksum" in err and "--repair" in err

    # the text form
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tiling store" in text and "grids synced with the sample cubes: yes" in text

    # a grid cell whose status is not its sample's is a problem
    zone = f"EPSG{tiling.table(40).zones()[0]}"
    grid = zarr.open_group(out / "40m" / zone, mode="r+")
    index = grid["sample_index"][...]
    y, x = (int(v[0]) for v in (index >= 0).nonzero())
    grid["status"][y, x] = FAILED
    assert main(["inspect", str(out), "--json", "--verify"]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert len(problems) == 1 and problems[0].startswith(f"40m/{zone}: 1 grid cells whose status is not")


def test_a_tiling_store_with_pending_tiles_is_unfinished(tmp_path, capsys):
    tiling = tile_aoi((3.0, 31.0, 3.02, 31.02), scales=[40])
    spec = CampaignSpec(temporal=TemporalSpec.range("2022-01-01", "2022-02-01"),
                        model=ModelSpec("test-tiny", device="cpu"), scales=tiling.scales, chunk_size=64,
                        buffer_m=None)
    out = tmp_path / "t.zarr"
    create_or_open_tiling(out, tiling, spec, embed_dim=8)
    assert _unfinished_cells(open_cube(out)) == len(tiling) > 0  # exit code 1 for run
    assert main(["inspect", str(out), "--json", "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["raster_synced"] is False and info["problems"] == []
    assert info["per_scale"]["40m"]["status"]["pending"] == len(tiling) and info["request_account"] is None


@pytest.mark.parametrize("flag", [["--id-column", "plot"], ["--skip-invalid"]])
def test_run_tile_refuses_options_of_sample_files(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exc:
        main(["run", BBOX, "--tile", "--out", str(tmp_path / "x.zarr"), *WINDOW, "--backend", "emulator", *flag])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "rsembed-dask run: error:" in err and flag[0] in err and "--tile" in err
    assert not (tmp_path / "x.zarr").exists()
