"""The single-ROI API rs-embed users know: ``get_embedding`` and ``get_embeddings_batch``.

Footprints come from the same sampling code as campaigns, so a cube cell and
``get_embedding`` for the same sample and scale agree.

Examples
--------
>>> emb = get_embedding("scalemae_rgb", spatial=PointBuffer(3.0, 31.2, 1120),
...                     temporal=TemporalSpec.range("2022-01-01", "2022-04-01"),
...                     backend="emulator", model=ModelSpec("test-tiny"))   # doctest: +SKIP
>>> emb.data.shape, emb.meta["used_scale_m"]                               # doctest: +SKIP
((64,), 10.0)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .providers.backends import open_backend
from .errors import SpecError
from .providers.base import Patch
from .sampling.samples import Footprint, SampleTable, build_sample_table
from .specs import (BBox, ModelSpec, OutputSpec, PointBuffer, SensorSpec, TemporalSpec,
                    env_defaults)

__all__ = ["Embedding", "get_embedding", "get_embeddings_batch", "MODEL_NAMES"]

log = logging.getLogger(__name__)

#: Model names accepted as the first argument (rs-embed's card name).
MODEL_NAMES = ("scalemae_rgb",)


@dataclass(frozen=True)
class Embedding:
    """One ROI's embedding.

    Attributes
    ----------
    data : numpy.ndarray or xarray.DataArray
        ``(D,)`` pooled vector, or a ``(D, H, W)`` token grid DataArray.
    meta : dict
        Provenance: model, preprocessing, scale, temporal window, fetch grid.
    """

    data: Any
    meta: dict


def _sample_table(spatials: Sequence[PointBuffer | BBox]) -> SampleTable:
    import geopandas as gpd
    import shapely

    geoms = []
    for i, sp in enumerate(spatials):
        if isinstance(sp, PointBuffer):
            geoms.append(shapely.Point(sp.lon, sp.lat))
        elif isinstance(sp, BBox):
            geoms.append(shapely.box(sp.minlon, sp.minlat, sp.maxlon, sp.maxlat))
        else:
            raise SpecError(f"spatial[{i}]" if len(spatials) > 1 else "spatial", sp,
                            "a PointBuffer(lon, lat, buffer_m) or BBox(minlon, minlat, maxlon, maxlat)")
    gdf = gpd.GeoDataFrame(geometry=geoms, crs="EPSG:4326")
    table = build_sample_table(gdf)
    return table.take(np.argsort(table.ids.astype(np.int64)))  # back to input order


def _footprints(spatials, table: SampleTable, scale_m: float, image_size: int) -> list[Footprint]:
    return [table.footprint(i, scale_m, image_size,
                            buffer_m=sp.buffer_m if isinstance(sp, PointBuffer) else None)
            for i, sp in enumerate(spatials)]


def _resolve_model(model, device: str):
    from .embed.model import ScaleMAEEmbedder

    if isinstance(model, ScaleMAEEmbedder):
        return model
    if model is None:
        spec = ModelSpec.from_env(device=device)
    elif isinstance(model, str):
        spec = ModelSpec.from_env(model_id=model, device=device)
    elif isinstance(model, ModelSpec):
        spec = model if device == "auto" else model.replace(device=device)
    else:
        raise SpecError("model", model, "a ModelSpec, a model id string, a ScaleMAEEmbedder or None")
    return ScaleMAEEmbedder(spec)


def _fetch_all(provider, footprints: list[Footprint], sensor: SensorSpec, temporal: TemporalSpec,
               workers: int, coalesce: bool = True) -> list[Patch]:
    """One patch per footprint; with ``coalesce``, neighbours share one request, cropped.

    A provider with a ``preflight`` (Earth Engine) first checks its configuration
    (once per process): a bad project, URL, collection or band raises the same
    :class:`~rsembed_dask.errors.ConfigurationError` as a campaign's preflight.
    A footprint without imagery raises its :class:`~rsembed_dask.errors.NoImageryError`.
    """
    from .providers.coalesce import CoalescedRequest, plan_requests
    from .providers.fetching import fetch_coalesced

    preflight = getattr(provider, "preflight", None)
    if callable(preflight):
        preflight(sensor, temporal)
    grids = [fp.grid for fp in footprints]
    plan = (plan_requests(grids, len(sensor.bands)) if coalesce
            else [CoalescedRequest(g, (i,)) for i, g in enumerate(grids)])
    results = fetch_coalesced(provider, grids, plan, sensor, temporal, workers, thread_name="rsembed-fetch")
    patches = []
    for result in results:
        if isinstance(result, Exception):
            raise result
        patches.append(result)
    return patches


def get_embeddings_batch(model_name: str = "scalemae_rgb", *, spatials: Sequence[PointBuffer | BBox],
                         temporal: TemporalSpec, sensor: SensorSpec | None = None,
                         output: OutputSpec | None = None, backend: Any = "gee", device: str = "auto",
                         model: Any = None, gee_options: Mapping[str, Any] | None = None,
                         fetch_workers: int | None = None, coalesce: bool = True) -> list[Embedding]:
    """Embed many ROIs: fetched concurrently, inferred in batches.

    Parameters
    ----------
    model_name, temporal, sensor, output, backend, device, model, gee_options
        As in :func:`get_embedding`.
    spatials : sequence of PointBuffer or BBox
        The ROIs.
    fetch_workers : int, optional
        Concurrent fetch threads (default ``RS_EMBED_SCALEMAE_FETCH_WORKERS``, 8).
    coalesce : bool
        Neighbouring ROIs on one UTM lattice share one request and are cropped from it:
        the same pixels in fewer requests (default). ``False``: one request per ROI.

    Returns
    -------
    list of Embedding
        One per ROI, in the order of ``spatials``.

    Raises
    ------
    SpecError, ModelError, ProviderError
        As :func:`get_embedding`, for the first ROI that fails.
    """
    if model_name not in MODEL_NAMES:
        raise SpecError("model", model_name, f"one of {MODEL_NAMES}")
    if not isinstance(temporal, TemporalSpec):
        raise SpecError("temporal", temporal, "a TemporalSpec (TemporalSpec.range(start, end) or .year(y))")
    spatials = list(spatials)
    if not spatials:
        raise SpecError("spatials", spatials, "at least one PointBuffer or BBox")
    sensor = sensor or SensorSpec()
    output = output or OutputSpec.pooled()
    workers = fetch_workers or env_defaults()["fetch_workers"]
    embedder = _resolve_model(model, device)
    table = _sample_table(spatials)
    fps = _footprints(spatials, table, sensor.scale_m, embedder.spec.image_size)
    with open_backend(backend, gee_options=dict(gee_options or {})) as provider:
        patches = _fetch_all(provider, fps, sensor, temporal, workers, coalesce)
    return _embed_patches(embedder, patches, fps, sensor, temporal, output)


def _embed_patches(embedder, patches, fps, sensor, temporal, output) -> list[Embedding]:
    res = embedder.embed([p.data for p in patches], sensor.scale_m, output=output,
                         roi=[fp.roi for fp in fps])
    out = []
    for i, (patch, fp) in enumerate(zip(patches, fps)):
        meta = res.meta(i)
        meta.update(temporal=temporal.to_dict(), sensor=sensor.to_dict(),
                    fetch_grid={"crs": fp.grid.crs, "pixel_size_m": fp.grid.scale_m,
                                "shape": list(fp.grid.shape), "transform": list(fp.grid.transform)},
                    roi=list(fp.roi), valid_fraction=patch.valid_fraction)
        out.append(Embedding(_grid_array(res.grids[i], meta) if res.grids is not None else res.vectors[i],
                             meta))
    return out


def _grid_array(grid: np.ndarray, meta: dict):
    import xarray as xr

    return xr.DataArray(grid, dims=("feature", "y", "x"), name="embedding",
                        attrs={k: v for k, v in meta.items() if isinstance(v, (str, int, float))})


def get_embedding(model_name: str = "scalemae_rgb", *, spatial: PointBuffer | BBox,
                  temporal: TemporalSpec, sensor: SensorSpec | None = None,
                  output: OutputSpec | None = None, backend: Any = "gee", device: str = "auto",
                  input_chw: Any = None, model: Any = None,
                  gee_options: Mapping[str, Any] | None = None) -> Embedding:
    """Embed one ROI with ScaleMAE (rs-embed's ``scalemae_rgb``).

    Parameters
    ----------
    model_name : str
        ``"scalemae_rgb"``.
    spatial : PointBuffer or BBox
        The ROI. A non-square BBox is fetched as its bounding square and the
        token grid cropped back to it.
    temporal : TemporalSpec
        Composite window ``[start, end)``.
    sensor : SensorSpec, optional
        Collection, bands (B4, B3, B2), ``scale_m``, cloud filter, composite.
    output : OutputSpec, optional
        ``OutputSpec.pooled()`` (default) or ``OutputSpec.grid()``.
    backend : str or Provider
        ``"gee"``, ``"emulator"``, ``"local:PATH"`` or a provider instance.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``...; overrides the model spec's device.
    input_chw : array, optional
        Raw S2 SR ``(3, H, W)`` in (B4, B3, B2) order, 0..10000: skips fetching. The chip
        is embedded whole (``spatial`` is not used to crop it); ``input_res_m`` comes from
        its own ``H, W`` at ``sensor.scale_m``; ``meta["fetch_grid"]`` is ``None``.
    model : ModelSpec, str or ScaleMAEEmbedder, optional
        Weights; default from ``RS_EMBED_SCALEMAE_*``. Pass a loaded
        ``ScaleMAEEmbedder`` to reuse it across calls.
    gee_options : dict, optional
        ``GEEProvider`` options (``project``, ``credentials``, ``api_url``, ``high_volume``).

    Returns
    -------
    Embedding
    """
    if input_chw is None:
        return get_embeddings_batch(model_name, spatials=[spatial], temporal=temporal, sensor=sensor,
                                    output=output, backend=backend, device=device, model=model,
                                    gee_options=gee_options)[0]
    from .embed.preprocess import check_chw

    if model_name not in MODEL_NAMES:
        raise SpecError("model", model_name, f"one of {MODEL_NAMES}")
    if not isinstance(spatial, (PointBuffer, BBox)):
        raise SpecError("spatial", spatial,
                        "a PointBuffer(lon, lat, buffer_m) or BBox(minlon, minlat, maxlon, maxlat)")
    if not isinstance(temporal, TemporalSpec):
        raise SpecError("temporal", temporal, "a TemporalSpec (TemporalSpec.range(start, end) or .year(y))")
    sensor = sensor or SensorSpec()
    output = output or OutputSpec.pooled()
    check_chw(input_chw, field="input_chw")
    chw = input_chw.detach().cpu().numpy() if hasattr(input_chw, "detach") else np.asarray(input_chw)
    embedder = _resolve_model(model, device)
    # The caller's chip is embedded whole (as rs-embed 0.3.1 does): no footprint, no ROI crop;
    # input_res_m follows from the chip's own H, W at sensor.scale_m.
    res = embedder.embed([chw], sensor.scale_m, output=output, roi=None)
    valid = ~np.isnan(np.asarray(chw, dtype=np.float32)).any(axis=0)
    meta = res.meta(0)
    meta.update(temporal=temporal.to_dict(), sensor=sensor.to_dict(), fetch_grid=None,
                input_chw_shape=[int(v) for v in chw.shape], roi=[0.0, 0.0, 1.0, 1.0],
                valid_fraction=float(valid.mean()))
    return Embedding(_grid_array(res.grids[0], meta) if res.grids is not None else res.vectors[0], meta)
