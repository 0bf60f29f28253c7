"""Estimating a tiling campaign (planning, request_count, store_size, latency, aoi): counts, the
coalescing shortcut against plan_requests, bytes, cube size, the time formula, the CLI, and latency
measured on the emulator."""

import json

import geopandas as gpd
import numpy as np
import pytest
import shapely
import zarr

from rsembed_dask.geo.aoi import read_aoi
from rsembed_dask.cli.commands import main
from rsembed_dask.errors import ModelError, SpecError
from rsembed_dask.plan.latency import ASSUMED_LATENCY_BASE_S, Latency, assumed_latency, fetch_time
from rsembed_dask.plan.estimate import estimate_campaign, plan_scale, resolve_embed_dim
from rsembed_dask.plan.report import format_plan
from rsembed_dask.plan.requests import RequestTally, unit_requests
from rsembed_dask.providers.coalesce import MAX_WASTE, plan_requests
from rsembed_dask.providers.limits import BYTES_PER_SAMPLE, EE_CONCURRENCY, EE_REQUESTS_PER_S, REQUEST_BYTE_LIMIT
from rsembed_dask.sampling import work_units
from rsembed_dask.sampling.units import default_unit_size
from rsembed_dask.specs import CampaignSpec, ModelSpec, TemporalSpec
from rsembed_dask.store.size import TileCounts
from rsembed_dask.store.tiling import create_or_open_tiling, scale_name
from rsembed_dask.sampling.tiling import tile_aoi, tile_zones

WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")
# A small AOI astride the 12E seam between UTM zones 32 and 33.
SEAM = shapely.Polygon([(11.93, 45.0), (12.08, 45.01), (12.1, 45.09), (11.95, 45.1)])
BBOX = "11.9,45.0,12.1,45.1"
# Three UTM zones (31-33) on both sides of the equator: six zones' tables.
MULTI = (5.0, -0.6, 13.5, 0.5)


def _reference(table, chunk, n_bands=3, **limits):
    """Per-unit (requests, pixels, largest pixels) from plan_requests on the units' footprints."""
    out = []
    for u in work_units(len(table), (table.scale_m,), chunk):
        grids = [table.lattice(int(e)).tile_grid(int(r), int(c)) for e, r, c in
                 zip(table.epsg[u.start:u.stop], table.row[u.start:u.stop], table.col[u.start:u.stop])]
        plan = plan_requests(grids, n_bands, **limits)
        px = [r.grid.width * r.grid.height for r in plan]
        out.append((len(plan), sum(px), max(px)))
    return np.array(out, np.int64).reshape(-1, 3)


def test_tile_grids_are_the_footprints_fetch_unit_computes():
    table = tile_aoi(SEAM, scales=[40]).tables[0]
    sub = table.slice(0, len(table))
    for i in range(len(table)):
        assert sub.footprint(i, 40.0, 224).grid == table.lattice(int(table.epsg[i])).tile_grid(
            int(table.row[i]), int(table.col[i]))


def test_counts_equal_tile_aoi_per_scale():
    tiling = tile_aoi(SEAM, scales=[10, 20, 40])
    plan = estimate_campaign(tiling, embed_dim=64)
    assert len(plan.scales) == 3 and plan.footprints == len(tiling)
    for sp, table in zip(plan.scales, tiling.tables):
        assert sp.scale_m == table.scale_m and sp.footprints == len(table) == sp.requests_single
        assert sp.work_units == len(work_units(len(table), (table.scale_m,), default_unit_size(table.block)))
        assert sp.zones == len(table.zones()) == 2
        assert sp.blocks == len(list(table.blocks()))
        assert sp.requests_coalesced == _reference(table, default_unit_size(table.block))[:, 0].sum() \
            < sp.requests_single
    # the same AOI as a bbox tuple, a shapely geometry or a Tiling plans the same
    again = estimate_campaign(SEAM, scales=[10, 20, 40], embed_dim=64)
    assert [s.as_dict() for s in again.scales] == [s.as_dict() for s in plan.scales]


#: ScalePlan fields pinned below, and their values for MULTI at 20 and 40 m (D = 64), as the planner
#: gave them when it held every scale's whole tile table (before it planned zone by zone).
PINNED_FIELDS = ("footprints", "zones", "blocks", "work_units", "requests_coalesced", "pixels_coalesced",
                 "largest_request_bytes", "fallback_groups", "sample_cube_bytes", "grids_bytes")
PINNED = {
    64: [(5936, 6, 120, 93, 129, 372155392, 37933056, 9, 3017420, 2042880),
           (1590, 6, 45, 25, 30, 118616064, 33718272, 0, 807604, 768768)],
    50: [(5936, 6, 120, 119, 511, 377474048, 28901376, 69, 3017420, 2042880),
         (1590, 6, 45, 32, 73, 117462016, 28901376, 6, 807604, 768768)],
}


@pytest.mark.parametrize("chunk", [64, 50], ids=["blocks", "units-straddle-zones"])
def test_the_zone_by_zone_estimate_is_the_whole_tables_estimate(chunk):
    seen = []
    streamed = estimate_campaign(MULTI, scales=[40, 20], chunk_size=chunk, embed_dim=64, progress=seen.append)
    whole = estimate_campaign(tile_aoi(MULTI, scales=[20, 40]), chunk_size=chunk, embed_dim=64)
    assert [s.as_dict() for s in streamed.scales] == [s.as_dict() for s in whole.scales]
    assert [tuple(getattr(s, k) for k in PINNED_FIELDS) for s in streamed.scales] == PINNED[chunk]
    assert streamed.notes == whole.notes and streamed.aoi_bounds == whole.aoi_bounds
    # progress: once per zone of each scale, in table order, with the footprints planned so far
    zones = [e for e, _ in tile_zones(MULTI, scales=[20]).zones]
    assert len(zones) == 6
    assert [(p.scale_m, p.epsg) for p in seen] == [(s, e) for s in (20.0, 40.0) for e in zones]
    assert [(p.step, p.steps) for p in seen] == [(k, 12) for k in range(1, 13)]
    assert seen[5].footprints == streamed.scales[0].footprints and seen[-1].footprints == streamed.footprints
    assert all(a.footprints <= b.footprints and a.elapsed_s <= b.elapsed_s for a, b in zip(seen, seen[1:]))


def test_the_request_tally_takes_the_table_in_any_pieces():
    table = tile_aoi(shapely.Point(12.0, 47.0).buffer(1.6), scales=[40]).tables[0]
    whole = unit_requests(table, 17, 3)
    cuts = np.sort(np.random.default_rng(0).choice(np.arange(1, len(table)), 40, replace=False))
    tally = RequestTally(table.scale_m, table.image_size, 17, 3, per_unit=True)
    for start, stop in zip(np.r_[0, 0, cuts], np.r_[0, cuts, len(table)]):  # an empty piece first
        tally.add(table.rows(start, stop))
    tally.finish()
    got = tally.per_unit()
    for name in ("requests", "pixels", "largest"):
        np.testing.assert_array_equal(getattr(got, name), getattr(whole, name))
    assert got.fallback_groups == whole.fallback_groups == tally.fallback_groups > 0
    assert (tally.units, tally.requests, tally.pixels, tally.largest) == (
        len(whole.requests), whole.requests.sum(), whole.pixels.sum(), whole.largest.max())
    with pytest.raises(SpecError, match="max_waste"):
        RequestTally(40.0, 224, 64, 3, max_waste=0.5)


def test_tile_counts_add_up_over_zones():
    zoned = tile_zones(MULTI, scales=[20])
    parts = [TileCounts.of(p.table) for p in zoned.zone_tiles(20.0)]
    total = parts[0]
    for part in parts[1:]:
        total += part
    assert total == TileCounts.of(zoned.table(20.0)) and total.zones == 6


def test_cli_plan_shows_progress_per_zone_on_stderr(capsys):
    assert main(["plan", "5,-0.6,13.5,0.5", "--scales", "20,40", "--embed-dim", "8"]) == 0
    lines = capsys.readouterr().err.splitlines()  # not a terminal: one line each
    assert len(lines) == 12
    assert lines[0].startswith("plan: zone 32631 at 20 m (1/12), ") and lines[0].endswith(" s")
    assert lines[-1].startswith("plan: zone 32733 at 40 m (12/12), 7,526 footprints so far, ")
    assert main(["plan", "5,-0.6,13.5,0.5", "--scales", "20,40", "--embed-dim", "8", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("aoi, scale, chunk, limits", [
    # irregular polygons (many partial blocks) across seams, chunk sizes that are and are not blocks
    (shapely.Point(12.0, 47.0).buffer(1.6), 20, 64, {}),
    (shapely.Point(12.0, 47.0).buffer(1.6), 40, 17, {}),
    (shapely.Polygon([(-1, 40), (9, 41), (4, 44), (8.5, 50), (-1, 48)]), 40, 100, {}),
    (shapely.Point(3.0, 52.0).buffer(1.5), 10, 256, {}),
    # tighter limits than Earth Engine's, so that plan_requests splits a lot
    (shapely.Point(12.0, 47.0).buffer(1.0), 10, 64, {"byte_limit": 4 * 2**20}),
    (shapely.Point(12.0, 47.0).buffer(1.0), 10, 64, {"max_side": 1000, "max_waste": 1.2}),
    (shapely.Point(12.0, 47.0).buffer(1.0), 10, 50, {"max_waste": 1.0}),
])
def test_the_vectorised_shortcut_equals_plan_requests_unit_by_unit(aoi, scale, chunk, limits):
    table = tile_aoi(aoi, scales=[scale]).tables[0]
    got = unit_requests(table, chunk, 3, **limits)
    ref = _reference(table, chunk, **limits)
    assert len(ref) >= 40
    np.testing.assert_array_equal(got.requests, ref[:, 0])
    np.testing.assert_array_equal(got.pixels, ref[:, 1])
    np.testing.assert_array_equal(got.largest, ref[:, 2])


def test_the_shortcut_is_checked_on_thousands_of_units():
    # 12 bands: 8 x 8 blocks are over 48 MiB, so every full block is split by plan_requests.
    table = tile_aoi((4.0, 44.0, 16.0, 52.0), scales=[20]).tables[0]
    total = 0
    for chunk, bands in ((64, 3), (23, 3), (64, 12)):
        got = unit_requests(table, chunk, bands)
        ref = _reference(table, chunk, bands)
        np.testing.assert_array_equal(np.stack([got.requests, got.pixels, got.largest], 1), ref)
        total += len(ref)
    assert total >= 2500


def test_bytes_are_consistent():
    tiling = tile_aoi(SEAM, scales=[10, 40])
    for bands in (3, 12):
        for sp in estimate_campaign(tiling, n_bands=bands, embed_dim=64).scales:
            tile_px = 224 * 224
            assert sp.pixels_single == sp.footprints * tile_px
            assert sp.bytes_single == sp.pixels_single * bands * BYTES_PER_SAMPLE
            assert sp.bytes_coalesced == sp.pixels_coalesced * bands * BYTES_PER_SAMPLE
            # tiles do not overlap: a request covers its members and at most MAX_WASTE times them
            assert sp.pixels_single <= sp.pixels_coalesced <= MAX_WASTE * sp.pixels_single
            assert tile_px * bands * BYTES_PER_SAMPLE <= sp.largest_request_bytes <= REQUEST_BYTE_LIMIT
            ref = _reference(tiling.table(sp.scale_m), 64, bands)
            assert sp.pixels_coalesced == ref[:, 1].sum()
            assert sp.largest_request_bytes == ref[:, 2].max() * bands * BYTES_PER_SAMPLE


def test_cube_size_bounds_the_real_tiling_store(tmp_path):
    tiling = tile_aoi(SEAM, scales=[20, 40])
    D = 64
    spec = CampaignSpec(temporal=WINDOW, model=ModelSpec("test-tiny", device="cpu"), scales=tiling.scales,
                        chunk_size=64, buffer_m=None)
    create_or_open_tiling(tmp_path / "t.zarr", tiling, spec, embed_dim=D)
    root = zarr.open_group(tmp_path / "t.zarr", mode="r")
    for sp, table in zip(estimate_campaign(tiling, embed_dim=D).scales, tiling.tables):
        n = len(table)
        samples = root[f"samples/{scale_name(sp.scale_m)}"]
        fixed = sum(samples[k].nbytes for k in ("embedding", "status", "input_res_m", "valid_fraction",
                                               "lon", "lat", "scale", "feature"))
        ids = sum(len(i) + 4 for i in table.ids())
        geohash = sum(len(g) + 4 for g in samples["geohash"][:])
        wkb_hex = sum(len(g) + 4 for g in samples["geometry"][:])
        errors = 4 * n  # empty strings
        assert sp.sample_cube_bytes == fixed + ids + geohash + wkb_hex + errors
        # zone grids: every block with tiles is one written chunk; arrays span block-aligned extents
        grids = root[scale_name(sp.scale_m)]
        extent = sum(g[k].nbytes for _, g in grids.groups() for k in ("embedding", "status", "sample_index",
                                                                         "x", "y", "feature"))
        per_block = table.block ** 2 * (4 * D + 1 + 8)
        assert sp.blocks * per_block <= sp.grids_bytes <= extent
    # token grids add N x D x gy x gx float32 to the sample cube
    table = tiling.tables[1]
    pooled = plan_scale(table, embed_dim=D)
    with_grid = plan_scale(table, embed_dim=D, grid_shape=(14, 14))
    assert with_grid.sample_cube_bytes - pooled.sample_cube_bytes == len(table) * D * 14 * 14 * 4


def test_fetch_time_formula_latency_and_quota_bound():
    # latency-bound: 40 in flight at 2 s is 20 requests/s < 100/s
    t = fetch_time(10_000, 2.0)
    assert t.seconds == pytest.approx(10_000 * 2.0 / EE_CONCURRENCY) and t.bound == "latency"
    # quota-bound: 40 in flight at 0.1 s would be 400/s; the quota allows 100/s
    t = fetch_time(10_000, 0.1)
    assert t.seconds == pytest.approx(10_000 / EE_REQUESTS_PER_S) and t.bound == "quota"
    # the crossover is latency = concurrency / requests_per_s
    assert fetch_time(1000, 0.4).seconds == pytest.approx(10.0)
    assert fetch_time(1000, 1.0, concurrency=10, requests_per_s=5).seconds == pytest.approx(200.0)
    # a handful of requests still takes one round trip; none takes nothing
    assert fetch_time(3, 5.0).seconds == 5.0 and fetch_time(0, 5.0).seconds == 0.0
    for kwargs, field in (({"requests": -1}, "requests"), ({"latency_s": 0}, "latency_s"),
                          ({"concurrency": 0}, "concurrency"), ({"requests_per_s": float("inf")}, "requests_per_s")):
        with pytest.raises(SpecError, match=field):
            fetch_time(**{"requests": 10, "latency_s": 1.0, **kwargs})


def test_campaign_times_use_the_latency_per_mode():
    tiling = tile_aoi(SEAM, scales=[10, 40])
    given = estimate_campaign(tiling, embed_dim=64, latency=2.0)
    assert given.latency.source == "given"
    for coalesced in (False, True):
        req = given.requests_coalesced if coalesced else given.requests_single
        assert given.fetch_time(coalesced).seconds == pytest.approx(max(req * 2.0 / 40, req / 100, 2.0))
    measured = estimate_campaign(tiling, embed_dim=64, latency=Latency(0.5, 3.0, "measured", "test"))
    assert measured.fetch_time(True).latency_s == 3.0 and measured.fetch_time(False).latency_s == 0.5
    assumed = estimate_campaign(tiling, embed_dim=64)
    assert assumed.latency.source == "assumed"
    sp = assumed.scales[0]
    assert assumed.latency_for(True, sp) == pytest.approx(assumed_latency(sp.bytes_coalesced / sp.requests_coalesced))
    assert assumed.latency_for(False, sp) == pytest.approx(assumed_latency(224 * 224 * 3 * 2))
    assert assumed.latency_for(True, sp) > assumed.latency_for(False, sp) > ASSUMED_LATENCY_BASE_S
    # the total is every scale's requests under one quota, at the request-weighted mean latency
    for coalesced in (False, True):
        req = [s.requests_coalesced if coalesced else s.requests_single for s in assumed.scales]
        lat = [assumed.latency_for(coalesced, s) for s in assumed.scales]
        work = sum(r * l for r, l in zip(req, lat))
        total = assumed.fetch_time(coalesced)
        assert total.seconds == pytest.approx(max(work / 40, sum(req) / 100, work / sum(req)))
    # latency-bound and over one round trip per scale: the total is the sum of the scales
    big = estimate_campaign((11.0, 45.0, 13.0, 46.0), scales=[10, 40], embed_dim=64)
    assert big.fetch_time(False).seconds == pytest.approx(sum(big.fetch_time(False, s).seconds for s in big.scales))
    text = format_plan(assumed)
    assert "assumed" in text and "fetch time, coalesced" in text


def test_cli_plan_text_and_json(capsys):
    assert main(["plan", BBOX, "--scales", "20", "40", "--model", "test-small"]) == 0
    text = capsys.readouterr().out
    for label in ("footprints (tiles)", "work units", "requests, one per footprint", "requests, coalesced",
                  "bytes to fetch, coalesced", "cube on disk", "fetch time, coalesced", "assumed", "D = 384"):
        assert label in text, label
    assert main(["plan", BBOX, "--scales", "20,40", "--model", "test-small", "--json", "--latency-s", "1.5",
                 "--bands", "4", "--chunk-size", "32", "--ee-concurrency", "10", "--requests-per-s", "5"]) == 0
    info = json.loads(capsys.readouterr().out)
    ref = estimate_campaign((11.9, 45.0, 12.1, 45.1), scales=[20, 40], chunk_size=32, n_bands=4, embed_dim=384,
                        latency=1.5, concurrency=10, requests_per_s=5)
    assert info["model"] == {"id": "test-small", "embed_dim": 384, "embed_dim_source": "test config"}
    assert info["quota"] == {"concurrency": 10, "requests_per_s": 5.0}
    assert info["latency"]["source"] == "given" and info["latency"]["coalesced_s"] == 1.5
    assert info["total"]["requests_coalesced"] == ref.requests_coalesced
    assert [s["footprints"] for s in info["scales"]] == [s.footprints for s in ref.scales]
    assert [s["chunk_size"] for s in info["scales"]] == [32, 32]
    assert info["total"]["fetch_time"]["coalesced"]["seconds"] == pytest.approx(ref.fetch_time(True).seconds)
    assert info["total"]["fetch_time"]["single"]["bound"] == "quota"  # 10 in flight at 1.5 s > 5/s


def test_cli_plan_reads_vector_files(tmp_path, capsys):
    gdf = gpd.GeoDataFrame({"name": ["seam"]}, geometry=[SEAM], crs="EPSG:4326").to_crs("EPSG:3857")
    for suffix in (".geojson", ".gpkg", ".parquet"):
        path = tmp_path / f"aoi{suffix}"
        gdf.to_parquet(path) if suffix == ".parquet" else gdf.to_file(path)
        assert main(["plan", str(path), "--scales", "40", "--embed-dim", "8", "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["scales"][0]["footprints"] == len(tile_aoi(SEAM, scales=[40]).tables[0])
        assert info["model"]["embed_dim_source"] == "given by --embed-dim"


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d", "10,50,5,40", "1,2,3,nan", "", "no/such/file.geojson"])
def test_bad_aoi_names_the_argument(text, capsys):
    with pytest.raises(SpecError, match="aoi"):
        tile_aoi(read_aoi(text), scales=[40])
    assert main(["plan", text, "--scales", "40", "--embed-dim", "8"]) == 2
    err = capsys.readouterr().err
    assert "rsembed-dask plan: error: aoi=" in err and ("minlon,minlat,maxlon,maxlat" in err or "min < max" in err)


def test_unreadable_aoi_file_is_a_spec_error(tmp_path):
    bad = tmp_path / "aoi.geojson"
    bad.write_text("not json")
    with pytest.raises(SpecError, match="aoi.*reading it failed"):
        read_aoi(str(bad))


def test_embed_dim_needs_no_download_for_the_default_model(monkeypatch):
    import rsembed_dask.embed.weights as weights

    def offline(model_id, patterns):
        raise ModelError(f"{model_id}: offline")

    monkeypatch.setattr(weights, "_hub_fetch", offline)
    assert resolve_embed_dim("MVRL/scalemae-vitlarge-800")[:2] == (1024, 16)
    assert resolve_embed_dim("test-small") == (384, 16, "test config")
    dim, patch, source = resolve_embed_dim("someone/other-scalemae")
    assert (dim, patch) == (1024, 16) and source.startswith("assumed ViT-L")
    with pytest.raises(ModelError):
        resolve_embed_dim("test-nope")
