"""Verify and repair a cube with a ``time`` dimension, through the CLI (issue 23, with issue 21's tools).

One campaign of three yearly windows (``--years 2019-2021``, emulator, ``test-tiny``) is made
once; each test damages a copy of it from outside (bytes of a chunk overwritten, chunk files
and the root ``zarr.json`` deleted) and checks that ``inspect --verify`` names the window, the
array and the chunk, that a plain run or ``--repair`` re-embeds exactly the damaged units of
that window, that the embeddings come back equal to the undamaged cube's, and that no chunk of
another window is rewritten (every chunk file hashed before and after). Also: ``--update`` and
``--append`` across the windows, readers naming the window of a damaged chunk, and a cube with
``time`` in a bucket (loopback S3).
"""

import hashlib
import json
import os

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import zarr

from rsembed_dask.cli.commands import main
from rsembed_dask.store.cube import OK, Cube, open_cube
from rsembed_dask.store.layout import COMPLETED_WINDOWS_ATTR, TIME_WINDOWS_ATTR
from rsembed_dask.store.verify import check_cube

from .test_verify import corrupt, cube, verify  # noqa: F401  (cube: the fixture, on this module's `made`)

IDS = [f"plot-{i}" for i in range(6)]  # chunks of 4: units [0, 4) and [4, 6) at 10 m and 40 m, per window
STARTS = ["2019-01-01", "2020-01-01", "2021-01-01"]


@pytest.fixture(scope="module")
def made(tmp_path_factory, client):
    """``(finished cube of three windows, run arguments without --out)``."""
    d = tmp_path_factory.mktemp("made-time")
    rng = np.random.default_rng(5)
    gdf = gpd.GeoDataFrame({"plot": IDS}, geometry=gpd.points_from_xy(3 + rng.uniform(0, .2, 6),
                                                                      31 + rng.uniform(0, .2, 6)), crs="EPSG:4326")
    samples = d / "samples.geojson"
    gdf.to_file(samples)
    args = ["run", str(samples), "--scales", "10,40", "--years", "2019-2021", "--model", "test-tiny",
            "--backend", "emulator", "--id-column", "plot", "--chunk-size", "4", "--no-progress",
            "--scheduler", client.scheduler.address]
    out = d / "cube.zarr"
    assert main(args + ["--out", str(out)]) == 0
    ds = open_cube(out)
    assert ds.sizes["time"] == 3 and (ds.status.values == OK).all()
    return out, args


def chunk_hashes(cube) -> dict[str, str]:
    """Digest of every chunk file of the cube's arrays with ``time`` first, by ``array/c/<t>/...``."""
    out = {}
    for name in ("embedding", "status", "input_res_m", "valid_fraction", "error"):
        for p in sorted((cube / name / "c").rglob("*")):
            if p.is_file():
                out[str(p.relative_to(cube))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def window_of(key: str) -> int:
    return int(key.split("/c/")[1].split("/")[0])


def same_embeddings(path, made) -> None:
    a, b = open_cube(path), open_cube(made)
    assert (a.status.values == OK).all()
    np.testing.assert_array_equal(a.embedding.sel(sample=b.sample.values).values, b.embedding.values)
    np.testing.assert_array_equal(a.valid_fraction.sel(sample=b.sample.values).values, b.valid_fraction.values)


@pytest.mark.timeout(180)
def test_verify_names_the_window_and_repair_reembeds_only_it(cube, made, capsys):
    path, run = cube
    ids = open_cube(path).sample.values.tolist()  # in the cube's (Hilbert) order
    corrupt(path / "embedding" / "c" / "1" / "0" / "1" / "0")  # window 2020, unit [0, 4) at 40 m
    os.remove(path / "valid_fraction" / "c" / "1" / "1" / "0")  # window 2020, unit [4, 6) at 10 m
    rc, problems, err = verify(path, capsys)
    assert rc == 1 and "Traceback" not in err
    by_array = {p.split(":")[0]: p for p in problems}
    assert set(by_array) == {"embedding at 40 m in window 2020-01-01", "valid_fraction at 10 m in window 2020-01-01"}
    assert by_array["embedding at 40 m in window 2020-01-01"].startswith(
        "embedding at 40 m in window 2020-01-01: 4 cells in a chunk that cannot be decoded (")
    assert by_array["embedding at 40 m in window 2020-01-01"].endswith(
        f": ids {', '.join(repr(i) for i in ids[:4])} (chunk embedding/c/1/0/1/0)")
    assert by_array["valid_fraction at 10 m in window 2020-01-01"] == (
        f"valid_fraction at 10 m in window 2020-01-01: 2 finished cells whose chunk is missing: "
        f"ids {ids[4]!r}, {ids[5]!r} (chunk valid_fraction/c/1/1/0)")
    health = check_cube(path)
    assert health.windows == STARTS and health.damaged_windows == {1: {(0, 1), (4, 0)}}

    # the text form says the same
    capsys.readouterr()
    assert main(["inspect", str(path), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEMS" in out and "in window 2020-01-01" in out and "embedding/c/1/0/1/0" in out

    before = chunk_hashes(path)
    assert run("--repair") == 0
    after = chunk_hashes(path)
    account = Cube.open(path).attrs["last_run"]
    assert account["units_run"] == 2 and account["requests"]["sent"] > 0
    # the chunks of windows 2019 and 2021 are untouched, byte for byte; in 2020 only the two units changed
    assert {k: v for k, v in after.items() if window_of(k) != 1} == {k: v for k, v in before.items()
                                                                     if window_of(k) != 1}
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed and all(k.split("/c/")[1][:6] in ("1/0/1/", "1/1/0/") or k.split("/c/")[1] in ("1/0/1", "1/1/0")
                           for k in changed), changed
    same_embeddings(path, made[0])
    assert verify(path, capsys)[:2] == (0, [])
    assert Cube.open(path).attrs[COMPLETED_WINDOWS_ATTR] == STARTS


@pytest.mark.timeout(180)
def test_a_plain_run_reruns_a_lost_chunk_in_its_window_only(cube, made, capsys):
    path, run = cube
    os.remove(path / "embedding" / "c" / "2" / "1" / "0" / "0")  # window 2021, unit [4, 6) at 10 m
    rc, problems, _ = verify(path, capsys)
    assert rc == 1 and len(problems) == 1
    assert problems[0].startswith("embedding at 10 m in window 2021-01-01: 2 ok cells whose chunk is missing")
    assert problems[0].endswith("(chunk embedding/c/2/1/0/0)")
    before = chunk_hashes(path)
    assert run() == 0
    after = chunk_hashes(path)
    assert Cube.open(path).attrs["last_run"]["units_run"] == 1
    assert {k: after[k] for k in before} == before  # nothing that was there is rewritten
    assert set(after) - set(before) == {"embedding/c/2/1/0/0"}
    same_embeddings(path, made[0])
    assert verify(path, capsys)[:2] == (0, [])


@pytest.mark.timeout(180)
def test_a_corrupt_status_chunk_of_one_window_is_reset_by_repair(cube, made, capsys):
    path, run = cube
    corrupt(path / "status" / "c" / "0" / "1" / "1")  # window 2019, unit [4, 6) at 40 m
    rc, problems, _ = verify(path, capsys)
    assert rc == 1 and problems[0].startswith("status at 40 m in window 2019-01-01: 2 cells in a chunk that "
                                              "cannot be decoded")
    capsys.readouterr()
    assert run() == 2  # a plain run cannot read the status: one line, with the way out
    err = capsys.readouterr().err
    assert "damaged" in err and "--repair" in err and "Traceback" not in err
    before = chunk_hashes(path)
    assert run("--repair") == 0
    after = chunk_hashes(path)
    assert {k: v for k, v in after.items() if window_of(k) != 0} == {k: v for k, v in before.items()
                                                                     if window_of(k) != 0}
    assert Cube.open(path).attrs["last_run"]["units_run"] == 1
    same_embeddings(path, made[0])
    assert verify(path, capsys)[:2] == (0, [])


@pytest.mark.timeout(180)
def test_repair_rebuilds_the_root_the_time_coordinate_and_array_metadata(cube, made, capsys):
    path, run = cube
    want = json.loads((made[0] / "zarr.json").read_text())["attributes"]
    want_meta = json.loads((made[0] / "input_res_m" / "zarr.json").read_text())
    (path / "zarr.json").unlink()
    (path / "input_res_m" / "zarr.json").write_text('{"zarr_format": 3, "node_ty')  # cut short
    corrupt(path / "time" / "c" / "1")
    os.remove(path / "time_bnds" / "c" / "2" / "0")
    capsys.readouterr()
    assert run() == 2  # refused in one line, touching nothing
    err = capsys.readouterr().err
    assert "root zarr.json is missing" in err and "--repair" in err and not (path / "zarr.json").exists()
    before = chunk_hashes(path)
    assert run("--repair") == 0
    assert "0/0 units run this time" in capsys.readouterr().out  # nothing to re-embed
    got = json.loads((path / "zarr.json").read_text())["attributes"]
    for key in ("spec_hash", "campaign_spec", "created", "versions", "sample_segments", TIME_WINDOWS_ATTR):
        assert got[key] == want[key], key
    assert got[COMPLETED_WINDOWS_ATTR] == STARTS  # written again by the run
    meta = json.loads((path / "input_res_m" / "zarr.json").read_text())
    for key in ("shape", "chunk_grid", "dimension_names", "codecs", "data_type", "fill_value"):
        assert meta[key] == want_meta[key], key
    assert chunk_hashes(path) == before  # no data chunk rewritten: nothing was re-embedded
    ds = open_cube(path)
    assert [str(t)[:10] for t in ds.time.values] == STARTS
    assert [str(t)[:10] for t in ds.time_bnds.values[:, 1]] == ["2020-01-01", "2021-01-01", "2022-01-01"]
    same_embeddings(path, made[0])
    assert verify(path, capsys)[:2] == (0, [])


def test_verify_names_time_coordinates_that_disagree_with_the_windows(cube, capsys):
    path, _ = cube
    corrupt(path / "time" / "c" / "1")
    zarr.open_array(str(path / "time_bnds"), mode="r+")[2] = [0, 1]
    rc, problems, _ = verify(path, capsys)
    assert rc == 1
    assert problems[0].startswith("time: window 2020-01-01: its chunk time/c/1 cannot be decoded")
    assert problems[1] == ("time_bnds: window 2021-01-01: holds ['1970-01-01', '1970-01-02'] (chunk time_bnds/c/2/0) "
                           "(expected the windows of the cube's time_windows attribute)")


def test_an_interrupted_backfill_is_not_damage(cube, capsys):
    """Arrays resized for a window that ``time_windows`` does not name yet: not checked, not damage."""
    path, _ = cube
    group = zarr.open_group(str(path), mode="r+")
    for _, arr in group.arrays():
        if (arr.metadata.dimension_names or ())[:1] == ("time",):
            arr.resize((4,) + arr.shape[1:])
    assert verify(path, capsys)[:2] == (0, [])


def _samples(made, tmp_path, gdf) -> list[str]:
    """The run arguments of the made cube with ``gdf`` as its samples."""
    samples = tmp_path / "samples.geojson"
    gdf.to_file(samples)
    args = list(made[1])
    args[1] = str(samples)
    return args


@pytest.mark.timeout(240)
def test_update_reembeds_a_moved_sample_in_every_window(cube, made, tmp_path, capsys):
    path, _ = cube
    gdf = gpd.read_file(made[1][1])
    gdf.loc[gdf["plot"] == "plot-2", "geometry"] = gdf.loc[gdf["plot"] == "plot-2", "geometry"].translate(0.01, 0.0)
    args = _samples(made, tmp_path, gdf) + ["--out", str(path)]
    before = chunk_hashes(path)
    capsys.readouterr()
    assert main(args) == 2
    assert "--update" in capsys.readouterr().err and chunk_hashes(path) == before
    assert main(args + ["--update"]) == 0
    after = chunk_hashes(path)
    account = Cube.open(path).attrs["last_run"]
    assert account["units_run"] == 6  # the moved sample's unit, at 2 scales, in 3 windows
    ds, old = open_cube(path), open_cube(made[0])
    row = list(ds.sample.values).index("plot-2")
    unit = row // 4
    # the other unit's chunks, in every window, are untouched byte for byte
    assert all(after[k] == v for k, v in before.items() if k.split("/c/")[1].split("/")[1] != str(unit))
    assert (ds.status.values == OK).all()
    assert ds.attrs[COMPLETED_WINDOWS_ATTR] == STARTS
    others = [i for i in IDS if i != "plot-2"]
    np.testing.assert_array_equal(ds.embedding.sel(sample=others).values, old.embedding.sel(sample=others).values)
    moved, was = ds.embedding.sel(sample="plot-2").values, old.embedding.sel(sample="plot-2").values
    assert all(not np.allclose(moved[t], was[t]) for t in range(3))  # re-embedded at its new place, each window
    assert float(ds.lon.sel(sample="plot-2")) == pytest.approx(float(old.lon.sel(sample="plot-2")) + 0.01)
    assert verify(path, capsys)[:2] == (0, [])


@pytest.mark.timeout(240)
def test_append_adds_samples_pending_in_every_window(cube, made, tmp_path, capsys):
    from rsembed_dask.sampling.samples import build_sample_table

    path, _ = cube
    gdf = gpd.read_file(made[1][1])
    new = gpd.GeoDataFrame({"plot": ["plot-6", "plot-7"]}, geometry=gpd.points_from_xy([3.05, 3.15], [31.05, 31.1]),
                           crs="EPSG:4326")
    grown = gpd.GeoDataFrame(pd.concat([gdf, new], ignore_index=True), crs="EPSG:4326")
    before = chunk_hashes(path)
    # what the run does first (Cube.create_or_open): new rows, pending in every window, no window complete
    table = build_sample_table(grown, id_column="plot")
    stored = Cube.open(path)
    c = Cube.create_or_open(path, spec=stored.spec, ids=table.ids, lon=table.lon, lat=table.lat,
                            geohash=table.geohash, wkb=table.wkb, embed_dim=stored.embed_dim,
                            windows=stored.windows, append=True)
    assert c.n_rows == 10 and c.segments == ((0, 6), (8, 10))
    ds = open_cube(path)
    assert ds.sizes == {**ds.sizes, "time": 3, "sample": 8}
    assert (ds.status.sel(sample=["plot-6", "plot-7"]).values == 0).all()
    assert (ds.status.sel(sample=IDS).values == OK).all()
    assert ds.attrs[COMPLETED_WINDOWS_ATTR] == []
    assert chunk_hashes(path) == before  # nothing rewritten
    # the run embeds them, in every window
    assert main(_samples(made, tmp_path, grown) + ["--out", str(path), "--append"]) == 0
    after = chunk_hashes(path)
    assert {k: after[k] for k in before} == before
    assert {k.split("/c/")[1].split("/")[1] for k in set(after) - set(before)} == {"2"}  # the new chunk only
    assert Cube.open(path).attrs["last_run"]["units_run"] == 6
    ds, old = open_cube(path), open_cube(made[0])
    assert (ds.status.values == OK).all() and ds.attrs[COMPLETED_WINDOWS_ATTR] == STARTS
    np.testing.assert_array_equal(ds.embedding.sel(sample=IDS).values, old.embedding.sel(sample=IDS).values)
    assert verify(path, capsys)[:2] == (0, [])


@pytest.mark.timeout(180)
def test_a_root_lost_with_its_copy_is_rebuilt_from_the_windows_given(cube, made, tmp_path, capsys):
    from rsembed_dask.store.layout import ROOT_COPY_KEY

    path, run = cube
    want = json.loads((made[0] / "zarr.json").read_text())["attributes"]
    (path / "zarr.json").unlink()
    meta = json.loads((path / "scale" / "zarr.json").read_text())
    del meta["attributes"][ROOT_COPY_KEY]
    (path / "scale" / "zarr.json").write_text(json.dumps(meta))
    args = list(made[1])
    years = args.index("--years") + 1
    capsys.readouterr()
    assert main(args[:years] + ["2019-2020"] + args[years + 1:] + ["--out", str(path), "--repair"]) == 2
    err = capsys.readouterr().err
    assert "a time dimension of 3 windows stored, 2 window(s) given" in err and not (path / "zarr.json").exists()
    assert run("--repair") == 0
    got = json.loads((path / "zarr.json").read_text())["attributes"]
    assert got[TIME_WINDOWS_ATTR] == want[TIME_WINDOWS_ATTR] and got["spec_hash"] == want["spec_hash"]
    same_embeddings(path, made[0])
    assert verify(path, capsys)[:2] == (0, [])


def test_readers_name_the_window_of_a_damaged_chunk(cube):
    from rsembed_dask.errors import CubeDamagedError
    from rsembed_dask.explore import similar
    from rsembed_dask.store.damage import find_damaged_chunks

    path, _ = cube
    ids = open_cube(path).sample.values.tolist()
    corrupt(path / "embedding" / "c" / "1" / "0" / "0" / "0")  # window 2020, unit [0, 4) at 10 m
    assert find_damaged_chunks(path, arrays=("embedding",)) == [
        ("embedding", (slice(1, 2), slice(0, 4), slice(None), slice(None)))]
    assert find_damaged_chunks(path, arrays=("embedding",), window=0) == []
    assert similar(open_cube(path).isel(time=0), "plot-0", k=2, scale=10.0).size  # another window reads fine
    with pytest.raises(CubeDamagedError) as err:
        similar(open_cube(path).isel(time=1), "plot-0", k=2, scale=10.0)
    line = str(err.value)
    assert "\n" not in line and "array 'embedding' at scale 10 m in window 2020-01-01" in line
    assert f"samples {ids[0]!r}, {ids[1]!r}, {ids[2]!r} and 1 more (rows 0-3)" in line and "--repair" in line


@pytest.mark.timeout(240)
def test_a_cube_with_time_in_a_bucket_is_verified_and_repaired(s3_bucket, client, capsys):
    import obstore

    from rsembed_dask.campaign.run import run_campaign
    from rsembed_dask.specs import ModelSpec, TemporalSpec
    from rsembed_dask.store.location import StoreLocation

    gdf = gpd.GeoDataFrame({"site": [f"s{i}" for i in range(5)]},
                           geometry=gpd.points_from_xy(np.linspace(2.0, 2.1, 5), np.linspace(31.0, 31.1, 5)),
                           crs="EPSG:4326")
    kw = dict(scales=[10], temporal=TemporalSpec.years(2019, 2020), model=ModelSpec("test-tiny", device="cpu"),
              backend="emulator", client=client, chunk_size=2, id_column="site", progress=False)
    url = f"{s3_bucket}/t.zarr"
    made = run_campaign(gdf, url, **kw)
    assert made.sizes["time"] == 2 and (made.status.values == OK).all()
    want = made.embedding.values.copy()  # (the dataset is lazy: read it before the damage)
    obs = StoreLocation.parse(url).object_store()
    obstore.delete(obs, "embedding/c/1/1/0/0")  # window 2020, unit [2, 4)
    obstore.put(obs, "status/c/0/2/0", b"\x00garbage, not a zstd frame\x00")  # window 2019, unit [4, 5)
    rc, problems, _ = verify(url, capsys)
    assert rc == 1
    assert any(p.startswith("embedding at 10 m in window 2020-01-01: 2 ok cells whose chunk is missing")
               and p.endswith("(chunk embedding/c/1/1/0/0)") for p in problems), problems
    assert any(p.startswith("status at 10 m in window 2019-01-01: 1 cells in a chunk that cannot be decoded")
               and p.endswith("(chunk status/c/0/2/0)") for p in problems), problems
    repaired = run_campaign(gdf, url, repair=True, **kw)
    assert (repaired.status.values == OK).all() and Cube.open(url).attrs["last_run"]["units_run"] == 2
    np.testing.assert_array_equal(repaired.embedding.values, want)
    assert verify(url, capsys)[:2] == (0, [])
