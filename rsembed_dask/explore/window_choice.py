"""Which window of a cube a function reads: ``time=`` of ``similar``, the quicklooks and the explorer.

A cube written over several date windows has a ``time`` dimension; the exploring functions
read one window of it. :func:`choose_window` is the one rule they all follow (Python ``time=``,
CLI ``--time``, the explorer's ``time`` parameter):

- ``time`` names a window by its start date (``"2019-01-01"``) or by a year in which exactly
  one window starts (``2019``) (:func:`~rsembed_dask.explore.windows_change.window_index`);
- ``time=None`` reads the only window of a cube with one window, and is refused (SpecError
  naming the windows) for a cube with several;
- a cube without a ``time`` dimension (one window) takes no ``time``.

Examples
--------
>>> import numpy as np, xarray as xr
>>> ds = xr.Dataset(coords={"time": np.array(["2019-01-01", "2020-01-01"], "datetime64[ns]")})
>>> choose_window(ds, 2020), choose_window(ds, "2019-01-01")
(1, 0)
>>> choose_window(ds, None)
Traceback (most recent call last):
...
rsembed_dask.errors.SpecError: time=None is invalid: expected one of the cube's 2 windows, by its start date or a year naming one window: 2019-01-01, 2020-01-01
>>> choose_window(xr.Dataset(), None) is None   # a cube of one window, without time
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import SpecError
from .windows import window_index

__all__ = ["choose_window", "window_starts", "TIME_DIM"]

#: The dimension (and coordinate: the window start) of a cube written over several windows.
TIME_DIM = "time"


def window_starts(ds: Any) -> list[str]:
    """The start dates (ISO, ``YYYY-MM-DD``) of the windows of ``ds``; empty without a ``time`` dimension.

    Parameters
    ----------
    ds : xarray.Dataset
        An opened cube.

    Returns
    -------
    list of str
    """
    if TIME_DIM not in ds.dims:
        return []
    return [str(np.datetime64(t, "D")) for t in np.asarray(ds[TIME_DIM].values)]


def choose_window(ds: Any, time: Any, *, field: str = "time") -> int | None:
    """The position along ``time`` of the window ``time`` names in the cube ``ds``.

    Parameters
    ----------
    ds : xarray.Dataset
        An opened cube (with or without a ``time`` dimension).
    time : str, int, date or None
        A window's start date (``"2019-01-01"``, a ``datetime.date``), or a year naming
        exactly one window (``2019``, ``"2019"``); None: the cube's only window.
    field : str
        The name given in errors (``"time"``; ``"--time"`` on the command line).

    Returns
    -------
    int or None
        The window's position along ``time``; None for a cube without a ``time``
        dimension (read as it is).

    Raises
    ------
    SpecError
        ``time`` given to a cube without windows; None for a cube with several windows;
        or a ``time`` that names no window or several. The message lists the windows.
    """
    starts = window_starts(ds)
    if not starts:
        if time is None:
            return None
        raise SpecError(field, time, "no window: this cube has one date window (no time dimension); "
                                     "leave time out")
    names = ", ".join(starts)
    if time is None:
        if len(starts) == 1:
            return 0
        raise SpecError(field, None, f"one of the cube's {len(starts)} windows, by its start date or a "
                                     f"year naming one window: {names}")
    try:
        return window_index(ds, time)
    except SpecError as exc:  # the same rule; named as the caller's parameter
        raise SpecError(field, time, exc.allowed) from None
