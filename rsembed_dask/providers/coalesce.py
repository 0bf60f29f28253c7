"""Request coalescing: neighbouring footprints served by one ``computePixels`` request.

Within a work unit (a chunk of samples at one scale), footprints in one UTM zone
that lie close together share one pixel lattice (grids are snapped to multiples
of ``scale_m``). One request for the smallest grid covering them, cropped per
footprint afterwards, gives exactly the pixels of one request per footprint and
costs one request instead of many: Earth Engine's quota counts requests (40
concurrent, 100/s per project), so this is the continent-scale lever.

This module is the planning maths only, in the spirit of google/Xee's
``_check_request_limit``: no I/O and no ``ee`` import. :func:`plan_requests`
groups footprints by CRS, pixel size and lattice phase, and splits each group
recursively until every request fits Earth Engine's limits and is not mostly
empty space.

Examples
--------
>>> from rsembed_dask.geo.grid import PixelGrid
>>> a = PixelGrid("EPSG:32631", 500000.0, 3450000.0, 10.0, 224, 224)
>>> b = PixelGrid("EPSG:32631", 502240.0, 3450000.0, 10.0, 224, 224)   # a's east neighbour
>>> far = PixelGrid("EPSG:32631", 600000.0, 3450000.0, 10.0, 224, 224)
>>> [(r.members, r.grid.shape) for r in plan_requests([a, b, far], n_bands=3)]
[((0, 1), (224, 448)), ((2,), (224, 224))]
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import SpecError
from ..geo.grid import PixelGrid
from .limits import BYTES_PER_SAMPLE, MAX_DIMENSION, REQUEST_BYTE_LIMIT

__all__ = ["CoalescedRequest", "plan_requests", "plan_lattice", "split_request", "MAX_WASTE"]

log = logging.getLogger(__name__)

#: A coalesced request may cover at most this many times the pixels of its members
#: (summed, overlaps counted once per member). A request's fixed cost (a round trip of
#: hundreds of ms, one unit of the 100 requests/s and 40-concurrent quotas) is worth
#: far more than a few extra pixels, but pixels between far-apart samples still cost
#: Earth Engine compute and transfer bytes: 2.0 at most doubles the bytes fetched,
#: which keeps any plan within 2x of per-sample traffic while merging every
#: touching or overlapping neighbourhood (e.g. a 4 x 4 block of 224 px chips at
#: 2 km spacing covers 0.85x the members' pixels).
MAX_WASTE = 2.0

#: Tolerance, in pixels, for two grids to be on the same lattice (as ``PixelGrid.offset_of``).
_LATTICE_TOL = 1e-6


@dataclass(frozen=True)
class CoalescedRequest:
    """One request: the ``grid`` to fetch and the indices of the footprints it serves.

    Attributes
    ----------
    grid : PixelGrid
        The union of the members' grids (on their common lattice).
    members : tuple of int
        Indices into the planned sequence of grids, ascending. Each member is
        cropped from the answer with ``grid.offset_of(member_grid)``.
    """

    grid: PixelGrid
    members: tuple[int, ...]


def plan_requests(grids: Sequence[PixelGrid], n_bands: int, *, byte_limit: int = REQUEST_BYTE_LIMIT,
                  max_side: int = MAX_DIMENSION, max_waste: float = MAX_WASTE) -> list[CoalescedRequest]:
    """Plan the fewest requests that serve ``grids`` within the request limits.

    Grids are grouped by CRS, pixel size and lattice phase (only grids on one
    lattice can be cropped from one answer). A group becomes one request when
    its union grid fits ``byte_limit`` and ``max_side`` and covers at most
    ``max_waste`` times the members' summed pixels; otherwise its members are
    split in two across the union's longer axis and each part is planned the
    same way. A union over the size limits is cut at the median of the member
    centres (balanced halves); one that is only too sparse is cut at the widest
    gap between member centres, so that one outlier does not split a cluster.
    A single footprint is always its own request, whatever its size
    (``check_request_size`` judges it when sent).

    Parameters
    ----------
    grids : sequence of PixelGrid
        The footprints, e.g. of one work unit at one scale.
    n_bands : int
        Bands per request (bytes = ``n_bands * pixels * BYTES_PER_SAMPLE``).
    byte_limit : int
        Largest request in bytes (Earth Engine: 48 MiB).
    max_side : int
        Largest request side in pixels (Earth Engine: 32768).
    max_waste : float
        Largest ratio of union pixels to summed member pixels (>= 1).

    Returns
    -------
    list of CoalescedRequest
        Every index of ``grids`` in exactly one request; requests ordered by
        their smallest member.

    Raises
    ------
    SpecError
        ``n_bands < 1``, ``byte_limit < 1``, ``max_side < 1``, ``max_waste < 1``,
        or an element of ``grids`` that is not a PixelGrid.

    Examples
    --------
    >>> tiles = [PixelGrid("EPSG:32631", 500000.0 + 2240 * c, 3450000.0 - 2240 * r, 10.0, 224, 224)
    ...          for r in range(2) for c in range(2)]
    >>> [r.members for r in plan_requests(tiles, n_bands=3)]
    [(0, 1, 2, 3)]
    >>> plan_requests(tiles, n_bands=3)[0].grid.shape
    (448, 448)
    """
    _check_int("n_bands", n_bands)
    _check_int("byte_limit", byte_limit)
    _check_int("max_side", max_side)
    if isinstance(max_waste, bool) or not isinstance(max_waste, numbers.Real) or not max_waste >= 1:
        raise SpecError("max_waste", max_waste, "a number >= 1 (union pixels over summed member pixels)")
    grids = list(grids)
    for i, g in enumerate(grids):
        if not isinstance(g, PixelGrid):
            raise SpecError(f"grids[{i}]", type(g).__name__, "a PixelGrid")

    groups: dict[tuple, list[int]] = {}
    for i, g in enumerate(grids):
        groups.setdefault(_lattice_key(g), []).append(i)

    out: list[CoalescedRequest] = []
    for members in groups.values():
        if len(members) == 1:
            out.append(CoalescedRequest(grids[members[0]], (members[0],)))
            continue
        first = grids[members[0]]
        bounds = np.array([grids[i].bounds for i in members]).T
        pixels = np.array([grids[i].width * grids[i].height for i in members], np.int64)
        for part, union in plan_lattice(*bounds, pixels, first.scale_m, n_bands, byte_limit=byte_limit,
                                        max_side=max_side, max_waste=max_waste):
            idx = [members[k] for k in part.tolist()]
            if union is None:
                out.append(CoalescedRequest(grids[idx[0]], tuple(idx)))
            else:
                left, top, width, height = union
                out.append(CoalescedRequest(PixelGrid(first.crs, left, top, first.scale_m, width, height),
                                            tuple(idx)))
    out.sort(key=lambda r: r.members[0])
    if log.isEnabledFor(logging.DEBUG):
        log.debug("plan_requests: %d footprints in %d requests", len(grids), len(out))
    return out


def plan_lattice(left: np.ndarray, bottom: np.ndarray, right: np.ndarray, top: np.ndarray, pixels: np.ndarray,
                 scale_m: float, n_bands: int, *, byte_limit: int = REQUEST_BYTE_LIMIT,
                 max_side: int = MAX_DIMENSION,
                 max_waste: float = MAX_WASTE) -> list[tuple[np.ndarray, tuple[float, float, int, int] | None]]:
    """:func:`plan_requests` of grids on one lattice, given as arrays: the rule itself.

    ``plan_requests`` groups its grids by lattice and plans each group here; callers that
    hold many footprints of one lattice as arrays (the campaign planner) call it directly,
    without building a :class:`~rsembed_dask.geo.grid.PixelGrid` per footprint.

    Parameters
    ----------
    left, bottom, right, top : numpy.ndarray
        The grids' bounds (float64, CRS units), as :attr:`PixelGrid.bounds`.
    pixels : numpy.ndarray
        Each grid's ``width * height`` (int64).
    scale_m : float
        The lattice's pixel size.
    n_bands, byte_limit, max_side, max_waste
        As :func:`plan_requests` (not checked again here).

    Returns
    -------
    list of (numpy.ndarray, tuple or None)
        Per request: the positions of its members (ascending), and the union grid's
        ``(left, top, width, height)``, or None for a request of one grid (that grid itself).
        In no particular order.
    """
    centres = ((left + right) / 2, (bottom + top) / 2)
    # left, bottom, -right, -top: one min per node gives the union (negation is exact)
    edges = np.stack([left, bottom, -right, -top])
    out: list[tuple[np.ndarray, tuple[float, float, int, int] | None]] = []
    todo = [np.arange(len(left))]  # a work list, not recursion: a chain of uneven splits stays flat
    while todo:
        idx = todo.pop()
        if len(idx) == 1:
            out.append((idx, None))
            continue
        # PixelGrid.union of the members, in Python floats as it computes them
        x0, y0, x1, y1 = edges[:, idx].min(axis=1).tolist()
        x1, y1 = -x1, -y1
        width, height = round((x1 - x0) / scale_m), round((y1 - y0) / scale_m)
        too_big = n_bands * height * width * BYTES_PER_SAMPLE > byte_limit or max(height, width) > max_side
        too_sparse = width * height > max_waste * int(pixels[idx].sum())
        if not (too_big or too_sparse):
            out.append((np.sort(idx), (x0, y1, width, height)))
        else:
            todo.extend(_split(centres[0 if width >= height else 1][idx], idx, at_gap=not too_big))
    return out


def split_request(request: CoalescedRequest, grids: Sequence[PixelGrid]) -> tuple[CoalescedRequest, CoalescedRequest]:
    """Two requests serving the members of ``request``: halves cut across its longer axis.

    Used when Earth Engine gives up on a request's work (``Computation timed out.``):
    each half covers its own members' union grid (so less ground and fewer pixels).

    Parameters
    ----------
    request : CoalescedRequest
        At least two members.
    grids : sequence of PixelGrid
        The planned footprints ``request.members`` index into.

    Examples
    --------
    >>> tiles = [PixelGrid("EPSG:32631", 500000.0 + 2240 * c, 3450000.0, 10.0, 224, 224) for c in range(4)]
    >>> whole = plan_requests(tiles, n_bands=3)[0]
    >>> [(r.members, r.grid.shape) for r in split_request(whole, tiles)]
    [((0, 1), (224, 448)), ((2, 3), (224, 448))]
    """
    if not isinstance(request, CoalescedRequest) or len(request.members) < 2:
        raise SpecError("request", request, "a CoalescedRequest with at least two members")
    grids = list(grids)
    members = np.array(request.members)
    axis = 0 if request.grid.width >= request.grid.height else 1
    low, high = _split(np.array([grids[i].center_xy[axis] for i in request.members]), members, at_gap=False)
    return tuple(CoalescedRequest(PixelGrid.union(grids[i] for i in part) if len(part) > 1 else grids[part[0]],
                                  tuple(sorted(part))) for part in (low.tolist(), high.tolist()))  # type: ignore[return-value]


def _check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise SpecError(name, value, "an integer >= 1")


def _lattice_key(g: PixelGrid) -> tuple:
    """CRS, pixel size and the grid's offset from the CRS origin in fractions of a pixel."""
    def phase(v: float) -> float:
        f = v / g.scale_m - round(v / g.scale_m)
        return 0.0 if abs(f) < _LATTICE_TOL else round(f % 1.0, 6)
    return g.crs, float(g.scale_m), phase(g.x0), phase(g.y0)


def _split(centres: np.ndarray, idx: np.ndarray, *, at_gap: bool) -> tuple[np.ndarray, np.ndarray]:
    """Two non-empty parts of ``idx`` (in its order), cut across the union's longer axis, given
    the members' ``centres`` along that axis (east/west on x when the union is at least as wide as
    high, else north/south on y).

    ``at_gap``: at the widest gap between consecutive member centres (a group that
    is too sparse is usually clusters with empty space between them; a median cut
    would split a cluster because of one outlier). Otherwise at the median centre
    (a group too large for one request: halves, so the recursion stays shallow).
    """
    if at_gap:
        order = np.argsort(centres, kind="stable")
        gaps = np.diff(centres[order])
        if len(gaps) and gaps.max() > 0:
            cut = int(np.argmax(gaps)) + 1  # first widest gap
            low = np.zeros(len(idx), bool)
            low[order[:cut]] = True
            return idx[low], idx[~low]
    else:
        ordered = np.sort(centres)
        m = len(ordered) // 2  # numpy.median's value: the middle one, or the mean of the middle two
        median = float(ordered[m]) if len(ordered) % 2 else float((ordered[m - 1] + ordered[m]) / 2)
        low = centres <= median
        if low.all():  # ties at the top: the median equals the largest centre
            low = centres < median
        if low.any() and not low.all():
            return idx[low], idx[~low]
    half = len(idx) // 2  # every centre equal along this axis
    return idx[:half], idx[half:]
