"""The change between two windows' embeddings: cosine distance per sample or per cell.

:func:`change` compares two windows of a cube with a ``time`` dimension (a sample campaign
run with several windows: one value per sample) or of a tiling store with ``time`` (one map
per UTM zone grid: one value per tile); :func:`write_change` writes it as a GeoParquet of points
and a PNG, or a GeoTIFF and a PNG per zone (``rsembed-dask change``). The maths (:func:`cosine_distance`, :func:`roc_auc`) work on
plain arrays too, e.g. two single-window cubes.

A row (the feature axis, last by default) is *missing* when any of its values is not
finite (a failed or pending sample is NaN in the cube) or when it is all zeros; the
distance is NaN wherever either side is missing.

Examples
--------
>>> a = np.array([[1.0, 0.0], [1.0, 1.0], [np.nan, 1.0]])
>>> b = np.array([[1.0, 0.0], [-1.0, -1.0], [1.0, 1.0]])
>>> cosine_distance(a, b).round(6).tolist()
[0.0, 2.0, nan]
>>> roc_auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False])
1.0
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import SpecError
from .windows import window_index

__all__ = ["cosine_distance", "roc_auc", "change", "window_index", "write_change"]


def cosine_distance(a: ArrayLike, b: ArrayLike, axis: int = -1) -> np.ndarray:
    """``1 - cos(a, b)`` along ``axis`` (0 = same direction, 2 = opposite), NaN where either is missing.

    Parameters
    ----------
    a, b : array_like
        Embeddings of the same places in two windows, the same shape: ``(N, D)`` for samples,
        ``(..., D)`` for grid cells (``axis`` names the feature axis). int8 embeddings must be
        dequantised first (the distance of int8 codes ignores their per-row scale anyway).
    axis : int
        The feature axis.

    Returns
    -------
    numpy.ndarray of float64
        ``a``'s shape without ``axis``.

    Raises
    ------
    SpecError
        When the shapes differ.
    """
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape or x.ndim == 0:
        raise SpecError("embeddings", f"shapes {x.shape} and {y.shape}",
                        "two arrays of the same shape with a feature axis (the same places, two windows)")
    nx = np.linalg.norm(x, axis=axis)
    ny = np.linalg.norm(y, axis=axis)
    ok = np.isfinite(nx) & np.isfinite(ny) & (nx > 0) & (ny > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.sum(x * y, axis=axis) / (nx * ny)
    out = 1.0 - np.clip(cos, -1.0, 1.0)
    return np.where(ok, out, np.nan)


def roc_auc(scores: ArrayLike, truth: ArrayLike) -> float:
    """Area under the ROC curve: the chance that a true row scores above a false one (ties 1/2).

    Rows whose score is NaN are left out.

    Parameters
    ----------
    scores : array_like of float
        A change score per row (e.g. :func:`cosine_distance`).
    truth : array_like of bool
        Whether the row really changed.

    Returns
    -------
    float
        The area under the ROC curve, 0.5 for a score that tells nothing.

    Raises
    ------
    SpecError
        When the lengths differ or a class has no finite-scored row.
    """
    s = np.asarray(scores, np.float64).ravel()
    t = np.asarray(truth, bool).ravel()
    if s.shape != t.shape:
        raise SpecError("scores", f"{s.size} scores for {t.size} truths", "one truth per score")
    keep = np.isfinite(s)
    s, t = s[keep], t[keep]
    pos, neg = s[t], s[~t]
    if not len(pos) or not len(neg):
        raise SpecError("truth", f"{len(pos)} changed and {len(neg)} unchanged rows with a score",
                        "at least one of each")
    # Mann-Whitney U from the ranks (average ranks for ties).
    order = np.argsort(np.r_[pos, neg], kind="stable")
    allv = np.r_[pos, neg][order]
    ranks = np.empty(len(allv))
    _, first, counts = np.unique(allv, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def change(cube: Any, t0: Any, t1: Any, *, scale: float) -> Any:
    """Cosine distance between the embeddings of two windows: per sample of a cube, per grid
    cell of each zone of a tiling store.

    Parameters
    ----------
    cube : str, path-like, xarray.Dataset or xarray.DataTree
        A cube with a ``time`` dimension, or a tiling store with ``time`` (its path or URL, or
        what :func:`~rsembed_dask.store.open.open_cube` gave).
    t0, t1 : str, int or date
        The windows compared (:func:`window_index`: a start date, or a year).
    scale : float
        The scale (m) compared.

    Returns
    -------
    xarray.DataArray or dict of str to xarray.DataArray
        A cube: ``change(sample)`` float32 in [0, 2], NaN where either window's status is not ok;
        with the ``lon``/``lat``/``geometry`` coordinates of the samples. A tiling store: per
        zone group name (``"EPSG32631"``) a lazy ``change(y, x)`` float32 on that zone's grid
        (its ``x``/``y`` and ``spatial_ref`` coordinates, so ``rio.crs``/``rio.transform()``
        work), NaN where either window is not ok and where there is no tile.

    Raises
    ------
    SpecError
        A cube without ``time``, a window it does not hold, a scale it does not hold.

    Examples
    --------
    >>> change("cube.zarr", 2019, 2024, scale=10.0).to_series()  # doctest: +SKIP
    >>> change("tiles.zarr", 2019, 2024, scale=20.0)["EPSG32631"].plot()  # doctest: +SKIP
    """
    import xarray as xr

    from ..store.layout import OK
    from ..store.open import is_tiling_store, open_cube

    if isinstance(cube, xr.DataTree) or (not isinstance(cube, xr.Dataset) and is_tiling_store(cube)):
        return _grid_change(cube if isinstance(cube, xr.DataTree) else open_cube(cube), t0, t1, float(scale))
    ds: Any = cube if isinstance(cube, xr.Dataset) else open_cube(cube)
    i0, i1 = window_index(ds, t0), window_index(ds, t1)
    scales = [float(s) for s in ds["scale"].values]
    if float(scale) not in scales:
        raise SpecError("scale", scale, f"one of the cube's scales {scales}")
    at = ds.sel(scale=float(scale))
    a = at["embedding"].isel(time=i0).values
    b = at["embedding"].isel(time=i1).values
    ok = (at["status"].isel(time=i0).values == OK) & (at["status"].isel(time=i1).values == OK)
    dist = np.where(ok, cosine_distance(a, b), np.nan).astype(np.float32)
    coords = {k: at[k] for k in ("sample", "lon", "lat", "geometry") if k in at.coords or k in at}
    starts = [str(np.datetime64(t, "D")) for t in ds["time"].values]
    return xr.DataArray(dist, dims=("sample",), coords=coords, name="change",
                        attrs={"long_name": "cosine distance between the embeddings of two windows",
                               "from": starts[i0], "to": starts[i1], "scale_m": float(scale)})


def _grid_change(tree: Any, t0: Any, t1: Any, scale: float) -> dict[str, Any]:
    """:func:`change` of a tiling store (its DataTree): one lazy map per zone grid of ``scale``."""
    import xarray as xr

    from ..store.layout import CRS_ATTR, OK, scale_name

    name = scale_name(scale)
    scales = sorted(k for k in tree.children if k != "samples")
    if name not in scales:
        raise SpecError("scale", scale, f"one of the tiling store's scales {scales}")
    out = {}
    for zone in sorted(tree[name].children):
        ds = tree[f"{name}/{zone}"].to_dataset()
        i0, i1 = window_index(ds, t0), window_index(ds, t1)
        a, b = ds["embedding"].isel(time=i0), ds["embedding"].isel(time=i1)
        ok = (ds["status"].isel(time=i0) == OK) & (ds["status"].isel(time=i1) == OK)
        dist = xr.apply_ufunc(cosine_distance, a, b, input_core_dims=[["feature"], ["feature"]],
                              dask="parallelized", output_dtypes=[np.float64])
        starts = [str(np.datetime64(t, "D")) for t in ds["time"].values]
        d = dist.where(ok).astype(np.float32).drop_vars(["time", "time_bnds"], errors="ignore")
        d.name = "change"
        d.attrs = {"long_name": "cosine distance between the embeddings of two windows", "grid_mapping": "spatial_ref",
                   "from": starts[i0], "to": starts[i1], "scale_m": scale, "zone": zone,
                   "crs": str(ds.attrs.get(CRS_ATTR) or "EPSG:" + zone.removeprefix("EPSG"))}
        out[zone] = d
    return out


#: Cells on the long side of the change PNG of a sample cube (samples binned by location).
PNG_CELLS = 64


def write_change(cube: Any, t0: Any, t1: Any, *, scale: float, out: str | os.PathLike) -> dict[str, Path]:
    """Write :func:`change` in ``out``: for a sample cube a GeoParquet of points and a PNG; for a
    tiling store a GeoTIFF and a PNG per zone.

    The GeoParquet has one row per sample: ``sample``, ``change`` (NaN where either
    window is not ok), ``from``, ``to``, ``scale_m`` and the point ``geometry`` (EPSG:4326).
    Its PNG bins the samples on a grid of at most :data:`PNG_CELLS` cells a side (mean
    change per cell; cells without a sample transparent) with a colour bar.

    A zone's GeoTIFF (``change_<from>_<to>_<scale>m_<zone>.tif``) is one float32 band, one
    pixel per tile, georeferenced like the zone grid (its CRS and transform), NaN (the
    no-data value) where either window is not ok or there is no tile; its PNG is that map upsampled
    to at least 512 px (no data transparent) with the zone and scale in the title and a colour
    bar, on a ramp shared by the zones.

    Parameters
    ----------
    cube : str, path-like, xarray.Dataset or xarray.DataTree
        A sample cube or a tiling store with a ``time`` dimension.
    t0, t1 : str or int
        The two windows: a window's start date, or its year where that names one window.
    scale : float
        The scale (metres).
    out : str or path-like
        The folder to write into (created if needed).

    Returns
    -------
    dict
        A sample cube: ``{"parquet": path, "png": path}``; a tiling store: ``{"<zone>.tif": path,
        "<zone>.png": path, ...}`` per zone.
    """
    import geopandas as gpd

    from .picture import map_png, scalar_rgba

    da = change(cube, t0, t1, scale=scale)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    if isinstance(da, dict):
        return _write_grid_change(da, float(scale), outdir)
    stem = f"change_{da.attrs['from']}_{da.attrs['to']}_{float(scale):g}m"
    lon, lat, values = da["lon"].values.astype(float), da["lat"].values.astype(float), da.values.astype(float)
    gdf = gpd.GeoDataFrame({"sample": [str(v) for v in da["sample"].values], "change": values,
                            "from": da.attrs["from"], "to": da.attrs["to"], "scale_m": float(scale)},
                           geometry=gpd.points_from_xy(lon, lat), crs="EPSG:4326")
    parquet = outdir / f"{stem}.parquet"
    gdf.to_parquet(parquet)
    w, s_, e, n = lon.min(), lat.min(), lon.max(), lat.max()
    span = max(e - w, n - s_, 1e-9)
    cols = max(1, int(round(PNG_CELLS * (e - w) / span)))
    rows = max(1, int(round(PNG_CELLS * (n - s_) / span)))
    c = np.minimum(((lon - w) / span * PNG_CELLS).astype(int), cols - 1)
    r = np.minimum(((n - lat) / span * PNG_CELLS).astype(int), rows - 1)
    total, count = np.zeros((rows, cols)), np.zeros((rows, cols))
    fin = np.isfinite(values)
    np.add.at(total, (r[fin], c[fin]), values[fin])
    np.add.at(count, (r[fin], c[fin]), 1)
    grid = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    rgba, lo, hi = scalar_rgba(grid)
    png = outdir / f"{stem}.png"
    map_png(rgba, png, f"change {da.attrs['from']} -> {da.attrs['to']}, {float(scale):g} m "
                       f"({int(fin.sum())} of {len(values)} samples)",
            colour_bar=(lo, hi, "cosine distance"))
    return {"parquet": parquet, "png": png}


def _write_grid_change(maps: dict[str, Any], scale: float, outdir: Path) -> dict[str, Path]:
    """The GeoTIFF and PNG of each zone's change map (one colour ramp for every zone)."""
    from affine import Affine

    from .geotiff import write_scalar_geotiff
    from .picture import map_png, scalar_rgba

    values = {zone: np.asarray(d.values, np.float32) for zone, d in maps.items()}
    finite = [v[np.isfinite(v)] for v in values.values()]
    every = np.concatenate(finite) if finite else np.zeros(0)
    lo, hi = (float(every.min()), float(every.max())) if every.size else (0.0, 1.0)
    written: dict[str, Path] = {}
    for zone, d in maps.items():
        v = values[zone]
        transform = Affine.from_gdal(*(float(x) for x in str(d["spatial_ref"].attrs["GeoTransform"]).split()))
        crs = str(d.attrs["crs"])
        stem = outdir / f"change_{d.attrs['from']}_{d.attrs['to']}_{scale:g}m_{zone}"
        tif = Path(write_scalar_geotiff(f"{stem}.tif", v, crs, transform,
                                        f"cosine distance {d.attrs['from']} -> {d.attrs['to']}"))
        rgba, vmin, vmax = scalar_rgba(v, lo, hi)
        n_ok = int(np.isfinite(v).sum())
        map_png(rgba, f"{stem}.png", f"{zone}, {scale:g} m tiles: change {d.attrs['from']} -> {d.attrs['to']} "
                                     f"({n_ok} of {v.size} cells with data)",
                cell_m=abs(transform.a), colour_bar=(vmin, vmax, "cosine distance"))
        written[f"{zone}.tif"], written[f"{zone}.png"] = tif, Path(f"{stem}.png")
    return written
