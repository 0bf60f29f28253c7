"""Configuration errors stop a campaign before any work; a campaign without imagery says so."""

import os
import subprocess
import sys
import time

import geopandas as gpd
import numpy as np
import pytest

from rsembed_dask.api import get_embedding
from rsembed_dask.cli.commands import main
from rsembed_dask.store.cube import NO_DATA, PENDING, Cube
from rsembed_dask.errors import ConfigurationError, NoImageryWarning
from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.providers.gee import GEEProvider
from rsembed_dask.specs import ModelSpec, PointBuffer, SensorSpec, TemporalSpec
from rsembed_dask.emulator import GEEEmulator

from ..conftest import FAST_RETRY

WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")
FUTURE = TemporalSpec.range("2031-01-01", "2031-02-01")  # no scene yet
TINY = ModelSpec("test-tiny", device="cpu")


def _points(n=8):
    rng = np.random.default_rng(2)
    return gpd.GeoDataFrame(geometry=gpd.points_from_xy(3 + rng.uniform(0, .3, n), 31 + rng.uniform(0, .3, n)),
                            crs="EPSG:4326")


class _NoCluster:
    """A ``client=`` callable that records being called (a cluster would start)."""

    calls = 0

    def __call__(self):
        self.calls += 1
        raise AssertionError("a cluster was started")


@pytest.mark.parametrize("sensor, match", [
    (SensorSpec(bands=("B04", "B3", "B2")), "'B04' is not a band of COPERNICUS/S2_SR_HARMONIZED"),
    (SensorSpec(collection="COPERNICUS/S2_SR_HARMONISED"), "collection='COPERNICUS/S2_SR_HARMONISED'"),
])
def test_a_configuration_error_stops_the_campaign_before_any_cluster(tmp_path, sensor, match):
    no_cluster = _NoCluster()
    with GEEEmulator() as emu:
        provider = GEEProvider(api_url=emu.url, credentials="anonymous", project="p", retry=FAST_RETRY)
        with pytest.raises(ConfigurationError, match=match):
            run_campaign(_points(), tmp_path / "c.zarr", scales=[10], temporal=WINDOW, sensor=sensor,
                         model=TINY, backend=provider, client=no_cluster, progress=False)
        assert emu.stats.as_dict()["compute_pixels"] == 0
    assert no_cluster.calls == 0
    assert not (tmp_path / "c.zarr").exists()  # checked before the cube is created: nothing to rerun against


def test_get_embedding_raises_the_same_configuration_error():
    with GEEEmulator() as emu:
        provider = GEEProvider(api_url=emu.url, credentials="anonymous", project="p", retry=FAST_RETRY)
        with pytest.raises(ConfigurationError, match="'B04' is not a band of COPERNICUS/S2_SR_HARMONIZED"):
            get_embedding(spatial=PointBuffer(3.0, 31.2, 320), temporal=WINDOW, backend=provider, model=TINY,
                          sensor=SensorSpec(bands=("B04", "B3", "B2")))
        assert emu.stats.as_dict()["compute_pixels"] == 0


def test_a_configuration_error_on_a_worker_stops_the_run_not_recorded_per_sample(tmp_path, client):
    with GEEEmulator() as emu:
        provider = GEEProvider(api_url=emu.url, credentials="anonymous", project="p", retry=FAST_RETRY)
        provider.preflight(SensorSpec())  # passes (and is remembered); then the project is refused
        emu.auth = "403"
        with pytest.raises(ConfigurationError, match="HTTP 403: Project p is not registered to use Earth Engine"):
            run_campaign(_points(), tmp_path / "w.zarr", scales=[10], temporal=WINDOW, model=TINY,
                         backend=provider, client=client, chunk_size=4, progress=False)
    status = Cube.open(tmp_path / "w.zarr").status_array()
    assert (status == PENDING).all()


def test_a_campaign_where_no_sample_found_imagery_warns(tmp_path, client, provider):
    with pytest.warns(NoImageryWarning, match=r"no sample found imagery: all 8 finished cells are no_data for "
                                              r"COPERNICUS/S2_SR_HARMONIZED in \[2031-01-01, 2031-02-01\).*check the "
                                              r"temporal window"):
        ds = run_campaign(_points(), tmp_path / "n.zarr", scales=[10], temporal=FUTURE, model=TINY,
                          backend=provider, client=client, chunk_size=4, progress=False)
    assert (ds.status.values == NO_DATA).all()
    account = Cube.open(tmp_path / "n.zarr").attrs["request_account"]
    assert account["no_imagery"] == account["sent"] > 0 and account["failed"] == 0


def test_cli_run_without_imagery_exits_non_zero_with_a_warning(tmp_path, client, capsys):
    samples = tmp_path / "s.geojson"
    _points().to_file(samples)
    rc = main(["run", str(samples), "--out", str(tmp_path / "f.zarr"), "--scales", "10", "--start", FUTURE.start,
               "--end", FUTURE.end, "--model", "test-tiny", "--backend", "emulator", "--chunk-size", "4",
               "--no-progress", "--scheduler", client.scheduler.address])
    err = capsys.readouterr().err
    assert rc == 1
    assert "rsembed-dask run: warning: no sample found imagery" in err and "check the temporal window" in err


@pytest.mark.timeout(120)
@pytest.mark.parametrize("flags, names", [
    ([], ["--credentials", "--ee-project"]),
    (["--credentials", "anonymous"], ["--ee-project"]),
])
def test_cli_run_names_a_missing_flag_in_seconds_without_loading_the_model(tmp_path, flags, names):
    samples = tmp_path / "s.geojson"
    _points().to_file(samples)
    env = dict(os.environ, HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), NO_GCE_CHECK="true",
               PYTHONPATH=os.getcwd())
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    script = ("import sys; from rsembed_dask.cli.commands import main; rc = main(sys.argv[1:]); "
              "print('loaded:', 'torch' in sys.modules, 'rshf' in sys.modules); sys.exit(rc)")
    with GEEEmulator() as emu:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", script, "run", str(samples), "--out", str(tmp_path / "c.zarr"),
                               "--scales", "10", "--start", WINDOW.start, "--end", WINDOW.end, "--model", "test-tiny",
                               "--backend", "gee", "--ee-url", emu.url, "--no-progress", *flags],
                              capture_output=True, text=True, env=env, timeout=100)
        elapsed = time.perf_counter() - t0
        assert emu.stats.as_dict()["compute_pixels"] == 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and elapsed < 60, (proc.returncode, elapsed, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("rsembed-dask run: error: "), proc.stderr
    assert all(name in lines[0] for name in names) and "Traceback" not in proc.stderr
    assert "loaded: False False" in proc.stdout and "dashboard" not in proc.stdout.lower()
