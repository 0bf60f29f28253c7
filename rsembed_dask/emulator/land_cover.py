"""Land cover of the synthetic world: a seeded class map as a function of ground position.

Six classes whose Sentinel-2 SR spectra differ the way real surfaces do: water
(dark, blue-ish), forest (dark green, bright in the near infrared), cropland
(bright, green in its season, bare soil out of it, in fields of a few hundred
metres), urban (grey, textured), bare soil (bright, reddish) and snow (high
latitudes, and seasonally in winter).

The map comes from three fields of multi-octave value noise on an absolute ground
lattice (sinusoidal metres: east = lon * cos(lat), north = lat, both in metres):
``relief`` (water in the lows, snow on the highs towards the poles), ``moisture``
(bare soil, cropland, forest as it rises) and ``settlement`` (urban where it
peaks). Octaves run from 28 km to 350 m, so patches span a few hundred metres to
tens of kilometres. Everything is float64 and per pixel: a class depends on the
pixel's lon/lat only, so crops of a larger request, two scales and two CRSs agree.

The world changes between years, deterministically (:meth:`LandCover.classify` with
``year``): towns grow (the settlement threshold falls a little every year), forest
is cleared to cropland, new reservoirs fill, and burn scars (bare ground) recover
to forest two years after the fire. Changes happen in blobs of about a kilometre
inside :data:`CHANGE_CELL_M` cells, each cell drawing one event (or none) and its
year from the seed. The map of :data:`BASE_YEAR` is the map without a year, so
everything built on the 2022 world is unchanged; :meth:`LandCover.changed` is the
ground truth of "changed between year A and year B".

The class map is for tests and the demo (:meth:`SyntheticS2World.land_cover`);
production code never sees it.

Examples
--------
>>> lc = LandCover(seed=0)
>>> lon, lat = np.array([3.0, 3.1]), np.array([31.0, 31.2])
>>> lc.classes(lon, lat).dtype
dtype('uint8')
>>> CLASS_NAMES[WATER], CLASS_NAMES[SNOW]
('water', 'snow')
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["LandCover", "ground_metres", "N_CLASSES", "CLASS_NAMES", "CLASS_COLOURS", "BASE_YEAR",
           "CHANGE_CELL_M", "EVENTS",
           "WATER", "FOREST", "CROPLAND", "URBAN", "BARE", "SNOW",
           "SPECTRA", "CROP_GREEN", "TEXTURE", "CONDITION", "SNOW_ABOVE", "SNOW_WINTER"]

WATER, FOREST, CROPLAND, URBAN, BARE, SNOW = range(6)
N_CLASSES = 6
#: Class names, indexed by class value.
CLASS_NAMES = ("water", "forest", "cropland", "urban", "bare soil", "snow")
#: Map colours (RGB, 0..255) of the classes, for class-map pictures.
CLASS_COLOURS = np.array([(40, 90, 190), (20, 100, 40), (150, 200, 80), (200, 40, 50),
                          (215, 170, 110), (240, 240, 245)], np.uint8)

# S2 SR reflectance (x 10000) per class, in synthetic_s2.BANDS order:
#              B1    B2    B3    B4    B5    B6    B7    B8   B8A   B9   B11   B12
_SPECTRA = [[ 900,  800,  700,  400,  330,  280,  260,  230,  210,   90,  120,   90],  # water
            [ 300,  350,  600,  330,  900, 2300, 2800, 3000, 3100,  900, 1500,  700],  # forest
            [1000, 1100, 1400, 1700, 2000, 2300, 2450, 2600, 2700,  900, 3000, 2300],  # cropland, bare field
            [1300, 1250, 1300, 1350, 1450, 1600, 1700, 1800, 1850,  600, 2100, 1900],  # urban
            [1300, 1500, 2100, 2800, 3100, 3300, 3400, 3500, 3600, 1000, 4200, 3500],  # bare soil
            [8800, 8600, 8400, 8200, 7900, 7600, 7400, 7200, 7000, 3000,  700,  500]]  # snow
#: Reflectance ``(N_CLASSES, 12)`` float32 of each class (cropland: a bare field, out of season).
SPECTRA = np.array(_SPECTRA, np.float32)
#: Reflectance ``(12,)`` of a crop at the peak of its season.
CROP_GREEN = np.array([450, 600, 1200, 700, 1500, 3200, 3900, 4200, 4300, 1300, 2300, 1200], np.float32)
#: How strongly each class carries the world's fine texture (water is smooth, towns are not).
TEXTURE = np.array([0.12, 0.3, 0.35, 0.45, 0.45, 0.08], np.float32)
#: How strongly each class's brightness follows the ground's condition (moisture, density).
CONDITION = np.array([0.15, 0.8, 0.6, 0.3, 0.8, 0.1], np.float32)

# Metres per degree of latitude (mean); longitude scales by cos(lat).
M_PER_DEG = 111_195.0

# Octaves of value noise (lattice cell side, m); each octave's lattice is turned by its
# own angle so that cells do not line up into a visible grid. The fields share the
# lattices (not the node values) and weigh the octaves differently.
_OCTAVES_M = (28_000.0, 9_500.0, 3_200.0, 1_100.0, 350.0, 120.0, 40.0)
_FIELDS = {"relief": (1.0, 0.55, 0.3, 0.16, 0.08, 0.0, 0.0),
           "moisture": (1.0, 0.6, 0.3, 0.14, 0.0, 0.0, 0.0),
           "settlement": (0.0, 0.0, 1.0, 0.6, 0.3, 0.0, 0.0),
           "grain": (0.0, 0.0, 0.0, 0.0, 0.3, 0.4, 0.3)}
# Thresholds: water below the relief's 13 % quantile, bare soil below the moisture's
# 35 %, forest above its 67 %, towns above the settlement's 92 % (roughly; worldwide).
_WATER_BELOW = 0.36
_BARE_BELOW = 0.45
_FOREST_ABOVE = 0.56
_URBAN_ABOVE = 0.70
# Snow: relief + (|lat| - 60) / 12 above this (permanent) or, in deep winter, above
# this minus SNOW_WINTER (seasonal).
SNOW_ABOVE = 0.95
SNOW_WINTER = 0.9
# Crop fields: cells of this size (m) on a lattice turned by a per-seed angle.
_FIELD_M = (420.0, 260.0)
# Urban blocks (m): buildings, yards and streets.
_BLOCK_M = 30.0
#: The year whose map :meth:`LandCover.classify` draws when no year is given.
BASE_YEAR = 2022
# Towns grow: the settlement threshold of urban falls this much per year (rises before BASE_YEAR).
_TOWN_GROWTH = 0.003
#: Side (m) of the cells of the change events (one event, or none, per cell).
CHANGE_CELL_M = 2400.0
#: Change events and the share of cells that draw each: forest cleared to cropland, a new
#: reservoir (the blob turns to water), a burn scar (forest bare for two years, then forest).
EVENTS = (("clearing", 0.14), ("reservoir", 0.03), ("burn", 0.07))
# Years of the events. Clearings: any year (those up to BASE_YEAR are cropland in its map,
# forest before). Reservoirs fill after BASE_YEAR; fires leave BASE_YEAR's map unburnt.
_CLEARING_YEARS = tuple(range(2016, 2027))
_RESERVOIR_YEARS = (2023, 2024, 2025, 2026)
_BURN_YEARS = (2016, 2017, 2018, 2019, 2023, 2024, 2025, 2026)
_BURN_LASTS = 2
# Table lookups instead of per-pixel hashes while the lattice box is at most this many
# nodes per pixel.
_TABLE_PER_PIXEL = 2

_GOLDEN = 0x9E3779B97F4A7C15
_M2 = 0xC2B2AE3D27D4EB4F


def _key(*parts) -> int:
    """A 64-bit integer from ``parts`` (stable across runs and platforms)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


def ground_metres(lon, lat) -> tuple[np.ndarray, np.ndarray]:
    """East/north metres of a fixed sinusoidal projection (float64, continuous in lon/lat)."""
    lon = np.asarray(lon, np.float64)
    lat = np.asarray(lat, np.float64)
    return lon * (M_PER_DEG * np.cos(np.radians(lat))), lat * M_PER_DEG


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash01(i: np.ndarray, j: np.ndarray, salt: int) -> np.ndarray:
    """A number in [0, 1) (float64) per lattice node ``(i, j)`` (int64), for ``salt``."""
    with np.errstate(over="ignore"):
        x = (i.astype(np.uint64) * np.uint64(_GOLDEN) + j.astype(np.uint64) * np.uint64(_M2)
             + np.uint64(salt & 0xFFFFFFFFFFFFFFFF))
        return (_mix(x) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


class _Lattice:
    """Where points fall on a square lattice of ``cell_m`` turned by ``angle``: the flat
    index of their cell's first node in a table of the nodes around them, and the
    smoothed fractions across the cell (float64)."""

    def __init__(self, east: np.ndarray, north: np.ndarray, cell_m: float, angle: float):
        ca, sa = np.cos(angle) / cell_m, np.sin(angle) / cell_m
        u = east * ca
        u -= north * sa
        v = east * sa
        v += north * ca
        fi, fj = np.floor(u), np.floor(v)
        u -= fi
        v -= fj
        self.su = u * u * (3.0 - 2.0 * u)
        self.sv = v * v * (3.0 - 2.0 * v)
        self.i, self.j = fi.astype(np.int64), fj.astype(np.int64)
        self.i0 = int(self.i.min()) if self.i.size else 0
        self.j0 = int(self.j.min()) if self.j.size else 0
        self.ni = (int(self.i.max()) - self.i0 + 2) if self.i.size else 1
        self.nj = (int(self.j.max()) - self.j0 + 2) if self.j.size else 1
        # A table of the nodes when their box is small (always, but for sparse points
        # spread far apart); else hashes per point.
        self.k = None
        if self.ni * self.nj <= _TABLE_PER_PIXEL * self.i.size + 64:
            self.k = (self.i - self.i0) * self.nj + (self.j - self.j0)

    def noise(self, salt: int) -> np.ndarray:
        """Smooth value noise in [0, 1] of the nodes hashed with ``salt``."""
        if self.k is not None:
            table = _hash01(np.arange(self.i0, self.i0 + self.ni, dtype=np.int64)[:, None],
                            np.arange(self.j0, self.j0 + self.nj, dtype=np.int64)[None, :], salt).ravel()
            k, nj = self.k, self.nj
            v00, v01, v10, v11 = table[k], table[k + 1], table[k + nj], table[k + nj + 1]
        else:
            i, j = self.i, self.j
            v00, v01 = _hash01(i, j, salt), _hash01(i, j + 1, salt)
            v10, v11 = _hash01(i + 1, j, salt), _hash01(i + 1, j + 1, salt)
        v01 -= v00
        v01 *= self.sv
        v00 += v01  # top edge
        v11 -= v10
        v11 *= self.sv
        v10 += v11  # bottom edge
        v10 -= v00
        v10 *= self.su
        v00 += v10
        return v00


class LandCover:
    """The seeded land-cover map of a :class:`~.synthetic_s2.SyntheticS2World`.

    Parameters
    ----------
    seed : int
        Selects the noise lattices (the same seed, the same map).
    """

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self._field_angle = _key(self.seed, "field angle") / 2**64 * np.pi / 2

    def _salt(self, *parts) -> int:
        return _key(self.seed, *parts)

    def fields(self, lon, lat, metres=None) -> dict[str, np.ndarray]:
        """The ``relief``, ``moisture``, ``settlement`` and ``grain`` (fine texture) fields
        (float64, about 0..1); ``metres``: :func:`ground_metres` of the positions, if known."""
        east, north = metres if metres is not None else ground_metres(lon, lat)
        out = {name: np.zeros(np.shape(east)) for name in _FIELDS}
        for o, cell in enumerate(_OCTAVES_M):
            lattice = _Lattice(east, north, cell, _key(self.seed, "angle", cell) / 2**64 * np.pi / 2)
            for name, weights in _FIELDS.items():
                if weights[o]:
                    n = lattice.noise(self._salt(name, cell))
                    n *= weights[o] / sum(weights)
                    out[name] += n
        return out

    @staticmethod
    def snow_score(relief: np.ndarray, lat) -> np.ndarray:
        """Relief raised towards the poles: permanent snow above :data:`SNOW_ABOVE`."""
        return relief + (np.abs(np.asarray(lat, np.float64)) - 60.0) / 12.0

    @staticmethod
    def snow_threshold(doy: int, southern: bool = False) -> float:
        """Snow-score threshold on day of year ``doy``: lowest in mid-January (mid-July south)."""
        peak = 196 if southern else 15
        winter = max(0.0, float(np.cos(2 * np.pi * (doy - peak) / 365.25)))
        return SNOW_ABOVE - SNOW_WINTER * winter ** 2

    def classify(self, lon, lat, fields: dict | None = None, year: int | None = None,
                 metres=None) -> np.ndarray:
        """Class per position (uint8, see :data:`CLASS_NAMES`) in ``year`` (default
        :data:`BASE_YEAR`); ``metres``: :func:`ground_metres` of the positions, if known."""
        f = fields if fields is not None else self.fields(lon, lat, metres)
        year = BASE_YEAR if year is None else int(year)
        relief, moisture, settle = f["relief"], f["moisture"], f["settlement"]
        out = np.full(np.shape(relief), CROPLAND, np.uint8)
        out[moisture < _BARE_BELOW] = BARE
        out[moisture > _FOREST_ABOVE] = FOREST
        out[settle > _URBAN_ABOVE - _TOWN_GROWTH * (year - BASE_YEAR)] = URBAN
        snow = self.snow_score(relief, lat) > SNOW_ABOVE
        out[snow] = SNOW
        out[relief < _WATER_BELOW] = WATER
        if year != BASE_YEAR and out.size:
            self._events(out, year, snow, f["grain"], metres if metres is not None else ground_metres(lon, lat))
        return out

    def _events(self, out: np.ndarray, year: int, snow: np.ndarray, grain: np.ndarray, metres) -> None:
        """Apply the change events of ``year`` to ``out`` (the classes of that year before events)."""
        kind, when, blob = self.event_cells(metres[0], metres[1], grain)
        before = year < BASE_YEAR
        # Clearings up to BASE_YEAR: that year's cropland was forest before; later: forest goes.
        c = blob & (kind == 1)
        if before:
            out[c & (when <= BASE_YEAR) & (year < when) & (out == CROPLAND)] = FOREST
        else:
            out[c & (when > BASE_YEAR) & (year >= when) & (out == FOREST)] = CROPLAND
        if not before:
            out[blob & (kind == 2) & (year >= when) & ~snow] = WATER
        burnt = blob & (kind == 3) & (year >= when) & (year < when + _BURN_LASTS) & (out == FOREST)
        out[burnt] = BARE

    def event_cells(self, east, north, grain=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per position (ground metres): its cell's event (0 none, 1 clearing, 2 reservoir,
        3 burn; see :data:`EVENTS`), the event's year, and whether the position lies in the
        event's blob (a disc of 30-45 % of the cell's side, its edge roughened by ``grain``)."""
        east, north = np.asarray(east, np.float64), np.asarray(north, np.float64)
        a = self._field_angle + 0.3
        u = (east * np.cos(a) - north * np.sin(a)) / CHANGE_CELL_M
        v = (east * np.sin(a) + north * np.cos(a)) / CHANGE_CELL_M
        fi, fj = np.floor(u), np.floor(v)
        i, j = fi.astype(np.int64), fj.astype(np.int64)
        h = _hash01(i, j, self._salt("event"))
        kind = np.zeros(np.shape(east), np.uint8)
        edge = 0.0
        for k, (_, share) in enumerate(EVENTS, start=1):
            kind[(h >= edge) & (h < edge + share)] = k
            edge += share
        hy = _hash01(i, j, self._salt("event year"))
        when = np.zeros(np.shape(east), np.int64)
        for k, years in ((1, _CLEARING_YEARS), (2, _RESERVOIR_YEARS), (3, _BURN_YEARS)):
            sel = kind == k
            when[sel] = np.asarray(years)[(hy[sel] * len(years)).astype(np.int64)]
        cu = 0.4 + 0.2 * _hash01(i, j, self._salt("event u"))
        cv = 0.4 + 0.2 * _hash01(i, j, self._salt("event v"))
        radius = 0.3 + 0.15 * _hash01(i, j, self._salt("event radius"))
        d = np.hypot(u - fi - cu, v - fj - cv)
        if grain is not None:
            d = d + 0.25 * (np.asarray(grain) - 0.5)
        return kind, when, (kind > 0) & (d < radius)

    def classes(self, lon, lat, year: int | None = None) -> np.ndarray:
        """Class per position (uint8): :meth:`classify` of fresh fields, in ``year``."""
        return self.classify(lon, lat, year=year)

    def changed(self, lon, lat, year_a: int, year_b: int) -> np.ndarray:
        """Ground truth: where the class of ``year_a`` differs from that of ``year_b`` (bool).

        Examples
        --------
        >>> lc = LandCover(0)
        >>> lon, lat = np.meshgrid(np.linspace(3, 3.3, 300), np.linspace(31, 31.3, 300))
        >>> bool(lc.changed(lon, lat, 2019, 2024).any()), bool(lc.changed(lon, lat, 2022, 2022).any())
        (True, False)
        """
        lon, lat = np.asarray(lon, np.float64), np.asarray(lat, np.float64)
        metres = ground_metres(lon, lat)
        fields = self.fields(lon, lat, metres)
        return (self.classify(lon, lat, fields, int(year_a), metres)
                != self.classify(lon, lat, fields, int(year_b), metres))

    def crop_fields(self, east, north) -> tuple[np.ndarray, np.ndarray]:
        """Per crop field (cells of :data:`_FIELD_M`) at ground metres ``east``, ``north``:
        brightness factor and season amplitude."""
        a = self._field_angle
        u = (east * np.cos(a) - north * np.sin(a)) / _FIELD_M[0]
        v = (east * np.sin(a) + north * np.cos(a)) / _FIELD_M[1]
        i, j = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        h1 = _hash01(i, j, self._salt("field brightness"))
        h2 = _hash01(i, j, self._salt("field season"))
        brightness = 0.8 + 0.4 * h1
        season = np.where(h2 < 0.15, 0.0, 0.35 + 0.65 * h2)  # 15 % fallow
        return brightness, season

    def urban_blocks(self, east, north) -> np.ndarray:
        """Per urban block (cells of :data:`_BLOCK_M`) at ground metres ``east``, ``north``:
        a brightness factor (roofs, yards, streets)."""
        i = np.floor(east / _BLOCK_M).astype(np.int64)
        j = np.floor(north / _BLOCK_M).astype(np.int64)
        h = _hash01(i, j, self._salt("urban blocks"))
        street = ((i % 6) == 0) | ((j % 5) == 0)
        return np.where(street, 0.55, 0.7 + 0.8 * h)
