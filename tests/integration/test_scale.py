"""Issue 21 at the store level: few objects per unit, checksums, stored chunk sizes, root rebuilt,
footprints on arrays. (The CLI side, with a real campaign, is tests/e2e/test_cli_damage.py.)"""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
import shapely

from rsembed_dask.campaign import plan_campaign
from rsembed_dask.campaign.jobs import unit_size
from rsembed_dask.errors import CubeDamagedError
from rsembed_dask.sampling import build_sample_table, default_unit_size
from rsembed_dask.specs import CampaignSpec, ModelSpec, TemporalSpec
from rsembed_dask.store.cube import OK, Cube, open_cube
from rsembed_dask.store.footprints import stored_footprints
from rsembed_dask.store.layout import CHECKSUM_CODEC, ROOT_COPY_KEY
from rsembed_dask.store.verify import verify_cube

from .test_golden import CUBE_DIR, CUBE_ID_COLUMN, CUBE_MODEL, CUBE_SCALES, CUBE_WINDOW, read_features

D = 8


def _cube(path, n: int, chunk_size: int | None = None, scales=(10.0,)) -> Cube:
    spec = CampaignSpec(temporal=TemporalSpec.year(2022), model=ModelSpec("test-tiny", image_size=32),
                        scales=scales, chunk_size=chunk_size or default_unit_size())
    lon, lat = np.linspace(2, 3, n), np.linspace(30, 31, n)
    return Cube.create_or_open(path, spec=spec, ids=[f"s{i}" for i in range(n)], lon=lon, lat=lat,
                               geohash=[f"g{i}" for i in range(n)],
                               wkb=[shapely.Point(x, y).wkb for x, y in zip(lon, lat)], embed_dim=D)


def _fill(cube: Cube) -> None:
    for start in range(0, cube.n_samples, cube.chunk_size):
        stop = cube.unit_stop(start)
        for si in range(cube.n_scales):
            k = stop - start
            cube.write_unit(start, stop, si, embedding=np.random.default_rng(start).normal(size=(k, D)),
                            status=np.full(k, OK, "int8"), input_res_m=np.full(k, 10.0),
                            valid_fraction=np.ones(k), error=[""] * k)


def _files(path: pathlib.Path) -> int:
    return sum(1 for p in path.rglob("*") if p.is_file())


def test_a_default_unit_writes_few_objects(tmp_path):
    n, scales = 2 * default_unit_size(), (10.0, 20.0)
    cube = _cube(tmp_path / "c.zarr", n, scales=scales)
    _fill(cube)
    root = tmp_path / "c.zarr"
    data = sum(_files(root / name / "c") for name in ("embedding", "status", "input_res_m", "valid_fraction",
                                                       "error"))
    assert data / (n * len(scales)) * 1000 <= 10  # 7.8: 4 objects per unit of 512
    # The rest does not grow with the samples (until 262,144 of them): metadata and coordinates.
    assert _files(root) - data == len(list(root.glob("*/zarr.json"))) + 1 + 7
    # One object per array and unit: embedding, status, input_res_m, valid_fraction (error: all "" = fill).
    assert _files(tmp_path / "c.zarr" / "embedding") == 1 + 2 * len(scales)


def test_every_array_carries_a_checksum_and_a_changed_byte_is_caught(tmp_path):
    path = tmp_path / "c.zarr"
    _fill(_cube(path, 20, chunk_size=8))
    for meta in path.glob("*/zarr.json"):
        codecs = [c["name"] for c in json.loads(meta.read_text())["codecs"]]
        assert codecs[-1] == CHECKSUM_CODEC, (meta, codecs)
    chunk = path / "valid_fraction" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit: Zstd alone might decode it to other numbers
    chunk.write_bytes(bytes(data))
    problems = verify_cube(path)
    assert any("valid_fraction" in p for p in problems), problems


def test_an_existing_cube_keeps_its_chunk_size(tmp_path):
    assert unit_size(None, str(tmp_path / "none.zarr")) == default_unit_size() == 512
    assert unit_size(None, str(CUBE_DIR)) == 4 and unit_size(16, str(CUBE_DIR)) == 16
    assert default_unit_size(8) == 512 and default_unit_size(30) == 900
    out = tmp_path / "cube_v1"
    shutil.copytree(CUBE_DIR, out)
    # No chunk_size given: the fixture's own (4), so its spec (chunk size included) still matches.
    spec, _, cube, units = plan_campaign(read_features("cube_v1_samples.geojson"), out, scales=list(CUBE_SCALES),
                                         temporal=CUBE_WINDOW, model=CUBE_MODEL, id_column=CUBE_ID_COLUMN)
    assert spec.chunk_size == cube.chunk_size == 4 and len(units) == 6


def test_repair_rebuilds_the_root_of_a_cube_from_its_copy(tmp_path):
    path = tmp_path / "c.zarr"
    cube = _cube(path, 20, chunk_size=8)
    _fill(cube)
    want = json.loads((path / "zarr.json").read_text())["attributes"]
    assert ROOT_COPY_KEY in json.loads((path / "scale" / "zarr.json").read_text())["attributes"]
    (path / "zarr.json").write_text("garbage")
    with pytest.raises(CubeDamagedError, match="--repair"):
        open_cube(path)
    from rsembed_dask.store.rootcopy import rebuild_root

    other = cube.spec.replace(scales=(20.0,))
    with pytest.raises(CubeDamagedError, match="another campaign"):
        rebuild_root(path, spec=other, n_samples=20, embed_dim=D)
    assert rebuild_root(path, spec=cube.spec, n_samples=20, embed_dim=D)
    got = json.loads((path / "zarr.json").read_text())["attributes"]
    assert {k: got[k] for k in want} == want
    assert (open_cube(path).status.values == OK).all()
    assert rebuild_root(path, spec=cube.spec, n_samples=20, embed_dim=D) == []  # nothing to do now


def test_repair_rebuilds_the_root_of_an_old_cube_from_the_campaign(tmp_path):
    """The golden fixture predates the copy: its root comes back from the campaign given, checked
    against its arrays; another campaign is refused."""
    out = tmp_path / "cube_v1"
    shutil.copytree(CUBE_DIR, out)
    want = json.loads((out / "zarr.json").read_text())["attributes"]
    (out / "zarr.json").unlink()
    gdf = read_features("cube_v1_samples.geojson")
    kw = dict(temporal=CUBE_WINDOW, id_column=CUBE_ID_COLUMN, repair=True)
    with pytest.raises(CubeDamagedError, match="scales"):
        plan_campaign(gdf, out, scales=[10.0, 40.0], model=CUBE_MODEL, **kw)
    assert not (out / "zarr.json").exists()
    spec, _, cube, units = plan_campaign(gdf, out, scales=list(CUBE_SCALES), model=CUBE_MODEL, **kw)
    got = json.loads((out / "zarr.json").read_text())["attributes"]
    assert got["spec_hash"] == want["spec_hash"] and got["spec_identity"] == want["spec_identity"]
    assert "unknown" in got["created"] and cube.chunk_size == 4
    # the fixture's one pending unit is still the one to run
    assert [(u.start, u.scale_index) for u in cube.incomplete_units(units)] == \
        [tuple(json.loads((CUBE_DIR.parent / "cube_v1.json").read_text())["pending_unit"])]


@pytest.mark.parametrize("buffer_m", [None, 700.0])
def test_point_footprints_on_arrays_are_the_tables_one_by_one(buffer_m):
    rng = np.random.default_rng(5)
    lon = np.concatenate([rng.uniform(-179.99, 179.99, 300), [179.999, -179.999, 0.0, 3.0]])
    lat = np.concatenate([rng.uniform(-80, 84, 300), [10.0, -10.0, 0.0, 71.5]])
    geoms = list(shapely.points(lon, lat)) + [shapely.box(3.0, 31.0, 3.02, 31.01)]
    ids = [f"p{i}" for i in range(len(geoms))]
    got = stored_footprints(ids, [g.wkb for g in geoms], scale_m=20.0, image_size=32, buffer_m=buffer_m)
    import geopandas as gpd
    import pandas as pd

    table = build_sample_table(gpd.GeoDataFrame(index=pd.Index(ids, dtype=object), geometry=geoms, crs="EPSG:4326"))
    where = {v: i for i, v in enumerate(table.ids.tolist())}
    for k, sid in enumerate(ids):
        grid = table.footprint(where[sid], 20.0, 32, buffer_m).grid
        # the footprint, projected back to UTM, is the grid's box (to projection round trip)
        from rsembed_dask.geo.grid import lonlat_to_xy

        g = got[k]
        parts = shapely.get_parts(g)
        xs, ys = [], []
        for part in parts:
            c = np.asarray(part.exterior.coords)
            x, y = lonlat_to_xy(c[:, 0], c[:, 1], f"EPSG:{grid.epsg}")
            xs += list(x)
            ys += list(y)
        np.testing.assert_allclose([min(xs), min(ys), max(xs), max(ys)], grid.bounds, atol=1e-3)
