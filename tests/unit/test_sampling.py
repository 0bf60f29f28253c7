"""Tests of rsembed_dask.sampling.samples: sample tables, footprints, Hilbert order, work units."""

from __future__ import annotations

import logging
import math
import pickle

import geopandas as gpd
import numpy as np
import pytest
import shapely
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box

from rsembed_dask.errors import SpecError
from rsembed_dask.geo.grid import lonlat_to_xy
from rsembed_dask.geo.keys import geohash_encode, hilbert_order
from rsembed_dask.sampling import Footprint, SampleTable, WorkUnit, build_sample_table, work_units


def _points(lonlats, ids=None, crs="EPSG:4326"):
    return gpd.GeoDataFrame(geometry=[Point(*p) for p in lonlats], index=ids, crs=crs)


def _utm_box_gdf(crs="EPSG:2154"):
    """Two boxes given in a projected CRS, with their EPSG:4326 versions."""
    ll = [box(2.30, 48.80, 2.32, 48.83), box(4.80, 45.70, 4.85, 45.72)]
    gdf4326 = gpd.GeoDataFrame({"name": ["paris", "lyon"]}, geometry=ll, crs="EPSG:4326")
    return gdf4326.to_crs(crs), gdf4326


def test_points_epsg4326_columns():
    gdf = _points([(3.0, 45.0), (3.01, 45.01), (-70.0, -33.0)], ids=["a", "b", "c"])
    t = build_sample_table(gdf)
    assert len(t) == 3
    assert sorted(t.ids.tolist()) == ["a", "b", "c"]
    i = t.ids.tolist().index("c")
    assert t.lon[i] == -70.0 and t.lat[i] == -33.0
    assert t.epsg[i] == 32719 and t.epsg.dtype == np.int32
    assert set(t.kind) == {"point"}
    assert np.all(t.half_w == 0) and np.all(t.half_h == 0)
    x, y = lonlat_to_xy(-70.0, -33.0, "EPSG:32719")
    assert t.x[i] == pytest.approx(x) and t.y[i] == pytest.approx(y)
    assert all(len(g) == 9 for g in t.geohash)
    geoms = shapely.from_wkb(t.wkb)
    assert shapely.equals(geoms[i], Point(-70.0, -33.0))
    assert t.skipped.empty and list(t.skipped.columns) == ["id", "reason"]


def test_geohash_reference_values():
    assert geohash_encode(-5.6, 42.6, 5).tolist() == ["ezs42"]
    assert geohash_encode(10.40744, 57.64911, 11).tolist() == ["u4pruydqqvj"]
    assert geohash_encode([0.0, -180.0], [0.0, -90.0], 9).tolist() == ["s00000000", "000000000"]


@pytest.mark.parametrize("crs", ["EPSG:3857", "EPSG:2154"])
def test_polygons_in_projected_crs(crs):
    gdf, gdf4326 = _utm_box_gdf(crs)
    t = build_sample_table(gdf)
    assert len(t) == 2 and set(t.kind) == {"polygon"}
    assert sorted(t.ids.tolist()) == [0, 1]
    assert all(isinstance(i, int) for i in t.ids)
    for i in range(2):
        orig = gdf4326.geometry.iloc[t.ids[i]]
        assert t.epsg[i] == 32631
        # centroid close to the lon/lat centroid; geometry round-trips to EPSG:4326
        assert t.lon[i] == pytest.approx(orig.centroid.x, abs=1e-4)
        assert t.lat[i] == pytest.approx(orig.centroid.y, abs=1e-4)
        assert shapely.from_wkb(t.wkb[i]).buffer(0).symmetric_difference(orig).area < 1e-8
        # UTM extents of a box 0.02 deg x 0.03 deg (Paris) / 0.05 x 0.02 (Lyon)
        assert 500 < t.half_w[i] < 2500 and 500 < t.half_h[i] < 2500


def test_multipolygon_and_ids_from_column():
    mp = MultiPolygon([box(3.0, 45.0, 3.01, 45.01), box(3.05, 45.0, 3.06, 45.01)])
    gdf = gpd.GeoDataFrame({"sid": ["m", "p"]}, geometry=[mp, Point(3.2, 45.2)], crs="EPSG:4326")
    t = build_sample_table(gdf, id_column="sid")
    assert sorted(t.ids.tolist()) == ["m", "p"]
    i = t.ids.tolist().index("m")
    assert t.kind[i] == "polygon"
    assert t.lon[i] == pytest.approx(3.03, abs=1e-4)  # centroid between the two parts
    assert 2 * t.half_w[i] == pytest.approx(60 * 78.8, rel=0.02)  # 0.06 deg at 45N
    g = t.to_geodataframe()
    assert g.crs.to_epsg() == 4326 and g.index.name == "sid"
    assert g.loc["m"].geometry.geom_type == "MultiPolygon"


def test_utm_zone_boundary():
    t = build_sample_table(_points([(5.999, 45.0), (6.001, 45.0)], ids=["w", "e"]))
    zones = dict(zip(t.ids.tolist(), t.epsg.tolist()))
    assert zones == {"w": 32631, "e": 32632}
    for i in range(2):
        fp = t.footprint(i, 10, 224)
        assert fp.grid.crs == f"EPSG:{t.epsg[i]}"


def test_picklable_take_slice_tokenize():
    from dask.base import tokenize

    t = build_sample_table(_points([(3 + k / 100, 45.0) for k in range(10)]))
    t2 = pickle.loads(pickle.dumps(t))
    assert tokenize(t) == tokenize(t2)
    assert len(pickle.dumps(t)) < 5000
    s = t.slice(2, 5)
    assert isinstance(s, SampleTable) and len(s) == 3
    assert s.ids.tolist() == t.ids[2:5].tolist()
    tk = t.take(np.array([9, 0]))
    assert tk.ids.tolist() == [t.ids[9], t.ids[0]]
    assert tokenize(s) != tokenize(t)


@pytest.mark.parametrize("scale", [10, 20, 40])
def test_point_footprint_default_buffer(scale):
    t = build_sample_table(_points([(3.0, 45.0)]))
    fp = t.footprint(0, scale, 224)
    assert isinstance(fp, Footprint)
    assert fp.grid.shape == (224, 224) and fp.grid.scale_m == scale
    assert fp.grid.x0 % scale == 0 and fp.grid.y0 % scale == 0
    assert fp.roi == (0.0, 0.0, 1.0, 1.0)
    cx, cy = fp.grid.center_xy
    assert abs(cx - t.x[0]) <= scale and abs(cy - t.y[0]) <= scale
    assert t.footprint(0, scale, 224, buffer_m=1000).grid.width == round(2000 / scale)


@pytest.mark.parametrize("scale", [10, 20, 40])
def test_polygon_footprint_covers_bbox(scale):
    gdf, _ = _utm_box_gdf("EPSG:2154")
    t = build_sample_table(gdf)
    for i in range(len(t)):
        fp = t.footprint(i, scale, 224)
        g = fp.grid
        assert g.width == g.height and g.crs == f"EPSG:{t.epsg[i]}"
        assert g.x0 % scale == 0 and g.y0 % scale == 0
        side = 2 * max(t.half_w[i], t.half_h[i])
        assert math.ceil(side / scale) <= g.width <= math.ceil(side / scale) + 1
        left, bottom, right, top = g.bounds
        minx, maxx = t.box_x[i] - t.half_w[i], t.box_x[i] + t.half_w[i]
        miny, maxy = t.box_y[i] - t.half_h[i], t.box_y[i] + t.half_h[i]
        assert left <= minx and right >= maxx and bottom <= miny and top >= maxy
        r_top, r_left, r_bottom, r_right = fp.roi
        extent = g.width * scale
        assert r_left == pytest.approx((minx - left) / extent)
        assert r_right == pytest.approx((maxx - left) / extent)
        assert r_top == pytest.approx((top - maxy) / extent)
        assert r_bottom == pytest.approx((top - miny) / extent)
        assert 0 <= r_top < r_bottom <= 1 and 0 <= r_left < r_right <= 1
        # the long side fills (almost) the whole square
        assert max(r_bottom - r_top, r_right - r_left) >= 1 - 2.0 / g.width


def test_tiny_polygon_footprint_is_at_least_one_pixel():
    t = build_sample_table(gpd.GeoDataFrame(geometry=[box(3.0, 45.0, 3.00001, 45.00001)],
                                            crs="EPSG:4326"))
    fp = t.footprint(0, 40, 224)
    assert 1 <= fp.grid.width <= 2


BAD_ROWS = {
    "none": (None, "geometry", "missing geometry"),
    "empty": (Polygon(), "geometry", "empty geometry"),
    "line": (LineString([(3, 45), (3.1, 45.1)]), "geometry", "unsupported geometry type"),
    "bowtie": (Polygon([(3, 45), (3.1, 45.1), (3.1, 45), (3, 45.1)]), "geometry", "invalid geometry"),
    "nan": (Point(np.nan, 45.0), "geometry", "NaN or infinite"),
    "north": (Point(3.0, 85.0), "lat", "latitude outside"),
    "south": (Point(3.0, -81.0), "lat", "latitude outside"),
    "east": (Point(181.0, 10.0), "lon", "longitude outside"),
}


@pytest.mark.parametrize("name", sorted(BAD_ROWS))
def test_bad_row_raise_and_skip(name, caplog):
    geom, field, reason = BAD_ROWS[name]
    gdf = gpd.GeoDataFrame(geometry=[Point(3.0, 45.0), geom], index=["good", name], crs="EPSG:4326")
    with pytest.raises(SpecError) as ei:
        build_sample_table(gdf)
    assert ei.value.field == field
    assert name in str(ei.value) and reason in str(ei.value)
    with caplog.at_level(logging.WARNING, logger="rsembed_dask.sampling.samples"):
        t = build_sample_table(gdf, on_invalid="skip")
    assert t.ids.tolist() == ["good"]
    assert t.skipped["id"].tolist() == [name]
    assert reason in t.skipped["reason"].iloc[0]
    assert "skipped 1 of 2" in caplog.text


def test_duplicate_ids():
    gdf = _points([(3.0, 45.0), (3.1, 45.0), (3.2, 45.0)], ids=["a", "b", "a"])
    with pytest.raises(SpecError) as ei:
        build_sample_table(gdf)
    assert ei.value.field == "id" and "'a'" in str(ei.value) and "unique" in str(ei.value)
    t = build_sample_table(gdf, on_invalid="skip")
    assert sorted(t.ids.tolist()) == ["a", "b"]
    assert t.lon[t.ids.tolist().index("a")] == 3.0  # first occurrence kept
    assert t.skipped["reason"].iloc[0].startswith("duplicate id")


def test_missing_ids_in_column():
    gdf = gpd.GeoDataFrame({"sid": ["a", None]}, geometry=[Point(3, 45), Point(3.1, 45)],
                           crs="EPSG:4326")
    with pytest.raises(SpecError) as ei:
        build_sample_table(gdf, id_column="sid")
    assert ei.value.field == "id" and "missing id" in str(ei.value)


def test_raise_lists_at_most_five_ids():
    gdf = _points([(3.0, 95.0)] * 8 + [(3.0, 45.0)], ids=[f"r{k}" for k in range(9)])
    with pytest.raises(SpecError) as ei:
        build_sample_table(gdf)
    msg = str(ei.value)
    assert "r4" in msg and "r5" not in msg and "3 more" in msg and "8 rows" in msg


def test_whole_table_problems():
    with pytest.raises(SpecError) as ei:
        build_sample_table(gpd.GeoDataFrame(geometry=[], crs="EPSG:4326"))
    assert ei.value.field == "gdf"
    with pytest.raises(SpecError) as ei:
        build_sample_table(gpd.GeoDataFrame(geometry=[Point(3, 45)]))
    assert ei.value.field == "crs"
    with pytest.raises(SpecError) as ei:
        build_sample_table(_points([(3, 45)]), id_column="nope")
    assert ei.value.field == "id_column" and "nope" in str(ei.value)
    with pytest.raises(SpecError) as ei:
        build_sample_table(_points([(3, 45)]), on_invalid="ignore")
    assert ei.value.field == "on_invalid"
    with pytest.raises(SpecError) as ei:  # nothing left after skipping
        build_sample_table(_points([(3, 95), (3, 96)]), on_invalid="skip")
    assert ei.value.field == "gdf" and "at least one valid row" in str(ei.value)


def _mean_chunk_bbox_area(lon, lat, chunk):
    areas = []
    for s in range(0, len(lon), chunk):
        x, y = lon[s:s + chunk], lat[s:s + chunk]
        areas.append((x.max() - x.min()) * (y.max() - y.min()))
    return float(np.mean(areas))


def test_hilbert_order_is_compact():
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(-10, 30, 4096), rng.uniform(35, 60, 4096)
    perm = hilbert_order(lon, lat)
    assert sorted(perm.tolist()) == list(range(4096))
    hil = _mean_chunk_bbox_area(lon[perm], lat[perm], 64)
    rnd = _mean_chunk_bbox_area(lon, lat, 64)
    assert hil < rnd / 20


def test_table_is_in_hilbert_order():
    rng = np.random.default_rng(1)
    pts = list(zip(rng.uniform(0, 10, 300), rng.uniform(40, 50, 300)))
    t = build_sample_table(_points(pts))
    assert np.array_equal(hilbert_order(t.lon, t.lat), np.arange(300))


def test_work_units():
    units = work_units(10, (10.0, 20.0, 40.0), chunk_size=4)
    assert [u.key for u in units[:4]] == ["unit-0-0", "unit-0-1", "unit-0-2", "unit-1-0"]
    assert len(units) == 9
    assert [(u.start, u.stop) for u in units[::3]] == [(0, 4), (4, 8), (8, 10)]
    assert units[5] == WorkUnit(1, 4, 8, 2, 40.0)
    from dask.base import tokenize

    assert tokenize(units[0]) == tokenize(WorkUnit(0, 0, 4, 0, 10.0)) != tokenize(units[1])
    assert work_units(0, [10], 4) == []
    with pytest.raises(SpecError):
        work_units(10, [10], 0)
    with pytest.raises(SpecError):
        work_units(10, [], 4)
