"""What the explorer shows: a sample cube or a tiling store, opened read-only.

:class:`CubeSource` names the cube's scales and windows and hands out, per scale
and window, the sample-layout dataset whose rows are the explorer's *places*: the
samples of a sample cube, the tiles of a tiling store (its ``samples/<scale>``
cube). A tiling store also has per-zone grids, drawn as map overlays
(:mod:`rsembed_dask.explore.app.overlay`).

Windows: a cube with a ``time`` dimension (several date windows) is explored one
window at a time; a window is named by its start date (``2019-01-01``) or, where it
names one window, its year (``2019``). A cube without a ``time`` dimension has one
window and takes no ``time``.

Examples
--------
>>> src = CubeSource.open("campaign.zarr")          # doctest: +SKIP
>>> src.scales, src.windows                          # doctest: +SKIP
([20.0], [])
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from ...errors import SpecError
from ...store.layout import scale_name
from ...store.location import StoreLocation
from ...store.open import is_tiling_store, open_cube
from ..window_choice import TIME_DIM, choose_window

__all__ = ["CubeSource", "Window"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Window:
    """One date window of a cube: its position along ``time``, start and end (ISO dates)."""

    position: int
    start: str
    end: str | None

    def label(self) -> str:
        return self.start if self.end is None else f"{self.start}/{self.end}"


def _iso_day(value: Any) -> str:
    return str(np.datetime_as_string(np.datetime64(value, "D"), unit="D"))


def _windows(ds: xr.Dataset) -> list[Window]:
    """The windows of ``ds`` (empty without a ``time`` dimension)."""
    if TIME_DIM not in ds.dims:
        return []
    starts = np.asarray(ds[TIME_DIM].values)
    bounds = np.asarray(ds["time_bnds"].values) if "time_bnds" in ds.variables else None
    return [Window(i, _iso_day(s), _iso_day(bounds[i][1]) if bounds is not None else None)
            for i, s in enumerate(starts.tolist() if starts.dtype.kind != "M" else starts)]


class CubeSource:
    """A cube or tiling store opened read-only, with its scales and windows.

    Parameters
    ----------
    datasets : dict of float to xarray.Dataset
        The sample-layout dataset per scale (one scale each for a tiling store, all
        the cube's scales, the same dataset, for a sample cube).
    kind : {"samples", "tiling"}
    path : str, optional
        The store, for the zone grids of a tiling store.
    name : str
        Shown in the page's title.
    """

    def __init__(self, datasets: dict[float, xr.Dataset], kind: str, path: str | None = None,
                 name: str = "cube"):
        if not datasets:
            raise SpecError("cube", name, "a cube or tiling store with at least one scale")
        self.datasets = dict(sorted(datasets.items()))
        self.kind = kind
        self.path = path
        self.name = name
        first = next(iter(self.datasets.values()))
        self.windows = _windows(first)

    @classmethod
    def open(cls, cube: Any) -> CubeSource:
        """Open ``cube``: a path (sample cube or tiling store), an ``xarray.Dataset`` from
        :func:`~rsembed_dask.store.open.open_cube` or a tiling store's ``DataTree``.

        int8 cubes stay int8 (opened with ``dequantize=False``). Paths are opened
        read-only (xarray/Zarr read mode); nothing is ever written.

        Raises
        ------
        CubeError
            No cube at the path.
        SpecError
            ``cube`` is none of the above.
        """
        if isinstance(cube, (str, os.PathLike, StoreLocation)):  # a path or an object-store URL
            loc = StoreLocation.parse(cube)
            opened = open_cube(loc, dequantize=False)
            return cls._of(opened, loc.url, loc.name or loc.url)
        if isinstance(cube, (xr.Dataset, xr.DataTree)):
            return cls._of(cube, None, "cube")
        raise SpecError("cube", type(cube).__name__,
                        "a cube path, an xarray.Dataset from open_cube() or a tiling store's DataTree")

    @classmethod
    def _of(cls, opened: xr.Dataset | xr.DataTree, path: str | None, name: str) -> CubeSource:
        if isinstance(opened, xr.DataTree):
            datasets = {}
            samples = opened["samples"] if "samples" in opened.children else None
            if samples is None:
                raise SpecError("cube", name, "a tiling store with a 'samples' group")
            for child in samples.children.values():
                ds = child.to_dataset()
                datasets[float(ds["scale"].values[0])] = ds
            tiling_path = path if path is not None and is_tiling_store(path) else None
            return cls(datasets, "tiling", tiling_path, name)
        return cls({float(s): opened for s in np.asarray(opened["scale"].values).tolist()}, "samples", path, name)

    @property
    def scales(self) -> list[float]:
        return list(self.datasets)

    def scale(self, value: Any) -> float:
        """The cube's scale named by ``value`` (metres; None for a single-scale cube).

        Raises
        ------
        SpecError
            Not one of the cube's scales.
        """
        if value is None and len(self.datasets) == 1:
            return self.scales[0]
        allowed = f"one of the cube's scales: {', '.join(f'{s:g}' for s in self.scales)} (metres)"
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise SpecError("scale", value, allowed) from None
        for s in self.scales:
            if math.isclose(s, v, rel_tol=1e-9, abs_tol=1e-9):
                return s
        raise SpecError("scale", value, allowed)

    def window(self, value: Any) -> Window | None:
        """The window named by ``value`` (a start date or a year); None for a cube without windows.

        The rule of every exploring function (:func:`~rsembed_dask.explore.window_choice.choose_window`).

        Raises
        ------
        SpecError
            A window given to a cube without windows, none given to a cube with several,
            or one the cube lacks.
        """
        position = choose_window(next(iter(self.datasets.values())), None if value == "" else value)
        return None if position is None else self.windows[position]

    def places(self, scale: float, window: Window | None) -> xr.Dataset:
        """The sample-layout dataset of ``scale`` (and ``window``): dims ``sample`` and ``feature``."""
        ds = self.datasets[scale]
        ds = ds.isel(scale=int(np.flatnonzero(np.isclose(ds["scale"].values, scale))[0]))
        if window is not None:
            ds = ds.isel({TIME_DIM: window.position})
        return ds

    def zone_groups(self, scale: float) -> list[str]:
        """Paths (inside the store) of the zone grids of ``scale`` (tiling stores; else empty)."""
        if self.kind != "tiling" or self.path is None:
            return []
        import zarr

        root = zarr.open_group(self.path, mode="r", zarr_format=3)
        name = scale_name(scale)
        if name not in root:
            return []
        return [f"{name}/{zone}" for zone, _ in sorted(root[name].groups())]  # type: ignore[union-attr]
