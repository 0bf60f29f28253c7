"""Estimating a tiling campaign before anything runs: tiles, units, requests, bytes, cube size, time.

:func:`estimate_campaign` tiles an AOI exactly as a campaign does
(:func:`~rsembed_dask.sampling.tiling.tile_aoi`, here one UTM zone at a time through
:func:`~rsembed_dask.sampling.tiling.tile_zones`, so the world fits in memory), cuts each
scale's tile table into work units exactly as the campaign does
(:func:`~rsembed_dask.sampling.units.work_units`) and, per scale (:func:`plan_scale`), counts the Earth Engine requests each unit
sends without coalescing (one ``computePixels`` per footprint) and with it
(:func:`~rsembed_dask.plan.requests.unit_requests`, exactly what
:func:`~rsembed_dask.campaign.tasks.fetch_unit` sends), the bytes fetched, the size of the
tiling store (:mod:`rsembed_dask.store.size`) and the fetch time under Earth
Engine's quota (:mod:`rsembed_dask.plan.latency`). Nothing is fetched or written.
:class:`CampaignPlan` holds the result; :func:`rsembed_dask.plan.report.format_plan` formats it.

Examples
--------
>>> plan = estimate_campaign((10.0, 45.0, 10.5, 45.3), scales=[10, 40], embed_dim=64)
>>> [(s.scale_m, s.footprints, s.work_units) for s in plan.scales]
[(10.0, 287, 1), (40.0, 20, 1)]
>>> plan.scales[0].requests_coalesced < plan.scales[0].requests_single
True
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .latency import (
    ASSUMED_LATENCY_BASE_S, FetchTime, Latency, assumed_latency, fetch_time)
from ..providers.limits import BYTES_PER_SAMPLE, EE_CONCURRENCY, EE_REQUESTS_PER_S
from .requests import RequestTally
from .._validate import number, strict_int
from ..store.size import TileCounts, grids_bytes, sample_cube_bytes
from ..sampling.tiling import DEFAULT_BLOCK, TileTable, Tiling, ZonedTiling, ZoneTiles, table_order, tile_zones
from ..sampling.units import default_unit_size
from ..specs import DEFAULT_IMAGE_SIZE, DEFAULT_MODEL_ID, DEFAULT_SCALES, ModelSpec, TemporalSpec, TemporalWindows

__all__ = ["ScalePlan", "CampaignPlan", "PlanProgress", "plan_scale", "estimate_campaign", "resolve_embed_dim"]

log = logging.getLogger(__name__)


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
        (unit, zone) groups planned by ``plan_requests`` itself (see :func:`~rsembed_dask.plan.requests.unit_requests`).
    sample_cube_bytes, grids_bytes : int
        Uncompressed upper bounds of the scale's sample cube and zone grids (see
        :mod:`rsembed_dask.store.size`).
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

    Requests are :func:`~rsembed_dask.plan.requests.unit_requests`' (exactly what
    ``fetch_unit`` sends, unit by unit); cube size is the uncompressed upper bound of
    what the tiling store holds for the scale (:mod:`rsembed_dask.store.size`).

    Parameters
    ----------
    table : TileTable
        One scale's tiles.
    n_bands : int
        Bands fetched.
    chunk_size : int
        Tiles per work unit.
    embed_dim : int
        Embedding width ``D``.
    grid_shape : tuple of int, optional
        Token grid ``(gy, gx)`` when token grids are stored too.

    Returns
    -------
    ScalePlan
    """
    strict_int("embed_dim", embed_dim)
    tally = RequestTally(table.scale_m, table.image_size, chunk_size, n_bands)
    tally.add(table)
    tally.finish()
    return _scale_plan(TileCounts.of(table), tally, table.scale_m, table.image_size, n_bands, embed_dim, grid_shape)


def _scale_plan(counts: TileCounts, tally: RequestTally, scale_m: float, size: int, n_bands: int, embed_dim: int,
                grid_shape: tuple[int, int] | None) -> ScalePlan:
    """The :class:`ScalePlan` of a scale's tile counts and finished request tally."""
    n, tile_px = counts.tiles, size * size
    return ScalePlan(
        scale_m=float(scale_m), image_size=size, n_bands=int(n_bands), chunk_size=tally.chunk,
        footprints=n, zones=counts.zones, blocks=counts.blocks, work_units=tally.units,
        requests_single=n, requests_coalesced=tally.requests,
        pixels_single=n * tile_px, pixels_coalesced=tally.pixels,
        bytes_single=n * tile_px * n_bands * BYTES_PER_SAMPLE,
        bytes_coalesced=tally.pixels * n_bands * BYTES_PER_SAMPLE,
        largest_request_bytes=tally.largest * n_bands * BYTES_PER_SAMPLE,
        fallback_groups=tally.fallback_groups,
        sample_cube_bytes=sample_cube_bytes(counts, embed_dim, grid_shape), grids_bytes=grids_bytes(counts, embed_dim))


@dataclass(frozen=True)
class PlanProgress:
    """Where :func:`estimate_campaign` is: one zone of one scale just planned.

    Attributes
    ----------
    scale_m : float
    epsg : int
        The zone just planned.
    step, steps : int
        Zones planned so far over all scales (1-based), and zones x scales in all.
    footprints : int
        Tiles planned so far, all scales.
    elapsed_s : float
        Seconds since planning began.
    """

    scale_m: float
    epsg: int
    step: int
    steps: int
    footprints: int
    elapsed_s: float


def _plan_zoned(zoned: ZonedTiling, chunk: int, n_bands: int, embed_dim: int, grid_shape: tuple[int, int] | None,
                progress: Callable[[PlanProgress], None] | None, t0: float) -> tuple[ScalePlan, ...]:
    """Each scale's plan, one zone at a time: a zone's tiles are counted, fed to the request
    tally in table order (:func:`~rsembed_dask.sampling.tiling.table_order`) and dropped."""
    steps = len(zoned.zones) * len(zoned.scales)
    done = footprints = 0
    plans = []
    for scale in zoned.scales:
        tally = RequestTally(scale, zoned.image_size, chunk, n_bands)
        counted: list[TileCounts] = []

        def counting(parts: Iterable[ZoneTiles], scale: float = scale) -> Iterator[ZoneTiles]:
            nonlocal done, footprints
            for (epsg, _), part in zip(zoned.zones, parts):
                counted.append(TileCounts.of(part.table))
                yield part  # the tally takes its complete blocks (and holds the others) ...
                done, footprints = done + 1, footprints + len(part.table)
                if progress is not None:  # ... before the zone is reported
                    progress(PlanProgress(scale, int(epsg), done, steps, footprints, time.perf_counter() - t0))

        for piece in table_order(counting(zoned.zone_tiles(scale))):
            tally.add(piece)
        tally.finish()
        counts = TileCounts(0, 0, zoned.block, 0, 0, 0, 0)
        for c in counted:
            counts += c
        plans.append(_scale_plan(counts, tally, scale, zoned.image_size, n_bands, embed_dim, grid_shape))
    return tuple(plans)


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
    windows : tuple of TemporalSpec
        The date windows (empty: one window, not named). Every window fetches the same
        footprints: the scales' numbers are per window, :meth:`all_windows` multiplies them.
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
    windows: tuple[TemporalSpec, ...] = field(default=())

    @property
    def n_windows(self) -> int:
        """Windows of the campaign (1 when none were named)."""
        return max(1, len(self.windows))

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

    def all_windows_fetch_time(self, coalesced: bool) -> FetchTime:
        """Fetch-bound time of every window's requests under one quota."""
        one = self.fetch_time(coalesced)
        return fetch_time(one.requests * self.n_windows, one.latency_s, self.concurrency, self.requests_per_s)

    def all_windows(self) -> dict[str, Any]:
        """The campaign over all its windows: footprints, requests, bytes, cube and fetch time
        multiplied by :attr:`n_windows` (the cube grows a ``time`` slice per window)."""
        n = self.n_windows
        keys = ("footprints", "work_units", "requests_single", "requests_coalesced", "pixels_single",
                "pixels_coalesced", "bytes_single", "bytes_coalesced", "sample_cube_bytes", "grids_bytes",
                "cube_bytes")
        return {"windows": n, **{k: self._total(k) * n for k in keys},
                "fetch_time": {m: asdict(self.all_windows_fetch_time(m == "coalesced"))
                               for m in ("single", "coalesced")}}

    def as_dict(self) -> dict[str, Any]:
        """Everything as plain JSON types."""
        def times(sp):
            return {m: asdict(self.fetch_time(m == "coalesced", sp)) for m in ("single", "coalesced")}
        return {
            "aoi": {"label": self.aoi_label, "bounds": list(self.aoi_bounds)},
            "model": {"id": self.model_id, "embed_dim": self.embed_dim, "embed_dim_source": self.embed_dim_source},
            "quota": {"concurrency": self.concurrency, "requests_per_s": self.requests_per_s},
            # the latencies the times use (for "assumed": of the mean request size of each mode)
            "latency": {**asdict(self.latency), "single_s": self.latency_for(False),
                        "coalesced_s": self.latency_for(True)},
            "windows": [{"start": w.start, "end": w.end} for w in self.windows],
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
            "all_windows": self.all_windows(),
            "planning_s": self.planning_s,
            "notes": list(self.notes),
        }


def estimate_campaign(aoi: Any, scales: Sequence[float] = DEFAULT_SCALES, *, image_size: int = DEFAULT_IMAGE_SIZE,
                      chunk_size: int | None = None, n_bands: int = 3, embed_dim: int = 1024,
                      embed_dim_source: str = "given", model_id: str = "",
                      grid_shape: tuple[int, int] | None = None, latency: Latency | float | None = None,
                      concurrency: int = EE_CONCURRENCY, requests_per_s: float = EE_REQUESTS_PER_S,
                      block: int = DEFAULT_BLOCK, aoi_label: str | None = None,
                      progress: Callable[[PlanProgress], None] | None = None,
                      windows: Any = None) -> CampaignPlan:
    """Estimate a tiling campaign over ``aoi`` at ``scales`` without fetching or writing anything.

    Not :func:`rsembed_dask.campaign.run.plan_campaign`, which validates a sample campaign
    and creates its cube. An AOI is planned one UTM zone at a time
    (:func:`~rsembed_dask.sampling.tiling.tile_zones`), so memory stays that of one zone's
    tiles whatever the AOI (the world at 10, 20 and 40 m is 132 M tiles); a ready
    :class:`~rsembed_dask.sampling.tiling.Tiling` is planned as it is, table by table.
    Both give the same plan.

    Parameters
    ----------
    aoi : Tiling, ZonedTiling or anything :func:`~rsembed_dask.sampling.tiling.tile_aoi` accepts
        The area (a ready Tiling or ZonedTiling is used as is).
    scales : sequence of float
        Pixel sizes in metres (ignored when ``aoi`` is a Tiling or ZonedTiling).
    image_size : int
        Tile side in pixels.
    chunk_size : int, optional
        Tiles per work unit (default :func:`~rsembed_dask.sampling.units.default_unit_size`, as the campaign).
    n_bands : int
        Bands fetched.
    embed_dim : int
        Embedding width ``D`` (see :func:`resolve_embed_dim`).
    embed_dim_source, model_id : str
        Provenance, for the report.
    grid_shape : tuple of int, optional
        Token grid ``(gy, gx)`` when token grids are stored too.
    latency : Latency, float or None
        A :class:`~rsembed_dask.plan.latency.Latency`, one latency in seconds for both modes,
        or None for the assumed latency (:func:`~rsembed_dask.plan.latency.assumed_latency`
        of each mode's mean request size).
    concurrency, requests_per_s
        Earth Engine quota (defaults: 40 concurrent, 100 per second).
    block : int
        Tiles per block side.
    aoi_label : str, optional
        How the AOI was given, for the report.
    progress : callable, optional
        Called with a :class:`PlanProgress` after each zone of each scale (not for a Tiling).
    windows : TemporalSpec, sequence of them or TemporalWindows, optional
        The date windows: every window fetches the same footprints, so the scales' numbers
        are per window and :meth:`CampaignPlan.all_windows` multiplies them.

    Returns
    -------
    CampaignPlan
    """
    t0 = time.perf_counter()
    named = () if windows is None else TemporalWindows.of(windows).windows
    strict_int("n_bands", n_bands)
    strict_int("concurrency", concurrency)
    strict_int("embed_dim", embed_dim)
    number("requests_per_s", requests_per_s, lo=0, lo_open=True)
    tiling = aoi if isinstance(aoi, (Tiling, ZonedTiling)) else tile_zones(aoi, scales, image_size, block=block)
    chunk = default_unit_size(tiling.block) if chunk_size is None else chunk_size
    strict_int("chunk_size", chunk)
    if latency is None:
        lat = Latency.assumed()
    elif isinstance(latency, Latency):
        lat = latency
    else:
        lat = Latency.given(latency)
    if isinstance(tiling, Tiling):
        plans = tuple(plan_scale(t, n_bands=n_bands, chunk_size=chunk, embed_dim=embed_dim, grid_shape=grid_shape)
                      for t in tiling.tables)
    else:
        plans = _plan_zoned(tiling, chunk, n_bands, embed_dim, grid_shape, progress, t0)
    import shapely

    from ..geo.aoi import aoi_bounds

    bounds = aoi_bounds(shapely.from_wkb(tiling.aoi_wkb))  # west > east across the antimeridian
    notes = []
    fallback = sum(p.fallback_groups for p in plans)
    if fallback:
        notes.append(f"{fallback} (unit, zone) groups did not fit one request and were planned by plan_requests")
    if chunk % tiling.block ** 2:
        notes.append(f"chunk size {chunk} is not a whole number of {tiling.block}x{tiling.block} blocks: "
                     "units straddle blocks, which costs requests")
    return CampaignPlan(bounds, aoi_label or "given", plans, model_id, int(embed_dim), embed_dim_source, lat,
                        int(concurrency), float(requests_per_s), time.perf_counter() - t0, tuple(notes), named)


def resolve_embed_dim(model_id: str, image_size: int = DEFAULT_IMAGE_SIZE) -> tuple[int, int, str]:
    """``(embed_dim, patch_size, source)`` of a model, without loading weights.

    The default hub checkpoint (``MVRL/scalemae-vitlarge-800``) is the ViT-L that rshf's
    ``ScaleMAE`` builds (D = 1024, patch 16): known without any download. Test configs
    and local directories are read by :func:`~rsembed_dask.embed.weights.model_info`; other
    hub ids fetch their ``config.json`` only, and when that fails (offline) ViT-L is
    assumed, with a warning (pass ``embed_dim`` explicitly to override).

    Parameters
    ----------
    model_id : str
        Hub id, local directory or test config name.
    image_size : int
        Input size in pixels (test configs and local models are built at it).

    Returns
    -------
    tuple
        ``(embed_dim, patch_size, source)``; ``source`` says where ``D`` came from.

    Raises
    ------
    ModelError
        A local directory or test config that cannot be read.
    """
    from ..embed.weights import VIT_LARGE, model_info

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
