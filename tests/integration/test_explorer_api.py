"""The explorer's HTTP API on real cubes (emulator campaigns): similar, labels, predict, overlays, limits.

Most requests go through Starlette's TestClient (the real application in process);
safety checks that depend on the wire (raw paths, Host headers) and the Jupyter
server go through a real uvicorn server on a loopback port.
"""

import http.client
import io
import json
import math
import urllib.request

import geopandas as gpd
import numpy as np
import pytest
import shapely
import xarray as xr
from affine import Affine
from PIL import Image
from pyproj import Transformer

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from rsembed_dask.campaign.run import run_campaign  # noqa: E402
from rsembed_dask.explore.app import MAX_K, MAX_LABELS, VectorIndex, create_app, explore  # noqa: E402
from rsembed_dask.explore.app.overlay import zone_overlay  # noqa: E402
from rsembed_dask.explore.notebook import similar as notebook_similar  # noqa: E402
from rsembed_dask.sampling.tiling import tile_aoi  # noqa: E402
from rsembed_dask.specs import ModelSpec, TemporalSpec  # noqa: E402
from rsembed_dask.store.layout import OK  # noqa: E402
from rsembed_dask.store.open import open_cube  # noqa: E402
from rsembed_dask.store.quantize import quantize_int8  # noqa: E402

WINDOW = TemporalSpec.range("2022-01-01", "2022-04-01")
TINY = ModelSpec("test-tiny", device="cpu")
SCALES = [20.0, 40.0]
BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def points_cube(tmp_path_factory, client, emulator):
    from rsembed_dask.providers.gee import GEEProvider

    from ..conftest import FAST_RETRY

    rng = np.random.default_rng(3)
    n = 30
    gdf = gpd.GeoDataFrame({"name": [f"p{i:02d}" for i in range(n)]},
                           geometry=gpd.points_from_xy(rng.uniform(3.5, 4.0, n), rng.uniform(30.25, 30.65, n)),
                           crs="EPSG:4326")
    path = tmp_path_factory.mktemp("explorer") / "points.zarr"
    provider = GEEProvider(api_url=emulator.url, credentials="anonymous", project="explorer", retry=FAST_RETRY)
    run_campaign(gdf, path, scales=SCALES, temporal=WINDOW, model=TINY, backend=provider, id_column="name",
                 client=client, progress=False)
    return path


@pytest.fixture(scope="module")
def tiles_store(tmp_path_factory, client, emulator):
    from rsembed_dask.providers.gee import GEEProvider

    from ..conftest import FAST_RETRY

    path = tmp_path_factory.mktemp("explorer") / "tiles.zarr"
    provider = GEEProvider(api_url=emulator.url, credentials="anonymous", project="explorer", retry=FAST_RETRY)
    run_campaign(tile_aoi((3.5, 30.25, 3.7, 30.4), scales=[20.0]), path, temporal=WINDOW, model=TINY,
                 backend=provider, client=client, progress=False)
    return path


@pytest.fixture(scope="module")
def api(points_cube):
    return TestClient(create_app(points_cube), base_url=BASE)


def _cosines(ds, scale, query_id):
    emb = ds.embedding.sel(scale=scale).values.astype(np.float64)
    ok = ds.status.sel(scale=scale).values == OK
    q = emb[list(ds.sample.values).index(query_id)]
    cos = emb @ q / (np.linalg.norm(emb, axis=1) * np.linalg.norm(q))
    return {sid: c for sid, c, good in zip(ds.sample.values.tolist(), cos, ok) if good}


def test_similar_returns_the_query_then_the_k_most_similar_with_their_cosines(api, points_cube):
    ds = open_cube(points_cube)
    lon, lat = float(ds.lon.values[4]), float(ds.lat.values[4])
    r = api.get("/api/similar", params={"lon": lon, "lat": lat, "k": 5, "scale": 40, "geometry": "stored"})
    assert r.status_code == 200, r.text
    fc = r.json()
    assert fc["type"] == "FeatureCollection" and fc["scale"] == 40.0 and fc["k"] == 5
    feats = fc["features"]
    assert len(feats) == 6
    query = feats[0]["properties"]
    assert query["query"] is True and query["id"] == ds.sample.values[4] and query["score"] == 1.0
    assert fc["query"]["id"] == query["id"] and fc["query"]["distance_m"] < 1.0
    # Scores are the cosines of the stored embeddings, most similar first, the query excluded from the k.
    truth = _cosines(ds, 40.0, query["id"])
    others = [f["properties"] for f in feats[1:]]
    assert all(not p["query"] and p["scale"] == 40.0 for p in others)
    assert [p["score"] for p in others] == sorted((p["score"] for p in others), reverse=True)
    for p in others:
        assert p["score"] == pytest.approx(truth[p["id"]], abs=1e-5)
    expected = sorted((c, sid) for sid, c in truth.items() if sid != query["id"])[::-1][:5]
    assert [p["id"] for p in others] == [sid for _, sid in expected]
    # The notebook's similar() agrees, and each feature's geometry is the sample's.
    nb = notebook_similar(ds, query["id"], k=5, scale=40)
    assert nb.index.tolist() == [p["id"] for p in others]
    for f in feats:
        assert f["id"] == f["properties"]["id"]
        assert shapely.geometry.shape(f["geometry"]).equals(
            shapely.from_wkb(ds.geometry.sel(sample=f["id"]).values.item()))
    # By default the geometry is the centroid (no geometry chunk read: fast on big cubes).
    points = api.get("/api/similar", params={"lon": lon, "lat": lat, "k": 5, "scale": 40}).json()["features"]
    assert [f["id"] for f in points] == [f["id"] for f in feats]
    assert all(f["geometry"] == {"type": "Point", "coordinates": [f["properties"]["lon"], f["properties"]["lat"]]}
               for f in points)


def test_scales_are_their_own_indexes_and_places_carry_pca_colours(api, points_cube):
    ds = open_cube(points_cube)
    info = api.get("/api/info").json()
    assert info["kind"] == "samples" and info["scales"] == SCALES and info["windows"] == []
    assert info["predict_method"] == "mean_difference"
    lon, lat = float(ds.lon.values[0]), float(ds.lat.values[0])
    a = api.get("/api/similar", params={"lon": lon, "lat": lat, "k": 3, "scale": 20}).json()
    b = api.get("/api/similar", params={"lon": lon, "lat": lat, "k": 3, "scale": 40}).json()
    assert a["features"][1]["properties"]["score"] != b["features"][1]["properties"]["score"]
    places = api.get("/api/places", params={"scale": 20}).json()
    assert places["total"] == places["shown"] == int((ds.status.sel(scale=20.0).values == OK).sum())
    assert len(places["ids"]) == len(places["lon"]) == len(places["rgb"]) == places["total"]
    assert all(len(c) == 7 and c.startswith("#") for c in places["rgb"])
    assert len(set(places["rgb"])) > places["total"] // 2  # colours tell places apart


@pytest.mark.parametrize("params, word", [
    ({"lat": 30.4, "k": 5, "scale": 20}, "lon is missing"),
    ({"lon": "abc", "lat": 30.4, "scale": 20}, "lon"),
    ({"lon": "nan", "lat": 30.4, "scale": 20}, "lon"),
    ({"lon": 181, "lat": 30.4, "scale": 20}, "lon"),
    ({"lon": 3.6, "lat": -90.5, "scale": 20}, "lat"),
    ({"lon": 3.6, "lat": 30.4, "k": 0, "scale": 20}, "k"),
    ({"lon": 3.6, "lat": 30.4, "k": MAX_K + 1, "scale": 20}, "k"),
    ({"lon": 3.6, "lat": 30.4, "k": "1e9", "scale": 20}, "k"),
    ({"lon": 3.6, "lat": 30.4, "k": 5, "scale": 30}, "scale"),
    ({"lon": 3.6, "lat": 30.4, "k": 5}, "scale"),  # two scales: which one?
    ({"lon": 3.6, "lat": 30.4, "k": 5, "scale": 20, "time": "2022"}, "time"),  # no windows
    ({"lon": 3.6, "lat": 30.4, "k": 5, "scale": 20, "geometry": "wkt"}, "geometry"),
])
def test_malformed_or_oversized_queries_get_400_and_a_json_error(api, params, word):
    r = api.get("/api/similar", params=params)
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
    assert word in r.json()["error"]


def test_labels_and_predictions_round_trip_as_geojson_and_geoparquet(api, points_cube):
    ds = open_cube(points_cube)
    ids = ds.sample.values.tolist()
    r = api.get("/api/predict")
    assert r.status_code == 400 and "no labels" in r.json()["error"]
    body = {"scale": 20, "labels": [{"id": ids[0], "label": "positive"}, {"id": ids[1], "label": "positive"},
                                    {"lon": float(ds.lon.values[2]), "lat": float(ds.lat.values[2]),
                                     "label": "negative"}]}
    r = api.put("/api/labels", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["positives"] == 2 and got["negatives"] == 1
    assert {f["properties"]["id"]: f["properties"]["label"] for f in got["features"]} == {
        ids[0]: "positive", ids[1]: "positive", ids[2]: "negative"}
    fc = api.get("/api/predict").json()
    assert fc["method"] == "mean_difference" and len(fc["features"]) == fc["places"]
    scores = [f["properties"]["score"] for f in fc["features"]]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    # The scores are cosines to mean(unit positives) - mean(unit negatives).
    emb = ds.embedding.sel(scale=20.0).values.astype(np.float64)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    w = unit[[0, 1]].mean(0) - unit[2]
    w /= np.linalg.norm(w)
    truth = dict(zip(ids, unit @ w))
    for f in fc["features"]:
        assert f["properties"]["score"] == pytest.approx(truth[f["id"]], abs=1e-5)
    assert {f["id"]: f["properties"]["label"] for f in fc["features"] if f["properties"]["label"]} == {
        ids[0]: "positive", ids[1]: "positive", ids[2]: "negative"}
    cols = api.get("/api/predict", params={"format": "columns", "limit": 4, "min_score": -1}).json()
    assert cols["ids"] == [f["id"] for f in fc["features"][:4]]
    top = api.get("/api/predict", params={"min_score": scores[2]}).json()["features"]
    assert len(top) >= 3 and all(f["properties"]["score"] >= scores[2] for f in top)
    for url, n in (("/api/predict", len(fc["features"])), ("/api/labels", 3)):
        r = api.get(url, params={"format": "geoparquet"})
        assert r.status_code == 200 and r.content[:4] == b"PAR1"
        gdf = gpd.read_parquet(io.BytesIO(r.content))
        assert len(gdf) == n and gdf.crs.to_epsg() == 4326 and "id" in gdf.columns
    assert json.loads(api.get("/api/labels").text)["positives"] == 2


@pytest.mark.parametrize("body, word", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (json.dumps({"scale": 20, "labels": "x"}).encode(), "labels must be"),
    (json.dumps({"scale": 20, "labels": [{"id": "p00", "label": "maybe"}]}).encode(), "label"),
    (json.dumps({"scale": 20, "labels": [{"id": "nope", "label": "positive"}]}).encode(), "not a place"),
    (json.dumps({"scale": 20, "labels": [{"lon": 999, "lat": 0, "label": "positive"}]}).encode(), "lon"),
    (json.dumps({"scale": 20, "labels": [{"label": "positive"}]}).encode(), "names no place"),
    (json.dumps({"scale": 20, "labels": [{"id": "p00", "label": "positive"}] * (MAX_LABELS + 1)}).encode(),
     "at most"),
    (b"[" + b" " * (2 << 20) + b"]", "at most"),
])
def test_malformed_or_oversized_label_sets_get_400(api, body, word):
    r = api.put("/api/labels", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert word in r.json()["error"]


def test_int8_vectors_stay_int8_and_rank_like_float32(points_cube):
    ds = open_cube(points_cube).isel(scale=0)
    q, s = quantize_int8(ds.embedding.values, axis=1)
    int8 = ds.drop_vars("embedding").assign(embedding=(("sample", "feature"), q),
                                            embedding_scale=(("sample",), s))
    index = VectorIndex.load(int8)
    assert index.vectors.dtype == np.int8 and index.nbytes == q.nbytes
    ref = VectorIndex.load(ds)
    assert ref.vectors.dtype == np.float32
    np.testing.assert_allclose(index.cosine(3), ref.cosine(3), atol=2e-3)
    assert index.top_k(index.vector(3), 1)[0][0] == 3
    np.testing.assert_allclose(index.floats(np.arange(5)), q[:5] * s[:5, None], rtol=1e-6)  # dequantised for PCA


def test_windows_are_chosen_by_start_date_or_year(points_cube):
    """A cube with a ``time`` dimension (two windows): each window is its own index."""
    ds = open_cube(points_cube)
    later = ds.copy()
    rng = np.random.default_rng(0)
    later["embedding"] = ds.embedding + xr.DataArray(rng.normal(size=ds.embedding.shape).astype("float32"),
                                                     dims=ds.embedding.dims)
    cube = xr.concat([ds, later], dim="time").assign_coords(
        time=np.array(["2022-01-01", "2023-01-01"], "datetime64[ns]"))
    cube["time_bnds"] = (("time", "bnds"), np.array([["2022-01-01", "2022-04-01"], ["2023-01-01", "2023-04-01"]],
                                                    "datetime64[ns]"))
    api = TestClient(create_app(cube), base_url=BASE)
    info = api.get("/api/info").json()
    assert info["windows"] == [{"start": "2022-01-01", "end": "2022-04-01"},
                               {"start": "2023-01-01", "end": "2023-04-01"}]
    lon, lat = float(ds.lon.values[5]), float(ds.lat.values[5])
    a = api.get("/api/similar", params={"lon": lon, "lat": lat, "k": 3, "scale": 20, "time": "2022"}).json()
    b = api.get("/api/similar", params={"lon": lon, "lat": lat, "k": 3, "scale": 20,
                                        "time": "2023-01-01"}).json()
    assert a["time"] == "2022-01-01" and b["time"] == "2023-01-01"
    assert all(f["properties"]["time"] == "2023-01-01" and f["properties"]["time_end"] == "2023-04-01"
               for f in b["features"])
    assert [f["properties"]["score"] for f in a["features"]] != [f["properties"]["score"] for f in b["features"]]
    truth = _cosines(ds, 20.0, a["features"][0]["id"])
    assert a["features"][1]["properties"]["score"] == pytest.approx(truth[a["features"][1]["id"]], abs=1e-5)
    for bad in ({}, {"time": "2024"}, {"time": "2022-02-01"}):
        r = api.get("/api/similar", params={"lon": lon, "lat": lat, "k": 3, "scale": 20, **bad})
        assert r.status_code == 400 and "time" in r.json()["error"]


def test_tiling_overlays_put_every_tile_corner_within_one_pixel_of_the_cube(tiles_store):
    """Each tile gets its own colour; where its pixels lie in the overlay is compared with where
    the zone grid's transform puts the tile's corners (carried to Web Mercator)."""
    import zarr

    tree = open_cube(tiles_store)
    group = "20m/" + next(iter(tree["20m"].children))
    distinct = lambda rows: np.column_stack([(rows + 1) % 256, (rows + 1) // 256 % 256,  # noqa: E731
                                             np.full_like(rows, 200), np.full_like(rows, 255)]).astype(np.uint8)
    ov = zone_overlay(str(tiles_store), group, distinct)
    img = np.asarray(Image.open(io.BytesIO(ov.png)))
    assert img.shape == (*ov.shape, 4)
    left, bottom, right, top = ov.mercator
    px = (right - left) / img.shape[1]
    assert (top - bottom) / img.shape[0] == pytest.approx(px)
    g = zarr.open_group(str(tiles_store), mode="r")[group]
    transform = Affine.from_gdal(*map(float, g["spatial_ref"].attrs["GeoTransform"].split()))
    to_merc = Transformer.from_crs(g.attrs["crs"], "EPSG:3857", always_xy=True)
    index = np.asarray(g["sample_index"][...])
    checked = 0
    for r, c in zip(*np.nonzero(index >= 0)):
        row = index[r, c]
        mask = (img[..., 0] == (row + 1) % 256) & (img[..., 1] == (row + 1) // 256 % 256) & (img[..., 3] == 255)
        ys, xs = np.nonzero(mask)
        assert len(ys), f"tile {row} is not drawn"
        cx, cy = transform @ (np.array([c, c + 1, c + 1, c]), np.array([r, r, r + 1, r + 1]))
        mx, my = to_merc.transform(cx, cy)
        corner_px = ((np.asarray(mx) - left) / px, (top - np.asarray(my)) / px)
        assert abs(xs.min() - corner_px[0].min()) <= 1 and abs(xs.max() + 1 - corner_px[0].max()) <= 1
        assert abs(ys.min() - corner_px[1].min()) <= 1 and abs(ys.max() + 1 - corner_px[1].max()) <= 1
        checked += 1
    assert checked == int((index >= 0).sum()) >= 10
    assert (img[..., 3] == 0).any()  # no tile: transparent


def test_tiling_store_api_serves_overlays_and_tiles(tiles_store):
    api = TestClient(create_app(tiles_store), base_url=BASE)
    info = api.get("/api/info").json()
    assert info["kind"] == "tiling" and info["scales"] == [20.0]
    ovs = api.get("/api/overlays").json()["overlays"]
    assert len(ovs) == 1 and ovs[0]["zone"].startswith("EPSG326")
    png = api.get(ovs[0]["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == tuple(ovs[0]["shape"][::-1])
    assert api.get("/api/overlay/20/EPSG4326.png").status_code == 400
    samples = open_cube(tiles_store)["samples/20m"].to_dataset()
    lon, lat = float(samples.lon.values[7]), float(samples.lat.values[7])
    fc = api.get("/api/similar", params={"lon": lon, "lat": lat + 0.001, "k": 4, "geometry": "stored"}).json()
    q = fc["features"][0]
    assert q["id"] == samples.sample.values[7]
    tile = shapely.from_wkb(samples.geometry.values[7])
    assert shapely.geometry.shape(q["geometry"]).equals(tile)  # the tile's square, as stored


def _raw_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("GET", path, skip_host=True)
    conn.putheader("Host", f"{host}:{port}")
    conn.endheaders()
    resp = conn.getresponse()
    out = resp.status, resp.read()
    conn.close()
    return out


def test_real_server_serves_only_its_own_files_to_its_own_host(points_cube):
    with explore(points_cube) as server:
        assert server.url.startswith("http://127.0.0.1:") and f'src="{server.url}"' in server._repr_html_()
        port = server.port
        status, body = _raw_get(port, "/")
        assert status == 200 and b"leaflet" in body.lower()
        assert _raw_get(port, "/static/leaflet/leaflet.js")[0] == 200
        for path in ("/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fserver.py",
                     "/static/leaflet/../../server.py", "/static/%2e%2e/%2e%2e/%2e%2e/labels.py",
                     "/static//etc/passwd", "/static/%2fetc%2fpasswd", "/../../../../etc/passwd", "/server.py"):
            status, body = _raw_get(port, path)
            assert status == 404, (path, status, body[:200])
            assert b"import" not in body and b"root:" not in body
        # DNS rebinding: a page on another name cannot talk to the server.
        assert _raw_get(port, "/api/info", host="evil.example")[0] == 400
        with urllib.request.urlopen(server.url + "api/similar?lon=3.7&lat=30.4&k=2&scale=20", timeout=30) as r:
            fc = json.load(r)
        assert len(fc["features"]) == 3 and math.isclose(fc["features"][0]["properties"]["score"], 1.0)
