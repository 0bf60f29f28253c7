"""The uint8 resize is PIL's, bit for bit, on every device (DESIGN.md "Preprocessing").

torchvision resizes a uint8 batch natively only on the CPU; on CUDA it resizes a float32
copy, clamps and rounds. That float path is reproduced here on the CPU (the same
``interpolate`` call on float32) to show it is not PIL's result, while ours is.
"""

import inspect

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2.functional import _geometry

from rsembed_dask.errors import SpecError
from rsembed_dask.embed.preprocess import (MAX_RAW, normalise, preprocess, preprocess_host, resize_uint8_exact,
                                           to_uint8, to_uint8_array)


def pil_rgb(u8: np.ndarray, size: int) -> np.ndarray:
    """rs-embed's resize: ``[B, 3, H, W]`` uint8 through PIL RGB images → ``[B, 3, S, S]``."""
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(x.transpose(1, 2, 0))).resize((size, size),
                                                                                         Image.BICUBIC))
           for x in u8]
    return np.stack(out).transpose(0, 3, 1, 2)


def hard_images(h: int, w: int, seed: int) -> np.ndarray:
    """Noise, a ramp, step edges, a checkerboard and saturated corners: ``[5, 3, h, w]`` uint8."""
    rng = np.random.default_rng(seed)
    x = np.empty((5, 3, h, w), np.uint8)
    x[0] = rng.integers(0, 256, size=(3, h, w))
    x[1] = (np.cumsum(rng.integers(0, 5, size=(3, h, w)), axis=-1) % 256)
    x[2] = 0
    x[2, :, :, w // 2:] = 255
    x[2, 1, h // 3:, :] = 255
    yy, xx = np.mgrid[:h, :w]
    x[3] = (((yy // 3 + xx // 3) % 2) * 255).astype(np.uint8)
    x[4] = rng.integers(0, 256, size=(3, h, w))
    x[4, :, : h // 4, : w // 4] = 255
    x[4, :, -(h // 4):, -(w // 4):] = 0
    return x


def torchvision_float_path(u8: torch.Tensor, size: int) -> torch.Tensor:
    """What torchvision's ``resize_image`` does with uint8 off the CPU (``need_cast`` branch)."""
    x = TF.resize(u8.to(torch.float32), [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return x.clamp_(0, 255).round_().to(torch.uint8)


SHAPES = [(48, 48), (100, 100), (300, 300), (448, 448), (37, 37), (100, 300), (500, 230)]


@pytest.mark.parametrize("h, w", SHAPES)
def test_resize_uint8_exact_is_pil_bit_for_bit(h, w):
    u8 = hard_images(h, w, seed=h * 1000 + w)
    got = resize_uint8_exact(torch.from_numpy(u8), 224)
    assert got.dtype == torch.uint8 and got.device.type == "cpu" and tuple(got.shape) == (5, 3, 224, 224)
    np.testing.assert_array_equal(got.numpy(), pil_rgb(u8, 224))
    np.testing.assert_array_equal(resize_uint8_exact(u8, 224).numpy(), got.numpy())  # numpy input too


def test_same_size_is_unchanged():
    u8 = hard_images(64, 64, seed=1)
    np.testing.assert_array_equal(resize_uint8_exact(u8, 64).numpy(), u8)


@pytest.mark.parametrize("h", [48, 100, 300, 448])
def test_torchvision_paths_are_not_pil(h):
    """The hazard is real: neither of torchvision's uint8 paths is PIL's result."""
    # torchvision uses its native uint8 kernel only for tensors on the CPU; elsewhere (CUDA)
    # it casts to float32 (the branch torchvision_float_path reproduces).
    src = inspect.getsource(_geometry.resize_image)
    assert 'elif image.device.type == "cpu":' in src and "need_cast = dtype not in acceptable_dtypes" in src
    u8 = hard_images(h, h, seed=h)
    ref = pil_rgb(u8, 224).astype(np.int16)
    t = torch.from_numpy(u8)
    cuda_like = torchvision_float_path(t, 224).numpy().astype(np.int16)
    differ = (cuda_like != ref).mean()
    assert differ > 0.05 and np.abs(cuda_like - ref).max() >= 5, (differ, np.abs(cuda_like - ref).max())
    native = TF.resize(t, [224, 224], interpolation=InterpolationMode.BICUBIC, antialias=True)
    assert (native.numpy().astype(np.int16) != ref).any()  # 1-2 levels on a fraction of a percent
    # ... and ours is PIL's:
    np.testing.assert_array_equal(resize_uint8_exact(t, 224).numpy(), ref)


@pytest.mark.parametrize("device", [None, "cpu", torch.device("cpu")])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_preprocess_is_normalised_pil_for_every_device_argument(device, as_tensor):
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 12000, size=(4, 3, 100, 300), dtype=np.uint16)
    raw[1, :, :, 150:] = 10000
    batch = torch.from_numpy(raw.astype(np.int32)) if as_tensor else raw
    got = preprocess(batch, 224, device=device)
    u8 = (np.clip(raw.astype(np.float32) / 10000.0, 0, 1) * 255).astype(np.uint8)
    want = normalise(torch.from_numpy(pil_rgb(u8, 224)))
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert torch.equal(got, want)


def test_resize_refuses_tensors_off_the_cpu():
    """preprocess resizes before moving to the device: it works for a non-CPU device, while
    the resize itself refuses a tensor that is already on one."""
    raw = np.random.default_rng(0).integers(0, 10000, size=(2, 3, 40, 40), dtype=np.uint16)
    out = preprocess(raw, 32, device="meta")
    assert out.device.type == "meta" and tuple(out.shape) == (2, 3, 32, 32) and out.dtype == torch.float32
    with pytest.raises(SpecError, match="on the CPU"):
        resize_uint8_exact(to_uint8(raw).to("meta"), 32)
    with pytest.raises(SpecError, match="uint8"):
        resize_uint8_exact(torch.zeros((1, 3, 8, 8)), 4)


def test_to_uint8_truncates_clips_and_zeroes_nan():
    raw = np.array([np.nan, 0, 39, 40, 5000, 9999, 10000, 20000, 65535], np.float32)
    got = to_uint8(np.broadcast_to(raw, (1, 3, 1, 9)).copy())
    assert got.dtype == torch.uint8
    np.testing.assert_array_equal(got[0, 0, 0].numpy(), [0, 0, 0, 1, 127, 254, 255, 255, 255])
    assert torch.equal(to_uint8(torch.from_numpy(raw).reshape(1, 1, 1, 9)), got[:1, :1])


def test_numpy_path_is_the_torch_float_path_for_every_uint16_value():
    every = np.arange(MAX_RAW + 1, dtype=np.uint16).reshape(1, 1, 256, 256)
    by_float = to_uint8(torch.from_numpy(every.astype(np.int32)))  # a tensor: the torch float32 path
    by_numpy = to_uint8(every)
    assert by_numpy.dtype == torch.uint8 and torch.equal(by_numpy, by_float)
    flat = to_uint8_array(np.array([0, 39, 40, 5000, 9999, 10000, 65535], np.uint16))
    assert flat.tolist() == [0, 0, 1, 127, 254, 255, 255]
    small = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(to_uint8(small), to_uint8(torch.from_numpy(small.astype(np.float32))))


@pytest.mark.parametrize("side", [224, 300])
def test_preprocess_is_its_host_half_then_normalise(side):
    raw = np.random.default_rng(side).integers(0, 12000, size=(3, 3, side, side), dtype=np.uint16)
    u8 = preprocess_host(raw, 224)
    assert u8.dtype == torch.uint8 and u8.device.type == "cpu" and tuple(u8.shape) == (3, 3, 224, 224)
    assert torch.equal(normalise(u8, "cpu"), preprocess(raw, 224, device="cpu"))
    with pytest.raises(SpecError, match="batch"):
        preprocess_host(raw[0], 224)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_preprocess_host_is_pinned_and_normalises_like_the_cpu():
    raw = np.random.default_rng(1).integers(0, 12000, size=(4, 3, 448, 448), dtype=np.uint16)
    u8 = preprocess_host(raw, 224, pin_memory=True)
    assert u8.is_pinned()
    torch.testing.assert_close(normalise(u8, "cuda").cpu(), normalise(u8, "cpu"), rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_preprocess_equals_cpu_and_torchvision_cuda_does_not():
    u8 = hard_images(300, 300, seed=3)
    raw = (u8.astype(np.float32) * (10000 / 255) + 20).astype(np.uint16)  # truncates back to u8
    cpu = preprocess(raw, 224, device="cpu")
    gpu = preprocess(raw, 224, device="cuda")
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-6)
    ref = pil_rgb(to_uint8(raw).numpy(), 224)
    tv = TF.resize(to_uint8(raw).cuda(), [224, 224], interpolation=InterpolationMode.BICUBIC, antialias=True)
    assert (tv.cpu().numpy() != ref).mean() > 0.05
