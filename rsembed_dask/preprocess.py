"""Preprocessing of Sentinel-2 SR RGB chips for ScaleMAE (parity with rs-embed's ``scalemae_rgb``).

Raw reflectance ``0..10000`` → ``clip(x / 10000, 0, 1) * 255`` → uint8 by truncation →
bicubic antialiased resize to ``image_size`` (PIL-equivalent, whole square, batched) →
``/ 255`` → ImageNet normalisation.

Examples
--------
>>> import numpy as np
>>> x = np.full((2, 3, 32, 32), 5000, dtype=np.uint16)
>>> preprocess(x, 16).shape
torch.Size([2, 3, 16, 16])
>>> effective_gsd_m(10.0, 448, 448, 224)
20.0
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .errors import SpecError

log = logging.getLogger(__name__)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "REFLECTANCE_SCALE", "check_chw", "effective_gsd_m",
           "preprocess", "to_uint8"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REFLECTANCE_SCALE = 10000.0
MAX_RAW = 65535


def effective_gsd_m(scale_m: float, h: int, w: int, image_size: int) -> float:
    """Ground sampling distance in metres of a ``h x w`` chip at ``scale_m`` after resizing to ``image_size``."""
    return float(scale_m) * min(int(h), int(w)) / int(image_size)


def _summary(x: Any) -> str:
    shape = tuple(getattr(x, "shape", ()))
    return f"<{type(x).__name__} shape={shape} dtype={getattr(x, 'dtype', None)}>"


def check_chw(x: Any, field: str = "input_chw") -> None:
    """Validate one raw chip: 3-D ``(3, H, W)``, numeric, not all NaN, values in ``[0, 65535]``.

    Raises
    ------
    SpecError
        Naming ``field``, a summary of the value and what is allowed.
    """
    allowed = ("a (3, H, W) array of integer or float S2 SR reflectance (B4, B3, B2) "
               f"with values in [0, {MAX_RAW}], not all NaN")
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise SpecError(field, _summary(x), allowed)
    if x.ndim != 3 or x.shape[0] != 3 or x.shape[1] < 1 or x.shape[2] < 1:
        raise SpecError(field, _summary(x), allowed)
    if x.dtype == np.bool_ or x.dtype.kind not in "iuf":
        raise SpecError(field, _summary(x), allowed)
    if x.dtype.kind == "f":
        finite_or_nan = ~np.isnan(x)
        if not finite_or_nan.any():
            raise SpecError(field, _summary(x) + " (all NaN)", allowed)
        vals = x[finite_or_nan]
    else:
        vals = x
    lo, hi = vals.min(), vals.max()
    if lo < 0 or hi > MAX_RAW:
        raise SpecError(field, _summary(x) + f" (min={lo!r}, max={hi!r})", allowed)


def to_uint8(batch: Any):
    """Raw reflectance ``[B, 3, H, W]`` (numpy or torch) → uint8 tensor, ``clip(x/10000,0,1)*255`` truncated.

    NaN pixels become 0.
    """
    import torch

    if isinstance(batch, np.ndarray):
        t = torch.from_numpy(np.asarray(batch, dtype=np.float32))
    else:
        t = torch.as_tensor(batch).to(torch.float32)
    t = torch.nan_to_num(t, nan=0.0)
    t = torch.clamp(t / REFLECTANCE_SCALE, 0.0, 1.0) * 255.0
    return t.to(torch.uint8)


def preprocess(batch: Any, image_size: int, *, device: Any = None):
    """Preprocess a batch of raw chips into normalised model input.

    Parameters
    ----------
    batch : numpy.ndarray or torch.Tensor
        ``[B, 3, H, W]`` raw S2 SR reflectance (any integer or float dtype).
    image_size : int
        Output side ``S``.
    device : torch.device or str, optional
        Where to resize and normalise (default: where ``batch`` is, CPU for numpy).

    Returns
    -------
    torch.FloatTensor
        ``[B, 3, S, S]``, ImageNet-normalised.
    """
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    t = batch if isinstance(batch, np.ndarray) else torch.as_tensor(batch)
    if t.ndim != 4 or t.shape[1] != 3:
        raise SpecError("batch", _summary(t), "a [B, 3, H, W] array")
    u8 = to_uint8(t)
    if device is not None:
        u8 = u8.to(device, non_blocking=True)
    if tuple(u8.shape[-2:]) != (image_size, image_size):
        u8 = TF.resize(u8, [image_size, image_size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    x = u8.to(torch.float32).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)
