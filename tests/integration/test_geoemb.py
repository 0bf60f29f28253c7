"""Zarr conventions on every group we write (issue 15, parts 1 and 6): geoemb:, proj:, spatial:; plain string ids.

Every group of a sample cube and of a tiling store is validated against the convention's own
``schema.json`` (copies in ``tests/data/geoemb``, see its NOTICE.md; no network).
"""

from __future__ import annotations

import copy
import json
import os
import pathlib

import jsonschema
import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import shapely
import xarray as xr
import zarr

from rsembed_dask.store.cube import OK, Cube, nearest_sample, open_cube
from rsembed_dask.store.verify import verify_tiling_store
from rsembed_dask.store.geoemb import GEOEMB_CONVENTION, PROJ_CONVENTION, SPATIAL_CONVENTION, model_url, source_data_url
from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.store.quantize import dequantize_int8
from rsembed_dask.specs import CampaignSpec, ModelSpec, OutputSpec, SensorSpec, TemporalSpec
from rsembed_dask.sampling.tiling import tile_aoi

DATA = pathlib.Path(__file__).parents[1] / "data" / "geoemb"
WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")
TINY = ModelSpec("test-tiny", device="cpu")
# Astride the 12E seam between UTM zones 32 and 33 (two zone grids).
AOI = shapely.Polygon([(11.93, 45.0), (12.08, 45.01), (12.1, 45.09), (11.95, 45.1)])


def _schema(name: str) -> dict:
    return json.loads((DATA / name).read_text())


GEOEMB, PROJ, SPATIAL = _schema("schema.json"), _schema("proj/schema.json"), _schema("spatial/schema.json")


def check(meta: dict, schema: dict) -> None:
    """Validate ``meta`` (a parsed zarr.json) against ``schema``, formats (``uri``) included."""
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    cls(schema, format_checker=cls.FORMAT_CHECKER).validate(meta)


def groups(path) -> dict[str, dict]:
    """Every group of the store at ``path``: relative path -> parsed zarr.json."""
    out = {}
    for d, _, files in os.walk(path):
        if "zarr.json" in files:
            meta = json.loads((pathlib.Path(d) / "zarr.json").read_text())
            if meta.get("node_type") == "group":
                out[os.path.relpath(d, path)] = meta
    return out


def registered(meta: dict) -> set[str]:
    return {c["uuid"] for c in meta["attributes"]["zarr_conventions"]}


def test_the_conventions_examples_validate_and_the_schema_refuses_broken_attributes():
    for example in sorted((DATA / "examples").glob("*.json")):
        check(json.loads(example.read_text()), GEOEMB)
    clay = json.loads((DATA / "examples" / "clay_example.json").read_text())
    broken = []
    for change in (lambda a: a.pop("geoemb:chip_layout"),          # required for chips
                   lambda a: a.update({"geoemb:type": "patch"}),
                   lambda a: a.update({"geoemb:dimensions": 0}),
                   lambda a: a.update({"geoemb:model": "not a url"}),
                   lambda a: a.update({"zarr_conventions": [{"name": "geoemb:", "uuid": "0000"}]}),
                   lambda a: a.update({"geoemb:quantization": {"method": "x", "original_dtype": "float32",
                                                               "scale": {"type": "array"}}})):
        meta = copy.deepcopy(clay)
        change(meta["attributes"])
        broken.append(meta)
    for meta in broken:
        with pytest.raises(jsonschema.ValidationError):
            check(meta, GEOEMB)
    # Our registration entries are the constants each convention's schema fixes.
    for conv, schema in ((GEOEMB_CONVENTION, GEOEMB), (PROJ_CONVENTION, PROJ), (SPATIAL_CONVENTION, SPATIAL)):
        consts = {k: v["const"] for k, v in schema["$defs"]["conventionMetadata"]["properties"].items()}
        assert conv == consts


def test_model_and_source_urls(tmp_path):
    assert model_url("MVRL/scalemae-vitlarge-800") == "https://huggingface.co/MVRL/scalemae-vitlarge-800"
    assert model_url("test-tiny") == "urn:rsembed-dask:test-config:test-tiny"
    (tmp_path / "weights").mkdir()
    assert model_url(str(tmp_path / "weights")) == (tmp_path / "weights").resolve().as_uri()
    assert source_data_url("COPERNICUS/S2_SR_HARMONIZED") == \
        "https://developers.google.com/earth-engine/datasets/catalog/COPERNICUS_S2_SR_HARMONIZED"


def _cube(path, spec: CampaignSpec, n: int = 5) -> Cube:
    lon, lat = np.linspace(2.0, 3.0, n), np.linspace(30.0, 31.0, n)
    return Cube.create_or_open(path, spec=spec, ids=[f"id-{i}" for i in range(n)], lon=lon, lat=lat,
                               geohash=[f"gh{i}" for i in range(n)],
                               wkb=[shapely.Point(x, y).buffer(0.01).wkb for x, y in zip(lon, lat)],
                               embed_dim=8, versions={"rsembed_dask": "9.9.9"})


@pytest.mark.parametrize("case", ["hub_float32_3_scales", "hub_int8_1_scale", "test_config"])
def test_sample_cube_carries_geoemb(tmp_path, case):
    spec = {
        "hub_float32_3_scales": CampaignSpec(temporal=WINDOW, chunk_size=4),
        "hub_int8_1_scale": CampaignSpec(temporal=WINDOW, scales=(20,), chunk_size=4,
                                         output=OutputSpec.pooled(dtype="int8"),
                                         sensor=SensorSpec(collection="COPERNICUS/S2_HARMONIZED")),
        "test_config": CampaignSpec(temporal=WINDOW, model=ModelSpec("test-tiny", image_size=64), scales=(10, 20)),
    }[case]
    _cube(tmp_path / "c.zarr", spec)
    found = groups(tmp_path / "c.zarr")
    assert list(found) == ["."]
    meta = found["."]
    check(meta, GEOEMB)
    a = meta["attributes"]
    assert GEOEMB_CONVENTION["uuid"] in registered(meta)
    assert a["geoemb:type"] == "chip" and a["geoemb:dimensions"] == 8
    assert a["geoemb:chip_layout"] == {"layout_type": "irregular", "chip_size": [spec.model.image_size] * 2}
    assert a["geoemb:data_type"] == spec.output.dtype
    assert a["geoemb:build_version"] == "9.9.9"
    assert a["geoemb:source_data"] == [
        "https://developers.google.com/earth-engine/datasets/catalog/" + spec.sensor.collection.replace("/", "_")]
    if spec.model.model_id == "test-tiny":
        assert a["geoemb:model"] == "urn:rsembed-dask:test-config:test-tiny"
    else:
        assert a["geoemb:model"] == "https://huggingface.co/MVRL/scalemae-vitlarge-800"
    if len(spec.scales) == 1:
        assert a["geoemb:gsd"] == 20.0
    else:
        assert "geoemb:gsd" not in a  # several scales in one group: the scale coordinate says
    assert ("geoemb:quantization" in a) == (spec.output.dtype == "int8")
    # Attributes are not part of the spec identity: the same campaign resumes.
    assert _cube(tmp_path / "c.zarr", spec).spec.spec_hash() == a["spec_hash"]


def test_opened_cubes_give_plain_string_ids(tmp_path):
    _cube(tmp_path / "c.zarr", CampaignSpec(temporal=WINDOW, model=ModelSpec("test-tiny"), chunk_size=4))
    ds = open_cube(tmp_path / "c.zarr")
    ids = ds.sample.values
    assert ids.astype(str).tolist() == [f"id-{i}" for i in range(5)]
    assert all(type(v) is str for v in ids.tolist())
    for name in ("geohash", "geometry", "error"):
        assert ds[name].dtype == object and ds[name].values.astype(str).shape == ds[name].shape
    assert ds.sel(sample="id-3").status.shape == (3,)
    assert nearest_sample(ds, 3.0, 31.0) == "id-4"
    assert ds.to_dataframe().index.get_level_values("sample")[0] == "id-0"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_tiling_store_groups_carry_geoemb_proj_and_spatial(tmp_path, client, provider, dtype):
    tiling = tile_aoi(AOI, scales=[40])
    out = tmp_path / "tiles.zarr"
    tree = run_campaign(tiling, out, temporal=WINDOW, model=TINY, backend=provider, client=client,
                        output=OutputSpec.pooled(dtype=dtype), progress=False)
    assert isinstance(tree, xr.DataTree)
    found = groups(out)
    zones = [p for p in found if p.startswith("40m" + os.sep)]
    assert sorted(found) == sorted([".", "samples", os.path.join("samples", "40m"), "40m", *zones])
    assert len(zones) == 2
    for rel, meta in found.items():
        check(meta, GEOEMB)
        a = meta["attributes"]
        assert a["geoemb:data_type"] == dtype and a["geoemb:dimensions"] == 64
        assert a["geoemb:chip_layout"] == {"layout_type": "regular_grid", "chip_size": [224, 224],
                                           "stride": [224, 224]}
        assert a["geoemb:gsd"] == 40.0  # one scale: every group has it
        assert ("geoemb:quantization" in a) == (dtype == "int8")
    for rel in (".", "40m"):
        assert found[rel]["attributes"]["geoemb:spatial_layout"] == "utm_zones"
    samples = tree["samples/40m"].to_dataset()
    emb = samples.embedding.values[:, 0, :]
    assert samples.embedding.dtype == np.float32 and (samples.status.values == OK).all()
    assert all(type(v) is str for v in samples.sample.values.tolist())
    for rel in zones:
        meta = found[rel]
        check(meta, PROJ)
        check(meta, SPATIAL)
        for schema, key in ((PROJ, "proj:code"), (SPATIAL, "spatial:dimensions")):  # the schemas bite
            with pytest.raises(jsonschema.ValidationError):
                check({**meta, "attributes": {k: v for k, v in meta["attributes"].items() if k != key}}, schema)
        assert {GEOEMB_CONVENTION["uuid"], PROJ_CONVENTION["uuid"], SPATIAL_CONVENTION["uuid"]} <= registered(meta)
        a = meta["attributes"]
        grid = tree[rel.replace(os.sep, "/")].to_dataset()
        epsg = int(rel.split("EPSG")[1])
        assert a["proj:code"] == f"EPSG:{epsg}" == f"EPSG:{grid.embedding.rio.crs.to_epsg()}"
        assert a["spatial:transform"] == pytest.approx(list(grid.embedding.rio.transform())[:6])
        assert a["spatial:shape"] == list(grid.embedding.shape[:2])
        assert a["spatial:bbox"] == pytest.approx(list(grid.embedding.rio.bounds()))
        assert a["spatial:dimensions"] == ["y", "x"] and a["spatial:registration"] == "pixel"
        # The zone grid holds the sample cube's (dequantised) embeddings cell by cell.
        assert grid.embedding.dtype == np.float32 and "embedding_scale" not in grid
        index = grid.sample_index.values
        has = index >= 0
        np.testing.assert_array_equal(grid.embedding.values[has], emb[index[has]])
        assert np.isnan(grid.embedding.values[~has]).all()
        if dtype == "int8":
            raw = open_cube(out, dequantize=False)[rel.replace(os.sep, "/")].to_dataset()
            assert raw.embedding.dtype == np.int8 and raw.embedding_scale.dims == ("y", "x")
            np.testing.assert_array_equal(
                dequantize_int8(raw.embedding.values, raw.embedding_scale.values, axis=-1)[has], emb[index[has]])
    assert verify_tiling_store(out) == []
    if dtype == "int8":  # an ok grid cell that lost its scale is found
        rel = zones[0]
        y, x = np.argwhere(tree[rel.replace(os.sep, "/")].to_dataset().sample_index.values >= 0)[0]
        zarr.open_array(out / rel / "embedding_scale", mode="r+")[y, x] = np.nan
        assert any("ok grid cells with a non-finite embedding" in p for p in verify_tiling_store(out))


@pytest.mark.timeout(180)
def test_cli_embed_prints_the_embedding_and_saves_grids(tmp_path, capsys):
    from rsembed_dask.cli import main

    base = ["embed", "--lon", "3", "--lat", "31.2", "--buffer-m", "640", "--start", "2022-01-01",
            "--end", "2022-02-01", "--model", "test-tiny", "--backend", "emulator", "--device", "cpu"]
    assert main(base + ["--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    values = np.array(printed["embedding"], dtype=np.float32)
    assert printed["shape"] == [64] and values.shape == (64,) and np.isfinite(values).all()
    assert printed["meta"]["tokens_kind"] == "pooled"
    assert main(base + ["--out", str(tmp_path / "v.npy")]) == 0
    assert "saved to" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), values)  # the exact float32 values
    assert main(base + ["--grid", "--json", "--out", str(tmp_path / "g.npy")]) == 0
    printed = json.loads(capsys.readouterr().out)
    grid = np.load(tmp_path / "g.npy")
    assert "embedding" not in printed and printed["embedding_file"] == str(tmp_path / "g.npy")
    assert grid.dtype == np.float32 and list(grid.shape) == printed["shape"] and grid.shape[0] == 64
    assert main(base + ["--out", str(tmp_path / "v.txt")]) == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "v.txt").exists()
