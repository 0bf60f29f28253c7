"""The change between two windows' embeddings: cosine distance per sample or per cell.

Pure maths on arrays, no cube: ``explore.change(cube, t0, t1, scale=...)`` will call
:func:`cosine_distance` once the cube has a ``time`` dimension. Until then, embed the
same places for two windows (two cubes, or :func:`~rsembed_dask.api.get_embeddings_batch`)
and compare them here.

A row (the feature axis, last by default) is *missing* when any of its values is not
finite (a failed or pending sample is NaN in the cube) or when it is all zeros; the
distance is NaN wherever either side is missing.

Examples
--------
>>> a = np.array([[1.0, 0.0], [1.0, 1.0], [np.nan, 1.0]])
>>> b = np.array([[1.0, 0.0], [-1.0, -1.0], [1.0, 1.0]])
>>> cosine_distance(a, b).round(6).tolist()
[0.0, 2.0, nan]
>>> roc_auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False])
1.0
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ..errors import SpecError

__all__ = ["cosine_distance", "roc_auc"]


def cosine_distance(a: ArrayLike, b: ArrayLike, axis: int = -1) -> np.ndarray:
    """``1 - cos(a, b)`` along ``axis`` (0 = same direction, 2 = opposite), NaN where either is missing.

    Parameters
    ----------
    a, b : array_like
        Embeddings of the same places in two windows, the same shape: ``(N, D)`` for samples,
        ``(..., D)`` for grid cells (``axis`` names the feature axis). int8 embeddings must be
        dequantised first (the distance of int8 codes ignores their per-row scale anyway).
    axis : int
        The feature axis.

    Returns
    -------
    numpy.ndarray of float64
        ``a``'s shape without ``axis``.

    Raises
    ------
    SpecError
        When the shapes differ.
    """
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape or x.ndim == 0:
        raise SpecError("embeddings", f"shapes {x.shape} and {y.shape}",
                        "two arrays of the same shape with a feature axis (the same places, two windows)")
    nx = np.linalg.norm(x, axis=axis)
    ny = np.linalg.norm(y, axis=axis)
    ok = np.isfinite(nx) & np.isfinite(ny) & (nx > 0) & (ny > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.sum(x * y, axis=axis) / (nx * ny)
    out = 1.0 - np.clip(cos, -1.0, 1.0)
    return np.where(ok, out, np.nan)


def roc_auc(scores: ArrayLike, truth: ArrayLike) -> float:
    """Area under the ROC curve: the chance that a true row scores above a false one (ties 1/2).

    Rows whose score is NaN are left out.

    Parameters
    ----------
    scores : array_like of float
        A change score per row (e.g. :func:`cosine_distance`).
    truth : array_like of bool
        Whether the row really changed.

    Returns
    -------
    float
        The area under the ROC curve, 0.5 for a score that tells nothing.

    Raises
    ------
    SpecError
        When the lengths differ or a class has no finite-scored row.
    """
    s = np.asarray(scores, np.float64).ravel()
    t = np.asarray(truth, bool).ravel()
    if s.shape != t.shape:
        raise SpecError("scores", f"{s.size} scores for {t.size} truths", "one truth per score")
    keep = np.isfinite(s)
    s, t = s[keep], t[keep]
    pos, neg = s[t], s[~t]
    if not len(pos) or not len(neg):
        raise SpecError("truth", f"{len(pos)} changed and {len(neg)} unchanged rows with a score",
                        "at least one of each")
    # Mann-Whitney U from the ranks (average ranks for ties).
    order = np.argsort(np.r_[pos, neg], kind="stable")
    allv = np.r_[pos, neg][order]
    ranks = np.empty(len(allv))
    _, first, counts = np.unique(allv, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))
