"""tile_aoi: snapped, non-overlapping tiles per scale, seams between UTM zones, lazy tables, zone by zone."""

import hashlib

import geopandas as gpd
import numpy as np
import pytest
import shapely

from rsembed_dask.errors import SpecError
from rsembed_dask.geo.grid import lonlat_to_xy, utm_epsg, xy_to_lonlat
from rsembed_dask.sampling.tiling import DEFAULT_BLOCK, table_order, tile_aoi, tile_zones


def _coverage(tables_by_zone, tile_m, lon, lat):
    """Number of tiles (over all zones) containing each point."""
    count = np.zeros(len(lon), int)
    for epsg, keys in tables_by_zone.items():
        x, y = lonlat_to_xy(lon, lat, f"EPSG:{epsg}")
        row, col = np.floor(np.asarray(y) / tile_m).astype(int), np.floor(np.asarray(x) / tile_m).astype(int)
        count += np.array([(r, c) in keys for r, c in zip(row.tolist(), col.tolist())])
    return count


def test_tiles_are_snapped_square_footprints_that_intersect_the_aoi():
    aoi = shapely.Polygon([(10.0, 45.0), (10.4, 45.02), (10.5, 45.3), (10.1, 45.25)])
    tiling = tile_aoi(gpd.GeoDataFrame(geometry=[aoi], crs="EPSG:4326"), scales=[10, 40])
    assert tiling.scales == (10.0, 40.0) and len(tiling) == sum(len(t) for t in tiling.tables)
    for scale, table in zip(tiling.scales, tiling.tables):
        keys = set(zip(table.epsg.tolist(), table.row.tolist(), table.col.tolist()))
        assert len(keys) == len(table)  # no tile twice
        sub = table.slice(0, len(table))
        assert len(set(sub.ids.tolist())) == len(table)
        polys = shapely.from_wkb(sub.wkb)
        assert shapely.intersects(polys, aoi).all()
        for i in range(0, len(table), 7):
            fp = sub.footprint(i, scale, 224)
            assert fp.grid.shape == (224, 224) and fp.roi == (0.0, 0.0, 1.0, 1.0)
            assert fp.grid.x0 % scale == 0 and fp.grid.y0 % scale == 0
            assert fp.grid == table.lattice(int(table.epsg[i])).tile_grid(int(table.row[i]), int(table.col[i]))
    # 40 m tiles are 4x the side of 10 m ones: about 16x fewer
    assert 10 < len(tiling.tables[0]) / len(tiling.tables[1]) < 25


def test_no_gaps_or_double_coverage_farther_than_one_footprint_from_zone_seams():
    # Across the 12E zone seam (32/33) and the equator (N/S hemispheres) at once.
    aoi = shapely.box(11.4, -0.4, 12.6, 0.4)
    tiling = tile_aoi(aoi, scales=[40])
    table = tiling.tables[0]
    assert set(table.zones()) == {32632, 32633, 32732, 32733}
    by_zone = {}
    for e, r, c in zip(table.epsg.tolist(), table.row.tolist(), table.col.tolist()):
        by_zone.setdefault(e, set()).add((r, c))
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(11.4, 12.6, 4000), rng.uniform(-0.4, 0.4, 4000)
    count = _coverage(by_zone, table.tile_m, lon, lat)
    metres_to_seam = np.minimum(np.abs(lon - 12.0) * 111_320 * np.cos(np.radians(lat)), np.abs(lat) * 110_574)
    far = metres_to_seam > table.tile_m  # one footprint
    assert far.sum() > 2000
    assert (count[far] == 1).all()
    assert (count <= 2).all()


def test_tiles_come_in_blocks_and_chunks_generate_the_table_lazily():
    tiling = tile_aoi((10.0, 45.0, 10.6, 45.4), scales=[10])
    table = tiling.tables[0]
    blocks = list(table.blocks())
    assert blocks[0][3] == 0 and blocks[-1][4] == len(table)
    assert all(a[4] == b[3] for a, b in zip(blocks, blocks[1:]))  # contiguous runs
    seen = set()
    for epsg, brow, bcol, start, stop in blocks:
        assert (epsg, brow, bcol) not in seen and stop - start <= DEFAULT_BLOCK ** 2
        seen.add((epsg, brow, bcol))
        assert (table.row[start:stop] // DEFAULT_BLOCK == brow).all()
        assert (table.col[start:stop] // DEFAULT_BLOCK == bcol).all()
    full = [b for b in blocks if b[4] - b[3] == DEFAULT_BLOCK ** 2]
    assert full, "an AOI of this size has interior blocks"
    whole = table.slice(0, len(table))
    parts = list(table.chunks(100))
    assert [s for s, _ in parts] == list(range(0, len(table), 100))
    assert np.concatenate([p.ids for _, p in parts]).tolist() == whole.ids.tolist()
    np.testing.assert_array_equal(np.concatenate([p.lon for _, p in parts]), whole.lon)
    gdf = table.to_geodataframe(0, 10)
    assert len(gdf) == 10 and gdf.crs.to_epsg() == 4326 and gdf.index.name == "tile_id"


def test_a_europe_sized_aoi_is_tiled_as_integers_without_a_geodataframe():
    tiling = tile_aoi((-10.0, 35.0, 40.0, 70.0), scales=[10, 40])
    t10 = tiling.tables[0]
    assert len(t10) > 2_000_000 and len(t10.zones()) == 9
    held = t10.epsg.nbytes + t10.row.nbytes + t10.col.nbytes
    assert held == 20 * len(t10)  # 20 bytes a tile; geometries are made per chunk
    middle = len(t10) // 2
    chunk = t10.slice(middle, middle + 64)
    assert len(chunk) == 64 and (35 <= chunk.lat).all() and (chunk.lat <= 70.5).all()


@pytest.mark.parametrize("aoi, kwargs, field", [
    (shapely.LineString([(0, 0), (1, 1)]), {}, "aoi"),
    (shapely.box(0, 84.5, 1, 85), {}, "aoi"),
    ((1.0, 1.0, 0.0, 2.0), {}, "aoi"),
    (gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)]), {}, "aoi.crs"),
    (shapely.box(0, 0, 0.1, 0.1), {"scales": [10, -5]}, "scales"),
    (shapely.box(0, 0, 0.1, 0.1), {"scales": [10, 10]}, "scales"),
    (shapely.box(0, 0, 0.1, 0.1), {"image_size": 3}, "image_size"),
    (shapely.box(0, 0, 0.1, 0.1), {"block": 0}, "block"),
    ("europe", {}, "aoi"),
])
def test_bad_tiling_input_names_the_field(aoi, kwargs, field):
    with pytest.raises(SpecError) as err:
        tile_aoi(aoi, **kwargs)
    assert err.value.field == field


def test_complete_blocks_come_first_so_each_is_exactly_one_default_work_unit():
    from rsembed_dask.sampling import work_units

    table = tile_aoi((10.0, 45.0, 10.9, 45.5), scales=[10]).tables[0]
    blocks = list(table.blocks())
    sizes = [stop - start for *_, start, stop in blocks]
    n_full = sum(s == DEFAULT_BLOCK ** 2 for s in sizes)
    assert 0 < n_full < len(blocks)  # a box AOI has complete blocks and incomplete edges
    assert all(s == DEFAULT_BLOCK ** 2 for s in sizes[:n_full])  # complete ones first
    units = work_units(len(table), [10], DEFAULT_BLOCK ** 2)
    for unit, (_, _, _, start, stop) in zip(units[:n_full], blocks[:n_full]):
        assert (unit.start, unit.stop) == (start, stop)


# The AOI a user drew across the antimeridian: 2° x 1° from 179°E to 179°W.
RING = shapely.Polygon([(179, 0), (-179, 0), (-179, 1), (179, 1)])
SPLIT = shapely.MultiPolygon([shapely.box(179, 0, 180, 1), shapely.box(-180, 0, -179, 1)])


@pytest.mark.parametrize("aoi", [RING, gpd.GeoDataFrame(geometry=[RING], crs="EPSG:4326"), (179.0, 0.0, -179.0, 1.0),
                                 shapely.box(179, 0, 181, 1)],
                         ids=["ring", "geodataframe", "bbox-west-gt-east", "lon-beyond-180"])
def test_an_aoi_across_the_antimeridian_is_split_there_not_a_band_around_the_world(aoi, caplog):
    tiling = tile_aoi(aoi, scales=[10, 40])
    reference = tile_aoi(SPLIT, scales=[10, 40])  # split by hand: what the user meant
    for table, ref in zip(tiling.tables, reference.tables):
        assert set(table.zones()) == {32660, 32601}  # UTM zones 60 and 1, not 60 zones
        assert len(table) == len(ref) and 300 < len(table) < 6000
        assert (table.ids() == ref.ids()).all()
        bounds = table.to_geodataframe().geometry.bounds
        assert ((bounds.maxx - bounds.minx) < 1).all()  # no tile footprint wraps around the world
    if aoi is RING:
        assert "antimeridian" in caplog.text  # the user is told how the AOI was read


def test_a_band_across_most_of_the_world_is_not_taken_for_an_antimeridian_crossing():
    from rsembed_dask.geo.aoi import aoi_bounds, aoi_geometry

    wide = shapely.segmentize(shapely.box(-170, 0, 170, 0.01), 90)  # no edge longer than 180°: as drawn
    assert aoi_geometry(wide).equals(wide)
    assert aoi_geometry((-170.0, 0.0, 170.0, 0.01)).equals(wide)  # a bbox means what it says
    assert aoi_bounds(aoi_geometry(RING)) == (179.0, 0.0, -179.0, 1.0)  # west > east, as GeoJSON bboxes
    with pytest.raises(SpecError, match="min < max"):
        tile_aoi((1.0, 0.0, 0.0, 1.0))  # swapped, not 359° the other way round


def test_the_order_of_scales_does_not_matter():
    a, b = tile_aoi(SPLIT, scales=[40, 10]), tile_aoi(SPLIT, scales=[10, 40])
    assert a.scales == b.scales == (10.0, 40.0) and a.token() == b.token()


def test_zone_by_zone_tiles_are_the_pieces_of_the_table():
    aoi = (5.0, -0.6, 13.5, 0.5)  # three UTM zones on both sides of the equator
    zoned, tiling = tile_zones(aoi, scales=[40, 20]), tile_aoi(aoi, scales=[20, 40])
    assert (zoned.scales, zoned.aoi_wkb) == (tiling.scales, tiling.aoi_wkb)
    assert [e for e, _ in zoned.zones] == [32631, 32731, 32632, 32732, 32633, 32733]
    b2 = DEFAULT_BLOCK ** 2
    for scale, table in zip(zoned.scales, tiling.tables):
        parts = list(zoned.zone_tiles(scale))
        assert [p.table.zones() for p in parts] == [[e] for e, _ in zoned.zones]
        pieces = list(table_order(parts))  # every zone's complete blocks, then the incomplete ones
        assert len(pieces) == 2 * len(parts)
        for name in ("epsg", "row", "col"):
            np.testing.assert_array_equal(np.concatenate([getattr(p, name) for p in pieces]), getattr(table, name))
        for part in parts:
            full = [stop - start for *_, start, stop in part.full().blocks()]
            partial = [stop - start for *_, start, stop in part.partial().blocks()]
            assert set(full) <= {b2} and max(partial, default=0) < b2
            assert part.partial().row.base is None  # a copy: the zone's table is not kept alive
        if scale == 20.0:  # (at 40 m the AOI holds no complete block)
            assert sum(p.n_full for p in parts) > b2 and sum(len(p.partial()) for p in parts) > b2


def test_the_world_tiles_as_before_and_every_tile_lies_in_the_zone_of_its_centre():
    # Pinned from the tiler before zones were tiled block-wise (every tile's centre projected
    # back): the same tiles in the same order.
    table = tile_aoi((-180.0, -80.0, 180.0, 84.0), scales=[320]).tables[0]
    h = hashlib.sha256()
    for a in (table.epsg.astype(np.int64), table.row, table.col):
        h.update(np.ascontiguousarray(a).tobytes())
    assert (len(table), len(table.zones())) == (99540, 120)
    assert h.hexdigest() == "e783ce3324b9aaabecb9ce11b0d87388ee14420d789a4fc85cba36dfedbba824"
    # The zone rule on every tile's centre (the tiler applies it only to blocks near a zone's edges).
    t = table.tile_m
    for code in table.zones():
        m = table.epsg == code
        lon, lat = xy_to_lonlat((table.col[m] + 0.5) * t, (table.row[m] + 0.5) * t, f"EPSG:{code}")
        assert (utm_epsg(lon, lat, check=False) == code).all(), code
