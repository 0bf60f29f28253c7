"""Exploring a cube: embeddings as colours, similarity search, quicklooks.

Each function takes ``cube``: a Dataset from :func:`rsembed_dask.store.cube.open_cube`
or a cube path; ``scale``: a pixel size in metres, which may be omitted for a
single-scale cube (an unknown scale raises :class:`SpecError` listing the cube's
scales); and ``time``: the date window read in a cube written over several windows, by
its start date (``"2019-01-01"``) or a year naming one window (``2019``), which may be
omitted for a cube of one window (:func:`~rsembed_dask.explore.window_choice.choose_window`;
an unknown window raises :class:`SpecError` listing the cube's windows). Everything runs
on the client; nothing needs a Dask cluster.

Examples
--------
>>> similar("campaign.zarr", (3.1, 31.2), k=5, scale=20)           # doctest: +SKIP
>>> quicklook("campaign.zarr", scale=20)                           # doctest: +SKIP
>>> similar("years.zarr", (3.1, 31.2), k=5, scale=20, time=2019)    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike
import xarray as xr

from ..store.damage import named_damage
from ..store.info import campaign_attributes
from ..store.layout import OK, STATUS_NAMES, count_statuses
from ..store.open import LOCATION_ENCODING, nearest_sample, open_cube
from ..errors import SpecError
from .pca import PCAColours, check_components
from .window_choice import TIME_DIM, choose_window

if TYPE_CHECKING:
    import geopandas as gpd
    import pandas as pd
    from matplotlib.axes import Axes

__all__ = ["pca_rgb", "to_geodataframe", "similar", "quicklook", "status_table", "cube_info"]

log = logging.getLogger(__name__)

def pca_rgb(vectors: ArrayLike, components: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """Map embedding vectors to RGB colours through PCA.

    The finite rows are centred and their principal axes found with NumPy's SVD;
    the scores on ``components`` become red, green and blue, each stretched
    linearly so that its 2nd percentile maps to 0 and its 98th to 255 (clipped
    outside). A channel with no spread (e.g. every row equal) is mid-grey (128).

    Parameters
    ----------
    vectors : array-like, shape (N, D)
        Embeddings (any float dtype). Rows holding a NaN or inf (samples that are
        not ``ok`` in a cube) are left out of the fit.
    components : sequence of three int
        Principal components (0 = most variance) shown as red, green and blue.

    Returns
    -------
    numpy.ndarray, shape (N, 3), uint8
        One colour per row. **Rows with a NaN/inf are black (0, 0, 0).**
        Deterministic: each axis's sign is fixed so that its largest loading is
        positive, and equal rows get equal colours.

    Raises
    ------
    SpecError
        ``vectors`` is not 2-D, or ``components`` is not three indices in ``[0, D)``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> rgb = pca_rgb(rng.normal(size=(100, 16)))
    >>> rgb.shape, rgb.dtype
    ((100, 3), dtype('uint8'))
    >>> v = rng.normal(size=(5, 16)); v[2] = np.nan
    >>> pca_rgb(v)[2].tolist()
    [0, 0, 0]
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] == 0:
        raise SpecError("vectors", f"array of shape {x.shape}", "a 2-D array (samples, features)")
    if not np.isfinite(x).all(axis=1).any():
        check_components(components, x.shape[1])
        log.warning("pca_rgb: no finite rows among %d; every colour is black", x.shape[0])
        return np.zeros((x.shape[0], 3), dtype=np.uint8)
    return PCAColours.fit(x, components).rgb(x)


def _dataset(cube: Any, time: Any = None, *, all_windows: bool = False):
    """``cube`` as an xarray.Dataset: one already open, or a path, URL or StoreLocation opened with open_cube;
    unless ``all_windows``, the one window ``time`` names (:func:`~rsembed_dask.explore.window_choice.choose_window`:
    SpecError naming the windows for a cube with several and no ``time``)."""
    ds: Any
    if isinstance(cube, xr.Dataset):
        ds = cube
    elif isinstance(cube, (str, os.PathLike)):
        ds = open_cube(cube)
    else:
        raise SpecError("cube", type(cube).__name__, "an xarray.Dataset from open_cube(), a cube path or URL")
    if all_windows:
        return ds
    t = choose_window(ds, time)
    return ds if t is None else ds.isel({TIME_DIM: t})


def _window_start(ds) -> str | None:
    """The start date of the window ``ds`` was cut to (:func:`_dataset`); None for a cube without time."""
    if TIME_DIM in ds.coords and ds[TIME_DIM].ndim == 0:
        return str(np.datetime64(ds[TIME_DIM].values, "D"))
    return None


def _reading(ds, scale_index: int | None = None):
    """Reads of ``ds`` whose chunks do not decode raise one line naming them (see
    :func:`~rsembed_dask.store.damage.named_damage`); a Dataset not opened from a cube path
    re-raises the codec's error as is."""
    source = ds.encoding.get(LOCATION_ENCODING) or ds.encoding.get("source")
    return named_damage(source, scale_index=scale_index) if source else contextlib.nullcontext()


def _scale_index(ds, scale: Any) -> int:
    """Position of ``scale`` (metres) along the cube's ``scale`` dimension."""
    scales = [float(v) for v in np.asarray(ds["scale"].values).tolist()]
    allowed = f"one of the cube's scales: {', '.join(f'{v:g}' for v in scales)} (metres)"
    if scale is None and len(scales) == 1:
        return 0
    if isinstance(scale, (int, float, np.integer, np.floating)) and not isinstance(scale, bool):
        for i, v in enumerate(scales):
            if math.isclose(v, float(scale), rel_tol=1e-9, abs_tol=1e-9):
                return i
    raise SpecError("scale", scale, allowed)


def _frame(ds, si: int, rows: np.ndarray | None = None, *, with_embedding: bool = True):
    """A GeoDataFrame of the samples at ``rows`` (all when None) at scale position ``si``."""
    import geopandas as gpd
    import pandas as pd
    import shapely

    sub = ds.isel(scale=si) if rows is None else ds.isel(scale=si, sample=rows)
    names = ["status", "input_res_m", "valid_fraction", "error"] + (["embedding"] if with_embedding else [])
    sub = sub[names].load()
    window = _window_start(ds)
    data: dict[str, Any] = {
        "status": np.asarray(STATUS_NAMES, dtype=object)[sub["status"].values.astype(int)],
        **({"time": window} if window is not None else {}),
        "lon": sub["lon"].values.astype("float64"), "lat": sub["lat"].values.astype("float64"),
        "geohash": [str(g) for g in sub["geohash"].values.tolist()],
        "input_res_m": sub["input_res_m"].values, "valid_fraction": sub["valid_fraction"].values,
        "error": [str(e) for e in sub["error"].values.tolist()]}
    if with_embedding:
        data["embedding"] = list(sub["embedding"].values)
    wkb = [str(w) or None for w in sub["geometry"].values.tolist()]
    index = pd.Index(sub["sample"].values.tolist(), name="sample")
    return gpd.GeoDataFrame(data, index=index, geometry=shapely.from_wkb(wkb), crs="EPSG:4326")


def to_geodataframe(cube: Any, scale: float | None = None, *, time: Any = None) -> gpd.GeoDataFrame:
    """One row per sample at one scale, with the sample's geometry.

    Parameters
    ----------
    cube : str, path or xarray.Dataset
        A sample cube (a path is opened with :func:`~rsembed_dask.store.open_cube`).
    scale : float, optional
        Scale in metres (default: the cube's only scale; required when it has several).
    time : str, int or date, optional
        The window, in a cube with a ``time`` dimension: its start date or a year naming
        one window (default: the cube's only window; required when it has several).

    Returns
    -------
    geopandas.GeoDataFrame
        Index ``sample`` (the ids); columns ``status`` (``"ok"``, ``"pending"``,
        ``"no_data"`` or ``"failed"``), ``time`` (the window's start date, ISO; only
        for a cube with a ``time`` dimension), ``lon``, ``lat``, ``geohash``,
        ``input_res_m``, ``valid_fraction``, ``error`` and ``embedding`` (one
        float32 array of length D per row, all NaN where the status is not ok);
        geometry: the sample's as given to the campaign (stored WKB), EPSG:4326.

    Examples
    --------
    >>> gdf = to_geodataframe("campaign.zarr", scale=20)   # doctest: +SKIP
    >>> np.stack(gdf.embedding[gdf.status == "ok"])        # doctest: +SKIP
    """
    ds = _dataset(cube, time)
    return _frame(ds, _scale_index(ds, scale))


def _query_position(ds, query: Any) -> int:
    """Row of the query sample: an id of the cube, or the sample nearest a (lon, lat) pair."""
    if isinstance(query, (tuple, list)) or (isinstance(query, np.ndarray) and query.ndim == 1):
        try:
            lon, lat = (float(v) for v in query)
        except (TypeError, ValueError) as exc:
            raise SpecError("query", query, "a sample id or a (lon, lat) pair of numbers") from exc
        if not (np.isfinite([lon, lat]).all() and -180 <= lon <= 180 and -90 <= lat <= 90):
            raise SpecError("query", query, "(lon, lat) in degrees, lon in [-180, 180], lat in [-90, 90]")
        query = nearest_sample(ds, lon, lat)
        log.info("similar: nearest sample to (%g, %g) is %r", lon, lat, query)
    index = ds.indexes["sample"]
    try:
        pos = index.get_loc(query)
    except (KeyError, TypeError) as exc:
        examples = ", ".join(repr(v) for v in index[:3].tolist())
        raise SpecError("query", query, f"a sample id of the cube (e.g. {examples}) "
                                        "or a (lon, lat) pair") from exc
    return int(pos)  # ids are unique in a cube


def similar(cube: Any, query: Any, k: int = 10, scale: float | None = None, *, time: Any = None,
            block_size: int = 65_536) -> pd.DataFrame:
    """The ``k`` samples whose embeddings are most cosine-similar to the query's.

    Parameters
    ----------
    query : sample id or (lon, lat)
        A sample id of the cube, or a point in degrees (EPSG:4326): then the
        sample nearest to it (great-circle, :func:`~rsembed_dask.store.cube.nearest_sample`)
        is the query.
    k : int
        How many samples to return (fewer when fewer are ok).
    time : str, int or date, optional
        The window searched, in a cube with a ``time`` dimension: its start date
        (``"2019-01-01"``) or a year naming one window (``2019``); default: the cube's
        only window (required when it has several). The query and the candidates are
        that window's embeddings (a point's nearest sample is the same in every window).
    block_size : int
        Samples read at a time: memory stays at ``block_size x D`` floats.

    Returns
    -------
    geopandas.GeoDataFrame
        Sorted by ``similarity`` (cosine, descending; ties in cube order), with the
        columns of :func:`to_geodataframe` but ``embedding`` (with ``time``, the
        window's start date, for a cube with a ``time`` dimension). Only samples ok at
        ``scale`` (in the window) are candidates; the query sample itself is never returned.
        ``result.attrs``: ``query_sample`` (the id used), ``scale`` and ``time`` (the
        window's start date, or None for a cube without a ``time`` dimension).

    Raises
    ------
    SpecError
        An unknown id, scale or window (``time``: the message lists the cube's windows),
        ``k < 1``, or a query sample not ok at ``scale``.

    Examples
    --------
    >>> similar(cube, "plot-0042", k=5, scale=20)              # doctest: +SKIP
    >>> similar(cube, (3.1, 31.2), k=5, scale=20).similarity   # doctest: +SKIP
    >>> similar("years.zarr", "plot-0042", k=5, scale=20, time="2021-01-01")  # doctest: +SKIP
    """
    ds = _dataset(cube, time)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SpecError("k", k, "an integer >= 1")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise SpecError("block_size", block_size, "an integer >= 1")
    si = _scale_index(ds, scale)
    with _reading(ds, si):
        return _similar(ds, query, k, si, block_size)


def _similar(ds, query: Any, k: int, si: int, block_size: int) -> pd.DataFrame:
    scale_m = float(ds["scale"].values[si])
    qpos = _query_position(ds, query)
    qid = np.asarray(ds.indexes["sample"][qpos]).item()
    status = np.asarray(ds["status"].isel(scale=si).values)
    window = _window_start(ds)
    where = f"{scale_m:g} m" + (f" in the window starting {window}" if window else "")
    if status[qpos] != OK:
        raise SpecError("query", query, f"a sample with an ok embedding at {where} "
                                        f"(sample {qid!r} is {STATUS_NAMES[int(status[qpos])]} there)")
    emb = ds["embedding"].isel(scale=si)
    qvec = np.asarray(emb.isel(sample=qpos).values, dtype=np.float64)
    qnorm = np.linalg.norm(qvec)
    if not (np.isfinite(qnorm) and qnorm > 0):
        raise SpecError("query", query, f"a sample with a finite, non-zero embedding at {where}")
    n, sims = status.shape[0], np.full(status.shape[0], np.nan)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        block = np.asarray(emb.isel(sample=slice(start, stop)).values, dtype=np.float64)
        norms = np.linalg.norm(block, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            sims[start:stop] = block @ qvec / (norms * qnorm)
    sims[qpos] = np.nan  # the query itself is never a result
    rows = np.flatnonzero((status == OK) & np.isfinite(sims))
    rows = rows[np.argsort(-sims[rows], kind="stable")[:k]]
    out = _frame(ds, si, rows, with_embedding=False)
    out.insert(0, "similarity", sims[rows])
    out.attrs.update(query_sample=qid, scale=scale_m, time=window)
    return out


def quicklook(cube: Any, scale: float | None = None, ax: Any = None,
              components: Sequence[int] = (0, 1, 2), *, time: Any = None, s: float = 30.0) -> Axes:
    """Plot the samples at their centroids, coloured by :func:`pca_rgb` of their embeddings.

    Samples that are not ok at ``scale`` are grey crosses. Needs matplotlib (the
    ``notebooks`` extra), imported only here.

    Parameters
    ----------
    cube : str, path or xarray.Dataset
        A sample cube.
    scale : float, optional
        Scale in metres (default: the cube's only scale).
    ax : matplotlib.axes.Axes, optional
        Where to draw (a new figure when None).
    components : sequence of int
        The principal components shown as red, green and blue.
    time : str, int or date, optional
        The window drawn, in a cube with a ``time`` dimension: its start date or a year
        naming one window (default: the cube's only window; required when it has
        several). The title names it. The PCA is fitted on that window's embeddings.
    s : float
        Marker size.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> ax = quicklook("campaign.zarr", scale=20)                 # doctest: +SKIP
    >>> ax.figure.savefig("pca.png", dpi=120)                      # doctest: +SKIP
    >>> quicklook("years.zarr", scale=20, time=2021)               # doctest: +SKIP
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("quicklook needs matplotlib: pip install 'rsembed_dask[notebooks]'") from exc
    ds = _dataset(cube, time)
    si = _scale_index(ds, scale)
    window = _window_start(ds)
    with _reading(ds, si):
        scale_m, sub = float(ds["scale"].values[si]), ds[["status", "embedding"]].isel(scale=si).load()
    lon, lat = sub["lon"].values.astype(float), sub["lat"].values.astype(float)
    ok = sub["status"].values == OK
    rgb = pca_rgb(sub["embedding"].values, components)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(lon[ok], lat[ok], c=rgb[ok] / 255.0, s=s, edgecolors="none")
    if (~ok).any():
        ax.scatter(lon[~ok], lat[~ok], c="0.5", marker="x", s=s, label="not ok")
        ax.legend(loc="best")
    ax.set_aspect(1.0 / max(math.cos(math.radians(float(np.mean(lat)))), 1e-6))
    ax.set(xlabel="longitude (deg)", ylabel="latitude (deg)")
    ax.set_title(f"PCA {tuple(components)} as RGB, {scale_m:g} m" + (f", window {window}" if window else "")
                 + f" ({int(ok.sum())} ok / {ok.size})")
    return ax


def status_table(cube: Any, *, time: Any = None) -> pd.DataFrame:
    """Cells per status and scale (of one window, in a cube with a ``time`` dimension).

    Parameters
    ----------
    cube : str, path or xarray.Dataset
        A sample cube.
    time : str, int or date, optional
        The window counted, in a cube with a ``time`` dimension (default: the cube's only
        window; required when it has several). ``rsembed-dask inspect`` counts every window.

    Returns
    -------
    pandas.DataFrame
        Indexed by scale (m), one column per status (``pending``, ``ok``, ``no_data``,
        ``failed``).

    Examples
    --------
    >>> status_table("campaign.zarr").loc[20.0, "ok"]   # doctest: +SKIP
    """
    import pandas as pd

    ds = _dataset(cube, time)
    return pd.DataFrame(count_statuses(ds["status"].values), columns=list(STATUS_NAMES),
                        index=pd.Index(np.asarray(ds["scale"].values, float), name="scale"))


def cube_info(cube: Any) -> dict[str, Any]:
    """The cube's campaign attributes, parsed.

    ``campaign_spec``, ``versions``, ``request_account`` (Earth Engine requests
    planned, sent, retried, failed, reused, bytes) and ``last_run`` (the last
    ``run_campaign`` report); ``{}`` for those not written yet.

    Parameters
    ----------
    cube : str, path or xarray.Dataset
        A sample cube.

    Returns
    -------
    dict
        The four attributes above, parsed from JSON.

    Examples
    --------
    >>> cube_info("campaign.zarr")["request_account"]["sent"]   # doctest: +SKIP
    """
    return campaign_attributes(_dataset(cube, all_windows=True).attrs)
