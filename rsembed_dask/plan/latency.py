"""Earth Engine request latency (given, assumed or measured) and the fetch time it implies.

Fetching is bound by Earth Engine's quota, per project: at most ``concurrency``
requests in flight (default 40) and ``requests_per_s`` started per second
(default 100). With a mean latency ``L`` per request, ``R`` requests take
``max(R * L / concurrency, R / requests_per_s)`` seconds (:func:`fetch_time`):
latency-bound when ``L > concurrency / requests_per_s`` (0.4 s by default),
quota-bound otherwise; and never less than one latency (a handful of requests
still takes one round trip). The GPU side is not included.

``L`` is a :class:`Latency`: given by the user, :func:`assumed_latency` of the
request size, or timed on a backend by :func:`measure_latency`.

Examples
--------
>>> fetch_time(1000, 2.0).seconds       # latency-bound: 1000 x 2 s / 40
50.0
>>> fetch_time(1000, 0.1).bound         # quota-bound: 1000 / 100 per s = 10 s > 2.5 s
'quota'
>>> round(assumed_latency(2 ** 20), 2)  # a 1 MiB request
1.25
"""

from __future__ import annotations

import logging
import numbers
import statistics
import time
from dataclasses import dataclass

import numpy as np

from ..errors import NoImageryError, SpecError
from ..providers.coalesce import plan_requests
from ..providers.limits import EE_CONCURRENCY, EE_REQUESTS_PER_S
from .._validate import number, strict_int
from ..providers.base import Provider
from ..sampling.tiling import TileTable
from ..sampling.units import default_unit_size
from ..specs import SensorSpec, TemporalSpec

__all__ = [
    "ASSUMED_LATENCY_BASE_S", "ASSUMED_LATENCY_S_PER_MIB",
    "FetchTime", "Latency", "assumed_latency", "fetch_time", "measure_latency",
]

log = logging.getLogger(__name__)


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
_MIB = 2 ** 20


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

    Raises
    ------
    SpecError
        An argument out of range, naming it.
    """
    if isinstance(requests, bool) or not isinstance(requests, numbers.Integral) or requests < 0:
        raise SpecError("requests", requests, "an integer >= 0")
    number("latency_s", latency_s, lo=0, lo_open=True)
    if isinstance(concurrency, bool) or not isinstance(concurrency, numbers.Integral) or concurrency < 1:
        raise SpecError("concurrency", concurrency, "an integer >= 1 (concurrent requests)")
    number("requests_per_s", requests_per_s, lo=0, lo_open=True)
    by_latency = requests * float(latency_s) / concurrency
    if requests:  # fewer requests than concurrency still take one round trip
        by_latency = max(by_latency, float(latency_s))
    by_quota = requests / float(requests_per_s)
    return FetchTime(int(requests), float(latency_s), int(concurrency), float(requests_per_s),
                     max(by_latency, by_quota), "latency" if by_latency >= by_quota else "quota")


def assumed_latency(nbytes: float) -> float:
    """The assumed latency of a request of ``nbytes`` (see :data:`ASSUMED_LATENCY_BASE_S`).

    Parameters
    ----------
    nbytes : float
        Bytes of the answer.

    Returns
    -------
    float
        Seconds: 1 s plus 0.25 s per MiB.

    Examples
    --------
    >>> assumed_latency(2 * 2**20)
    1.5
    """
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
        :func:`~rsembed_dask.plan.estimate.estimate_campaign`: :func:`assumed_latency` of
        each mode's mean request size).
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
        number("latency_s", latency_s, lo=0, lo_open=True)
        return cls(float(latency_s), float(latency_s), "given",
                   "given; the same for single and coalesced requests (coalesced ones are larger "
                   "and likely slower: --measure-latency tells)")

    @classmethod
    def assumed(cls) -> Latency:
        """No latency given or measured: :func:`assumed_latency` of each mode's mean request size."""
        return cls(ASSUMED_LATENCY_BASE_S, ASSUMED_LATENCY_BASE_S, "assumed",
                   "not measured: pass --latency-s or --measure-latency")


def measure_latency(provider: Provider, table: TileTable, *, n_bands: int, temporal: TemporalSpec,
                    chunk_size: int | None = None,
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
        E.g. from :func:`rsembed_dask.providers.backends.open_backend` (``"emulator"`` works offline).
    table : TileTable
    n_bands : int
        Bands to request (Sentinel-2, RGB first).
    temporal : TemporalSpec
        The composite's window.
    chunk_size : int, optional
        Tiles per unit (default :func:`~rsembed_dask.sampling.units.default_unit_size`).
    samples : int
        Units to sample.

    Returns
    -------
    Latency
        ``source="measured"``.

    Raises
    ------
    NoImageryError
        No sampled request found imagery.
    """

    strict_int("samples", samples)
    strict_int("n_bands", n_bands)
    if n_bands > len(_S2_BAND_ORDER):
        raise SpecError("n_bands", n_bands, f"at most {len(_S2_BAND_ORDER)} Sentinel-2 bands to measure with")
    if not len(table):
        raise SpecError("aoi", "no tiles", "an AOI with at least one tile to measure latency on")
    chunk = default_unit_size(table.block) if chunk_size is None else int(chunk_size)
    sensor = SensorSpec(bands=_S2_BAND_ORDER[:n_bands], scale_m=table.scale_m)
    n_units = -(-len(table) // chunk)
    picks = sorted({int(round(v)) for v in np.linspace(0, n_units - 1, min(samples, n_units))})
    single: list[float] = []
    coalesced: list[float] = []
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
                             f"in {temporal}; try another window (--start/--end or --window)")
    detail = (f"median of {len(single)} single {table.image_size} px and {len(coalesced)} coalesced requests "
              f"(largest of units {picks}: {', '.join(f'{h}x{w}' for h, w in sizes)} px) at {table.scale_m:g} m")
    log.info("measured latency: %s", detail)
    return Latency(statistics.median(single), statistics.median(coalesced), "measured", detail)
