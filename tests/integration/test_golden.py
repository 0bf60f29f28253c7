"""Golden tests: format-defining behaviour pinned byte for byte (issue 14, item 7).

A cube stores samples in Hilbert order with their geohashes, places them in UTM zones,
names tiles ``{epsg}_{scale}m_{row}_{col}`` and refuses to resume unless the campaign
spec's identity matches. Any change to these rules refuses every existing cube, so
they are compared here to values written once by ``tests/data/golden/make_golden.py``
(read its docstring before regenerating: regenerating means every existing cube is
refused). ``tests/data/golden/cube_v1/`` is a cube written by the code of that time,
with one unit left pending: it must keep opening and resuming.

When modules move, update the import block below only; the helpers after it are
the single place where each pinned behaviour is called (``make_golden.py`` calls them too).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil

import geopandas as gpd
import numpy as np
import pytest
import shapely
import zarr

# Every rsembed_dask name the golden tests use, in one block. The three copies of the zone
# rule (grid, sampling, tiling) became geo.grid's one vectorised rule: all three aliases
# point at it, so the golden codes pin the rule every sample, tile and grid is placed with.
from rsembed_dask.campaign import run_campaign
from rsembed_dask.geo.grid import utm_epsg as zone_rule_grid
from rsembed_dask.geo.grid import utm_epsg as zone_rule_sampling
from rsembed_dask.geo.grid import utm_epsg as zone_rule_tiling
from rsembed_dask.geo.keys import GEOHASH_PRECISION, HILBERT_BITS, geohash_encode, hilbert_order
from rsembed_dask.sampling import build_sample_table, tile_aoi, work_units
from rsembed_dask.specs import CampaignSpec, ModelSpec, OutputSpec, SensorSpec, TemporalSpec
from rsembed_dask.store.cube import Cube, open_cube
from rsembed_dask.store.layout import CUBE_VERSION, FAILED, MARKER_ATTR, NO_DATA, OK, PENDING, STATUS_NAMES

GOLDEN = pathlib.Path(__file__).parents[1] / "data" / "golden"
CUBE_DIR = GOLDEN / "cube_v1"

# The fixture cube's campaign (make_golden.write_cube uses exactly these).
CUBE_SCALES = (10.0, 20.0)
CUBE_CHUNK = 4
CUBE_WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")
CUBE_MODEL = ModelSpec("test-tiny", device="cpu")
CUBE_ID_COLUMN = "site"


def zone_rule_copies(lon: np.ndarray, lat: np.ndarray) -> dict[str, np.ndarray]:
    """EPSG codes from every alias of the UTM zone rule (int64 each): scalar calls for the
    grid's use (one point), array calls for the samples' and the tiles' (with and without
    the range check)."""
    return {
        "grid.utm_epsg": np.array([zone_rule_grid(x, y) for x, y in zip(lon.tolist(), lat.tolist())], np.int64),
        "sampling._utm_epsg": np.asarray(zone_rule_sampling(lon, lat, check=False), np.int64),
        "tiling._zone_crs": np.asarray(zone_rule_tiling(lon, lat), np.int64),
    }


def geohashes(lon: np.ndarray, lat: np.ndarray) -> list[str]:
    return [str(g) for g in geohash_encode(lon, lat)]


def sample_table_summary(gdf: gpd.GeoDataFrame) -> dict:
    """``build_sample_table`` of ``gdf``: ids (from the ``site`` column and from the index) in
    table order, with zone, kind, geohash and centroid per row."""
    table = build_sample_table(gdf, id_column="site")
    by_index = build_sample_table(gdf)
    return {"ids": [str(i) for i in table.ids], "ids_from_index": [int(i) for i in by_index.ids],
            "epsg": [int(e) for e in table.epsg], "kind": [str(k) for k in table.kind],
            "geohash": [str(g) for g in table.geohash],
            "lon": [float(v) for v in table.lon], "lat": [float(v) for v in table.lat]}


def tiling_summary(bbox, scales) -> dict:
    """``tile_aoi`` of a lon/lat box: per scale, every tile id in table order, and the token."""
    tiling = tile_aoi(shapely.box(*bbox), scales=scales)
    tables = []
    for s, t in zip(tiling.scales, tiling.tables):
        ids = [str(i) for i in t.ids()]
        tables.append({"scale_m": s, "n": len(t), "zones": t.zones(), "ids": ids,
                       "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()})
    return {"token": tiling.token(), "tables": tables}


def tile_centre_zones(bbox, scales) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per scale, (zone each tile was given, zone of its centre by the vectorised rule)."""
    tiling = tile_aoi(shapely.box(*bbox), scales=scales)
    out = []
    for t in tiling.tables:
        centres = t.slice(0, len(t))
        out.append((np.asarray(t.epsg, np.int64), np.asarray(zone_rule_sampling(centres.lon, centres.lat), np.int64)))
    return out


def golden_specs() -> dict[str, CampaignSpec]:
    """Campaign specs whose hashes are pinned (defaults included: a changed default changes them)."""
    tiny = dict(temporal=CUBE_WINDOW, model=CUBE_MODEL, scales=CUBE_SCALES, chunk_size=CUBE_CHUNK)
    return {
        "defaults_2022": CampaignSpec(temporal=TemporalSpec.year(2022)),
        "defaults_2022_int_scales": CampaignSpec(temporal=TemporalSpec.year(2022), scales=[10, 20, 40]),
        "cube_v1": CampaignSpec(**tiny),
        "cube_v1_runtime_changed": CampaignSpec(**{**tiny, "model": ModelSpec("test-tiny", device="cuda",
                                                                                batch_size=16)}),
        "grid_max_mosaic_buffer": CampaignSpec(
            temporal=TemporalSpec.range("2021-06-01", "2021-09-01"), output=OutputSpec.grid("max"),
            sensor=SensorSpec(composite="mosaic", cloudy_pct=10), scales=(20,), chunk_size=128, buffer_m=500),
        "other_sensor_and_model": CampaignSpec(
            temporal=TemporalSpec.year(2019),
            sensor=SensorSpec(collection="COPERNICUS/S2_HARMONIZED", bands=("B8", "B4", "B3")),
            model=ModelSpec("MVRL/scalemae-vitlarge-800", image_size=256, dtype="bfloat16", res_reference_m=10.0),
            scales=(10, 30.5)),
    }


def spec_summary(spec: CampaignSpec) -> dict:
    """What a cube stores of a spec (``campaign_spec``, ``spec_identity``, ``spec_hash``)."""
    return {"spec_hash": spec.spec_hash(), "campaign_spec": spec.to_json(),
            "spec_identity": json.dumps(spec.identity(), sort_keys=True)}


def constants() -> dict:
    return {"GEOHASH_PRECISION": GEOHASH_PRECISION, "HILBERT_BITS": HILBERT_BITS, "CUBE_VERSION": CUBE_VERSION,
            "MARKER_ATTR": MARKER_ATTR, "status": {"PENDING": PENDING, "OK": OK, "NO_DATA": NO_DATA,
                                                  "FAILED": FAILED, "names": list(STATUS_NAMES)}}


def hilbert_grid_keys(bits: int) -> np.ndarray:
    """Hilbert keys of every cell of a ``2**bits`` grid, as ``[row=lat cell, col=lon cell]``:
    with all cells present, the rank of a cell in ``hilbert_order`` is its key."""
    n = 1 << bits
    lat_i, lon_i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    lon = -180.0 + (lon_i.ravel() + 0.5) * 360.0 / n
    lat = -90.0 + (lat_i.ravel() + 0.5) * 180.0 / n
    order = hilbert_order(lon, lat, bits=bits)
    keys = np.empty(n * n, np.int64)
    keys[order] = np.arange(n * n)
    return keys.reshape(n, n)


def read_features(name: str) -> gpd.GeoDataFrame:
    """A golden GeoJSON input (EPSG:4326) as a GeoDataFrame; read and written as plain JSON,
    so coordinates round-trip exactly."""
    fc = json.loads((GOLDEN / name).read_text())
    return gpd.GeoDataFrame.from_features(fc["features"], crs="EPSG:4326")


def cube_table_ids(gdf: gpd.GeoDataFrame) -> list[str]:
    """Sample ids of the fixture cube's input, in table order."""
    return [str(i) for i in build_sample_table(gdf, id_column=CUBE_ID_COLUMN).ids]


def _json(name: str):
    return json.loads((GOLDEN / name).read_text())


@pytest.fixture(scope="module")
def points() -> tuple[np.ndarray, np.ndarray]:
    p = np.load(GOLDEN / "points.npy")
    return p[:, 0], p[:, 1]


def test_constants():
    assert constants() == _json("constants.json")


def test_hilbert_order(points):
    lon, lat = points
    order = hilbert_order(lon, lat)
    np.testing.assert_array_equal(order, np.load(GOLDEN / "hilbert_order.npy"))
    # The keys (from an independent scalar xy2d at generation time) sort to the same order.
    np.testing.assert_array_equal(np.argsort(np.load(GOLDEN / "hilbert_keys.npy"), kind="stable"), order)


def test_hilbert_keys_on_a_full_grid():
    np.testing.assert_array_equal(hilbert_grid_keys(4), np.load(GOLDEN / "hilbert_grid4_keys.npy"))


def test_geohash(points):
    lon, lat = points
    assert geohashes(lon, lat) == _json("geohash.json")["geohash"]
    assert geohash_encode([-5.6], [42.6], precision=5).tolist() == ["ezs42"]


def test_every_zone_rule_copy_gives_the_pinned_epsg(points):
    lon, lat = points
    want = np.load(GOLDEN / "utm_epsg.npy")
    for name, got in zone_rule_copies(lon, lat).items():
        bad = np.flatnonzero(got != want)
        assert not bad.size, (f"{name} differs from the pinned zone rule at {bad.size} points, first "
                              f"(lon, lat)={lon[bad[0]]!r}, {lat[bad[0]]!r}: {got[bad[0]]} != {want[bad[0]]}")


def test_edge_cases_by_name():
    for case in _json("edge_cases.json"):
        lon, lat = np.array([case["lon"]]), np.array([case["lat"]])
        for name, got in zone_rule_copies(lon, lat).items():
            assert int(got[0]) == case["epsg"], (case["name"], name)
        assert geohashes(lon, lat) == [case["geohash"]], case["name"]


def test_sample_table_order():
    got, want = sample_table_summary(read_features("sample_table_input.geojson")), _json("sample_table.json")
    for key in ("ids", "ids_from_index", "epsg", "kind", "geohash"):
        assert got[key] == want[key], key
    for key in ("lon", "lat"):  # centroids go through PROJ: pinned to 1e-9 degrees (0.1 mm)
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-9, err_msg=key)


def test_tile_ids_and_order():
    for aoi in _json("tiling.json")["aois"]:
        got = tiling_summary(aoi["bbox"], aoi["scales"])
        assert got["token"] == aoi["token"], aoi["name"]
        for g, w in zip(got["tables"], aoi["tables"], strict=True):
            assert (g["scale_m"], g["n"], g["zones"]) == (w["scale_m"], w["n"], w["zones"]), aoi["name"]
            assert g["ids"] == w["ids"], f"{aoi['name']} at {w['scale_m']} m"
            assert g["ids_sha256"] == w["ids_sha256"]


def test_tiles_belong_to_the_zone_of_their_centre():
    # Copy 4 of the zone rule (tiling._tile_zone's ownership test) against copy 2, at seams.
    for aoi in _json("tiling.json")["aois"]:
        for given, centre in tile_centre_zones(aoi["bbox"], aoi["scales"]):
            np.testing.assert_array_equal(given, centre, err_msg=aoi["name"])


def test_spec_hashes():
    specs, want = golden_specs(), _json("spec_hash.json")
    assert sorted(specs) == sorted(want)
    for name, spec in specs.items():
        assert spec_summary(spec) == want[name]["stored"], name
        assert CampaignSpec.from_dict(want[name]["spec"]).spec_hash() == want[name]["stored"]["spec_hash"], name
        assert CampaignSpec.from_json(want[name]["stored"]["campaign_spec"]) == spec, name


def test_fixture_cube_opens():
    """A cube written by the code of the golden files opens: ids, coordinates, status, values, spec."""
    meta = _json("cube_v1.json")
    ds = open_cube(CUBE_DIR)
    assert dict(ds.sizes) == {"sample": 10, "scale": 2, "feature": 64}
    assert ds.sample.values.tolist() == meta["ids"]
    assert ds.scale.values.tolist() == list(CUBE_SCALES)
    assert ds.geohash.values.tolist() == meta["geohash"]
    assert ds.geometry.values.tolist() == meta["geometry_wkb_hex"]
    np.testing.assert_array_equal(ds.lon.values, meta["lon"])
    np.testing.assert_array_equal(ds.lat.values, meta["lat"])
    np.testing.assert_array_equal(ds.status.values, meta["status"])
    assert ds.attrs[MARKER_ATTR] == CUBE_VERSION
    assert ds.attrs["spec_hash"] == meta["spec_hash"] == _json("spec_hash.json")["cube_v1"]["stored"]["spec_hash"]
    assert CampaignSpec.from_json(ds.attrs["campaign_spec"]).spec_hash() == meta["spec_hash"]
    emb, status = ds.embedding.values, ds.status.values
    want = np.load(GOLDEN / "cube_v1_embedding.npy")
    ok = status == OK
    np.testing.assert_array_equal(emb[ok], want[ok])  # bit-identical
    assert np.isnan(emb[~ok]).all() and (status[~ok] == PENDING).all()
    # The same samples in the same order as a fresh table of the stored input.
    assert cube_table_ids(read_features("cube_v1_samples.geojson")) == meta["ids"]
    cube = Cube.open(CUBE_DIR)
    assert cube.spec == CampaignSpec(temporal=CUBE_WINDOW, model=CUBE_MODEL, scales=CUBE_SCALES,
                                     chunk_size=CUBE_CHUNK)
    units = work_units(cube.n_samples, cube.scales, cube.chunk_size)
    assert [(u.start, u.scale_index) for u in cube.incomplete_units(units)] == [tuple(meta["pending_unit"])]


@pytest.mark.timeout(120)
def test_fixture_cube_resumes_only_the_pending_unit(tmp_path, client, provider, emu):
    """Resuming a copy runs the one pending unit (and its requests only); ok cells stay bit for bit."""
    meta = _json("cube_v1.json")
    out = tmp_path / "cube_v1"
    shutil.copytree(CUBE_DIR, out)
    before = open_cube(out).load()
    ran = []
    ds = run_campaign(read_features("cube_v1_samples.geojson"), out, scales=list(CUBE_SCALES),
                      temporal=CUBE_WINDOW, model=CUBE_MODEL, backend=provider, client=client,
                      chunk_size=CUBE_CHUNK, id_column=CUBE_ID_COLUMN, progress=False, on_unit=ran.append)
    assert [(s.unit.start, s.unit.scale_index) for s in ran] == [tuple(meta["pending_unit"])]
    assert emu.stats.as_dict()["compute_pixels"] == ran[0].requests["sent"] == meta["pending_unit_requests"]
    last = Cube.open(out).attrs["last_run"]
    assert (last["units_total"], last["units_run"], last["units_done"]) == (6, 1, 1)
    status, emb = ds.status.values, ds.embedding.values
    assert (status == OK).all()
    was_ok = before.status.values == OK
    np.testing.assert_array_equal(emb[was_ok], before.embedding.values[was_ok])  # untouched, bit for bit
    for name in ("input_res_m", "valid_fraction"):
        np.testing.assert_array_equal(ds[name].values[was_ok], before[name].values[was_ok])
    # The re-run unit is embedded afresh. The emulator's synthetic world is not format-defining
    # (it gained land cover after the fixture was made), so its pixels, and these embeddings,
    # may differ from the fixture's: the re-run cells are checked for shape and finiteness only.
    want = np.load(GOLDEN / "cube_v1_embedding.npy")
    assert emb[~was_ok].shape == want[~was_ok].shape and np.isfinite(emb[~was_ok]).all()
    assert ds.sample.values.tolist() == meta["ids"]
    # The fixture itself is untouched (the run worked on a copy).
    assert zarr.open_group(CUBE_DIR, mode="r")["status"][...].tolist() == meta["status"]
