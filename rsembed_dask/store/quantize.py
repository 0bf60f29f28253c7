"""int8 storage of embeddings: symmetric per-vector quantisation with a float32 scale.

Each embedding vector ``v`` (along the feature axis) is stored as
``q = round(v / s)`` in int8 with ``s = max(|v|) / 127``, and ``s`` in a float32
array beside it: ``embedding_scale(sample, scale)`` for pooled vectors,
``grid_scale(sample, scale, gy, gx)`` for token grids (one scale per token) and
``embedding_scale(y, x)`` in the zone grids of a tiling store. Dequantise with
``v = q * s`` (broadcast over ``feature``). A vector that is not entirely finite
(no embedding) is stored as ``q = 0`` and ``s = NaN``, so NaN in a scale array
means "no data", as NaN does in a float32 cube. The round-off is at most
``s / 2`` per value: the cosine similarity of a dequantised vector to the original
stays above 0.999 for model embeddings (see ``benchmarks/storage.py``).

The cube records the method in its ``geoemb:quantization`` attribute
(:func:`geoemb_quantization`).

Examples
--------
>>> import numpy as np
>>> v = np.array([[0.5, -1.0, 0.25], [np.nan, np.nan, np.nan]], np.float32)
>>> q, s = quantize_int8(v, axis=1)
>>> q.tolist(), bool(np.isclose(s[0], 1 / 127)), bool(np.isnan(s[1]))
([[64, -127, 32], [0, 0, 0]], True, True)
>>> [round(float(x), 3) for x in dequantize_int8(q, s, axis=1)[0]]
[0.504, -1.0, 0.252]
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["INT8_MAX", "QUANTISED", "METHOD", "scale_name_of", "quantize_int8", "dequantize_int8",
           "geoemb_quantization", "is_quantised_dtype"]

#: Largest stored magnitude (symmetric: -127..127, so -128 is never used).
INT8_MAX = 127
#: Quantised data arrays of a sample cube and the name of each one's scale array.
QUANTISED: dict[str, str] = {"embedding": "embedding_scale", "grid": "grid_scale"}
#: ``geoemb:quantization.method`` of int8 cubes.
METHOD = "per_vector_scale"


def scale_name_of(name: str) -> str:
    """The scale array of quantised array ``name`` (``"embedding" -> "embedding_scale"``)."""
    return QUANTISED.get(name, f"{name}_scale")


def is_quantised_dtype(dtype: Any) -> bool:
    """Whether an output dtype (``OutputSpec.dtype``) stores quantised integers."""
    return str(dtype) == "int8"


def quantize_int8(x: Any, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Quantise vectors along ``axis`` to int8 with one symmetric scale per vector.

    Parameters
    ----------
    x : array_like
        Float embeddings, vectors along ``axis`` (e.g. ``[n, D]`` with ``axis=1``,
        or token grids ``[n, D, gy, gx]`` with ``axis=1``).
    axis : int
        The feature axis.

    Returns
    -------
    q : numpy.ndarray of int8
        Same shape as ``x``; 0 for vectors that are not entirely finite.
    scale : numpy.ndarray of float32
        ``x``'s shape without ``axis``: ``max(|v|) / 127`` per vector, 0 for an
        all-zero vector, NaN for a vector that is not entirely finite.
    """
    x = np.asarray(x, dtype=np.float32)
    finite = np.isfinite(x).all(axis=axis, keepdims=True)
    clean = np.where(finite, x, np.float32(0))
    amax = np.abs(clean).max(axis=axis, keepdims=True) if x.shape[axis] else np.zeros_like(finite, np.float32)
    scale = (amax / np.float32(INT8_MAX)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.rint(clean / safe), -INT8_MAX, INT8_MAX).astype(np.int8)
    scale = np.where(finite, scale, np.float32(np.nan)).astype(np.float32)
    return q, np.squeeze(scale, axis=axis)


def dequantize_int8(q: Any, scale: Any, axis: int = -1) -> np.ndarray:
    """float32 vectors from int8 values and their scales (the inverse of :func:`quantize_int8`).

    ``scale`` has ``q``'s shape without ``axis``; vectors whose scale is NaN come back NaN.
    """
    q = np.asarray(q)
    s = np.expand_dims(np.asarray(scale, dtype=np.float32), axis)
    return q.astype(np.float32) * s


def geoemb_quantization(scale_array: str) -> dict[str, Any]:
    """The ``geoemb:quantization`` object of an int8 store whose scales are in ``scale_array``.

    ``scale.type`` is ``"array"`` (the convention's per-pixel form: ``value[..., y, x] =
    quantized[..., y, x] * array[..., y, x]``, here per sample and scale); NaN in the
    scale array marks vectors without data.
    """
    return {"method": METHOD, "original_dtype": "float32", "quantized_dtype": "int8",
            "scale": {"type": "array", "array_name": scale_array, "nodata": "NaN"}}
