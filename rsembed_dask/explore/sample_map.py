"""The quicklook PNG of a sample cube: its samples binned on a map, coloured by PCA of their embeddings.

``rsembed-dask quicklook`` of a sample cube (a tiling store gets GeoTIFFs per zone:
:func:`~rsembed_dask.explore.geotiff.grid_quicklook`). No matplotlib: the picture is a
:func:`~rsembed_dask.explore.picture.map_png`, readable at any sample density.

Examples
--------
>>> samples_quicklook("years.zarr", 10, "maps", time=2021)   # doctest: +SKIP
'maps/quicklook_10m_2021-01-01.png'
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..store.geoparquet import output_error
from ..store.layout import OK, scale_name
from .notebook import _dataset, _reading, _scale_index, _window_start
from .pca import PCAColours
from .picture import bin_points, map_png

__all__ = ["samples_quicklook", "QUICKLOOK_CELLS"]

log = logging.getLogger(__name__)

#: Cells on the long side of a sample cube's quicklook, at most (samples averaged per cell);
#: fewer for few samples (about 3 x sqrt(samples), at least 16), so that each shows as a block.
QUICKLOOK_CELLS = 96


def samples_quicklook(cube: Any, scale: float | None, out_dir: str | os.PathLike, *, time: Any = None,
                      components: Sequence[int] = (0, 1, 2), cells: int | None = None) -> str:
    """Write a PNG of one scale (and one window) of a sample cube, coloured by PCA.

    Three principal components of the ok embeddings (of that scale and window) are red,
    green and blue (:class:`~rsembed_dask.explore.pca.PCAColours`); the samples are binned
    on a lon/lat grid of about square cells, at most ``cells`` a side (the mean colour of
    a cell's ok samples), upsampled to a readable picture; cells without an ok sample are
    transparent. The title names the scale and the window; the PNG's text chunks
    (``PIL.Image.open(png).text``) hold ``Title``, ``scale_m`` and, for a cube with a
    ``time`` dimension, ``time`` (the window start) and ``time_end``.

    Parameters
    ----------
    cube : str, path or xarray.Dataset
        A sample cube.
    scale : float or None
        Scale in metres (None: the cube's only scale).
    out_dir : str or path
        Where to write (created if missing).
    time : str, int or date, optional
        The window, in a cube with a ``time`` dimension: its start date or a year naming
        one window (default: the cube's only window; required when it has several).
    components : sequence of int
        The principal components shown as red, green and blue.
    cells : int, optional
        Cells on the long side of the map (default: about 3 x sqrt(samples), 16 to
        :data:`QUICKLOOK_CELLS`).

    Returns
    -------
    str
        The PNG written: ``quicklook_<scale>[_<window start>].png`` in ``out_dir``.

    Raises
    ------
    SpecError
        An unknown scale or window (the message lists the cube's), or no ok embedding there.
    """
    ds = _dataset(cube, time)
    si = _scale_index(ds, scale)
    window = _window_start(ds)
    with _reading(ds, si):
        sub = ds[["status", "embedding"] + (["time_bnds"] if "time_bnds" in ds else [])].isel(scale=si).load()
    scale_m = float(ds["scale"].values[si])
    ok = sub["status"].values == OK
    vectors = np.asarray(sub["embedding"].values, np.float64)
    colours = PCAColours.fit(vectors[ok], components)
    rgb = np.where(ok[:, None], colours.rgb(vectors).astype(np.float64), np.nan)
    if cells is None:
        cells = int(np.clip(np.ceil(3 * np.sqrt(ok.size)), 16, QUICKLOOK_CELLS))
    mean, count, cell_m = bin_points(sub["lon"].values, sub["lat"].values, rgb, cells)
    rgba = np.zeros(count.shape + (4,), np.uint8)
    rgba[..., :3] = np.rint(np.nan_to_num(mean)).astype(np.uint8)
    rgba[..., 3] = np.where(count > 0, 255, 0)
    comps = [int(c) + 1 for c in components]  # checked by PCAColours.fit
    text = {"scale_m": f"{scale_m:g}"}
    when = ""
    if window is not None:
        end = str(np.datetime64(sub["time_bnds"].values[1], "D")) if "time_bnds" in sub else None
        text.update(time=window, **({"time_end": end} if end else {}))
        when = f", window {window}" + (f"..{end}" if end else "")
    title = (f"samples, {scale_m:g} m{when}: PCA components {comps[0]}, {comps[1]}, {comps[2]} as RGB "
             f"({int(ok.sum())} of {ok.size} ok)")
    name = f"quicklook_{scale_name(scale_m)}" + (f"_{window}" if window else "") + ".png"
    png = os.path.join(os.fspath(out_dir), name)
    try:
        os.makedirs(out_dir, exist_ok=True)
        map_png(rgba, png, title, cell_m=cell_m, channels=[f"PC{c}" for c in comps], metadata=text)
    except OSError as exc:
        raise output_error(png, exc) from exc
    log.info("quicklook %s: %d samples on %d x %d cells", png, ok.size, *count.shape)
    return png
