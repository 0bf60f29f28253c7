"""Where cubes live on disk: probing a path, opening a cube with xarray, nearest-sample lookup.

Writing and resuming are :class:`rsembed_dask.cube.Cube`'s.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import xarray as xr

from .cube_schema import CUBE_VERSION, MARKER_ATTR, TILING_MARKER, read_segments, segment_rows
from .errors import CubeError

__all__ = ["probe_store", "check_writable", "open_cube", "nearest_sample", "is_tiling_store"]

_EARTH_RADIUS_M = 6_371_008.8


def probe_store(path: str) -> dict[str, Any] | None:
    """Classify ``path``: None when it does not exist or is an empty directory.

    Returns the group metadata (parsed ``zarr.json``) of an existing cube.

    Raises
    ------
    CubeError
        When ``path`` is a file, or a directory that is not a finished cube.
    """
    if not os.path.exists(path):
        return None
    if not os.path.isdir(path):
        raise CubeError(f"cube path {path!r} exists and is a file, not a Zarr cube directory")
    meta_path = os.path.join(path, "zarr.json")
    if not os.path.isfile(meta_path):
        if not os.listdir(path):
            return None
        raise CubeError(f"cube path {path!r} exists and is not an rsembed_dask cube "
                        "(no zarr.json); choose another path or remove it")
    try:
        with open(meta_path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as exc:
        raise CubeError(f"cube path {path!r}: cannot read zarr.json ({exc})") from exc
    attrs = meta.get("attributes") or {} if isinstance(meta, dict) else {}
    if not isinstance(meta, dict) or meta.get("node_type") != "group" or MARKER_ATTR not in attrs:
        raise CubeError(f"cube path {path!r} is a Zarr store but not a finished rsembed_dask cube "
                        f"(no {MARKER_ATTR!r} attribute); choose another path or remove it")
    if attrs[MARKER_ATTR] != CUBE_VERSION:
        raise CubeError(f"cube {path!r} has layout version {attrs[MARKER_ATTR]!r}; "
                        f"this rsembed_dask reads version {CUBE_VERSION}")
    return meta


def is_tiling_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a finished tiling store (see :mod:`rsembed_dask.tile_cube`)."""
    meta_path = os.path.join(os.fspath(path), "zarr.json")
    if not os.path.isfile(meta_path):
        return False
    try:
        with open(meta_path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as exc:
        raise CubeError(f"cube path {os.fspath(path)!r}: cannot read zarr.json ({exc})") from exc
    return isinstance(meta, dict) and TILING_MARKER in (meta.get("attributes") or {})


def check_writable(path: str) -> None:
    """Raise CubeError unless ``path`` (or its nearest existing ancestor) is writable."""
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.access(probe, os.W_OK):
        raise CubeError(f"cube path {path!r} is not writable ({probe!r} denies writing)")


def open_cube(path: str | os.PathLike, **kwargs: Any) -> xr.Dataset | xr.DataTree:
    """Open a cube lazily (Dask-backed) as an :class:`xarray.Dataset`.

    A tiling store opens as an :class:`xarray.DataTree`: ``tree["samples/10m"]`` is
    the 10 m sample cube, ``tree["10m/EPSG32632"]`` the 10 m grid of zone 32632
    with ``embedding(y, x, feature)`` readable by rioxarray (``rio.crs``, ``rio.transform()``).

    Parameters
    ----------
    path : str or path-like
        The cube directory.
    **kwargs
        Passed to :func:`xarray.open_zarr` (e.g. ``chunks``).

    Returns
    -------
    xarray.Dataset
        Indexed by ``sample`` (the ids, every sample once: padding rows left by appends
        are not shown) and ``scale`` (metres), so
        ``ds.sel(scale=20.0, sample="id-3")`` works. ``ds.attrs["campaign_spec"]``
        is the spec as a JSON string.

    Raises
    ------
    CubeError
        ``path`` is missing or not a cube.
    """
    path = os.path.abspath(os.fspath(path))
    kwargs.setdefault("chunks", {})
    if is_tiling_store(path):
        return xr.open_datatree(path, engine="zarr", zarr_format=3, consolidated=False, **kwargs)
    if probe_store(path) is None:
        raise CubeError(f"no cube at {path!r}")
    ds = xr.open_zarr(path, consolidated=False, zarr_format=3, **kwargs)
    segments = read_segments(ds.attrs, ds.sizes["sample"], 1)
    if sum(b - a for a, b in segments) != ds.sizes["sample"]:  # a cube that grew: hide its padding rows
        ds = ds.isel(sample=segment_rows(segments))
    return ds


def nearest_sample(ds: xr.Dataset, lon: float, lat: float) -> Any:
    """The id of the sample whose centroid is nearest to ``(lon, lat)`` (great-circle).

    Parameters
    ----------
    ds : xarray.Dataset
        A cube from :func:`open_cube` (needs ``lon``/``lat`` coordinates on ``sample``).
    lon, lat : float
        Query point in degrees (EPSG:4326).

    Returns
    -------
    str or int
        The sample id, usable as ``ds.sel(sample=...)``.
    """
    lons = np.radians(np.asarray(ds["lon"].values, dtype="float64"))
    lats = np.radians(np.asarray(ds["lat"].values, dtype="float64"))
    qlon, qlat = np.radians(float(lon)), np.radians(float(lat))
    a = (np.sin((lats - qlat) / 2) ** 2
         + np.cos(qlat) * np.cos(lats) * np.sin((lons - qlon) / 2) ** 2)
    dist = 2 * _EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    found = ds["sample"].values[int(np.argmin(dist))]
    return found.item() if isinstance(found, np.generic) else found
