"""The vector index of one scale (and window): every ok embedding in memory, searched by matrix product.

The vectors are read once, chunk by chunk, into one array of their stored dtype:
an int8 cube stays int8 (a quarter of float32's bytes), a float32 cube float32.
Cosine similarity of int8 vectors needs no dequantisation: a vector is ``q * s``
with one positive scale ``s`` per vector, which cancels in the cosine. A search
converts a few hundred rows at a time to float32 (a buffer that stays in cache)
and multiplies them by the query: memory stays at the vectors plus ``O(N)``
floats, and float32 sums of int8 products are exact for ``D <= 1040``.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> index = VectorIndex.from_arrays(rng.normal(size=(100, 8)).astype("float32"),
...                                 lon=np.zeros(100), lat=np.zeros(100))
>>> rows, scores = index.top_k(index.vector(3), 2)
>>> int(rows[0]), round(float(scores[0]), 6)
(3, 1.0)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from typing import Any

import numpy as np
import xarray as xr

from ...errors import SpecError
from ...store.layout import OK
from ...store.quantize import QUANTISED
from ..pca import PCAColours

__all__ = ["VectorIndex", "BLOCK_ROWS", "MAX_FIT_ROWS"]

log = logging.getLogger(__name__)

#: Rows converted to float32 and multiplied at a time (int8 indexes): 1024 x 1024 float32
#: is 4 MiB, which stays in cache between the conversion and the product.
BLOCK_ROWS = 1024
#: Vectors the PCA colours are fitted on (an even subsample beyond): colours need only the
#: main axes, and the fit's float64 copies stay small beside the vectors.
MAX_FIT_ROWS = 2048
#: Rows converted to float at a time outside searches (norms, colours): bounded temporaries.
_WORK_ROWS = 2048
_EARTH_RADIUS_M = 6_371_008.8


#: Threads one search uses at most (one per core up to this).
MAX_SEARCH_THREADS = 4


@functools.lru_cache(maxsize=1)
def _search_pool() -> tuple[ThreadPoolExecutor, int]:
    """The threads searches run on (created on first use) and how many there are."""
    n = max(1, min(MAX_SEARCH_THREADS, os.cpu_count() or 1))
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="rsembed-search"), n


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread inside the block: a search is a series of small matrix-vector
    products, where BLAS threads spin and wait more than they compute (measured: 4x the CPU
    time with two threads on a busy 2-core machine)."""
    with _blas_controller().limit(limits=1, user_api="blas"):
        yield


class VectorIndex:
    """The ok embeddings of one scale (and window), their places, and search.

    Attributes
    ----------
    rows : numpy.ndarray of int64
        Position of each indexed place in the places dataset (``sample`` dimension).
    vectors : numpy.ndarray ``(N, D)``
        As stored: int8 (with ``scale``, the dequantisation factor per row) or float32.
    inv_norm : numpy.ndarray of float32
        ``1 / |vector|`` (of the stored values; 0 for a zero vector).
    lon, lat : numpy.ndarray of float64
        The places' centroids (EPSG:4326).
    """

    def __init__(self, rows: np.ndarray, vectors: np.ndarray, scale: np.ndarray | None,
                 lon: np.ndarray, lat: np.ndarray):
        self.rows = np.asarray(rows, np.int64)
        self.vectors = vectors
        self.scale = scale
        self.lon = np.asarray(lon, np.float64)
        self.lat = np.asarray(lat, np.float64)
        self.inv_norm = self._inverse_norms()
        self._rad_lat = np.radians(self.lat)
        self._cos_lat = np.cos(self._rad_lat)
        self._rad_lon = np.radians(self.lon)
        self._colours: PCAColours | None = None

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the vectors themselves."""
        return int(self.vectors.nbytes)

    @classmethod
    def from_arrays(cls, vectors: np.ndarray, *, lon: np.ndarray, lat: np.ndarray,
                    scale: np.ndarray | None = None) -> VectorIndex:
        """An index of in-memory vectors (rows ``0..N-1``); for tests and scripts."""
        return cls(np.arange(len(vectors)), np.asarray(vectors), scale, lon, lat)

    @classmethod
    def load(cls, places: xr.Dataset) -> VectorIndex:
        """Read the ok embeddings of a places dataset (dims ``sample``, ``feature``), chunk by chunk.

        Raises
        ------
        SpecError
            No ok embedding at this scale (nothing to search).
        """
        t0 = time.perf_counter()
        status = np.asarray(places["status"].values)
        emb = places["embedding"].transpose("sample", "feature")
        scale_name = QUANTISED["embedding"]
        int8 = emb.dtype.kind == "i"
        qscale = places[scale_name] if int8 and scale_name in places.variables else None
        if int8 and qscale is None:
            raise SpecError("cube", "int8 embedding without embedding_scale", "an int8 cube with its scale array")
        ok = np.flatnonzero(status == OK)
        n, d = len(ok), emb.shape[1]
        vectors = np.empty((n, d), np.int8 if int8 else np.float32)
        scales = np.empty(n, np.float32) if int8 else None
        keep = np.ones(n, bool)
        step = int(emb.chunks[0][0]) if emb.chunks else max(1, 1 << 16)
        step = max(step, 4096)
        done = 0
        total = status.shape[0]
        for start in range(0, total, step):
            stop = min(start + step, total)
            sel = ok[(ok >= start) & (ok < stop)]
            if not len(sel):
                continue
            block = np.asarray(emb[start:stop].values)
            m = len(sel)
            if m < len(block):
                block = block[sel - start]
            if int8:
                s = np.asarray(qscale[start:stop].values, np.float32)[sel - start]  # type: ignore[index]
                vectors[done:done + m] = block
                scales[done:done + m] = s  # type: ignore[index]
                keep[done:done + m] = np.isfinite(s)
            else:
                vectors[done:done + m] = block
                keep[done:done + m] = np.isfinite(block).all(axis=1)
            done += m
        lon = np.asarray(places["lon"].values, np.float64)[ok]
        lat = np.asarray(places["lat"].values, np.float64)[ok]
        if not keep.all():  # ok cells without a finite vector (should not happen): left out
            log.warning("%d ok cells without a finite embedding are left out", int((~keep).sum()))
            vectors, ok, lon, lat = vectors[keep], ok[keep], lon[keep], lat[keep]
            scales = scales[keep] if scales is not None else None
        if not len(ok):
            raise SpecError("scale", "no ok embedding", "a scale (and window) with at least one ok embedding")
        index = cls(ok, vectors, scales, lon, lat)
        log.info("index: %d vectors of %d (%s, %.1f MiB) in %.1f s", len(index), d, vectors.dtype,
                 index.nbytes / 2**20, time.perf_counter() - t0)
        return index

    def _inverse_norms(self) -> np.ndarray:
        out = np.empty(len(self.vectors), np.float32)
        for start in range(0, len(self.vectors), _WORK_ROWS):
            block = self.vectors[start:start + _WORK_ROWS].astype(np.float32)
            norms = np.sqrt(np.einsum("ij,ij->i", block, block))
            with np.errstate(divide="ignore"):
                out[start:start + len(block)] = np.where(norms > 0, 1.0 / norms, 0.0)
        return out

    def vector(self, i: int) -> np.ndarray:
        """Indexed place ``i``'s vector as float32 (stored values: int8 ones are not rescaled)."""
        return self.vectors[i].astype(np.float32)

    def unit(self, idx: np.ndarray) -> np.ndarray:
        """Unit vectors ``(len(idx), D)`` float32 of indexed places ``idx``."""
        return self.vectors[idx].astype(np.float32) * self.inv_norm[idx, None]

    def dots(self, direction: np.ndarray) -> np.ndarray:
        """``vector_i . direction / |vector_i|`` for every indexed place: one pass of matrix products,
        the rows split between the machine's cores (up to :data:`MAX_SEARCH_THREADS`)."""
        q = np.ascontiguousarray(direction, np.float32)
        n = len(self.vectors)
        out = np.empty(n, np.float32)
        pool, threads = _search_pool()
        parts = threads if n >= 8 * BLOCK_ROWS else 1
        bounds = [min(n, -(-n * i // parts // BLOCK_ROWS) * BLOCK_ROWS) for i in range(parts + 1)]
        with one_blas_thread():
            if parts == 1:
                self._dots(q, out, 0, n)
            else:
                for f in [pool.submit(self._dots, q, out, a, b) for a, b in zip(bounds[:-1], bounds[1:])]:
                    f.result()
        out *= self.inv_norm
        return out

    def _dots(self, q: np.ndarray, out: np.ndarray, start: int, stop: int) -> None:
        """``out[start:stop] = vectors[start:stop] @ q`` (NumPy releases the GIL: threads run in parallel)."""
        if self.vectors.dtype == np.float32:
            for a in range(start, stop, 1 << 16):
                b = min(a + (1 << 16), stop)
                np.matmul(self.vectors[a:b], q, out=out[a:b])
            return
        buf = np.empty((BLOCK_ROWS, self.vectors.shape[1]), np.float32)
        for a in range(start, stop, BLOCK_ROWS):
            b = min(a + BLOCK_ROWS, stop)
            np.copyto(buf[:b - a], self.vectors[a:b], casting="unsafe")
            np.matmul(buf[:b - a], q, out=out[a:b])

    def cosine(self, i: int) -> np.ndarray:
        """Cosine similarity of every indexed place to indexed place ``i``."""
        return self.dots(self.vector(i) * self.inv_norm[i])

    def top_k(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` indexed places most cosine-similar to ``query`` (a vector), most similar first.

        Returns indexed positions and their cosine similarities (ties: lower position first).
        """
        q = np.asarray(query, np.float32)
        qn = float(np.linalg.norm(q))
        if not qn > 0:
            raise SpecError("query", "a zero vector", "a place with a non-zero embedding")
        return self.top(self.dots(q / qn), k)

    @staticmethod
    def top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the ``k`` largest ``scores``, largest first (ties: lower position first)."""
        k = min(int(k), len(scores))
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        part = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        order = np.lexsort((part, -scores[part]))
        best = part[order]
        return best.astype(np.int64), scores[best]

    def nearest(self, lon: float, lat: float) -> int:
        """Indexed position of the place whose centroid is nearest ``(lon, lat)`` (great-circle)."""
        qlat, qlon = np.radians(lat), np.radians(lon)
        a = (np.sin((self._rad_lat - qlat) / 2) ** 2
             + np.cos(qlat) * self._cos_lat * np.sin((self._rad_lon - qlon) / 2) ** 2)
        return int(np.argmin(a))

    def distance_m(self, i: int, lon: float, lat: float) -> float:
        """Great-circle metres from indexed place ``i``'s centroid to ``(lon, lat)``."""
        qlat, qlon = np.radians(lat), np.radians(lon)
        a = (np.sin((self._rad_lat[i] - qlat) / 2) ** 2
             + np.cos(qlat) * self._cos_lat[i] * np.sin((self._rad_lon[i] - qlon) / 2) ** 2)
        return float(2 * _EARTH_RADIUS_M * np.arcsin(np.sqrt(min(max(a, 0.0), 1.0))))

    def floats(self, idx: np.ndarray) -> np.ndarray:
        """Dequantised float32 vectors of indexed places ``idx``."""
        v = self.vectors[idx].astype(np.float32)
        return v * self.scale[idx, None] if self.scale is not None else v

    def colours(self, idx: np.ndarray | None = None) -> np.ndarray:
        """``(len(idx), 3)`` uint8 PCA colours (three principal components, fitted once on
        up to :data:`MAX_FIT_ROWS` places) of indexed places ``idx`` (all when None)."""
        if self._colours is None:
            fit = np.linspace(0, len(self) - 1, min(len(self), MAX_FIT_ROWS)).astype(np.int64)
            self._colours = PCAColours.fit(self.floats(fit)) if len(self) > 1 else None
        idx = np.arange(len(self)) if idx is None else np.asarray(idx, np.int64)
        if self._colours is None:
            return np.full((len(idx), 3), 128, np.uint8)
        out = np.empty((len(idx), 3), np.uint8)
        for start in range(0, len(idx), _WORK_ROWS):
            out[start:start + _WORK_ROWS] = self._colours.rgb(self.floats(idx[start:start + _WORK_ROWS]))
        return out

    def position_of_row(self, rows: Any) -> np.ndarray:
        """Indexed positions of dataset rows ``rows`` (-1 where a row is not indexed: not ok)."""
        rows = np.asarray(rows, np.int64)
        pos = np.searchsorted(self.rows, rows)
        pos = np.clip(pos, 0, max(len(self.rows) - 1, 0))
        return np.where(self.rows[pos] == rows, pos, -1) if len(self.rows) else np.full(len(rows), -1)
