"""Sentinel-2 composites from Google Earth Engine via ``ee.data.computePixels``.

One footprint costs one ``computePixels`` request (an NPY array) on the
footprint's own UTM grid at true ``scale_m``; nothing else is asked on success.
An empty date window is recognised from Earth Engine's own answer (a composite
of an empty collection has no bands, so selecting B4 fails with HTTP 400), not
from an extra ``size()`` request per sample.

Examples
--------
>>> provider = GEEProvider(project="my-project")              # doctest: +SKIP
>>> patch = provider.fetch(point_grid(3, 31.2, 1120, 10), SensorSpec(),
...                        TemporalSpec.range("2022-01-01", "2022-04-01"))
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import (NoImageryError, PermanentProviderError, QuotaError, RequestTooLargeError,
                      SpecError, TransientProviderError)
from ..grid import PixelGrid, xy_to_lonlat
from ..specs import SensorSpec, TemporalSpec
from .base import Patch, RequestStats
from .ee_session import DEFAULT_URL, HIGH_VOLUME_URL, EESession, ensure_initialized
from .retry import RetryPolicy

__all__ = ["GEEProvider", "REQUEST_BYTE_LIMIT", "check_request_size", "rest_grid"]

log = logging.getLogger(__name__)

#: computePixels refuses requests over 48 MiB of uncompressed pixels.
REQUEST_BYTE_LIMIT = 48 * 2**20
#: computePixels also caps either grid dimension.
MAX_DIMENSION = 32768
#: Bytes per pixel per band of the answer (the composite is cast to uint16).
BYTES_PER_SAMPLE = 2
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_NO_BANDS_MARKER = "did not match any bands"


def check_request_size(grid: PixelGrid, n_bands: int) -> int:
    """Bytes of a request for ``grid``; raise :class:`RequestTooLargeError` beyond the limits."""
    nbytes = grid.nbytes(n_bands, BYTES_PER_SAMPLE)
    if nbytes > REQUEST_BYTE_LIMIT or max(grid.shape) > MAX_DIMENSION:
        raise RequestTooLargeError(
            f"a {grid.height}x{grid.width} px x {n_bands} band request is {nbytes / 2**20:.1f} MiB: "
            f"expected at most {REQUEST_BYTE_LIMIT / 2**20:.0f} MiB and {MAX_DIMENSION} px per side "
            f"(use a coarser scale_m or a smaller footprint)")
    return nbytes


def rest_grid(grid: PixelGrid) -> dict:
    """The REST ``PixelGrid`` for ``grid``."""
    a, b, c, d, e, f = grid.transform
    return {"crsCode": grid.crs,
            "affineTransform": {"scaleX": a, "shearX": b, "translateX": c,
                                "shearY": d, "scaleY": e, "translateY": f},
            "dimensions": {"width": grid.width, "height": grid.height}}


@dataclass(eq=False)
class GEEProvider:
    """Earth Engine provider (picklable: it travels to Dask workers).

    Parameters
    ----------
    api_url : str, optional
        REST endpoint; default Google's (or the high-volume one).
    project : str, optional
        Cloud project billed and quota-checked.
    credentials : str, optional
        Path to a service-account JSON key file, ``"anonymous"`` (emulator), or
        None for earthengine-api's default (stored user credentials or ADC).
    high_volume : bool
        Use ``earthengine-highvolume.googleapis.com`` (many small requests).
    max_concurrency : int
        Concurrent requests from one process (the cluster-wide bound is separate).
    retry : RetryPolicy
        Backoff for 429/5xx, dropped connections and malformed answers.
    timeout_s : float
        Per-request HTTP timeout.
    limiter : context manager, optional
        Held around every request, e.g. a ``distributed.Semaphore`` shared by the
        whole cluster (the campaign pipeline sets one: Earth Engine's quota is per project).
    """

    api_url: str | None = None
    project: str | None = None
    credentials: str | None = None
    high_volume: bool = False
    max_concurrency: int = 8
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float = 180.0
    limiter: Any = field(default=None, repr=False)
    stats: RequestStats = field(default_factory=RequestStats, repr=False)

    def __post_init__(self):
        if not (isinstance(self.max_concurrency, int) and self.max_concurrency >= 1):
            raise SpecError("GEEProvider.max_concurrency", self.max_concurrency, "an integer >= 1")
        self._local_state()

    def _local_state(self):
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._rng = random.Random()

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_slots", None)
        state.pop("_rng", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local_state()

    def __repr__(self) -> str:  # never shows credentials
        return (f"GEEProvider(url={self.session.url!r}, project={self.project!r}, "
                f"high_volume={self.high_volume})")

    @property
    def session(self) -> EESession:
        url = self.api_url or (HIGH_VOLUME_URL if self.high_volume else DEFAULT_URL)
        return EESession(url.rstrip("/"), self.project, self.credentials,
                         pool_size=max(10, self.max_concurrency), timeout_s=self.timeout_s)

    # ------------------------------------------------------------------ public
    def composite(self, grid: PixelGrid, sensor: SensorSpec, temporal: TemporalSpec):
        """The ``ee.Image`` composite for a footprint (client-side; no request)."""
        import ee

        x0, y0, x1, y1 = grid.bounds
        lon, lat = xy_to_lonlat([x0, x1, x1, x0], [y0, y0, y1, y1], grid.crs)
        region = ee.Geometry.Rectangle([float(np.min(lon)), float(np.min(lat)),
                                        float(np.max(lon)), float(np.max(lat))])
        col = (ee.ImageCollection(sensor.collection)
               .filterDate(temporal.start, temporal.end)
               .filterBounds(region)
               .filter(ee.Filter.lte(sensor.cloud_property, sensor.cloudy_pct)))
        img = col.median() if sensor.composite == "median" else col.mosaic()
        return img.select(list(sensor.bands)).toUint16()

    def fetch(self, grid: PixelGrid, sensor: SensorSpec, temporal: TemporalSpec) -> Patch:
        """Fetch the composite on ``grid`` (one ``computePixels`` request on success)."""
        check_request_size(grid, len(sensor.bands))
        http = ensure_initialized(self.session)
        request = {"expression": self.composite(grid, sensor, temporal),
                   # Raw NPY bytes (decoded here) so that a garbled answer is caught and counted.
                   "fileFormat": "NPY", "grid": rest_grid(grid)}
        self.stats.add(planned=1)
        arr = self._send_with_retries(request, http, grid, sensor.bands)
        data = np.stack([arr[b] for b in sensor.bands]).astype(np.uint16, copy=False)
        # Earth Engine fills masked pixels with 0 in NUMPY_NDARRAY answers; 0 is S2 SR nodata.
        valid = (data != 0).all(axis=0)
        return Patch(np.ascontiguousarray(data), valid, grid, tuple(sensor.bands))

    # ------------------------------------------------------------------ retries
    def _send_with_retries(self, request: dict, http, grid: PixelGrid, bands) -> np.ndarray:
        import ee

        attempt = 0
        while True:
            retry_after = None
            with self._slots, (self.limiter or contextlib.nullcontext()):
                self.stats.add(sent=1)
                try:
                    raw = ee.data.computePixels(request)
                    arr = _decode(raw, grid, bands)
                    self.stats.add(bytes=len(raw))
                    return arr
                except ee.EEException as e:
                    last = http.last
                    status, retry_after = last.status, last.retry_after_s
                    reason = f"HTTP {status}: {e}"
                    if status not in _RETRYABLE_STATUS:
                        self.stats.add(failed=1)
                        raise _permanent(status, str(e), grid, bands) from None
                    err: Exception = (QuotaError(reason, retry_after=retry_after) if status == 429
                                      else TransientProviderError(reason))
                except (ConnectionError, TimeoutError) as e:
                    err = TransientProviderError(f"{type(e).__name__}: {e}")
                except _Malformed as e:
                    err = TransientProviderError(f"malformed answer: {e}")
            if attempt >= self.retry.max_retries:
                self.stats.add(failed=1)
                raise type(err)(f"{err} (gave up after {attempt + 1} attempts)") from None
            delay = self.retry.delay(attempt, retry_after, self._rng)
            log.debug("computePixels retry %d in %.2fs after %s", attempt + 1, delay, err)
            self.stats.add(retried=1)
            time.sleep(delay)
            attempt += 1


class _Malformed(Exception):
    """An answer that is not the NPY array asked for."""


def _decode(raw: bytes, grid: PixelGrid, bands) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise _Malformed(f"{len(raw)} bytes that are not an NPY array ({e})") from None
    names = arr.dtype.names or ()
    if arr.shape != grid.shape or any(b not in names for b in bands):
        raise _Malformed(f"array of shape {arr.shape} with fields {names}, expected "
                         f"{grid.shape} with {tuple(bands)}")
    return arr


def _is_empty_composite(message: str, bands) -> bool:
    """Whether a 400 says the composite had no bands at all (an empty collection).

    With an ``Available bands: [...]`` list, an empty list decides; without it,
    failing on the first requested band means nothing matched (a typo in a
    later band name would fail on that band instead).
    """
    if _NO_BANDS_MARKER not in message:
        return False
    if "Available bands:" in message:
        return message.rsplit("Available bands:", 1)[1].strip().startswith("[]")
    return f"'{bands[0]}'" in message


def _permanent(status: int | None, message: str, grid: PixelGrid, bands) -> Exception:
    if status == 400 and _is_empty_composite(message, bands):
        return NoImageryError(f"no scene matches the date window and cloud filter at {grid.crs} "
                              f"{grid.bounds} (Earth Engine: {message})")
    if status == 400 and "request size" in message.lower():
        return RequestTooLargeError(f"Earth Engine refused the request size: {message}")
    return PermanentProviderError(f"Earth Engine answered HTTP {status}: {message}")
