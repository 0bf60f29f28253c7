"""The explorer in a real browser (headless Chromium driven by Selenium) on an emulator campaign.

A sample campaign (real ee client on the emulator, real Dask cluster, ``test-small``
with random weights) over an area where forest is common but not the rule; every
sample's truth is the majority land-cover class of its footprint in the emulator's
world. The test clicks a forest sample on the map and checks that at least 4 of the
5 places the page highlights are forest; then labels 5 forest samples positive and
5 others negative, presses Predict and checks that at least 16 of the 20 best
predictions it lists (labelled places left aside) are forest. The page as it is then
is the screenshot of the docs (``docs/img/explorer.png``).
"""

import os
import shutil
import tempfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from rsembed_dask.campaign.run import run_campaign  # noqa: E402
from rsembed_dask.emulator.land_cover import CLASS_NAMES, FOREST  # noqa: E402
from rsembed_dask.emulator.semantic import majority_classes  # noqa: E402
from rsembed_dask.explore.app import explore  # noqa: E402
from rsembed_dask.providers.gee import GEEProvider  # noqa: E402
from rsembed_dask.sampling import build_sample_table  # noqa: E402
from rsembed_dask.specs import ModelSpec, TemporalSpec  # noqa: E402

from ..conftest import FAST_RETRY  # noqa: E402

# 120 samples in an area of the emulator's world (seed 0) that is 44 % forest, with water,
# cropland, bare soil and towns; footprints of 64 px at 20 m (1.28 km). Measured with
# test-small (random weights): 19 of 20 forest queries have >= 4 forest among their 5 nearest,
# and the mean-difference prediction from 5 + 5 labels puts 20 forest samples on top.
AOI = (3.8, 30.6, 4.2, 30.9)
N_SAMPLES = 120
SCALE = 20.0
MODEL = ModelSpec("test-small", device="cpu", batch_size=16, image_size=64)
WINDOW = TemporalSpec.range("2022-01-01", "2022-04-01")
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
# Headless, and nothing that reaches for the network (the machines have none: lookups hang).
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "explorer.png"


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, client, emulator):
    rng = np.random.default_rng(7)
    gdf = gpd.GeoDataFrame({"name": [f"s{i:03d}" for i in range(N_SAMPLES)]},
                           geometry=gpd.points_from_xy(rng.uniform(AOI[0], AOI[2], N_SAMPLES),
                                                       rng.uniform(AOI[1], AOI[3], N_SAMPLES)), crs="EPSG:4326")
    table = build_sample_table(gdf, id_column="name")
    grids = [table.footprint(i, SCALE, MODEL.image_size).grid for i in range(len(table.ids))]
    classes, purity = majority_classes(emulator.world, grids)
    provider = GEEProvider(api_url=emulator.url, credentials="anonymous", project="explorer", retry=FAST_RETRY)
    path = tmp_path_factory.mktemp("browser") / "samples.zarr"
    run_campaign(gdf, path, scales=[SCALE], temporal=WINDOW, model=MODEL, backend=provider, id_column="name",
                 client=client, progress=False)
    xy = dict(zip(gdf["name"], zip(gdf.geometry.x, gdf.geometry.y)))  # the table is in Hilbert order
    truth = {sid: (int(c), float(p), *map(float, xy[sid])) for sid, c, p in zip(table.ids, classes, purity)}
    return path, truth


@pytest.fixture(scope="module")
def browser():
    if not (os.access(CHROMEDRIVER, os.X_OK) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed (Debian: apt-get install chromium chromium-driver; "
                    "`make setup` installs them)")
    profile = tempfile.mkdtemp(prefix="explorer-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,800"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(drv, what, timeout=120):
    return WebDriverWait(drv, timeout, poll_frequency=0.2).until(lambda d: what(d))


def _click_place(drv, lon: float, lat: float) -> None:
    """Click the map where ``(lon, lat)`` is drawn."""
    x, y = drv.execute_script("const p = window.explorer.map.latLngToContainerPoint([arguments[1], arguments[0]]);"
                              "return [p.x, p.y];", lon, lat)
    el = drv.find_element(By.ID, "map")
    size = el.size
    ActionChains(drv).move_to_element_with_offset(el, int(round(x - size["width"] / 2)),
                                                  int(round(y - size["height"] / 2))).click().perform()


def _items(drv, list_id: str) -> list[dict]:
    return drv.execute_script(
        "return [...document.querySelectorAll('#' + arguments[0] + ' li')].map(li => ({...li.dataset}));", list_id)


def test_click_a_forest_sample_then_label_and_predict_forest(campaign, browser):
    path, truth = campaign
    forest = sorted((sid for sid, t in truth.items() if t[0] == FOREST), key=lambda s: -truth[s][1])
    others = sorted((sid for sid, t in truth.items() if t[0] != FOREST), key=lambda s: -truth[s][1])
    counts = np.bincount([t[0] for t in truth.values()], minlength=len(CLASS_NAMES))
    assert 0.3 <= counts[FOREST] / N_SAMPLES <= 0.55, dict(zip(CLASS_NAMES, counts.tolist()))
    drv = browser
    with explore(path) as server:
        drv.get(server.url)
        _wait(drv, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert drv.execute_script("return window.explorer.layers.places.getLayers().length") == N_SAMPLES

        # 1. Click the most thoroughly forested sample: the page highlights its 5 most similar places.
        query = forest[0]
        _click_place(drv, truth[query][2], truth[query][3])
        _wait(drv, lambda d: len(_items(d, "results")) == 6)
        items = _items(drv, "results")
        assert items[0]["query"] == "1" and items[0]["id"] == query
        found = [it["id"] for it in items[1:]]
        assert drv.execute_script("return window.explorer.layers.similar.getLayers()[0].getLayers().length") == 6
        scores = [float(it["score"]) for it in items[1:]]
        assert scores == sorted(scores, reverse=True)
        n_forest = sum(truth[sid][0] == FOREST for sid in found)
        print(f"\nsimilar to {query}: {[(sid, CLASS_NAMES[truth[sid][0]]) for sid in found]}")
        assert n_forest >= 4

        # 2. Label 5 forest samples positive and 5 others negative, by clicking them.
        positives, negatives = forest[1:6], others[:5]
        for mode, ids in (("mode-positive", positives), ("mode-negative", negatives)):
            drv.find_element(By.ID, mode).click()
            for n, sid in enumerate(ids, start=1):
                _click_place(drv, truth[sid][2], truth[sid][3])
                want = f"{n} + / 0" if mode == "mode-positive" else f"5 + / {n}"
                _wait(drv, lambda d, want=want: d.find_element(By.ID, "label-counts").text.startswith(want))
        labels = server_labels(server.url)
        assert labels == {**{s: "positive" for s in positives}, **{s: "negative" for s in negatives}}

        # 3. Predict: the best places it lists, the labelled ones aside, are forest.
        drv.find_element(By.ID, "mode-similar").click()
        drv.find_element(By.ID, "predict").click()
        _wait(drv, lambda d: len(_items(d, "predictions")) >= 30)
        ranked = [it for it in _items(drv, "predictions") if not it["label"]][:20]
        precision = np.mean([truth[it["id"]][0] == FOREST for it in ranked])
        print(f"precision at the top 20 (labelled places aside): {precision:.2f}")
        assert len(ranked) == 20 and precision >= 0.8
        shown = drv.execute_script("return window.explorer.layers.predictions.getLayers().length")
        assert shown == 20  # the slider starts at the 20th best score
        assert "mean difference" in drv.find_element(By.ID, "predict-method").text

        # The threshold slider filters the layer.
        drv.execute_script("const s = document.getElementById('threshold'); s.value = s.max;"
                           "s.dispatchEvent(new Event('input'));")
        assert drv.execute_script("return window.explorer.layers.predictions.getLayers().length") == 1
        drv.execute_script("const s = document.getElementById('threshold');"
                           "s.value = arguments[0]; s.dispatchEvent(new Event('input'));", ranked[-1]["score"])
        assert drv.find_element(By.ID, "status").text == ""

        # Back to the query's similar places for the picture.
        _click_place(drv, truth[query][2], truth[query][3])
        _wait(drv, lambda d: len(_items(d, "results")) == 6)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        assert drv.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def server_labels(url: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(url + "api/labels", timeout=30) as r:
        fc = json.load(r)
    return {f["id"]: f["properties"]["label"] for f in fc["features"]}


def _small_cube(path, n=80, d=16):
    import shapely
    from rsembed_dask.specs import CampaignSpec, OutputSpec
    from rsembed_dask.store.cube import OK, Cube

    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(2, 3, n), rng.uniform(30, 31, n)
    spec = CampaignSpec(temporal=WINDOW, model=ModelSpec("test-tiny"), output=OutputSpec.pooled(),
                        scales=(10.0,), chunk_size=n)
    cube = Cube.create_or_open(path, spec=spec, ids=[f"c{i}" for i in range(n)], lon=lon, lat=lat,
                               geohash=[f"gh{i}" for i in range(n)],
                               wkb=[shapely.Point(x, y).wkb for x, y in zip(lon, lat)], embed_dim=d)
    cube.write_unit(0, n, 0, embedding=rng.normal(size=(n, d)).astype(np.float32), status=np.full(n, OK, np.int8),
                    input_res_m=np.full(n, 10.0, np.float32), valid_fraction=np.ones(n, np.float32),
                    error=[""] * n)
    return path


def test_window_selector_only_for_cubes_with_windows(tmp_path, browser):
    """A cube with a ``time`` dimension (two windows, built in memory until campaigns write them)
    gets a window selector whose choice reaches the API; a cube without one gets none."""
    import xarray as xr

    from rsembed_dask.store.open import open_cube

    ds = open_cube(_small_cube(tmp_path / "one.zarr"))
    later = ds.copy()
    later["embedding"] = -ds.embedding
    two = xr.concat([ds, later], dim="time").assign_coords(
        time=np.array(["2022-01-01", "2023-01-01"], "datetime64[ns]"))
    drv = browser
    with explore(ds) as server:
        drv.get(server.url)
        _wait(drv, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert not drv.find_element(By.ID, "window-box").is_displayed()
    with explore(two) as server:
        drv.get(server.url)
        _wait(drv, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert drv.find_element(By.ID, "window-box").is_displayed()
        options = drv.execute_script("return [...document.querySelectorAll('#window option')].map(o => o.value)")
        assert options == ["2022-01-01", "2023-01-01"]
        drv.execute_script("const s = document.getElementById('window'); s.value = '2023-01-01';"
                           "s.dispatchEvent(new Event('change'));")
        _wait(drv, lambda d: d.execute_script("return window.explorer.state.time") == "2023-01-01")
        x, y = float(ds.lon.values[3]), float(ds.lat.values[3])
        _click_place(drv, x, y)
        _wait(drv, lambda d: len(_items(d, "results")) == 6)
        assert _items(drv, "results")[0]["id"] == "c3"
        times = drv.execute_script("return window.explorer.layers.similar.getLayers()[0].toGeoJSON()"
                                   ".features.map(f => f.properties.time)")
        assert times == ["2023-01-01"] * 6  # the chosen window's embeddings were searched
        assert drv.find_element(By.ID, "status").text == ""
