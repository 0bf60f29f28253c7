"""Check a cube's cells against their status: ``rsembed-dask inspect --verify``.

Status vouches for data: every ``ok`` cell must hold a finite embedding (and
input resolution), every other cell none, and every ``failed`` cell a reason.
A tiling store (:func:`verify_tiling_store`) is checked scale by scale: its
sample cubes as above, and, once its grids are synced, every grid cell that
names a tile against that tile's status.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import zarr

from .cube import FAILED, OK, Cube, open_cube

__all__ = ["verify_cube", "verify_tiling_store"]

log = logging.getLogger(__name__)


def verify_cube(path) -> list[str]:
    """Problems found in the cube at ``path`` (an empty list when it is consistent).

    Reads chunk by chunk through Dask; memory stays at a few chunks.
    """
    ds = open_cube(path)
    status = ds.status.values
    finite = np.isfinite(ds.embedding).all("feature").values
    any_finite = np.isfinite(ds.embedding).any("feature").values
    res_ok = np.isfinite(ds.input_res_m.values)
    problems = []
    scales = ds.scale.values
    ids = ds.sample.values

    def report(mask: np.ndarray, what: str) -> None:
        rows, cols = np.nonzero(mask)
        if len(rows):
            cells = ", ".join(f"({ids[r]!r}, {scales[c]:g} m)" for r, c in zip(rows[:5], cols[:5]))
            more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
            problems.append(f"{len(rows)} {what}: {cells}{more}")

    report((status == OK) & ~finite, "ok cells with a non-finite embedding")
    report((status == OK) & ~res_ok, "ok cells without an input resolution")
    report((status != OK) & any_finite, "cells not ok that hold an embedding")
    errors = np.array([str(e) for e in ds.error.values.ravel()], dtype=object).reshape(status.shape)
    report((status == FAILED) & (errors == ""), "failed cells without a reason")
    report(~np.isin(status, (0, 1, 2, 3)), "cells with an unknown status code")
    if "grid" in ds:
        grid_any = np.isfinite(ds.grid).any(("feature", "gy", "gx")).values
        report((status == OK) & ~grid_any, "ok cells with an empty token grid")
    return problems


def verify_tiling_store(path) -> list[str]:
    """Problems found in the tiling store at ``path`` (an empty list when it is consistent).

    Every per-scale sample cube goes through :func:`verify_cube`. When the root
    attribute ``raster_synced`` says the grids reflect the sample cubes, every zone
    grid cell with ``sample_index >= 0`` must name an existing sample and hold that
    sample's status. Unsynced grids (a run going on or interrupted) are not compared.

    Parameters
    ----------
    path : str or path-like
        A tiling store (see :mod:`rsembed_dask.tile_cube`).

    Returns
    -------
    list of str
        One line per kind of problem, prefixed with the group it was found in.
    """
    from .tile_cube import scale_name

    path = os.path.abspath(os.fspath(path))
    root = zarr.open_group(path, mode="r", zarr_format=3)
    scales = json.loads(root.attrs["tiling_identity"])["tiling"]["scales"]
    synced = bool(root.attrs.get("raster_synced", False))
    problems = []
    for s in scales:
        name = scale_name(s)
        sample_path = os.path.join(path, "samples", name)
        problems += [f"samples/{name}: {p}" for p in verify_cube(sample_path)]
        if not synced:
            continue
        status = Cube.open(sample_path).status_array()[:, 0]
        for zone, grid in sorted(root[name].groups()):
            index = np.asarray(grid["sample_index"][...])
            cells = np.asarray(grid["status"][...])
            has = index >= 0
            outside = has & (index >= len(status))
            has &= ~outside
            differ = has & (cells != status[np.where(has, index, 0)])
            for mask, what in ((outside, "grid cells naming a sample the sample cube does not have"),
                               (differ, "grid cells whose status is not their sample's")):
                rows, cols = np.nonzero(mask)
                if len(rows):
                    where = ", ".join(f"(y={r}, x={c})" for r, c in zip(rows[:5].tolist(), cols[:5].tolist()))
                    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
                    problems.append(f"{name}/{zone}: {len(rows)} {what}: {where}{more}")
    if not synced:
        log.info("tiling store %s: grids not synced; grid cells not compared with the samples", path)
    return problems
