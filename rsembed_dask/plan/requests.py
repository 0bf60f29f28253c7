"""Earth Engine requests per work unit of a tile table, coalesced, counted exactly and fast.

:func:`~rsembed_dask.campaign.tasks.fetch_unit` plans the requests of a unit with
:func:`~rsembed_dask.providers.coalesce.plan_requests`; :func:`unit_requests`
counts what that plan would be for every unit of a
:class:`~rsembed_dask.sampling.tiling.TileTable` without building it unit by unit.

How
---
``plan_requests`` on every unit of a continent (tens of thousands of units of
64 grids) costs about 0.35 ms a unit in Python. :func:`unit_requests` takes an
exact shortcut instead: ``plan_requests`` plans each (CRS, lattice) group of a
unit on its own, and all tiles of one zone at one scale share one lattice, so
each (unit, zone) group is one request exactly when the bounding box of its tile
indices passes ``plan_requests``' own tests (bytes, side, waste). Those tests
run vectorised over all groups; only the groups that fail them (partial blocks
at zone seams, chunk sizes that are not whole blocks) go through
``plan_requests``' rule itself (:func:`~rsembed_dask.providers.coalesce.plan_lattice`,
on the tiles' bounds as arrays). Tests check the shortcut against ``plan_requests``
unit by unit.

:class:`RequestTally` does it piece by piece, for tables never held whole (the
world at 10 m is 100 M tiles): the campaign planner feeds it one zone at a time
(:func:`~rsembed_dask.plan.estimate.estimate_campaign`).

Examples
--------
>>> from rsembed_dask.sampling.tiling import tile_aoi
>>> table = tile_aoi((10.0, 45.0, 10.5, 45.3), scales=[10]).tables[0]
>>> per = unit_requests(table, chunk_size=64, n_bands=3)
>>> len(per.requests), int(per.requests.sum()) < len(table)
(5, True)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import SpecError
from ..providers.coalesce import MAX_WASTE, plan_lattice
from ..providers.limits import BYTES_PER_SAMPLE, MAX_DIMENSION, REQUEST_BYTE_LIMIT
from .._validate import number, strict_int
from ..sampling.tiling import TileLattice, TileTable

__all__ = ["UnitRequests", "RequestTally", "unit_requests"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnitRequests:
    """Per-unit results of :func:`unit_requests` (arrays of length ``n_units``).

    Attributes
    ----------
    requests : numpy.ndarray
        Coalesced requests of each unit (int64).
    pixels : numpy.ndarray
        Pixels of those requests, summed per unit (int64, one band).
    largest : numpy.ndarray
        Pixels of each unit's largest request (int64).
    fallback_groups : int
        (unit, zone) groups planned by ``plan_requests`` rather than the shortcut.
    """

    requests: np.ndarray
    pixels: np.ndarray
    largest: np.ndarray
    fallback_groups: int


def unit_requests(table: TileTable, chunk_size: int, n_bands: int, *, byte_limit: int = REQUEST_BYTE_LIMIT,
                  max_side: int = MAX_DIMENSION, max_waste: float = MAX_WASTE) -> UnitRequests:
    """Coalesced requests of every work unit of ``table``, exactly as ``plan_requests`` plans them.

    Units are rows ``[k * chunk_size, (k + 1) * chunk_size)`` (as :func:`~rsembed_dask.sampling.units.work_units`).
    A (unit, zone) group whose tile-index bounding box passes ``plan_requests``' tests is
    one request of that box; any other group is planned by ``plan_requests``' rule on its
    tiles (:func:`~rsembed_dask.providers.coalesce.plan_lattice`). Both give the same plan
    (see the module docstring). A table too large to hold goes through :class:`RequestTally`
    piece by piece instead.

    Parameters
    ----------
    table : TileTable
        One scale's tiles.
    chunk_size : int
        Tiles per work unit.
    n_bands : int
        Bands per request.
    byte_limit, max_side, max_waste
        As :func:`~rsembed_dask.providers.coalesce.plan_requests`.

    Returns
    -------
    UnitRequests

    Raises
    ------
    SpecError
        ``chunk_size`` or ``n_bands`` is not an integer >= 1, or a limit is out of
        ``plan_requests``' range.
    """
    tally = RequestTally(table.scale_m, table.image_size, chunk_size, n_bands, byte_limit=byte_limit,
                         max_side=max_side, max_waste=max_waste, per_unit=True)
    tally.add(table)
    tally.finish()
    return tally.per_unit()


class RequestTally:
    """The coalesced requests of one scale's work units, from its tile table fed piece by piece.

    :meth:`add` takes the table's rows in order, in pieces of any size (a unit may straddle
    pieces: under one unit of rows is held between them); :meth:`finish` plans the last,
    short unit. The totals are then the attributes; :meth:`per_unit` has them unit by unit
    when asked for (``per_unit=True``).

    Parameters
    ----------
    scale_m : float
    image_size : int
    chunk_size : int
        Tiles per work unit.
    n_bands : int
        Bands per request.
    byte_limit, max_side, max_waste
        As :func:`~rsembed_dask.providers.coalesce.plan_requests`.
    per_unit : bool
        Keep each unit's counts (three int64 per unit).

    Attributes
    ----------
    units, requests, pixels, largest, fallback_groups : int
        Units planned; their coalesced requests; those requests' pixels (one band); the
        largest request's pixels; (unit, zone) groups planned by the rule itself rather
        than the shortcut.
    """

    def __init__(self, scale_m: float, image_size: int, chunk_size: int, n_bands: int, *,
                 byte_limit: int = REQUEST_BYTE_LIMIT, max_side: int = MAX_DIMENSION, max_waste: float = MAX_WASTE,
                 per_unit: bool = False):
        strict_int("chunk_size", chunk_size)
        strict_int("n_bands", n_bands)
        self.scale_m, self.image_size = float(scale_m), int(image_size)
        self.chunk, self.n_bands = int(chunk_size), int(n_bands)
        # plan_requests' checks, once (plan_lattice, its rule, checks nothing)
        self.byte_limit, self.max_side = strict_int("byte_limit", byte_limit), strict_int("max_side", max_side)
        self.max_waste = number("max_waste", max_waste, lo=1)
        self.units = self.requests = self.pixels = self.largest = self.fallback_groups = 0
        self._groups = 0
        self._keep: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = [] if per_unit else None
        self._held: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._lattices: dict[int, TileLattice] = {}

    def add(self, table: TileTable) -> None:
        """Plan the whole units among the next rows (``table``: the scale's next piece)."""
        epsg, row, col = table.epsg, table.row, table.col
        if self._held is not None:
            epsg, row, col = (np.concatenate([h, a]) for h, a in zip(self._held, (epsg, row, col)))
            self._held = None
        whole = len(epsg) // self.chunk * self.chunk
        if whole:
            self._plan(epsg[:whole], row[:whole], col[:whole])
        if whole < len(epsg):  # a copy: a view would keep the whole piece alive
            self._held = (epsg[whole:].copy(), row[whole:].copy(), col[whole:].copy())

    def finish(self) -> None:
        """Plan the last unit (shorter than ``chunk_size``) if rows are held."""
        if self._held is not None:
            self._plan(*self._held)
            self._held = None
        if self.fallback_groups:
            log.debug("unit_requests %g m: %d of %d (unit, zone) groups planned by plan_requests' rule",
                      self.scale_m, self.fallback_groups, self._groups)

    def per_unit(self) -> UnitRequests:
        """Each unit's counts (after :meth:`finish`; needs ``per_unit=True``)."""
        if self._keep is None:
            raise SpecError("per_unit", False, "True to keep each unit's counts")
        parts = list(zip(*self._keep)) or [[], [], []]
        req, px, big = (np.concatenate([np.zeros(0, np.int64), *p]) for p in parts)
        return UnitRequests(req, px, big, self.fallback_groups)

    def _plan(self, epsg: np.ndarray, row: np.ndarray, col: np.ndarray) -> None:
        """Plan consecutive units (all whole but perhaps the last) and add them up."""
        n, chunk, size = len(epsg), self.chunk, self.image_size
        n_units = -(-n // chunk)
        unit = np.arange(n, dtype=np.int64) // chunk
        if int(epsg.min()) == int(epsg.max()):  # one zone: each unit is one group, in order
            starts = np.arange(0, n, chunk, dtype=np.int64)
            g_unit = np.arange(n_units, dtype=np.int64)
        else:
            order = np.lexsort((epsg, unit))  # groups (unit, zone); stable inside a group
            unit, epsg, row, col = unit[order], epsg[order], row[order], col[order]
            starts = np.flatnonzero(np.r_[True, (np.diff(unit) != 0) | (np.diff(epsg) != 0)])
            g_unit = unit[starts]
        counts = np.diff(np.r_[starts, n])
        width = (np.maximum.reduceat(col, starts) - np.minimum.reduceat(col, starts) + 1) * size
        height = (np.maximum.reduceat(row, starts) - np.minimum.reduceat(row, starts) + 1) * size
        area = width * height
        # plan_requests' three tests, on the group's union grid (tiles are distinct, so the
        # members' summed pixels are count * size^2); a single tile is always one request.
        fits = (counts == 1) | ((area * self.n_bands * BYTES_PER_SAMPLE <= self.byte_limit)
                                & (np.maximum(width, height) <= self.max_side)
                                & (area <= self.max_waste * (counts * size * size)))
        bad = np.flatnonzero(~fits)
        self.units += n_units
        self._groups += len(starts)
        self.fallback_groups += len(bad)
        self.requests += int(np.count_nonzero(fits))
        self.pixels += int(area[fits].sum())
        self.largest = max(self.largest, int(area[fits].max(initial=0)))
        keep = self._keep is not None
        if keep:
            requests = np.bincount(g_unit[fits], minlength=n_units).astype(np.int64)
            pixels = np.zeros(n_units, np.int64)
            largest = np.zeros(n_units, np.int64)
            np.add.at(pixels, g_unit[fits], area[fits])
            np.maximum.at(largest, g_unit[fits], area[fits])
        for g in bad.tolist():
            s, c = int(starts[g]), int(counts[g])
            code = int(epsg[s])
            lattice = self._lattices.setdefault(code, TileLattice(code, self.scale_m, size))
            bounds = lattice.tile_bounds(row[s:s + c], col[s:s + c])
            plan = plan_lattice(*bounds, np.full(c, size * size, np.int64), self.scale_m, self.n_bands,
                                byte_limit=self.byte_limit, max_side=self.max_side, max_waste=self.max_waste)
            px = [size * size if union is None else union[2] * union[3] for _, union in plan]
            self.requests += len(plan)
            self.pixels += sum(px)
            self.largest = max(self.largest, max(px))
            if keep:
                k = int(g_unit[g])
                requests[k] += len(plan)
                pixels[k] += sum(px)
                largest[k] = max(int(largest[k]), max(px))
        if keep:
            self._keep.append((requests, pixels, largest))  # type: ignore[union-attr]
