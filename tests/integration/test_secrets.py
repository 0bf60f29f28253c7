"""A fake service-account key: its secrets never reach logs, errors, cube attributes or the dashboard."""

import json
import logging
import urllib.request

import geopandas as gpd
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from distributed import Client

from rsembed_dask.cluster.local import local_cluster
from rsembed_dask.store.cube import FAILED, OK, Cube
from rsembed_dask.errors import ConfigurationError
from rsembed_dask.geo.grid import point_grid
from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.providers import GEEProvider
from rsembed_dask.specs import ModelSpec, SensorSpec, TemporalSpec
from rsembed_dask.emulator import GEEEmulator

from ..conftest import FAST_RETRY

WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")


def _fake_key(tmp_path, token_uri):
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    key = {"type": "service_account", "project_id": "secret-project", "private_key_id": "f00dfeedsecretkeyid0123456789",
           "private_key": pem, "client_email": "bot@secret-project.iam.gserviceaccount.com",
           "client_id": "1234567890", "token_uri": token_uri}
    path = tmp_path / "key.json"
    path.write_text(json.dumps(key))
    secrets = [key["private_key_id"], pem.splitlines()[1], pem.splitlines()[5]]
    return path, secrets


def _assert_clean(text, secrets, where):
    for s in secrets:
        assert s not in text, f"a secret leaked into {where}"


@pytest.mark.timeout(300)
def test_service_account_secrets_do_not_leak(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with GEEEmulator(seed=0) as emu:
        emu.fail_next(1, "400")
        key, secrets = _fake_key(tmp_path, emu.url + "/token")
        provider = GEEProvider(api_url=emu.url, project="secret-project", credentials=str(key), retry=FAST_RETRY)
        assert str(key) not in repr(provider)
        cluster = local_cluster(n_gpus=0, n_fetch_workers=1, processes=False, dashboard_address="127.0.0.1:0")
        with Client(cluster) as c:
            gdf = gpd.GeoDataFrame(geometry=gpd.points_from_xy(np.linspace(3, 3.2, 12), np.full(12, 31.1)),
                                   crs="EPSG:4326")
            ds = run_campaign(gdf, tmp_path / "c.zarr", scales=[10], temporal=WINDOW,
                              model=ModelSpec("test-tiny", device="cpu"), backend=provider, client=c,
                              chunk_size=4, progress=True)
            pages = []
            for page in ("/status", "/info/main/workers.html", "/info/main/logs.html", "/json/index.html"):
                base = c.dashboard_link.rsplit("/", 1)[0]
                with urllib.request.urlopen(base + page, timeout=30) as r:
                    pages.append(r.read().decode(errors="replace"))
            worker_logs = json.dumps(c.get_worker_logs(), default=str)
            scheduler_logs = json.dumps(c.get_scheduler_logs(), default=str)
        cluster.close()
        assert emu.stats.as_dict()["token_requests"] >= 1  # the key really was used
    status = ds.status.values
    assert (status == OK).any() and (status == FAILED).any()  # errors were recorded too
    cube = Cube.open(tmp_path / "c.zarr")
    _assert_clean(json.dumps(cube.attrs, default=str), secrets, "cube attributes")
    _assert_clean(" ".join(map(str, ds.error.values.ravel())), secrets, "cube error reasons")
    _assert_clean(caplog.text, secrets, "logs")
    _assert_clean(worker_logs + scheduler_logs, secrets, "worker/scheduler logs")
    for p in pages:
        _assert_clean(p, secrets, "the dashboard")


def test_unreadable_key_file_error_names_the_file_not_its_content(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\\nSECRETSECRET\\n"}')
    with GEEEmulator() as emu:
        p = GEEProvider(api_url=emu.url, project="x", credentials=str(bad), retry=FAST_RETRY)
        with pytest.raises(ConfigurationError) as info:  # a bad key file stops a campaign at once
            p.fetch(point_grid(3, 31, 320, 10), SensorSpec(), WINDOW)
    assert "broken.json" in str(info.value) and "SECRETSECRET" not in str(info.value)
