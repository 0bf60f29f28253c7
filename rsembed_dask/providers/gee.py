"""Sentinel-2 composites from Google Earth Engine via ``ee.data.computePixels``.

One footprint costs one ``computePixels`` request (an NPY array) on the
footprint's own UTM grid at true ``scale_m``; nothing else is asked on success.
An empty date window is recognised from Earth Engine's own answer (a composite
of an empty collection has no bands, so selecting B4 fails with HTTP 400
``Image.select: Band pattern 'B4' was applied to an Image with no bands.``), not
from an extra ``size()`` request per sample.

Earth Engine's answers and what the provider raises:

- no bands (empty composite): :class:`NoImageryError` (counted ``no_imagery``);
- ``Pattern 'B04' did not match any bands``, unknown collection, HTTP 401/403/404:
  :class:`ConfigurationError` (a campaign stops);
- ``Computation timed out.`` / ``User memory limit exceeded.`` (400 or 5xx):
  :class:`ComputationTooLargeError` (a coalesced request is split);
- 429 and other 5xx, dropped connections, malformed answers: retried with backoff.

:meth:`GEEProvider.preflight` checks credentials, project, URL, collection and
band names with one cheap request before a campaign starts.

Examples
--------
>>> provider = GEEProvider(project="my-project")              # doctest: +SKIP
>>> patch = provider.fetch(point_grid(3, 31.2, 1120, 10), SensorSpec(),
...                        TemporalSpec.range("2022-01-01", "2022-04-01"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import (ComputationTooLargeError, ConfigurationError, NoImageryError,
                      PermanentProviderError, QuotaError, RequestTooLargeError, SpecError,
                      TransientProviderError)
from ..geo.grid import PixelGrid
from ..specs import SensorSpec, TemporalSpec
from .base import Patch, RequestStats
from .ee_session import (CREDENTIALS_HINT, DEFAULT_URL, HIGH_VOLUME_URL, PROJECT_HINT, URL_HINT,
                         EESession, ensure_initialized)
from .limits import BYTES_PER_SAMPLE, MAX_DIMENSION, REQUEST_BYTE_LIMIT
from .retry import RetryPolicy

if TYPE_CHECKING:
    import ee

__all__ = ["GEEProvider", "check_request_size", "rest_grid"]

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
#: Earth Engine's words for a select on a band-less image (the composite of an empty
#: collection); old and new forms: "Pattern 'B4' was applied ..." / "Band pattern 'B4' was applied ...".
_NO_BANDS = "was applied to an image with no bands"
#: A band the image lacks: "Image.select: Pattern 'B04' did not match any bands."
_NO_MATCH = "did not match any bands"
#: Earth Engine gave up on the work of a request (seen as HTTP 400, sometimes 5xx).
_TOO_MUCH_WORK = ("computation timed out", "user memory limit exceeded", "memory capacity exceeded")
#: (session, collection, bands) already checked by :meth:`GEEProvider.preflight` in this process.
_CHECKED: set[tuple] = set()
_CHECKED_LOCK = threading.Lock()
#: Per process: (session, max_concurrency) -> the semaphore bounding its concurrent requests.
_SLOTS: dict[tuple, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


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
        Concurrent requests from one process, all tasks together (the cluster-wide bound is
        separate): one semaphore per process and configuration, shared by every copy of the
        provider unpickled there, and the process's connection pool holds as many connections.
    retry : RetryPolicy
        Backoff for 429/5xx, dropped connections and malformed answers.
    timeout_s : float
        Read timeout of one request (seconds without a byte of the answer).
    connect_timeout_s : float
        Timeout to connect to Earth Engine.
    startup_timeout_s : float
        Read timeout of the start-up requests (discovery document, algorithm list):
        an endpoint that does not answer fails the preflight in about this time.
    limiter : context manager, optional
        Held around every request, e.g. a ``distributed.Semaphore`` shared by the
        whole cluster (the campaign pipeline sets one: Earth Engine's quota is per project).
    rate_limiter : context manager, optional
        Entered (after ``limiter``) before every request is sent: waits for a slot of a
        requests-per-second bound, e.g. a cluster-wide
        :class:`~rsembed_dask.cluster.local.ClusterRateLimit`.
    """

    api_url: str | None = None
    project: str | None = None
    credentials: str | None = None
    high_volume: bool = False
    max_concurrency: int = 8
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float = 180.0
    connect_timeout_s: float = 20.0
    startup_timeout_s: float = 20.0
    limiter: Any = field(default=None, repr=False)
    rate_limiter: Any = field(default=None, repr=False)
    stats: RequestStats = field(default_factory=RequestStats, repr=False)

    def __post_init__(self):
        if not (isinstance(self.max_concurrency, int) and self.max_concurrency >= 1):
            raise SpecError("GEEProvider.max_concurrency", self.max_concurrency, "an integer >= 1")
        for name in ("timeout_s", "connect_timeout_s", "startup_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise SpecError(f"GEEProvider.{name}", value, "a positive number of seconds")
        self._local_state()

    def _local_state(self):
        # One per process and configuration: every task's copy of the provider shares it.
        key = (self.session, self.max_concurrency)
        with _SLOTS_LOCK:
            slots = _SLOTS.get(key)
            if slots is None:
                slots = _SLOTS[key] = threading.BoundedSemaphore(self.max_concurrency)
        self._slots = slots
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
                         pool_size=max(10, self.max_concurrency), timeout_s=self.timeout_s,
                         connect_timeout_s=self.connect_timeout_s,
                         startup_timeout_s=self.startup_timeout_s)

    def composite(self, grid: PixelGrid, sensor: SensorSpec, temporal: TemporalSpec) -> ee.Image:
        """The ``ee.Image`` composite for a footprint (client-side; no request).

        The ``filterBounds`` region is the footprint itself in its own UTM CRS
        (planar edges), so a footprint across the antimeridian selects scenes on
        both sides of it, not a lon/lat box 360 degrees wide.
        """
        import ee

        region = ee.Geometry.Rectangle(list(grid.bounds), proj=grid.crs, geodesic=False)
        col = (ee.ImageCollection(sensor.collection)
               .filterDate(temporal.start, temporal.end)
               .filterBounds(region)
               .filter(ee.Filter.lte(sensor.cloud_property, sensor.cloudy_pct)))
        img = col.median() if sensor.composite == "median" else col.mosaic()
        return img.select(list(sensor.bands)).toUint16()

    def preflight(self, sensor: SensorSpec, temporal: TemporalSpec | None = None) -> None:
        """Check credentials, project, URL, collection and bands with one cheap request.

        Initialises earthengine-api (discovery document and algorithm list, within
        ``startup_timeout_s``), then asks for the band names of the collection's
        first image (one ``value:compute``) and matches ``sensor.bands`` against
        them as Earth Engine's ``select`` does. The date window is not used: an
        empty window is no imagery, never a configuration error. A successful
        check is remembered for the rest of the process.

        Raises
        ------
        ConfigurationError
            With what is wrong, the value given and how to fix it (also for an
            Earth Engine URL that does not answer at start-up).
        TransientProviderError
            The check itself kept answering 429/5xx through the retries.
        """
        key = (self.session, sensor.collection, tuple(sensor.bands))
        with _CHECKED_LOCK:
            if key in _CHECKED:
                return
        session = self.session
        try:
            http = ensure_initialized(session)
        except TransientProviderError as e:
            tried = str(e).removeprefix(f"Earth Engine at {session.url} did not answer: ")
            raise ConfigurationError(
                f"api_url={session.url!r}: Earth Engine did not answer at start-up (tried {tried}; connect "
                f"timeout {self.connect_timeout_s:g} s, read timeout {self.startup_timeout_s:g} s): check "
                f"{URL_HINT} and the network") from None
        import ee
        import google.auth.exceptions

        expression = ee.ImageCollection(sensor.collection).first().bandNames()

        def compute():
            try:
                return ee.data.computeValue(expression)
            except google.auth.exceptions.GoogleAuthError:  # some are ValueErrors too: not ours to map here
                raise
            except ValueError as e:  # UnicodeDecodeError, JSONDecodeError: an answer that is not JSON
                raise _Malformed(f"an answer that is not JSON ({type(e).__name__})") from None

        try:
            # Counted apart (RequestStats.preflight): the account's "sent" is computePixels requests.
            names = self._call_with_retries(
                "value:compute", compute, http, lambda v: v,
                lambda status, message: _classify(status, message, None, sensor), stats=RequestStats())
        except PermanentProviderError as e:  # (429/5xx past the retries propagate as TransientProviderError)
            raise ConfigurationError(f"the check of collection={sensor.collection!r} at {session.url} "
                                     f"failed: {e}") from None
        finally:
            self.stats.add(preflight=1)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigurationError(f"collection={sensor.collection!r}: the band names of its first image "
                                     f"came back as {names!r}, expected a list of names; check {URL_HINT}")
        missing = [b for b in sensor.bands if not any(_select_matches(b, n) for n in names)]
        if missing:
            raise ConfigurationError(
                f"bands={tuple(sensor.bands)!r}: {', '.join(map(repr, missing))} "
                f"{'is not a band' if len(missing) == 1 else 'are not bands'} of {sensor.collection} "
                f"(its bands: {', '.join(names)}): fix SensorSpec.bands")
        with _CHECKED_LOCK:
            _CHECKED.add(key)
        log.info("preflight ok: %s, %s, bands %s", session.url, sensor.collection, ", ".join(sensor.bands))

    def fetch(self, grid: PixelGrid, sensor: SensorSpec, temporal: TemporalSpec) -> Patch:
        """Fetch the composite on ``grid`` (one ``computePixels`` request on success)."""
        import ee

        check_request_size(grid, len(sensor.bands))
        http = ensure_initialized(self.session)
        request = {"expression": self.composite(grid, sensor, temporal),
                   # Raw NPY bytes (decoded here) so that a garbled answer is caught and counted.
                   "fileFormat": "NPY", "grid": rest_grid(grid)}
        self.stats.add(planned=1)

        def classify(status: int | None, message: str) -> Exception:
            return _classify(status, message, grid, sensor)

        arr, nbytes = self._call_with_retries("computePixels", lambda: ee.data.computePixels(request), http,
                                              lambda raw: (_decode(raw, grid, sensor.bands), len(raw)), classify)
        self.stats.add(bytes=nbytes)
        data = np.stack([arr[b] for b in sensor.bands]).astype(np.uint16, copy=False)
        # Earth Engine fills masked pixels with 0 in NUMPY_NDARRAY answers; 0 is S2 SR nodata.
        valid = (data != 0).all(axis=0)
        return Patch(np.ascontiguousarray(data), valid, grid, tuple(sensor.bands))

    def _call_with_retries(self, what: str, call, http, decode, classify, stats: RequestStats | None = None):
        """``decode(call())``, re-sent on 429/5xx, dropped connections and malformed answers.

        ``classify(status, message)`` maps a final Earth Engine answer to the exception
        raised. Every attempt is counted in ``stats`` (default: the provider's).
        """
        import ee
        import google.auth.exceptions

        stats = self.stats if stats is None else stats
        attempt = 0
        while True:
            retry_after = None
            with self._slots, (self.limiter or contextlib.nullcontext()), \
                    (self.rate_limiter or contextlib.nullcontext()):
                stats.add(sent=1)
                try:
                    return decode(call())
                except ee.EEException as e:
                    last = http.last
                    status, retry_after = last.status, last.retry_after_s
                    message = str(e)
                    if status not in _RETRYABLE_STATUS or _too_much_work(message):
                        err = classify(status, message)
                        stats.add(**({"no_imagery": 1} if isinstance(err, NoImageryError) else {"failed": 1}))
                        raise err from None
                    reason = f"HTTP {status}: {message}"
                    err = (QuotaError(reason, retry_after=retry_after) if status == 429
                           else TransientProviderError(reason))
                except (ConnectionError, TimeoutError, google.auth.exceptions.TransportError) as e:
                    err = TransientProviderError(f"{type(e).__name__}: {e}")
                except google.auth.exceptions.GoogleAuthError as e:
                    # A 401 made google-auth refresh the credentials, and that failed.
                    stats.add(failed=1)
                    last = http.last
                    raise classify(last.status, last.message) if last.status in (401, 403) else ConfigurationError(
                        f"the credentials were refused when asking for an access token ({type(e).__name__}: "
                        f"{e}): check {CREDENTIALS_HINT}") from None
                except _Malformed as e:
                    err = TransientProviderError(f"malformed answer: {e}")
            if attempt >= self.retry.max_retries:
                stats.add(failed=1)
                raise type(err)(f"{err} (gave up after {attempt + 1} attempts)") from None
            delay = self.retry.delay(attempt, retry_after, self._rng)
            log.debug("%s retry %d in %.2fs after %s", what, attempt + 1, delay, err)
            stats.add(retried=1)
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


def _select_matches(selector: str, name: str) -> bool:
    """Whether ``Image.select(selector)`` picks band ``name`` (a regular expression, whole name)."""
    try:
        return re.fullmatch(selector, name) is not None
    except re.error:
        return selector == name


def _too_much_work(message: str) -> bool:
    low = message.lower()
    return any(marker in low for marker in _TOO_MUCH_WORK)


def _is_empty_composite(message: str) -> bool:
    """Whether an answer says the composite had no bands at all (an empty collection).

    Earth Engine: ``Image.select: Band pattern 'B4' was applied to an Image with no
    bands.`` (older: ``Pattern 'B4' was applied ...``). A ``did not match any bands``
    that lists no available bands (``Available bands: []``) means the same.
    """
    low = message.lower()
    if _NO_BANDS in low:
        return True
    return _NO_MATCH in low and "available bands: []" in low


def _classify(status: int | None, message: str, grid: PixelGrid | None, sensor: SensorSpec | None) -> Exception:
    """The exception for a final (not retried) Earth Engine answer."""
    low = message.lower()
    where = f" at {grid.crs} {grid.bounds}" if grid is not None else ""
    if _is_empty_composite(message):
        return NoImageryError(f"no scene matches the date window and cloud filter{where} "
                              f"(Earth Engine: {message})")
    if _too_much_work(message):
        return ComputationTooLargeError(f"Earth Engine gave up on the request{where} "
                                        f"(HTTP {status}: {message})")
    if "request size" in low and "must be less than" in low:
        return RequestTooLargeError(f"Earth Engine refused the request size: {message}")
    if _NO_MATCH in low:
        bands = tuple(sensor.bands) if sensor is not None else "?"
        return ConfigurationError(f"bands={bands!r}: Earth Engine says {message!r}: fix SensorSpec.bands "
                                  f"to band names of {sensor.collection if sensor else 'the collection'}")
    if status in (401, 403):
        return ConfigurationError(f"Earth Engine refused the request (HTTP {status}: {message}): use "
                                  f"credentials that may use Earth Engine ({CREDENTIALS_HINT}) and a project "
                                  f"registered for it on which they have serviceusage.services.use "
                                  f"({PROJECT_HINT})")
    if status == 404 or ("not found" in low and ("asset" in low or ".load" in low)):
        collection = sensor.collection if sensor is not None else None
        return ConfigurationError(f"collection={collection!r}: Earth Engine answered HTTP {status}: {message}: "
                                  f"fix SensorSpec.collection (an ImageCollection id you may read)")
    if "parameter 'image' is required" in low or "parameter 'input' is required" in low:
        return ConfigurationError(f"collection={sensor.collection if sensor else None!r} holds no image "
                                  f"(Earth Engine: {message}): fix SensorSpec.collection")
    return PermanentProviderError(f"Earth Engine answered HTTP {status}: {message}")
