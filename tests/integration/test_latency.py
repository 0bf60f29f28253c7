"""Planning against the emulator: measured latency, and planned requests equal to those a unit sends."""

import json
import math

import pytest

from rsembed_dask.cli.commands import main
from rsembed_dask.errors import SpecError
from rsembed_dask.plan.latency import measure_latency
from rsembed_dask.plan.estimate import estimate_campaign
from rsembed_dask.plan.requests import unit_requests
from rsembed_dask.providers.limits import BYTES_PER_SAMPLE
from rsembed_dask.sampling import work_units
from rsembed_dask.specs import CampaignSpec, ModelSpec
from rsembed_dask.sampling.tiling import tile_aoi
from rsembed_dask.campaign.tasks import fetch_unit

from ..unit.test_planning import SEAM, WINDOW


def test_measured_latency_on_the_emulator(provider, emu):
    table = tile_aoi((12.0, 45.0, 12.1, 45.05), scales=[40]).tables[0]
    lat = measure_latency(provider, table, n_bands=3, temporal=WINDOW, chunk_size=2, samples=2)
    assert lat.source == "measured" and lat.single_s > 0 and lat.coalesced_s > 0
    assert emu.stats.as_dict()["compute_pixels"] == 2 * 2  # one coalesced and one single per sampled unit
    with pytest.raises(SpecError, match="n_bands"):
        measure_latency(provider, table, n_bands=13, temporal=WINDOW)


@pytest.mark.timeout(120)
def test_cli_measure_latency_with_the_emulator_backend(capsys):
    rc = main(["plan", "12.0,45.0,12.1,45.05", "--scales", "40", "--model", "test-tiny", "--measure-latency",
               "--backend", "emulator", "--start", "2022-01-01", "--end", "2022-02-01",
               "--latency-samples", "2", "--json"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info["latency"]["source"] == "measured"
    assert info["latency"]["single_s"] > 0 and info["latency"]["coalesced_s"] > 0
    t = info["total"]["fetch_time"]["coalesced"]
    assert t["latency_s"] == info["latency"]["coalesced_s"]
    assert main(["plan", "12.0,45.0,12.1,45.05", "--measure-latency", "--backend", "local:/nope",
                 "--embed-dim", "8"]) == 2
    assert "--backend" in capsys.readouterr().err


def test_planned_requests_are_what_fetch_unit_sends(provider, emu):
    """Through the real ee client on the emulator: per unit, computePixels calls == the plan."""
    tiling = tile_aoi(SEAM, scales=[20])
    table = tiling.tables[0]
    chunk = 2  # not a whole block: units straddle blocks, and one the zone seam
    spec = CampaignSpec(temporal=WINDOW, model=ModelSpec("test-tiny", device="cpu"), scales=(20.0,),
                        chunk_size=chunk, buffer_m=None)
    planned = unit_requests(table, chunk, 3)
    units = work_units(len(table), (20.0,), chunk)
    assert len(units) == len(planned.requests) >= 3
    assert any(len(set(table.epsg[u.start:u.stop].tolist())) == 2 for u in units)
    for unit, n_req in zip(units, planned.requests.tolist()):
        emu.stats.reset()
        px = fetch_unit(provider, table.slice(unit.start, unit.stop), unit, spec, threads=2)
        assert emu.stats.as_dict()["compute_pixels"] == n_req == px.requests["sent"]
    single = estimate_campaign(tiling, chunk_size=chunk, embed_dim=8).scales[0]
    assert single.requests_coalesced == planned.requests.sum() and single.requests_single == len(table)
    assert math.isclose(single.bytes_coalesced, planned.pixels.sum() * 3 * BYTES_PER_SAMPLE)
