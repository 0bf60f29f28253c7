"""Process-wide earthengine-api initialisation and an HTTP transport that records status codes.

earthengine-api keeps one global client per process and turns HTTP errors
into ``ee.EEException`` carrying only the message. :class:`RecordingHttp` is
the ``http_transport`` handed to ``ee.Initialize``: an httplib2-style adapter
over a pooled ``requests.Session`` that remembers, per thread, the status and
``Retry-After`` of the last response, so the provider can tell a 429 from a 400.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import httplib2
import requests
import requests.adapters

from ..errors import PermanentProviderError

__all__ = ["EESession", "RecordingHttp", "LastResponse", "ensure_initialized"]

log = logging.getLogger(__name__)

#: Google's endpoints (the high-volume one is for many small automated requests).
DEFAULT_URL = "https://earthengine.googleapis.com"
HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"


@dataclass
class LastResponse:
    status: int | None = None
    retry_after_s: float | None = None
    nbytes: int = 0


class RecordingHttp:
    """httplib2-compatible transport over ``requests``; remembers the last status per thread."""

    def __init__(self, pool_size: int, timeout_s: float):
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._timeout = timeout_s
        self._local = threading.local()

    @property
    def last(self) -> LastResponse:
        if not hasattr(self._local, "last"):
            self._local.last = LastResponse()
        return self._local.last

    def request(self, uri: str, method: str = "GET", body: Any = None, headers: dict | None = None,
                redirections: int | None = None, connection_type: Any = None):
        """Make one HTTP request with httplib2 semantics (as googleapiclient expects)."""
        self._local.last = LastResponse()
        try:
            response = self._session.request(method, uri, data=body, headers=headers,
                                             timeout=self._timeout)
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
            raise ConnectionError(str(e)) from e
        except requests.exceptions.Timeout as e:
            raise TimeoutError(str(e)) from e
        retry_after = response.headers.get("Retry-After")
        try:
            retry_after_s = float(retry_after) if retry_after is not None else None
        except ValueError:  # an HTTP date: ignore, our backoff applies
            retry_after_s = None
        self._local.last = LastResponse(response.status_code, retry_after_s, len(response.content))
        hdrs = dict(response.headers)
        hdrs["status"] = response.status_code
        return httplib2.Response(hdrs), response.content


@dataclass(frozen=True)
class EESession:
    """What ``ee.Initialize`` needs; the key of the process-wide client."""

    url: str
    project: str | None
    credentials: str | None  # None: default credentials; "anonymous"; or a key-file path
    pool_size: int
    timeout_s: float


_LOCK = threading.Lock()
_ACTIVE: tuple[EESession, RecordingHttp] | None = None


def _credentials(spec: str | None):
    if spec is None:
        return "persistent"  # earthengine-api: stored user credentials or ADC
    if spec == "anonymous":
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    import ee

    try:
        return ee.ServiceAccountCredentials(None, key_file=spec)
    except (OSError, ValueError, KeyError) as e:
        # The message names the file, never its contents.
        raise PermanentProviderError(
            f"credentials={spec!r}: expected a readable service-account JSON key file "
            f"({type(e).__name__})") from None


def ensure_initialized(session: EESession) -> RecordingHttp:
    """Initialise earthengine-api for ``session`` once per process; return its transport.

    earthengine-api holds one client per process; a different session
    re-initialises it (one Earth Engine configuration per process at a time).
    """
    global _ACTIVE
    with _LOCK:
        if _ACTIVE is not None and _ACTIVE[0] == session:
            return _ACTIVE[1]
        import ee

        http = RecordingHttp(session.pool_size, session.timeout_s)
        try:
            ee.Initialize(credentials=_credentials(session.credentials), url=session.url,
                          project=session.project, http_transport=http)
        except ee.EEException as e:
            raise PermanentProviderError(f"Earth Engine initialisation at {session.url} failed: {e}") from None
        # We retry ourselves (counted, with jitter and Retry-After); the client must not.
        ee.data.setMaxRetries(0)
        log.info("earthengine-api initialised for %s (project %s)", session.url, session.project)
        _ACTIVE = (session, http)
        return http
