"""A computed embedding is never lost: re-runs keep ok cells, fetch only the rest, survive a crash.

One cube, four runs on the in-process cluster against the emulator:
1. a first run where Earth Engine refuses 3 of 64 requests (3 cells failed);
2. ``retry_failed`` while Earth Engine answers 503 to everything: the unit fails for good
   (``mark_unit_failed``) yet its 61 ok cells keep their data; the summary names the reason;
3. ``retry_failed`` in a subprocess killed between the unit's data write and its status write;
4. ``retry_failed`` again: requests for the 3 cells only, and the cube is complete.
"""

import os
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pytest

from rsembed_dask.store.cube import FAILED, OK, Cube, open_cube
from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.campaign.progress import CampaignReport
from rsembed_dask.providers import GEEProvider
from rsembed_dask.providers.retry import RetryPolicy
from rsembed_dask.specs import ModelSpec, TemporalSpec
from rsembed_dask.emulator import Faults, GEEEmulator

from ..conftest import FAST_RETRY

WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")
TINY = ModelSpec("test-tiny", device="cpu")
N = 64
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _gdf():
    rng = np.random.default_rng(21)
    return gpd.GeoDataFrame({"site": [f"s{i:03d}" for i in range(N)]},
                            geometry=gpd.points_from_xy(3 + rng.uniform(0, .3, N), 31 + rng.uniform(0, .3, N)),
                            crs="EPSG:4326")


def _run(emu, out, client, retry=FAST_RETRY, **kw):
    provider = GEEProvider(api_url=emu.url, credentials="anonymous", project="never-lose", retry=retry)
    return run_campaign(_gdf(), out, scales=[10], temporal=WINDOW, model=TINY, backend=provider, client=client,
                        chunk_size=N, id_column="site", **{"progress": False, **kw})


_RETRY_KILLED_BEFORE_STATUS = """
import sys

from distributed import Client

from rsembed_dask.cluster.local import local_cluster
from tests.e2e.test_never_lose import _run
from tests.kill_at_status import die_before_status_writes


class Emu:
    url = sys.argv[2]


die_before_status_writes()
cluster = local_cluster(n_gpus=0, n_fetch_workers=1, processes=False, dashboard_address=None)
with Client(cluster) as client:
    _run(Emu, sys.argv[1], client, retry_failed=True)
print("not killed", flush=True)
"""


@pytest.mark.timeout(300)
def test_retry_keeps_ok_cells_fetches_only_the_rest_and_survives_a_crash(tmp_path, client, capsys):
    out = tmp_path / "c.zarr"
    with GEEEmulator(seed=0) as emu:
        clean = _run(emu, tmp_path / "clean.zarr", client)

    # 1. Three requests refused: three cells failed, 61 ok.
    with GEEEmulator(seed=0) as emu:
        emu.fail_next(3, "400")
        first = _run(emu, out, client, coalesce=False)
    status = first.status.values[:, 0]
    failed = status == FAILED
    assert failed.sum() == 3 and (status[~failed] == OK).all()
    kept = first.embedding.values[~failed, 0]
    np.testing.assert_allclose(kept, clean.embedding.values[~failed, 0], rtol=1e-5, atol=1e-6)

    # 2. Retried while Earth Engine answers 503 past every retry: the unit is marked failed,
    #    but only its 3 failed cells were fetched and its 61 ok cells keep everything.
    with GEEEmulator(seed=0) as emu:
        # 503 on every computePixels (the preflight's value:compute is answered): 3 cells x 2 attempts.
        emu.fail_next(3 * 2, "5xx", endpoint="computePixels")
        capsys.readouterr()
        second = _run(emu, out, client, retry=RetryPolicy(max_retries=1, base_s=0.001, cap_s=0.01),
                      coalesce=False, retry_failed=True, unit_retries=0, progress=True)
        assert emu.stats.as_dict()["compute_pixels"] == 3 * 2  # 3 cells, each sent and retried once
    np.testing.assert_array_equal(second.status.values[:, 0], status)
    np.testing.assert_array_equal(second.embedding.values[~failed, 0], kept)
    for name in ("input_res_m", "valid_fraction"):
        np.testing.assert_array_equal(second[name].values[~failed, 0], first[name].values[~failed, 0])
    assert (second.error.values[~failed, 0] == "").all()
    assert all(e.startswith("TransientProviderError: HTTP 503") for e in second.error.values[failed, 0])
    summary = capsys.readouterr().out
    assert "\nfailed 3: 3 x TransientProviderError: HTTP 503" in summary and "--retry-failed" in summary
    last = Cube.open(out).attrs["last_run"]
    assert list(last["failure_reasons"].values()) == [3] and last["units_failed"] == 1

    # 3. A retry killed between the unit's data write and its status write.
    with GEEEmulator(seed=0) as emu:
        proc = subprocess.run([sys.executable, "-c", _RETRY_KILLED_BEFORE_STATUS, str(out), emu.url], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=240)
    assert proc.returncode == -9 and "killed before writing status/c/0/0" in proc.stdout, proc.stderr[-3000:]
    third = open_cube(out)
    st, emb = third.status.values, third.embedding.values
    assert not np.isnan(emb[st == OK]).any()  # no ok cell over NaN
    np.testing.assert_array_equal(st[:, 0], status)
    np.testing.assert_array_equal(emb[~failed, 0], kept)

    # 4. The rerun sends requests for the 3 failed cells only, and finishes the cube.
    with GEEEmulator(seed=0) as emu:
        done = _run(emu, out, client, coalesce=False, retry_failed=True)
        assert emu.stats.as_dict()["compute_pixels"] == 3
    assert (done.status.values == OK).all()
    np.testing.assert_array_equal(done.embedding.values[~failed, 0], kept)
    np.testing.assert_allclose(done.embedding.values, clean.embedding.values, rtol=1e-5, atol=1e-6)
    account = Cube.open(out).attrs["runs"][-1]["requests"]  # this run's
    assert account["planned"] == account["sent"] == 3
    assert Cube.open(out).attrs["last_run"]["samples_embedded"] == 3


def test_summary_names_the_most_common_failure_reasons():
    report = CampaignReport(path="c.zarr", units_total=10, units_todo=10)
    report.finish({"ok": 70, "failed": 30, "pending": 0, "no_data": 0},
                  {"lost its worker 4 times": 4, "TransientProviderError: HTTP 503: " + "x" * 300: 20,
                   "PermanentProviderError: HTTP 403": 3, "QuotaError: HTTP 429": 2, "malformed answer": 1})
    line = report.summary().splitlines()[-1]
    assert line.startswith("failed 30: 20 x TransientProviderError: HTTP 503: xxx")
    assert "...; 4 x lost its worker 4 times; 3 x PermanentProviderError: HTTP 403; 3 x 2 other reason(s)" in line
    assert "--retry-failed" in line and len(line) < 400
    assert report.as_dict()["failure_reasons"]["lost its worker 4 times"] == 4
    clean = CampaignReport(path="c.zarr", units_total=1, units_todo=1)
    clean.finish({"ok": 5, "failed": 0})
    assert "\n" not in clean.summary() and clean.failure_line() == ""


def test_fetch_only_some_cells_plans_requests_for_those_only(provider, emu):
    from rsembed_dask.store.cube import PENDING
    from rsembed_dask.errors import SpecError
    from rsembed_dask.providers.coalesce import plan_requests
    from rsembed_dask.campaign.tasks import fetch_unit

    from ..integration.test_coalesced_fetch import SPEC, _unit

    table, unit, grids = _unit(extra_far=True)  # 16 neighbours (one request), a far point, another zone
    full = fetch_unit(provider, table, unit, SPEC, threads=4)
    # The table is in Hilbert order: find the point alone in its zone and the far one by their grids.
    crs = [g.crs for g in grids]
    other_zone = next(i for i, c in enumerate(crs) if crs.count(c) == 1)
    same = [i for i in range(len(grids)) if i != other_zone]
    middle = np.median([grids[i].x0 for i in same])
    far = max(same, key=lambda i: abs(grids[i].x0 - middle))
    dense = [i for i in same if i != far]
    only = sorted([dense[3], dense[7], other_zone])  # two neighbours and the point in another zone
    emu.stats.reset()
    part = fetch_unit(provider, table, unit, SPEC, threads=4, only=only)
    expected = plan_requests([grids[i] for i in only], 3)
    assert len(expected) == 2 and emu.stats.as_dict()["compute_pixels"] == 2
    assert part.requests["planned"] == 2 and part.requests["reused"] == 1
    assert part.status.tolist() == [OK if i in only else PENDING for i in range(len(table))]
    for i in range(len(table)):
        if i in only:
            np.testing.assert_array_equal(part.images[i], full.images[i])
            assert part.valid_fraction[i] == full.valid_fraction[i]
        else:
            assert part.images[i] is None and part.errors[i] == ""
    emu.stats.reset()
    nothing = fetch_unit(provider, table, unit, SPEC, only=[])
    assert emu.stats.as_dict()["compute_pixels"] == 0 and (nothing.status == PENDING).all()
    with pytest.raises(SpecError, match="only"):
        fetch_unit(provider, table, unit, SPEC, only=[len(table)])
