"""Format fixes: GeoParquet ``geo`` in the Arrow schema too, antimeridian coverings (xmin > xmax),
no absolute local paths in STAC or GeoParquet, int8 per-cell factors named in
``emb:quantization``, the window's datetimes and resolution; every catalogue validated offline
against the ``emb:`` extension's own schema."""

import json
import os

import geopandas as gpd
import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pystac
import pytest
import shapely

from rsembed_dask import export_geoparquet, write_stac
from rsembed_dask.store.geoparquet import covering_bounds, lon_extent

from ..emb_stores import make_cube, make_tiling, quantise_int8, sample_gdf
from .test_stac import check_collection, check_item, validate_core, validate_emb


def _fiji_gdf():
    """Points on both sides of the antimeridian (Fiji) and a few near lon 0.5."""
    rng = np.random.default_rng(4)
    lon = np.r_[rng.uniform(179.9990, 179.9999, 6), rng.uniform(-179.9999, -179.999, 6), rng.uniform(0.4, 0.6, 4)]
    lat = np.r_[rng.uniform(-17.2, -16.8, 12), rng.uniform(5.0, 5.2, 4)]
    return gpd.GeoDataFrame(index=[f"p{i:02d}" for i in range(len(lon))], geometry=list(shapely.points(lon, lat)),
                            crs="EPSG:4326")


def test_geo_metadata_is_in_the_arrow_schema_too(tmp_path):
    path = tmp_path / "c.zarr"
    make_cube(path, sample_gdf(50, seed=2), dim=8, scales=(10.0,), chunk=16)
    out = tmp_path / "c.parquet"
    export_geoparquet(path, out)
    footer = pq.ParquetFile(out).metadata.metadata
    schema = pq.read_schema(out).metadata
    assert schema[b"geo"] == footer[b"geo"] and schema[b"emb"] == footer[b"emb"]
    assert json.loads(pads.dataset(out).schema.metadata[b"geo"])["columns"]["geometry"]["covering"]
    geo = json.loads(schema[b"geo"])["columns"]["geometry"]
    np.testing.assert_allclose(geo["bbox"], gpd.read_parquet(out).total_bounds)


def test_antimeridian_footprints_get_coverings_with_xmin_above_xmax(tmp_path):
    path = tmp_path / "fiji.zarr"
    make_cube(path, _fiji_gdf(), dim=8, scales=(10.0,), chunk=8, bad_fraction=0.0)
    out = tmp_path / "fiji.parquet"
    export_geoparquet(path, out)
    t = pq.read_table(out, columns=["id", "lon", "bbox"])
    b = t.column("bbox").combine_chunks()
    xmin, xmax = b.field("xmin").to_numpy(), b.field("xmax").to_numpy()
    lon = t.column("lon").to_numpy()
    fiji = np.abs(lon) > 179
    assert fiji.sum() == 12 and (xmin[fiji] > xmax[fiji]).all() and (xmin[fiji] > 179.9).all()
    assert (xmax[fiji] < -179.9).all() and (xmin[~fiji] < xmax[~fiji]).all()
    # The naive bbox query near lon 0 (what DuckDB users write) finds only the rows there.
    near0 = (xmax >= 0.0) & (xmin <= 1.0)
    assert near0.sum() == 4 and not (near0 & fiji).any()
    assert len(gpd.read_parquet(out, bbox=(0.0, -90.0, 1.0, 90.0))) == 4
    # The file's bbox: the shortest arc of longitudes holding every row.
    geo = json.loads(pq.read_schema(out).metadata[b"geo"])["columns"]["geometry"]
    assert geo["bbox"][0] == pytest.approx(lon_extent(xmin, xmax)[0])


def test_covering_bounds_and_lon_extent():
    fiji = shapely.MultiPolygon([shapely.box(179.9, -17, 180, -16), shapely.box(-180, -17, -179.8, -16)])
    assert covering_bounds([fiji]).tolist() == [[179.9, -17.0, -179.8, -16.0]]
    # A MultiPolygon far from the antimeridian keeps its plain bounds.
    two = shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(5, 0, 6, 1)])
    assert covering_bounds([two]).tolist() == [[0.0, 0.0, 6.0, 1.0]]
    assert lon_extent([179.9, 170.0], [-179.8, 171.0]) == (170.0, -179.8)
    assert lon_extent([-10.0, 170.0], [10.0, -170.0]) in ((-10.0, -170.0), (170.0, 10.0))
    assert lon_extent([-180.0], [180.0]) == (-180.0, 180.0)


def _strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def test_stac_of_an_antimeridian_cube_has_a_crossing_bbox_and_validates(tmp_path):
    gdf = _fiji_gdf().iloc[:12]
    path = tmp_path / "fiji.zarr"
    make_cube(path, gdf, dim=8, scales=(10.0,), chunk=8, bad_fraction=0.0)
    col = write_stac(path, tmp_path / "stac")
    validate_core(col)
    (item,) = col.get_items()
    validate_core(item)
    w, s, e, n = item.bbox
    assert w > 179.9 and e < -179.9 and w > e and -17.3 < s < n < -16.7
    assert item.geometry["type"] == "MultiPolygon"
    spatial = col.extent.spatial.bboxes[0]
    assert spatial[0] > spatial[2]


def test_no_absolute_local_paths_in_stac_or_geoparquet(tmp_path):
    path = tmp_path / "data" / "c.zarr"
    make_cube(path, sample_gdf(40, seed=3), dim=8, scales=(10.0,), chunk=16)
    for geoparquet in (False, True):
        out = tmp_path / f"stac-{geoparquet}"
        write_stac(path, out, geoparquet=geoparquet)
        for root, _, files in os.walk(out):
            for f in files:
                if f.endswith(".json"):
                    doc = json.loads(open(os.path.join(root, f)).read())
                    leaked = [v for v in _strings(doc) if str(tmp_path) in v or v.startswith("file:")]
                    assert not leaked, (f, leaked)
                    if doc.get("type") in ("Feature", "Collection"):
                        validate_emb(doc)
                elif f.endswith(".parquet"):
                    emb = pq.read_schema(os.path.join(root, f)).metadata[b"emb"].decode()
                    assert str(tmp_path) not in emb
    pq_out = tmp_path / "exports" / "c.parquet"
    export_geoparquet(path, pq_out)
    emb = json.loads(pq.read_schema(pq_out).metadata[b"emb"])
    assert emb["source_store"] == "../data/c.zarr"
    assert os.path.samefile(pq_out.parent / emb["source_store"], path)


def test_window_datetimes_and_temporal_resolution(tmp_path):
    path = tmp_path / "c.zarr"
    make_cube(path, sample_gdf(30, seed=5), dim=8, scales=(10.0,), chunk=16)
    col = write_stac(path, tmp_path / "stac")
    c = col.to_dict()
    check_collection(c)
    assert c["emb:temporal_resolution"].startswith("P")
    (item,) = col.get_items()
    check_item(item.to_dict())
    assert item.properties["start_datetime"] < item.properties["end_datetime"]
    out = tmp_path / "c.parquet"
    export_geoparquet(path, out)
    t = pq.read_table(out, columns=["start_datetime", "end_datetime"])
    assert t.column("start_datetime")[0].as_py() < t.column("end_datetime")[0].as_py()


@pytest.mark.parametrize("geoparquet", [False, True])
def test_int8_per_cell_factors_are_named_in_emb_quantization(tmp_path, geoparquet):
    path = tmp_path / "q.zarr"
    make_cube(path, sample_gdf(40, seed=8), dim=8, scales=(10.0,), chunk=16)
    quantise_int8(path, per_cell=True)
    col = write_stac(path, tmp_path / "stac", geoparquet=geoparquet)
    (item,) = col.get_items()
    validate_core(item)
    q = item.properties["emb:quantization"]
    assert q["method"] == "per_cell_scale" and "scale" not in q
    link = q["link"]
    assert "value = q * factor" in link["title"] and not os.path.isabs(link["href"])
    target = os.path.normpath(os.path.join(os.path.dirname(item.get_self_href()), link["href"]))
    if geoparquet:
        assert "column 'embedding_scale'" in link["title"]
        assert "embedding_scale" in pq.read_schema(target).names
    else:
        assert "Zarr array 'embedding_scale'" in link["title"]
        assert os.path.samefile(target, path / "embedding_scale")


def test_the_emb_schema_check_bites(tmp_path):
    path = tmp_path / "c.zarr"
    make_cube(path, sample_gdf(20, seed=9), dim=8, scales=(10.0,), chunk=16)
    col = write_stac(path, tmp_path / "stac")
    d = next(iter(col.get_items())).to_dict()
    validate_emb(d)
    d["properties"]["emb:bogus"] = 1
    with pytest.raises(AssertionError, match="emb:bogus"):
        validate_emb(d)
    c = col.to_dict()
    c["emb:chip_layout"] = {"layout_type": "hexagons"}
    with pytest.raises(AssertionError, match="hexagons"):
        validate_emb(c)


def test_tiling_catalogue_validates_against_the_emb_schema(tmp_path):
    path = tmp_path / "t.zarr"
    make_tiling(path)
    col = write_stac(path, tmp_path / "stac", geoparquet=True)
    validate_emb(col)
    for item in col.get_items():
        validate_emb(item)
    assert isinstance(pystac.read_file(str(tmp_path / "stac" / "collection.json")), pystac.Collection)
