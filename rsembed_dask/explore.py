"""Exploring a cube: embeddings as colours, similarity search, quicklooks.

Everything here reads a cube opened with :func:`rsembed_dask.cube.open_cube`
(or takes its path) and works on the client; nothing needs a Dask cluster.

Examples
--------
>>> from rsembed_dask.explore import pca_rgb, similar, quicklook  # doctest: +SKIP
>>> similar("campaign.zarr", (3.1, 31.2), k=5, scale=20)           # doctest: +SKIP
>>> quicklook("campaign.zarr", scale=20)                           # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from .errors import SpecError

__all__ = ["pca_rgb"]

log = logging.getLogger(__name__)

#: Percentiles of each component's scores mapped to 0 and 255.
STRETCH_PERCENTILES = (2.0, 98.0)
#: Above this many finite rows per feature, the principal axes come from the
#: ``(D, D)`` scatter matrix instead of the ``(N, D)`` data (same axes, bounded memory).
_SCATTER_ROWS_PER_FEATURE = 4


def _principal_axes(xc: np.ndarray) -> np.ndarray:
    """Principal axes (rows, by decreasing variance) of centred rows ``xc``, sign-fixed.

    Sign convention: each axis is flipped so that its loading of largest absolute
    value is positive (scikit-learn's ``svd_flip`` on the axes), so the colours do
    not depend on the LAPACK build or on row order.
    """
    n, d = xc.shape
    if n > _SCATTER_ROWS_PER_FEATURE * d:
        _, _, vt = np.linalg.svd(xc.T @ xc, hermitian=True)
    else:
        _, _, vt = np.linalg.svd(xc, full_matrices=False)
    if vt.shape[0] < d:  # fewer rows than features: pad with zero axes (zero scores)
        vt = np.vstack([vt, np.zeros((d - vt.shape[0], d))])
    biggest = np.argmax(np.abs(vt), axis=1)
    signs = np.sign(vt[np.arange(vt.shape[0]), biggest])
    signs[signs == 0] = 1.0
    return vt * signs[:, None]


def _check_components(components: Sequence[int], n_features: int) -> tuple[int, int, int]:
    comps = tuple(components) if isinstance(components, (tuple, list)) else None
    if (comps is None or len(comps) != 3
            or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in comps)
            or not all(0 <= c < n_features for c in comps)):
        raise SpecError("components", components,
                        f"three principal component indices in [0, {n_features - 1}] (R, G, B)")
    return tuple(int(c) for c in comps)  # type: ignore[return-value]


def pca_rgb(vectors, components: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """Map embedding vectors to RGB colours through PCA.

    The finite rows are centred and their principal axes found with NumPy's SVD;
    the scores on ``components`` become red, green and blue, each stretched
    linearly so that its 2nd percentile maps to 0 and its 98th to 255 (clipped
    outside). A channel with no spread (e.g. every row equal) is mid-grey (128).

    Parameters
    ----------
    vectors : array-like, shape (N, D)
        Embeddings (any float dtype). Rows holding a NaN or inf (samples that are
        not ``ok`` in a cube) are left out of the fit.
    components : sequence of three int
        Principal components (0 = most variance) shown as red, green and blue.

    Returns
    -------
    numpy.ndarray, shape (N, 3), uint8
        One colour per row. **Rows with a NaN/inf are black (0, 0, 0).**
        Deterministic: each axis's sign is fixed so that its largest loading is
        positive, and equal rows get equal colours.

    Raises
    ------
    SpecError
        ``vectors`` is not 2-D, or ``components`` is not three indices in ``[0, D)``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> rgb = pca_rgb(rng.normal(size=(100, 16)))
    >>> rgb.shape, rgb.dtype
    ((100, 3), dtype('uint8'))
    >>> v = rng.normal(size=(5, 16)); v[2] = np.nan
    >>> pca_rgb(v)[2].tolist()
    [0, 0, 0]
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] == 0:
        raise SpecError("vectors", f"array of shape {x.shape}", "a 2-D array (samples, features)")
    comps = _check_components(components, x.shape[1])
    out = np.zeros((x.shape[0], 3), dtype=np.uint8)
    finite = np.isfinite(x).all(axis=1)
    if not finite.any():
        log.warning("pca_rgb: no finite rows among %d; every colour is black", x.shape[0])
        return out
    xf = x[finite]
    xc = xf - xf.mean(axis=0)
    scores = xc @ _principal_axes(xc)[list(comps)].T
    lo, hi = np.percentile(scores, STRETCH_PERCENTILES, axis=0)
    span = hi - lo
    # No spread beyond rounding noise of the centring: a flat channel.
    flat = span <= 1e-9 * max(1.0, float(np.abs(xf).max()))
    scaled = (scores - lo) / np.where(flat, 1.0, span)
    scaled = np.where(flat, 0.5, np.clip(scaled, 0.0, 1.0))
    out[finite] = np.rint(scaled * 255.0).astype(np.uint8)
    return out
