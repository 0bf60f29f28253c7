"""A loopback Earth Engine REST emulator that the unmodified earthengine-api talks to.

The server serves the REST discovery document and the algorithm list shipped
with earthengine-api (``ee/tests/``), with ``rootUrl`` pointed at itself, so
``ee.Initialize(credentials=AnonymousCredentials(), url=emu.url, project=...)``
builds the real client. ``image:computePixels`` and ``value:compute`` then
arrive as JSON expression graphs, evaluated by :mod:`.ee_eval` over the
synthetic world of :mod:`.synthetic_s2`.

Faults (latency, 429, 5xx, malformed bodies) are injected on the compute
endpoints only (``computePixels`` and ``value:compute``), from a seeded RNG, or
forced with :meth:`GEEEmulator.fail_next` (``computePixels`` by default).
Earth Engine's other answers come from the configuration, deterministically:

- places without imagery (``no_coverage`` boxes): a composite there has no bands,
  so ``select`` answers 400 ``Image.select: Band pattern 'B4' was applied to an
  Image with no bands.`` (so does a date window without scenes);
- a band the collection lacks: 400 ``Image.select: Pattern 'B04' did not match any bands.``;
- an unknown collection: 400 ``ImageCollection.load: ImageCollection asset 'X' not
  found (does not exist or caller does not have access).``;
- ``auth="401"`` / ``"403"``: every API call (algorithm list, ``value:compute``,
  ``computePixels``) is refused as Earth Engine refuses bad credentials / a project
  not registered for Earth Engine; the discovery document is still served;
- ``work_limit_px``: a ``computePixels`` request over that many pixels answers
  ``work_limit_status`` (400) ``Computation timed out.`` (or, with
  ``work_limit_error="memory"``, ``User memory limit exceeded.``);
- over 48 MiB: 400 ``Total request size (N bytes) must be less than or equal to 50331648 bytes.``

Examples
--------
>>> with GEEEmulator(seed=0) as emu:          # doctest: +SKIP
...     provider = GEEProvider(api_url=emu.url, credentials="anonymous")
...     emu.stats.as_dict()["compute_pixels"]
"""

from __future__ import annotations

import collections
import contextlib
import importlib.resources
import io
import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from .._counters import Counters
from ..providers.limits import BYTES_PER_SAMPLE, MAX_DIMENSION, REQUEST_BYTE_LIMIT
from .ee_eval import EvalError, Evaluator, parse_grid
from .synthetic_s2 import SyntheticS2World

__all__ = ["GEEEmulator", "Faults", "EmulatorStats", "Traffic", "serve"]

log = logging.getLogger(__name__)

#: Earth Engine's words when it gives up on the work of a request.
WORK_LIMIT_ERRORS = {"timeout": "Computation timed out.", "memory": "User memory limit exceeded."}
#: Google's answers to refused credentials (401) and to a project not registered for Earth Engine (403).
AUTH_ERRORS = {
    "401": "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
           "other valid authentication credential. See "
           "https://developers.google.com/identity/sign-in/web/devconsole-project.",
    "403": "Project {project} is not registered to use Earth Engine. Visit "
           "https://code.earthengine.google.com/register?project={project} to register your project. "
           "See https://developers.google.com/earth-engine/guides/access for more details.",
}


@dataclass
class Faults:
    """What to inject on compute requests.

    Parameters
    ----------
    latency_s : float
        Added to every compute request.
    p_429, p_5xx, p_malformed : float
        Probability of answering HTTP 429, HTTP 503, or a 200 with a body that is
        not a valid answer.
    p_spike, spike_s : float
        Probability and size of an extra latency spike.
    retry_after_s : float or None
        ``Retry-After`` header sent with 429s.
    """

    latency_s: float = 0.0
    p_429: float = 0.0
    p_5xx: float = 0.0
    p_malformed: float = 0.0
    p_400: float = 0.0
    p_spike: float = 0.0
    spike_s: float = 0.0
    retry_after_s: float | None = None


@dataclass
class EmulatorStats(Counters):
    """Request counters (thread-safe)."""

    requests: int = 0
    compute_pixels: int = 0
    value_compute: int = 0
    bytes_sent: int = 0
    injected_429: int = 0
    injected_5xx: int = 0
    injected_malformed: int = 0
    injected_400: int = 0
    too_large: int = 0
    too_much_work: int = 0
    auth_refused: int = 0
    token_requests: int = 0
    bad_request: int = 0
    concurrent_peak: int = 0
    _in_flight: int = field(default=0, repr=False)

    def _after_add(self) -> None:
        self.concurrent_peak = max(self.concurrent_peak, self._in_flight)


class Traffic:
    """When each ``computePixels`` request arrived and ended (the emulator's own clock).

    For quota checks: requests started in any one second (:meth:`peak_per_second`, by
    whole second of the clock) and mean requests in flight over a span (:meth:`mean_in_flight`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans: list[tuple[float, float]] = []  # (arrival, end), time.time()
        self._open = 0
        self.peak_in_flight = 0

    @contextlib.contextmanager
    def request(self):
        t0 = time.time()
        with self._lock:
            self._open += 1
            self.peak_in_flight = max(self.peak_in_flight, self._open)
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
                self.spans.append((t0, time.time()))

    def reset(self) -> None:
        with self._lock:
            self.spans.clear()
            self.peak_in_flight = self._open

    def per_second(self) -> collections.Counter:
        """Requests started in each whole second of the clock."""
        with self._lock:
            return collections.Counter(int(a) for a, _ in self.spans)

    def peak_per_second(self) -> int:
        """Most requests started within one whole second (0 when none)."""
        return max(self.per_second().values(), default=0)

    def mean_in_flight(self, t0: float | None = None, t1: float | None = None) -> float:
        """Mean requests in flight over ``[t0, t1]`` (default: from the first arrival to the last end)."""
        with self._lock:
            spans = list(self.spans)
        if not spans:
            return 0.0
        t0 = min(a for a, _ in spans) if t0 is None else t0
        t1 = max(b for _, b in spans) if t1 is None else t1
        if t1 <= t0:
            return 0.0
        busy = sum(max(0.0, min(b, t1) - max(a, t0)) for a, b in spans)
        return busy / (t1 - t0)


def _static_json(name: str):
    return json.loads(importlib.resources.files("ee").joinpath("tests", name).read_text())


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # route http.server's stderr chatter to our logger
        log.debug("emulator: " + fmt, *args)

    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.server.emu.stats.add(bytes_sent=len(body))

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json; charset=UTF-8", headers)

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        reason = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                  404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                  503: "UNAVAILABLE"}.get(status, "UNKNOWN")
        self._json(status, {"error": {"code": status, "message": message, "status": reason}}, headers)

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def do_GET(self):  # noqa: N802 (http.server naming)
        emu = self.server.emu
        emu.stats.add(requests=1)
        path = self.path.split("?", 1)[0]
        if path.endswith("/$discovery/rest"):
            self._json(200, emu.discovery)
        elif path.endswith("/algorithms"):
            if not self._refuse_auth(path):
                self._json(200, emu.algorithms)
        else:
            self._error(404, f"Unknown path {path}")

    def do_POST(self):  # noqa: N802
        emu = self.server.emu
        emu.stats.add(requests=1)
        path = self.path.split("?", 1)[0]
        if path.endswith("/token"):
            # OAuth token endpoint, for fake service-account keys whose token_uri points here.
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            emu.stats.add(token_requests=1)
            self._json(200, {"access_token": "emulator-access-token", "expires_in": 3600,
                             "token_type": "Bearer"})
            return
        try:
            body = self._body()
        except json.JSONDecodeError as e:
            self._error(400, f"Invalid JSON payload received. {e}")
            return
        if path.endswith("/image:computePixels"):
            emu.stats.add(compute_pixels=1)
            handler, endpoint = self._compute_pixels, "computePixels"
        elif path.endswith("/value:compute"):
            emu.stats.add(value_compute=1)
            handler, endpoint = self._value_compute, "value:compute"
        else:
            self._error(404, f"Unknown path {path}")
            return
        traffic = emu.traffic.request() if endpoint == "computePixels" else contextlib.nullcontext()
        with traffic, emu._in_flight():
            if self._refuse_auth(path) or self._inject_fault(endpoint):
                return
            try:
                handler(body)
            except EvalError as e:
                emu.stats.add(bad_request=1)
                self._error(400, str(e))

    def _refuse_auth(self, path: str) -> bool:
        """Answer 401/403 as Earth Engine does when the emulator was built with ``auth=``."""
        emu = self.server.emu
        if emu.auth is None:
            return False
        emu.stats.add(auth_refused=1)
        parts = path.split("/")
        project = parts[parts.index("projects") + 1] if "projects" in parts[:-1] else "unknown"
        self._error(int(emu.auth), AUTH_ERRORS[emu.auth].format(project=project))
        return True

    def _inject_fault(self, endpoint: str) -> bool:
        emu = self.server.emu
        kind, delay = emu._draw_fault(endpoint)
        if delay:
            time.sleep(delay)
        if kind == "429":
            emu.stats.add(injected_429=1)
            ra = emu.faults.retry_after_s
            self._error(429, "Too many concurrent aggregations.",
                        {"Retry-After": f"{ra:g}"} if ra is not None else None)
        elif kind == "5xx":
            emu.stats.add(injected_5xx=1)
            self._error(503, "The service is currently unavailable.")
        elif kind == "400":
            emu.stats.add(injected_400=1)
            self._error(400, "Injected permanent failure: the request is invalid.")
        elif kind == "malformed":
            emu.stats.add(injected_malformed=1)
            self._send(200, b"\x93NUMPY garbage \x00\x01", "application/octet-stream")
        return kind is not None

    def _compute_pixels(self, body: dict) -> None:
        emu = self.server.emu
        grid = parse_grid(body.get("grid"))
        if body.get("fileFormat") not in ("NPY", "NUMPY_NDARRAY"):
            raise EvalError(f"fileFormat {body.get('fileFormat')!r} is not supported by the emulator; use NPY")
        image = emu.evaluator().evaluate(body.get("expression"))
        bands = image.band_names()
        if body.get("bandIds"):
            bands = image.select_bands(body["bandIds"]).band_names()
        if max(grid.width, grid.height) > MAX_DIMENSION:
            emu.stats.add(too_large=1)
            raise EvalError(f"Grid dimensions ({grid.width}x{grid.height}) exceed {MAX_DIMENSION}.")
        nbytes = grid.width * grid.height * len(bands) * BYTES_PER_SAMPLE
        if nbytes > REQUEST_BYTE_LIMIT:
            emu.stats.add(too_large=1)
            raise EvalError(f"Total request size ({nbytes} bytes) must be less than or equal to "
                            f"{REQUEST_BYTE_LIMIT} bytes.")
        if emu.work_limit_px is not None and grid.width * grid.height > emu.work_limit_px:
            emu.stats.add(too_much_work=1)
            self._error(emu.work_limit_status, WORK_LIMIT_ERRORS[emu.work_limit_error])
            return
        pixels = image.render(grid, bands)  # (C, H, W) uint16
        out = np.empty((grid.height, grid.width), dtype=[(b, "<u2") for b in bands])
        for i, b in enumerate(bands):
            out[b] = pixels[i]
        buf = io.BytesIO()
        np.save(buf, out, allow_pickle=False)
        self._send(200, buf.getvalue(), "application/octet-stream")

    def _value_compute(self, body: dict) -> None:
        value = self.server.emu.evaluator().evaluate(body.get("expression"))
        self._json(200, {"result": value.to_json() if hasattr(value, "to_json") else value})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, emu: GEEEmulator):
        self.emu = emu
        super().__init__(addr, _Handler)

    def handle_error(self, request, client_address):
        # A client that went away mid-request (a killed worker) is not the emulator's error.
        log.debug("emulator: connection from %s ended abruptly", client_address, exc_info=True)


class GEEEmulator:
    """The emulator as a context manager: ``with GEEEmulator() as emu: emu.url``.

    Parameters
    ----------
    port : int
        0 picks a free port on 127.0.0.1.
    seed : int
        Seed of the synthetic world (same seed, same pixels) and of the fault RNG.
    faults : Faults, optional
        Injected latency and errors; ``latency_s`` is a shortcut for ``Faults(latency_s=...)``.
    no_coverage : sequence of (minlon, minlat, maxlon, maxlat)
        Places no scene covers: a request there finds an empty collection.
    auth : {None, "401", "403"}
        Refuse every API call (algorithm list, ``value:compute``, ``computePixels``)
        as Earth Engine refuses bad credentials ("401") or a project not registered
        for Earth Engine ("403"). May be changed on a running emulator.
    work_limit_px : int, optional
        ``computePixels`` requests over this many pixels answer ``work_limit_status``
        with Earth Engine's ``Computation timed out.`` (``work_limit_error="timeout"``)
        or ``User memory limit exceeded.`` (``"memory"``).
    work_limit_status : int
        400 (what Earth Engine usually answers) or a 5xx.
    today : datetime.date or str, optional
        The world's "today": no scene after it, so a later window is an empty composite
        (default: the real date).

    Attributes
    ----------
    bounds_log : collections.deque
        The ``filterBounds`` regions of the last 1000 requests, as lon/lat box tuples.
    """

    def __init__(self, port: int = 0, *, seed: int = 0, latency_s: float = 0.0,
                 faults: Faults | None = None, no_coverage=(), auth: str | None = None,
                 work_limit_px: int | None = None, work_limit_error: str = "timeout",
                 work_limit_status: int = 400, today=None):
        if auth not in (None, "401", "403"):
            raise ValueError(f"auth={auth!r}: expected None, '401' or '403'")
        if work_limit_error not in WORK_LIMIT_ERRORS:
            raise ValueError(f"work_limit_error={work_limit_error!r}: expected one of {sorted(WORK_LIMIT_ERRORS)}")
        if work_limit_px is not None and not (isinstance(work_limit_px, int) and work_limit_px >= 1):
            raise ValueError(f"work_limit_px={work_limit_px!r}: expected None or an integer >= 1")
        if work_limit_status not in (400, 500, 503):
            raise ValueError(f"work_limit_status={work_limit_status!r}: expected 400, 500 or 503")
        self.world = SyntheticS2World(seed, no_coverage=no_coverage, today=today)
        self.faults = faults or Faults(latency_s=latency_s)
        self.auth = auth
        self.work_limit_px = work_limit_px
        self.work_limit_error = work_limit_error
        self.work_limit_status = work_limit_status
        self.bounds_log: collections.deque[tuple] = collections.deque(maxlen=1000)
        self.stats = EmulatorStats()
        self.traffic = Traffic()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._forced: collections.deque[tuple[str, str]] = collections.deque()  # (kind, endpoint)
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.algorithms = _static_json("algorithms.json")
        self.discovery: dict = {}

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("GEEEmulator is not started: use it as a context manager or call start()")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> GEEEmulator:
        self._server = _Server(("127.0.0.1", self._port), self)
        doc = _static_json("cloud_api_discovery_document.json")
        doc["rootUrl"] = doc["baseUrl"] = self.url + "/"
        self.discovery = doc
        self._thread = threading.Thread(target=self._server.serve_forever, name="gee-emulator",
                                        daemon=True)
        self._thread.start()
        log.info("Earth Engine emulator serving at %s", self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> GEEEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def evaluator(self) -> Evaluator:
        """An evaluator of one request's expression over this emulator's world."""
        return Evaluator(self.world, on_bounds=lambda geom: self.bounds_log.append(geom.boxes))

    def fail_next(self, n: int, kind: str = "429", endpoint: str = "computePixels") -> None:
        """Answer the next ``n`` requests to ``endpoint`` with ``kind``.

        ``kind``: ``"429"``, ``"5xx"``, ``"malformed"`` or ``"400"``; ``endpoint``:
        ``"computePixels"`` (default: a campaign's configuration check, a
        ``value:compute``, does not use them up), ``"value:compute"`` or ``"any"``.
        """
        if kind not in ("429", "5xx", "malformed", "400"):
            raise ValueError(f"kind={kind!r}: expected '429', '5xx', 'malformed' or '400'")
        if endpoint not in ("computePixels", "value:compute", "any"):
            raise ValueError(f"endpoint={endpoint!r}: expected 'computePixels', 'value:compute' or 'any'")
        with self._lock:
            self._forced.extend([(kind, endpoint)] * n)

    def _draw_fault(self, endpoint: str) -> tuple[str | None, float]:
        f = self.faults
        with self._lock:
            for k, (kind, target) in enumerate(self._forced):
                if target in ("any", endpoint):
                    del self._forced[k]
                    return kind, f.latency_s
            u = self._rng.random()
            spike = f.spike_s if self._rng.random() < f.p_spike else 0.0
        delay = f.latency_s + spike
        if u < f.p_429:
            return "429", delay
        if u < f.p_429 + f.p_5xx:
            return "5xx", delay
        if u < f.p_429 + f.p_5xx + f.p_malformed:
            return "malformed", delay
        if u < f.p_429 + f.p_5xx + f.p_malformed + f.p_400:
            return "400", delay
        return None, delay

    @contextlib.contextmanager
    def _in_flight(self):
        self.stats.add(_in_flight=1)
        try:
            yield
        finally:
            self.stats.add(_in_flight=-1)


def serve(port: int = 8765, latency_s: float = 0.0, seed: int = 0) -> None:
    """Serve the emulator on 127.0.0.1:``port`` until interrupted (``rsembed-dask emulator``).

    Parameters
    ----------
    port : int
        Loopback port to listen on.
    latency_s : float
        Seconds added before every answer.
    seed : int
        Seed of the synthetic world.
    """
    emu = GEEEmulator(port, seed=seed, latency_s=latency_s).start()
    print(f"Earth Engine emulator at {emu.url} (seed {seed}, latency {latency_s:g} s). Ctrl-C stops.",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("Earth Engine emulator stopped.", flush=True)
    finally:
        emu.stop()
