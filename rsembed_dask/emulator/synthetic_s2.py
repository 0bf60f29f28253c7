"""A deterministic synthetic Sentinel-2 SR world for the Earth Engine emulator.

The ground is a seeded land-cover map (:mod:`.land_cover`: water, forest,
cropland, urban, bare soil, snow, in patches from a few hundred metres to tens of
kilometres), each class with its own S2 spectrum, textured by a fine grain, a few
sinusoids per band and the ground's condition; crops green up and are harvested
with the seasons, snow comes in winter at high latitudes. The land cover changes
between years (:mod:`.land_cover`: clearings, growing towns, new reservoirs, burn
scars); a scene shows the land of its own year. Tests and the demo read the true
class map with :meth:`SyntheticS2World.land_cover` and the changes with
:meth:`SyntheticS2World.changed`.

Like Earth Engine, the world has no imagery before Sentinel-2 began
(:data:`S2_FIRST_DAY`, 2015-06-23; the surface-reflectance collections from
:data:`FIRST_DAY`, 2017-03-28) nor after its own ``today`` (a parameter; by default
the real date): a window there is an empty collection, whose composite has no bands.

Pixel values are a function of ground position (lon, lat), band and scene date
only, so the same place fetched at two scales or in two CRSs agrees, and two
worlds built with the same seed serve the same pixels. On a snapped grid a
pixel's value does not depend on the request around it either: a crop of a
larger request is bit-identical to a request for the crop alone (what request
coalescing relies on).

A scene is one global acquisition every :data:`REVISIT_DAYS` days with its own
``CLOUDY_PIXEL_PERCENTAGE``; clouds are bright blobs covering roughly that
fraction of the ground. ``no_coverage`` boxes are places no scene covers (open
ocean, say): a request there finds no scene, and their pixels are masked (0) in
a composite made for a larger region.

Examples
--------
>>> w = SyntheticS2World(seed=0)
>>> scenes = w.scenes_between("2022-06-01", "2022-07-01")
>>> len(scenes)
6
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyproj

from . import land_cover as lc
from .land_cover import LandCover, ground_metres

__all__ = ["SyntheticS2World", "Scene", "BANDS", "REVISIT_DAYS", "FIRST_DAY", "S2_FIRST_DAY"]

#: Band names of the synthetic collection (Sentinel-2 L2A naming).
BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12")
#: Sentinel-2A+B revisit at the equator.
REVISIT_DAYS = 5
#: First scene of COPERNICUS/S2_SR_HARMONIZED (and scene index 0).
FIRST_DAY = dt.date(2017, 3, 28)
#: First scene of Sentinel-2 at all (COPERNICUS/S2_HARMONIZED, top of atmosphere).
S2_FIRST_DAY = dt.date(2015, 6, 23)
# S2 SR reflectance of a cloud top, roughly.
_CLOUD_VALUE = 7200.0
# Wavelengths (m) of the texture: from a few pixels at 10 m to tens of km.
_WAVELENGTHS_M = (90.0, 260.0, 730.0, 2100.0, 6000.0, 17000.0)
# Each band's own texture (colour) uses these wavelengths, with this weight; the rest
# of the texture is the land cover's fine grain, shared by every band (brightness).
_BAND_WAVES = (2, 3, 4)
_BAND_TEXTURE = 0.25


@dataclass(frozen=True)
class Scene:
    """One acquisition: index, date, ``system:time_start`` (ms) and cloud cover (%)."""

    index: int
    date: dt.date
    time_start_ms: int
    cloudy_pct: float


@functools.lru_cache(maxsize=64)
def _to_lonlat(crs: str) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)


def _unit_hash(*parts) -> float:
    """A deterministic number in [0, 1) from ``parts``."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


class SyntheticS2World:
    """Deterministic Sentinel-2 SR scenes, as a function of position and date.

    Parameters
    ----------
    seed : int
        Selects the texture phases and the cloud cover of every scene.
    no_coverage : sequence of (minlon, minlat, maxlon, maxlat)
        Boxes that no scene covers.
    today : datetime.date or str, optional
        The world's "today": no scene is dated after it (default: the real date).
    """

    def __init__(self, seed: int = 0, no_coverage=(), today=None):
        self.seed = int(seed)
        self.today = _as_date(today) if today is not None else dt.date.today()
        self.no_coverage = tuple(_box(b) for b in no_coverage)
        rng = np.random.default_rng(self.seed)
        n = len(_WAVELENGTHS_M)
        self._theta = rng.uniform(0, np.pi, (len(BANDS), n))
        self._phase = rng.uniform(0, 2 * np.pi, (len(BANDS), n))
        self._amp = rng.uniform(60, 420, (len(BANDS), n))
        self._tex_w = self._amp / self._amp.sum(axis=1, keepdims=True)
        self.cover = LandCover(self.seed)

    def scene(self, index: int) -> Scene:
        """Scene number ``index`` (cached: every request filters the whole collection)."""
        return self._scene(index)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (one world per emulator, kept for its life)
    def _scene(self, index: int) -> Scene:
        date = FIRST_DAY + dt.timedelta(days=REVISIT_DAYS * index)
        t = dt.datetime(date.year, date.month, date.day, 10, 30, tzinfo=dt.timezone.utc)
        cloudy = round(100.0 * _unit_hash(self.seed, "cloud", index) ** 1.5, 3)
        return Scene(index, date, int(t.timestamp() * 1000), cloudy)

    def scenes_between(self, start, end, first_day: dt.date = FIRST_DAY) -> list[Scene]:
        """Scenes with ``start <= date < end`` (ISO dates or ``datetime.date``), none before
        ``first_day`` (the collection's first; default :data:`FIRST_DAY`) or after :attr:`today`."""
        start = max(_as_date(start), first_day)
        end = min(_as_date(end), self.today + dt.timedelta(days=1))
        first = -(-(start - FIRST_DAY).days // REVISIT_DAYS)
        stop = -(-(end - FIRST_DAY).days // REVISIT_DAYS)  # first index dated >= end
        return [self.scene(i) for i in range(first, stop)]

    def scenes_between_ms(self, start_ms: float, end_ms: float) -> list[Scene]:
        """Scenes with ``start_ms <= system:time_start < end_ms``."""
        start = dt.datetime.fromtimestamp(start_ms / 1000, dt.timezone.utc).date()
        end = dt.datetime.fromtimestamp(end_ms / 1000, dt.timezone.utc).date() + dt.timedelta(days=1)
        return [s for s in self.scenes_between(start, end) if start_ms <= s.time_start_ms < end_ms]

    def covers(self, boxes) -> bool:
        """Whether any part of the lon/lat ``boxes`` lies outside every :attr:`no_coverage` box."""
        return any(not any(_inside(b, hole) for hole in self.no_coverage) for b in boxes)

    def uncovered(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Where no scene covers the ground (inside a :attr:`no_coverage` box)."""
        out = np.zeros(np.shape(lon), bool)
        for x0, y0, x1, y1 in self.no_coverage:
            out |= (lon >= x0) & (lon <= x1) & (lat >= y0) & (lat <= y1)
        return out

    @staticmethod
    def pixel_centers_lonlat(crs: str, transform: tuple[float, ...], width: int, height: int):
        """Lon/lat of pixel centres of a grid (``transform`` = a, b, c, d, e, f as in Affine).

        The projection is evaluated exactly on a lattice every :data:`_COARSE` pixels
        and interpolated bilinearly in between (across 16 pixels the error is far below
        a millimetre). For a north-up grid snapped to its pixel size the lattice is
        anchored at absolute pixel indices (multiples of 16 of ``x / a`` and ``y / e``),
        so a pixel gets the same position whatever request it is part of.
        """
        a, b, c, d, e, f = transform
        col0, row0 = c / a, f / e
        snapped = (b == 0 and d == 0 and abs(col0 - round(col0)) < 1e-9
                   and abs(row0 - round(row0)) < 1e-9)
        rows = _lattice(height, round(row0) if snapped else None)
        cols = _lattice(width, round(col0) if snapped else None)
        cc, rr = np.meshgrid(cols + 0.5, rows + 0.5)
        lon_c, lat_c = _to_lonlat(crs).transform(c + a * cc + b * rr, f + d * cc + e * rr)
        return (_bilinear(np.asarray(lon_c), rows, cols, height, width),
                _bilinear(np.asarray(lat_c), rows, cols, height, width))

    def land_cover(self, lon, lat, date=None, year: int | None = None) -> np.ndarray:
        """The true land-cover class (uint8, :data:`.land_cover.CLASS_NAMES`) at each position.

        For tests and the demo only. The land of ``year`` (default: the year of ``date``, else
        :data:`.land_cover.BASE_YEAR`). With ``date`` (ISO date or ``datetime.date``), seasonal
        snow of that day is included (the snow a scene of that day shows).
        """
        lon, lat = np.asarray(lon, np.float64), np.asarray(lat, np.float64)
        if year is None and date is not None:
            year = _as_date(date).year
        metres = ground_metres(lon, lat)
        fields = self.cover.fields(lon, lat, metres)
        classes = self.cover.classify(lon, lat, fields, year, metres)
        if date is not None:
            doy = _as_date(date).timetuple().tm_yday
            score = self.cover.snow_score(fields["relief"], lat)
            thr = np.where(lat < 0, self.cover.snow_threshold(doy, True), self.cover.snow_threshold(doy))
            classes[(score > thr) & (classes != lc.WATER)] = lc.SNOW
        return classes

    def land_cover_grid(self, crs: str, transform: tuple[float, ...], width: int, height: int,
                        date=None, year: int | None = None) -> np.ndarray:
        """:meth:`land_cover` at the pixel centres of a grid ``(height, width)`` (as rendered)."""
        lon, lat = self.pixel_centers_lonlat(crs, transform, width, height)
        return self.land_cover(lon, lat, date, year)

    def changed(self, lon, lat, year_a: int, year_b: int) -> np.ndarray:
        """Ground truth for tests: where the land cover of ``year_a`` and ``year_b`` differ
        (bool; seasonal snow and clouds are not changes)."""
        return self.cover.changed(lon, lat, year_a, year_b)

    def changed_grid(self, crs: str, transform: tuple[float, ...], width: int, height: int,
                     year_a: int, year_b: int) -> np.ndarray:
        """:meth:`changed` at the pixel centres of a grid ``(height, width)``."""
        lon, lat = self.pixel_centers_lonlat(crs, transform, width, height)
        return self.changed(lon, lat, year_a, year_b)

    def base(self, lon: np.ndarray, lat: np.ndarray, bands, frame=None, year: int | None = None) -> np.ndarray:
        """Cloud-free, snow-free reflectance ``(len(bands), H, W)`` float32 with every crop
        out of season (the static part of every scene of ``year``)."""
        return self._surface(lon, lat, bands, frame, year=year).static

    def _texture(self, frame, k: int, waves=range(len(_WAVELENGTHS_M))) -> np.ndarray:
        """Sinusoids ``waves`` of band ``k``, weighted to [-1, 1] (float32)."""
        w = self._tex_w[k, list(waves)]
        w = w / w.sum()
        acc: Any = None  # the first wave's term, then the sum
        for wj, j in zip(w, waves):
            kx = np.cos(self._theta[k, j]) * 2 * np.pi / _WAVELENGTHS_M[j]
            ky = np.sin(self._theta[k, j]) * 2 * np.pi / _WAVELENGTHS_M[j]
            term = _sin32(frame, kx, ky, self._phase[k, j])
            term *= np.float32(wj)
            if acc is None:
                acc = term
            else:
                acc += term
        return acc

    def _surface(self, lon, lat, bands, frame=None, metres=None, year: int | None = None,
                 fields=None) -> _Surface:
        """Everything of a place that does not change from scene to scene within ``year``."""
        lon, lat = np.asarray(lon, np.float64), np.asarray(lat, np.float64)
        metres = metres if metres is not None else ground_metres(lon, lat)
        frame = frame or _frame(lon, lat, metres)
        fields = fields if fields is not None else self.cover.fields(lon, lat, metres)
        cls = self.cover.classify(lon, lat, fields, year, metres)
        # Brightness of the ground within a class (soil moisture, canopy density...).
        cond = (fields["settlement"] - 0.5).astype(np.float32)
        cond *= lc.CONDITION[cls]
        cond += np.float32(1.0)
        crop = cls == lc.CROPLAND
        urban = cls == lc.URBAN
        season = None
        if crop.any():
            brightness, amp = self.cover.crop_fields(metres[0][crop], metres[1][crop])
            cond[crop] *= brightness.astype(np.float32)
            season = np.zeros(cls.shape, np.float32)
            season[crop] = amp
        if urban.any():
            cond[urban] *= self.cover.urban_blocks(metres[0][urban], metres[1][urban]).astype(np.float32)
        texture = lc.TEXTURE[cls]
        # Mostly brightness (one fine texture for every band), a little colour (the band's own).
        shared = ((fields["grain"] - 0.5) * (4.0 * (1 - _BAND_TEXTURE))).astype(np.float32)
        shape = (len(bands),) + cls.shape
        static = np.empty(shape, np.float32)
        delta = np.empty(shape, np.float32) if season is not None else None
        for i, name in enumerate(bands):
            k = BANDS.index(name)
            t = self._texture(frame, k, _BAND_WAVES)
            t *= np.float32(_BAND_TEXTURE)
            t += shared
            t *= texture
            t += np.float32(1.0)
            t *= cond
            np.multiply(lc.SPECTRA[cls, k], t, out=static[i])
            if delta is not None:
                t *= season
                np.multiply(t, lc.CROP_GREEN[k] - lc.SPECTRA[lc.CROPLAND, k], out=delta[i])
        snow = None
        land = cls != lc.WATER
        score = self.cover.snow_score(fields["relief"], lat)
        if (score[land] > lc.SNOW_ABOVE - lc.SNOW_WINTER).any():
            snow = np.where(land, score, -np.inf)
        return _Surface(static, delta, snow, lat < 0)

    def cloud_mask(self, scene: Scene, lon: np.ndarray, lat: np.ndarray, frame=None) -> np.ndarray:
        """Where ``scene`` is cloudy: blobs covering about ``cloudy_pct`` % of the ground."""
        if scene.cloudy_pct <= 0:
            return np.zeros(np.shape(lon), bool)
        frame = frame or _frame(lon, lat)
        p1 = 2 * np.pi * _unit_hash(self.seed, "p1", scene.index)
        p2 = 2 * np.pi * _unit_hash(self.seed, "p2", scene.index)
        field = (_sin32(frame, 1 / 4100.0, 0.0, p1)
                 + _sin32(frame, 0.0, 1 / 3700.0, p2))  # in [-2, 2]
        # The sum of two uniform-phase sines is roughly triangular on [-2, 2].
        q = scene.cloudy_pct / 100.0
        thr = 2 - 2 * np.sqrt(2 * q) if q < 0.5 else -2 + 2 * np.sqrt(2 * (1 - q))
        return field > thr

    @staticmethod
    def gain(scene: Scene) -> float:
        """Seasonal brightness factor of a scene."""
        doy = scene.date.timetuple().tm_yday
        return 1.0 + 0.12 * np.sin(2 * np.pi * (doy - 80) / 365.25)

    @staticmethod
    def greenness(scene: Scene, southern: bool = False) -> float:
        """How far into its season a crop is in ``scene``: 0 (a bare field) .. 1 (the peak,
        mid-May in the north, mid-November in the south)."""
        doy = scene.date.timetuple().tm_yday
        peak = 311 if southern else 130
        return 0.5 + 0.5 * float(np.cos(2 * np.pi * (doy - peak) / 365.25))

    def scene_values(self, scene: Scene, lon, lat, bands, surface=None, frame=None, out=None) -> np.ndarray:
        """Reflectance of one scene ``(len(bands), H, W)`` float32 (crops in season, snow, clouds)."""
        frame = frame or _frame(lon, lat)
        if surface is None:
            surface = self._surface(lon, lat, bands, frame, year=scene.date.year)
        gain = np.float32(self.gain(scene))
        vals = np.multiply(surface.static, gain, out=out)
        if surface.crop_delta is not None:
            vals += surface.crop_delta * _by_hemisphere(surface.south, self.greenness(scene),
                                                        self.greenness(scene, True), gain)
        if surface.snow_score is not None:
            doy = scene.date.timetuple().tm_yday
            thr = _by_hemisphere(surface.south, self.cover.snow_threshold(doy),
                                 self.cover.snow_threshold(doy, True))
            snow = surface.snow_score > thr
            if snow.any():
                vals[:, snow] = (lc.SPECTRA[lc.SNOW, [BANDS.index(b) for b in bands]] * gain)[:, None]
        cloud = self.cloud_mask(scene, lon, lat, frame)
        if cloud.any():
            vals[:, cloud] = _CLOUD_VALUE
        return vals

    def composite(self, scenes, lon, lat, bands, how: str) -> np.ndarray:
        """``median`` or ``mosaic`` (last scene on top) of ``scenes`` as uint16 ``(C, H, W)``.

        Pixels outside the S2 latitude range come back 0 (masked), as Earth
        Engine fills masked pixels in a NUMPY_NDARRAY answer.
        """
        shape = (len(bands),) + np.shape(lon)
        if not scenes or not bands:
            return np.zeros(shape, np.uint16)
        metres = ground_metres(lon, lat)
        frame = _frame(lon, lat, metres)
        fields = self.cover.fields(lon, lat, metres)
        # Each scene shows the land of its own year.
        surfaces = {y: self._surface(lon, lat, bands, frame, metres, y, fields)
                    for y in sorted({s.date.year for s in scenes})}
        if how == "mosaic":
            last = scenes[-1]
            vals = self.scene_values(last, lon, lat, bands, surfaces[last.date.year], frame)
        elif how == "median":
            stack = np.empty((len(scenes),) + shape, np.float32)
            for i, s in enumerate(scenes):
                self.scene_values(s, lon, lat, bands, surfaces[s.date.year], frame, out=stack[i])
            vals = np.median(stack, axis=0, overwrite_input=True)
        else:
            raise ValueError(f"composite how={how!r}: expected 'median' or 'mosaic'")
        out = np.clip(np.rint(vals), 1, 10000).astype(np.uint16)
        out[:, (np.asarray(lat) > 84) | (np.asarray(lat) < -80)] = 0
        if self.no_coverage:
            out[:, self.uncovered(np.asarray(lon), np.asarray(lat))] = 0
        return out


@dataclass(frozen=True)
class _Surface:
    """The scene-independent part of a place: static reflectance ``(C, H, W)``, the change of
    crops at the peak of their season (or None), the snow score of land (or None) and
    where the ground is south of the equator."""

    static: np.ndarray
    crop_delta: np.ndarray | None
    snow_score: np.ndarray | None
    south: np.ndarray


def _by_hemisphere(south: np.ndarray, north_value: float, south_value: float, factor: float | np.floating = 1.0):
    """A scalar when every pixel is on one side of the equator, else a per-pixel array."""
    if not south.any():
        return np.float32(north_value * factor)
    if south.all():
        return np.float32(south_value * factor)
    return np.where(south, np.float32(south_value * factor), np.float32(north_value * factor))


# Pixel step of the exactly projected lattice in pixel_centers_lonlat.
_COARSE = 16
# Side (m) of the cells whose corner anchors the float32 phase of the pixels inside:
# offsets below 8 km keep float32 phases within 1e-4 rad of the float64 ones.
_ANCHOR_M = 8192.0


def _lattice(n: int, origin: int | None = None) -> np.ndarray:
    """Local indices of the exactly projected rows (or columns) of an ``n``-pixel axis.

    With ``origin`` (the absolute index of local pixel 0) the lattice sits on absolute
    multiples of :data:`_COARSE` and brackets every pixel (it may reach outside the grid).
    """
    if origin is None:
        return np.unique(np.r_[np.arange(0, n, _COARSE), n - 1]).astype(np.float64)
    first = (origin // _COARSE) * _COARSE - origin
    last = -(-(origin + n - 1) // _COARSE) * _COARSE - origin
    return np.arange(first, last + 1, _COARSE, dtype=np.float64)


def _bilinear(values: np.ndarray, rows: np.ndarray, cols: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear interpolation of ``values`` (on ``rows`` x ``cols``) to every pixel."""
    if len(rows) == 1 and len(cols) == 1:
        return np.full((height, width), values[0, 0])
    r, c = np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64)
    ri = np.clip(np.searchsorted(rows, r, "right") - 1, 0, max(len(rows) - 2, 0))
    ci = np.clip(np.searchsorted(cols, c, "right") - 1, 0, max(len(cols) - 2, 0))
    rj, cj = np.minimum(ri + 1, len(rows) - 1), np.minimum(ci + 1, len(cols) - 1)
    wr = np.where(rj > ri, (r - rows[ri]) / np.where(rj > ri, rows[rj] - rows[ri], 1), 0.0)[:, None]
    wc = np.where(cj > ci, (c - cols[ci]) / np.where(cj > ci, cols[cj] - cols[ci], 1), 0.0)[None, :]
    top = values[ri][:, ci] * (1 - wc) + values[ri][:, cj] * wc
    bottom = values[rj][:, ci] * (1 - wc) + values[rj][:, cj] * wc
    return top * (1 - wr) + bottom * wr


def _frame(lon, lat, metres=None):
    """Positions as float32 metres within :data:`_ANCHOR_M` cells, and the cells' indices.

    Each pixel is measured from the corner of its own cell (a function of its
    position only), so its value does not depend on the other pixels requested.
    ``metres``: :func:`.land_cover.ground_metres` of the positions, if known.
    """
    east, north = metres if metres is not None else _metres(lon, lat)
    ie, in_ = np.floor(east / _ANCHOR_M), np.floor(north / _ANCHOR_M)
    de = (east - ie * _ANCHOR_M).astype(np.float32)
    dn = (north - in_ * _ANCHOR_M).astype(np.float32)
    return de, dn, ie.astype(np.int64), in_.astype(np.int64)


def _sin32(frame, kx: float, ky: float, phase: float) -> np.ndarray:
    """``sin(kx*east + ky*north + phase)`` in float32, its anchor phases reduced in float64."""
    de, dn, ie, in_ = frame
    arg = de * np.float32(kx)
    if ky:
        arg += dn * np.float32(ky)
    if kx:
        arg += _anchor_phase(ie, kx, phase)
    if ky:
        arg += _anchor_phase(in_, ky, 0.0 if kx else phase)
    return np.sin(arg, out=arg)


def _anchor_phase(index: np.ndarray, k: float, phase: float) -> np.ndarray:
    """float32 ``(k * index * _ANCHOR_M + phase) mod 2*pi`` per pixel, via the few distinct cells."""
    lo = int(index.min()) if index.size else 0
    cells = np.arange(lo, (int(index.max()) if index.size else 0) + 1, dtype=np.float64)
    table = ((k * _ANCHOR_M * cells + phase) % (2 * np.pi)).astype(np.float32)
    return table[index - lo]


def _metres(lon, lat):
    """Local east/north metres (a continuous function of lon/lat)."""
    return ground_metres(lon, lat)


def _box(b) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in b)
    if not (-180 <= x0 <= x1 <= 180 and -90 <= y0 <= y1 <= 90):
        raise ValueError(f"no_coverage box {b!r}: expected (minlon, minlat, maxlon, maxlat) with "
                         "-180 <= minlon <= maxlon <= 180 and -90 <= minlat <= maxlat <= 90")
    return x0, y0, x1, y1


def _inside(b, hole) -> bool:
    return hole[0] <= b[0] and b[2] <= hole[2] and hole[1] <= b[1] and b[3] <= hole[3]


def _as_date(value) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])
