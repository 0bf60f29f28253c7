"""The rs-embed-compatible single-ROI API and the ``embed`` CLI, on the emulator."""

import json

import numpy as np
import pytest

from rsembed_dask.api import get_embedding, get_embeddings_batch
from rsembed_dask.cli.commands import main
from rsembed_dask.errors import SpecError
from rsembed_dask.geo.grid import point_grid
from rsembed_dask.embed.model import ScaleMAEEmbedder
from rsembed_dask.specs import BBox, ModelSpec, OutputSpec, PointBuffer, SensorSpec, TemporalSpec

WINDOW = TemporalSpec.range("2022-01-01", "2022-04-01")


@pytest.fixture(scope="module")
def tiny():
    return ScaleMAEEmbedder(ModelSpec("test-tiny", device="cpu"))


def test_pooled_embedding_is_the_model_on_the_fetched_patch(provider, tiny):
    spatial = PointBuffer(3.0, 31.2, 1120)
    emb = get_embedding("scalemae_rgb", spatial=spatial, temporal=WINDOW, backend=provider, model=tiny)
    patch = provider.fetch(point_grid(3.0, 31.2, 1120, 10), SensorSpec(), WINDOW)
    direct = tiny.embed([patch.data], 10.0).vectors[0]
    np.testing.assert_allclose(emb.data, direct, rtol=1e-5, atol=1e-6)
    assert emb.data.shape == (64,)
    m = emb.meta
    assert m["tokens_kind"] == "pooled" and m["used_patch_size"] == 16
    assert m["used_scale_m"] == 10.0 and m["input_res_m"] == 10.0
    assert m["model_id"] == "test-tiny" and m["image_size"] == 224 and m["rshf_version"]
    assert m["temporal"] == {"start": "2022-01-01", "end": "2022-04-01"}
    assert m["fetch_grid"]["crs"] == "EPSG:32631" and m["fetch_grid"]["shape"] == [224, 224]
    assert m["fetch_grid"]["pixel_size_m"] == 10.0


def test_grid_output_is_a_dataarray_and_pools_to_the_vector(provider, tiny):
    spatial = PointBuffer(3.0, 31.2, 1120)
    grid = get_embedding("scalemae_rgb", spatial=spatial, temporal=WINDOW, backend=provider,
                         model=tiny, output=OutputSpec.grid())
    pooled = get_embedding("scalemae_rgb", spatial=spatial, temporal=WINDOW, backend=provider, model=tiny)
    assert grid.data.dims == ("feature", "y", "x") and grid.data.shape == (64, 14, 14)
    np.testing.assert_allclose(grid.data.mean(("y", "x")).values, pooled.data, rtol=1e-4, atol=1e-5)


def test_non_square_bbox_crops_the_token_grid(provider, tiny):
    wide = BBox(3.0, 31.2, 3.04, 31.21)  # ~3.8 km x 1.1 km
    emb = get_embedding("scalemae_rgb", spatial=wide, temporal=WINDOW, backend=provider, model=tiny,
                        output=OutputSpec.grid(), sensor=SensorSpec(scale_m=20))
    d, h, w = emb.data.shape
    assert w == 14 and 3 <= h <= 6
    top, left, bottom, right = emb.meta["roi"]
    assert left == pytest.approx(0, abs=0.02) and right == pytest.approx(1, abs=0.02)
    assert bottom - top == pytest.approx(0.29, abs=0.03)


def test_batch_equals_singles(provider, tiny):
    spatials = [PointBuffer(3.0, 31.2, 1120), PointBuffer(10.5, 60.0, 1120), PointBuffer(-70.1, -33.4, 640)]
    batch = get_embeddings_batch(spatials=spatials, temporal=WINDOW, backend=provider, model=tiny)
    for sp, emb in zip(spatials, batch):
        one = get_embedding(spatial=sp, temporal=WINDOW, backend=provider, model=tiny)
        np.testing.assert_allclose(emb.data, one.data, rtol=1e-5, atol=1e-6)
        assert emb.meta["fetch_grid"] == one.meta["fetch_grid"]
    assert batch[2].meta["fetch_grid"]["crs"] == "EPSG:32719"


def test_input_chw_skips_fetching(provider, emu, tiny):
    chw = provider.fetch(point_grid(3.0, 31.2, 1120, 10), SensorSpec(), WINDOW).data
    emu.stats.reset()
    emb = get_embedding(spatial=PointBuffer(3.0, 31.2, 1120), temporal=WINDOW, input_chw=chw, model=tiny,
                        backend=provider)
    assert emu.stats.as_dict()["compute_pixels"] == 0
    np.testing.assert_allclose(emb.data, tiny.embed([chw], 10.0).vectors[0], rtol=1e-5, atol=1e-6)


def test_input_chw_with_a_non_square_bbox_embeds_the_whole_chip(tiny):
    """As rs-embed 0.3.1: the caller's chip is embedded whole, not cropped to our own footprint's ROI."""
    wide = BBox(3.0, 31.2, 3.04, 31.21)  # ~3.8 km x 1.1 km: its own footprint would crop rows
    rng = np.random.default_rng(5)
    chw = rng.integers(0, 10000, size=(3, 100, 300), dtype=np.uint16)
    grid = get_embedding(spatial=wide, temporal=WINDOW, input_chw=chw, model=tiny, output=OutputSpec.grid(),
                         sensor=SensorSpec(scale_m=20))
    pooled = get_embedding(spatial=wide, temporal=WINDOW, input_chw=chw, model=tiny,
                           sensor=SensorSpec(scale_m=20))
    direct = tiny.embed([chw], 20.0, output=OutputSpec.grid())
    assert grid.data.shape == (64, 14, 14)  # the full token grid
    np.testing.assert_array_equal(grid.data.values, direct.grids[0])
    np.testing.assert_array_equal(pooled.data, direct.vectors[0])
    np.testing.assert_allclose(pooled.data, direct.grids[0].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    for emb in (grid, pooled):
        assert emb.meta["input_res_m"] == pytest.approx(20.0 * 100 / 224)  # from the chip's own H, W
        assert emb.meta["roi"] == [0.0, 0.0, 1.0, 1.0] and emb.meta["fetch_grid"] is None
        assert emb.meta["input_chw_shape"] == [3, 100, 300] and emb.meta["valid_fraction"] == 1.0


@pytest.mark.parametrize("bad, what", [
    (np.zeros((224, 224, 3), np.uint16), "HWC instead of CHW"),
    (np.zeros((4, 64, 64), np.uint16), "four bands"),
    (np.zeros((3, 64, 64), bool), "bool dtype"),
    (np.full((3, 64, 64), np.nan, np.float32), "all NaN"),
    (np.full((3, 64, 64), -5.0, np.float32), "negative reflectance"),
    (np.full((3, 64), 100, np.uint16), "2-D"),
])
def test_bad_input_chw_is_refused(tiny, bad, what):
    with pytest.raises(SpecError, match="input_chw"):
        get_embedding(spatial=PointBuffer(3.0, 31.2, 320), temporal=WINDOW, input_chw=bad, model=tiny)


@pytest.mark.parametrize("kwargs, field", [
    ({"spatial": (3.0, 31.2)}, "spatial"),
    ({"model": 3}, "model"),
    ({"temporal": ("2022-01-01", "2022-02-01")}, "temporal"),
    ({"backend": "s3://bucket"}, "backend"),
])
def test_bad_arguments_name_the_field(tiny, kwargs, field):
    args = {"spatial": PointBuffer(3.0, 31.2, 320), "temporal": WINDOW, "model": tiny, "backend": "gee"}
    args.update(kwargs)
    with pytest.raises(SpecError, match=field):
        get_embedding("scalemae_rgb", **args)


def test_out_of_range_scale_is_refused():
    with pytest.raises(SpecError, match="scale_m"):
        SensorSpec(scale_m=-10)


def test_cli_embed_json_on_the_emulator(capsys):
    rc = main(["embed", "--lon", "3", "--lat", "31.2", "--start", "2022-01-01", "--end", "2022-04-01",
               "--backend", "emulator", "--model", "test-tiny", "--scale-m", "20", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["shape"] == [64] and len(out["embedding"]) == 64  # the embedding itself, not a summary
    assert out["summary"]["head"] == [round(v, 6) for v in out["embedding"][:8]]
    assert out["meta"]["used_scale_m"] == 20.0 and out["meta"]["fetch_grid"]["shape"] == [112, 112]


def test_cli_reports_bad_input_with_exit_code_2(capsys):
    rc = main(["embed", "--lon", "3", "--lat", "95", "--start", "2022-01-01", "--end", "2022-04-01",
               "--backend", "emulator", "--model", "test-tiny"])
    assert rc == 2
    assert "lat" in capsys.readouterr().err


def test_batch_of_neighbouring_rois_shares_requests_with_identical_embeddings(emu, provider, tiny):
    # 12 points 1.5 km apart (footprints of 2.24 km overlap) and one far away.
    spatials = [PointBuffer(3.0 + 0.016 * (i % 4), 31.2 + 0.0135 * (i // 4), 1120) for i in range(12)]
    spatials.append(PointBuffer(3.6, 31.6, 1120))
    coalesced = get_embeddings_batch(spatials=spatials, temporal=WINDOW, backend=provider, model=tiny)
    sent_coalesced = emu.stats.as_dict()["compute_pixels"]
    emu.stats.reset()
    single = get_embeddings_batch(spatials=spatials, temporal=WINDOW, backend=provider, model=tiny,
                                  coalesce=False)
    assert emu.stats.as_dict()["compute_pixels"] == len(spatials) > sent_coalesced >= 2
    for a, b in zip(coalesced, single):
        np.testing.assert_array_equal(a.data, b.data)
        assert a.meta["fetch_grid"] == b.meta["fetch_grid"] and a.meta["valid_fraction"] == b.meta["valid_fraction"]
