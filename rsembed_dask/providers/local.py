"""A provider over local rasters (GeoTIFF, COG, VRT), reprojected onto the requested grid.

Local files are taken to be ready-made composites: the date window of a fetch is
ignored, and so are the sensor's collection, cloud filter and compositing. Only
``sensor.bands`` is used.

Examples
--------
>>> from rsembed_dask.providers.local import LocalRasterProvider
>>> provider = LocalRasterProvider("scenes/")          # doctest: +SKIP
>>> patch = provider.fetch(grid, SensorSpec(), TemporalSpec.year(2022))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NoImageryError, PermanentProviderError, ProviderError, SpecError
from ..geo.grid import PixelGrid
from ..specs import SensorSpec, TemporalSpec
from .base import Patch, RequestStats

__all__ = ["LocalRasterProvider"]

logger = logging.getLogger(__name__)

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")
# Grid pixels more than this many times larger than the file's pixels are averaged.
AVERAGE_ABOVE_RATIO = 1.5
# Source pixels read beyond the grid on each side, for the resampling kernel.
MARGIN_PIXELS = 2


@dataclass(frozen=True)
class _FileMeta:
    crs: str
    bounds: tuple[float, float, float, float]  # left, bottom, right, top in the file's CRS
    res: tuple[float, float]
    count: int
    descriptions: tuple[str | None, ...]
    nodata: float | None
    overviews: tuple[int, ...]  # decimation factors of the file's overviews (COG pyramids)


def _expand(paths) -> tuple[str, ...]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not isinstance(paths, Sequence) or not paths:
        raise SpecError("paths", paths, "a path or a non-empty sequence of paths")
    out: list[str] = []
    for p in paths:
        if not isinstance(p, (str, Path)):
            raise SpecError("paths", p, "str or pathlib.Path entries")
        p = Path(p)
        if p.is_dir():
            found = sorted(str(f) for f in p.iterdir()
                           if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES)
            if not found:
                raise SpecError("paths", str(p), "a directory holding *.tif, *.tiff or *.vrt files")
            out.extend(found)
        else:
            out.append(str(p))
    return tuple(out)


class LocalRasterProvider:
    """Fetch patches from local GeoTIFF / COG / VRT files.

    Parameters
    ----------
    paths : str, Path or sequence of them
        Files, or directories (all their ``*.tif``, ``*.tiff`` and ``*.vrt`` files,
        sorted by name). Files are tried in this order; the first valid pixel wins.
    band_map : mapping, optional
        Sensor band name -> band description in the file (str) or 1-based band index
        (int), e.g. ``{"B4": 1, "B3": 2, "B2": 3}``.

    Notes
    -----
    Band selection without ``band_map``: by band description (GDAL band
    description, rioxarray's ``long_name``) when the file names its bands; else the
    file's first bands are taken to be ``sensor.bands`` in order.

    Resampling: bilinear when the grid's pixels are at most 1.5 times the file's
    (in the file's units), ``average`` beyond that, so downsampling does not alias.
    Files with overviews (COGs) are read from the coarsest overview whose pixels are
    at most half the grid's, so a coarse grid does not read full resolution.
    Pixels that are nodata in the file, or outside it, are invalid (``valid`` False,
    data 0); a pixel is valid only where every band is.

    Files are opened per call (the provider holds paths only: it pickles small and
    is thread-safe). File metadata (CRS, bounds, band names) is cached per process.
    The time window is ignored: local files are already composites.
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], *, band_map: Mapping[str, str | int] | None = None):
        self.paths = _expand(paths)
        if band_map is not None and not isinstance(band_map, Mapping):
            raise SpecError("band_map", band_map, "a mapping of sensor band -> file band name or index")
        self.band_map = dict(band_map) if band_map else None
        self.stats = RequestStats()
        self._meta: dict[str, _FileMeta] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"paths": self.paths, "band_map": self.band_map, "stats": self.stats}

    def __setstate__(self, state):
        self.paths, self.band_map, self.stats = state["paths"], state["band_map"], state["stats"]
        self._meta, self._lock = {}, threading.Lock()

    def __repr__(self) -> str:
        return f"LocalRasterProvider({len(self.paths)} files)"

    def fetch(self, grid: PixelGrid, sensor: SensorSpec, temporal: TemporalSpec | None = None) -> Patch:
        """Reproject the files onto ``grid`` and return ``sensor.bands`` as a :class:`Patch`.

        Raises
        ------
        NoImageryError
            No file intersects the grid, or those that do hold no valid pixel there.
        PermanentProviderError
            A file lacks one of the requested bands.
        ProviderError
            A file cannot be read (the message names it).
        """
        from rasterio.warp import transform_bounds

        bands = tuple(sensor.bands)
        data = np.zeros((len(bands), grid.height, grid.width), dtype=np.float32)
        valid = np.zeros(grid.shape, dtype=bool)
        hits = 0
        for path in self.paths:
            meta = self._metadata(path)
            box = transform_bounds(grid.crs, meta.crs, *grid.bounds, densify_pts=21)
            if not _intersects(box, meta.bounds):
                continue
            hits += 1
            got = self._read(path, meta, box, grid, bands)
            if got is None:
                continue
            vals, ok = got
            take = ok & ~valid
            data[:, take] = vals[:, take]
            valid |= take
            if valid.all():
                break
        if hits == 0:
            raise NoImageryError(f"no file of {self!r} intersects the grid {grid.crs} "
                                 f"bounds {tuple(round(b, 1) for b in grid.bounds)}")
        if not valid.any():
            raise NoImageryError(f"{hits} file(s) intersect the grid {grid.crs} "
                                 f"bounds {tuple(round(b, 1) for b in grid.bounds)} but hold no valid pixel there")
        out = np.where(valid, np.clip(np.rint(data), 0, 65535), 0).astype(np.uint16)
        return Patch(out, valid, grid, bands)

    def _metadata(self, path: str) -> _FileMeta:
        with self._lock:
            meta = self._meta.get(path)
        if meta is not None:
            return meta
        import rasterio
        from rasterio.errors import RasterioError

        try:
            with rasterio.open(path) as src:
                if src.crs is None:
                    raise ProviderError(f"{path}: the raster has no CRS")
                meta = _FileMeta(src.crs.to_string(), tuple(src.bounds), tuple(src.res), src.count,
                                 tuple(src.descriptions), src.nodata, tuple(src.overviews(1)))
        except (RasterioError, OSError) as e:
            self.stats.add(failed=1)
            raise ProviderError(f"{path}: cannot read raster: {e}") from e
        with self._lock:
            self._meta[path] = meta
        return meta

    def _band_indices(self, path: str, meta: _FileMeta, bands: tuple[str, ...]) -> list[int]:
        """1-based band indices in ``path`` of the sensor ``bands``."""
        names = list(meta.descriptions)
        named = any(names)
        out = []
        for i, b in enumerate(bands):
            want = self.band_map.get(b, b) if self.band_map else b
            if isinstance(want, (int, np.integer)) and not isinstance(want, bool):
                idx = int(want)
            elif named or self.band_map:
                idx = names.index(want) + 1 if want in names else 0
            else:
                idx = i + 1  # unnamed bands: assumed in sensor.bands order
            if not 1 <= idx <= meta.count:
                raise PermanentProviderError(
                    f"{path}: band {b!r} (as {want!r}) not found; the file has {meta.count} bands "
                    f"named {names}; pass band_map={{'{b}': <name or 1-based index>}}")
            out.append(idx)
        return out

    def _read(self, path: str, meta: _FileMeta, box, grid: PixelGrid, bands: tuple[str, ...]):
        """Read the window of ``path`` around ``box`` and reproject it; None if empty."""
        import rioxarray
        import xarray as xr
        from affine import Affine
        from rasterio.enums import Resampling
        from rasterio.errors import RasterioError
        from rioxarray.exceptions import NoDataInBounds, OneDimensionalRaster, RioXarrayError

        idx = self._band_indices(path, meta, bands)
        xres, yres = abs(meta.res[0]), abs(meta.res[1])
        ratio = min((box[2] - box[0]) / grid.width / xres, (box[3] - box[1]) / grid.height / yres)
        # The coarsest overview whose pixels are still at most half the grid's pixels.
        levels = [k for k, f in enumerate(meta.overviews) if 2 * f <= ratio]
        open_kw: dict[str, Any] = {}
        if levels:
            factor = meta.overviews[levels[-1]]
            open_kw["overview_level"] = levels[-1]
            xres, yres, ratio = xres * factor, yres * factor, ratio / factor
        resampling = Resampling.average if ratio > AVERAGE_ABOVE_RATIO else Resampling.bilinear
        m = MARGIN_PIXELS
        try:
            opened = rioxarray.open_rasterio(path, masked=False, **open_kw)
            if not isinstance(opened, xr.DataArray):  # subdatasets (HDF, NetCDF): not one raster
                raise ProviderError(f"{path}: holds subdatasets, expected one multi-band raster")
            da = opened
            try:
                da = da.isel(band=[i - 1 for i in idx]).rio.clip_box(
                    box[0] - m * xres, box[1] - m * yres, box[2] + m * xres, box[3] + m * yres)
                raw = da.values
                src = da.copy(data=raw.astype(np.float32))
            finally:
                da.close()
        except (NoDataInBounds, OneDimensionalRaster):
            return None
        except (RasterioError, RioXarrayError, OSError) as e:
            self.stats.add(failed=1)
            raise ProviderError(f"{path}: cannot read raster: {e}") from e
        self.stats.add(sent=1, bytes=int(raw.nbytes))
        if meta.nodata is not None and not np.isnan(meta.nodata):
            src.values[raw == meta.nodata] = np.nan
        src = src.rio.write_nodata(np.nan, encoded=False)
        out = src.rio.reproject(grid.crs, shape=grid.shape, transform=Affine(*grid.transform),
                                resampling=resampling, nodata=np.nan)
        vals = np.asarray(out.values, dtype=np.float32)
        ok = np.isfinite(vals).all(axis=0)
        logger.debug("%s: %d of %d pixels valid (%s)", path, int(ok.sum()), ok.size, resampling.name)
        return vals, ok


def _intersects(a, b) -> bool:
    """Whether boxes ``(left, bottom, right, top)`` overlap with positive area."""
    return a[0] < b[2] and a[2] > b[0] and a[1] < b[3] and a[3] > b[1]
