"""Frozen, validated specs: what to fetch, where, when, and how to embed it.

Every spec validates at construction and raises :class:`~rsembed_dask.errors.SpecError`
naming the field, the value and what is allowed. Specs round-trip through JSON
(``to_json`` / ``from_json``) and tokenize stably for Dask graph keys.

Examples
--------
>>> from rsembed_dask.specs import PointBuffer, TemporalSpec, SensorSpec
>>> PointBuffer(lon=3.0, lat=31.2, buffer_m=1120)
PointBuffer(lon=3.0, lat=31.2, buffer_m=1120.0)
>>> TemporalSpec.year(2022)
TemporalSpec(start='2022-01-01', end='2023-01-01')
>>> [w.start for w in TemporalSpec.years(2019, 2021)]
['2019-01-01', '2020-01-01', '2021-01-01']
>>> SensorSpec().bands
('B4', 'B3', 'B2')
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from .errors import SpecError
from ._validate import choice, iso_date, integer, number, set_field, SpecBase

__all__ = [
    "PointBuffer",
    "BBox",
    "TemporalSpec",
    "TemporalWindows",
    "SensorSpec",
    "OutputSpec",
    "ModelSpec",
    "CampaignSpec",
    "DEFAULT_MODEL_ID",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_SCALES",
    "MAX_AUTO_BATCH",
    "auto_batch_size",
    "env_defaults",
]

DEFAULT_MODEL_ID = "MVRL/scalemae-vitlarge-800"
DEFAULT_IMAGE_SIZE = 224
#: Pixel sizes in metres of a campaign when none are given.
DEFAULT_SCALES: tuple[float, ...] = (10.0, 20.0, 40.0)
DEFAULT_FETCH_WORKERS = 8
#: Images per forward when ``ModelSpec.batch_size`` is None ("auto"). On the CPU 8, rs-embed's
#: default: larger batches are no faster there (test-small forward on 2 cores: 19-21 images/s
#: at batch 8, 19.5 at 16, 18 at 32 and 64). On CUDA the embedder fits the batch to the free
#: memory (:func:`auto_batch_size`); 32 is what it uses where it cannot ask the device.
DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 32}
#: The largest batch "auto" picks on a GPU: a ViT-L/16 forward at 224 px already keeps an
#: H100-class GPU busy at 128-256 images (more only adds latency and memory).
MAX_AUTO_BATCH = 256
#: Share of the free device memory "auto" may fill with activations; the rest absorbs the
#: allocator's fragmentation and what the estimate leaves out (cuBLAS workspaces, the
#: pooled outputs, a second embed call preprocessing meanwhile).
AUTO_BATCH_MEMORY_FRACTION = 0.5
# Sentinel-2's coarsest band is 60 m; beyond 10 km per pixel a "patch" is a continent.
MAX_SCALE_M = 10_000.0


@dataclass(frozen=True)
class PointBuffer(SpecBase):
    """A square footprint of half-side ``buffer_m`` metres around a lon/lat point.

    The square is laid out in the point's local UTM zone, so ``buffer_m`` is
    true ground distance.
    """

    lon: float
    lat: float
    buffer_m: float

    def __post_init__(self):
        set_field(self, "lon", number("PointBuffer.lon", self.lon, lo=-180, hi=180))
        set_field(self, "lat", number("PointBuffer.lat", self.lat, lo=-90, hi=90))
        set_field(self, "buffer_m", number("PointBuffer.buffer_m", self.buffer_m, lo=0, lo_open=True,
                                       hi=1_000_000))

    @property
    def centroid(self) -> tuple[float, float]:
        return self.lon, self.lat


@dataclass(frozen=True)
class BBox(SpecBase):
    """A lon/lat bounding box (EPSG:4326), ``minlon < maxlon``, ``minlat < maxlat``.

    Boxes crossing the antimeridian are not supported: split them in two.
    """

    minlon: float
    minlat: float
    maxlon: float
    maxlat: float

    def __post_init__(self):
        for name, lo, hi in (("minlon", -180, 180), ("minlat", -90, 90),
                             ("maxlon", -180, 180), ("maxlat", -90, 90)):
            set_field(self, name, number(f"BBox.{name}", getattr(self, name), lo=lo, hi=hi))
        if not self.maxlon > self.minlon:
            raise SpecError("BBox.maxlon", self.maxlon,
                            f"a longitude greater than minlon={self.minlon!r} "
                            "(antimeridian-crossing boxes are not supported)")
        if not self.maxlat > self.minlat:
            raise SpecError("BBox.maxlat", self.maxlat, f"a latitude greater than minlat={self.minlat!r}")

    @property
    def centroid(self) -> tuple[float, float]:
        return (self.minlon + self.maxlon) / 2, (self.minlat + self.maxlat) / 2


@dataclass(frozen=True)
class TemporalSpec(SpecBase):
    """A date window ``[start, end)``; ``end`` is exclusive, as in Earth Engine's filterDate."""

    start: str
    end: str

    def __post_init__(self):
        set_field(self, "start", iso_date("TemporalSpec.start", self.start))
        set_field(self, "end", iso_date("TemporalSpec.end", self.end))
        if not self.end > self.start:
            raise SpecError("TemporalSpec.end", self.end,
                            f"a date after start={self.start!r} (the window is [start, end))")

    @property
    def label(self) -> str:
        """``start..end`` (end exclusive), for messages and reports."""
        return f"{self.start}..{self.end}"

    @classmethod
    def range(cls, start: str | _dt.date, end: str | _dt.date) -> TemporalSpec:
        """Window from ``start`` (inclusive) to ``end`` (exclusive)."""
        return cls(iso_date("TemporalSpec.start", start), iso_date("TemporalSpec.end", end))

    @classmethod
    def year(cls, y: int) -> TemporalSpec:
        """The calendar year ``y``."""
        y = integer("TemporalSpec.year", y, lo=1984, hi=2100)
        return cls(f"{y:04d}-01-01", f"{y + 1:04d}-01-01")

    @classmethod
    def years(cls, first: int, last: int) -> TemporalWindows:
        """One window per calendar year, ``first`` to ``last`` inclusive.

        Examples
        --------
        >>> len(TemporalSpec.years(2019, 2024))
        6
        """
        first = integer("TemporalSpec.years first", first, lo=1984, hi=2100)
        last = integer("TemporalSpec.years last", last, lo=first, hi=2100)
        return TemporalWindows(tuple(cls.year(y) for y in range(first, last + 1)))

    @classmethod
    def seasons(cls, year: int, months_per_window: int = 3, start_month: int = 1) -> TemporalWindows:
        """Twelve months from ``start_month`` of ``year`` cut into windows of ``months_per_window``
        (a divisor of 12): quarters by default; ``start_month=12`` gives DJF, MAM, JJA, SON.

        Examples
        --------
        >>> [(w.start, w.end) for w in TemporalSpec.seasons(2023, 6, start_month=7)]
        [('2023-07-01', '2024-01-01'), ('2024-01-01', '2024-07-01')]
        """
        year = integer("TemporalSpec.seasons year", year, lo=1984, hi=2100)
        n = integer("TemporalSpec.seasons months_per_window", months_per_window, lo=1, hi=12)
        if 12 % n:
            raise SpecError("TemporalSpec.seasons months_per_window", months_per_window,
                            "a divisor of 12 (1, 2, 3, 4, 6 or 12): the windows tile a year")
        m0 = integer("TemporalSpec.seasons start_month", start_month, lo=1, hi=12)
        return cls.every(_dt.date(year, m0, 1), _add_months(_dt.date(year, m0, 1), 12), months=n)

    @classmethod
    def every(cls, start: str | _dt.date, end: str | _dt.date, *, months: int | None = None,
              days: int | None = None) -> TemporalWindows:
        """Back-to-back windows of ``months`` (or ``days``) from ``start`` until ``end`` (exclusive);
        the last window is cut short at ``end`` if the steps do not divide the span.

        Examples
        --------
        >>> [w.end for w in TemporalSpec.every("2023-01-01", "2023-02-01", days=10)]
        ['2023-01-11', '2023-01-21', '2023-01-31', '2023-02-01']
        """
        if (months is None) == (days is None):
            raise SpecError("TemporalSpec.every", {"months": months, "days": days},
                            "exactly one of months= or days=")
        span = cls.range(start, end)
        first, stop = _dt.date.fromisoformat(span.start), _dt.date.fromisoformat(span.end)
        if months is not None:
            step_m = integer("TemporalSpec.every months", months, lo=1, hi=1200)
        else:
            step_d = integer("TemporalSpec.every days", days, lo=1, hi=36_600)
        out, a, k = [], first, 0
        while a < stop:
            k += 1
            b = _add_months(first, step_m * k) if months is not None else a + _dt.timedelta(days=step_d)
            b = min(b, stop)
            out.append(cls.range(a, b))
            a = b
        return TemporalWindows(tuple(out))


def _add_months(d: _dt.date, n: int) -> _dt.date:
    """``d`` moved ``n`` months on (the day clipped to the month's length)."""
    y, m = divmod(d.month - 1 + n, 12)
    y += d.year
    m += 1
    last = (_dt.date(y + m // 12, m % 12 + 1, 1) - _dt.timedelta(days=1)).day
    return _dt.date(y, m, min(d.day, last))


@dataclass(frozen=True)
class TemporalWindows(SpecBase):
    """A checked sequence of date windows: non-empty, ordered by start, and without overlap
    unless ``allow_overlap`` (then starts must still differ).

    Build it from :meth:`TemporalSpec.years`, :meth:`TemporalSpec.seasons`,
    :meth:`TemporalSpec.every`, or :meth:`of` (a window or a list of windows).

    Raises
    ------
    SpecError
        Naming the window (its number and dates) and what is wrong with it.

    Examples
    --------
    >>> w = TemporalWindows.of([TemporalSpec.year(2019), TemporalSpec.year(2024)])
    >>> len(w), w[1].start
    (2, '2024-01-01')
    >>> TemporalWindows.of([TemporalSpec.year(2024), TemporalSpec.year(2019)])
    Traceback (most recent call last):
    ...
    rsembed_dask.errors.SpecError: windows[1]='2019-01-01..2020-01-01' is invalid: expected a window starting after windows[0] '2024-01-01..2025-01-01' (windows in order of start)
    """

    windows: tuple[TemporalSpec, ...]
    allow_overlap: bool = False

    def __post_init__(self):
        ws = self.windows
        if isinstance(ws, (TemporalSpec, str)) or not isinstance(ws, (list, tuple)):
            raise SpecError("windows", ws, "a sequence of TemporalSpec")
        ws = tuple(TemporalSpec.from_dict(w) if isinstance(w, Mapping) else w for w in ws)
        if not ws:
            raise SpecError("windows", [], "at least one window")
        if not isinstance(self.allow_overlap, bool):
            raise SpecError("allow_overlap", self.allow_overlap, "True or False")
        for i, w in enumerate(ws):
            if not isinstance(w, TemporalSpec):
                raise SpecError(f"windows[{i}]", w, "a TemporalSpec")
            if i == 0:
                continue
            prev = ws[i - 1]
            if not w.start > prev.start:
                raise SpecError(f"windows[{i}]", w.label, f"a window starting after windows[{i - 1}] "
                                f"{prev.label!r} (windows in order of start)")
            if w.start < prev.end and not self.allow_overlap:
                raise SpecError(f"windows[{i}]", w.label, f"a window starting on or after {prev.end} where "
                                f"windows[{i - 1}] {prev.label!r} ends (windows do not overlap; "
                                "allow_overlap=True or --allow-overlap permits it)")
        set_field(self, "windows", ws)

    @classmethod
    def of(cls, temporal: Any, allow_overlap: bool = False) -> TemporalWindows:
        """Windows from a :class:`TemporalSpec`, a sequence of them, or :class:`TemporalWindows`."""
        if isinstance(temporal, TemporalWindows):
            return cls(temporal.windows, allow_overlap or temporal.allow_overlap)
        if isinstance(temporal, TemporalSpec):
            return cls((temporal,), allow_overlap)
        if isinstance(temporal, (list, tuple)):
            return cls(tuple(temporal), allow_overlap)
        raise SpecError("temporal", temporal, "a TemporalSpec, a sequence of TemporalSpec or TemporalWindows "
                        "(TemporalSpec.range, .year, .years, .seasons, .every)")

    def __len__(self) -> int:
        return len(self.windows)

    def __iter__(self):
        return iter(self.windows)

    def __getitem__(self, i: int) -> TemporalSpec:
        return self.windows[i]


@dataclass(frozen=True)
class SensorSpec(SpecBase):
    """Which collection, bands, pixel size and compositing to fetch.

    Defaults follow rs-embed's ``scalemae_rgb`` card: Sentinel-2 SR harmonized,
    RGB as (B4, B3, B2), 10 m, scenes under 30 % cloud, median composite.
    """

    collection: str = "COPERNICUS/S2_SR_HARMONIZED"
    bands: tuple[str, ...] = ("B4", "B3", "B2")
    scale_m: float = 10.0
    cloudy_pct: float = 30.0
    composite: Literal["median", "mosaic"] = "median"
    cloud_property: str = "CLOUDY_PIXEL_PERCENTAGE"

    COMPOSITES: ClassVar[tuple[str, ...]] = ("median", "mosaic")

    def __post_init__(self):
        if not isinstance(self.collection, str) or not self.collection.strip():
            raise SpecError("SensorSpec.collection", self.collection, "a non-empty collection id")
        bands = self.bands
        if isinstance(bands, str) or not isinstance(bands, (list, tuple)) or not bands:
            raise SpecError("SensorSpec.bands", bands, "a non-empty sequence of band names")
        if not all(isinstance(b, str) and b for b in bands) or len(set(bands)) != len(bands):
            raise SpecError("SensorSpec.bands", bands, "distinct, non-empty band names")
        set_field(self, "bands", tuple(bands))
        set_field(self, "scale_m", number("SensorSpec.scale_m", self.scale_m, lo=0, lo_open=True,
                                      hi=MAX_SCALE_M))
        set_field(self, "cloudy_pct", number("SensorSpec.cloudy_pct", self.cloudy_pct, lo=0, hi=100))
        choice("SensorSpec.composite", self.composite, self.COMPOSITES)
        if not isinstance(self.cloud_property, str) or not self.cloud_property:
            raise SpecError("SensorSpec.cloud_property", self.cloud_property, "a property name")


@dataclass(frozen=True)
class OutputSpec(SpecBase):
    """Pooled vectors ``[D]`` or token grids ``[D, h, w]``, stored as float32 or int8.

    Use the constructors :meth:`pooled` and :meth:`grid`.

    Parameters
    ----------
    mode : str
        ``"pooled"`` or ``"grid"`` (token grids with pooled vectors alongside).
    pooling : str
        ``"mean"`` or ``"max"`` of the patch tokens.
    dtype : str
        Storage of embeddings in the cube: ``"float32"`` (default) or ``"int8"``
        (symmetric per-vector quantisation with a float32 scale per vector, see
        :mod:`rsembed_dask.quantize`; ``open_cube`` dequantises). The default is left
        out of :meth:`to_dict`, so specs (and spec hashes) of float32 cubes are those
        of cubes written before this field existed.
    """

    mode: Literal["pooled", "grid"] = "pooled"
    pooling: Literal["mean", "max"] = "mean"
    dtype: Literal["float32", "int8"] = "float32"

    MODES: ClassVar[tuple[str, ...]] = ("pooled", "grid")
    POOLINGS: ClassVar[tuple[str, ...]] = ("mean", "max")
    DTYPES: ClassVar[tuple[str, ...]] = ("float32", "int8")
    DEFAULT_DTYPE: ClassVar[str] = "float32"

    def __post_init__(self):
        choice("OutputSpec.mode", self.mode, self.MODES)
        choice("OutputSpec.pooling", self.pooling, self.POOLINGS)
        choice("OutputSpec.dtype", self.dtype, self.DTYPES)

    def to_dict(self) -> dict[str, Any]:
        """Fields as a dict; ``dtype`` only when it is not the default (old specs stay equal)."""
        d = super().to_dict()
        if d["dtype"] == self.DEFAULT_DTYPE:
            del d["dtype"]
        return d

    @classmethod
    def pooled(cls, pooling: Literal["mean", "max"] = "mean",
               dtype: Literal["float32", "int8"] = "float32") -> OutputSpec:
        """One vector per sample: mean (or max) of patch tokens, CLS excluded."""
        return cls("pooled", pooling, dtype)

    @classmethod
    def grid(cls, pooling: Literal["mean", "max"] = "mean", dtype: Literal["float32", "int8"] = "float32") -> OutputSpec:
        """Patch tokens as a ``(D, h, w)`` grid (``pooling`` is used for the pooled companion)."""
        return cls("grid", pooling, dtype)


@dataclass(frozen=True)
class ModelSpec(SpecBase):
    """Which ScaleMAE weights to load and how to run them.

    Parameters
    ----------
    model_id : str
        A Hugging Face hub id (default ``MVRL/scalemae-vitlarge-800``), a local
        directory in ``save_pretrained`` layout, or a named test config
        (``test-tiny``, ``test-small``) with deterministic random weights.
    image_size : int
        Side of the square model input in pixels (a multiple of the patch size).
    batch_size : int or None
        Images per forward pass; ``None`` (or ``"auto"``) picks 8 on the CPU and, on
        CUDA, what fits the free device memory (:func:`auto_batch_size`, at most
        ``MAX_AUTO_BATCH``). A number is used as given.
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    dtype : str
        Precision of the forward pass: ``"float32"``, ``"bfloat16"`` (autocast) or
        ``"auto"`` (bfloat16 autocast on CUDA, float32 elsewhere: :meth:`resolved_dtype`).
        The default stays ``"float32"``: the dtype is part of a cube's identity, pinned
        with the default spec's hash (``tests/data/golden``), so a new default would refuse
        to resume every cube written with the old one. With ``"auto"`` the identity does
        not pin the precision: a cube resumed on other hardware may mix float32 and
        bfloat16 embeddings (the actor's ``describe()`` says which one it runs).
    res_reference_m : float
        ``input_res = effective_gsd_m / res_reference_m``. 1.0 passes metres, as
        rs-embed does; the original ScaleMAE code used a relative factor.
    compile : bool
        Run the model through ``torch.compile`` (default False). A runtime option
        (not part of a cube's identity, left out of :meth:`to_dict` when False). The
        first batch of each shape pays the compilation (tens of seconds for ViT-L).
    """

    model_id: str = DEFAULT_MODEL_ID
    image_size: int = DEFAULT_IMAGE_SIZE
    batch_size: int | None = None
    device: str = "auto"
    dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    res_reference_m: float = 1.0
    compile: bool = False

    DTYPES: ClassVar[tuple[str, ...]] = ("float32", "bfloat16", "auto")

    def __post_init__(self):
        if not isinstance(self.model_id, str) or not self.model_id.strip():
            raise SpecError("ModelSpec.model_id", self.model_id,
                            "a hub id, a local directory or a test config name")
        set_field(self, "image_size", integer("ModelSpec.image_size", self.image_size, lo=16, hi=4096))
        if isinstance(self.batch_size, str) and self.batch_size.strip().lower() == "auto":
            set_field(self, "batch_size", None)
        if self.batch_size is not None:
            try:
                set_field(self, "batch_size", integer("ModelSpec.batch_size", self.batch_size, lo=1, hi=65536))
            except SpecError:
                raise SpecError("ModelSpec.batch_size", self.batch_size,
                                "an integer in [1, 65536], or None / 'auto' (fit to the device)") from None
        dev = self.device
        if not isinstance(dev, str) or not (dev in ("auto", "cpu", "cuda", "mps")
                                            or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise SpecError("ModelSpec.device", dev, "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        choice("ModelSpec.dtype", self.dtype, self.DTYPES)
        set_field(self, "res_reference_m", number("ModelSpec.res_reference_m", self.res_reference_m,
                                              lo=0, lo_open=True, hi=1e6))
        if not isinstance(self.compile, bool):
            raise SpecError("ModelSpec.compile", self.compile, "True or False")

    def to_dict(self) -> dict[str, Any]:
        """Fields as a dict; ``compile`` only when True (specs written before it stay equal)."""
        d = super().to_dict()
        if not d["compile"]:
            del d["compile"]
        return d

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ModelSpec:
        """Defaults from the rs-embed environment knobs, then ``overrides``.

        Reads ``RS_EMBED_SCALEMAE_ID``, ``RS_EMBED_SCALEMAE_IMG`` and
        ``RS_EMBED_SCALEMAE_BATCH_SIZE``. Call this once, at the edge (API/CLI).
        """
        env = env_defaults(environ)
        kwargs: dict[str, Any] = {"model_id": env["model_id"], "image_size": env["image_size"],
                                  "batch_size": env["batch_size"]}
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kwargs)

    def resolved_batch_size(self, device_type: str, *, fits: int | None = None) -> int:
        """The batch size to use on a device of type ``"cpu"`` or ``"cuda"``.

        The given ``batch_size`` wins. Otherwise, on CUDA, ``fits`` (what
        :func:`auto_batch_size` found for the device's free memory) when known, else
        ``DEFAULT_BATCH_SIZE`` of the device type.
        """
        if self.batch_size is not None:
            return self.batch_size
        if device_type == "cuda" and fits is not None:
            return fits
        return DEFAULT_BATCH_SIZE.get(device_type, DEFAULT_BATCH_SIZE["cpu"])

    def resolved_dtype(self, device_type: str) -> Literal["float32", "bfloat16"]:
        """The precision of the forward on a device of type ``device_type``.

        ``"auto"`` is bfloat16 on CUDA (its tensor cores run bf16 matmuls several times
        faster than float32) and float32 elsewhere; an explicit dtype is used as given.
        """
        if self.dtype == "auto":
            return "bfloat16" if device_type == "cuda" else "float32"
        return self.dtype


def auto_batch_size(free_bytes: int, per_image_bytes: int, *, cap: int = MAX_AUTO_BATCH,
                    fraction: float = AUTO_BATCH_MEMORY_FRACTION) -> int:
    """Images per batch that fit ``fraction`` of ``free_bytes`` at ``per_image_bytes`` each.

    Rounded down to a multiple of 8 (tensor-core friendly) when at least 8 fit, clamped to
    ``[1, cap]``.

    Examples
    --------
    >>> auto_batch_size(80 * 2**30, 20 * 2**20)
    256
    >>> auto_batch_size(2 * 2**30, 20 * 2**20)
    48
    >>> auto_batch_size(0, 20 * 2**20)
    1
    """
    if per_image_bytes <= 0:
        raise SpecError("per_image_bytes", per_image_bytes, "a number of bytes > 0")
    if not 0 < fraction <= 1:
        raise SpecError("fraction", fraction, "a share of the free memory in (0, 1]")
    if cap < 1:
        raise SpecError("cap", cap, "an integer >= 1")
    n = int(max(free_bytes, 0) * fraction) // int(per_image_bytes)
    if n >= 8:
        n -= n % 8
    return max(1, min(n, cap))


def env_defaults(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Read the rs-embed compatibility knobs from ``environ`` (default ``os.environ``).

    Returns a dict with ``model_id``, ``image_size``, ``batch_size`` (or None)
    and ``fetch_workers``. Bad values raise SpecError naming the variable.
    """
    if environ is None:
        import os

        environ = os.environ

    def _env_int(var: str, default: int | None, lo: int) -> int | None:
        raw = environ.get(var)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SpecError(var, raw, f"an integer >= {lo}") from None
        return integer(var, value, lo=lo)

    return {
        "model_id": environ.get("RS_EMBED_SCALEMAE_ID") or DEFAULT_MODEL_ID,
        "image_size": _env_int("RS_EMBED_SCALEMAE_IMG", DEFAULT_IMAGE_SIZE, 16),
        "batch_size": _env_int("RS_EMBED_SCALEMAE_BATCH_SIZE", None, 1),
        "fetch_workers": _env_int("RS_EMBED_SCALEMAE_FETCH_WORKERS", DEFAULT_FETCH_WORKERS, 1),
    }


@dataclass(frozen=True)
class CampaignSpec(SpecBase):
    """Everything that determines a campaign's cube contents.

    Parameters
    ----------
    temporal : TemporalSpec
        Date window of the composites.
    sensor : SensorSpec
        Collection, bands, cloud filter and compositing (``scale_m`` is
        overridden per scale by ``scales``).
    model : ModelSpec
        Weights and input size.
    output : OutputSpec
        Pooled vectors, or grids (with pooled vectors alongside).
    scales : tuple of float
        Pixel sizes in metres; each sample is embedded once per scale.
    chunk_size : int
        Samples per work unit, equal to the cube's chunk along ``sample``. The field's
        default (64) stays what it was, so the hashes of specs written with it do not
        change; campaigns (``run_campaign``, ``plan_campaign``, the CLI) choose 512 for a
        new cube and a cube's own chunk size on resume
        (:func:`rsembed_dask.campaign.jobs.unit_size`).
    buffer_m : float or None
        Half-side of point footprints. ``None``: ``image_size * scale / 2`` at
        each scale, i.e. every scale's footprint is ``image_size`` native pixels.
    """

    temporal: TemporalSpec
    sensor: SensorSpec = SensorSpec()
    model: ModelSpec = ModelSpec()
    output: OutputSpec = OutputSpec()
    scales: tuple[float, ...] = DEFAULT_SCALES
    chunk_size: int = 64
    buffer_m: float | None = None

    # Fields of ModelSpec that change how, not what, is computed.
    RUNTIME_MODEL_FIELDS: ClassVar[tuple[str, ...]] = ("batch_size", "device", "compile")

    def __post_init__(self):
        for name, typ in (("temporal", TemporalSpec), ("sensor", SensorSpec),
                          ("model", ModelSpec), ("output", OutputSpec)):
            if not isinstance(getattr(self, name), typ):
                raise SpecError(f"CampaignSpec.{name}", getattr(self, name), f"a {typ.__name__}")
        scales = self.scales
        if isinstance(scales, (int, float)):
            scales = (scales,)
        if not isinstance(scales, (list, tuple)) or not scales:
            raise SpecError("CampaignSpec.scales", self.scales, "a non-empty list of pixel sizes in metres")
        vals = tuple(number("CampaignSpec.scales", s, lo=0, lo_open=True, hi=MAX_SCALE_M,
                             allowed=f"pixel sizes in (0, {MAX_SCALE_M:g}] metres") for s in scales)
        if len(set(vals)) != len(vals):
            raise SpecError("CampaignSpec.scales", self.scales, "distinct pixel sizes")
        set_field(self, "scales", vals)
        set_field(self, "chunk_size", integer("CampaignSpec.chunk_size", self.chunk_size, lo=1, hi=1_000_000))
        if self.buffer_m is not None:
            set_field(self, "buffer_m", number("CampaignSpec.buffer_m", self.buffer_m, lo=0,
                                           lo_open=True, hi=1_000_000))

    def footprint_buffer_m(self, scale_m: float) -> float:
        """Half-side of a point's footprint at ``scale_m``."""
        if self.buffer_m is not None:
            return self.buffer_m
        return self.model.image_size * scale_m / 2

    def sensor_at(self, scale_m: float) -> SensorSpec:
        """The sensor spec with ``scale_m`` set to one of the campaign's scales."""
        return self.sensor.replace(scale_m=scale_m)

    def identity(self) -> dict[str, Any]:
        """The spec without runtime-only fields (batch size, device, compile): what a cube must match."""
        d = self.to_dict()
        for k in self.RUNTIME_MODEL_FIELDS:
            d["model"].pop(k, None)
        return d

    def spec_hash(self) -> str:
        """Short stable hash of :meth:`identity`."""
        import hashlib

        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]
