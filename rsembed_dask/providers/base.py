"""The provider contract: a pixel grid, a sensor and a date window in, a :class:`Patch` out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from .._counters import Counters
from ..errors import SpecError
from ..geo.grid import PixelGrid
from ..specs import SensorSpec, TemporalSpec

__all__ = ["Patch", "Provider", "RequestStats"]


@dataclass(frozen=True, eq=False)
class Patch:
    """Pixels of one footprint on one grid.

    Attributes
    ----------
    data : numpy.ndarray
        ``(C, H, W)`` uint16, raw surface reflectance in ``bands`` order.
    valid : numpy.ndarray
        ``(H, W)`` bool, True where every band has data.
    grid : PixelGrid
        CRS, transform and shape of the pixels.
    bands : tuple of str
        Band names, in the order of ``data``'s first axis.
    """

    data: np.ndarray
    valid: np.ndarray
    grid: PixelGrid
    bands: tuple[str, ...]

    def __post_init__(self):
        if self.data.ndim != 3 or self.data.shape[1:] != self.grid.shape:
            raise SpecError("Patch.data", self.data.shape,
                            f"a (C, {self.grid.height}, {self.grid.width}) array matching the grid")
        if self.data.shape[0] != len(self.bands):
            raise SpecError("Patch.bands", self.bands, f"{self.data.shape[0]} band names")
        if self.valid.shape != self.grid.shape or self.valid.dtype != bool:
            raise SpecError("Patch.valid", (self.valid.shape, str(self.valid.dtype)),
                            f"a boolean {self.grid.shape} mask")

    @property
    def crs(self) -> str:
        return self.grid.crs

    @property
    def transform(self) -> tuple[float, ...]:
        return self.grid.transform

    @property
    def valid_fraction(self) -> float:
        return float(self.valid.mean()) if self.valid.size else 0.0

    def crop_to(self, grid: PixelGrid) -> Patch:
        """The part of this patch on ``grid`` (a sub-grid on the same lattice)."""
        r, c = self.grid.offset_of(grid)
        return Patch(
            np.ascontiguousarray(self.data[:, r:r + grid.height, c:c + grid.width]),
            np.ascontiguousarray(self.valid[r:r + grid.height, c:c + grid.width]),
            grid,
            self.bands,
        )


@runtime_checkable
class Provider(Protocol):
    """Anything that turns a grid, sensor and date window into a :class:`Patch`.

    Implementations must be picklable (they travel to Dask workers) and
    thread-safe (a worker fetches from several threads).
    """

    def fetch(self, grid: PixelGrid, sensor: SensorSpec, temporal: TemporalSpec) -> Patch:
        """Fetch the composite on ``grid``.

        Raises
        ------
        NoImageryError
            No scene matches the filters.
        TransientProviderError
            Retries were exhausted on a retryable failure.
        PermanentProviderError
            The request cannot succeed as made.
        """
        ...


@dataclass
class RequestStats(Counters):
    """Counters for requests to a provider (thread-safe increments).

    ``planned``: requests the plan needs; ``sent``: ``computePixels`` requests made
    (retries included); ``retried``: re-sends after a retryable failure; ``failed``:
    requests given up on; ``no_imagery``: requests answered "no scene matches"
    (an empty composite: not a failure); ``split``: coalesced requests Earth Engine
    gave up on (``Computation timed out.`` / ``User memory limit exceeded.``) that
    were split in two and asked again (not counted failed); ``reused``:
    embeddings served by a request already made (coalescing); ``bytes``: payload
    bytes received; ``preflight``: configuration checks (one ``value:compute`` each,
    not in ``sent``).
    """

    planned: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    no_imagery: int = 0
    split: int = 0
    reused: int = 0
    bytes: int = 0
    preflight: int = 0
