"""Check a cube's cells against their status: ``rsembed-dask inspect --verify``.

Status vouches for data: every ``ok`` cell must hold a finite embedding (and
input resolution), every other cell none, and every ``failed`` cell a reason.
"""

from __future__ import annotations

import numpy as np

from .cube import FAILED, OK, open_cube

__all__ = ["verify_cube"]


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
