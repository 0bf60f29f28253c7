"""Do embeddings know the land cover? Majority classes of footprints and a kNN vote.

For tests and the demo on the emulator's world (whose class map is known): each
footprint is labelled by its majority class, and each embedding by a vote of its
``k`` nearest neighbours (cosine) among the others. The agreement of vote and
label, against the agreement with the labels shuffled (chance), says whether
pixels, footprints and embeddings line up: a shifted crop or a wrong tile-to-grid
mapping scores lower, even with random weights.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> labels = np.repeat([0, 1, 2], 10)
>>> vectors = np.eye(3)[labels] + 0.1 * rng.normal(size=(30, 3))
>>> knn_agreement(vectors, labels, k=3)
1.0
>>> chance_agreement(vectors, labels, k=3) < 0.5
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SpecError
from .land_cover import CLASS_NAMES, N_CLASSES

__all__ = ["KnnScore", "chance_agreement", "knn_agreement", "knn_score", "majority_classes", "changed_fractions"]


@dataclass(frozen=True)
class KnnScore:
    """kNN class agreement of ``n`` embeddings, and what shuffled labels score."""

    agreement: float
    chance: float
    n: int
    k: int
    counts: tuple[int, ...]

    def line(self) -> str:
        """``kNN class agreement: 0.xx (chance 0.yy)``."""
        return f"kNN class agreement: {self.agreement:.2f} (chance {self.chance:.2f})"

    def classes(self) -> str:
        """The labels' classes and counts, e.g. ``water 14, forest 8``."""
        return ", ".join(f"{CLASS_NAMES[c]} {n}" for c, n in enumerate(self.counts) if n)


def majority_classes(world, grids, year: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Majority land-cover class of each footprint and the fraction it covers.

    Parameters
    ----------
    world : SyntheticS2World
    grids : iterable of PixelGrid
        Footprints; their pixel centres are classified as the emulator renders them.
    year : int, optional
        The land of that year (default: the world's base map, 2022).

    Returns
    -------
    labels : numpy.ndarray of uint8
    purity : numpy.ndarray of float
    """
    labels, purity = [], []
    for g in grids:
        counts = np.bincount(world.land_cover_grid(g.crs, g.transform, g.width, g.height, year=year).ravel(),
                             minlength=N_CLASSES)
        labels.append(int(counts.argmax()))
        purity.append(counts.max() / counts.sum())
    return np.asarray(labels, np.uint8), np.asarray(purity, np.float64)


def changed_fractions(world, grids, year_a: int, year_b: int) -> np.ndarray:
    """The fraction of each footprint's pixels whose land cover differs between two years.

    Parameters
    ----------
    world : SyntheticS2World
    grids : iterable of PixelGrid
        Footprints (e.g. the tiles of a tiling).
    year_a, year_b : int
        The years compared.

    Returns
    -------
    numpy.ndarray of float
        One fraction in [0, 1] per footprint (the truth a change score is ranked against).
    """
    return np.array([world.changed_grid(g.crs, g.transform, g.width, g.height, year_a, year_b).mean()
                     for g in grids], np.float64)


def _neighbours(vectors, k: int) -> np.ndarray:
    """Indices ``(N, k)`` of each row's ``k`` most cosine-similar other rows, nearest first."""
    x = np.asarray(vectors, np.float64)
    if x.ndim != 2 or len(x) <= k:
        raise SpecError("vectors", f"an array of shape {x.shape}", f"(N, D) with N > k = {k}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x).all(axis=1)).sum())
        raise SpecError("vectors", f"{bad} rows with NaN or inf", "finite rows only (leave failed samples out first)")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def _vote(neighbour_labels: np.ndarray) -> np.ndarray:
    """Majority label per row; a tie goes to the tied class of the nearest neighbour."""
    out = np.empty(len(neighbour_labels), neighbour_labels.dtype)
    for r, row in enumerate(neighbour_labels):
        counts = np.bincount(row)
        best = counts.max()
        out[r] = next(v for v in row if counts[v] == best)
    return out


def knn_agreement(vectors, labels, k: int = 5) -> float:
    """Fraction of rows whose ``k`` nearest neighbours (cosine, itself left out) vote its label."""
    labels = np.asarray(labels)
    nn = _neighbours(vectors, k)
    return float((_vote(labels[nn]) == labels).mean())


def chance_agreement(vectors, labels, k: int = 5, n_shuffles: int = 200, seed: int = 0) -> float:
    """Mean :func:`knn_agreement` over ``n_shuffles`` shuffles of the labels among the rows
    (the neighbour graph kept; seeded): what a vote scores that knows nothing."""
    labels = np.asarray(labels)
    nn = _neighbours(vectors, k)
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(n_shuffles):
        shuffled = rng.permutation(labels)
        scores.append((_vote(shuffled[nn]) == shuffled).mean())
    return float(np.mean(scores))


def knn_score(vectors, labels, k: int = 5) -> KnnScore:
    """:func:`knn_agreement` and its :func:`chance_agreement` (same neighbour graph)."""
    labels = np.asarray(labels)
    return KnnScore(knn_agreement(vectors, labels, k), chance_agreement(vectors, labels, k),
                    len(labels), k, tuple(int(c) for c in np.bincount(labels, minlength=N_CLASSES)))
