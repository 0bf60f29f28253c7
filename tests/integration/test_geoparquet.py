"""GeoParquet export: read back with geopandas, DuckDB and pyarrow; footprints; row groups; int8; tilings."""

import json
import math

import duckdb
import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely

from rsembed_dask import export_geoparquet
from rsembed_dask.cli import main
from rsembed_dask.store.cube import OK, open_cube
from rsembed_dask.errors import CubeError, SpecError
from rsembed_dask.explore import similar
from rsembed_dask.store.footprints import stored_footprints
from rsembed_dask.store.geoparquet import rows_per_group
from rsembed_dask.geo.grid import lonlat_to_xy

from ..emb_stores import make_cube, make_tiling, quantise_int8, sample_gdf

N, D = 600, 32


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpq") / "c.zarr"
    cube, table = make_cube(path, sample_gdf(N, polygons=20), dim=D)
    return path, cube, table


@pytest.fixture(scope="module")
def exported(store, tmp_path_factory):
    path, _, _ = store
    out = tmp_path_factory.mktemp("gpq_out") / "c.parquet"
    report = export_geoparquet(path, out)
    return out, report


def _ok_cells(path):
    """(scale, id, embedding) of every ok cell, in cube order, scale by scale."""
    ds = open_cube(path)
    out = []
    for si, s in enumerate(ds.scale.values.tolist()):
        status = ds.status.isel(scale=si).values
        emb = ds.embedding.isel(scale=si).values
        for i in np.flatnonzero(status == OK):
            out.append((s, ds.sample.values[i].item() if hasattr(ds.sample.values[i], "item") else
                        str(ds.sample.values[i]), emb[i]))
    return out


def test_export_reads_back_with_geopandas(store, exported):
    path, cube, _ = store
    out, report = exported
    gdf = gpd.read_parquet(out)
    expected = _ok_cells(path)
    assert report.rows == len(gdf) == len(expected) == cube.status_counts()["ok"]
    assert report.cells["ok"] == len(expected) and report.cells["failed"] > 0 and report.cells["no_data"] > 0
    assert gdf.crs.to_epsg() == 4326
    assert set(gdf.geom_type) == {"Polygon"}
    # Rows are the ok cells in cube order (Hilbert order), scale by scale, with the cube's vectors.
    assert list(zip(gdf["scale"], gdf.id)) == [(s, i) for s, i, _ in expected]
    np.testing.assert_array_equal(np.stack(gdf.embedding.to_numpy()), np.stack([e for _, _, e in expected]))
    assert gdf.embedding.iloc[0].dtype == np.float32 and len(gdf.embedding.iloc[0]) == D
    assert str(gdf.start_datetime.iloc[0]) == "2024-01-01 00:00:00+00:00"
    assert str(gdf.end_datetime.iloc[0]) == "2024-12-31 23:59:59+00:00"
    # The bbox covering column (geopandas hides it) is each row's geometry bounds.
    bbox = pq.read_table(out, columns=["bbox"]).column("bbox").combine_chunks()
    b = np.column_stack([bbox.field(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax")])
    np.testing.assert_array_equal(b, shapely.bounds(gdf.geometry.values))
    # geopandas' own bbox filter uses the covering column.
    box = (8.0, 43.0, 11.0, 46.0)
    assert len(gpd.read_parquet(out, bbox=box)) == int(gdf.intersects(shapely.box(*box)).sum()) > 0


def test_footprint_is_the_fetched_square(store, exported):
    """Each row's geometry, projected back to its UTM zone, is the footprint the pipeline fetches."""
    _, cube, table = store
    gdf = gpd.read_parquet(exported[0])
    where = {v: i for i, v in enumerate(table.ids.tolist())}
    checked = 0
    for scale in cube.scales:
        rows = gdf[gdf["scale"] == scale]
        for rid, geom in zip(rows["id"].iloc[::37], rows.geometry.iloc[::37]):
            i = where[rid]
            grid = table.footprint(i, scale, cube.spec.model.image_size, cube.spec.buffer_m).grid
            x, y = lonlat_to_xy(*np.asarray(geom.exterior.coords).T, grid.crs)
            np.testing.assert_allclose([min(x), min(y), max(x), max(y)], grid.bounds, atol=1e-3)
            assert shapely.from_wkb(table.wkb[i]).within(geom) or table.kind[i] == "polygon"
            checked += 1
    assert checked > 20


def test_geometry_sample_mode_writes_the_given_geometry(store, tmp_path):
    path, _, table = store
    out = tmp_path / "s.parquet"
    export_geoparquet(path, out, scale=10, geometry="sample")
    gdf = gpd.read_parquet(out)
    where = {v: i for i, v in enumerate(table.ids.tolist())}
    given = shapely.from_wkb(np.array([table.wkb[where[i]] for i in gdf.id], dtype=object))
    assert shapely.equals(gdf.geometry.values, given).all()
    assert set(gdf.geom_type) == {"Point", "Polygon"}
    assert set(json.loads(pq.ParquetFile(out).metadata.metadata[b"geo"])["columns"]["geometry"]
               ["geometry_types"]) == {"Point", "Polygon"}
    with pytest.raises(SpecError, match="geometry"):
        export_geoparquet(path, tmp_path / "x.parquet", geometry="centroid")


def test_geo_and_emb_metadata_and_zstd(store, exported):
    path, cube, _ = store
    f = pq.ParquetFile(exported[0])
    kv = f.metadata.metadata
    geo = json.loads(kv[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    col = geo["columns"]["geometry"]
    assert col["encoding"] == "WKB" and col["geometry_types"] == ["Polygon"]
    assert col["crs"]["id"] == {"authority": "EPSG", "code": 4326}
    assert col["covering"] == {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}
    gdf = gpd.read_parquet(exported[0])
    np.testing.assert_allclose(col["bbox"], gdf.total_bounds)
    emb = json.loads(kv[b"emb"])
    assert emb["dimensions"] == D and emb["data_type"] == "float32" and emb["type"] == "chip"
    assert emb["model"]["id"] == "test-tiny" and emb["collection"] == "COPERNICUS/S2_SR_HARMONIZED"
    assert emb["temporal_window"] == {"start": "2024-01-01", "end": "2025-01-01", "end_exclusive": True}
    assert emb["quantization"] is None and emb["gsd"] == [10.0, 40.0]
    assert emb["spec_hash"] == cube.attrs["spec_hash"] and emb["geometry"] == "footprint"
    md = f.metadata
    for rg in range(md.num_row_groups):
        for c in range(md.num_columns):
            assert md.row_group(rg).column(c).compression == "ZSTD"
    # Statistics on the covering column (row-group pruning), none on the embeddings.
    names = [md.row_group(0).column(c).path_in_schema for c in range(md.num_columns)]
    stats = md.row_group(0).column(names.index("bbox.xmin")).statistics
    assert stats is not None and stats.has_min_max
    assert md.row_group(0).column(names.index("embedding.list.element")).statistics is None


def test_row_groups_follow_the_target_size(store, tmp_path):
    path, _, _ = store
    assert rows_per_group(4096, 128 * 2**20) == 32768 and rows_per_group(10**6, 10) == 1
    with pytest.raises(SpecError, match="row_group_bytes"):
        rows_per_group(100, 0)
    out = tmp_path / "small.parquet"
    report = export_geoparquet(path, out, row_group_bytes=20_000, read_block_rows=64)
    md = pq.ParquetFile(out).metadata
    sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    whole = pq.read_table(out)
    bytes_per_row = whole.nbytes / whole.num_rows  # uncompressed: one row group holds ~20 kB
    assert abs(report.rows_per_group * bytes_per_row - 20_000) < 0.15 * 20_000
    assert sizes[:-1] == [report.rows_per_group] * (len(sizes) - 1) and 0 < sizes[-1] <= report.rows_per_group
    assert md.num_row_groups == report.row_groups == math.ceil(report.rows / report.rows_per_group) > 5
    # Same rows as one big row group (the default target holds this small file whole).
    big = tmp_path / "big.parquet"
    assert export_geoparquet(path, big).row_groups == 1
    assert pq.read_table(out).equals(pq.read_table(big))


def test_row_groups_are_spatially_compact(store, tmp_path):
    """Hilbert order kept: a row group's bbox covers a small part of the file's extent."""
    path, _, _ = store
    out = tmp_path / "rg.parquet"
    export_geoparquet(path, out, scale=10, row_group_bytes=15_000)
    f = pq.ParquetFile(out)
    total = shapely.box(*json.loads(f.metadata.metadata[b"geo"])["columns"]["geometry"]["bbox"]).area
    areas = []
    for i in range(f.metadata.num_row_groups - 1):
        b = f.read_row_group(i, columns=["bbox"]).column("bbox").combine_chunks()
        xs = [b.field(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax")]
        areas.append(shapely.box(xs[0].min(), xs[1].min(), xs[2].max(), xs[3].max()).area / total)
    assert len(areas) >= 5 and np.mean(areas) < 0.3


def test_duckdb_count_bbox_filter_and_cosine_top_k(store, exported):
    path, _, _ = store
    out = str(exported[0])
    gdf = gpd.read_parquet(out)
    con = duckdb.connect()
    assert con.execute("SELECT count(*) FROM read_parquet(?)", [out]).fetchone()[0] == len(gdf)
    box = (8.0, 43.0, 11.0, 46.0)
    n = con.execute("SELECT count(*) FROM read_parquet(?) WHERE bbox.xmax >= ? AND bbox.xmin <= ? "
                    "AND bbox.ymax >= ? AND bbox.ymin <= ?", [out, box[0], box[2], box[1], box[3]]).fetchone()[0]
    assert n == int(gdf.intersects(shapely.box(*box)).sum()) > 0
    # Top-k cosine similarity in DuckDB is explore.similar's answer.
    cube = open_cube(path)
    query = gdf[gdf["scale"] == 40.0].id.iloc[17]
    want = similar(cube, query, k=5, scale=40)
    qvec = cube.embedding.sel(sample=query, scale=40.0).values.astype(np.float32).tolist()
    got = con.execute(f"SELECT id, array_cosine_similarity(embedding::FLOAT[{D}], ?::FLOAT[{D}]) AS sim "
                      "FROM read_parquet(?) WHERE scale = 40 AND id <> ? ORDER BY sim DESC LIMIT 5",
                      [qvec, out, query]).fetchall()
    assert [g[0] for g in got] == want.index.tolist()
    np.testing.assert_allclose([g[1] for g in got], want.similarity.to_numpy(), rtol=1e-5)


def test_integer_ids_stay_integers(tmp_path):
    path = tmp_path / "i.zarr"
    make_cube(path, sample_gdf(100, seed=3, int_ids=True), dim=8, scales=(20.0,), chunk=16)
    out = tmp_path / "i.parquet"
    export_geoparquet(path, out)
    t = pq.read_table(out)
    assert str(t.schema.field("id").type) == "int64"
    assert set(t.column("id").to_pylist()) <= set(range(1000, 1100))


def test_unknown_scale_and_not_a_cube(store, tmp_path):
    path, _, _ = store
    with pytest.raises(SpecError, match="one of the store's scales: 10, 40"):
        export_geoparquet(path, tmp_path / "x.parquet", scale=20)
    with pytest.raises(CubeError, match="no cube"):
        export_geoparquet(tmp_path / "missing.zarr", tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_int8_cube_exports_int8_with_its_scale_or_dequantised(tmp_path):
    path = tmp_path / "q.zarr"
    make_cube(path, sample_gdf(150, seed=5), dim=16, scales=(10.0,), chunk=32)
    values = quantise_int8(path)
    out = tmp_path / "q.parquet"
    export_geoparquet(path, out)
    t = pq.read_table(out)
    assert str(t.schema.field("embedding").type) == "fixed_size_list<element: int8>[16]"
    emb = json.loads(pq.ParquetFile(out).metadata.metadata[b"emb"])
    assert emb["data_type"] == "int8"
    q = emb["quantization"]
    assert (q["method"], q["original_dtype"], q["scale"], q["offset"]) == ("linear", "float32", 0.03, 0.1)
    deq = tmp_path / "deq.parquet"
    export_geoparquet(path, deq, dequantize=True)
    t2 = pq.read_table(deq)
    assert str(t2.schema.field("embedding").type) == "fixed_size_list<element: float>[16]"
    assert json.loads(pq.ParquetFile(deq).metadata.metadata[b"emb"])["quantization"] is None
    stored = np.stack(t.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    np.testing.assert_allclose(np.stack(t2.column("embedding").to_numpy(zero_copy_only=False)),
                               stored * np.float32(0.03) + np.float32(0.1), rtol=1e-6)
    ok = values["embedding"][:, 0][np.isfinite(values["embedding"][:, 0, 0])]  # cube order = row order
    np.testing.assert_allclose(np.stack(t2.column("embedding").to_numpy(zero_copy_only=False)), ok,
                               rtol=1e-5, atol=1e-6)


def test_int8_with_per_cell_scale_writes_embedding_scale(tmp_path):
    path = tmp_path / "qc.zarr"
    make_cube(path, sample_gdf(80, seed=6), dim=8, scales=(10.0,), chunk=16)
    values = quantise_int8(path, per_cell=True)
    out = tmp_path / "qc.parquet"
    export_geoparquet(path, out)
    t = pq.read_table(out)
    q = np.stack(t.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    f = t.column("embedding_scale").to_numpy()
    ok = values["embedding"][:, 0][np.isfinite(values["embedding"][:, 0, 0])]
    np.testing.assert_allclose(q * f[:, None], ok, rtol=1e-6)
    assert json.loads(pq.ParquetFile(out).metadata.metadata[b"emb"])["quantization"]["scale_array"] == "embedding_scale"
    export_geoparquet(path, tmp_path / "qd.parquet", dequantize=True)
    t2 = pq.read_table(tmp_path / "qd.parquet")
    assert "embedding_scale" not in t2.schema.names
    np.testing.assert_allclose(np.stack(t2.column("embedding").to_numpy(zero_copy_only=False)), ok, rtol=1e-6)


def test_int8_without_quantization_attribute_is_refused(tmp_path):
    import zarr

    path = tmp_path / "bad.zarr"
    make_cube(path, sample_gdf(40, seed=7), dim=8, scales=(10.0,), chunk=16)
    quantise_int8(path)
    del zarr.open_group(str(path), mode="r+", zarr_format=3).attrs["geoemb:quantization"]
    with pytest.raises(CubeError, match="int8 but cannot be dequantised: expected a 'geoemb:quantization'"):
        export_geoparquet(path, tmp_path / "bad.parquet")
    assert not (tmp_path / "bad.parquet").exists()


def test_tiling_store_exports_its_sample_cubes_per_scale(tmp_path):
    path = tmp_path / "t.zarr"
    tiling = make_tiling(path)
    out = tmp_path / "t40.parquet"
    report = export_geoparquet(path, out, scale=40)
    gdf = gpd.read_parquet(out)
    assert report.scales == [40.0] and set(gdf["scale"]) == {40.0} and len(gdf) == report.cells["ok"]
    assert all(i.split("_")[1] == "40m" for i in gdf.id)
    # A tile's footprint is the tile: the geometry the tiling stored for it.
    table = tiling.tables[1]
    where = {v: i for i, v in enumerate(table.ids().tolist())}
    rows = np.array([where[i] for i in gdf.id])
    tiles = shapely.from_wkb(np.array(table.slice(0, len(table)).wkb, dtype=object)[rows])
    assert shapely.equals(gdf.geometry.values, tiles).all()
    both = export_geoparquet(path, tmp_path / "t.parquet")
    counts = gpd.read_parquet(tmp_path / "t.parquet")["scale"].value_counts().to_dict()
    assert both.scales == [10.0, 40.0] and counts[40.0] == report.rows and counts[10.0] == both.rows - report.rows > 0
    with pytest.raises(SpecError, match="10, 40"):
        export_geoparquet(path, tmp_path / "x.parquet", scale=20)


def test_antimeridian_footprints_split_within_range():
    fp = stored_footprints(["east", "west"], [shapely.Point(179.9995, 10.0).wkb_hex,
                                              shapely.Point(-179.9995, -10.0).wkb_hex],
                           scale_m=10.0, image_size=224)
    for g in fp:
        assert g.geom_type == "MultiPolygon" and len(g.geoms) == 2
        b = shapely.bounds(g)
        assert b[0] == -180.0 and b[2] == 180.0
        assert 0.9 < sum(p.area for p in g.geoms) / (0.0204 * 0.0203) < 1.1  # ~2.24 km square
    inland = stored_footprints(["a"], [shapely.Point(10.0, 45.0).wkb_hex], scale_m=10.0, image_size=224)[0]
    assert inland.geom_type == "Polygon" and inland.exterior.is_ccw


def test_cli_export(store, tmp_path, capsys):
    path, _, _ = store
    out = tmp_path / "cli.parquet"
    assert main(["export", str(path), str(out), "--scale", "40", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == len(gpd.read_parquet(out)) and report["scales"] == [40.0]
    assert main(["export", str(path), str(tmp_path / "x.parquet"), "--scale", "7"]) == 2
    assert "scale=7.0 is invalid: expected one of the store's scales: 10, 40" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["rsembed_dask.store.metadata", "rsembed_dask.store.footprints", "rsembed_dask.store.geoparquet"])
def test_module_doctests(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0
