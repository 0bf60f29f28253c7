"""Evaluate the subset of Earth Engine expression graphs that rsembed_dask sends.

The earthengine-api client serialises computations as ``{"result": id,
"values": {id: node}}`` graphs of ``functionInvocationValue`` /
``constantValue`` / ``valueReference`` nodes. This module evaluates
``ImageCollection.load``, ``Collection.filter`` (date range, bounds, property
comparisons, ``not``/``and``), ``reduce.median``, ``ImageCollection.mosaic``,
``Image.select``, ``Image.clip``, ``Image.reproject``, ``Image.toUint16``,
``Collection.size``, ``Collection.first`` and ``Image.bandNames`` over a
:class:`~.synthetic_s2.SyntheticS2World`.

Geometries are kept as lon/lat boxes: a rectangle or polygon given in a
projected CRS (``ee.Geometry.Rectangle(coords, proj="EPSG:32660", geodesic=False)``)
is projected to lon/lat along its densified edges, and one that crosses the
antimeridian becomes two boxes, one on each side (not one box 360 degrees wide).

Errors are raised as :class:`EvalError` with the message Earth Engine would give
(answered as HTTP 400 by the emulator), e.g. a select on the band-less composite
of an empty collection: ``Image.select: Band pattern 'B4' was applied to an Image
with no bands.``; a band the image lacks: ``Image.select: Pattern 'B04' did not
match any bands.``
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .synthetic_s2 import BANDS, FIRST_DAY, S2_FIRST_DAY, Scene, SyntheticS2World

__all__ = ["EvalError", "Evaluator", "Grid", "parse_grid", "COLLECTIONS"]

#: Collection ids the emulator serves (all backed by the same synthetic scenes) and the day
#: each begins: surface reflectance from 2017-03-28, top of atmosphere from Sentinel-2's start.
COLLECTIONS = {"COPERNICUS/S2_SR_HARMONIZED": FIRST_DAY, "COPERNICUS/S2_SR": FIRST_DAY,
               "COPERNICUS/S2_HARMONIZED": S2_FIRST_DAY}


class EvalError(Exception):
    """An expression Earth Engine would reject (HTTP 400)."""


@dataclass(frozen=True)
class Grid:
    """A computePixels grid: CRS code, affine (a, b, c, d, e, f) and shape."""

    crs: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int


def parse_grid(grid: Any) -> Grid:
    """Read a REST ``PixelGrid`` (``crsCode``, ``affineTransform``, ``dimensions``)."""
    if not isinstance(grid, dict):
        raise EvalError("computePixels needs a grid: the emulator has no native grid to fall back to.")
    try:
        at = grid["affineTransform"]
        dims = grid["dimensions"]
        a, b, c, d, e, f = (float(at.get(k, 0.0)) for k in
                            ("scaleX", "shearX", "translateX", "shearY", "scaleY", "translateY"))
        transform = (a, b, c, d, e, f)
        width, height = int(dims["width"]), int(dims["height"])
        crs = str(grid["crsCode"])
    except (KeyError, TypeError, ValueError) as e:
        raise EvalError(f"Invalid grid {grid!r}: {e}") from None
    if width < 1 or height < 1:
        raise EvalError(f"Grid dimensions must be positive, got {width}x{height}.")
    return Grid(crs, transform, width, height)


@dataclass(frozen=True)
class _Geometry:
    """A geometry as lon/lat boxes ``(minlon, minlat, maxlon, maxlat)``: one, or two across the antimeridian."""

    boxes: tuple[tuple[float, float, float, float], ...]

    @classmethod
    def from_coords(cls, coords, crs: str | None = None, rectangle: bool = False) -> _Geometry:
        if rectangle:  # [x0, y0, x1, y1] or [[x0, y0], [x1, y1]]: the four corners
            flat = np.asarray(coords, float).ravel()
            if flat.size != 4:
                raise EvalError(f"GeometryConstructors.Rectangle: expected two corners, got {coords!r}.")
            x0, y0, x1, y1 = flat
            pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])
        else:
            pts = np.asarray(_flatten_points(coords), float)
        if crs is None or crs.upper() in ("EPSG:4326", "WGS84"):
            lon, lat = pts[:, 0], pts[:, 1]
            return cls(((lon.min(), lat.min(), lon.max(), lat.max()),))
        # Planar edges in a projected CRS: densify, project to lon/lat.
        ring = np.concatenate([pts[k] + np.linspace(0, 1, 16, endpoint=False)[:, None] * (pts[k + 1] - pts[k])
                               for k in range(len(pts) - 1)] + [pts[-1:]])
        lon, lat = _lonlat(crs, ring[:, 0], ring[:, 1])
        if lon.max() - lon.min() <= 180:
            return cls(((lon.min(), lat.min(), lon.max(), lat.max()),))
        east = np.where(lon < 0, lon + 360, lon)  # across the antimeridian: unwrap, then split at 180
        return cls(((east.min(), lat.min(), 180.0, lat.max()),
                    (-180.0, lat.min(), east.max() - 360, lat.max())))

    def contains_lonlat(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        out = np.zeros(np.shape(lon), bool)
        for x0, y0, x1, y1 in self.boxes:
            out |= (lon >= x0) & (lon <= x1) & (lat >= y0) & (lat <= y1)
        return out

    def to_json(self):
        return {"type": "Boxes", "boxes": [list(b) for b in self.boxes]}


def _lonlat(crs: str, x, y):
    import pyproj

    try:
        t = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    except pyproj.exceptions.CRSError as e:
        raise EvalError(f"Projection: unknown crs {crs!r} ({e}).") from None
    lon, lat = t.transform(x, y)
    return np.asarray(lon, float), np.asarray(lat, float)


def _flatten_points(coords) -> list:
    if coords and isinstance(coords[0], (int, float)):
        return [coords]
    return [p for c in coords for p in _flatten_points(c)]


@dataclass(frozen=True)
class _Collection:
    scenes: tuple[Scene, ...]

    def to_json(self):
        return {"type": "ImageCollection", "size": len(self.scenes)}


class _Image:
    """A lazily rendered image: named bands over the synthetic world."""

    def __init__(self, world: SyntheticS2World, scenes, how: str, bands, names=None, clip=None):
        self.world, self.scenes, self.how = world, tuple(scenes), how
        self.bands = tuple(bands)  # source band names
        self.names = tuple(names) if names is not None else self.bands
        self.clip = clip

    def band_names(self) -> tuple[str, ...]:
        return self.names

    def select_bands(self, selectors, new_names=None) -> _Image:
        picked: list[int] = []
        for sel in selectors:
            if not self.names:  # the composite of an empty collection
                raise EvalError(f"Image.select: Band pattern '{sel}' was applied to an Image with no bands.")
            hits = [i for i, n in enumerate(self.names) if re.fullmatch(str(sel), n)]
            if not hits:
                raise EvalError(f"Image.select: Pattern '{sel}' did not match any bands.")
            picked += hits
        names = [self.names[i] for i in picked]
        if new_names is not None:
            if len(new_names) != len(picked):
                raise EvalError("Image.select: The number of new names must match the number of bands.")
            names = list(new_names)
        return _Image(self.world, self.scenes, self.how, [self.bands[i] for i in picked], names,
                      self.clip)

    def render(self, grid: Grid, names) -> np.ndarray:
        """``(len(names), H, W)`` uint16; masked pixels are 0."""
        src = [self.bands[self.names.index(n)] for n in names]
        out = np.empty((len(src), grid.height, grid.width), np.uint16)
        a, b, c, d, e, f = grid.transform
        # Strips of rows keep the per-scene temporaries small for large requests; pixels
        # do not depend on the request around them, so strips change nothing.
        for r0 in range(0, grid.height, _STRIP_ROWS):
            h = min(_STRIP_ROWS, grid.height - r0)
            strip = (a, b, c + b * r0, d, e, f + e * r0)
            lon, lat = self.world.pixel_centers_lonlat(grid.crs, strip, grid.width, h)
            part = self.world.composite(list(self.scenes), lon, lat, src, self.how)
            if self.clip is not None:
                part[:, ~self.clip.contains_lonlat(lon, lat)] = 0
            out[:, r0:r0 + h] = part
        return out


# Rows rendered at a time (a 1792-px-wide strip of 256 rows x 12 scenes x 3 bands is 66 MB).
_STRIP_ROWS = 256


def _date_ms(value) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        d = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if d.tzinfo is None:
            d = d.replace(tzinfo=dt.timezone.utc)
        return d.timestamp() * 1000
    raise EvalError(f"Date: cannot interpret {value!r} as a date.")


def _prop(scene: Scene, name: str):
    return {"CLOUDY_PIXEL_PERCENTAGE": scene.cloudy_pct,
            "system:time_start": scene.time_start_ms,
            "system:index": scene.date.strftime("%Y%m%dT103021_%Y%m%dT103021_T31RFQ")}.get(name)


def _compare(op: Callable[[Any, Any], bool]):
    def make(a):
        field, value = a.get("leftField"), a.get("rightValue")
        if field is None:
            raise EvalError("Filter comparison: only leftField/rightValue comparisons are supported.")
        return lambda s: (v := _prop(s, field)) is not None and op(v, value)
    return make


class Evaluator:
    """Evaluates one serialised expression graph against ``world``."""

    def __init__(self, world: SyntheticS2World, on_bounds: Callable[[_Geometry], None] | None = None):
        self.world = world
        self._on_bounds = on_bounds
        self._values: dict = {}
        self._memo: dict = {}
        self._functions: dict[str, Callable[[dict], Any]] = {
            "ImageCollection.load": self._load,
            "Collection.filter": lambda a: _Collection(tuple(s for s in a["collection"].scenes
                                                             if a["filter"](s))),
            "Collection.size": lambda a: len(a["collection"].scenes),
            "Collection.first": lambda a: self._first(a["collection"]),
            "Image.bandNames": self._band_names,
            "Filter.dateRangeContains": self._date_filter,
            "Filter.intersects": self._intersects,
            "Filter.not": lambda a: (lambda s, f=a["filter"]: not f(s)),
            "Filter.and": lambda a: (lambda s, fs=a["filters"]: all(f(s) for f in fs)),
            "Filter.or": lambda a: (lambda s, fs=a["filters"]: any(f(s) for f in fs)),
            "Filter.greaterThan": _compare(lambda v, r: v > r),
            "Filter.lessThan": _compare(lambda v, r: v < r),
            "Filter.greaterThanOrEquals": _compare(lambda v, r: v >= r),
            "Filter.lessThanOrEquals": _compare(lambda v, r: v <= r),
            "Filter.equals": _compare(lambda v, r: v == r),
            "Date": lambda a: _date_ms(a["value"]),
            "DateRange": lambda a: (_date_ms(a["start"]), _date_ms(a["end"])),
            "GeometryConstructors.Polygon": lambda a: _Geometry.from_coords(a["coordinates"], a.get("crs")),
            "GeometryConstructors.Rectangle": lambda a: _Geometry.from_coords(a["coordinates"], a.get("crs"),
                                                                              rectangle=True),
            "GeometryConstructors.Point": lambda a: _Geometry.from_coords(a["coordinates"], a.get("crs")),
            "Feature": lambda a: a["geometry"],
            "Projection": lambda a: a["crs"],
            "reduce.median": lambda a: self._composite(a["collection"], "median"),
            "ImageCollection.mosaic": lambda a: self._composite(a["collection"], "mosaic"),
            "Image.select": lambda a: a["input"].select_bands(a["bandSelectors"], a.get("newNames")),
            "Image.clip": self._clip,
            "Image.reproject": lambda a: a["image"],
            "Image.toUint16": lambda a: a["value"],
        }

    def evaluate(self, expression: Any):
        """Evaluate a ``{"result": id, "values": {...}}`` graph."""
        if not isinstance(expression, dict) or "result" not in expression:
            raise EvalError("Invalid expression: expected an object with 'result' and 'values'.")
        self._values = expression.get("values") or {}
        self._memo = {}
        return self._ref(expression["result"])

    def _ref(self, key: str):
        if key not in self._memo:
            if key not in self._values:
                raise EvalError(f"Invalid expression: unknown value reference {key!r}.")
            self._memo[key] = self._node(self._values[key])
        return self._memo[key]

    def _node(self, node: Any):
        if not isinstance(node, dict) or len(node) != 1:
            raise EvalError(f"Invalid expression node {node!r}.")
        (kind, body), = node.items()
        if kind == "constantValue":
            return body
        if kind == "valueReference":
            return self._ref(body)
        if kind == "arrayValue":
            return [self._node(v) for v in body.get("values", [])]
        if kind == "dictionaryValue":
            return {k: self._node(v) for k, v in body.get("values", {}).items()}
        if kind == "nullValue":
            return None
        if kind == "functionInvocationValue":
            name = body.get("functionName")
            fn = self._functions.get(name)
            if fn is None:
                raise EvalError(f"The emulator does not implement {name!r}.")
            args = {k: self._node(v) for k, v in (body.get("arguments") or {}).items()}
            try:
                return fn(args)
            except KeyError as e:
                raise EvalError(f"{name}: required argument {e.args[0]!r} is missing.") from None
        raise EvalError(f"Unsupported expression node kind {kind!r}.")

    def _load(self, a) -> _Collection:
        cid = a["id"]
        if cid not in COLLECTIONS:
            raise EvalError(f"ImageCollection.load: ImageCollection asset '{cid}' not found "
                            "(does not exist or caller does not have access).")
        first = COLLECTIONS[cid]
        return _Collection(tuple(self.world.scenes_between(first, self.world.today + dt.timedelta(days=1), first)))

    def _intersects(self, a):
        geom = a["rightValue"]
        if not isinstance(geom, _Geometry):
            raise EvalError("Filter.intersects: the emulator supports geometry right values only.")
        if self._on_bounds is not None:
            self._on_bounds(geom)
        # Every synthetic scene is global, except where the world has no coverage.
        covered = self.world.covers(geom.boxes)
        return lambda s: covered

    def _first(self, collection: _Collection):
        if not collection.scenes:
            return None  # Earth Engine: the first element of an empty collection is null
        return _Image(self.world, collection.scenes[:1], "mosaic", BANDS)

    @staticmethod
    def _band_names(a):
        image = a.get("image")
        if image is None:
            raise EvalError("Image.bandNames: Parameter 'image' is required.")
        return list(image.band_names())

    @staticmethod
    def _date_filter(a):
        if a.get("rightField") != "system:time_start":
            raise EvalError("Filter.dateRangeContains: only rightField='system:time_start' is supported.")
        start, end = a["leftValue"]
        return lambda s: start <= s.time_start_ms < end

    def _composite(self, collection: _Collection, how: str) -> _Image:
        # A composite of an empty collection has no bands, as in Earth Engine.
        bands = BANDS if collection.scenes else ()
        return _Image(self.world, collection.scenes, how, bands)

    @staticmethod
    def _clip(a) -> _Image:
        img, geom = a["input"], a["geometry"]
        return _Image(img.world, img.scenes, img.how, img.bands, img.names, geom)
