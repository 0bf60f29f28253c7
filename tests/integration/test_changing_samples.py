"""Samples that change between runs of one cube: moved (--update), added (--append), removed (kept)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import zarr

from rsembed_dask.cli.commands import main
from rsembed_dask.store.cube import OK, PENDING, Cube, open_cube
from rsembed_dask.store.samples import GEOMETRY_TOLERANCE_DEG, same_geometry
from rsembed_dask.store.layout import SEGMENTS_ATTR
from rsembed_dask.errors import CubeError, SpecError
from rsembed_dask.campaign.run import plan_campaign, run_campaign
from rsembed_dask.geo import hilbert_order
from rsembed_dask.sampling import work_units
from rsembed_dask.specs import ModelSpec, TemporalSpec

from .test_cube import N, create, samples, unit_data

WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")
TINY = ModelSpec("test-tiny", device="cpu")


class _Stop(Exception):
    """Raised from a test's on_unit callback to interrupt a campaign."""


def _points(n, seed=0, prefix=None):
    rng = np.random.default_rng(seed)
    prefix = f"p{seed}" if prefix is None else prefix
    return gpd.GeoDataFrame({"site": [f"{prefix}-{i}" for i in range(n)]},
                            geometry=gpd.points_from_xy(3 + rng.uniform(0, .3, n), 31 + rng.uniform(0, .3, n)),
                            crs="EPSG:4326")


def _moved(gdf, site, dlon, dlat=0.0):
    out = gdf.copy()
    i = int(np.flatnonzero(out.site == site)[0])
    g = out.geometry.iloc[i]
    out.loc[out.index[i], "geometry"] = shapely.Point(g.x + dlon, g.y + dlat)
    return out


def _chunk_files(path: Path) -> dict[str, bytes]:
    """Every chunk file of the store (not the metadata), by relative path."""
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*")
            if p.is_file() and "/c/" in f"/{p.relative_to(path)}"}


def _bits(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def test_same_geometry_tolerance():
    p = shapely.Point(3.123456789, 31.5)
    box = shapely.box(3.0, 31.0, 3.01, 31.01)
    rotated = shapely.Polygon(list(box.exterior.coords)[2:-1] + list(box.exterior.coords)[:3])
    cases = [
        (p, shapely.Point(p.x + 1e-9, p.y - 1e-9), True),                  # float noise
        (p, shapely.Point(p.x + 10 * GEOMETRY_TOLERANCE_DEG, p.y), False),  # ~11 cm: moved
        (p, shapely.Point(p.x + 0.01, p.y), False),
        (box, rotated, True),                                              # other ring start
        (box, shapely.MultiPolygon([box]), True),                          # same shape, one part
        (box, shapely.box(3.0, 31.0, 3.0101, 31.01), False),
        (p, p.buffer(1e-8), False),                                        # a point is not a polygon
    ]
    got = same_geometry([a.wkb_hex for a, _, _ in cases], [b.wkb_hex for _, b, _ in cases])
    assert got.tolist() == [want for _, _, want in cases]


def _complete(cube: Cube) -> None:
    for start in range(0, cube.n_samples, cube.chunk_size):
        stop = cube.unit_stop(start)
        for si in range(cube.n_scales):
            d = unit_data(start, stop, si)
            d["status"][:] = OK
            d["embedding"][np.isnan(d["embedding"])] = 1.0
            cube.write_unit(start, stop, si, **d)


def test_moved_sample_refused_then_reset_with_update(tmp_path):
    path = tmp_path / "c.zarr"
    cube = create(path)
    _complete(cube)
    before = open_cube(path).load()
    s = samples()
    s["wkb"][5] = shapely.Point(2.5, 30.5).buffer(0.02).wkb
    s["lon"][5] = 2.5
    with pytest.raises(CubeError, match=r"1 sample\(s\) have another geometry than stored \(\['id-5'\]\).*--update"):
        create(path, **s)
    assert (open_cube(path).status.values == OK).all()  # a refusal writes nothing
    # float noise is not a move
    noisy = samples()
    noisy["wkb"] = [shapely.transform(shapely.from_wkb(w), lambda c: c + 1e-9).wkb for w in noisy["wkb"]]
    assert create(path, **noisy).status_counts()["ok"] == N * 2

    cube = create(path, **s, update=True)
    assert cube.last_changes.moved.tolist() == [5]
    ds = open_cube(path)
    assert (ds.status.values[5] == PENDING).all() and np.isnan(ds.embedding.values[5]).all()
    assert np.isnan(ds.input_res_m.values[5]).all() and ds.lon.values[5] == 2.5
    assert shapely.from_wkb(ds.geometry.values[5]).equals(shapely.Point(2.5, 30.5).buffer(0.02))
    others = np.arange(N) != 5
    assert (ds.status.values[others] == OK).all()
    np.testing.assert_array_equal(_bits(ds.embedding.values[others]), _bits(before.embedding.values[others]))
    assert ds.geohash.values[5] == "gh005"  # the given geohash (here a test label) is written too
    todo = cube.incomplete_units([u for u in _units(cube)])
    assert [(u.start, u.scale_index) for u in todo] == [(4, 0), (4, 1)]
    assert create(path, **s).last_changes.moved.size == 0  # stored now: nothing moved any more


def _units(cube: Cube):
    return work_units(cube.n_rows, cube.scales, cube.chunk_size, segments=cube.segments)


def _more(n_new: int) -> dict:
    """samples() plus ``n_new`` new ids further east, all given (old ones first)."""
    s, extra = samples(), samples(n_new)
    extra["ids"] = [f"new-{i}" for i in range(n_new)]
    extra["lon"] = np.linspace(4.0, 5.0, n_new)
    extra["lat"] = np.resize([31.0, 30.0, 30.5], n_new)  # for 3: given against their Hilbert order [2, 1, 0]
    extra["wkb"] = [shapely.Point(x, y).buffer(0.01).wkb for x, y in zip(extra["lon"], extra["lat"])]
    return {k: list(s[k]) + list(extra[k]) for k in s}


def test_append_starts_a_new_chunk_and_leaves_old_chunks_alone(tmp_path):
    path = tmp_path / "c.zarr"
    _complete(create(path))  # 10 samples in chunks of 4: rows [8, 10) are a partial chunk
    old_files = _chunk_files(path)
    with pytest.raises(CubeError, match=r"3 given sample id\(s\) are not in the cube \(\['new-0', 'new-1', "
                                        r"'new-2'\]\).*--append"):
        create(path, **_more(3))
    assert Cube.open(path).n_rows == N  # refused: nothing written

    both = _more(3)
    both["wkb"][0] = shapely.Point(0, 0).wkb
    with pytest.raises(CubeError, match=r"\['id-0'\].*--update.*\['new-0', 'new-1', 'new-2'\].*--append"):
        create(path, **both)

    cube = create(path, **_more(3), append=True)
    assert cube.segments == ((0, 10), (12, 15)) and cube.n_rows == 15 and cube.n_samples == 13
    new = _more(3)
    hilbert = hilbert_order(np.asarray(new["lon"][N:]), np.asarray(new["lat"][N:]))
    assert hilbert.tolist() == [2, 1, 0]
    assert cube.last_changes.rows[N + hilbert].tolist() == [12, 13, 14]  # their own Hilbert order
    assert cube.unit_stop(8) == 10 and cube.unit_stop(12) == 15
    with pytest.raises(CubeError, match="not a chunk start"):
        cube.unit_stop(10)
    assert cube.status_counts() == {"pending": 6, "ok": 20, "no_data": 0, "failed": 0}  # padding not counted
    assert cube.n_units == 8
    todo = cube.incomplete_units(_units(cube))
    assert [(u.start, u.stop, u.scale_index) for u in todo] == [(12, 15, 0), (12, 15, 1)]
    again = pickle.loads(pickle.dumps(cube))
    assert again.segments == cube.segments and again.unit_stop(12) == 15
    for si in (0, 1):
        again.write_unit(12, 15, si, **unit_data(12, 15, si))

    assert all(_chunk_files(path)[name] == data for name, data in old_files.items())
    ds = open_cube(path)
    assert ds.sample.values.tolist() == [f"id-{i}" for i in range(N)] + [f"new-{i}" for i in hilbert]
    assert ds.sizes["sample"] == 13 and (ds.geometry.values != "").all()
    assert ds.embedding.sel(sample=f"new-{hilbert[1]}", scale=20.0).values[0] == 13 * 100 + 10
    raw = zarr.open_group(path, mode="r")
    assert raw["embedding"].shape[0] == 15 and raw.attrs[SEGMENTS_ATTR] == [[0, 10], [12, 15]]
    # resuming with every id, in any order, appends nothing
    s = _more(3)
    shuffled = {k: [v[i] for i in np.random.default_rng(0).permutation(13)] for k, v in s.items()}
    assert create(path, **shuffled).n_rows == 15


def test_interrupted_append_and_old_cubes(tmp_path):
    path = tmp_path / "c.zarr"
    create(path)
    # An old cube (no segments attribute) opens and resumes as before...
    meta = json.loads((path / "zarr.json").read_text())
    del meta["attributes"][SEGMENTS_ATTR]
    (path / "zarr.json").write_text(json.dumps(meta))
    assert Cube.open(path).segments == ((0, N),) and open_cube(path).sizes["sample"] == N
    # ...and an append interrupted after growing the arrays leaves rows that are no samples.
    group = zarr.open_group(path, mode="r+")
    group.attrs[SEGMENTS_ATTR] = [[0, N]]
    for _, arr in group.arrays():
        if (arr.metadata.dimension_names or ("",))[0] == "sample":
            arr.resize((20,) + arr.shape[1:])
    group["sample"][12:20] = [f"half-{i}" for i in range(8)]
    assert Cube.open(path).n_samples == N and open_cube(path).sizes["sample"] == N
    cube = create(path, **_more(2), append=True)  # takes the rows again, shrinking the arrays
    assert cube.segments == ((0, N), (12, 14)) and zarr.open_group(path)["status"].shape == (14, 2)
    assert sorted(open_cube(path).sample.values.tolist()[-2:]) == ["new-0", "new-1"]


def test_a_cube_chunked_by_an_older_version_cannot_grow(tmp_path, monkeypatch):
    import rsembed_dask.store.cube as cube_mod

    real = cube_mod.array_defs

    def old_defs(n, s, chunk, d, grid, *more, **kw):  # before appends: chunks of min(chunk_size, n_samples)
        return real(n, s, min(chunk, n), d, grid, *more, **kw)

    monkeypatch.setattr(cube_mod, "array_defs", old_defs)
    small = {k: v[:3] for k, v in samples().items()}
    create(tmp_path / "c.zarr", **small)
    monkeypatch.undo()
    extra = {k: list(small[k]) + list(_more(1)[k][-1:]) for k in small}
    with pytest.raises(CubeError, match="chunks of 3, not chunk_size=4.*new cube"):
        create(tmp_path / "c.zarr", **extra, append=True)
    assert create(tmp_path / "c.zarr", **small).n_samples == 3  # still resumes


def test_streamed_cubes_take_no_update_or_append(tmp_path):
    with pytest.raises(SpecError, match="update/append"):
        create(tmp_path / "c.zarr", chunks=lambda: iter([]), n_samples=3, update=True, **dict.fromkeys(
            ("ids", "lon", "lat", "geohash", "wkb")))


def test_removed_ids_are_kept_and_their_units_not_run(tmp_path, caplog):
    gdf = _points(10)
    args = dict(scales=[10], temporal=WINDOW, model=TINY, chunk_size=4, id_column="site")
    _, table, _, units = plan_campaign(gdf, tmp_path / "c.zarr", **args)
    assert [u.start for u in units] == [0, 4, 8]
    gone = [table.ids[1], table.ids[8], table.ids[9]]  # one of chunk 0, all of chunk 2
    with caplog.at_level("WARNING", logger="rsembed_dask.store.cube"):
        _, kept, cube, units = plan_campaign(gdf[~gdf.site.isin(gone)], tmp_path / "c.zarr", **args)
    assert f"3 sample(s) not among those given ({gone})" in caplog.text and "kept, not deleted" in caplog.text
    assert [u.start for u in units] == [0, 4]  # chunk 2 holds only removed samples
    assert cube.n_samples == 10 and open_cube(tmp_path / "c.zarr").sizes["sample"] == 10
    # the removed sample of chunk 0 runs with its unit, from its stored geometry
    assert kept.ids[:8].tolist() == table.ids[:8].tolist()
    for col in ("lon", "lat", "epsg", "x", "y", "half_w", "half_h", "box_x", "box_y"):
        np.testing.assert_array_equal(getattr(kept, col)[:8], getattr(table, col)[:8])
    assert kept.footprint(1, 10, 224) == table.footprint(1, 10, 224)


def test_update_re_embeds_only_the_moved_sample(tmp_path, client, provider):
    gdf, out = _points(8, seed=4), tmp_path / "c.zarr"
    args = dict(scales=[10, 40], temporal=WINDOW, model=TINY, backend=provider, client=client,
                chunk_size=4, id_column="site", progress=False)
    before = run_campaign(gdf, out, **args).load()
    assert (before.status.values == OK).all()
    moved = _moved(gdf, "p4-3", 0.01)
    with pytest.raises(CubeError, match=r"\['p4-3'\].*--update"):
        run_campaign(moved, out, **args)
    seen = []
    ds = run_campaign(_moved(gdf, "p4-3", 1e-9), out, **args, on_unit=seen.append)  # noise: nothing to do
    assert not seen and ds.lon.sel(sample="p4-3") == before.lon.sel(sample="p4-3")

    ds = run_campaign(moved, out, **args, update=True, on_unit=seen.append).load()
    assert (ds.status.values == OK).all()
    assert len(seen) == 2 and all(s.counts["ok"] == 1 and s.counts["untouched"] == 3 for s in seen)
    account = Cube.open(out).attrs["runs"][-1]["requests"]  # this run's (request_account: all runs)
    assert account["planned"] == account["sent"] == 2 and account["reused"] == 0
    others = [s for s in gdf.site if s != "p4-3"]
    np.testing.assert_array_equal(_bits(ds.embedding.sel(sample=others).values),
                                  _bits(before.embedding.sel(sample=others).values))
    assert ds.lon.sel(sample="p4-3") == pytest.approx(moved.geometry[3].x)
    assert not np.allclose(ds.embedding.sel(sample="p4-3").values, before.embedding.sel(sample="p4-3").values)
    fresh = run_campaign(moved, tmp_path / "fresh.zarr", **args)
    np.testing.assert_allclose(ds.embedding.sel(sample="p4-3").values,
                               fresh.embedding.sel(sample="p4-3").values, rtol=1e-5, atol=1e-6)


def test_append_then_resume(tmp_path, client, provider):
    gdf, out = _points(6, seed=5), tmp_path / "c.zarr"
    args = dict(scales=[10], temporal=WINDOW, model=TINY, backend=provider, client=client,
                chunk_size=4, id_column="site", progress=False)
    run_campaign(gdf, out, **args)
    old_files = _chunk_files(out)
    more = pd.concat([_points(5, seed=6, prefix="new"), gdf], ignore_index=True)
    with pytest.raises(CubeError, match=r"5 given sample id\(s\) are not in the cube.*--append"):
        run_campaign(more, out, **args)

    def stop_after_one(summary):
        raise _Stop

    with pytest.raises(_Stop):  # interrupted after the first new unit
        run_campaign(more, out, **args, append=True, on_unit=stop_after_one, max_in_flight=1)
    seen = []
    ds = run_campaign(more, out, **args, on_unit=seen.append)  # resumes: the ids are in the cube now
    assert [s.unit.start for s in seen] in ([8], [12])
    assert (ds.status.values == OK).all() and sorted(ds.sample.values.tolist()) == sorted(more.site)
    cube = Cube.open(out)
    assert cube.segments == ((0, 6), (8, 13)) and cube.n_samples == 11
    assert all(_chunk_files(out)[name] == data for name, data in old_files.items())
    fresh = run_campaign(more, tmp_path / "fresh.zarr", **args)
    for site in more.site:
        np.testing.assert_allclose(ds.embedding.sel(sample=site).values, fresh.embedding.sel(sample=site).values,
                                   rtol=1e-5, atol=1e-6, err_msg=site)


@pytest.mark.timeout(300)
def test_cli_update_append_and_removed(tmp_path, capsys, caplog):
    gdf = _points(6, seed=7, prefix="plot").rename(columns={"site": "plot"})
    samples_file, out = tmp_path / "samples.geojson", tmp_path / "cube.zarr"

    def run(frame, *flags):
        frame.to_file(samples_file)
        capsys.readouterr()
        rc = main(["run", str(samples_file), "--out", str(out), "--scales", "10,40", "--start", "2022-01-01",
                   "--end", "2022-02-01", "--model", "test-tiny", "--backend", "emulator", "--id-column", "plot",
                   "--chunk-size", "4", "--no-progress", *flags])
        return rc, capsys.readouterr().err

    assert run(gdf)[0] == 0
    before = open_cube(out).load()
    moved = _moved(gdf.rename(columns={"plot": "site"}), "plot-2", 0.02).rename(columns={"site": "plot"})
    rc, err = run(moved)
    assert rc == 2 and "plot-2" in err and "--update" in err
    rc, err = run(moved, "--update")
    assert rc == 0
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["runs"][-1]["requests"]["sent"] == 2  # one sample at two scales
    assert info["request_account"]["sent"] == sum(r["requests"]["sent"] for r in info["runs"])
    ds = open_cube(out)
    others = [p for p in gdf["plot"] if p != "plot-2"]
    np.testing.assert_array_equal(_bits(ds.embedding.sel(sample=others).values),
                                  _bits(before.embedding.sel(sample=others).values))

    grown = pd.concat([moved, _points(3, seed=8, prefix="plot-new").rename(columns={"site": "plot"})],
                      ignore_index=True)
    old_files = _chunk_files(out)
    rc, err = run(grown)
    assert rc == 2 and "--append" in err and "plot-new-0" in err
    assert run(grown, "--append")[0] == 0
    assert all(_chunk_files(out)[name] == data for name, data in old_files.items())
    ds = open_cube(out)
    assert sorted(ds.sample.values.tolist()) == sorted(grown["plot"]) and (ds.status.values == OK).all()

    caplog.clear()  # (the CLI's log lines reach stderr; under pytest they reach caplog)
    rc, err = run(grown[grown["plot"] != "plot-4"])  # removed from the file: kept, reported, nothing to run
    assert rc == 0 and "not among those given (['plot-4'])" in caplog.text
    assert "plot-4" in open_cube(out).sample.values.tolist()


@pytest.mark.parametrize("flag", ["--update", "--append"])
def test_tiling_runs_refuse_update_and_append(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as info:
        main(["run", "3,31,3.1,31.1", "--tile", "--out", str(tmp_path / "t.zarr"), "--start", "2022-01-01",
              "--end", "2022-02-01", "--backend", "emulator", flag])
    assert info.value.code == 2 and f"{flag} is for sample files, not --tile" in capsys.readouterr().err
    assert not (tmp_path / "t.zarr").exists()


@pytest.mark.timeout(400)
def test_repair_works_on_a_cube_that_took_an_append(tmp_path, capsys):
    """The layout of an appended cube has padded rows: --repair rebuilds it from the stored segments
    (not from the number of samples given) and restores damaged metadata and coordinates."""
    gdf = _points(6, seed=7, prefix="plot").rename(columns={"site": "plot"})
    grown = pd.concat([gdf, _points(3, seed=8, prefix="plot-new").rename(columns={"site": "plot"})],
                      ignore_index=True)
    samples_file, out = tmp_path / "samples.geojson", tmp_path / "cube.zarr"

    def run(frame, *flags):
        frame.to_file(samples_file)
        capsys.readouterr()
        rc = main(["run", str(samples_file), "--out", str(out), "--scales", "10,40", "--start", "2022-01-01",
                   "--end", "2022-02-01", "--model", "test-tiny", "--backend", "emulator", "--id-column", "plot",
                   "--chunk-size", "4", "--no-progress", *flags])
        return rc, capsys.readouterr().err

    assert run(gdf)[0] == 0
    assert run(grown, "--append")[0] == 0
    before = open_cube(out).load()
    assert zarr.open_group(str(out)).attrs[SEGMENTS_ATTR] == [[0, 6], [8, 11]]
    (out / "embedding" / "zarr.json").unlink()  # array metadata lost
    lon = out / "lon" / "c" / "1"  # and a coordinate chunk of the appended rows garbled
    lon.write_bytes(b"garbage" * 5)
    rc, err = run(grown)
    assert rc == 2 and "--repair" in err, err
    rc, err = run(grown, "--repair")
    assert rc == 0, err
    ds = open_cube(out).load()
    assert (ds.status.values == OK).all()
    np.testing.assert_array_equal(ds.lon.values, before.lon.values)
    assert ds.sample.values.tolist() == before.sample.values.tolist()
