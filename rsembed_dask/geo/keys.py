"""Spatial keys of sample points: geohashes (the cube's location key) and Hilbert order.

Pure NumPy, vectorised; no geometry library.

Examples
--------
>>> geohash_encode([-5.6], [42.6], precision=5).tolist()
['ezs42']
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["geohash_encode", "hilbert_order", "GEOHASH_PRECISION", "HILBERT_BITS"]

GEOHASH_PRECISION = 9
HILBERT_BITS = 16
#: The geohash alphabet as ASCII codes (a character per 5 bits).
_BASE32_BYTES = np.frombuffer(b"0123456789bcdefghjkmnpqrstuvwxyz", dtype=np.uint8)


def geohash_encode(lon: ArrayLike, lat: ArrayLike, precision: int = GEOHASH_PRECISION) -> np.ndarray:
    """Geohashes of degrees ``lon, lat``: vectorised bisection, bit-exact with the
    reference algorithm, ``precision`` characters of 5 bits.

    Parameters
    ----------
    lon, lat : array-like
        Degrees (EPSG:4326).
    precision : int
        Characters per geohash (default 9, about 5 m).

    Returns
    -------
    numpy.ndarray
        Object array of str, shaped like the input.

    Examples
    --------
    >>> geohash_encode([-5.6], [42.6], precision=5).tolist()
    ['ezs42']
    """
    val = np.stack(np.broadcast_arrays(*np.atleast_1d(np.asarray(lon, float), np.asarray(lat, float))))
    lo = np.array([[-180.0], [-90.0]]) + np.zeros_like(val)
    hi = np.array([[180.0], [90.0]]) + np.zeros_like(val)
    codes = np.zeros(val.shape[1], dtype=np.int64)
    for bit in range(5 * precision):
        axis = bit % 2  # even bits: longitude, odd bits: latitude
        mid = (lo[axis] + hi[axis]) / 2
        up = val[axis] >= mid
        codes = (codes << 1) | up
        lo[axis] = np.where(up, mid, lo[axis])
        hi[axis] = np.where(up, hi[axis], mid)
    shifts = 5 * (precision - 1 - np.arange(precision, dtype=np.int64))
    chars = np.ascontiguousarray(_BASE32_BYTES[(codes[:, None] >> shifts) & 31])  # (n, precision) ASCII
    return chars.view(f"S{precision}").ravel().astype(f"U{precision}").astype(object)


def hilbert_order(lon: ArrayLike, lat: ArrayLike, bits: int = HILBERT_BITS) -> np.ndarray:
    """Permutation sorting ``lon, lat`` along a Hilbert curve over a ``2**bits`` lon/lat
    grid (16 bits: cells of about 600 m x 300 m); ties keep input order.

    Format-defining: the sample order of every cube depends on it.

    Parameters
    ----------
    lon, lat : array-like
        Degrees (EPSG:4326).
    bits : int
        Bits per axis of the grid (default 16).

    Returns
    -------
    numpy.ndarray
        int64 indices into the input, in Hilbert order.
    """
    n = 1 << bits
    x = np.clip(((np.asarray(lon, float) + 180.0) / 360.0 * n).astype(np.int64), 0, n - 1)
    y = np.clip(((np.asarray(lat, float) + 90.0) / 180.0 * n).astype(np.int64), 0, n - 1)
    d = np.zeros(x.shape, dtype=np.int64)
    s = n >> 1
    while s > 0:
        rx, ry = ((x & s) > 0).astype(np.int64), ((y & s) > 0).astype(np.int64)
        d += s * s * ((3 * rx) ^ ry)
        flip = (rx == 1) & (ry == 0)  # rotate the quadrant (Wikipedia's xy2d)
        x, y = np.where(flip, n - 1 - x, x), np.where(flip, n - 1 - y, y)
        x, y = np.where(ry == 0, y, x), np.where(ry == 0, x, y)
        s >>= 1
    return np.argsort(d, kind="stable")
