"""``plan`` counts date windows: per window as before, all windows multiplied; ``--json``
reports the latencies the text uses."""

from __future__ import annotations

import json
import re

import pytest

from rsembed_dask.cli import main
from rsembed_dask.plan import estimate_campaign
from rsembed_dask.plan.report import format_plan
from rsembed_dask.specs import TemporalSpec

AOI = (10.0, 45.0, 10.5, 45.3)
BBOX = "10,45,10.5,45.3"


def test_all_windows_multiply_one_window():
    one = estimate_campaign(AOI, scales=[10, 40], embed_dim=64)
    six = estimate_campaign(AOI, scales=[10, 40], embed_dim=64, windows=TemporalSpec.years(2019, 2024))
    assert one.n_windows == 1 and six.n_windows == 6 and len(six.windows) == 6
    assert [s.as_dict() for s in six.scales] == [s.as_dict() for s in one.scales]  # per window: the same
    a = six.all_windows()
    for k in ("footprints", "requests_coalesced", "requests_single", "bytes_coalesced", "cube_bytes"):
        assert a[k] == 6 * one.as_dict()["total"][k], k
    t1, t6 = one.fetch_time(True), six.all_windows_fetch_time(True)
    assert t6.requests == 6 * t1.requests and t6.seconds >= t1.seconds
    assert one.all_windows()["footprints"] == one.footprints
    with pytest.raises(Exception, match="windows"):
        estimate_campaign(AOI, scales=[40], embed_dim=64, windows=[TemporalSpec.year(2024), TemporalSpec.year(2019)])


def test_text_lists_every_window_and_the_totals():
    plan = estimate_campaign(AOI, scales=[10, 40], embed_dim=64, windows=TemporalSpec.seasons(2023))
    text = format_plan(plan)
    assert "4 date windows (end exclusive): 2023-01-01..2023-04-01" in text
    assert "per window (each of the 4 windows fetches the same footprints):" in text
    per_window = estimate_campaign(AOI, scales=[10, 40], embed_dim=64).as_dict()["total"]
    line = rf"^  2023-\d\d-01\.\.20\d\d-\d\d-01: 307 footprints, {per_window['requests_coalesced']:,} requests"
    assert len(re.findall(line, text, re.M)) == 4
    assert re.search(r"^  footprints\s+1,228$", text, re.M)
    single = estimate_campaign(AOI, scales=[10, 40], embed_dim=64)
    assert "date window" not in format_plan(single) and "all 1 windows" not in format_plan(single)


def test_json_latency_is_what_the_text_uses(capsys):
    assert main(["plan", BBOX, "--scales", "10,40", "--embed-dim", "64", "--no-progress"]) == 0
    text = capsys.readouterr().out
    single, coalesced = map(float, re.search(r"\(([\d.]+) s single, ([\d.]+) s coalesced\)", text).groups())
    assert main(["plan", BBOX, "--scales", "10,40", "--embed-dim", "64", "--no-progress", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    lat = info["latency"]
    assert lat["source"] == "assumed" and lat["single_s"] != lat["coalesced_s"]
    assert round(lat["single_s"], 2) == single and round(lat["coalesced_s"], 2) == coalesced
    assert info["windows"] == [] and info["all_windows"]["windows"] == 1


def test_cli_plan_takes_the_window_flags(capsys):
    assert main(["plan", BBOX, "--scales", "40", "--embed-dim", "64", "--no-progress", "--json",
                 "--years", "2019-2024"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["windows"]) == 6 and info["windows"][0] == {"start": "2019-01-01", "end": "2020-01-01"}
    assert info["all_windows"]["footprints"] == 6 * info["total"]["footprints"]
    assert main(["plan", BBOX, "--scales", "40", "--embed-dim", "64", "--no-progress",
                 "--window", "2023-01-01:2023-07-01", "--window", "2023-06-01:2024-01-01"]) == 2
    assert "--allow-overlap" in capsys.readouterr().err
    assert main(["plan", BBOX, "--scales", "40", "--embed-dim", "64", "--no-progress", "--allow-overlap",
                 "--window", "2023-01-01:2023-07-01", "--window", "2023-06-01:2024-01-01"]) == 0
    assert "2 date windows" in capsys.readouterr().out
