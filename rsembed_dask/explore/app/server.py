"""The explorer's web app: a FastAPI application over one cube, and the servers that run it.

:func:`create_app` builds the application (the page, its static files and the HTTP
API below); :func:`serve` runs it in the foreground (``rsembed-dask explore``);
:func:`explore` runs it in a background thread and shows it inside Jupyter.

HTTP API (JSON; GeoJSON in EPSG:4326; errors are ``400 {"error": "..."}``):

=========================  ==================================================================
``GET /api/info``          kind, scales, windows, counts, the predict method, the basemap
``GET /api/places``        ``scale``, ``time``: every place's id, lon, lat and PCA colour
                           (columns; at most :data:`MAX_PLACES_SHOWN`, evenly subsampled)
``GET /api/overlays``      ``scale``, ``time``: the zone overlays of a tiling store (URL, bounds)
``GET /api/overlay/S/Z.png``  one zone overlay (RGBA PNG in Web Mercator)
``GET /api/nearest``       ``lon``, ``lat``, ``scale``, ``time``: the nearest place (a Feature)
``GET /api/similar``       ``lon``, ``lat``, ``k``, ``scale``, ``time``, ``geometry``: the query
                           place and its ``k`` most similar places (FeatureCollection, most
                           similar first; Points at the centroids, or ``geometry=stored``)
``PUT /api/labels``        ``{"scale", "time", "labels": [{"id" | "lon","lat", "label"}]}``
``GET /api/labels``        ``format=geojson|geoparquet``: the labels
``GET /api/predict``       ``format=geojson|geoparquet|columns``, ``limit``, ``min_score``: every
                           place of the labels' scale scored (mean difference), best first
=========================  ==================================================================

Safe by default: it binds 127.0.0.1, answers only ``Host`` headers naming the
address it serves (no DNS rebinding), opens the cube read-only, serves only its
own static files, and refuses oversized or malformed requests with 400.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (``Request``,
# imported inside create_app so that importing this module needs no FastAPI) at definition time.

import io
import ipaddress
import json
import logging
import math
import os
import socket
import threading
import time
import webbrowser
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import RsEmbedError, SpecError
from .index import VectorIndex
from .labels import NEGATIVE, POSITIVE, PREDICT_METHOD, Label, LabelSet, mean_difference
from .overlay import zone_overlay
from .source import CubeSource, Window

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["create_app", "serve", "explore", "ExplorerServer", "Explorer", "DEFAULT_HOST", "DEFAULT_PORT",
           "MAX_K", "MAX_LABELS", "MAX_BODY_BYTES", "MAX_PLACES_SHOWN", "STATIC_DIR"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8790
#: Most similar places one request may ask for.
MAX_K = 1000
#: Most labels in one label set.
MAX_LABELS = 10_000
#: Largest request body accepted (a label set of MAX_LABELS fits).
MAX_BODY_BYTES = 1 << 20
#: Places sent to the page at most (an even subsample beyond: the map draws them all).
MAX_PLACES_SHOWN = 50_000
#: The page and the map library, shipped with the package.
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
_FORMATS = ("geojson", "geoparquet")


class BadRequest(RsEmbedError):
    """A request the API refuses (400)."""


# --- the explorer's state: a cube, its indexes, the labels -----------------------------------------------

class Explorer:
    """One cube's explorer: indexes loaded once per scale and window, labels, overlays.

    Parameters
    ----------
    source : CubeSource
    basemap : str, optional
        A tile URL template (``https://.../{z}/{x}/{y}.png``) drawn under the data.
    """

    def __init__(self, source: CubeSource, basemap: str | None = None):
        self.source = source
        self.basemap = basemap
        self.labels = LabelSet()
        self._indexes: dict[tuple[float, int | None], VectorIndex] = {}
        self._overlays: dict[tuple[float, int | None, str], Any] = {}
        self._lock = threading.Lock()

    def resolve(self, scale: Any, time_: Any) -> tuple[float, Window | None]:
        """The scale and window named by request parameters (SpecError when the cube lacks them)."""
        return self.source.scale(None if scale in (None, "") else scale), self.source.window(time_)

    def index(self, scale: float, window: Window | None) -> VectorIndex:
        """The vector index of ``scale`` and ``window``, loaded on first use and kept."""
        key = (scale, None if window is None else window.position)
        with self._lock:
            if key not in self._indexes:
                self._indexes[key] = VectorIndex.load(self.source.places(scale, window))
            return self._indexes[key]

    def features(self, scale: float, window: Window | None, idx: np.ndarray,
                 props: dict[str, Iterable[Any]], *, stored: bool = True) -> list[dict[str, Any]]:
        """GeoJSON Features of indexed places ``idx`` with ``props`` per place; their geometry is
        the stored one (``stored``: the sample's geometry, a tile's square; this reads the chunks
        of the cube's ``geometry`` that hold them) or a Point at the place's centroid."""
        import shapely

        index = self.index(scale, window)
        ds = self.source.places(scale, window)
        rows = index.rows[idx]
        order = np.argsort(rows, kind="stable")
        wkb = np.full(len(rows), "", object)
        if len(rows) and stored:
            wkb[order] = np.asarray(ds["geometry"].isel(sample=rows[order]).values, object)
        ids = ds.indexes["sample"][rows]
        columns = {k: list(v) for k, v in props.items()}
        out = []
        for j, i in enumerate(idx.tolist()):
            lon, lat = float(index.lon[i]), float(index.lat[i])
            text = str(wkb[j] or "")
            geom = (shapely.geometry.mapping(shapely.from_wkb(text)) if text
                    else {"type": "Point", "coordinates": [lon, lat]})
            pid = _plain(ids[j])
            p = {"id": pid, **{k: _plain(v[j]) for k, v in columns.items()},
                 "scale": scale, "lon": lon, "lat": lat, **_window_props(window)}
            out.append({"type": "Feature", "id": pid, "geometry": _plain_geom(geom), "properties": p})
        return out

    def ids(self, scale: float, window: Window | None, idx: np.ndarray) -> list[Any]:
        ds = self.source.places(scale, window)
        return [_plain(v) for v in ds.indexes["sample"][self.index(scale, window).rows[idx]]]

    def overlay(self, scale: float, window: Window | None, group: str) -> Any:
        key = (scale, None if window is None else window.position, group)
        with self._lock:
            cached = self._overlays.get(key)
        if cached is not None:
            return cached
        index = self.index(scale, window)
        assert self.source.path is not None

        def colour_of_row(rows: np.ndarray) -> np.ndarray:
            pos = index.position_of_row(rows)
            rgba = np.zeros((len(rows), 4), np.uint8)
            has = pos >= 0
            rgba[has, :3] = index.colours(pos[has])
            rgba[has, 3] = 255
            return rgba

        made = zone_overlay(self.source.path, group, colour_of_row)
        with self._lock:
            self._overlays[key] = made
        return made

    def find_label_rows(self, scale: float, window: Window | None, items: Any) -> list[Label]:
        """Labels of the items of a label set (``{"id"|"lon","lat", "label"}``), checked."""
        if not isinstance(items, list):
            raise BadRequest("labels must be a JSON list of {\"id\" or \"lon\"/\"lat\", \"label\"} objects")
        if len(items) > MAX_LABELS:
            raise BadRequest(f"labels: {len(items)} given, at most {MAX_LABELS} accepted")
        index = self.index(scale, window)
        ds = self.source.places(scale, window)
        sample_index = ds.indexes["sample"]
        out = []
        for n, item in enumerate(items):
            if not isinstance(item, dict):
                raise BadRequest(f"labels[{n}] is {type(item).__name__}, expected an object")
            name = item.get("label")
            if name not in (POSITIVE, NEGATIVE):
                raise BadRequest(f"labels[{n}].label is {name!r}, expected {POSITIVE!r} or {NEGATIVE!r}")
            if "id" in item:
                pos = _position_of_id(sample_index, item["id"], index, n)
            elif "lon" in item and "lat" in item:
                lon = _number(f"labels[{n}].lon", item["lon"], -180.0, 180.0)
                lat = _number(f"labels[{n}].lat", item["lat"], -90.0, 90.0)
                pos = index.nearest(lon, lat)
            else:
                raise BadRequest(f"labels[{n}] names no place: give \"id\", or \"lon\" and \"lat\"")
            row = int(index.rows[pos])
            out.append(Label(row, _plain(sample_index[row]), name == POSITIVE))
        return out


# --- request checks ------------------------------------------------------------------------------------

def _number(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool):
        raise BadRequest(f"{name} is {value!r}, expected a number in [{lo:g}, {hi:g}]")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} is {value!r}, expected a number in [{lo:g}, {hi:g}]") from None
    if not (math.isfinite(v) and lo <= v <= hi):
        raise BadRequest(f"{name} is {value!r}, expected a number in [{lo:g}, {hi:g}]")
    return v


def _integer(name: str, value: Any, lo: int, hi: int) -> int:
    text = str(value).strip()
    if not text.lstrip("+-").isdigit() or len(text) > 12:
        raise BadRequest(f"{name} is {value!r}, expected an integer in [{lo}, {hi}]")
    v = int(text)
    if not lo <= v <= hi:
        raise BadRequest(f"{name} is {v}, expected an integer in [{lo}, {hi}]")
    return v


def _required(params: Any, name: str) -> str:
    value = params.get(name)
    if value is None or value == "":
        raise BadRequest(f"{name} is missing")
    return value


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise BadRequest(f"{name} is {value!r}, expected one of {', '.join(allowed)}")
    return value


def _position_of_id(sample_index: Any, pid: Any, index: VectorIndex, n: int) -> int:
    candidates = [pid]
    if isinstance(pid, str) and sample_index.dtype.kind in "iu" and pid.lstrip("-").isdigit():
        candidates.append(int(pid))
    for c in candidates:
        if isinstance(c, (str, int)) and not isinstance(c, bool):
            try:
                row = sample_index.get_loc(c)
            except KeyError:
                continue
            if isinstance(row, (int, np.integer)):
                pos = int(index.position_of_row([row])[0])
                if pos < 0:
                    raise BadRequest(f"labels[{n}].id {pid!r} has no ok embedding at this scale and window")
                return pos
    raise BadRequest(f"labels[{n}].id {pid!r} is not a place of the cube")


def _plain(v: Any) -> Any:
    """A JSON-ready Python value (NumPy scalars unwrapped, non-finite floats as None)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _plain_geom(geom: Any) -> Any:
    """shapely's mapping (tuples) as JSON lists."""
    return json.loads(json.dumps(geom))


def _window_props(window: Window | None) -> dict[str, Any]:
    return {} if window is None else {"time": window.start, "time_end": window.end}


def _rgb_hex(rgb: np.ndarray) -> list[str]:
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in rgb.tolist()]


def _spread(n: int, most: int) -> np.ndarray:
    """``min(n, most)`` positions spread evenly over ``range(n)``."""
    return np.arange(n) if n <= most else np.linspace(0, n - 1, most).round().astype(np.int64)


def _geoparquet(features: list[dict[str, Any]], filename: str) -> Any:
    """A GeoParquet download of GeoJSON features."""
    import geopandas as gpd
    from fastapi.responses import Response

    gdf = gpd.GeoDataFrame.from_features(features, crs="EPSG:4326") if features else gpd.GeoDataFrame(
        {"id": []}, geometry=[], crs="EPSG:4326")
    buf = io.BytesIO()
    gdf.to_parquet(buf, index=False, compression="zstd")
    return Response(buf.getvalue(), media_type="application/vnd.apache.parquet",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


# --- the application -----------------------------------------------------------------------------------

def _allowed_hosts(host: str) -> list[str]:
    """``Host`` header values answered: loopback names, and the address served (any if it is a wildcard)."""
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    return list(dict.fromkeys([*_LOOPBACK_NAMES, host]))


def create_app(cube: Any, *, basemap: str | None = None, host: str = DEFAULT_HOST,
               preload: bool = True) -> "FastAPI":
    """The explorer's FastAPI application for ``cube``.

    Parameters
    ----------
    cube : str, path, xarray.Dataset or xarray.DataTree
        A sample cube or tiling store (see :meth:`CubeSource.open`), opened read-only.
    basemap : str, optional
        Tile URL template drawn under the data (none by default: the page needs no internet).
    host : str
        The address it will be served on (``Host`` headers naming another are refused).
    preload : bool
        Load the first scale's vectors now, so the first click is answered at once.

    Returns
    -------
    fastapi.FastAPI
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    explorer = Explorer(CubeSource.open(cube), basemap=basemap)
    if preload:
        first = explorer.source.scales[0]
        windows = explorer.source.windows
        explorer.index(first, windows[0] if windows else None)
    app = FastAPI(title="rsembed_dask explorer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.explorer = explorer
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=_allowed_hosts(host))

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers={"Cache-Control": "no-store"})

    @app.exception_handler(BadRequest)
    async def _bad(request: Request, exc: BadRequest) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(SpecError)
    async def _spec(request: Request, exc: SpecError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(400, "malformed request: " + "; ".join(str(e.get("msg")) for e in exc.errors()))

    def where(params: Any) -> tuple[float, Window | None]:
        return explorer.resolve(params.get("scale"), params.get("time"))

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(os.path.join(STATIC_DIR, "index.html"), headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR, follow_symlink=False), name="static")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        src = explorer.source
        first = src.scales[0]
        index = explorer.index(first, src.windows[0] if src.windows else None)
        return {"name": src.name, "kind": src.kind, "scales": src.scales,
                "windows": [{"start": w.start, "end": w.end} for w in src.windows],
                "bounds": [float(index.lon.min()), float(index.lat.min()),
                           float(index.lon.max()), float(index.lat.max())],
                "places": int(src.places(first, src.windows[0] if src.windows else None).sizes["sample"]),
                "predict_method": PREDICT_METHOD, "basemap": explorer.basemap,
                "limits": {"k": MAX_K, "labels": MAX_LABELS, "body_bytes": MAX_BODY_BYTES,
                           "places_shown": MAX_PLACES_SHOWN}}

    @app.get("/api/places")
    def places(request: Request) -> dict[str, Any]:
        scale, window = where(request.query_params)
        index = explorer.index(scale, window)
        idx = _spread(len(index), MAX_PLACES_SHOWN)
        return {"scale": scale, **_window_props(window), "total": len(index), "shown": int(len(idx)),
                "ids": explorer.ids(scale, window, idx), "lon": index.lon[idx].round(7).tolist(),
                "lat": index.lat[idx].round(7).tolist(), "rgb": _rgb_hex(index.colours(idx))}

    @app.get("/api/overlays")
    def overlays(request: Request) -> dict[str, Any]:
        scale, window = where(request.query_params)
        out = []
        for group in explorer.source.zone_groups(scale):
            ov = explorer.overlay(scale, window, group)
            zone = group.split("/")[-1]
            q = f"?time={window.start}" if window is not None else ""
            out.append({"zone": zone, "url": f"/api/overlay/{scale:g}/{zone}.png{q}",
                        "bounds": [list(ov.bounds[0]), list(ov.bounds[1])], "shape": list(ov.shape)})
        return {"scale": scale, **_window_props(window), "overlays": out}

    @app.get("/api/overlay/{scale}/{zone}.png")
    def overlay_png(scale: str, zone: str, request: Request) -> Response:
        s, window = explorer.resolve(scale, request.query_params.get("time"))
        groups = {g.split("/")[-1]: g for g in explorer.source.zone_groups(s)}
        if zone not in groups:
            raise BadRequest(f"zone is {zone!r}, expected one of {', '.join(groups) or 'none (not a tiling store)'}")
        ov = explorer.overlay(s, window, groups[zone])
        return Response(ov.png, media_type="image/png", headers={"Cache-Control": "no-store"})

    def query_point(params: Any) -> tuple[float, float]:
        lon = _number("lon", _required(params, "lon"), -180.0, 180.0)
        lat = _number("lat", _required(params, "lat"), -90.0, 90.0)
        return lon, lat

    @app.get("/api/nearest")
    def nearest(request: Request) -> dict[str, Any]:
        params = request.query_params
        lon, lat = query_point(params)
        scale, window = where(params)
        index = explorer.index(scale, window)
        i = index.nearest(lon, lat)
        return explorer.features(scale, window, np.array([i]), {"distance_m": [index.distance_m(i, lon, lat)]})[0]

    @app.get("/api/similar")
    def similar(request: Request) -> dict[str, Any]:
        t0 = time.perf_counter()
        params = request.query_params
        lon, lat = query_point(params)
        k = _integer("k", params.get("k", "10"), 1, MAX_K)
        geometry = _choice("geometry", params.get("geometry", "point"), ("point", "stored"))
        scale, window = where(params)
        index = explorer.index(scale, window)
        q = index.nearest(lon, lat)
        best, scores = VectorIndex.top(index.cosine(q), k + 1)
        keep = best != q
        best, scores = np.concatenate([[q], best[keep][:k]]), np.concatenate([[1.0], scores[keep][:k]])
        feats = explorer.features(scale, window, best, {
            "score": [round(float(s), 6) for s in scores], "rank": range(len(best)),
            "query": [True] + [False] * (len(best) - 1)}, stored=geometry == "stored")
        return {"type": "FeatureCollection", "features": feats,
                "query": {"lon": lon, "lat": lat, "id": feats[0]["id"],
                          "distance_m": round(index.distance_m(q, lon, lat), 1)},
                "scale": scale, **_window_props(window), "k": k,
                "took_ms": round((time.perf_counter() - t0) * 1000, 1)}

    async def json_body(request: Request) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            raise BadRequest(f"request body of {length} bytes; at most {MAX_BODY_BYTES} accepted")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise BadRequest(f"request body over {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(bytes(body))
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest(f"request body is not JSON ({exc})") from None

    def label_features(labels: tuple[Label, ...], where_: tuple[float, str | None] | None) -> list[dict]:
        if not labels or where_ is None:
            return []
        scale, window = explorer.resolve(where_[0], where_[1])
        index = explorer.index(scale, window)
        idx = index.position_of_row([lab.row for lab in labels])
        return explorer.features(scale, window, idx, {"label": [lab.name for lab in labels]})

    @app.put("/api/labels")
    async def put_labels(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object {\"scale\", \"time\", \"labels\": [...]}")
        scale, window = explorer.resolve(body.get("scale"), body.get("time"))
        labels = explorer.find_label_rows(scale, window, body.get("labels"))
        explorer.labels.replace(labels, scale, None if window is None else window.start)
        return labels_geojson(*explorer.labels.get())

    def labels_geojson(labels: tuple[Label, ...], where_: tuple[float, str | None] | None) -> dict[str, Any]:
        return {"type": "FeatureCollection", "features": label_features(labels, where_),
                "positives": sum(lab.positive for lab in labels),
                "negatives": sum(not lab.positive for lab in labels)}

    @app.get("/api/labels", response_model=None)
    def get_labels(request: Request) -> Any:
        fmt = _choice("format", request.query_params.get("format", "geojson"), _FORMATS)
        labels, where_ = explorer.labels.get()
        if fmt == "geoparquet":
            return _geoparquet(label_features(labels, where_), "labels.parquet")
        return labels_geojson(labels, where_)

    @app.get("/api/predict", response_model=None)
    def predict(request: Request) -> Any:
        params = request.query_params
        fmt = _choice("format", params.get("format", "geojson"), (*_FORMATS, "columns"))
        limit = _integer("limit", params["limit"], 1, 1 << 40) if "limit" in params else None
        min_score = _number("min_score", params["min_score"], -1.0, 1.0) if "min_score" in params else -1.0
        labels, where_ = explorer.labels.get()
        if not labels or where_ is None:
            raise BadRequest("no labels: label at least one positive place first (PUT /api/labels)")
        scale, window = explorer.resolve(where_[0], where_[1])
        index = explorer.index(scale, window)
        pos = index.position_of_row([lab.row for lab in labels])
        positive = np.array([lab.positive for lab in labels])
        w = mean_difference(index.unit(pos[positive]), index.unit(pos[~positive]))
        scores = index.dots(w)
        order, top = VectorIndex.top(scores, len(scores) if limit is None else limit)
        keep = top >= min_score
        order, top = order[keep], top[keep]
        labelled = {int(p): lab.name for p, lab in zip(pos.tolist(), labels)}
        head = {"scale": scale, **_window_props(window), "method": PREDICT_METHOD, "places": len(index),
                "positives": int(positive.sum()), "negatives": int((~positive).sum())}
        if fmt == "columns":
            return {**head, "ids": explorer.ids(scale, window, order), "lon": index.lon[order].round(7).tolist(),
                    "lat": index.lat[order].round(7).tolist(), "score": np.round(top.astype(np.float64), 6).tolist(),
                    "label": [labelled.get(int(i)) for i in order]}
        feats = explorer.features(scale, window, order, {
            "score": np.round(top.astype(np.float64), 6).tolist(), "label": [labelled.get(int(i)) for i in order]})
        if fmt == "geoparquet":
            return _geoparquet(feats, "predictions.parquet")
        return {"type": "FeatureCollection", "features": feats, **head}

    return app


# --- running it ----------------------------------------------------------------------------------------

def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one)."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host.strip("[]")).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise SpecError("port", port, f"a free TCP port on {host} ({exc}); try --port 0 for any free port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ExplorerServer:
    """An explorer served by uvicorn in a background thread; shows itself as an IFrame in Jupyter.

    Attributes
    ----------
    url : str
        The page's address.
    """

    def __init__(self, app: Any, host: str = DEFAULT_HOST, port: int = 0, *, height: int = 600):
        import uvicorn

        self._sock = _bind(host, port)
        self.port = int(self._sock.getsockname()[1])
        self.url = _url(host, self.port)
        self.height = height
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="rsembed-explorer", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop serving (waits for the thread)."""
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    def __enter__(self) -> "ExplorerServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _repr_html_(self) -> str:
        return (f'<iframe src="{self.url}" width="100%" height="{int(self.height)}" '
                'style="border:1px solid #ccc"></iframe>')

    def __repr__(self) -> str:
        return f"ExplorerServer({self.url})"


def explore(cube: Any, *, port: int = 0, host: str = DEFAULT_HOST, basemap: str | None = None,
            height: int = 600) -> ExplorerServer:
    """Serve the explorer of ``cube`` in the background; in Jupyter the result shows the page.

    Parameters
    ----------
    cube : str, path, xarray.Dataset or xarray.DataTree
        A sample cube or tiling store.
    port : int
        TCP port (0: any free one).
    host : str
        Address to bind (loopback by default).
    basemap : str, optional
        Tile URL template drawn under the data.
    height : int
        Height of the IFrame, pixels.

    Returns
    -------
    ExplorerServer
        ``.url`` is the page's address; ``.stop()`` ends it.

    Examples
    --------
    >>> from rsembed_dask.explore import explore
    >>> explore("demo_out/tiles.zarr")          # doctest: +SKIP
    """
    return ExplorerServer(create_app(cube, basemap=basemap, host=host), host, port, height=height)


def _return_freed_memory() -> None:
    """Have glibc hand big freed buffers back to the system at once (``M_MMAP_THRESHOLD`` of
    1 MiB): loading a cube decodes thousands of chunks, and glibc's adaptive threshold would
    otherwise keep their buffers in its heaps, a third more than the vectors at the peak.
    A no-op where the C library is not glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        return
    if mallopt is not None:
        mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


def serve(cube: Any, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, basemap: str | None = None,
          open_browser: bool = True, announce: Any = print) -> None:
    """Serve the explorer of ``cube`` in the foreground until Ctrl-C (``rsembed-dask explore``).

    ``announce`` is called once with the page's address line when the server listens.
    """
    import uvicorn

    if not _is_loopback(host):
        log.warning("the explorer is served on %s: anyone who can reach this address can read the cube", host)
    _return_freed_memory()
    app = create_app(cube, basemap=basemap, host=host)
    sock = _bind(host, port)
    url = _url(host, int(sock.getsockname()[1]))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    announce(f"explorer of {app.state.explorer.source.name}: {url}  (Ctrl-C to stop)")
    if open_browser:
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
