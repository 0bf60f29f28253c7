"""What ``rsembed-dask inspect`` reports about a tiling store (layout: :mod:`rsembed_dask.store.tiling`).

:func:`tiling_info` reads the store's metadata and status arrays (never an
embedding): the tiling, the campaign spec, per scale the tiles and their status
counts, the zone grids with their shape, CRS and transform, whether the grids
are synced with the sample cubes, and the request account of the last run that
did work. :func:`format_tiling_info` is its text form.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import zarr

from .cube import Cube
from .layout import scale_name
from ..sampling.tiling import TileLattice

__all__ = ["tiling_info", "format_tiling_info"]

log = logging.getLogger(__name__)


def tiling_info(path) -> dict[str, Any]:
    """The contents of the tiling store at ``path``, as plain JSON types.

    Parameters
    ----------
    path : str or path-like
        A tiling store (:func:`rsembed_dask.store.open.is_tiling_store` is true).

    Returns
    -------
    dict
        ``kind`` (``"tiling"``), ``path``, ``scales`` (metres), ``tiling`` (image
        size, block, token), ``aoi_bounds``, ``raster_synced``, ``spec`` (the
        campaign spec), ``status`` (counts over all scales), ``request_account``
        and ``last_run`` (``run_campaign`` writes the campaign's account to every
        sample cube; here the first scale's), ``versions``, and ``per_scale``: for
        each scale group name (``"10m"``) its ``scale_m``, ``tiles``, ``status``,
        ``embed_dim``, ``grid_shape``, ``spec_hash``, ``request_account`` and
        ``zones`` (per zone group: ``crs``, ``shape`` ``[y, x]``, ``cell_m``,
        ``transform`` as the affine ``(a, b, c, d, e, f)``).

    Raises
    ------
    CubeDamagedError
        A sample cube's metadata or status cannot be read (``inspect --verify`` says where).
    CubeError
        A sample cube of the store is missing or is not a cube.
    """
    import shapely

    path = os.path.abspath(os.fspath(path))
    root = zarr.open_group(path, mode="r", zarr_format=3)
    attrs = root.attrs.asdict()
    tiling = json.loads(attrs["tiling_identity"])["tiling"]
    per_scale: dict[str, Any] = {}
    totals: dict[str, int] = {}
    first_attrs: dict[str, Any] | None = None
    for s in tiling["scales"]:
        name = scale_name(s)
        cube = Cube.open(os.path.join(path, "samples", name))
        cube_attrs = cube.attrs
        first_attrs = cube_attrs if first_attrs is None else first_attrs
        counts = cube.status_counts()  # CubeDamagedError when a status chunk does not decode
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
        group = root[name]
        tile_m = float(group.attrs["tile_m"])
        zones = {}
        for zone, grid in sorted(group.groups()):
            epsg = int(zone.removeprefix("EPSG"))
            lattice = TileLattice(epsg, float(s), int(group.attrs["image_size"]))
            zones[zone] = {"crs": grid.attrs["crs"], "shape": list(grid["status"].shape), "cell_m": tile_m,
                           "transform": list(lattice.raster_transform(int(grid.attrs["row_top"]),
                                                                      int(grid.attrs["col_left"])))}
        per_scale[name] = {"scale_m": float(s), "tiles": cube.n_samples, "status": counts,
                           "embed_dim": cube.embed_dim, "grid_shape": cube.grid_shape,
                           "spec_hash": cube_attrs.get("spec_hash"),
                           "request_account": cube_attrs.get("request_account"), "zones": zones}
    first_attrs = first_attrs or {}
    return {"path": path, "kind": "tiling", "scales": [float(s) for s in tiling["scales"]],
            "tiling": {k: tiling[k] for k in ("image_size", "block", "token")},
            "aoi_bounds": list(shapely.from_wkb(bytes.fromhex(attrs["aoi_wkb_hex"])).bounds),
            "raster_synced": bool(attrs.get("raster_synced", False)),
            "spec": json.loads(attrs["campaign_spec"]), "status": totals,
            "request_account": first_attrs.get("request_account"), "last_run": first_attrs.get("last_run"),
            "versions": first_attrs.get("versions"), "per_scale": per_scale}


def format_tiling_info(info: dict[str, Any]) -> str:
    """The text form of :func:`tiling_info` (plus ``problems`` when verified).

    Parameters
    ----------
    info : dict
        From :func:`tiling_info`, optionally with ``problems`` (a list of str).

    Returns
    -------
    str
    """
    b = info["aoi_bounds"]
    t = info["tiling"]
    lines = [f"tiling store {info['path']}",
             f"AOI lon {b[0]:g}..{b[2]:g}, lat {b[1]:g}..{b[3]:g}; tiles of {t['image_size']} px in "
             f"{t['block']}x{t['block']} blocks (tiling {t['token']})",
             "grids synced with the sample cubes: " + ("yes" if info["raster_synced"] else
                                                       "no (a run is going on or was interrupted: run it again)")]
    for name, sc in info["per_scale"].items():
        status = ", ".join(f"{k} {v}" for k, v in sc["status"].items())
        grid = f", token grids {sc['grid_shape']}" if sc["grid_shape"] else ""
        lines.append(f"{sc['scale_m']:g} m: {sc['tiles']} tiles in samples/{name} ({status}); "
                     f"D = {sc['embed_dim']}{grid}")
        for zone, z in sc["zones"].items():
            lines.append(f"  {name}/{zone}: {z['shape'][0]} x {z['shape'][1]} cells of {z['cell_m']:g} m, "
                         f"{z['crs']}")
    lines.append("status: " + ", ".join(f"{k} {v}" for k, v in info["status"].items()))
    lines.append("spec: " + json.dumps(info["spec"], sort_keys=True))
    lines.append(f"versions: {info['versions']}")
    lines.append(f"request account: {info['request_account']}")
    if info.get("writer"):
        lines.append(f"being written by: {info['writer']}")
    if "problems" in info:
        lines.append("verify: " + ("consistent" if not info["problems"] else
                                   "\n  ".join(["PROBLEMS"] + info["problems"])))
    return "\n".join(lines)
