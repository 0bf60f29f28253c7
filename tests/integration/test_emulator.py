"""The emulator itself: determinism, faults, the command line."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from rsembed_dask.geo.grid import point_grid
from rsembed_dask.providers.gee import GEEProvider
from rsembed_dask.specs import SensorSpec, TemporalSpec
from rsembed_dask.emulator import Faults, GEEEmulator
from rsembed_dask.emulator.synthetic_s2 import SyntheticS2World

from ..conftest import FAST_RETRY

WINDOW = TemporalSpec.range("2022-01-01", "2022-04-01")


def _fetch(url, seed_grid=point_grid(3.0, 31.2, 320, 10)):
    p = GEEProvider(api_url=url, credentials="anonymous", project="p", retry=FAST_RETRY)
    return p.fetch(seed_grid, SensorSpec(), WINDOW).data, p


def test_same_seed_same_pixels_other_seed_other_pixels():
    with GEEEmulator(seed=7) as a:
        pa, _ = _fetch(a.url)
    with GEEEmulator(seed=7) as b:
        pb, _ = _fetch(b.url)
    with GEEEmulator(seed=8) as c:
        pc, _ = _fetch(c.url)
    np.testing.assert_array_equal(pa, pb)
    assert not np.array_equal(pa, pc)


def test_scene_calendar_and_cloud_cover_are_deterministic():
    w1, w2 = SyntheticS2World(3), SyntheticS2World(3)
    s1 = w1.scenes_between("2022-06-01", "2022-07-01")
    assert [s.date.isoformat() for s in s1] == [s.date.isoformat() for s in w2.scenes_between("2022-06-01", "2022-07-01")]
    assert all("2022-06-01" <= s.date.isoformat() < "2022-07-01" for s in s1)
    assert len({s.cloudy_pct for s in s1}) == len(s1)


def test_random_faults_and_latency_are_injected_and_counted():
    faults = Faults(latency_s=0.02, p_429=0.3, p_5xx=0.2)
    with GEEEmulator(seed=1, faults=faults) as emu:
        t0 = time.perf_counter()
        data, p = _fetch(emu.url)
        for _ in range(5):
            np.testing.assert_array_equal(p.fetch(point_grid(3.0, 31.2, 320, 10), SensorSpec(), WINDOW).data, data)
        s = emu.stats.as_dict()
        assert s["injected_429"] + s["injected_5xx"] == p.stats.as_dict()["retried"] > 0
        assert s["compute_pixels"] == p.stats.as_dict()["sent"]
        assert time.perf_counter() - t0 >= 0.02 * s["compute_pixels"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_command_line_serves_the_emulator():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rsembed_dask.cli", "emulator", "--port", str(port),
                             "--latency-s", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert f"127.0.0.1:{port}" in proc.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        doc = json.load(urllib.request.urlopen(f"{url}/$discovery/rest?version=v1alpha", timeout=10))
        assert doc["rootUrl"] == url + "/"
        data, _ = _fetch(url)
        assert data.shape == (3, 64, 64)
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_crop_of_a_larger_request_is_bit_identical_to_the_crop_requested_alone(provider):
    """What request coalescing relies on: a pixel's value does not depend on the request around it."""
    from rsembed_dask.geo.grid import PixelGrid

    rng = np.random.default_rng(3)
    temporal = TemporalSpec.range("2022-01-01", "2022-04-01")
    for lon, lat, scale, how in [(3.0, 45.0, 10, "median"), (-60.0, -33.0, 20, "mosaic"),
                                 (150.0, 70.0, 40, "median")]:
        sensor = SensorSpec(scale_m=scale, composite=how)
        g = point_grid(lon, lat, 112 * scale, scale)
        big = PixelGrid(g.crs, g.x0 - scale * int(rng.integers(0, 300)),
                        g.y0 + scale * int(rng.integers(0, 300)), scale, 500, 450)
        whole = provider.fetch(big, sensor, temporal)
        for _ in range(3):
            r, c = int(rng.integers(0, 450 - 100)), int(rng.integers(0, 500 - 120))
            sub = big.crop(r, c, 100, 120)
            alone = provider.fetch(sub, sensor, temporal)
            assert np.array_equal(alone.data, whole.crop_to(sub).data), (lon, lat, scale, r, c)


def test_forced_faults_target_one_endpoint(emu, provider):
    from rsembed_dask.errors import TransientProviderError

    emu.fail_next(2, "5xx")  # computePixels by default: a configuration check does not use them up
    provider.preflight(SensorSpec(bands=("B4", "B3")))
    provider.fetch(point_grid(3.0, 31.2, 320, 10), SensorSpec(), WINDOW)
    assert emu.stats.as_dict()["injected_5xx"] == 2 and provider.stats.as_dict()["retried"] == 2
    emu.fail_next(FAST_RETRY.max_retries + 1, "5xx", endpoint="value:compute")
    with pytest.raises(TransientProviderError, match="HTTP 503.*gave up after 7 attempts"):
        provider.preflight(SensorSpec(bands=("B8",)))
    with pytest.raises(ValueError, match="endpoint"):
        emu.fail_next(1, "5xx", endpoint="algorithms")
