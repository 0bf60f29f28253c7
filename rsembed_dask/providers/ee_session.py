"""Process-wide earthengine-api initialisation and an HTTP transport that records status codes.

earthengine-api keeps one global client per process and turns HTTP errors
into ``ee.EEException`` carrying only the message. :class:`RecordingHttp` is
the ``http_transport`` handed to ``ee.Initialize``: an httplib2-style adapter
over a pooled ``requests.Session`` that remembers, per thread, the status and
``Retry-After`` of the last response, so the provider can tell a 429 from a 400.

What :func:`ensure_initialized` changes in earthengine-api's global state (in
every process that fetches): ``ee.Initialize(credentials, url, project,
http_transport=RecordingHttp)`` and ``ee.data.setMaxRetries(0)`` (the provider
retries itself, counted). :func:`preserved_ee_configuration` puts back what was
there before (the emulator backend uses it, so a user's own ``ee`` session
survives a demo).

Start-up is bounded: ``ee.Initialize`` fetches the REST discovery document and
the algorithm list through our transport. Before, the client retried the
discovery fetch five times with backoff and waited up to the request timeout
each time, so an Earth Engine URL that accepts connections and never answers
held a campaign for minutes. Now the client does not retry (``setMaxRetries(0)``
is set before ``ee.Initialize``) and start-up requests use
``connect_timeout_s`` / ``startup_timeout_s`` (20 s each by default).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httplib2
import requests
import requests.adapters

from ..errors import ConfigurationError, TransientProviderError

__all__ = ["EESession", "RecordingHttp", "LastResponse", "ensure_initialized",
           "preserved_ee_configuration", "DEFAULT_URL", "HIGH_VOLUME_URL"]

log = logging.getLogger(__name__)

#: Google's endpoints (the high-volume one is for many small automated requests).
DEFAULT_URL = "https://earthengine.googleapis.com"
HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"

#: How to fix a missing or refused project / credentials, named once for every message.
PROJECT_HINT = "--ee-project on the command line, gee_options['project'] in Python"
CREDENTIALS_HINT = "--credentials KEY.json on the command line, gee_options['credentials'] in Python"
URL_HINT = "--ee-url on the command line, gee_options['api_url'] in Python"


@dataclass
class LastResponse:
    status: int | None = None
    retry_after_s: float | None = None
    nbytes: int = 0
    request: str = ""  # "METHOD URI" of the request
    message: str = ""  # Earth Engine's error message, for an answer >= 400


class RecordingHttp:
    """httplib2-compatible transport over ``requests``; remembers the last status per thread.

    Parameters
    ----------
    pool_size : int
        Connections kept per host.
    timeout_s : float
        Read timeout of a request (seconds between bytes of the answer).
    connect_timeout_s : float
        Timeout to establish a connection.
    """

    def __init__(self, pool_size: int, timeout_s: float, connect_timeout_s: float = 20.0):
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self.read_timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._local = threading.local()

    @property
    def last(self) -> LastResponse:
        if not hasattr(self._local, "last"):
            self._local.last = LastResponse()
        return self._local.last

    def request(self, uri: str, method: str = "GET", body: Any = None, headers: dict | None = None,
                redirections: int | None = None, connection_type: Any = None):
        """Make one HTTP request with httplib2 semantics (as googleapiclient expects)."""
        what = f"{method} {uri.split('?', 1)[0]}"
        self._local.last = LastResponse(request=what)
        timeout = (self.connect_timeout_s, self.read_timeout_s)
        try:
            response = self._session.request(method, uri, data=body, headers=headers, timeout=timeout)
        except requests.exceptions.ConnectTimeout as e:
            raise TimeoutError(f"{what}: no connection within {self.connect_timeout_s:g} s ({e})") from e
        except requests.exceptions.Timeout as e:
            raise TimeoutError(f"{what}: no answer within {self.read_timeout_s:g} s ({e})") from e
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
            raise ConnectionError(f"{what}: {e}") from e
        retry_after = response.headers.get("Retry-After")
        try:
            retry_after_s = float(retry_after) if retry_after is not None else None
        except ValueError:  # an HTTP date: ignore, our backoff applies
            retry_after_s = None
        self._local.last = LastResponse(response.status_code, retry_after_s, len(response.content), what,
                                        _error_message(response) if response.status_code >= 400 else "")
        hdrs: dict[str, Any] = dict(response.headers)
        hdrs["status"] = response.status_code
        return httplib2.Response(hdrs), response.content


def _error_message(response: requests.Response) -> str:
    """The ``error.message`` of a Google API error answer ("" when there is none)."""
    try:
        error = response.json().get("error", {})
    except ValueError:
        return ""
    message = error.get("message", "") if isinstance(error, dict) else ""
    return message if isinstance(message, str) else ""


@dataclass(frozen=True)
class EESession:
    """What ``ee.Initialize`` needs; the key of the process-wide client."""

    url: str
    project: str | None
    credentials: str | None  # None: default credentials; "anonymous"; or a key-file path
    pool_size: int
    timeout_s: float
    connect_timeout_s: float = 20.0
    startup_timeout_s: float = 20.0


_LOCK = threading.RLock()
_ACTIVE: tuple[EESession, RecordingHttp] | None = None


def _credentials(session: EESession):
    """The credentials object for ``session``, or :class:`ConfigurationError` saying how to fix it."""
    spec = session.credentials
    import ee

    if spec is None:
        try:
            with _quiet("google.auth._default"):  # its warnings repeat what our error says
                return ee.data.get_persistent_credentials()  # stored user credentials or ADC
        except ee.EEException:
            also = "" if session.project else f"; a project is missing too ({PROJECT_HINT})"
            raise ConfigurationError(
                f"credentials=None: no Earth Engine credentials found for {session.url} (none stored by "
                f"`earthengine authenticate`, no application default credentials): pass a service-account "
                f"key file ({CREDENTIALS_HINT}) or run `earthengine authenticate`{also}") from None
    if spec == "anonymous":
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    try:
        return ee.ServiceAccountCredentials(None, key_file=spec)
    except (OSError, ValueError, KeyError) as e:
        # The message names the file, never its contents.
        raise ConfigurationError(
            f"credentials={spec!r}: expected a readable service-account JSON key file "
            f"({type(e).__name__}); fix {CREDENTIALS_HINT}") from None


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Drop the records of logger ``name`` meanwhile."""
    logger, drop = logging.getLogger(name), _DropAll()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _check_project(session: EESession, credentials) -> None:
    """A project is needed unless the credentials bring one (a service account, ADC's quota project)."""
    from google.oauth2 import service_account

    if session.project or isinstance(credentials, service_account.Credentials):
        return
    if getattr(credentials, "quota_project_id", None):
        return
    raise ConfigurationError(
        f"project=None: Earth Engine at {session.url} bills and checks quota per Cloud project and none "
        f"was given: pass one registered for Earth Engine ({PROJECT_HINT})")


def _is_active(session: EESession) -> bool:
    from ee import _state

    state = _state._state
    return (_ACTIVE is not None and _ACTIVE[0] == session and state is not None and state.initialized
            and state.http_transport is _ACTIVE[1])


def ensure_initialized(session: EESession) -> RecordingHttp:
    """Initialise earthengine-api for ``session`` once per process; return its transport.

    earthengine-api holds one client per process; a different session (or a
    client re-initialised by someone else) re-initialises it.

    Raises
    ------
    ConfigurationError
        Missing or unreadable credentials, missing project, credentials or project
        refused (HTTP 401/403), no Earth Engine API at the URL.
    TransientProviderError
        The URL did not answer (connection refused, timeout) or answered 429/5xx.
    """
    global _ACTIVE
    with _LOCK:
        if _is_active(session):
            return _ACTIVE[1]  # type: ignore[index]
        import ee

        credentials = _credentials(session)
        _check_project(session, credentials)
        http = RecordingHttp(session.pool_size, session.startup_timeout_s, session.connect_timeout_s)
        # Before Initialize: its discovery fetch would otherwise retry 5 times with backoff.
        # We retry ourselves (counted, with jitter and Retry-After); the client must not.
        ee.data.setMaxRetries(0)
        try:
            ee.Initialize(credentials=credentials, url=session.url, project=session.project,
                          http_transport=http)
        except ee.EEException as e:
            raise _init_error(session, http.last, str(e)) from None
        except (ConnectionError, TimeoutError) as e:
            raise TransientProviderError(f"Earth Engine at {session.url} did not answer: {e}") from None
        except _google_errors() as e:
            raise _startup_error(session, http.last, e) from None
        http.read_timeout_s = session.timeout_s
        log.info("earthengine-api initialised for %s (project %s)", session.url, session.project)
        _ACTIVE = (session, http)
        return http


def _google_errors() -> tuple[type[BaseException], ...]:
    """Errors of the Google client libraries that ``ee.Initialize`` lets through."""
    import google.auth.exceptions
    import googleapiclient.errors

    return (googleapiclient.errors.Error, google.auth.exceptions.GoogleAuthError)


def _init_error(session: EESession, last: LastResponse, message: str) -> Exception:
    """Map a failed ``ee.Initialize`` (its algorithm list request) to our errors."""
    import ee

    status = last.status
    if message == ee.NO_PROJECT_EXCEPTION:
        return ConfigurationError(f"project={session.project!r}: Earth Engine needs a Cloud project "
                                  f"registered for it: pass one ({PROJECT_HINT})")
    if status in (429, 500, 502, 503, 504):
        return TransientProviderError(f"Earth Engine at {session.url} answered HTTP {status} at start-up: "
                                      f"{message}")
    if status in (401, 403):
        return ConfigurationError(
            f"Earth Engine at {session.url} refused project={session.project!r} with these credentials "
            f"(HTTP {status}: {message}): use credentials that may use Earth Engine ({CREDENTIALS_HINT}) "
            f"and a project registered for Earth Engine on which they have serviceusage.services.use "
            f"({PROJECT_HINT})")
    return ConfigurationError(f"Earth Engine at {session.url} could not be initialised "
                              f"(HTTP {status}, {last.request}): {message}; check {URL_HINT}")


def _startup_error(session: EESession, last: LastResponse, e: BaseException) -> Exception:
    """Map an error of the discovery fetch or of the credentials' token exchange."""
    import google.auth.exceptions

    status = last.status
    if status in (401, 403):  # google-auth tried to refresh the credentials and could not
        return _init_error(session, last, last.message or f"{type(e).__name__}: {e}")
    if isinstance(e, google.auth.exceptions.RefreshError):
        return ConfigurationError(f"the credentials were refused when asking for an access token ({e}): "
                                  f"check the key file ({CREDENTIALS_HINT})")
    if isinstance(e, google.auth.exceptions.TransportError):
        return TransientProviderError(f"the token endpoint did not answer: {e}")
    if status in (429, 500, 502, 503, 504):
        return TransientProviderError(f"Earth Engine at {session.url} answered HTTP {status} at start-up "
                                      f"({last.request})")
    return ConfigurationError(f"no Earth Engine API at {session.url}: {last.request or 'the discovery document'} "
                              f"answered HTTP {status} ({type(e).__name__}: {str(e)[:200]}); "
                              f"check {URL_HINT}")


def reset_active() -> None:
    """Forget the process's initialised session (the next fetch initialises again)."""
    global _ACTIVE
    with _LOCK:
        _ACTIVE = None


@contextlib.contextmanager
def preserved_ee_configuration() -> Iterator[None]:
    """Give earthengine-api's global configuration back as it was on exit.

    Restored: the URL, project, credentials, HTTP transport, max retries and
    deadline (earthengine-api's ``EEState``), or "not initialised" if it was not.
    The algorithm signatures that ``ee.Initialize`` loaded stay those of the
    last server asked (the emulator serves earthengine-api's own list).
    """
    global _ACTIVE
    import ee
    from ee import _state

    with _LOCK:
        saved = _state._state
        copy = dataclasses.replace(saved) if saved is not None else None
        saved_active = _ACTIVE
    try:
        yield
    finally:
        with _LOCK:
            if copy is None or not copy.initialized:
                ee.Reset()  # also un-registers the algorithms loaded since
            _state._state = copy
            _ACTIVE = saved_active
