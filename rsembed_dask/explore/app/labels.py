"""Labels and predictions: places marked positive or negative, and a score for every place.

The prediction is Earth Index's: the mean of the positives' unit vectors pushed
away from the mean of the negatives' (``w = mean(pos) - mean(neg)``), and every
place is scored by its cosine similarity to ``w``. Why this and not a logistic
regression: a handful of labels (5 + 5 is the usual start) in hundreds of
dimensions leaves a logistic regression under-determined, its answer set by the
regulariser we would have to pick; the mean difference has no parameter to tune,
works from one positive and no negative, is deterministic, and scores the whole
scale with the same single matrix product as a similarity search (int8 vectors
stay int8). Scores are cosines in [-1, 1]: higher is more like the positives.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> x = np.vstack([rng.normal(size=(20, 8)) + 3 * np.eye(8)[0], rng.normal(size=(20, 8))])
>>> w = mean_difference(x[:5] / np.linalg.norm(x[:5], axis=1, keepdims=True),
...                     x[20:25] / np.linalg.norm(x[20:25], axis=1, keepdims=True))
>>> int(np.argmax(w))
0
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ...errors import SpecError

__all__ = ["Label", "LabelSet", "mean_difference", "POSITIVE", "NEGATIVE", "PREDICT_METHOD"]

POSITIVE = "positive"
NEGATIVE = "negative"
#: Named in the API's answers and the docs.
PREDICT_METHOD = "mean_difference"


@dataclass(frozen=True)
class Label:
    """One labelled place: its row in the places dataset and id, and whether it is a positive."""

    row: int
    id: object
    positive: bool

    @property
    def name(self) -> str:
        return POSITIVE if self.positive else NEGATIVE


def mean_difference(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """The direction ``mean(positives) - mean(negatives)`` of unit vectors (``negatives`` may be empty).

    Raises
    ------
    SpecError
        No positive, or the two means are equal (nothing to tell apart).
    """
    if not len(positives):
        raise SpecError("labels", "no positive", "at least one positive place")
    w = np.asarray(positives, np.float64).mean(axis=0)
    if len(negatives):
        w = w - np.asarray(negatives, np.float64).mean(axis=0)
    norm = float(np.linalg.norm(w))
    if not norm > 1e-12:
        raise SpecError("labels", "positives and negatives with the same mean",
                        "positives that differ from the negatives")
    return (w / norm).astype(np.float32)


class LabelSet:
    """The labels of one scale (and window), replaced as a whole; safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._labels: tuple[Label, ...] = ()
        self._where: tuple[float, str | None] | None = None

    def replace(self, labels: list[Label], scale: float, window: str | None) -> None:
        """Set the labels (of places at ``scale`` and ``window``); a place labelled twice keeps its last label."""
        by_row = {lab.row: lab for lab in labels}
        with self._lock:
            self._labels = tuple(by_row.values())
            self._where = (scale, window) if labels else None

    def get(self) -> tuple[tuple[Label, ...], tuple[float, str | None] | None]:
        """The labels and the ``(scale, window)`` they were made at (None when there are none)."""
        with self._lock:
            return self._labels, self._where
