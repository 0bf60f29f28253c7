"""What a store holds: one :func:`store_info` for ``rsembed-dask inspect``, notebooks and scripts.

:func:`store_info` reads a store's metadata and status arrays (never an embedding).
For a sample cube: its shape, status counts, campaign spec and attributes, variables,
and who is writing it. For a tiling store (:func:`tiling_info`): the tiling, the
campaign spec, per scale the tiles and their status counts, the zone grids with their
shape, CRS and transform, whether the grids are synced with the sample cubes, and the
request account of the last run that did work. :func:`format_store_info` is the text
form of either; :func:`campaign_attributes` parses the campaign attributes a run
writes (also used by :func:`rsembed_dask.explore.cube_info` on an opened cube).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import zarr

from .cube import Cube
from .layout import (AOI_ATTR, COL_LEFT_ATTR, COMPLETED_WINDOWS_ATTR, CRS_ATTR, IMAGE_SIZE_ATTR, LAST_RUN_ATTR, REQUEST_ACCOUNT_ATTR,
                     ROW_TOP_ATTR, RUNS_ATTR, SPEC_ATTR, SPEC_HASH_ATTR, SYNCED_ATTR, TILE_M_ATTR, TILING_IDENTITY_ATTR,
                     VERSIONS_ATTR, scale_name)
from .lock import read_lock
from .location import StoreLocation
from .open import array_of, attr_text, group_of, is_tiling_store, open_cube
from ..sampling.tiling import TileLattice

__all__ = ["store_info", "format_store_info", "format_problems", "format_runs", "campaign_attributes", "writer_of",
           "tiling_info", "format_tiling_info"]

#: The campaign attributes a run writes on a cube (JSON), as :func:`campaign_attributes` returns them.
CAMPAIGN_ATTRS = (SPEC_ATTR, VERSIONS_ATTR, REQUEST_ACCOUNT_ATTR, LAST_RUN_ATTR)


def campaign_attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The campaign attributes of a cube's group attributes, parsed.

    Parameters
    ----------
    attrs : mapping
        Group attributes (``Cube.attrs`` or an opened cube's ``ds.attrs``).

    Returns
    -------
    dict
        ``campaign_spec``, ``versions``, ``request_account`` (Earth Engine requests planned,
        sent, retried, failed, reused, bytes) and ``last_run`` (the last ``run_campaign``
        report); ``{}`` for those not written yet.
    """
    out: dict[str, Any] = {}
    for key in CAMPAIGN_ATTRS:
        value = attrs.get(key, {})
        out[key] = json.loads(value) if isinstance(value, str) else dict(value)
    return out


def writer_of(path: str | os.PathLike) -> str | None:
    """Who is writing the store now (its lock), if anyone; reading never takes the lock.

    A lock whose holder is known gone (its process on this machine ended) says so:
    ``"stale lock of pid 12 on ... (its process 12 on this host is gone; the next run takes it over)"``.
    """
    holder = read_lock(path)
    if holder is None:
        return None
    stale = holder.stale_reason()
    if stale is not None:
        return f"stale lock of {holder.describe()} ({stale}; the next run takes it over)"
    return holder.describe()


def store_info(path: str | os.PathLike | StoreLocation, *, status_counts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """What the store at ``path`` holds, as plain JSON types.

    Parameters
    ----------
    path : str or path-like
        A sample cube or a tiling store.
    status_counts : mapping, optional
        Cells per status to report instead of reading the status array (a verify's
        counts, when some status chunks do not decode). Sample cubes only.

    Returns
    -------
    dict
        A tiling store: :func:`tiling_info` plus ``writer``. A sample cube: ``kind``
        (``"cube"``), ``path``, ``samples``, ``scales``, ``embed_dim``, ``grid_shape``,
        ``status`` (cells per status name), ``spec`` (the campaign spec), ``spec_hash``,
        ``versions``, ``request_account``, ``last_run``, ``writer`` (the lock holder or
        None) and ``variables`` (dims, dtype and shape of each). A cube with a ``time``
        dimension adds ``windows`` (per window: ``window`` ``"start..end"``, ``start``,
        ``end``, ``complete`` and its ``status`` counts) and ``completed_windows`` (the
        start dates of the windows in which no cell is pending).

    Raises
    ------
    CubeDamagedError
        Metadata or a status chunk cannot be read (``inspect --verify`` says where).
    CubeError
        No store at ``path``.
    """
    path = StoreLocation.parse(path)
    if is_tiling_store(path):
        info = tiling_info(path)
    else:
        cube = Cube.open(path)
        ds = open_cube(path)
        per_window = ([cube.at_window(t).status_counts() for t in range(len(cube.windows))]
                      if cube.windows is not None else None)
        if status_counts is not None:
            counts = dict(status_counts)
        elif per_window is not None:  # a cube with time: every window's cells
            counts = {k: sum(w[k] for w in per_window) for k in per_window[0]}
        else:
            counts = cube.status_counts()
        attrs = cube.attrs
        campaign = campaign_attributes(attrs)
        info = {"path": path.url, "kind": "cube", "samples": cube.n_samples, "scales": list(cube.scales),
                "embed_dim": cube.embed_dim, "grid_shape": cube.grid_shape,
                "status": {k: v for k, v in counts.items() if k != "unreadable" or v},
                "spec": json.loads(cube.spec.to_json()), "spec_hash": attrs.get(SPEC_HASH_ATTR),
                "versions": attrs.get(VERSIONS_ATTR), "request_account": attrs.get(REQUEST_ACCOUNT_ATTR),
                "last_run": campaign[LAST_RUN_ATTR] or None, "runs": _runs(attrs),
                "variables": {k: {"dims": list(v.dims), "dtype": str(v.dtype), "shape": list(v.shape)}
                              for k, v in ds.variables.items()}}
        if per_window is not None and cube.windows is not None:
            done = list(attrs.get(COMPLETED_WINDOWS_ATTR, []))
            info["windows"] = [{"window": w.label, "start": w.start, "end": w.end, "complete": w.start in done,
                                "status": c} for w, c in zip(cube.windows, per_window)]
            info["completed_windows"] = done
    info["writer"] = writer_of(path)
    return info


def format_store_info(info: Mapping[str, Any]) -> str:
    """The text form of :func:`store_info` (plus ``problems`` when verified).

    For a sample cube, the lines that follow the dataset's own summary (``print(ds)``).
    """
    if info.get("kind") == "tiling":
        return format_tiling_info(info)
    lines = ["status: " + ", ".join(f"{k} {v}" for k, v in info["status"].items())]
    lines += [f"  window {w['window']}: " + ", ".join(f"{k} {v}" for k, v in w["status"].items())
              + (" (complete)" if w.get("complete") else "") for w in info.get("windows", [])]
    if "windows" in info:
        lines.append(f"completed windows: {info.get('completed_windows') or 'none'}")
    lines += [f"spec hash: {info['spec_hash']}",
              "spec: " + json.dumps(info["spec"], sort_keys=True, separators=(",", ":"))]
    return "\n".join(lines + _closing_lines(info))


#: Runs listed by ``inspect`` (the last ones; ``runs`` keeps them all).
RUNS_SHOWN = 5


def _runs(attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    runs = attrs.get(RUNS_ATTR)
    if isinstance(runs, str):
        runs = json.loads(runs)
    return [dict(r) for r in runs] if isinstance(runs, list) else []


def format_runs(info: Mapping[str, Any], last: int = RUNS_SHOWN) -> list[str]:
    """Lines on the runs of a store: how many, the last ``last`` of them, and the last run's GPU workers."""
    runs = info.get("runs") or []
    lines = []
    if runs:
        lines.append(f"runs: {len(runs)}" + (f" (the last {last}:)" if len(runs) > last else ":"))
        for r in runs[-last:]:
            req = r.get("requests") or {}
            lines.append(f"  {r.get('start')} .. {r.get('end')}: {r.get('ended')}; units {r.get('units_done', 0)}/"
                         f"{r.get('units_run', 0)} ({r.get('units_failed', 0)} failed, {r.get('units_rerun', 0)} "
                         f"re-run), {r.get('samples_embedded', 0)} embeddings, {req.get('sent', 0)} requests sent, "
                         f"{len(r.get('workers') or [])} GPU worker(s)"
                         + (f", quarantined: {', '.join(r['quarantined'])}" if r.get("quarantined") else ""))
    workers = (info.get("last_run") or {}).get("workers") or []
    if workers:
        lines.append("last run's GPU workers:")
        for w in workers:
            load = f"{w['load_s']:.1f} s" if isinstance(w.get("load_s"), (int, float)) else "-"
            lines.append(f"  {w.get('name')} ({w.get('address')}): {w.get('units', 0)} units, "
                         f"{w.get('embeddings', 0)} embeddings, model loaded in {load}, {w.get('state')}"
                         + (f" ({w['error']})" if w.get("error") else ""))
    return lines


def format_problems(problems: list[str]) -> str:
    """The verify line of :func:`format_store_info`: ``consistent``, or the problems one per line."""
    return "verify: " + ("consistent" if not problems else "\n  ".join(["PROBLEMS"] + problems))

log = logging.getLogger(__name__)


def tiling_info(path: str | os.PathLike | StoreLocation) -> dict[str, Any]:
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
        ``transform`` as the affine ``(a, b, c, d, e, f)``). A store with ``time`` adds
        ``windows`` (per window: its label and status counts over every scale) and
        ``completed_windows``; its ``status`` counts are over every window.

    Raises
    ------
    CubeDamagedError
        A sample cube's metadata or status cannot be read (``inspect --verify`` says where).
    CubeError
        A sample cube of the store is missing or is not a cube.
    """
    import shapely

    path = StoreLocation.parse(path)
    root = zarr.open_group(path.zarr_store(read_only=True), mode="r", zarr_format=3)
    attrs = root.attrs.asdict()
    tiling = json.loads(attr_text(attrs, TILING_IDENTITY_ATTR))["tiling"]
    per_scale: dict[str, Any] = {}
    totals: dict[str, int] = {}
    windows: dict[str, dict[str, int]] = {}  # per window label, over every scale (a store with time)
    first_attrs: dict[str, Any] | None = None
    for s in tiling["scales"]:
        name = scale_name(s)
        cube = Cube.open(path.child("samples", name))
        cube_attrs = cube.attrs
        first_attrs = cube_attrs if first_attrs is None else first_attrs
        # CubeDamagedError when a status chunk does not decode; a store with time: every window
        per_window = [cube.at_window(t).status_counts() for t in range(len(cube.windows or (None,)))]
        counts = {k: sum(w[k] for w in per_window) for k in per_window[0]}
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
        if cube.windows is not None:
            for w, c in zip(cube.windows, per_window):
                window = windows.setdefault(w.label, {})
                for k, v in c.items():
                    window[k] = window.get(k, 0) + v
        group = group_of(root, name)
        tile_m = float(str(group.attrs[TILE_M_ATTR]))
        zones = {}
        for zone, grid in sorted(group.groups()):
            epsg = int(zone.removeprefix("EPSG"))
            lattice = TileLattice(epsg, float(s), int(str(group.attrs[IMAGE_SIZE_ATTR])))
            zones[zone] = {"crs": grid.attrs[CRS_ATTR], "shape": list(array_of(grid, "status").shape[-2:]),
                           "cell_m": tile_m,
                           "transform": list(lattice.raster_transform(int(str(grid.attrs[ROW_TOP_ATTR])),
                                                                      int(str(grid.attrs[COL_LEFT_ATTR]))))}
        per_scale[name] = {"scale_m": float(s), "tiles": cube.n_samples, "status": counts,
                           "embed_dim": cube.embed_dim, "grid_shape": cube.grid_shape,
                           "spec_hash": cube_attrs.get(SPEC_HASH_ATTR),
                           "request_account": cube_attrs.get(REQUEST_ACCOUNT_ATTR), "zones": zones}
    first_attrs = first_attrs or {}
    return {"path": path.url, "kind": "tiling", "scales": [float(s) for s in tiling["scales"]],
            "tiling": {k: tiling[k] for k in ("image_size", "block", "token")},
            "aoi_bounds": list(shapely.from_wkb(bytes.fromhex(attr_text(attrs, AOI_ATTR))).bounds),
            "raster_synced": bool(attrs.get(SYNCED_ATTR, False)),
            "spec": json.loads(attr_text(attrs, SPEC_ATTR)), "status": totals,
            "request_account": first_attrs.get(REQUEST_ACCOUNT_ATTR), "last_run": first_attrs.get(LAST_RUN_ATTR),
            "runs": _runs(first_attrs), "versions": first_attrs.get(VERSIONS_ATTR), "per_scale": per_scale,
            **({"windows": [{"window": k, "status": v} for k, v in windows.items()],
                "completed_windows": attrs.get(COMPLETED_WINDOWS_ATTR, [])} if windows else {})}


def format_tiling_info(info: Mapping[str, Any]) -> str:
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
    lines += [f"  window {w['window']}: " + ", ".join(f"{k} {v}" for k, v in w["status"].items())
              for w in info.get("windows", [])]
    if "windows" in info:
        lines.append(f"completed windows: {info.get('completed_windows') or 'none'}")
    lines.append("spec: " + json.dumps(info["spec"], sort_keys=True))
    return "\n".join(lines + _closing_lines(info))


def _closing_lines(info: Mapping[str, Any]) -> list[str]:
    """The last lines of ``inspect`` for a cube or a tiling store: versions, the request account,
    the runs, the writer lock and the problems found."""
    lines = [f"versions: {info['versions']}", f"request account: {info['request_account']}"]
    lines += format_runs(info)
    if info.get("writer"):
        stale = str(info["writer"]).startswith("stale lock")
        lines.append(f"writer lock: {info['writer']}" if stale else f"being written by: {info['writer']}")
    if "problems" in info:
        lines.append(format_problems(info["problems"]))
    return lines
