"""Naming a date window of a cube or tiling store with ``time``: its start date, or a year naming one.

The one rule shared by :func:`~rsembed_dask.explore.windows_change.change` and the quicklooks
of a tiling store (:func:`~rsembed_dask.explore.geotiff.grid_quicklook`).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import numpy as np

from ..errors import SpecError

__all__ = ["window_index"]


def window_index(ds: Any, when: Any) -> int:
    """The index along ``time`` of the window ``when`` names in the cube ``ds``.

    Parameters
    ----------
    ds : xarray.Dataset
        An opened cube with a ``time`` dimension.
    when : str, int or date
        A window's start date (``"2024-04-01"``, a ``datetime.date``), or a year
        (``2024``, ``"2024"``) where exactly one window starts in it.

    Returns
    -------
    int

    Raises
    ------
    SpecError
        The cube has no ``time`` dimension, or ``when`` names no window or several (the
        message lists the cube's windows).
    """
    if "time" not in ds.dims:
        raise SpecError("cube", "a cube of one window (no time dimension)",
                        "a cube written with several windows (temporal=[...], --years, --window)")
    starts = [str(np.datetime64(t, "D")) for t in ds["time"].values]
    text = when.isoformat() if isinstance(when, _dt.date) else str(when).strip()
    if text in starts:
        return starts.index(text)
    if text.isdigit() and len(text) == 4:
        hits = [i for i, s in enumerate(starts) if s[:4] == text]
        if len(hits) == 1:
            return hits[0]
        why = f"{len(hits)} windows start in {text}" if hits else f"no window starts in {text}"
        raise SpecError("window", when, f"a window's start date or a year naming one window ({why}); the "
                                        f"cube's windows start on {starts}")
    raise SpecError("window", when, f"a window's start date (one of {starts}) or its year (YYYY)")
