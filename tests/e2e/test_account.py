"""The request account covers the cube's whole life: runs interrupted (SIGTERM) or killed (SIGKILL) still count."""

import signal
import subprocess
import time

import pytest

from rsembed_dask.emulator import GEEEmulator
from rsembed_dask.store.cube import OK, Cube
from rsembed_dask.store.info import format_store_info, store_info

from ..conftest import dask_processes
from .test_resilience import _cli, _complete_units, _gdf


def _start_then(signum, cmd, out, *, units, min_s=0.0):
    """Start the CLI, send ``signum`` once ``units`` units are complete and ``min_s`` seconds passed."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = t0 + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if ((out / "zarr.json").exists() and len(_complete_units(out)) >= units
                and time.monotonic() - t0 >= min_s):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before the signal: make it slower"
    proc.send_signal(signum)
    return proc.wait(60)


@pytest.mark.timeout(600)
def test_interrupted_and_killed_runs_add_up_with_the_run_that_finishes(tmp_path):
    samples = tmp_path / "samples.geojson"
    _gdf(96).to_file(samples)
    out = tmp_path / "cube.zarr"
    with GEEEmulator(seed=0, latency_s=0.3) as emu, dask_processes(n_gpu=1, n_fetch=1) as (addr, _):
        cmd = _cli(samples, out, addr, emu.url) + ["--ee-concurrency", "2"]
        assert _start_then(signal.SIGTERM, cmd, out, units=2) == 143
        sent_1 = emu.stats.as_dict()["compute_pixels"]
        # SIGKILL after the account was written at least once (every 10 s).
        assert _start_then(signal.SIGKILL, cmd, out, units=len(_complete_units(out)) + 2, min_s=14) == -9
        time.sleep(3)  # its tasks still running on the cluster finish or are dropped
        sent_2 = emu.stats.as_dict()["compute_pixels"] - sent_1
        rc = subprocess.run(cmd, timeout=300, stdout=subprocess.DEVNULL).returncode
        sent_3 = emu.stats.as_dict()["compute_pixels"] - sent_1 - sent_2
    assert rc == 0
    attrs = Cube.open(out).attrs
    runs = attrs["runs"]
    assert [r["ended"] for r in runs] == ["interrupted", "killed", "done"]
    sent = [r["requests"].get("sent", 0) for r in runs]
    assert sent[0] == sent_1 and sent[2] == sent_3  # exact: written in a finally
    assert 0 < sent[1] <= sent_2  # at most the last 10 s are lost with a SIGKILL
    assert attrs["request_account"]["sent"] == sum(sent)
    assert attrs["request_account"]["preflight"] == 3
    assert all(r["workers"] and r["start"] <= r["end"] for r in runs)
    assert (Cube.open(out).status_array() == OK).all()
    text = format_store_info(store_info(out))
    assert "runs: 3:" in text and "killed" in text and "last run's GPU workers:" in text
