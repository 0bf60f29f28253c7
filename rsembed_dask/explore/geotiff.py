"""Quicklook maps of a tiling store: one RGB GeoTIFF (and PNG) per UTM zone of a scale.

:func:`grid_quicklook` colours every zone grid of a scale with one
:class:`~rsembed_dask.explore.pca.PCAColours` fit (on a sample of the scale's ok
embeddings), so colours agree across zones.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import CubeError, SpecError
from ..store.damage import named_damage
from ..store.geoparquet import output_error
from ..store.location import StoreLocation
from ..store.layout import CRS_ATTR, OK, SYNCED_ATTR, TIME_WINDOWS_ATTR, scale_name
from ..store.open import array_of, attr_text, group_of, is_tiling_store
from ..store.quantize import dequantize_int8
from ..store.windowed import at_window
from .pca import PCAColours
from .picture import map_png
from .window_choice import TIME_DIM, choose_window

__all__ = ["grid_quicklook", "MAX_FIT_VECTORS", "write_scalar_geotiff"]

log = logging.getLogger(__name__)

#: Vectors used to fit the axes of a grid quicklook: principal axes and percentiles
#: are stable long before this (the fit costs O(n D^2)).
MAX_FIT_VECTORS = 20_000


def _store_window(samples, time: Any) -> tuple[int | None, list[str] | None]:
    """The position and ``[start, end]`` of the window ``time`` names in a tiling store whose
    sample cube of a scale is ``samples`` (None, None for a store without time)."""
    import xarray as xr

    windows = samples.attrs.get(TIME_WINDOWS_ATTR)
    axis = xr.Dataset(coords={TIME_DIM: np.array([w[0] for w in windows], "datetime64[ns]")}) if windows else xr.Dataset()
    t = choose_window(axis, time)
    return t, (None if t is None or not windows else [str(v) for v in windows[t]])


def _fit_sample(samples, rng: np.random.Generator, max_rows: int, t: int | None = None) -> np.ndarray:
    """Up to ``max_rows`` ok embeddings of a sample cube (of window ``t``), read a few whole chunks at a time."""
    emb, status = at_window(samples["embedding"], t), at_window(samples["status"], t)
    n, chunk = emb.shape[0], emb.chunks[0]
    starts = rng.permutation(np.arange(0, n, chunk))
    need = int(np.searchsorted(np.cumsum(np.minimum(chunk, n - starts)), max_rows) + 1)
    rows, got = [], 0
    for s in np.sort(starts[:need]).tolist():  # a random subset, read in order
        e = np.asarray(emb[s:s + chunk, 0, :])
        if "embedding_scale" in samples:  # an int8 store
            e = dequantize_int8(e, at_window(samples["embedding_scale"], t)[s:s + chunk, 0], axis=1)
        ok = np.asarray(status[s:s + chunk, 0]) == OK
        rows.append(e[ok])
        got += int(ok.sum())
        if got >= max_rows:
            break
    return np.concatenate(rows)[:max_rows] if rows else np.zeros((0, emb.shape[2]))


def grid_quicklook(path: str | os.PathLike, scale_m: float, out_dir: str | os.PathLike, *, time: Any = None,
                   components: Sequence[int] = (0, 1, 2), png: bool = True, seed: int = 0) -> list[str]:
    """Write RGB quicklooks of one scale of a tiling store: a GeoTIFF (and PNG) per zone.

    One cell per tile, coloured by three principal components fitted on up to
    :data:`MAX_FIT_VECTORS` embeddings of the scale; cells without an embedding
    are transparent (alpha band 0). The GeoTIFF holds one pixel per tile; the PNG is a
    picture to read (:func:`~rsembed_dask.explore.picture.map_png`): tiles upsampled
    (nearest) to at least 512 px on the long side, no data transparent, the zone,
    scale and components in the title, a legend and a scale bar.

    Parameters
    ----------
    path : str or path
        A tiling store.
    scale_m : float
        The scale to draw, in metres.
    out_dir : str or path
        Where to write (created if missing).
    time : str, int or date, optional
        The window drawn, in a store written over several windows: its start date or a
        year naming one window (default: the store's only window; required when it has
        several; :func:`~rsembed_dask.explore.window_choice.choose_window`). The title and
        the PNG's ``time`` text chunk name it, the file names end with its start date.
    components : sequence of int
        The principal components shown as red, green and blue.
    png : bool
        Also write a PNG per zone.
    seed : int
        Seed of the sample of vectors the PCA is fitted on.
    time : str, int or date, optional
        For a store with ``time``: the window drawn (its start date, or a year naming one
        window); required when the store holds several. Its start ends the file names
        (``quicklook_10m_EPSG32632_2024-01-01.tif``).

    Returns
    -------
    list of str
        The files written, e.g. ``quicklook_10m_EPSG32632.tif``
        (``quicklook_10m_EPSG32632_2019-01-01.tif`` for a window).

    Raises
    ------
    SpecError
        An unknown scale or window (the message lists the store's).
    """
    import zarr

    path = StoreLocation.parse(path)
    if not is_tiling_store(path):
        raise CubeError(f"no tiling store at {path!r} (quicklooks need the georeferenced grids)")
    name = scale_name(scale_m)
    root = zarr.open_group(path.zarr_store(read_only=True), mode="r", zarr_format=3)
    if not root.attrs.get(SYNCED_ATTR, False):
        log.warning("grids of %s are not synced with the sample cubes (a run was interrupted?)", path)
    if name not in root or f"samples/{name}" not in root:
        scales = [k for k in root.group_keys() if k != "samples"]
        raise SpecError("scale_m", scale_m, f"one of the store's scales {scales}")
    samples = root[f"samples/{name}"]
    t, window = _store_window(samples, time)
    with named_damage(path.child("samples", name), cube=path):
        colours = PCAColours.fit(_fit_sample(samples, np.random.default_rng(seed), MAX_FIT_VECTORS, t), components)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise output_error(out_dir, exc) from exc
    written = []
    for zone, g in sorted(group_of(root, name).groups()):
        with named_damage(path.child(name, zone), cube=path):
            written += _zone_quicklook(g, zone, name, scale_m, components, colours, out_dir, png, t, window)
    return written


def _zone_quicklook(g, zone: str, name: str, scale_m: float, components: Sequence[int], colours: PCAColours,
                    out_dir: str | os.PathLike, png: bool, t: int | None = None,
                    window: list[str] | None = None) -> list[str]:
    """The quicklook files of one zone grid ``g`` (at window ``t``, ``[start, end]``)."""
    from affine import Affine

    emb, status = at_window(array_of(g, "embedding"), t), np.asarray(at_window(array_of(g, "status"), t)[...])
    ny, nx, _ = emb.shape
    rgba = np.zeros((4, ny, nx), np.uint8)
    step = emb.chunks[0]
    for r in range(0, ny, step):  # one row of chunks at a time
        strip = np.asarray(emb[r:r + step])
        if "embedding_scale" in g:  # an int8 store
            strip = dequantize_int8(strip, at_window(array_of(g, "embedding_scale"), t)[r:r + step], axis=-1)
        strip = strip.reshape(-1, emb.shape[2])
        h = min(step, ny - r)
        rgba[:3, r:r + h] = colours.rgb(strip).T.reshape(3, h, nx)
    rgba[3] = np.where(status == OK, 255, 0)
    geo = attr_text(array_of(g, "spatial_ref").attrs, "GeoTransform")
    transform = Affine.from_gdal(*(float(v) for v in geo.split()))
    base = os.path.join(out_dir, f"quicklook_{name}_{zone}" + (f"_{window[0]}" if window else ""))
    try:
        _write_geotiff(base + ".tif", rgba, g.attrs[CRS_ATTR], transform)
        if png:
            comps = [int(c) + 1 for c in components]  # checked by PCAColours.fit
            n_ok = int((status == OK).sum())
            when = f", window {window[0]}..{window[1]}" if window else ""
            map_png(np.moveaxis(rgba * (rgba[3:] > 0), 0, -1), base + ".png",
                    f"{zone}, {scale_m:g} m tiles{when}: PCA components {comps[0]}, {comps[1]}, {comps[2]} as RGB "
                    f"({n_ok} of {status.size} cells with data)",
                    cell_m=abs(transform.a), channels=[f"PC{c}" for c in comps],
                    metadata={"zone": zone, "scale_m": f"{scale_m:g}",
                          **({"time": window[0], "time_end": window[1]} if window else {})})
    except OSError as exc:  # rasterio's RasterioIOError too
        raise output_error(base + ".tif", exc) from exc
    log.info("quicklook %s: %d x %d cells", base, ny, nx)
    return [base + ".tif"] + ([base + ".png"] if png else [])


def _write_geotiff(file: str, rgba: np.ndarray, crs: str, transform: Any) -> None:
    import rasterio

    ny, nx = rgba.shape[1:]
    with rasterio.open(file, "w", driver="GTiff", width=nx, height=ny, count=4, dtype="uint8",
                       crs=crs, transform=transform, photometric="RGB", compress="deflate") as dst:
        dst.write(rgba)
        dst.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                           rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.alpha]


def write_scalar_geotiff(file: str | os.PathLike, values: np.ndarray, crs: str, transform: Any,
                         description: str = "") -> str:
    """Write a float32 grid ``(H, W)`` as a one-band GeoTIFF, NaN its no-data value.

    Parameters
    ----------
    file : str or path
        The GeoTIFF to write.
    values : ndarray
        The grid (e.g. a change score per tile), NaN where there is no data.
    crs : str
        Its CRS (``"EPSG:32631"``).
    transform : affine.Affine
        Its pixel-to-CRS transform (e.g. a zone grid's ``spatial_ref`` ``GeoTransform``).
    description : str
        The band's description.

    Returns
    -------
    str
        ``file``.
    """
    import rasterio

    v = np.asarray(values, np.float32)
    with rasterio.open(file, "w", driver="GTiff", width=v.shape[1], height=v.shape[0], count=1, dtype="float32",
                       crs=crs, transform=transform, nodata=float("nan"), compress="deflate") as dst:
        dst.write(v, 1)
        if description:
            dst.set_band_description(1, description)
    return os.fspath(file)
