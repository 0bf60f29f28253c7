"""Planning a tiling campaign before anything runs: tiles, units, requests, bytes, cube size, time.

:func:`plan_campaign` tiles an AOI exactly as a campaign does
(:func:`~rsembed_dask.tiling.tile_aoi`), cuts each scale's tile table into work
units exactly as the campaign does (:func:`~rsembed_dask.sampling.work_units`)
and counts the Earth Engine requests each unit sends, without coalescing (one
``computePixels`` per footprint) and with it (the real
:func:`~rsembed_dask.providers.coalesce.plan_requests` applied per unit, as
:func:`~rsembed_dask.units.fetch_unit` does). Nothing is fetched or written.

Counting requests
-----------------
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

Time estimate
-------------
Fetching is bound by Earth Engine's quota, per project: at most ``concurrency``
requests in flight (default 40) and ``requests_per_s`` started per second
(default 100). With a mean latency ``L`` per request, ``R`` requests take
``max(R * L / concurrency, R / requests_per_s)`` seconds (:func:`fetch_time`):
latency-bound when ``L > concurrency / requests_per_s`` (0.4 s by default),
quota-bound otherwise; and never less than one latency (a handful of requests
still takes one round trip). The GPU side is not included.

Examples
--------
>>> plan = plan_campaign((10.0, 45.0, 10.5, 45.3), scales=[10, 40], embed_dim=64)
>>> [(s.scale_m, s.footprints, s.work_units) for s in plan.scales]
[(10.0, 287, 5), (40.0, 20, 1)]
>>> plan.scales[0].requests_coalesced < plan.scales[0].requests_single
True
"""

from __future__ import annotations

import logging
import math
import numbers
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError, NoImageryError, SpecError
from .providers.coalesce import MAX_WASTE, plan_requests
from .providers.gee import BYTES_PER_SAMPLE, MAX_DIMENSION, REQUEST_BYTE_LIMIT
from .spatial_index import GEOHASH_PRECISION
from .tiling import DEFAULT_BLOCK, TileTable, Tiling, tile_aoi

__all__ = [
    "ASSUMED_LATENCY_BASE_S", "ASSUMED_LATENCY_S_PER_MIB", "EE_CONCURRENCY", "EE_REQUESTS_PER_S",
    "FetchTime", "Latency", "ScalePlan", "CampaignPlan", "UnitRequests",
    "assumed_latency", "fetch_time", "unit_requests", "plan_scale", "plan_campaign",
    "read_aoi", "resolve_embed_dim", "measure_latency",
]

log = logging.getLogger(__name__)

#: Earth Engine's default quota per cloud project: 40 concurrent requests ...
EE_CONCURRENCY = 40
#: ... and 100 requests started per second.
EE_REQUESTS_PER_S = 100

#: Assumed latency of one ``computePixels`` request when none is given or measured:
#: ``base + per_mib * request MiB``. NOT measured (these machines cannot reach Earth
#: Engine); order-of-magnitude guesses to be replaced by ``--measure-latency --backend gee``.
#: The fixed part (1 s) is an authenticated HTTPS round trip plus Earth Engine parsing
#: the expression graph and filtering the collection by date, bounds and cloud cover ...
ASSUMED_LATENCY_BASE_S = 1.0
#: ... and the per-MiB part (0.25 s) the per-pixel work of a median composite over a
#: season of scenes plus transfer: a 224 px RGB tile (0.29 MiB) is assumed to take
#: about 1.1 s, a coalesced 8 x 8 block (18.4 MiB) about 5.6 s. A size-dependent
#: latency keeps the estimate from crediting coalescing with the whole request ratio.
ASSUMED_LATENCY_S_PER_MIB = 0.25

#: Bands of Sentinel-2 in the order ``--bands N`` takes them for latency measurements
#: (RGB first, as the ScaleMAE card).
_S2_BAND_ORDER = ("B4", "B3", "B2", "B8", "B5", "B6", "B7", "B8A", "B11", "B12", "B1", "B9")
#: Zarr v3 variable-length UTF-8 stores a 4-byte length before every string.
_VLEN_PREFIX = 4
_MIB = 2 ** 20


# --------------------------------------------------------------------------- time


@dataclass(frozen=True)
class FetchTime:
    """Fetch-bound time of ``requests`` under Earth Engine's quota.

    Attributes
    ----------
    requests : int
    latency_s : float
        Mean latency of one request.
    concurrency : int
        Requests in flight at most.
    requests_per_s : float
        Requests started per second at most.
    seconds : float
        ``max(requests * latency_s / concurrency, requests / requests_per_s)``, and at
        least ``latency_s`` when there is a request.
    bound : str
        ``"latency"`` (concurrency x latency limits) or ``"quota"`` (requests/s limits).
    """

    requests: int
    latency_s: float
    concurrency: int
    requests_per_s: float
    seconds: float
    bound: str


def fetch_time(requests: int, latency_s: float, concurrency: int = EE_CONCURRENCY,
               requests_per_s: float = EE_REQUESTS_PER_S) -> FetchTime:
    """Seconds to send ``requests`` at ``concurrency`` in flight and ``requests_per_s``.

    Parameters
    ----------
    requests : int
        Requests to send (>= 0).
    latency_s : float
        Mean latency of one request in seconds (> 0).
    concurrency : int
        Earth Engine concurrent-request quota (default 40).
    requests_per_s : float
        Earth Engine request-rate quota (default 100).

    Returns
    -------
    FetchTime

    Examples
    --------
    >>> fetch_time(1000, 2.0).seconds       # latency-bound: 1000 x 2 s / 40
    50.0
    >>> fetch_time(1000, 0.1).bound         # quota-bound: 1000 / 100 per s = 10 s > 2.5 s
    'quota'
    """
    if isinstance(requests, bool) or not isinstance(requests, numbers.Integral) or requests < 0:
        raise SpecError("requests", requests, "an integer >= 0")
    _positive("latency_s", latency_s)
    if isinstance(concurrency, bool) or not isinstance(concurrency, numbers.Integral) or concurrency < 1:
        raise SpecError("concurrency", concurrency, "an integer >= 1 (concurrent requests)")
    _positive("requests_per_s", requests_per_s)
    by_latency = requests * float(latency_s) / concurrency
    if requests:  # fewer requests than concurrency still take one round trip
        by_latency = max(by_latency, float(latency_s))
    by_quota = requests / float(requests_per_s)
    return FetchTime(int(requests), float(latency_s), int(concurrency), float(requests_per_s),
                     max(by_latency, by_quota), "latency" if by_latency >= by_quota else "quota")


def assumed_latency(nbytes: float) -> float:
    """The assumed latency of a request of ``nbytes`` (see :data:`ASSUMED_LATENCY_BASE_S`)."""
    return ASSUMED_LATENCY_BASE_S + ASSUMED_LATENCY_S_PER_MIB * float(nbytes) / _MIB


@dataclass(frozen=True)
class Latency:
    """Mean request latency per mode and where it comes from.

    Attributes
    ----------
    single_s : float
        Latency of one footprint's request (no coalescing).
    coalesced_s : float
        Latency of a typical coalesced request.
    source : str
        ``"given"``, ``"measured"`` or ``"assumed"`` (``None`` passed to
        :func:`plan_campaign`: :func:`assumed_latency` of each mode's mean request size).
    detail : str
        One line of provenance.
    """

    single_s: float
    coalesced_s: float
    source: str
    detail: str = ""

    @classmethod
    def given(cls, latency_s: float) -> Latency:
        """One latency for both modes, as given by the user."""
        _positive("latency_s", latency_s)
        return cls(float(latency_s), float(latency_s), "given",
                   "given; the same for single and coalesced requests (coalesced ones are larger "
                   "and likely slower: --measure-latency tells)")


# --------------------------------------------------------------------------- requests


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

    Units are rows ``[k * chunk_size, (k + 1) * chunk_size)`` (as :func:`~rsembed_dask.sampling.work_units`).
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
    """
    _check_int("chunk_size", chunk_size)
    _check_int("n_bands", n_bands)
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


# --------------------------------------------------------------------------- per scale


@dataclass(frozen=True)
class ScalePlan:
    """What one scale of a tiling campaign will fetch and store.

    Attributes
    ----------
    scale_m : float
    image_size, n_bands, chunk_size : int
    footprints : int
        Tiles (one footprint each).
    zones : int
        UTM zones with tiles.
    blocks : int
        Tile blocks with tiles (one zone-grid chunk each).
    work_units : int
    requests_single, requests_coalesced : int
        Earth Engine requests without and with coalescing.
    pixels_single, pixels_coalesced : int
        Pixels fetched (per band) without and with coalescing.
    bytes_single, bytes_coalesced : int
        Bytes fetched (``pixels * n_bands * BYTES_PER_SAMPLE``).
    largest_request_bytes : int
        The largest coalesced request.
    fallback_groups : int
        (unit, zone) groups planned by ``plan_requests`` itself (see :func:`unit_requests`).
    sample_cube_bytes, grids_bytes : int
        Uncompressed upper bounds of the scale's sample cube and zone grids (see
        :func:`plan_scale`).
    """

    scale_m: float
    image_size: int
    n_bands: int
    chunk_size: int
    footprints: int
    zones: int
    blocks: int
    work_units: int
    requests_single: int
    requests_coalesced: int
    pixels_single: int
    pixels_coalesced: int
    bytes_single: int
    bytes_coalesced: int
    largest_request_bytes: int
    fallback_groups: int
    sample_cube_bytes: int
    grids_bytes: int

    @property
    def cube_bytes(self) -> int:
        return self.sample_cube_bytes + self.grids_bytes

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cube_bytes": self.cube_bytes}


def plan_scale(table: TileTable, *, n_bands: int = 3, chunk_size: int = DEFAULT_BLOCK ** 2,
               embed_dim: int = 1024, grid_shape: tuple[int, int] | None = None) -> ScalePlan:
    """Count the footprints, units, requests, bytes and cube size of one scale.

    Cube size is the uncompressed upper bound of what the tiling store holds for the
    scale: the sample cube (embedding ``N x D`` float32, token grids ``N x D x gy x gx``
    when ``grid_shape``, status int8, input_res_m and valid_fraction float32, error
    strings counted empty (4-byte length; failed samples add up to 200 bytes each),
    coordinates: ids, lon, lat, geohash, geometry as WKB hex) and the zone grids (one
    ``block x block`` chunk of embedding float32 + status int8 + sample_index int64 per
    block with tiles; chunks of empty blocks are never written), plus their coordinates.
    """
    from .tile_cube import _grid_extent

    _check_int("embed_dim", embed_dim)
    n, size = len(table), table.image_size
    per = unit_requests(table, chunk_size, n_bands)
    tile_px = size * size
    px_coalesced = int(per.pixels.sum())
    blocks = _count_blocks(table)
    D = int(embed_dim)
    # sample cube: data arrays per sample, then coordinates
    per_sample = D * 4 + 1 + 4 + 4 + _VLEN_PREFIX
    if grid_shape is not None:
        per_sample += D * int(grid_shape[0]) * int(grid_shape[1]) * 4
    coords = 8 + 8 + (_VLEN_PREFIX + GEOHASH_PRECISION)  # lon, lat, geohash
    wkb_hex = 0
    if n:
        head = table.slice(0, min(n, 16))
        wkb_hex = 2 * max(len(w) for w in head.wkb)
    sample_cube = n * (per_sample + coords + _VLEN_PREFIX + wkb_hex) + _id_bytes(table) + D * 8 + 8
    grids = blocks * table.block ** 2 * (D * 4 + 1 + 8)
    for code in table.zones():
        _, ny, _, nx = _grid_extent(table, code)
        grids += (ny + nx) * 8 + D * 8
    return ScalePlan(
        scale_m=table.scale_m, image_size=size, n_bands=int(n_bands), chunk_size=int(chunk_size),
        footprints=n, zones=len(table.zones()) if n else 0, blocks=blocks, work_units=len(per.requests),
        requests_single=n, requests_coalesced=int(per.requests.sum()),
        pixels_single=n * tile_px, pixels_coalesced=px_coalesced,
        bytes_single=n * tile_px * n_bands * BYTES_PER_SAMPLE,
        bytes_coalesced=px_coalesced * n_bands * BYTES_PER_SAMPLE,
        largest_request_bytes=int(per.largest.max(initial=0)) * n_bands * BYTES_PER_SAMPLE,
        fallback_groups=per.fallback_groups, sample_cube_bytes=int(sample_cube), grids_bytes=int(grids))


def _count_blocks(table: TileTable) -> int:
    """Blocks with tiles: the table is in block order, each block one run of rows."""
    if not len(table):
        return 0
    b = table.block
    brow, bcol = table.row // b, table.col // b
    return 1 + int(((np.diff(table.epsg) != 0) | (np.diff(brow) != 0) | (np.diff(bcol) != 0)).sum())


def _digits(v: np.ndarray) -> np.ndarray:
    """Characters of ``str(v)`` for int64 ``v`` (exact: integer thresholds, no logarithms)."""
    a = np.abs(v)
    d = np.ones(len(v), np.int64)
    for k in range(1, 19):
        d += a >= 10 ** k
    return d + (v < 0)


def _id_bytes(table: TileTable) -> int:
    """Bytes of the tile ids ``"{epsg}_{scale:g}m_{row}_{col}"`` as Zarr v3 strings."""
    if not len(table):
        return 0
    fixed = len(f"_{table.scale_m:g}m__") + _VLEN_PREFIX
    return int((_digits(table.epsg.astype(np.int64)) + _digits(table.row) + _digits(table.col) + fixed).sum())


# --------------------------------------------------------------------------- campaign


@dataclass(frozen=True)
class CampaignPlan:
    """The plan of a tiling campaign over all its scales.

    Attributes
    ----------
    aoi_bounds : tuple of float
        ``(minlon, minlat, maxlon, maxlat)`` of the AOI.
    aoi_label : str
        How the AOI was given (for the report).
    scales : tuple of ScalePlan
    model_id : str
    embed_dim : int
    embed_dim_source : str
    latency : Latency
    concurrency : int
    requests_per_s : float
    planning_s : float
        Wall time of the planning itself.
    """

    aoi_bounds: tuple[float, float, float, float]
    aoi_label: str
    scales: tuple[ScalePlan, ...]
    model_id: str
    embed_dim: int
    embed_dim_source: str
    latency: Latency
    concurrency: int = EE_CONCURRENCY
    requests_per_s: float = EE_REQUESTS_PER_S
    planning_s: float = 0.0
    notes: tuple[str, ...] = field(default=())

    def _total(self, name: str) -> int:
        return sum(getattr(s, name) for s in self.scales)

    @property
    def footprints(self) -> int:
        return self._total("footprints")

    @property
    def requests_single(self) -> int:
        return self._total("requests_single")

    @property
    def requests_coalesced(self) -> int:
        return self._total("requests_coalesced")

    @property
    def cube_bytes(self) -> int:
        return self._total("cube_bytes")

    def latency_for(self, coalesced: bool, sp: ScalePlan | None = None) -> float:
        """Mean latency of one request of a mode (assumed: from the mean request size)."""
        if self.latency.source != "assumed":
            return self.latency.coalesced_s if coalesced else self.latency.single_s
        group = [sp] if sp is not None else list(self.scales)
        req = sum(s.requests_coalesced if coalesced else s.requests_single for s in group)
        nbytes = sum(s.bytes_coalesced if coalesced else s.bytes_single for s in group)
        return assumed_latency(nbytes / req) if req else ASSUMED_LATENCY_BASE_S

    def fetch_time(self, coalesced: bool, sp: ScalePlan | None = None) -> FetchTime:
        """Fetch-bound time of one scale (``sp``) or of the whole campaign (all scales
        share one project's quota, so the total is the time of all requests together)."""
        group = [sp] if sp is not None else list(self.scales)
        req = sum(s.requests_coalesced if coalesced else s.requests_single for s in group)
        lat = self.latency_for(coalesced, sp)
        if self.latency.source == "assumed" and sp is None:
            # the request-weighted mean of the scales' latencies: total = sum of the scales
            lat = (sum(self.latency_for(coalesced, s) * (s.requests_coalesced if coalesced else s.requests_single)
                       for s in group) / req) if req else lat
        return fetch_time(req, lat, self.concurrency, self.requests_per_s)

    def as_dict(self) -> dict[str, Any]:
        """Everything as plain JSON types."""
        def times(sp):
            return {m: asdict(self.fetch_time(m == "coalesced", sp)) for m in ("single", "coalesced")}
        return {
            "aoi": {"label": self.aoi_label, "bounds": list(self.aoi_bounds)},
            "model": {"id": self.model_id, "embed_dim": self.embed_dim, "embed_dim_source": self.embed_dim_source},
            "quota": {"concurrency": self.concurrency, "requests_per_s": self.requests_per_s},
            "latency": asdict(self.latency),
            "scales": [{**s.as_dict(), "fetch_time": times(s)} for s in self.scales],
            "total": {"footprints": self.footprints, "work_units": self._total("work_units"),
                      "requests_single": self.requests_single, "requests_coalesced": self.requests_coalesced,
                      "pixels_single": self._total("pixels_single"),
                      "pixels_coalesced": self._total("pixels_coalesced"),
                      "bytes_single": self._total("bytes_single"),
                      "bytes_coalesced": self._total("bytes_coalesced"),
                      "sample_cube_bytes": self._total("sample_cube_bytes"),
                      "grids_bytes": self._total("grids_bytes"), "cube_bytes": self.cube_bytes,
                      "fetch_time": times(None)},
            "planning_s": self.planning_s,
            "notes": list(self.notes),
        }

    def format(self) -> str:
        """A text report: one column per scale and a total."""
        cols = [f"{s.scale_m:g} m" for s in self.scales] + ["total"]
        first = self.scales[0] if self.scales else None
        lines = [
            f"AOI {self.aoi_label}  (lon {self.aoi_bounds[0]:g}..{self.aoi_bounds[2]:g}, "
            f"lat {self.aoi_bounds[1]:g}..{self.aoi_bounds[3]:g})",
        ]
        if first is not None:
            lines.append(f"tiles of {first.image_size} px, {first.n_bands} bands x {BYTES_PER_SAMPLE} bytes, "
                         f"{first.chunk_size} tiles per work unit; model {self.model_id} "
                         f"(D = {self.embed_dim}, {self.embed_dim_source})")
        lines.append(f"Earth Engine quota: {self.concurrency} concurrent requests, {self.requests_per_s:g} requests/s")
        lat = self.latency
        if lat.source == "assumed":
            lines.append(f"latency per request: assumed {ASSUMED_LATENCY_BASE_S:g} s + "
                         f"{ASSUMED_LATENCY_S_PER_MIB:g} s/MiB ({self.latency_for(False):.2f} s single, "
                         f"{self.latency_for(True):.2f} s coalesced); {lat.detail}")
        else:
            lines.append(f"latency per request: {lat.source} {lat.single_s:.3f} s single, "
                         f"{lat.coalesced_s:.3f} s coalesced ({lat.detail})")
        lines.append("")

        def row(label, values):
            return f"{label:<34}" + "".join(f"{v:>15}" for v in values)

        def total_row(label, name, fmt):
            vals = [getattr(s, name) for s in self.scales]
            return row(label, [fmt(v) for v in vals] + [fmt(sum(vals))])

        def per_req(s_req, s_fp):
            return f"{s_fp / s_req:.1f}" if s_req else "-"

        lines.append(row("", cols))
        lines.append(total_row("footprints (tiles)", "footprints", _int))
        lines.append(row("UTM zones", [str(s.zones) for s in self.scales] + [""]))
        lines.append(total_row("work units", "work_units", _int))
        lines.append(total_row("requests, one per footprint", "requests_single", _int))
        lines.append(total_row("requests, coalesced", "requests_coalesced", _int))
        lines.append(row("  footprints per request", [per_req(s.requests_coalesced, s.footprints) for s in self.scales]
                         + [per_req(self.requests_coalesced, self.footprints)]))
        lines.append(row("  largest request", [_bytes(s.largest_request_bytes) for s in self.scales]
                         + [_bytes(max((s.largest_request_bytes for s in self.scales), default=0))]))
        lines.append(total_row("pixels to fetch, coalesced", "pixels_coalesced", _count))
        lines.append(total_row("bytes to fetch, coalesced", "bytes_coalesced", _bytes))
        lines.append(total_row("bytes to fetch, one per footprint", "bytes_single", _bytes))
        lines.append(total_row("cube on disk (uncompressed, max)", "cube_bytes", _bytes))
        lines.append(total_row("  sample cubes", "sample_cube_bytes", _bytes))
        lines.append(total_row("  zone grids", "grids_bytes", _bytes))
        for label, coalesced in (("fetch time, one per footprint", False), ("fetch time, coalesced", True)):
            ts = [self.fetch_time(coalesced, s) for s in self.scales] + [self.fetch_time(coalesced)]
            lines.append(row(label, [_duration(t.seconds) for t in ts]))
            lines.append(row("  bound by", [t.bound for t in ts]))
        lines.append("")
        lines.append("fetch time = max(requests x latency / concurrency, requests / requests-per-s); "
                     "GPU time not included")
        lines.extend(self.notes)
        lines.append(f"planned in {self.planning_s:.1f} s")
        return "\n".join(lines)


def plan_campaign(aoi, scales: Sequence[float] = (10, 20, 40), *, image_size: int = 224,
                  chunk_size: int | None = None, n_bands: int = 3, embed_dim: int = 1024,
                  embed_dim_source: str = "given", model_id: str = "", grid_shape: tuple[int, int] | None = None,
                  latency: Latency | float | None = None, concurrency: int = EE_CONCURRENCY,
                  requests_per_s: float = EE_REQUESTS_PER_S, block: int = DEFAULT_BLOCK,
                  aoi_label: str | None = None) -> CampaignPlan:
    """Plan a tiling campaign over ``aoi`` at ``scales`` without fetching anything.

    Parameters
    ----------
    aoi : Tiling or anything :func:`~rsembed_dask.tiling.tile_aoi` accepts
        The area (a ready :class:`~rsembed_dask.tiling.Tiling` is used as is).
    scales : sequence of float
        Pixel sizes in metres (ignored when ``aoi`` is a Tiling).
    image_size : int
        Tile side in pixels.
    chunk_size : int, optional
        Tiles per work unit (default ``block ** 2``, as the campaign).
    n_bands : int
        Bands fetched.
    embed_dim : int
        Embedding width ``D`` (see :func:`resolve_embed_dim`).
    embed_dim_source, model_id : str
        Provenance, for the report.
    grid_shape : tuple of int, optional
        Token grid ``(gy, gx)`` when token grids are stored too.
    latency : Latency, float or None
        A :class:`Latency`, one latency in seconds for both modes, or None for the
        assumed latency (:func:`assumed_latency` of each mode's mean request size).
    concurrency, requests_per_s
        Earth Engine quota (defaults: 40 concurrent, 100 per second).
    block : int
        Tiles per block side.
    aoi_label : str, optional
        How the AOI was given, for the report.

    Returns
    -------
    CampaignPlan
    """
    t0 = time.perf_counter()
    _check_int("n_bands", n_bands)
    _check_int("concurrency", concurrency)
    _positive("requests_per_s", requests_per_s)
    if isinstance(aoi, Tiling):
        tiling = aoi
    else:
        tiling = tile_aoi(aoi, scales, image_size, block=block)
    chunk = tiling.block ** 2 if chunk_size is None else chunk_size
    _check_int("chunk_size", chunk)
    if latency is None:
        lat = Latency(ASSUMED_LATENCY_BASE_S, ASSUMED_LATENCY_BASE_S, "assumed",
                      "not measured: pass --latency-s or --measure-latency")
    elif isinstance(latency, Latency):
        lat = latency
    else:
        lat = Latency.given(latency)
    plans = tuple(plan_scale(t, n_bands=n_bands, chunk_size=chunk, embed_dim=embed_dim, grid_shape=grid_shape)
                  for t in tiling.tables)
    import shapely

    bounds = tuple(float(v) for v in shapely.from_wkb(tiling.aoi_wkb).bounds)
    notes = []
    fallback = sum(p.fallback_groups for p in plans)
    if fallback:
        notes.append(f"{fallback} (unit, zone) groups did not fit one request and were planned by plan_requests")
    if chunk % tiling.block ** 2:
        notes.append(f"chunk size {chunk} is not a whole number of {tiling.block}x{tiling.block} blocks: "
                     "units straddle blocks, which costs requests")
    return CampaignPlan(bounds, aoi_label or "given", plans, model_id, int(embed_dim), embed_dim_source, lat,
                        int(concurrency), float(requests_per_s), time.perf_counter() - t0, tuple(notes))


# --------------------------------------------------------------------------- inputs


def read_aoi(text: str):
    """The AOI named by ``text``: ``"minlon,minlat,maxlon,maxlat"`` or a vector file.

    Files are read with geopandas (GeoJSON, GeoPackage, Shapefile ...; ``.parquet``
    as GeoParquet). Returns a bbox tuple or a GeoDataFrame, for :func:`tile_aoi`.

    Raises
    ------
    SpecError
        ``field="aoi"``: neither four comma-separated numbers nor a readable vector file.
    """
    allowed = ("'minlon,minlat,maxlon,maxlat' (degrees, e.g. -10,35,40,70) or an existing "
               "GeoJSON / GeoPackage / GeoParquet file")
    if not isinstance(text, str) or not text.strip():
        raise SpecError("aoi", text, allowed)
    path = Path(text).expanduser()
    if path.is_file():
        import geopandas as gpd
        from pyogrio.errors import DataSourceError

        try:
            gdf = gpd.read_parquet(path) if path.suffix.lower() in (".parquet", ".geoparquet") else gpd.read_file(path)
        except (OSError, ValueError, DataSourceError) as e:
            raise SpecError("aoi", text, f"{allowed} (reading it failed: {e})") from None
        return gdf
    parts = text.split(",")
    if len(parts) == 4:
        try:
            box = tuple(float(p) for p in parts)
        except ValueError:
            raise SpecError("aoi", text, allowed) from None
        if not all(math.isfinite(v) for v in box):
            raise SpecError("aoi", text, allowed)
        return box
    raise SpecError("aoi", text, allowed)


def resolve_embed_dim(model_id: str, image_size: int = 224) -> tuple[int, int, str]:
    """``(embed_dim, patch_size, source)`` of a model, without loading weights.

    The default hub checkpoint (``MVRL/scalemae-vitlarge-800``) is the ViT-L that rshf's
    ``ScaleMAE`` builds (D = 1024, patch 16): known without any download. Test configs
    and local directories are read by :func:`~rsembed_dask.weights.model_info`; other
    hub ids fetch their ``config.json`` only, and when that fails (offline) ViT-L is
    assumed, with a warning (pass ``embed_dim`` explicitly to override).
    """
    from .specs import DEFAULT_MODEL_ID, ModelSpec
    from .weights import VIT_LARGE, model_info

    if model_id == DEFAULT_MODEL_ID:
        return VIT_LARGE["embed_dim"], VIT_LARGE["patch_size"], "ViT-L of the published checkpoint"
    try:
        info = model_info(ModelSpec(model_id, image_size=image_size))
    except ModelError as e:
        if Path(model_id).expanduser().exists() or model_id.startswith("test-"):
            raise
        log.warning("cannot read the config of %r (%s); assuming ViT-L (D = 1024)", model_id, e)
        return VIT_LARGE["embed_dim"], VIT_LARGE["patch_size"], "assumed ViT-L: config.json not reachable"
    return info.embed_dim, info.patch_size, f"{info.source} config"


def measure_latency(provider, table: TileTable, *, n_bands: int, temporal, chunk_size: int | None = None,
                    samples: int = 3) -> Latency:
    """Median latency of real requests: coalesced (each sampled unit's largest request) and single.

    ``samples`` units spread evenly over ``table`` are planned with ``plan_requests``
    (spread, so that Earth Engine's cache of an identical request does not answer);
    each unit's largest planned request and its first footprint are fetched once
    through ``provider.fetch`` and timed. Requests without imagery are left out of the
    medians (their latency is not a composite's).

    Parameters
    ----------
    provider : Provider
        E.g. from :func:`rsembed_dask.backends.open_backend` (``"emulator"`` works offline).
    table : TileTable
    n_bands : int
        Bands to request (Sentinel-2, RGB first).
    temporal : TemporalSpec
        The composite's window.
    chunk_size : int, optional
        Tiles per unit (default ``block ** 2``).
    samples : int
        Units to sample.

    Raises
    ------
    NoImageryError
        No sampled request found imagery.
    """
    from .specs import SensorSpec

    _check_int("samples", samples)
    _check_int("n_bands", n_bands)
    if n_bands > len(_S2_BAND_ORDER):
        raise SpecError("n_bands", n_bands, f"at most {len(_S2_BAND_ORDER)} Sentinel-2 bands to measure with")
    if not len(table):
        raise SpecError("aoi", "no tiles", "an AOI with at least one tile to measure latency on")
    chunk = table.block ** 2 if chunk_size is None else int(chunk_size)
    sensor = SensorSpec(bands=_S2_BAND_ORDER[:n_bands], scale_m=table.scale_m)
    n_units = -(-len(table) // chunk)
    picks = sorted({int(round(v)) for v in np.linspace(0, n_units - 1, min(samples, n_units))})
    single, coalesced = [], []
    sizes = []
    for k in picks:
        lo, hi = k * chunk, min((k + 1) * chunk, len(table))
        grids = [table.lattice(int(e)).tile_grid(int(r), int(c))
                 for e, r, c in zip(table.epsg[lo:hi], table.row[lo:hi], table.col[lo:hi])]
        plan = plan_requests(grids, n_bands)
        big = max(plan, key=lambda r: r.grid.width * r.grid.height).grid
        for grid, out in ((big, coalesced), (grids[0], single)):
            t0 = time.perf_counter()
            try:
                provider.fetch(grid, sensor, temporal)
            except NoImageryError as e:
                log.info("latency sample %s: no imagery (%s); left out", grid, e)
                continue
            out.append(time.perf_counter() - t0)
        sizes.append(big.shape)
    if not single or not coalesced:
        raise NoImageryError(f"no latency measured: none of {len(picks)} sampled units had imagery "
                             f"in {temporal}; try another window (--start/--end)")
    detail = (f"median of {len(single)} single {table.image_size} px and {len(coalesced)} coalesced requests "
              f"(largest of units {picks}: {', '.join(f'{h}x{w}' for h, w in sizes)} px) at {table.scale_m:g} m")
    log.info("measured latency: %s", detail)
    return Latency(statistics.median(single), statistics.median(coalesced), "measured", detail)


# --------------------------------------------------------------------------- helpers


def _check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise SpecError(name, value, "an integer >= 1")


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise SpecError(name, value, "a finite number > 0")


def _int(v: int) -> str:
    return f"{int(v):,}"


def _count(v: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.2f} {unit}"
    return f"{v:g}"


def _bytes(v: float) -> str:
    for unit, div in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if v >= div:
            return f"{v / div:.1f} {unit}"
    return f"{int(v)} B"


def _duration(s: float) -> str:
    if s >= 2 * 86400:
        return f"{s / 86400:.1f} d"
    if s >= 2 * 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.0f} min"
    return f"{s:.1f} s"
