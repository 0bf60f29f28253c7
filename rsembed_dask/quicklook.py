"""Colour quicklooks of embeddings: three principal components as RGB, and GeoTIFF/PNG maps.

:class:`PCAColours` fits principal axes and a percentile stretch on a sample of
vectors and colours any number of vectors with them, chunk by chunk, so a
continent's grid is coloured without holding its embeddings in memory.
:func:`grid_quicklook` writes one RGB GeoTIFF (and PNG) per UTM zone of a scale
of a tiling store, all coloured with one fit so colours agree across zones.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(200, 8))
>>> colours = PCAColours.fit(x)
>>> colours.rgb(x[:3]).shape
(3, 3)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import CubeError, SpecError
from .quantize import dequantize_int8

__all__ = ["PCAColours", "STRETCH_PERCENTILES", "grid_quicklook"]

log = logging.getLogger(__name__)

#: Each channel is stretched from its 2nd to its 98th percentile: robust to the few
#: outliers (clouds, water) that would otherwise grey out everything else.
STRETCH_PERCENTILES = (2.0, 98.0)
#: Vectors used to fit the axes of a grid quicklook: principal axes and percentiles
#: are stable long before this (the fit costs O(n D^2)).
MAX_FIT_VECTORS = 20_000
#: Above this many finite rows per feature, the principal axes come from the
#: ``(D, D)`` scatter matrix instead of the ``(N, D)`` data (same axes, bounded memory).
_SCATTER_ROWS_PER_FEATURE = 4


@dataclass(frozen=True, eq=False)
class PCAColours:
    """Principal axes, mean and stretch: vectors in, uint8 RGB out.

    Attributes
    ----------
    mean : numpy.ndarray ``(D,)``
    axes : numpy.ndarray ``(3, D)``
        The chosen principal axes, each signed so that its largest loading is positive
        (scikit-learn's ``svd_flip``): colours depend neither on LAPACK nor on row order.
    lo, hi : numpy.ndarray ``(3,)``
        Scores mapped to 0 and 255 (:data:`STRETCH_PERCENTILES` of the fitted rows).
    flat : numpy.ndarray ``(3,)`` of bool
        Channels without spread (e.g. every row equal): mid-grey (128).
    """

    mean: np.ndarray
    axes: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    flat: np.ndarray

    @classmethod
    def fit(cls, vectors, components: Sequence[int] = (0, 1, 2)) -> PCAColours:
        """Fit on the finite rows of ``vectors`` ``(N, D)``; ``components`` pick the axes (R, G, B).

        Raises
        ------
        SpecError
            ``vectors`` not 2-D or without a finite row; ``components`` not three indices in ``[0, D)``.
        """
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] == 0:
            raise SpecError("vectors", f"array of shape {x.shape}", "a 2-D array (samples, features)")
        comps = _check_components(components, x.shape[1])
        xf = x[np.isfinite(x).all(axis=1)]
        if not len(xf):
            raise SpecError("vectors", f"{x.shape[0]} rows, none finite", "at least one finite row")
        mean = xf.mean(axis=0)
        xc = xf - mean
        axes = _principal_axes(xc)[list(comps)]
        lo, hi = np.percentile(xc @ axes.T, STRETCH_PERCENTILES, axis=0)
        # No spread beyond rounding noise of the centring: a flat channel.
        flat = hi - lo <= 1e-9 * max(1.0, float(np.abs(xf).max()))
        return cls(mean, axes, lo, hi, flat)

    def rgb(self, vectors) -> np.ndarray:
        """``(N, 3)`` uint8 colours; rows holding a NaN or inf are black (0, 0, 0)."""
        x = np.asarray(vectors, dtype=np.float64)
        out = np.zeros((x.shape[0], 3), np.uint8)
        finite = np.isfinite(x).all(axis=1)
        if finite.any():
            scores = (x[finite] - self.mean) @ self.axes.T
            scaled = (scores - self.lo) / np.where(self.flat, 1.0, self.hi - self.lo)
            scaled = np.where(self.flat, 0.5, np.clip(scaled, 0.0, 1.0))
            out[finite] = np.rint(scaled * 255.0).astype(np.uint8)
        return out


def _principal_axes(xc: np.ndarray) -> np.ndarray:
    """Principal axes (rows, by decreasing variance) of centred rows ``xc``, sign-fixed."""
    n, d = xc.shape
    if n > _SCATTER_ROWS_PER_FEATURE * d:
        _, _, vt = np.linalg.svd(xc.T @ xc, hermitian=True)
    else:
        _, _, vt = np.linalg.svd(xc, full_matrices=False)
    if vt.shape[0] < d:  # fewer rows than features: pad with zero axes (zero scores)
        vt = np.vstack([vt, np.zeros((d - vt.shape[0], d))])
    biggest = np.argmax(np.abs(vt), axis=1)
    signs = np.sign(vt[np.arange(vt.shape[0]), biggest])
    signs[signs == 0] = 1.0
    return vt * signs[:, None]


def _check_components(components: Sequence[int], n_features: int) -> tuple[int, int, int]:
    comps = tuple(components) if isinstance(components, (tuple, list)) else None
    if (comps is None or len(comps) != 3
            or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in comps)
            or not all(0 <= c < n_features for c in comps)):
        raise SpecError("components", components,
                        f"three principal component indices in [0, {n_features - 1}] (R, G, B)")
    return tuple(int(c) for c in comps)  # type: ignore[return-value]


def _fit_sample(samples, rng: np.random.Generator, max_rows: int) -> np.ndarray:
    """Up to ``max_rows`` ok embeddings of a sample cube, read a few whole chunks at a time."""
    n, chunk = samples["embedding"].shape[0], samples["embedding"].chunks[0]
    starts = rng.permutation(np.arange(0, n, chunk))
    need = int(np.searchsorted(np.cumsum(np.minimum(chunk, n - starts)), max_rows) + 1)
    rows, got = [], 0
    for s in np.sort(starts[:need]).tolist():  # a random subset, read in order
        e = np.asarray(samples["embedding"][s:s + chunk, 0, :])
        if "embedding_scale" in samples:  # an int8 store
            e = dequantize_int8(e, samples["embedding_scale"][s:s + chunk, 0], axis=1)
        ok = np.asarray(samples["status"][s:s + chunk, 0]) == 1
        rows.append(e[ok])
        got += int(ok.sum())
        if got >= max_rows:
            break
    return np.concatenate(rows)[:max_rows] if rows else np.zeros((0, samples["embedding"].shape[2]))


def grid_quicklook(path, scale_m: float, out_dir, *, components: Sequence[int] = (0, 1, 2),
                   png: bool = True, seed: int = 0) -> list[str]:
    """Write RGB quicklooks of one scale of a tiling store: a GeoTIFF (and PNG) per zone.

    One cell per tile, coloured by three principal components fitted on up to
    :data:`MAX_FIT_VECTORS` embeddings of the scale; cells without an embedding
    are transparent (alpha band 0) in the GeoTIFF and black in the PNG.

    Returns
    -------
    list of str
        The files written, e.g. ``quicklook_10m_EPSG32632.tif``.
    """
    import rasterio
    import zarr
    from rasterio.transform import Affine

    from .cube_store import is_tiling_store
    from .tile_cube import scale_name

    path = os.path.abspath(os.fspath(path))
    if not is_tiling_store(path):
        raise CubeError(f"no tiling store at {path!r} (quicklooks need the georeferenced grids)")
    name = scale_name(scale_m)
    root = zarr.open_group(path, mode="r", zarr_format=3)
    if not root.attrs.get("raster_synced", False):
        log.warning("grids of %s are not synced with the sample cubes (a run was interrupted?)", path)
    if name not in root or f"samples/{name}" not in root:
        scales = [k for k in root.group_keys() if k != "samples"]
        raise SpecError("scale_m", scale_m, f"one of the store's scales {scales}")
    colours = PCAColours.fit(_fit_sample(root[f"samples/{name}"], np.random.default_rng(seed),
                                         MAX_FIT_VECTORS), components)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for zone, g in sorted(root[name].groups()):
        emb, status = g["embedding"], np.asarray(g["status"][...])
        ny, nx, _ = emb.shape
        rgba = np.zeros((4, ny, nx), np.uint8)
        step = emb.chunks[0]
        for r in range(0, ny, step):  # one row of chunks at a time
            strip = np.asarray(emb[r:r + step])
            if "embedding_scale" in g:  # an int8 store
                strip = dequantize_int8(strip, g["embedding_scale"][r:r + step], axis=-1)
            strip = strip.reshape(-1, emb.shape[2])
            h = min(step, ny - r)
            rgba[:3, r:r + h] = colours.rgb(strip).T.reshape(3, h, nx)
        rgba[3] = np.where(status == 1, 255, 0)
        x0, dx, rx, y0, ry, dy = (float(v) for v in g["spatial_ref"].attrs["GeoTransform"].split())
        base = os.path.join(out_dir, f"quicklook_{name}_{zone}")
        with rasterio.open(base + ".tif", "w", driver="GTiff", width=nx, height=ny, count=4, dtype="uint8",
                           crs=g.attrs["crs"], transform=Affine(dx, rx, x0, ry, dy, y0),
                           photometric="RGB", compress="deflate") as dst:
            dst.write(rgba)
            dst.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                               rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.alpha]
        written.append(base + ".tif")
        if png:
            from PIL import Image

            Image.fromarray(np.moveaxis(rgba[:3] * (rgba[3:] > 0), 0, -1)).save(base + ".png")
            written.append(base + ".png")
        log.info("quicklook %s: %d x %d cells", base, ny, nx)
    return written
