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
``plan_requests`` itself. Tests check the shortcut against ``plan_requests`` unit
by unit.

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
from typing import Any

import numpy as np

from ..providers.coalesce import MAX_WASTE, plan_requests
from ..providers.limits import BYTES_PER_SAMPLE, MAX_DIMENSION, REQUEST_BYTE_LIMIT
from .._validate import strict_int
from ..sampling.tiling import TileTable

__all__ = ["UnitRequests", "unit_requests"]

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
    one request of that box; any other group is planned by ``plan_requests`` on its tiles'
    grids. Both give the same plan (see the module docstring).

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
        ``chunk_size`` or ``n_bands`` is not an integer >= 1.
    """
    strict_int("chunk_size", chunk_size)
    strict_int("n_bands", n_bands)
    n = len(table)
    n_units = -(-n // int(chunk_size))
    requests = np.zeros(n_units, np.int64)
    pixels = np.zeros(n_units, np.int64)
    largest = np.zeros(n_units, np.int64)
    if n == 0:
        return UnitRequests(requests, pixels, largest, 0)
    size = table.image_size
    unit = np.arange(n, dtype=np.int64) // int(chunk_size)
    order = np.lexsort((table.epsg, unit))  # groups (unit, zone); stable inside a group
    u, e = unit[order], table.epsg[order]
    row, col = table.row[order], table.col[order]
    starts = np.flatnonzero(np.r_[True, (np.diff(u) != 0) | (np.diff(e) != 0)])
    counts = np.diff(np.r_[starts, n])
    g_unit = u[starts]
    width = (np.maximum.reduceat(col, starts) - np.minimum.reduceat(col, starts) + 1) * size
    height = (np.maximum.reduceat(row, starts) - np.minimum.reduceat(row, starts) + 1) * size
    area = width * height
    # plan_requests' three tests, on the group's union grid (tiles are distinct, so the
    # members' summed pixels are count * size^2); a single tile is always one request.
    fits = (counts == 1) | ((area * n_bands * BYTES_PER_SAMPLE <= byte_limit)
                            & (np.maximum(width, height) <= max_side)
                            & (area <= max_waste * (counts * size * size)))
    np.add.at(requests, g_unit[fits], 1)
    np.add.at(pixels, g_unit[fits], area[fits])
    np.maximum.at(largest, g_unit[fits], area[fits])
    bad = np.flatnonzero(~fits)
    lattices: dict[int, Any] = {}
    for g in bad.tolist():
        s, c = int(starts[g]), int(counts[g])
        code = int(e[s])
        lattice = lattices.setdefault(code, table.lattice(code))
        grids = [lattice.tile_grid(r, cc) for r, cc in zip(row[s:s + c].tolist(), col[s:s + c].tolist())]
        plan = plan_requests(grids, int(n_bands), byte_limit=byte_limit, max_side=max_side,
                             max_waste=max_waste)
        k = int(g_unit[g])
        requests[k] += len(plan)
        px = [r.grid.width * r.grid.height for r in plan]
        pixels[k] += sum(px)
        largest[k] = max(int(largest[k]), max(px))
    if len(bad):
        log.debug("unit_requests %g m: %d of %d (unit, zone) groups planned by plan_requests",
                  table.scale_m, len(bad), len(starts))
    return UnitRequests(requests, pixels, largest, len(bad))
