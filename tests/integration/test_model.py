"""ScaleMAE loading, preprocessing and embedding (test-tiny weights; ViT-L only when slow)."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from rsembed_dask.errors import ModelError, SpecError
from rsembed_dask.embed.model import ScaleMAEEmbedder, roi_token_slice
from rsembed_dask.embed.preprocess import IMAGENET_MEAN, IMAGENET_STD, check_chw, effective_gsd_m, preprocess
from rsembed_dask.specs import ModelSpec, OutputSpec
from rsembed_dask.embed.weights import import_rshf_scalemae, load_scalemae, model_info

S = 64  # image size for most tests: a 4 x 4 token grid with patch 16
G = S // 16


def chips(n, size=S, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 10000, size=(3, size, size), dtype=np.uint16) for _ in range(n)]


def state_hash(module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def tiny():
    return ScaleMAEEmbedder(ModelSpec("test-tiny", image_size=S, device="cpu", batch_size=4))


def test_test_configs_info_without_weights():
    info = model_info(ModelSpec("test-small"))
    assert (info.embed_dim, info.depth, info.patch_size, info.image_size, info.source) == (384, 12, 16, 224, "test")
    assert info.rshf_version == "0.2.2"


def test_loaded_model_is_eval_and_matches_info(tiny):
    assert tiny.info.embed_dim == 64 and tiny.info.depth == 2 and tiny.device.type == "cpu"
    assert not tiny.wrapper.training and not tiny.backbone.training
    assert len(tiny.backbone.blocks) == 2


def test_weights_are_deterministic_across_processes_and_leave_global_rng_alone():
    before = torch.random.get_rng_state()
    wrapper, _ = load_scalemae(ModelSpec("test-tiny"))
    assert torch.equal(before, torch.random.get_rng_state())
    code = ("import hashlib; from rsembed_dask.specs import ModelSpec; from rsembed_dask.embed.weights import load_scalemae\n"
            "w, _ = load_scalemae(ModelSpec('test-tiny')); h = hashlib.sha256()\n"
            "for k, v in sorted(w.state_dict().items()):\n"
            "    h.update(k.encode()); h.update(v.detach().cpu().contiguous().numpy().tobytes())\n"
            "print(h.hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == state_hash(wrapper)
    other, _ = load_scalemae(ModelSpec("test-small"))
    assert state_hash(other) != state_hash(wrapper)


def test_local_dir_from_save_pretrained_matches_in_memory(tiny, tmp_path):
    tiny.wrapper.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    spec = ModelSpec(str(tmp_path), image_size=S, device="cpu")
    info = model_info(spec)
    assert (info.embed_dim, info.depth, info.patch_size, info.source) == (64, 2, 16, "local")
    local = ScaleMAEEmbedder(spec)
    assert state_hash(local.wrapper) == state_hash(tiny.wrapper)
    x = chips(3)
    a = tiny.embed(x, 10.0, output=OutputSpec.grid())
    b = local.embed(x, 10.0, output=OutputSpec.grid())
    np.testing.assert_array_equal(a.vectors, b.vectors)
    for ga, gb in zip(a.grids, b.grids):
        np.testing.assert_array_equal(ga, gb)


def test_hub_id_goes_through_snapshot_download(tiny, tmp_path, monkeypatch):
    import huggingface_hub

    tiny.wrapper.save_pretrained(tmp_path)
    calls = []

    def fake(repo_id, allow_patterns=None, **kw):
        calls.append((repo_id, tuple(allow_patterns)))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert model_info(ModelSpec("some-org/some-model", image_size=S)).source == "hub"
    assert calls[-1] == ("some-org/some-model", ("config.json",))
    wrapper, info = load_scalemae(ModelSpec("some-org/some-model", image_size=S))
    assert info.source == "hub" and "*.safetensors" in calls[-1][1]
    assert state_hash(wrapper) == state_hash(tiny.wrapper)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model_id, words", [
    ("/nonexistent/dir", "not a directory"),
    ("test-nope", "not a known test config"),
    ("bad id!!", "Hugging Face hub"),
    ("no-such-org/no-such-model-xyz", "Hugging Face hub"),
])
def test_unknown_model_id_raises_model_error(model_id, words):
    with pytest.raises(ModelError, match=words) as err:
        model_info(ModelSpec(model_id))
    assert repr(model_id) in str(err.value) and "test-tiny" in str(err.value)


def test_bad_local_weights_raise_model_error(tiny, tmp_path):
    tiny.wrapper.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(b"not safetensors at all")
    with pytest.raises(ModelError, match="unreadable weights"):
        load_scalemae(ModelSpec(str(tmp_path)))
    weights.unlink()
    with pytest.raises(ModelError, match="holds no weights"):
        load_scalemae(ModelSpec(str(tmp_path)))
    weights.write_bytes(good)
    (tmp_path / "config.json").write_text('{"embed_dim": 128, "depth": 2, "num_heads": 2}')
    with pytest.raises(ModelError, match="do not match"):
        load_scalemae(ModelSpec(str(tmp_path)))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read"):
        model_info(ModelSpec(str(tmp_path)))


def test_image_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(SpecError, match="ModelSpec.image_size=100"):
        model_info(ModelSpec("test-tiny", image_size=100))


@pytest.mark.slow
def test_vit_large_config_round_trips_through_save_pretrained(tmp_path):
    ScaleMAE = import_rshf_scalemae()
    config = {"feat_dim": 1024, "fc_dim": 1024, "global_pool": False, "cls_token_flag": True}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        original = ScaleMAE(config=config).eval()
    original.save_pretrained(tmp_path)
    spec = ModelSpec(str(tmp_path), image_size=32)
    info = model_info(spec)
    assert (info.embed_dim, info.depth, info.patch_size) == (1024, 24, 16)
    reloaded, info2 = load_scalemae(spec)
    assert info2 == info
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    res = torch.tensor([10.0, 30.0])
    with torch.inference_mode():
        a = original.model.forward_features(x, input_res=res)
        b = reloaded.model.forward_features(x, input_res=res)
    assert a.shape == (2, 5, 1024)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def pil_reference(raw, size):
    u8 = (np.clip(raw.astype(np.float32) / 10000.0, 0, 1) * 255).astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(u8.transpose(1, 2, 0))).resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0


@pytest.mark.parametrize("h", [48, 100, 224, 300])
def test_preprocess_matches_pil_per_image(h):
    rng = np.random.default_rng(h)
    raw = rng.integers(0, 12000, size=(3, 3, h, h), dtype=np.uint16)
    raw[1] = (np.cumsum(rng.integers(0, 150, size=(3, h, h)), axis=-1) % 11000).astype(np.uint16)
    out = preprocess(raw, 224).numpy()
    assert out.shape == (3, 3, 224, 224) and out.dtype == np.float32
    mean = np.array(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
    ref = np.stack([pil_reference(r, 224) for r in raw])
    diff = np.abs(out * std + mean - ref) * 255  # in uint8 steps
    assert diff.max() < 1e-3  # PIL's resize bit for bit (float rounding of the normalisation only)


def test_preprocess_truncates_and_clips():
    raw = np.array([0, 39, 40, 5000, 10000, 20000, 65535], np.float32)
    x = np.broadcast_to(raw, (1, 3, 7, 7)).copy()
    got = preprocess(x, 7).numpy()[0, 0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    np.testing.assert_allclose(got * 255, [0, 0, 1, 127, 255, 255, 255], atol=1e-4)
    assert torch.equal(preprocess(x, 7), preprocess(torch.from_numpy(x), 7))


def test_effective_gsd():
    assert effective_gsd_m(10, 224, 224, 224) == 10.0
    assert effective_gsd_m(10, 448, 300, 224) == pytest.approx(10 * 300 / 224)


@pytest.mark.parametrize("value", [
    np.zeros((3, 8), np.uint16),
    np.zeros((1, 3, 8, 8), np.uint16),
    np.zeros((4, 8, 8), np.uint16),
    np.zeros((3, 8, 8), bool),
    np.zeros((3, 8, 8), np.complex64),
    np.full((3, 8, 8), np.nan, np.float32),
    np.full((3, 8, 8), -1.0, np.float32),
    np.full((3, 8, 8), 70000, np.int32),
    np.full((3, 8, 8), np.inf, np.float32),
    "not an array",
])
def test_bad_input_chw_is_refused(value):
    with pytest.raises(SpecError, match="input_chw") as err:
        check_chw(value)
    assert "(3, H, W)" in str(err.value)


def test_good_input_chw_passes():
    check_chw(np.zeros((3, 5, 7), np.uint16))
    nan_some = np.full((3, 4, 4), 100.0)
    nan_some[0, 0, 0] = np.nan
    check_chw(nan_some)
    check_chw(torch.zeros(3, 4, 4, dtype=torch.int16))


def test_scale_changes_the_embedding(tiny):
    x = chips(1)
    a = tiny.embed(x, 10.0).vectors
    b = tiny.embed(x, 60.0).vectors
    assert not np.allclose(a, b, atol=1e-4)


def test_mixed_batch_input_res_equals_each_alone(tiny):
    x = chips(3) + chips(1, size=96, seed=5)
    scales = [10.0, 20.0, 60.0, 10.0]
    together = tiny.embed(x, scales, output=OutputSpec.grid())
    np.testing.assert_allclose(together.input_res_m, [10 * 64 / 64, 20.0, 60.0, 10 * 96 / 64])
    for i in range(4):
        alone = tiny.embed([x[i]], scales[i], output=OutputSpec.grid())
        np.testing.assert_allclose(together.vectors[i], alone.vectors[0], atol=1e-5)
        np.testing.assert_allclose(together.grids[i], alone.grids[0], atol=1e-5)


def test_batches_larger_than_batch_size(tiny):
    x = chips(9)
    many = tiny.embed(x, 10.0).vectors
    assert many.shape == (9, 64)
    np.testing.assert_allclose(many[8], tiny.embed(x[8:], 10.0).vectors[0], atol=1e-5)


def test_pooled_is_mean_or_max_of_grid(tiny):
    x = chips(2)
    mean = tiny.embed(x, 10.0, output=OutputSpec.grid("mean"))
    mx = tiny.embed(x, 10.0, output=OutputSpec.grid("max"))
    pooled = tiny.embed(x, 10.0, output=OutputSpec.pooled())
    assert pooled.grids is None and mean.grids[0].shape == (64, G, G)
    for i in range(2):
        np.testing.assert_allclose(mean.vectors[i], mean.grids[i].mean(axis=(1, 2)), atol=1e-5)
        np.testing.assert_allclose(mx.vectors[i], mx.grids[i].max(axis=(1, 2)), atol=1e-6)
    np.testing.assert_array_equal(pooled.vectors, mean.vectors)


def test_cls_token_is_excluded(tiny):
    x = chips(2)
    got = tiny.embed(x, [10.0, 20.0], output=OutputSpec.grid())
    pixels = preprocess(np.stack(x), S)
    with torch.inference_mode():
        tokens = tiny.wrapper.model.forward_features(pixels, input_res=torch.tensor([10.0, 20.0]))
    assert tokens.shape == (2, 1 + G * G, 64)
    np.testing.assert_allclose(got.vectors, tokens[:, 1:].mean(1).numpy(), atol=1e-5)
    assert not np.allclose(got.vectors, tokens.mean(1).numpy(), atol=1e-4)
    grid0 = tokens[0, 1:].reshape(G, G, 64).permute(2, 0, 1).numpy()
    np.testing.assert_allclose(got.grids[0], grid0, atol=1e-5)


def test_res_reference_scales_input_res():
    x = chips(1)
    a = ScaleMAEEmbedder(ModelSpec("test-tiny", image_size=S, device="cpu", res_reference_m=10.0))
    b = ScaleMAEEmbedder(ModelSpec("test-tiny", image_size=S, device="cpu"))
    np.testing.assert_allclose(a.embed(x, 20.0).vectors, b.embed(x, 2.0).vectors, atol=1e-5)


@pytest.mark.parametrize("roi, rows, cols", [
    ((0.0, 0.0, 0.5, 1.0), (0, 2), (0, 4)),
    ((0.1, 0.3, 0.6, 0.9), (0, 3), (1, 4)),
    ((0.5, 0.5, 0.5001, 0.5001), (2, 3), (2, 3)),
])
def test_roi_crops_the_token_grid(tiny, roi, rows, cols):
    assert roi_token_slice(roi, G) == (slice(*rows), slice(*cols))
    x = chips(2)
    full = tiny.embed(x, 10.0, output=OutputSpec.grid())
    for pooling in ("mean", "max"):
        got = tiny.embed(x, 10.0, output=OutputSpec.grid(pooling), roi=[roi, None])
        crop = full.grids[0][:, rows[0]:rows[1], cols[0]:cols[1]]
        assert got.grids[0].shape == (64, rows[1] - rows[0], cols[1] - cols[0])
        np.testing.assert_allclose(got.grids[0], crop, atol=1e-6)
        want = crop.mean(axis=(1, 2)) if pooling == "mean" else crop.max(axis=(1, 2))
        np.testing.assert_allclose(got.vectors[0], want, atol=1e-5)
        assert got.grids[1].shape == (64, G, G)


@pytest.mark.parametrize("roi", [[(0.5, 0, 0.4, 1), None], [(0, 0, 1.2, 1), None], [(0, 0, 1), None], [None]])
def test_bad_roi_is_refused(tiny, roi):
    with pytest.raises(SpecError, match="roi"):
        tiny.embed(chips(2), 10.0, roi=roi)


@pytest.mark.parametrize("scale", [0.0, -10.0, float("nan"), [10.0], "10", True, [10.0, 1e9]])
@pytest.mark.parametrize("n", [1, 2])
def test_bad_scale_is_refused(tiny, scale, n):
    with pytest.raises(SpecError, match="scale_m"):
        tiny.embed(chips(n), scale if not (n == 1 and scale == [10.0]) else [10.0, 10.0])


def test_bad_chip_is_refused_by_embed(tiny):
    with pytest.raises(SpecError, match=r"input_chw\[1\]"):
        tiny.embed([chips(1)[0], np.zeros((4, S, S), np.uint16)], 10.0)


def test_meta_records_provenance(tiny):
    res = tiny.embed(chips(2, size=128), [10.0, 20.0], output=OutputSpec.grid("max"))
    m = res.meta(1)
    assert m == {"tokens_kind": "grid", "used_patch_size": 16, "used_scale_m": 20.0, "input_res_m": 40.0,
                 "model_id": "test-tiny", "image_size": S, "rshf_version": "0.2.2", "pooling": "max",
                 "res_reference_m": 1.0}
    assert res.vectors.dtype == np.float32 and len(res) == 2


def test_bfloat16_is_close_to_float32():
    x = chips(2)
    fp32 = ScaleMAEEmbedder(ModelSpec("test-tiny", image_size=S, device="cpu")).embed(x, 10.0).vectors
    bf16 = ScaleMAEEmbedder(ModelSpec("test-tiny", image_size=S, device="cpu", dtype="bfloat16")).embed(x, 10.0)
    assert bf16.vectors.dtype == np.float32
    cos = (fp32 * bf16.vectors).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16.vectors, axis=1)
    assert cos.min() > 0.99


def test_embed_tensor_is_the_bare_forward(tiny):
    x = preprocess(np.stack(chips(2)), S)
    tokens = tiny.embed_tensor(x, 10.0)
    assert tokens.shape == (2, 1 + G * G, 64) and tokens.dtype == torch.float32
    with pytest.raises(SpecError, match="input_res"):
        tiny.embed_tensor(x, [1.0, 2.0, 3.0])


def test_uint8_images_embed_like_the_raw_chips(tiny):
    """A campaign's fetch ships to_uint8 images; embedding them equals embedding the raw chips."""
    from rsembed_dask.embed.preprocess import to_uint8

    rng = np.random.default_rng(7)
    raw = [rng.integers(0, 12000, (3, h, h), dtype=np.uint16) for h in (32, 48, 32)]
    u8 = [to_uint8(c).numpy() for c in raw]
    a = tiny.embed(raw, [10.0, 10.0, 20.0])
    b = tiny.embed(u8, [10.0, 10.0, 20.0], uint8=True)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    np.testing.assert_array_equal(a.input_res_m, b.input_res_m)
    with pytest.raises(SpecError, match=r"input_chw\[0\].*uint16.*uint8 image"):
        tiny.embed(raw, 10.0, uint8=True)


def test_numpy_uint8_conversion_equals_the_torch_one():
    """Fetch workers convert chips in numpy (no torch there): bit-identical to the torch path."""
    from rsembed_dask.embed.preprocess import to_uint8, to_uint8_array

    every = np.arange(65536, dtype=np.uint16)
    np.testing.assert_array_equal(to_uint8_array(every), to_uint8(torch.from_numpy(every)).numpy())
    rng = np.random.default_rng(3)
    f = rng.uniform(-100, 70000, 200_000).astype(np.float32)
    f[::97], f[::101], f[::103] = np.nan, np.inf, -np.inf
    np.testing.assert_array_equal(to_uint8_array(f), to_uint8(torch.from_numpy(f)).numpy())
    assert to_uint8_array(f).dtype == np.uint8 and not hasattr(to_uint8_array(every), "numpy")


# Throughput options (issue 16): prefetch overlap, precision, batch size, fused attention, compile.

def _mixed_inputs():
    """11 chips in two shapes (three batches of 4 and one of 2 ... at batch 4), with ROIs and scales."""
    x = chips(7, size=128, seed=1) + chips(4, size=S, seed=2)
    scales = [10.0 + i for i in range(11)]
    roi = [None, (0.0, 0.0, 0.5, 0.5), None, None, (0.25, 0.25, 1.0, 0.75), None, None, None, None, None,
           (0.0, 0.5, 1.0, 1.0)]
    return x, scales, roi


@pytest.mark.parametrize("output", [OutputSpec.pooled("mean"), OutputSpec.grid("max")], ids=["pooled", "grid"])
def test_overlap_is_bitwise_the_sequential_path(tiny, output):
    x, scales, roi = _mixed_inputs()
    seq = ScaleMAEEmbedder(ModelSpec("test-tiny", image_size=S, device="cpu", batch_size=4), overlap=False)
    ovl = ScaleMAEEmbedder(ModelSpec("test-tiny", image_size=S, device="cpu", batch_size=4), overlap=True)
    assert not seq.overlap and ovl.overlap and not tiny.overlap  # CPU default: off
    a = seq.embed(x, scales, output=output, roi=roi)
    b = ovl.embed(x, scales, output=output, roi=roi)
    assert a.vectors.tobytes() == b.vectors.tobytes()
    np.testing.assert_array_equal(a.input_res_m, b.input_res_m)
    if output.mode == "grid":
        assert all(ga.tobytes() == gb.tobytes() for ga, gb in zip(a.grids, b.grids, strict=True))


def test_pipelined_prepares_the_next_batch_during_the_current_run():
    """``_pipelined`` on real threads: run(k) blocks until prepare(k + 1) has started."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from rsembed_dask.embed.model import _pipelined

    started = {k: threading.Event() for k in range(4)}
    log = []

    def prepare(b):
        started[b[0]].set()
        log.append(("prepare", b[0], threading.current_thread().name))
        return b[0] * 10

    def run(b, u8):
        assert u8 == b[0] * 10
        if b[0] + 1 in started:
            assert started[b[0] + 1].wait(10), f"batch {b[0] + 1} was not being prepared during run({b[0]})"
        log.append(("run", b[0]))

    with ThreadPoolExecutor(1, thread_name_prefix="test-prefetch") as pool:
        _pipelined([[0], [1], [2], [3]], prepare, run, pool, depth=1)
    assert [e[1] for e in log if e[0] == "run"] == [0, 1, 2, 3]
    assert all(e[2].startswith("test-prefetch") for e in log if e[0] == "prepare")


def test_pipelined_raises_the_first_error_and_leaves_nothing_running():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from rsembed_dask.embed.model import _pipelined

    prepared, gate = [], threading.Event()

    def prepare(b):
        if b[0] == 2:
            gate.wait(10)
            raise SpecError("chip", b[0], "a chip that preprocesses")
        prepared.append(b[0])
        return b[0]

    def run(b, u8):
        if b[0] == 1:
            gate.set()

    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(SpecError, match="chip=2"):
            _pipelined([[0], [1], [2], [3], [4]], prepare, run, pool, depth=1)
        at_raise = sorted(prepared)
        assert at_raise in ([0, 1], [0, 1, 3])  # 3 may have started before its cancel; 4 was never submitted
        assert pool.submit(lambda: sorted(prepared)).result(10) == at_raise  # nothing ran on after the raise

    def bad_run(b, u8):
        raise SpecError("run", b[0], "a forward that works")

    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(SpecError, match="run=0"):
            _pipelined([[0], [1], [2]], lambda b: b[0], bad_run, pool, depth=1)


def test_dtype_auto_is_float32_on_the_cpu(tiny):
    auto = ScaleMAEEmbedder(ModelSpec("test-tiny", image_size=S, device="cpu", batch_size=4, dtype="auto"))
    assert auto.precision == "float32" and tiny.precision == "float32"
    x = chips(3)
    assert auto.embed(x, 10.0).vectors.tobytes() == tiny.embed(x, 10.0).vectors.tobytes()
    bf = ScaleMAEEmbedder(ModelSpec("test-tiny", image_size=S, device="cpu", dtype="bfloat16"))
    assert bf.precision == "bfloat16" and "bfloat16" in repr(bf)


def test_auto_batch_size_on_the_cpu_and_the_given_one_wins():
    assert ScaleMAEEmbedder(ModelSpec("test-tiny", image_size=S, device="cpu")).batch_size == 8
    assert ScaleMAEEmbedder(ModelSpec("test-tiny", image_size=S, device="cpu", batch_size=5)).batch_size == 5


def test_activation_estimate_per_image():
    from rsembed_dask.embed.model import ACTIVATION_SAFETY, activation_bytes_per_image

    # ViT-L/16 at 224 px in bf16, by hand: N = 197 tokens, D = 1024, M = 4096, H = 16.
    n, d, m, h = 197, 1024, 4096, 16
    attention, mlp = 4 * n * d * 2 + h * n * n * 6, n * (d + 2 * m) * 2
    by_hand = ACTIVATION_SAFETY * (8 * n * d + max(attention, mlp) + 12 * 224 ** 2 + 12 * n * d)
    vit_l = dict(image_size=224, patch_size=16, embed_dim=1024, num_heads=16, mlp_hidden=4096)
    assert activation_bytes_per_image(**vit_l, act_bytes=2) == int(by_hand)
    assert 18 * 2**20 < by_hand < 20 * 2**20  # 19 MiB
    assert activation_bytes_per_image(**vit_l, act_bytes=4) > activation_bytes_per_image(**vit_l, act_bytes=2)
    assert activation_bytes_per_image(**{**vit_l, "image_size": 448}, act_bytes=2) > 4 * by_hand
    small = ScaleMAEEmbedder(ModelSpec("test-small", image_size=224, device="cpu"))
    assert small.activation_bytes_per_image() == activation_bytes_per_image(
        image_size=224, patch_size=16, embed_dim=384, num_heads=6, mlp_hidden=1536, act_bytes=4)


def test_attention_runs_fused_and_matches_the_unfused_path():
    from rsembed_dask.embed.model import set_fused_attention

    emb = ScaleMAEEmbedder(ModelSpec("test-small", image_size=S, device="cpu", batch_size=4))
    attn = [b.attn for b in emb.backbone.blocks]
    assert emb.fused_attention_layers == len(attn) == 12 and all(a.fused_attn for a in attn)
    x = preprocess(np.stack(chips(4)), S)
    fused = emb.embed_tensor(x, [10.0, 20.0, 30.0, 40.0])
    assert set_fused_attention(emb.backbone, False) == 12 and not any(a.fused_attn for a in attn)
    plain = emb.embed_tensor(x, [10.0, 20.0, 30.0, 40.0])
    set_fused_attention(emb.backbone, True)
    assert not torch.equal(fused, plain)  # two different kernels ...
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)  # ... the same attention


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_defaults_bf16_auto_batch_and_overlap():
    from rsembed_dask.specs import MAX_AUTO_BATCH, auto_batch_size

    emb = ScaleMAEEmbedder(ModelSpec("test-small", image_size=224, device="cuda", dtype="auto"))
    assert emb.precision == "bfloat16" and emb.overlap and emb.fused_attention_layers == 12
    free, _ = torch.cuda.mem_get_info(emb.device)
    assert 1 <= emb.batch_size <= MAX_AUTO_BATCH
    assert abs(emb.batch_size - auto_batch_size(free, emb.activation_bytes_per_image())) <= 8
    x = chips(2 * emb.batch_size + 3, size=300, seed=4)
    on = emb.embed(x, 10.0, output=OutputSpec.grid())
    emb.overlap = False
    off = emb.embed(x, 10.0, output=OutputSpec.grid())
    np.testing.assert_allclose(on.vectors, off.vectors, rtol=0, atol=1e-6)  # same kernels, same batches
    fp32 = ScaleMAEEmbedder(ModelSpec("test-small", image_size=224, device="cuda", batch_size=16)).embed(x[:16], 10.0)
    cos = (fp32.vectors * on.vectors[:16]).sum(1) / np.linalg.norm(fp32.vectors, axis=1) / np.linalg.norm(
        on.vectors[:16], axis=1)
    assert cos.min() > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fused_attention_matches_the_unfused_path_in_bf16():
    from rsembed_dask.embed.model import set_fused_attention

    emb = ScaleMAEEmbedder(ModelSpec("test-small", image_size=224, device="cuda", dtype="bfloat16", batch_size=8))
    x = preprocess(np.stack(chips(8, size=224)), 224, device="cuda")
    fused = emb.embed_tensor(x, 10.0)
    set_fused_attention(emb.backbone, False)
    plain = emb.embed_tensor(x, 10.0)
    cos = torch.nn.functional.cosine_similarity(fused.flatten(1), plain.flatten(1))
    assert cos.min() > 0.999


@pytest.mark.timeout(300)
def test_compile_runs_the_model_through_torch_compile_on_the_cpu(tiny):
    """Real ``torch.compile`` (inductor, C++ on the CPU: ~25 s the first time on 2 busy cores)."""
    emb = ScaleMAEEmbedder(ModelSpec("test-tiny", image_size=S, device="cpu", batch_size=4, compile=True))
    assert isinstance(emb._forward, torch._dynamo.eval_frame.OptimizedModule)
    assert emb._forward._orig_mod is emb.backbone and tiny._forward is tiny.backbone
    x = chips(4, seed=9)
    got = emb.embed(x, [10.0, 20.0, 30.0, 40.0], output=OutputSpec.grid())
    want = tiny.embed(x, [10.0, 20.0, 30.0, 40.0], output=OutputSpec.grid())
    np.testing.assert_allclose(got.vectors, want.vectors, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.stack(got.grids), np.stack(want.grids), rtol=1e-5, atol=1e-5)
