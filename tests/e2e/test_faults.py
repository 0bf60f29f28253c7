"""Faults survived (429, 5xx, latency spikes), permanent failures recorded and retried on request."""

import geopandas as gpd
import numpy as np
import pytest

from rsembed_dask.store.cube import FAILED, OK, Cube, open_cube
from rsembed_dask.store.verify import verify_cube
from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.providers import GEEProvider
from rsembed_dask.specs import ModelSpec, SensorSpec, TemporalSpec
from rsembed_dask.emulator import Faults, GEEEmulator

from ..conftest import FAST_RETRY, dask_processes

WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")
TINY = ModelSpec("test-tiny", device="cpu")


def _gdf(n=24):
    rng = np.random.default_rng(5)
    return gpd.GeoDataFrame(geometry=gpd.points_from_xy(3 + rng.uniform(0, .3, n), 31 + rng.uniform(0, .3, n)),
                            crs="EPSG:4326")


def _run(emu, out, client, **kw):
    provider = GEEProvider(api_url=emu.url, credentials="anonymous", project="faults", retry=FAST_RETRY)
    return run_campaign(_gdf(), out, scales=[10, 20], temporal=WINDOW, model=TINY, backend=provider,
                        client=client, chunk_size=4, progress=False, **kw)


@pytest.mark.timeout(300)
def test_quota_and_server_errors_do_not_change_the_cube(tmp_path):
    # Real processes: a `dask scheduler`, a GPU=1 worker and a fetch-only worker.
    with dask_processes(n_gpu=1, n_fetch=1) as (addr, _):
        with GEEEmulator(seed=0) as clean_emu:
            clean = _run(clean_emu, tmp_path / "clean.zarr", addr)
        faults = Faults(p_429=0.2, p_5xx=0.05, p_spike=0.1, spike_s=0.2, retry_after_s=0.01)
        with GEEEmulator(seed=0, faults=faults) as emu:
            faulty = _run(emu, tmp_path / "faulty.zarr", addr)
            injected = emu.stats.as_dict()
    assert injected["injected_429"] > 0 and injected["injected_5xx"] > 0
    assert (faulty.status.values == OK).all()
    np.testing.assert_array_equal(faulty.embedding.values, clean.embedding.values)
    account = Cube.open(tmp_path / "faulty.zarr").attrs["request_account"]
    assert account["retried"] == injected["injected_429"] + injected["injected_5xx"]
    # Coalesced: each planned request is sent once, plus its retries; every sample is served.
    assert account["sent"] == account["planned"] + account["retried"] and account["failed"] == 0
    assert account["planned"] + account["reused"] == 48 and account["planned"] < 48
    assert verify_cube(tmp_path / "faulty.zarr") == []


def test_permanent_errors_are_failed_with_reason_and_retried_on_request(tmp_path, client):
    out = tmp_path / "c.zarr"
    with GEEEmulator(seed=0, faults=Faults(p_400=0.15)) as emu:
        first = _run(emu, out, client)
    status = first.status.values
    failed = status == FAILED
    assert failed.any() and (status[~failed] == OK).all()
    assert all("Injected permanent failure" in e for e in first.error.values[failed])
    assert np.isnan(first.embedding.values[failed]).all()
    assert verify_cube(out) == []
    units_with_failures = {(i // 4, j) for i, j in zip(*np.nonzero(failed))}
    with GEEEmulator(seed=0) as emu:
        again = _run(emu, out, client).status.values  # a plain resume leaves failed units alone
        assert emu.stats.as_dict()["compute_pixels"] == 0
        rerun = []
        fixed = _run(emu, out, client, retry_failed=True, on_unit=lambda s: rerun.append((s.unit.chunk, s.unit.scale_index)))
    np.testing.assert_array_equal(again, np.where(failed, FAILED, OK))
    assert set(rerun) == units_with_failures
    assert (fixed.status.values == OK).all() and verify_cube(out) == []


def test_verify_finds_an_ok_cell_without_data(tmp_path, client):
    out = tmp_path / "v.zarr"
    with GEEEmulator(seed=0) as emu:
        _run(emu, out, client)
    import zarr

    zarr.open_array(str(out / "embedding"), mode="r+")[3, 1, :] = np.nan
    problems = verify_cube(out)
    assert len(problems) == 1 and "ok cells with a non-finite embedding" in problems[0]


def test_cluster_wide_request_bound(tmp_path, client):
    with GEEEmulator(seed=0, latency_s=0.05) as emu:
        ds = _run(emu, tmp_path / "s.zarr", client, ee_concurrency=2, fetch_threads=8, max_in_flight=6)
        peak = emu.stats.as_dict()["concurrent_peak"]
    assert (ds.status.values == OK).all()
    assert 1 <= peak <= 2


@pytest.mark.timeout(300)
def test_malformed_answers_fail_the_unit_then_retry_failed_from_the_cli(tmp_path, capsys):
    from rsembed_dask.cli.commands import main

    samples = tmp_path / "s.geojson"
    _gdf(8).to_file(samples)
    out = tmp_path / "m.zarr"
    args = ["run", str(samples), "--out", str(out), "--scales", "10", "--start", WINDOW.start, "--end", WINDOW.end,
            "--model", "test-tiny", "--chunk-size", "4", "--no-progress", "--backend", "gee",
            "--ee-project", "p", "--credentials", "anonymous", "--max-retries", "1"]
    with dask_processes(n_gpu=1) as (addr, _), GEEEmulator(seed=0) as bad:
        # The configuration check passes (and is remembered in this process); then every answer is garbled.
        GEEProvider(api_url=bad.url, credentials="anonymous", project="p").preflight(SensorSpec())
        bad.faults = Faults(p_malformed=1.0)
        assert main(args + ["--scheduler", addr, "--ee-url", bad.url]) == 1  # failed samples: exit 1
        cube = Cube.open(out)
        assert (cube.status_array() == FAILED).all()
        reasons = set(open_cube(out).error.values.ravel().tolist())
        assert len(reasons) == 1 and "malformed answer" in reasons.pop()
        with GEEEmulator(seed=0) as good:
            assert main(args + ["--scheduler", addr, "--ee-url", good.url]) == 1  # plain resume: nothing to do
            assert good.stats.as_dict()["compute_pixels"] == 0
            assert main(args + ["--scheduler", addr, "--ee-url", good.url, "--retry-failed"]) == 0
            account = Cube.open(out).attrs["runs"][-1]["requests"]  # this run's
            assert good.stats.as_dict()["compute_pixels"] == account["sent"] == account["planned"]
            assert account["planned"] + account["reused"] == 8  # every sample served, coalesced
    assert (Cube.open(out).status_array() == OK).all()
    capsys.readouterr()
    assert main(["inspect", str(out), "--verify"]) == 0
    assert "verify: consistent" in capsys.readouterr().out


def _account_run(emu, out, client, forced, **kw):
    provider = GEEProvider(api_url=emu.url, credentials="anonymous", project="faults", retry=FAST_RETRY)
    emu.fail_next(forced, "5xx")  # computePixels only: the configuration check is not under test here
    ds = run_campaign(_gdf(8), out, scales=[10], temporal=WINDOW, model=TINY, backend=provider, client=client,
                      chunk_size=4, progress=False, max_in_flight=1, fetch_threads=1, **kw)
    return ds, Cube.open(out).attrs


@pytest.mark.parametrize("forced, unit_fails", [(FAST_RETRY.max_retries + 1, False),
                                                (3 * (FAST_RETRY.max_retries + 1), True)])
def test_the_account_counts_every_attempt_even_those_dask_re_ran(tmp_path, client, forced, unit_fails):
    """5xx past the provider's retries fail a fetch attempt; Dask re-runs it (twice at most). Every
    attempt's requests are in the account, also those of attempts that raised and of a unit that failed."""
    with GEEEmulator(seed=0) as emu:
        ds, attrs = _account_run(emu, tmp_path / "a.zarr", client, forced)
        injected = emu.stats.as_dict()
    account = attrs["request_account"]
    assert injected["injected_5xx"] == forced
    assert account["sent"] == injected["compute_pixels"] > 8
    assert account["retried"] + account["failed"] == forced
    assert account["failed"] >= 1 and account["no_imagery"] == 0
    failed_cells = int((ds.status.values == FAILED).sum())
    if unit_fails:
        assert failed_cells >= 4 and attrs["last_run"]["units_failed"] >= 1
    else:
        assert failed_cells == 0


def test_requests_earth_engine_gives_up_on_are_split_and_the_cube_is_unchanged(tmp_path, client):
    # 12 neighbours 1.5 km apart (2.24 km footprints): one unit, one coalesced request when allowed.
    pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy([3.0 + 0.016 * (i % 4) for i in range(12)],
                                                       [31.2 + 0.0135 * (i // 4) for i in range(12)]),
                           crs="EPSG:4326")
    kw = dict(scales=[10], temporal=WINDOW, model=TINY, client=client, chunk_size=12, progress=False)
    with GEEEmulator(seed=0) as emu:
        clean = run_campaign(pts, tmp_path / "clean.zarr", backend=GEEProvider(
            api_url=emu.url, credentials="anonymous", project="p", retry=FAST_RETRY), **kw)
    with GEEEmulator(seed=0, work_limit_px=100_000) as emu:  # a single 224 x 224 chip is 50 176 px
        split = run_campaign(pts, tmp_path / "split.zarr", backend=GEEProvider(
            api_url=emu.url, credentials="anonymous", project="p", retry=FAST_RETRY), **kw)
        injected = emu.stats.as_dict()
    account = Cube.open(tmp_path / "split.zarr").attrs["request_account"]
    assert injected["too_much_work"] >= 1 and account["split"] == injected["too_much_work"]
    assert account["sent"] == injected["compute_pixels"] and account["retried"] == account["failed"] == 0
    assert account["planned"] - account["split"] + account["reused"] == 12
    assert (split.status.values == OK).all()
    np.testing.assert_array_equal(split.embedding.values, clean.embedding.values)
