"""Specs: validation, JSON round-trip, Dask tokens, env knobs."""

import datetime as dt
import math

import dask.base
import numpy as np
import pytest

from rsembed_dask.errors import SpecError
from rsembed_dask.specs import (
    BBox,
    CampaignSpec,
    ModelSpec,
    OutputSpec,
    PointBuffer,
    SensorSpec,
    TemporalSpec,
    env_defaults,
)

BAD = [
    # (constructor, field named in the message, value shown)
    (lambda: PointBuffer(0, 91, 100), "PointBuffer.lat", "91"),
    (lambda: PointBuffer(0, -90.5, 100), "PointBuffer.lat", "-90.5"),
    (lambda: PointBuffer(181, 0, 100), "PointBuffer.lon", "181"),
    (lambda: PointBuffer(math.nan, 0, 100), "PointBuffer.lon", "nan"),
    (lambda: PointBuffer(0, 0, -5), "PointBuffer.buffer_m", "-5"),
    (lambda: PointBuffer(0, 0, 0), "PointBuffer.buffer_m", "0"),
    (lambda: PointBuffer(0, 0, math.inf), "PointBuffer.buffer_m", "inf"),
    (lambda: PointBuffer("3", 0, 10), "PointBuffer.lon", "'3'"),
    (lambda: PointBuffer(True, 0, 10), "PointBuffer.lon", "True"),
    (lambda: BBox(1, 0, 0, 1), "BBox.maxlon", "0"),
    (lambda: BBox(0, 1, 1, 1), "BBox.maxlat", "1"),
    (lambda: BBox(0, 0, 1, math.nan), "BBox.maxlat", "nan"),
    (lambda: TemporalSpec("2022-02-01", "2022-01-01"), "TemporalSpec.end", "2022-01-01"),
    (lambda: TemporalSpec("2022-01-01", "2022-01-01"), "TemporalSpec.end", "2022-01-01"),
    (lambda: TemporalSpec("yesterday", "2022-01-01"), "TemporalSpec.start", "yesterday"),
    (lambda: TemporalSpec.year(1900), "TemporalSpec.year", "1900"),
    (lambda: SensorSpec(composite="mean"), "SensorSpec.composite", "mean"),
    (lambda: SensorSpec(bands=()), "SensorSpec.bands", "()"),
    (lambda: SensorSpec(bands=("B4", "B4")), "SensorSpec.bands", "B4"),
    (lambda: SensorSpec(bands="B4"), "SensorSpec.bands", "B4"),
    (lambda: SensorSpec(scale_m=0), "SensorSpec.scale_m", "0"),
    (lambda: SensorSpec(scale_m=math.nan), "SensorSpec.scale_m", "nan"),
    (lambda: SensorSpec(scale_m=1e9), "SensorSpec.scale_m", "1000000000"),
    (lambda: SensorSpec(cloudy_pct=101), "SensorSpec.cloudy_pct", "101"),
    (lambda: SensorSpec(collection=""), "SensorSpec.collection", "''"),
    (lambda: OutputSpec.pooled("median"), "OutputSpec.pooling", "median"),
    (lambda: OutputSpec("vector"), "OutputSpec.mode", "vector"),
    (lambda: ModelSpec(image_size=0), "ModelSpec.image_size", "0"),
    (lambda: ModelSpec(image_size=224.5), "ModelSpec.image_size", "224.5"),
    (lambda: ModelSpec(batch_size=0), "ModelSpec.batch_size", "0"),
    (lambda: ModelSpec(batch_size="big"), "ModelSpec.batch_size", "big"),
    (lambda: ModelSpec(batch_size=2.5), "ModelSpec.batch_size", "2.5"),
    (lambda: ModelSpec(compile="yes"), "ModelSpec.compile", "yes"),
    (lambda: ModelSpec(device="tpu"), "ModelSpec.device", "tpu"),
    (lambda: ModelSpec(dtype="float16"), "ModelSpec.dtype", "float16"),
    (lambda: ModelSpec(res_reference_m=0), "ModelSpec.res_reference_m", "0"),
    (lambda: ModelSpec(model_id=""), "ModelSpec.model_id", "''"),
    (lambda: CampaignSpec(TemporalSpec.year(2022), scales=[]), "CampaignSpec.scales", "[]"),
    (lambda: CampaignSpec(TemporalSpec.year(2022), scales=[10, -20]), "CampaignSpec.scales", "-20"),
    (lambda: CampaignSpec(TemporalSpec.year(2022), scales=[10, 10]), "CampaignSpec.scales", "10"),
    (lambda: CampaignSpec(TemporalSpec.year(2022), chunk_size=0), "CampaignSpec.chunk_size", "0"),
    (lambda: CampaignSpec("2022"), "CampaignSpec.temporal", "2022"),
]


@pytest.mark.parametrize("make, field, shown", BAD, ids=[b[1] + "=" + b[2] for b in BAD])
def test_bad_values_raise_spec_error_naming_field_and_value(make, field, shown):
    with pytest.raises(SpecError) as info:
        make()
    msg = str(info.value)
    assert field in msg
    assert shown in msg
    assert "expected" in msg
    assert isinstance(info.value, ValueError)


def test_defaults_follow_the_scalemae_rgb_card():
    s = SensorSpec()
    assert s.collection == "COPERNICUS/S2_SR_HARMONIZED"
    assert s.bands == ("B4", "B3", "B2")
    assert (s.scale_m, s.cloudy_pct, s.composite) == (10.0, 30.0, "median")
    assert OutputSpec.pooled() == OutputSpec("pooled", "mean")
    assert OutputSpec.grid().mode == "grid"
    assert ModelSpec().model_id == "MVRL/scalemae-vitlarge-800"
    assert ModelSpec().image_size == 224


def test_temporal_constructors():
    assert TemporalSpec.year(2022) == TemporalSpec("2022-01-01", "2023-01-01")
    t = TemporalSpec.range(dt.date(2021, 6, 1), dt.datetime(2021, 9, 1, 12))
    assert (t.start, t.end) == ("2021-06-01", "2021-09-01")


SPECS = [
    PointBuffer(3.0, 31.2, 1120),
    BBox(2.0, 48.0, 2.5, 48.5),
    TemporalSpec.year(2022),
    SensorSpec(composite="mosaic", cloudy_pct=12.5),
    OutputSpec.grid("max"),
    ModelSpec("test-tiny", image_size=64, batch_size=4, dtype="bfloat16"),
    ModelSpec("test-tiny", dtype="auto", compile=True),
    CampaignSpec(TemporalSpec.year(2022), model=ModelSpec("test-tiny"), scales=[10, 20], buffer_m=500),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: type(s).__name__)
def test_json_round_trip_and_stable_token(spec):
    again = type(spec).from_json(spec.to_json())
    assert again == spec
    assert dask.base.tokenize(again) == dask.base.tokenize(spec)
    assert hash(again) == hash(spec)


def test_tokens_differ_when_values_differ():
    assert dask.base.tokenize(SensorSpec()) != dask.base.tokenize(SensorSpec(scale_m=20))


def test_specs_are_frozen():
    with pytest.raises(AttributeError):
        SensorSpec().scale_m = 20  # type: ignore[misc]


def test_numpy_numbers_are_accepted_and_normalised():
    p = PointBuffer(np.float32(3.5), np.int64(10), np.float64(100))
    assert type(p.lon) is float and p.lat == 10.0


def test_unknown_json_field_is_refused():
    with pytest.raises(SpecError, match="SensorSpec.colour"):
        SensorSpec.from_dict({"colour": "red"})


def test_env_knobs_feed_defaults_once():
    env = {"RS_EMBED_SCALEMAE_ID": "test-small", "RS_EMBED_SCALEMAE_IMG": "112",
           "RS_EMBED_SCALEMAE_BATCH_SIZE": "4", "RS_EMBED_SCALEMAE_FETCH_WORKERS": "3"}
    m = ModelSpec.from_env(env)
    assert (m.model_id, m.image_size, m.batch_size) == ("test-small", 112, 4)
    assert env_defaults(env)["fetch_workers"] == 3
    assert ModelSpec.from_env({}).batch_size is None
    assert ModelSpec.from_env({}).resolved_batch_size("cpu") == 8
    assert ModelSpec.from_env({}).resolved_batch_size("cuda") == 32
    assert ModelSpec.from_env(env, image_size=64).image_size == 64
    with pytest.raises(SpecError, match="RS_EMBED_SCALEMAE_IMG"):
        env_defaults({"RS_EMBED_SCALEMAE_IMG": "big"})


def test_campaign_identity_ignores_runtime_fields():
    base = CampaignSpec(TemporalSpec.year(2022), model=ModelSpec("test-tiny"))
    faster = base.replace(model=ModelSpec("test-tiny", batch_size=64, device="cpu"))
    assert base.spec_hash() == faster.spec_hash()
    assert base.spec_hash() != base.replace(scales=(10.0,)).spec_hash()
    assert base.footprint_buffer_m(20) == 224 * 20 / 2
    assert base.replace(buffer_m=300).footprint_buffer_m(20) == 300


def test_batch_size_auto_and_resolution():
    assert ModelSpec(batch_size="auto").batch_size is None and ModelSpec(batch_size=" AUTO ").batch_size is None
    auto, given = ModelSpec(), ModelSpec(batch_size=12)
    assert auto.resolved_batch_size("cpu") == 8 and auto.resolved_batch_size("cpu", fits=200) == 8
    assert auto.resolved_batch_size("cuda", fits=200) == 200 and auto.resolved_batch_size("cuda") == 32
    assert given.resolved_batch_size("cuda", fits=200) == 12 and given.resolved_batch_size("cpu") == 12
    assert ModelSpec(batch_size=np.int64(7)).batch_size == 7


def test_auto_batch_size_maths():
    from rsembed_dask.specs import AUTO_BATCH_MEMORY_FRACTION, MAX_AUTO_BATCH, auto_batch_size

    mib, gib = 2**20, 2**30
    assert AUTO_BATCH_MEMORY_FRACTION == 0.5 and MAX_AUTO_BATCH == 256
    assert auto_batch_size(140 * gib, 21 * mib) == 256  # an H200: capped
    assert auto_batch_size(4 * gib, 21 * mib) == 96  # 2 GiB / 21 MiB = 97.5 -> 97 -> a multiple of 8
    assert auto_batch_size(100 * mib, 21 * mib) == 2  # fewer than 8: as many as fit
    assert auto_batch_size(10 * mib, 21 * mib) == 1 and auto_batch_size(-5, 21 * mib) == 1  # at least one
    assert auto_batch_size(4 * gib, 21 * mib, cap=64) == 64
    assert auto_batch_size(4 * gib, 21 * mib, fraction=1.0) == 192
    for kwargs, field in [({"per_image_bytes": 0}, "per_image_bytes"), ({"fraction": 0}, "fraction"),
                          ({"cap": 0}, "cap")]:
        args = {"free_bytes": gib, "per_image_bytes": mib, **kwargs}
        with pytest.raises(SpecError, match=field):
            auto_batch_size(args.pop("free_bytes"), args.pop("per_image_bytes"), **args)


def test_dtype_auto_resolves_per_device():
    assert ModelSpec().dtype == "float32"  # the pinned default (tests/data/golden)
    auto = ModelSpec(dtype="auto")
    assert auto.resolved_dtype("cuda") == "bfloat16" and auto.resolved_dtype("cpu") == "float32"
    assert auto.resolved_dtype("mps") == "float32"
    assert ModelSpec(dtype="float32").resolved_dtype("cuda") == "float32"
    assert ModelSpec(dtype="bfloat16").resolved_dtype("cpu") == "bfloat16"


def test_compile_is_a_runtime_field_left_out_when_off():
    base = CampaignSpec(TemporalSpec.year(2022), model=ModelSpec("test-tiny"))
    compiled = base.replace(model=ModelSpec("test-tiny", compile=True))
    assert "compile" not in ModelSpec().to_dict() and ModelSpec(compile=True).to_dict()["compile"] is True
    assert base.spec_hash() == compiled.spec_hash()
    assert CampaignSpec.from_json(compiled.to_json()).model.compile is True
    assert base.spec_hash() != base.replace(model=ModelSpec("test-tiny", dtype="auto")).spec_hash()
