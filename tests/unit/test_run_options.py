"""RunOptions: the runtime knobs of run_campaign, validated once; keywords users call still work."""

from __future__ import annotations

import pytest

from rsembed_dask import SpecError, TemporalSpec, run_campaign
from rsembed_dask.campaign import RunOptions


def test_defaults_and_replace():
    opts = RunOptions()
    assert (opts.fetch_threads, opts.ee_concurrency, opts.gpu_wait_s, opts.retry_failed) == (8, 40, 300.0, False)
    assert opts.replace(retry_failed=True, max_in_flight=3) == RunOptions(retry_failed=True, max_in_flight=3)


@pytest.mark.parametrize("field, value", [("fetch_threads", 0), ("ee_concurrency", 1.5), ("unit_retries", -1),
                                          ("gpu_wait_s", -1), ("retry_failed", "yes"), ("on_unit", 3),
                                          ("max_in_flight", 0)])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(SpecError, match=f"RunOptions.{field}="):
        RunOptions(**{field: value})


def test_unknown_knob_is_a_type_error_listing_the_knobs():
    with pytest.raises(TypeError, match=r"\['retry'\].*retry_failed"):
        RunOptions().replace(retry=True)


def test_run_campaign_checks_its_knobs_before_touching_anything(tmp_path):
    out = tmp_path / "c.zarr"
    with pytest.raises(TypeError, match="retry"):
        run_campaign(None, out, temporal=TemporalSpec.year(2022), retry=True)
    with pytest.raises(SpecError, match="RunOptions.ee_concurrency"):
        run_campaign(None, out, temporal=TemporalSpec.year(2022), options=RunOptions(), ee_concurrency=0)
    assert not out.exists()
