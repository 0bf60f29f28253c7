"""STAC catalogue: core validation (pystac's bundled, offline schemas) and the Embedding extension's schema.

Every Collection and Item is validated offline against the ``emb:`` extension's own JSON
schema (geo-embeddings/embeddings-stac-specification v0.0.1, Apache-2.0, kept verbatim in
``tests/data/stac`` with its licence) and the processing extension's schema it refers to;
the STAC core schemas it refers to (v1.0.0 URLs) are checked by pystac's bundled core schemas
instead (``validate_core``), the extension schema's references to them getting STAC's link rule.
The rules below also restate what the extension requires, as readable asserts.
"""

import datetime as dt
import functools
import json
import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import xarray as xr
from pystac.validation.stac_validator import JsonSchemaSTACValidator

from rsembed_dask import write_stac
from rsembed_dask.cli import main
from rsembed_dask.store.stac import EMB_EXTENSION, PROCESSING_EXTENSION, PROJECTION_EXTENSION

from ..emb_stores import make_cube, make_tiling, quantise_int8, sample_gdf

# The extension's schema: Collection fields, Item property fields (``additionalProperties: false``
# for ``emb:`` names: any other ``emb:`` key is invalid), chip layout and quantization objects.
COLLECTION_EMB = {"emb:type", "emb:dimensions", "emb:chip_layout", "emb:temporal_resolution", "emb:fit_for_use",
                  "emb:uncertainty"}
ITEM_EMB = {"emb:runtime_parameters", "emb:preprocessing", "emb:postprocessing", "emb:fit_for_use",
            "emb:spatial_coverage", "emb:uncertainty", "emb:quantization"}
CHIP_LAYOUT_KEYS = {"layout_type", "chip_size", "stride", "grid_id", "grid_definition"}
QUANTIZATION_KEYS = {"method", "original_dtype", "quantized_dtype", "scale", "offset", "link"}


def check_collection(c: dict) -> None:
    """What the extension requires of a Collection."""
    assert EMB_EXTENSION in c["stac_extensions"]
    assert c["type"] == "Collection"
    assert c["emb:type"] in ("pixel", "chip")
    assert isinstance(c["emb:dimensions"], int) and c["emb:dimensions"] >= 1
    assert isinstance(c["data_type"], str)
    assert {k for k in c if k.startswith("emb:")} <= COLLECTION_EMB
    rels = {link["rel"]: link for link in c["links"]}
    for rel in ("emb:model", "emb:source-data"):  # required relations
        assert rels[rel]["href"]
    layout = c.get("emb:chip_layout")
    if layout is not None:
        assert set(layout) <= CHIP_LAYOUT_KEYS
        assert layout["layout_type"] in ("regular_grid", "variable_grid", "named_grid")
        for k in ("chip_size", "stride"):
            if k in layout:
                assert len(layout[k]) == 2 and all(isinstance(v, int) and v >= 1 for v in layout[k])
    if "gsd" in c:
        assert isinstance(c["gsd"], (int, float))
    assert set(c.get("summaries", {})) <= {"emb:type", "emb:dimensions", "data_type", "gsd",
                                           "emb:temporal_resolution", "emb:fit_for_use", "emb:uncertainty"}
    assert "embeddings" in c["item_assets"]  # SHOULD


def check_item(i: dict) -> None:
    """What the extension requires of an Item."""
    assert EMB_EXTENSION in i["stac_extensions"]
    assert i["type"] == "Feature" and "embeddings" in i["assets"]
    props = i["properties"]
    assert {k for k in props if k.startswith("emb:")} <= ITEM_EMB
    assert isinstance(props["emb:runtime_parameters"], dict)
    for k in ("emb:preprocessing", "emb:postprocessing"):  # processing Expression Objects
        assert set(props[k]) == {"format", "expression"}
    q = props.get("emb:quantization")
    if q is not None:
        assert set(q) <= QUANTIZATION_KEYS and {"method", "original_dtype"} <= set(q)
    for k in ("assets",):
        for asset in i[k].values():
            assert not any(f.startswith("emb:") for f in asset)
    assert PROCESSING_EXTENSION in i["stac_extensions"]
    dt.datetime.fromisoformat(props["processing:datetime"].replace("Z", "+00:00"))


STAC_SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "stac"


@functools.lru_cache(maxsize=1)
def _emb_validator():
    """A Draft 7 validator of the emb: extension schema that never touches the network."""
    from jsonschema import Draft7Validator
    from referencing import Registry, Resource

    emb = json.loads((STAC_SCHEMAS / "embeddings" / "schema.json").read_text())
    processing = json.loads((STAC_SCHEMAS / "processing" / "schema.json").read_text())
    # The extension refers to STAC v1.0.0's item and collection schemas for the whole object and
    # for its link definition. The object's core validity is checked by validate_core (pystac's
    # bundled core schemas); here those references get the link rule only (STAC's: rel and href).
    link = {"type": "object", "required": ["rel", "href"],
            "properties": {"rel": {"type": "string"}, "href": {"type": "string"}}}
    resources = [(f"https://schemas.stacspec.org/v1.0.0/{name}-spec/json-schema/{name}.json",
                  Resource.from_contents({"$schema": "http://json-schema.org/draft-07/schema#",
                                          "definitions": {"link": link}}))
                 for name in ("item", "collection")]
    resources += [(emb["$id"].rstrip("#"), Resource.from_contents(emb)),
                  (processing["$id"].rstrip("#"), Resource.from_contents(processing))]

    def offline(uri):
        raise AssertionError(f"the schema asked for {uri}: no network in tests (add it to tests/data/stac)")

    return Draft7Validator(emb, registry=Registry(retrieve=offline).with_resources(resources))


def validate_emb(obj) -> None:
    """Validate a Collection or Item (pystac object or dict) against the emb: extension's schema."""
    d = obj if isinstance(obj, dict) else obj.to_dict()
    errors = sorted(_emb_validator().iter_errors(d), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


def validate_core(obj) -> None:
    v = JsonSchemaSTACValidator()  # core schemas ship with pystac: no network
    kind = pystac.STACObjectType.COLLECTION if isinstance(obj, pystac.Collection) else pystac.STACObjectType.ITEM
    v.validate_core(obj.to_dict(), kind, obj.to_dict()["stac_version"])
    validate_emb(obj)


@pytest.fixture(scope="module")
def cube_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("stac") / "alps.zarr"
    make_cube(path, sample_gdf(300, seed=11), dim=24)
    return path


def _read(out):
    return pystac.read_file(os.path.join(out, "collection.json"))


def test_sample_cube_catalogue_validates_and_has_the_emb_fields(cube_path, tmp_path):
    out = tmp_path / "stac"
    write_stac(cube_path, out)
    col = _read(out)
    validate_core(col)
    c = col.to_dict()
    check_collection(c)
    assert (c["id"], c["emb:type"], c["emb:dimensions"], c["data_type"]) == ("alps", "chip", 24, "float32")
    assert c["summaries"]["gsd"] == [10.0, 40.0] and "gsd" not in c
    assert c["extent"]["temporal"]["interval"] == [["2024-01-01T00:00:00Z", "2024-12-31T23:59:59Z"]]
    links = {link["rel"]: link["href"] for link in c["links"]}
    assert links["emb:model"] == "urn:rsembed_dask:model:test-tiny"
    assert links["emb:source-data"].endswith("/COPERNICUS_S2_SR_HARMONIZED")
    items = sorted(col.get_items(), key=lambda i: i.properties["gsd"])
    assert [i.id for i in items] == ["alps-10m", "alps-40m"]
    for item in items:
        validate_core(item)
        d = item.to_dict()
        check_item(d)
        assert d["properties"]["emb:runtime_parameters"]["scale_m"] == item.properties["gsd"]
        assert d["properties"]["start_datetime"] == "2024-01-01T00:00:00Z"
        asset = item.assets["embeddings"]
        assert os.path.samefile(asset.get_absolute_href(), cube_path) and not os.path.isabs(asset.href)
        ds = xr.open_dataset(asset.get_absolute_href(), **asset.extra_fields["xarray:open_kwargs"])
        assert ds.sizes["feature"] == 24 and item.properties["gsd"] in ds.scale.values
        # The item's bbox covers every ok sample's centroid.
        ok = ds.status.sel(scale=item.properties["gsd"]).values == 1
        lon, lat = ds.lon.values[ok], ds.lat.values[ok]
        b = item.bbox
        assert b[0] < lon.min() and b[2] > lon.max() and b[1] < lat.min() and b[3] > lat.max()
    # The whole catalogue reads back from disk (self-contained, relative links).
    assert all(not os.path.isabs(link.href) for link in col.links if link.rel in ("item", "root"))


def test_geoparquet_assets(cube_path, tmp_path):
    out = tmp_path / "stac"
    col = write_stac(cube_path, out, geoparquet=True, collection_id="alps-gpq", license="CC-BY-4.0")
    col = _read(out)
    check_collection(col.to_dict())
    assert col.to_dict()["item_assets"]["embeddings"]["type"] == "application/vnd.apache.parquet"
    for item in col.get_items():
        check_item(item.to_dict())
        asset = item.assets["embeddings"]
        assert asset.media_type == "application/vnd.apache.parquet" and asset.href == "./embeddings.parquet"
        gdf = gpd.read_parquet(asset.get_absolute_href())
        assert set(gdf["scale"]) == {item.properties["gsd"]}
        np.testing.assert_allclose(item.bbox, gdf.total_bounds)


def test_tiling_store_items_per_scale_and_zone(tmp_path):
    store = tmp_path / "t.zarr"
    make_tiling(store)
    out = tmp_path / "stac"
    write_stac(store, out, geoparquet=True)
    col = _read(out)
    validate_core(col)
    c = col.to_dict()
    check_collection(c)
    assert c["emb:chip_layout"] == {"layout_type": "regular_grid", "chip_size": [32, 32], "stride": [32, 32],
                                    "grid_id": "rsembed_dask-utm-tiles-32px"}
    items = {i.id: i for i in col.get_items()}
    assert sorted(items) == ["t-10m-EPSG32631", "t-10m-EPSG32632", "t-40m-EPSG32631", "t-40m-EPSG32632"]
    for item in items.values():
        validate_core(item)
        check_item(item.to_dict())
        assert PROJECTION_EXTENSION in item.stac_extensions
        zone = item.id.rsplit("-", 1)[1]
        assert item.properties["proj:code"] == f"EPSG:{zone[4:]}"
        asset = item.assets["embeddings"]
        grid = xr.open_dataset(asset.get_absolute_href(), **asset.extra_fields["xarray:open_kwargs"])
        assert list(grid.embedding.dims) == ["y", "x", "feature"]
        assert list(grid.status.shape) == item.properties["proj:shape"]
        a, _, x0, _, e, y0 = item.properties["proj:transform"]
        assert np.isclose(grid.x.values[0], x0 + a / 2) and np.isclose(grid.y.values[0], y0 + e / 2)
        samples = gpd.read_parquet(item.assets["samples"].get_absolute_href())
        assert set(samples["scale"]) == {item.properties["gsd"]}


def test_int8_cube_declares_its_quantization(tmp_path):
    store = tmp_path / "q.zarr"
    make_cube(store, sample_gdf(60, seed=12), dim=8, scales=(10.0,), chunk=16)
    quantise_int8(store)
    write_stac(store, tmp_path / "stac")
    col = _read(tmp_path / "stac")
    c = col.to_dict()
    check_collection(c)
    assert c["data_type"] == "int8" and c["gsd"] == 10.0
    (item,) = col.get_items()
    check_item(item.to_dict())
    assert item.properties["emb:quantization"] == {"method": "linear", "original_dtype": "float32",
                                                   "quantized_dtype": "int8", "scale": [0.03], "offset": [0.1]}


def test_cli_stac(cube_path, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["stac", str(cube_path), "--out", str(out), "--id", "from-cli"]) == 0
    assert "collection 'from-cli' with 2 item(s): from-cli-10m, from-cli-40m" in capsys.readouterr().out
    assert json.loads((out / "collection.json").read_text())["id"] == "from-cli"
    assert main(["stac", str(tmp_path / "nothing.zarr"), "--out", str(out)]) == 2
    assert "no cube" in capsys.readouterr().err
    assert main(["stac", str(cube_path), "--out", str(out), "--id", "bad id"]) == 2
    assert "collection_id='bad id' is invalid" in capsys.readouterr().err


def test_run_campaign_writes_the_catalogue_when_asked(emulator, client, tmp_path):
    from rsembed_dask.campaign.run import run_campaign
    from rsembed_dask.providers.gee import GEEProvider
    from rsembed_dask.specs import ModelSpec, TemporalSpec

    from ..conftest import FAST_RETRY

    rng = np.random.default_rng(2)
    gdf = gpd.GeoDataFrame(geometry=gpd.points_from_xy(3.0 + rng.uniform(0, .2, 6), 31.0 + rng.uniform(0, .2, 6)),
                           crs="EPSG:4326")
    provider = GEEProvider(api_url=emulator.url, credentials="anonymous", project="test-project", retry=FAST_RETRY)
    run_campaign(gdf, tmp_path / "run.zarr", scales=[20], temporal=TemporalSpec.range("2022-01-01", "2022-03-01"),
                 model=ModelSpec("test-tiny", device="cpu", image_size=32), backend=provider, client=client,
                 chunk_size=4, progress=False, stac_dir=tmp_path / "stac")
    col = _read(tmp_path / "stac")
    c = col.to_dict()
    check_collection(c)
    assert c["emb:dimensions"] == 64 and c["emb:temporal_resolution"] == "P2M"
    (item,) = col.get_items()
    check_item(item.to_dict())
    assert item.properties["gsd"] == 20.0 and item.properties["emb:runtime_parameters"]["device"] == "cpu"
