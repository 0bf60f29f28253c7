"""Colours of embeddings: three principal components as RGB, with a robust stretch.

:class:`PCAColours` fits principal axes and a percentile stretch on a sample of
vectors and colours any number of vectors with them, chunk by chunk, so a
continent's grid is coloured without holding its embeddings in memory (maths only:
:mod:`~rsembed_dask.explore.geotiff` writes the maps, :mod:`~rsembed_dask.explore.notebook`
draws them).

Examples
--------
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(200, 8))
>>> colours = PCAColours.fit(x)
>>> colours.rgb(x[:3]).shape
(3, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..errors import SpecError

__all__ = ["PCAColours", "STRETCH_PERCENTILES", "check_components"]

#: Each channel is stretched from its 2nd to its 98th percentile: robust to the few
#: outliers (clouds, water) that would otherwise grey out everything else.
STRETCH_PERCENTILES = (2.0, 98.0)
#: Above this many finite rows per feature, the principal axes come from the
#: ``(D, D)`` scatter matrix instead of the ``(N, D)`` data (same axes, bounded memory).
_SCATTER_ROWS_PER_FEATURE = 4


@dataclass(frozen=True, eq=False)
class PCAColours:
    """Principal axes, mean and stretch: vectors in, uint8 RGB out.

    Attributes
    ----------
    mean : numpy.ndarray ``(D,)``
    axes : numpy.ndarray ``(3, D)``
        The chosen principal axes, each signed so that its largest loading is positive
        (scikit-learn's ``svd_flip``): colours depend neither on LAPACK nor on row order.
    lo, hi : numpy.ndarray ``(3,)``
        Scores mapped to 0 and 255 (:data:`STRETCH_PERCENTILES` of the fitted rows).
    flat : numpy.ndarray ``(3,)`` of bool
        Channels without spread (e.g. every row equal): mid-grey (128).
    """

    mean: np.ndarray
    axes: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    flat: np.ndarray

    @classmethod
    def fit(cls, vectors: ArrayLike, components: Sequence[int] = (0, 1, 2)) -> PCAColours:
        """Fit on the finite rows of ``vectors`` ``(N, D)``; ``components`` pick the axes (R, G, B).

        Raises
        ------
        SpecError
            ``vectors`` not 2-D or without a finite row; ``components`` not three indices in ``[0, D)``.
        """
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] == 0:
            raise SpecError("vectors", f"array of shape {x.shape}", "a 2-D array (samples, features)")
        comps = check_components(components, x.shape[1])
        xf = x[np.isfinite(x).all(axis=1)]
        if not len(xf):
            raise SpecError("vectors", f"{x.shape[0]} rows, none finite", "at least one finite row")
        mean = xf.mean(axis=0)
        xc = xf - mean
        axes = _principal_axes(xc)[list(comps)]
        lo, hi = np.percentile(xc @ axes.T, STRETCH_PERCENTILES, axis=0)
        # No spread beyond rounding noise of the centring: a flat channel.
        flat = hi - lo <= 1e-9 * max(1.0, float(np.abs(xf).max()))
        return cls(mean, axes, lo, hi, flat)

    def rgb(self, vectors: ArrayLike) -> np.ndarray:
        """``(N, 3)`` uint8 colours; rows holding a NaN or inf are black (0, 0, 0)."""
        x = np.asarray(vectors, dtype=np.float64)
        out = np.zeros((x.shape[0], 3), np.uint8)
        finite = np.isfinite(x).all(axis=1)
        if finite.any():
            scores = (x[finite] - self.mean) @ self.axes.T
            scaled = (scores - self.lo) / np.where(self.flat, 1.0, self.hi - self.lo)
            scaled = np.where(self.flat, 0.5, np.clip(scaled, 0.0, 1.0))
            out[finite] = np.rint(scaled * 255.0).astype(np.uint8)
        return out


def _principal_axes(xc: np.ndarray) -> np.ndarray:
    """Principal axes (rows, by decreasing variance) of centred rows ``xc``, sign-fixed."""
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


def check_components(components: Sequence[int], n_features: int) -> tuple[int, int, int]:
    comps = tuple(components) if isinstance(components, (tuple, list)) else None
    if (comps is None or len(comps) != 3
            or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in comps)
            or not all(0 <= c < n_features for c in comps)):
        raise SpecError("components", components,
                        f"three principal component indices in [0, {n_features - 1}] (R, G, B)")
    return tuple(int(c) for c in comps)  # type: ignore[return-value]
