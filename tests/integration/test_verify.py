"""A damaged cube, as a user meets it through the CLI: `inspect --verify` names the damage,
a plain `run` re-runs units that lost chunks or refuses with advice, `run --repair` fixes it.

One finished cube is made once (emulator, `test-tiny`); each test damages a copy of it.
The runs use one in-process cluster (`--scheduler`) to stay fast.
"""

import json
import os
import shutil

import geopandas as gpd
import numpy as np
import pytest

from rsembed_dask.cli.commands import main
from rsembed_dask.store.cube import OK, Cube, open_cube
from rsembed_dask.store.verify import check_cube

IDS = [f"plot-{i}" for i in range(6)]  # chunks of 4: units [0, 4) and [4, 6) at 10 m and 40 m


@pytest.fixture(scope="module")
def made(tmp_path_factory, client):
    """``(samples file, finished cube, run arguments without --out)``."""
    d = tmp_path_factory.mktemp("made")
    rng = np.random.default_rng(1)
    gdf = gpd.GeoDataFrame({"plot": IDS}, geometry=gpd.points_from_xy(3 + rng.uniform(0, .2, 6),
                                                                      31 + rng.uniform(0, .2, 6)), crs="EPSG:4326")
    samples = d / "samples.geojson"
    gdf.to_file(samples)
    args = ["run", str(samples), "--scales", "10,40", "--start", "2022-01-01", "--end", "2022-02-01",
            "--model", "test-tiny", "--backend", "emulator", "--id-column", "plot", "--chunk-size", "4",
            "--no-progress", "--scheduler", client.scheduler.address]
    out = d / "cube.zarr"
    assert main(args + ["--out", str(out)]) == 0
    return out, args


@pytest.fixture
def cube(made, tmp_path):
    """A fresh copy of the finished cube, and a function running the CLI on it."""
    out, args = made
    path = tmp_path / "cube.zarr"
    shutil.copytree(out, path)

    def run(*extra):
        return main(args + ["--out", str(path), *extra])
    return path, run


def verify(path, capsys) -> tuple[int, list[str], str]:
    """``inspect --verify --json``: exit status, problems, stderr."""
    capsys.readouterr()
    rc = main(["inspect", str(path), "--verify", "--json"])
    out, err = capsys.readouterr()
    return rc, json.loads(out)["problems"], err


def last_run(path) -> dict:
    return Cube.open(path).attrs["last_run"]


def corrupt(path) -> None:
    with open(path, "r+b") as fh:
        fh.write(b"\x00garbage, not a zstd frame\x00" * 2)


@pytest.mark.timeout(120)
def test_a_lost_embedding_chunk_is_run_again_by_a_plain_run(cube, capsys):
    path, run = cube
    ids = open_cube(path).sample.values.tolist()  # in the cube's (Hilbert) order
    os.remove(path / "embedding" / "c" / "1" / "0" / "0")  # unit [4, 6) at 10 m
    rc, problems, err = verify(path, capsys)
    assert rc == 1 and "Traceback" not in err
    assert problems == [f"embedding at 10 m: 2 ok cells whose chunk is missing: ids {ids[4]!r}, {ids[5]!r} "
                        "(chunk embedding/c/1/0/0)"]

    assert run() == 0
    account = last_run(path)
    assert account["units_run"] == 1 and account["requests"]["sent"] > 0
    assert (open_cube(path).status.values == OK).all()
    assert verify(path, capsys)[:2] == (0, [])


@pytest.mark.timeout(120)
def test_corrupt_chunks_are_named_and_repaired(cube, capsys):
    path, run = cube
    corrupt(path / "embedding" / "c" / "0" / "1" / "0")  # unit [0, 4) at 40 m
    corrupt(path / "status" / "c" / "1" / "0")  # unit [4, 6) at 10 m
    rc, problems, err = verify(path, capsys)
    assert rc == 1 and "Traceback" not in err
    by_array = {p.split(":")[0]: p for p in problems}
    assert set(by_array) == {"embedding at 40 m", "status at 10 m"}
    assert "4 cells in a chunk that cannot be decoded" in by_array["embedding at 40 m"]
    assert "2 cells in a chunk that cannot be decoded" in by_array["status at 10 m"]
    assert all(("'plot-" in p) for p in problems)  # sample ids named

    # the text form says the same, without a traceback
    capsys.readouterr()
    assert main(["inspect", str(path), "--verify"]) == 1
    out, err = capsys.readouterr()
    assert "PROBLEMS" in out and "embedding at 40 m" in out and "Traceback" not in err

    # a plain run cannot decode the status: it says so and how to repair, and runs nothing
    capsys.readouterr()
    assert run() == 2
    err = capsys.readouterr().err
    assert "damaged" in err and "--repair" in err and "inspect --verify" in err and "Traceback" not in err

    assert run("--repair") == 0
    account = last_run(path)
    assert account["units_run"] == 2 and account["requests"]["sent"] > 0
    assert (open_cube(path).status.values == OK).all()
    assert verify(path, capsys)[:2] == (0, [])


@pytest.mark.timeout(120)
def test_truncated_array_metadata_is_named_and_restored(cube, capsys):
    path, run = cube
    before = open_cube(path).embedding.values
    ids = open_cube(path).sample.values.tolist()
    for name in ("input_res_m", "sample"):
        meta = path / name / "zarr.json"
        meta.write_text(meta.read_text()[:60])
    rc, problems, err = verify(path, capsys)
    assert rc == 1 and "Traceback" not in err
    assert any(p.startswith("input_res_m: the metadata of array 'input_res_m' (input_res_m/zarr.json) cannot be "
                            "read (JSONDecodeError") for p in problems)
    assert any(p.startswith("sample: the metadata of array 'sample'") for p in problems)

    capsys.readouterr()
    assert main(["inspect", str(path)]) == 2  # no summary of a cube that cannot be opened, no traceback
    err = capsys.readouterr().err
    assert "input_res_m/zarr.json" in err and "--repair" in err and "Traceback" not in err

    assert run() == 2
    err = capsys.readouterr().err
    assert "damaged" in err and "--repair" in err and "Traceback" not in err

    assert run("--repair") == 0  # the metadata is restored; the chunks were fine: nothing to embed
    assert verify(path, capsys)[:2] == (0, [])
    ds = open_cube(path)
    assert ds.sample.values.tolist() == ids
    np.testing.assert_array_equal(ds.embedding.values, before)


@pytest.mark.timeout(120)
def test_a_lost_sample_chunk_is_reported_and_rewritten_from_the_samples(cube, capsys):
    path, run = cube
    ids = open_cube(path).sample.values.tolist()
    os.remove(path / "sample" / "c" / "0")
    rc, problems, err = verify(path, capsys)
    assert rc == 1 and "Traceback" not in err
    assert problems[0].startswith("sample: 6 values whose chunk is missing (read as the fill value): positions 0, 1")

    assert run() == 2  # not "other sample ids": the cube is damaged
    err = capsys.readouterr().err
    assert "'sample'" in err and "missing" in err and "--repair" in err

    assert run("--repair") == 0  # the ids are checked by lon/lat, then written again
    assert open_cube(path).sample.values.tolist() == ids
    assert verify(path, capsys)[:2] == (0, [])


@pytest.mark.timeout(120)
def test_a_repair_that_cannot_check_the_samples_is_refused(cube, capsys):
    path, run = cube
    for name in ("sample", "lon", "geometry"):
        os.remove(path / name / "c" / "0")
    rc, problems, _ = verify(path, capsys)
    assert rc == 1 and {p.split(":")[0] for p in problems} == {"sample", "lon", "geometry"}
    assert run("--repair") == 2
    err = capsys.readouterr().err
    assert "cannot be repaired" in err and "ids, lon/lat and geometry are all damaged" in err
    assert not (path / "sample" / "c" / "0").exists()  # nothing written


def test_check_cube_reads_every_array(cube):
    """The data arrays' consistency with status, chunk by chunk (no run)."""
    path, _ = cube
    import zarr

    g = zarr.open_group(path, mode="r+")
    g["embedding"][0, 1, :] = np.nan  # an ok cell without its embedding
    g["error"][0, 0] = "a note on an ok cell"  # the chunk is stored (all "" would not be)
    g["status"][1, 0] = 3  # failed without a reason
    g["status"][2, 1] = 9  # unknown code
    g["valid_fraction"][3, 0] = np.nan
    h = check_cube(path)
    expected = [
        "embedding at 40 m: 1 ok cells with a non-finite embedding: ids ",
        "embedding at 10 m: 1 no_data or failed cells that hold an embedding: ids ",
        "error at 10 m: 1 failed cells without a reason: ids ",
        "status at 40 m: 1 cells with an unknown status code: ids ",
        "valid_fraction at 10 m: 1 finished cells without a valid fraction: ids ",
    ]
    assert sorted(p[:len(e)] for p, e in zip(sorted(h.problems), sorted(expected))) == sorted(expected)
    assert len(h.problems) == len(expected)
    assert h.damaged_units == {(0, 0), (0, 1)}
    assert h.status_counts == {"pending": 0, "ok": 10, "no_data": 0, "failed": 1, "unreadable": 0}


@pytest.mark.timeout(180)
def test_a_damaged_tiling_store_is_named_rerun_and_repaired(tmp_path, client, capsys):
    out = tmp_path / "tiles.zarr"
    args = ["run", "-3.05,31.0,-3.0,31.05", "--tile", "--out", str(out), "--scales", "20", "40",
            "--start", "2022-01-01", "--end", "2022-02-01", "--model", "test-tiny", "--backend", "emulator",
            "--no-progress", "--scheduler", client.scheduler.address]
    assert main(args) == 0
    zone = next(z for z in os.listdir(out / "40m") if z.startswith("EPSG"))

    # a lost chunk of a sample cube: named by verify, run again by a plain run, grids filled again
    os.remove(out / "samples" / "20m" / "embedding" / "c" / "0" / "0" / "0")
    rc, problems, err = verify(out, capsys)
    assert rc == 1 and "Traceback" not in err
    assert len(problems) == 1 and problems[0].startswith("samples/20m: embedding at 20 m: ")
    assert "ok cells whose chunk is missing: ids '" in problems[0]
    assert main(args) == 0
    assert last_run(out / "samples" / "20m")["units_run"] == 1
    assert verify(out, capsys)[:2] == (0, [])

    # a corrupt grid chunk, truncated array metadata, a lost coordinate chunk
    corrupt(out / "40m" / zone / "embedding" / "c" / "0" / "0" / "0")
    meta = out / "samples" / "40m" / "input_res_m" / "zarr.json"
    meta.write_text(meta.read_text()[:50])
    os.remove(out / "samples" / "40m" / "geohash" / "c" / "0")
    rc, problems, err = verify(out, capsys)
    assert rc == 1 and "Traceback" not in err
    assert any(p.startswith(f"40m/{zone}/embedding: ") and "cannot be decoded" in p for p in problems)
    assert any(p.startswith("samples/40m: input_res_m: the metadata of array 'input_res_m'") for p in problems)
    assert any(p.startswith("samples/40m: geohash: ") and "chunk is missing" in p for p in problems)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "damaged" in err and "--repair" in err and "Traceback" not in err
    assert main(args + ["--repair"]) == 0
    assert verify(out, capsys)[:2] == (0, [])


def test_units_missing_chunks_reads_the_listing_and_trusts_absent_fill_chunks(tmp_path):
    """A unit of no_data cells stores no embedding chunk (all NaN): not damage. An ok unit without one is."""
    from collections import namedtuple

    from rsembed_dask.store.cube import FAILED, NO_DATA
    from rsembed_dask.specs import CampaignSpec, ModelSpec, TemporalSpec

    Unit = namedtuple("Unit", "start scale_index")
    spec = CampaignSpec(temporal=TemporalSpec.year(2022), model=ModelSpec("test-tiny", image_size=32),
                        scales=(10.0,), chunk_size=2)
    cube = Cube.create_or_open(tmp_path / "c.zarr", spec=spec, ids=["a", "b", "c", "d", "e", "f"],
                               lon=[3.0] * 6, lat=[31.0] * 6, geohash=["x"] * 6, wkb=["00"] * 6, embed_dim=4)
    nan = np.full((2, 4), np.nan, "float32")
    cube.write_unit(0, 2, 0, embedding=np.ones((2, 4)), status=[OK, OK], input_res_m=[10, 10],
                    valid_fraction=[1, 1], error=["", ""])
    cube.write_unit(2, 4, 0, embedding=nan, status=[NO_DATA, FAILED], input_res_m=[np.nan] * 2,
                    valid_fraction=[0, 0], error=["no scene", "boom"])
    units = [Unit(0, 0), Unit(2, 0), Unit(4, 0)]  # the last one is pending: nothing vouched
    assert not (tmp_path / "c.zarr" / "embedding" / "c" / "1" / "0" / "0").exists()
    assert cube.units_missing_chunks(units) == [] and check_cube(cube.path).problems == []
    os.remove(tmp_path / "c.zarr" / "input_res_m" / "c" / "0" / "0")
    os.remove(tmp_path / "c.zarr" / "error" / "c" / "1" / "0")
    # A failed cell's lost reason is not lost data (a retry interrupted before its status write
    # leaves the same): the unit is not re-run for it, and verify names it without calling it missing.
    assert cube.units_missing_chunks(units) == [Unit(0, 0)]
    problems = check_cube(cube.path).problems
    assert [p.split(":")[0] + ":" + p.split(":")[1] for p in problems if p.startswith("input_res_m")] == [
        "input_res_m at 10 m: 2 ok cells whose chunk is missing"]
    assert not any("error" in p and "chunk is missing" in p for p in problems)
