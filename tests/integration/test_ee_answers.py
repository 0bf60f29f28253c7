"""Earth Engine's own answers, from the emulator through the real earthengine-api client, and what we do."""

import socket
import threading
import time

import numpy as np
import pytest

import ee

from rsembed_dask.errors import (ComputationTooLargeError, ConfigurationError, NoImageryError,
                                 PermanentProviderError)
from rsembed_dask.geo.grid import PixelGrid, point_grid
from rsembed_dask.providers.coalesce import plan_requests, split_request
from rsembed_dask.providers.ee_session import ensure_initialized
from rsembed_dask.providers.fetching import fetch_coalesced
from rsembed_dask.providers.gee import GEEProvider, rest_grid
from rsembed_dask.specs import SensorSpec, TemporalSpec
from rsembed_dask.emulator import GEEEmulator

from ..conftest import FAST_RETRY

WINDOW = TemporalSpec.range("2022-01-01", "2022-04-01")
EMPTY = TemporalSpec.range("2015-01-01", "2015-02-01")  # before the first Sentinel-2 scene
GRID = point_grid(3.0, 31.2, 320, 10)


def _provider(emu, **kw):
    kw.setdefault("project", "test-project")
    return GEEProvider(api_url=emu.url, credentials="anonymous", retry=FAST_RETRY, **kw)


def _raw(provider, grid, sensor, temporal):
    """Send one computePixels through the real client; return Earth Engine's status and message."""
    http = ensure_initialized(provider.session)
    request = {"expression": provider.composite(grid, sensor, temporal), "fileFormat": "NPY",
               "grid": rest_grid(grid)}
    with pytest.raises(ee.EEException) as info:
        ee.data.computePixels(request)
    return http.last.status, str(info.value)


def test_emulator_answers_with_earth_engines_words(emu):
    p = _provider(emu)
    assert _raw(p, GRID, SensorSpec(), EMPTY) == (
        400, "Image.select: Band pattern 'B4' was applied to an Image with no bands.")
    assert _raw(p, GRID, SensorSpec(bands=("B04", "B3", "B2")), WINDOW) == (
        400, "Image.select: Pattern 'B04' did not match any bands.")
    assert _raw(p, GRID, SensorSpec(collection="COPERNICUS/S2_SR_HARMONISED"), WINDOW) == (
        400, "ImageCollection.load: ImageCollection asset 'COPERNICUS/S2_SR_HARMONISED' not found "
             "(does not exist or caller does not have access).")
    big = PixelGrid("EPSG:32631", 500000, 3500000, 10, 4000, 2100)
    status, message = _raw(p, big, SensorSpec(), WINDOW)
    assert status == 400 and message == ("Total request size (50400000 bytes) must be less than or equal to "
                                         "50331648 bytes.")


@pytest.mark.parametrize("error, status, words", [("timeout", 400, "Computation timed out."),
                                                  ("memory", 400, "User memory limit exceeded."),
                                                  ("timeout", 503, "Computation timed out.")])
def test_work_limit_answers_and_is_not_retried(error, status, words):
    with GEEEmulator(work_limit_px=64 * 64, work_limit_error=error, work_limit_status=status) as emu:
        p = _provider(emu)
        assert _raw(p, point_grid(3.0, 31.2, 650, 10), SensorSpec(), WINDOW) == (status, words)
        p.fetch(GRID, SensorSpec(), WINDOW)  # 64 x 64: within the limit
        with pytest.raises(ComputationTooLargeError, match=words.rstrip(".")):
            p.fetch(point_grid(3.0, 31.2, 650, 10), SensorSpec(), WINDOW)
        s = p.stats.as_dict()
        assert s["sent"] == 2 and s["retried"] == 0 and s["failed"] == 1
        assert emu.stats.as_dict()["too_much_work"] == 2


@pytest.mark.parametrize("auth, status, words", [
    ("401", 401, "Request had invalid authentication credentials"),
    ("403", 403, "Project test-project is not registered to use Earth Engine")])
def test_refused_credentials_are_a_configuration_error_on_every_call(auth, status, words):
    with GEEEmulator(auth=auth) as emu:
        # Refused at once (the algorithm list at start-up in a fresh process, else the request)...
        with pytest.raises(ConfigurationError, match=rf"refused .*HTTP {status}: {words}.*--credentials"):
            _provider(emu).preflight(SensorSpec())
        with pytest.raises(ConfigurationError, match=rf"refused .*HTTP {status}: {words}.*--credentials"):
            _provider(emu).fetch(GRID, SensorSpec(), WINDOW)
        # ... and on value:compute and computePixels once initialised.
        emu.auth = None
        p = _provider(emu)
        p.fetch(GRID, SensorSpec(), WINDOW)
        emu.auth = auth
        with pytest.raises(ConfigurationError, match=rf"HTTP {status}: {words}.*--ee-project"):
            p.fetch(GRID, SensorSpec(), WINDOW)
        with pytest.raises(ConfigurationError, match=rf"HTTP {status}: {words}"):
            p.preflight(SensorSpec())
        assert emu.stats.as_dict()["auth_refused"] == 4 and p.stats.as_dict()["retried"] == 0


def test_places_without_coverage_have_no_imagery_not_failures():
    sahara, ocean = (3.0, 31.2), (-30.0, 0.0)
    with GEEEmulator(no_coverage=[(-40, -10, -20, 10)]) as emu:
        p = _provider(emu)
        assert p.fetch(point_grid(*sahara, 320, 10), SensorSpec(), WINDOW).valid.all()
        with pytest.raises(NoImageryError, match="no scene matches"):
            p.fetch(point_grid(*ocean, 320, 10), SensorSpec(), WINDOW)
        # A footprint across the coast of the hole: scenes exist, the pixels in the hole are masked.
        edge = p.fetch(point_grid(-20.0, 0.0, 320, 10), SensorSpec(), WINDOW)
        assert 0.3 < edge.valid_fraction < 0.7
        s = p.stats.as_dict()
        assert s["no_imagery"] == 1 and s["failed"] == 0 and s["sent"] == 3


def test_a_footprint_across_the_antimeridian_filters_on_its_own_side_of_the_globe():
    grid = point_grid(179.99, 0.0, 1120, 10)  # 2.24 km: crosses 180 degrees
    assert grid.crs == "EPSG:32660"
    # Imagery everywhere but around the antimeridian: a 360-degree-wide lon/lat box would find scenes.
    holes = [(170.0, -10.0, 180.0, 10.0), (-180.0, -10.0, -170.0, 10.0)]
    with GEEEmulator(no_coverage=holes) as emu:
        with pytest.raises(NoImageryError):
            _provider(emu).fetch(grid, SensorSpec(), WINDOW)
        (east, west), = [emu.bounds_log[-1]]
        assert 179.97 < east[0] < 180.0 == east[2] and west[0] == -180.0 < west[2] < -179.99
    with GEEEmulator() as emu:
        patch = _provider(emu).fetch(grid, SensorSpec(), WINDOW)
        assert patch.valid.all() and len(emu.bounds_log[-1]) == 2


def _tiles(n_side, px=112, scale=10):
    return [PixelGrid("EPSG:32631", 500000.0 + px * scale * c, 3450000.0 - px * scale * r, scale, px, px)
            for r in range(n_side) for c in range(n_side)]


def test_split_request_halves_the_members_on_their_own_union_grids():
    tiles = _tiles(2)
    whole = plan_requests(tiles, n_bands=3)[0]
    a, b = split_request(whole, tiles)
    assert sorted(a.members + b.members) == [0, 1, 2, 3] and len(a.members) == len(b.members) == 2
    for half in (a, b):
        assert half.grid == PixelGrid.union(tiles[i] for i in half.members)
        assert half.grid.width * half.grid.height == whole.grid.width * whole.grid.height // 2


@pytest.mark.parametrize("limit, splits, sent", [(2 * 112 * 112, 1, 3), (112 * 112 - 1, 3, 7)])
def test_a_request_earth_engine_gives_up_on_is_split_down_to_single_footprints(limit, splits, sent):
    tiles = _tiles(2)
    plan = plan_requests(tiles, n_bands=3)
    assert len(plan) == 1 and len(plan[0].members) == 4
    with GEEEmulator() as clean:
        expected = fetch_coalesced(_provider(clean), tiles, plan, SensorSpec(), WINDOW)
    with GEEEmulator(work_limit_px=limit) as emu:
        p = _provider(emu)
        got = fetch_coalesced(p, tiles, plan, SensorSpec(), WINDOW)
    s = p.stats.as_dict()
    assert s["split"] == splits and s["sent"] == sent == emu.stats.as_dict()["compute_pixels"]
    assert s["planned"] - s["split"] + s["reused"] == 4
    assert s["failed"] == (0 if splits == 1 else 4)  # split requests are not failed ones; failed singles are
    if splits == 1:  # halves fit: every footprint served, pixels identical
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g.data, e.data)
    else:  # even one footprint is too much: recorded failed, each on its own
        assert all(isinstance(g, ComputationTooLargeError) for g in got)
        assert "Computation timed out" in str(got[0])


def test_preflight_is_one_cheap_request_and_remembered():
    with GEEEmulator() as emu:
        p = _provider(emu)
        p.preflight(SensorSpec(), WINDOW)
        p.preflight(SensorSpec(scale_m=20), WINDOW)  # same collection and bands: not asked again
        s = emu.stats.as_dict()
        assert s["value_compute"] == 1 and s["compute_pixels"] == 0
        assert p.stats.as_dict()["preflight"] == 1 and p.stats.as_dict()["sent"] == 0
        # An empty window is no imagery at fetch time, never a configuration error.
        p.preflight(SensorSpec(), EMPTY)


@pytest.mark.parametrize("sensor, match", [
    (SensorSpec(bands=("B04", "B3", "B2")),
     r"bands=\('B04', 'B3', 'B2'\): 'B04' is not a band of COPERNICUS/S2_SR_HARMONIZED \(its bands: B1, B2, "),
    (SensorSpec(bands=("B4", "B3", "B2", "NIR")), r"'NIR' is not a band"),
    (SensorSpec(collection="COPERNICUS/S2_SR_HARMONISED"),
     r"collection='COPERNICUS/S2_SR_HARMONISED'.*not found.*fix SensorSpec.collection"),
])
def test_preflight_refuses_unknown_bands_and_collections(sensor, match):
    with GEEEmulator() as emu:
        with pytest.raises(ConfigurationError, match=match):
            _provider(emu).preflight(sensor, WINDOW)
        assert emu.stats.as_dict()["compute_pixels"] == 0


def test_preflight_names_a_missing_project_or_bad_key_file_before_any_request(tmp_path):
    with GEEEmulator() as emu:
        with pytest.raises(ConfigurationError, match=r"project=None.*--ee-project.*gee_options\['project'\]"):
            GEEProvider(api_url=emu.url, credentials="anonymous").preflight(SensorSpec())
        key = tmp_path / "key.json"
        key.write_text("not a key")
        with pytest.raises(ConfigurationError, match=r"credentials='.*key.json': expected a readable "
                                                     r"service-account JSON key file.*--credentials"):
            GEEProvider(api_url=emu.url, credentials=str(key), project="p").preflight(SensorSpec())
        assert emu.stats.as_dict()["requests"] == 0


@pytest.fixture
def silent_url():
    """A loopback socket that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []

    def accept():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    server.close()
    for c in accepted:
        c.close()


def test_an_earth_engine_url_that_never_answers_fails_the_preflight_in_its_timeout(silent_url):
    url, accepted = silent_url
    p = GEEProvider(api_url=url, credentials="anonymous", project="p", startup_timeout_s=2.0)
    t0 = time.perf_counter()
    with pytest.raises(ConfigurationError, match=r"api_url='http://127.0.0.1:\d+': Earth Engine did not answer "
                                                 r"at start-up \(tried GET http://127.0.0.1:\d+/\$discovery/rest: no "
                                                 r"answer within 2 s.*--ee-url"):
        p.preflight(SensorSpec())
    elapsed = time.perf_counter() - t0
    # One attempt: before, the client retried the discovery fetch 5 times with backoff.
    assert elapsed < 6 and len(accepted) == 1
    assert GEEProvider().startup_timeout_s == GEEProvider().connect_timeout_s == 20.0


def test_a_port_nobody_listens_on_fails_the_preflight_at_once():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(ConfigurationError, match=rf"127.0.0.1:{port}.*did not answer.*Connection refused"):
        GEEProvider(api_url=f"http://127.0.0.1:{port}", credentials="anonymous", project="p").preflight(SensorSpec())
    assert time.perf_counter() - t0 < 5


def _ee_config():
    from ee import _state

    st = _state._state
    if st is None:
        return None
    return (st.initialized, st.cloud_api_base_url, st.max_retries, st.http_transport, st.cloud_api_user_project)


@pytest.mark.parametrize("initialised", [False, True])
def test_the_emulator_backend_gives_ee_back_as_it_found_it(emulator, initialised):
    from rsembed_dask.providers.backends import open_backend

    ee.Reset()
    if initialised:  # a user's own session, say against another Earth Engine
        ee.Initialize(credentials=__import__("google.auth.credentials").auth.credentials.AnonymousCredentials(),
                      url=emulator.url, project="users-own")
        ee.data.setMaxRetries(3)
    else:
        ee.data.setMaxRetries(4)
    before = _ee_config()
    with open_backend("emulator") as provider:
        provider.fetch(GRID, SensorSpec(), WINDOW)
        assert _ee_config() != before
    assert _ee_config() == before
    if initialised:  # the user's session still works
        assert "B4" in ee.ImageCollection("COPERNICUS/S2_SR_HARMONIZED").first().bandNames().getInfo()
    else:
        assert not ee.data.is_initialized()
    ee.Reset()


def test_a_garbled_answer_to_the_preflight_is_retried_then_transient():
    from rsembed_dask.errors import TransientProviderError
    from rsembed_dask.emulator import Faults

    with GEEEmulator(faults=Faults(p_malformed=1.0)) as emu:
        with pytest.raises(TransientProviderError, match="malformed answer.*not JSON.*gave up after 7 attempts"):
            _provider(emu).preflight(SensorSpec())
        assert emu.stats.as_dict()["value_compute"] == 7
