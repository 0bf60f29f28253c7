"""Work units: one cube chunk of samples at one scale, the unit of scheduling, retry and writing.

Examples
--------
>>> [u.key for u in work_units(5, (10.0, 20.0), chunk_size=4)]
['unit-0-0', 'unit-0-1', 'unit-1-0', 'unit-1-1']
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import SpecError

__all__ = ["WorkUnit", "work_units", "DEFAULT_UNIT_SAMPLES", "default_unit_size"]

#: Samples per work unit (and cube chunk along ``sample``) of a new cube when none is given.
#: A unit writes one object per data array (embedding, status, input_res_m, valid_fraction,
#: and error where a cell failed): 512 samples keep that under 10 objects per 1,000
#: sample-scales (64 made ~94), so 10 M samples x 3 scales is ~60,000 objects, not millions.
#: A unit of 512 neighbouring 224-px chips is a few coalesced requests (Earth Engine's 48 MiB
#: limit holds up to ~160 touching chips of 3 uint16 bands), ~150 MiB of pixels on its fetch
#: worker and 16 batches of 32 on a GPU: seconds of GPU time, so progress still moves often.
#: Existing cubes keep the chunk size they were created with (it is read from the cube).
DEFAULT_UNIT_SAMPLES = 512


def default_unit_size(block: int | None = None) -> int:
    """Samples per unit of a new cube: :data:`DEFAULT_UNIT_SAMPLES`, in whole ``block x block``
    blocks of tiles for a tiling (so every complete block is one request of one unit).

    Parameters
    ----------
    block : int, optional
        Tiles per side of a tiling's block (None for a sample campaign).

    Returns
    -------
    int
        Samples per unit (and per cube chunk).

    Examples
    --------
    >>> default_unit_size(), default_unit_size(8), default_unit_size(30)
    (512, 512, 900)
    """
    if block is None:
        return DEFAULT_UNIT_SAMPLES
    per = int(block) ** 2
    return max(1, DEFAULT_UNIT_SAMPLES // per) * per


@dataclass(frozen=True)
class WorkUnit:
    """Rows ``start:stop`` of the table (one cube chunk along ``sample``) at one scale, in one
    date window (its index along the cube's ``time``; 0 for a cube of one window):
    the unit of scheduling, retry and writing."""

    chunk: int
    start: int
    stop: int
    scale_index: int
    scale_m: float
    window: int = 0

    @property
    def key(self) -> str:
        return f"unit-{self.chunk}-{self.scale_index}" + (f"-w{self.window}" if self.window else "")

    @property
    def size(self) -> int:
        return self.stop - self.start

    def __dask_tokenize__(self):
        return ("WorkUnit", self.chunk, self.start, self.stop, self.scale_index, float(self.scale_m), self.window)


def work_units(n_samples: int, scales: Sequence[float], chunk_size: int, *,
               segments: list[tuple[int, int]] | tuple[tuple[int, int], ...] | None = None,
               window: int = 0) -> list[WorkUnit]:
    """Units for ``n_samples`` rows in chunks of ``chunk_size`` (the last may be shorter),
    chunk-major: every scale of chunk 0 (in ``scales`` order), then chunk 1, ...

    Parameters
    ----------
    n_samples : int
        Rows of the sample table.
    scales : sequence of float
        Scales in metres.
    chunk_size : int
        Samples per unit (the cube's chunk along ``sample``).
    segments : list of (start, stop), optional
        ``[start, stop)`` row ranges, each starting on a chunk boundary (default: all rows),
        restricting the units to those rows: a cube that grew by appends holds its samples
        in segments, each ending in a chunk that may be partial (see ``Cube.segments``).
    window : int
        The date window of the units (index along the cube's ``time``).

    Returns
    -------
    list of WorkUnit

    Examples
    --------
    >>> [(u.start, u.stop, u.scale_m) for u in work_units(100, [10, 20], 64)]
    [(0, 64, 10.0), (0, 64, 20.0), (64, 100, 10.0), (64, 100, 20.0)]
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 0:
        raise SpecError("n_samples", n_samples, "an integer >= 0")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise SpecError("chunk_size", chunk_size, "an integer >= 1")
    scales = [float(s) for s in (scales if isinstance(scales, (list, tuple, np.ndarray)) else [scales])]
    if not scales or not all(s > 0 for s in scales):
        raise SpecError("scales", scales, "a non-empty list of positive pixel sizes in metres")
    cs = int(chunk_size)
    if segments is None:
        spans = [(0, int(n_samples))] if n_samples else []
    else:
        spans = [(int(a), int(b)) for a, b in segments]
    if any(a % cs or not 0 <= a < b <= n_samples for a, b in spans):
        raise SpecError("segments", segments, f"[start, stop) row ranges within {n_samples} rows, "
                                              f"each starting at a multiple of chunk_size={cs}")
    units = []
    for a, b in spans:
        for start in range(a, b, cs):
            stop = min(start + cs, b)
            units.extend(WorkUnit(start // cs, start, stop, i, s, int(window)) for i, s in enumerate(scales))
    return units
