"""What a store's embeddings are, in the words of the interchange formats.

One description of a cube's embeddings (model, source collection, temporal window,
data type, quantisation, runtime parameters) shared by the GeoParquet ``emb`` footer
(:mod:`rsembed_dask.geoparquet`) and the STAC Embedding extension's ``emb:``
fields (:mod:`rsembed_dask.stac`). Field names follow the STAC Embedding extension
(geo-embeddings/embeddings-stac-specification) where it names the concept, and the
Zarr ``geoemb:`` convention (geo-embeddings/embeddings-zarr-convention) for what a
store records (``geoemb:quantization``).

Examples
--------
>>> model_href("MVRL/scalemae-vitlarge-800")
'https://huggingface.co/MVRL/scalemae-vitlarge-800'
>>> source_href("COPERNICUS/S2_SR_HARMONIZED")
'https://developers.google.com/earth-engine/datasets/catalog/COPERNICUS_S2_SR_HARMONIZED'
>>> temporal_resolution("2024-01-01", "2025-01-01"), temporal_resolution("2024-03-01", "2024-06-01")
('P1Y', 'P3M')
>>> windows_resolution([("2019-01-01", "2020-01-01"), ("2020-01-01", "2021-01-01")])
'P1Y'
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CubeError, SpecError

__all__ = ["EMB_VERSION", "QUANTIZATION_ATTR", "model_href", "source_href", "window_datetimes",
           "temporal_resolution", "windows_resolution", "IRREGULAR", "read_quantization", "stac_quantization",
           "describe_embeddings"]

#: Version of the ``emb`` footer this package writes in GeoParquet files.
EMB_VERSION = "0.0.1"
#: Group attribute holding how int8 embeddings dequantise (the Zarr ``geoemb:`` convention).
QUANTIZATION_ATTR = "geoemb:quantization"
#: Earth Engine's public catalogue page of a collection id (``/`` becomes ``_``).
_EE_CATALOG = "https://developers.google.com/earth-engine/datasets/catalog/"
#: The temporal resolution of windows of different lengths.
IRREGULAR = "irregular"


def model_href(model_id: str) -> str:
    """A link to the encoder: the Hugging Face page of a hub id, a ``file:`` URI of a local
    directory, or a ``urn:rsembed_dask:model:`` name for a built-in test config."""
    if os.path.isdir(model_id):
        return Path(model_id).resolve().as_uri()
    if "/" in model_id:
        return f"https://huggingface.co/{model_id}"
    return f"urn:rsembed_dask:model:{model_id}"


def source_href(collection: str) -> str:
    """Earth Engine's catalogue page of ``collection``."""
    return _EE_CATALOG + collection.replace("/", "_")


def window_datetimes(start: str, end: str) -> tuple[dt.datetime, dt.datetime]:
    """``[start, end)`` dates as STAC's inclusive ``(start_datetime, end_datetime)`` in UTC:
    ``end_datetime`` is the last second before ``end``."""
    s = dt.datetime.fromisoformat(start).replace(tzinfo=dt.timezone.utc)
    e = dt.datetime.fromisoformat(end).replace(tzinfo=dt.timezone.utc) - dt.timedelta(seconds=1)
    return s, e


def temporal_resolution(start: str, end: str) -> str:
    """The compositing window ``[start, end)`` as an ISO 8601 duration (``P1Y``, ``P3M``, ``P10D``)."""
    s, e = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    if s.day == e.day == 1:
        months = (e.year - s.year) * 12 + e.month - s.month
        return f"P{months // 12}Y" if months % 12 == 0 else f"P{months}M"
    return f"P{(e - s).days}D"


def windows_resolution(windows: Sequence[tuple[str, str]]) -> str:
    """The compositing window of every one of ``windows`` (``(start, end)``, end exclusive) as one
    ISO 8601 duration (:func:`temporal_resolution`: ``P1Y`` for calendar years, and for any
    year from the first of a month to the same day a year later; ``P3M`` for quarters; ``P10D``),
    or :data:`IRREGULAR` when they differ (e.g. 10-day windows whose last one is cut short).

    >>> windows_resolution([("2023-01-01", "2023-04-01"), ("2023-04-01", "2023-07-01")])
    'P3M'
    >>> windows_resolution([("2023-01-01", "2023-01-11"), ("2023-01-11", "2023-01-15")])
    'irregular'

    Raises
    ------
    SpecError
        No window.
    """
    durations = {temporal_resolution(a, b) for a, b in windows}
    if not durations:
        raise SpecError("windows", "[]", "one window or more")
    return durations.pop() if len(durations) == 1 else IRREGULAR


def read_quantization(attrs: Mapping[str, Any], dtype: Any) -> dict[str, Any] | None:
    """How stored embeddings of ``dtype`` dequantise, from the group attributes ``attrs``.

    Returns None for floating-point embeddings. For integer ones, the ``geoemb:quantization``
    attribute (the Zarr convention's Quantization Object) normalised to ``method``,
    ``original_dtype``, ``quantized_dtype`` and either ``scale``/``offset`` (numbers:
    ``value = q * scale + offset``) or ``scale_array`` (the name of an array of
    ``(sample, scale)`` factors: ``value = q * factor``).

    Raises
    ------
    CubeError
        Integer embeddings without a usable ``geoemb:quantization`` attribute.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return None
    raw = attrs.get(QUANTIZATION_ATTR)
    if isinstance(raw, str):
        raw = json.loads(raw)
    expected = (f"a {QUANTIZATION_ATTR!r} group attribute with 'method', 'original_dtype' and a 'scale' "
                "object ({'type': 'scalar', 'scale': s, 'offset': o} or {'type': 'array', 'array_name': n})")
    if not isinstance(raw, Mapping) or "method" not in raw or "original_dtype" not in raw:
        raise CubeError(f"the embeddings are stored as {dtype} but cannot be dequantised: expected {expected}, "
                        f"found {raw!r}")
    scale = raw.get("scale")
    out = {"method": str(raw["method"]), "original_dtype": str(raw["original_dtype"]),
           "quantized_dtype": str(raw.get("quantized_dtype", dtype.name))}
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):  # the STAC form: numbers
        return {**out, "scale": float(scale), "offset": float(raw.get("offset", 0.0))}
    if isinstance(scale, Mapping) and scale.get("type") == "scalar" and "scale" in scale:
        return {**out, "scale": float(scale["scale"]), "offset": float(scale.get("offset", 0.0))}
    if isinstance(scale, Mapping) and scale.get("type") == "array" and scale.get("array_name"):
        return {**out, "scale_array": str(scale["array_name"])}
    raise CubeError(f"the embeddings are stored as {dtype} but cannot be dequantised: expected {expected}, "
                    f"found scale={scale!r}")


def stac_quantization(q: Mapping[str, Any], scale_href: str | None = None,
                      column: str | None = None, dims: str = "sample, scale") -> dict[str, Any]:
    """A normalised quantisation (:func:`read_quantization`) as STAC's ``emb:quantization`` object.

    Numbers go to ``scale``/``offset``. Factors per cell (``scale_array``) cannot be numbers:
    the object's ``link`` then names where they are, ``scale_href`` (the Zarr array, or the
    GeoParquet file whose ``column`` holds them; ``dims``: the Zarr array's dimensions, and
    which slice), and how to apply them.

    Examples
    --------
    >>> q = {"method": "linear", "original_dtype": "float32", "quantized_dtype": "int8",
    ...      "scale_array": "embedding_scale"}
    >>> stac_quantization(q, "../c.zarr/embedding_scale")["link"]["title"]
    "per-cell dequantisation factors: Zarr array 'embedding_scale' (sample, scale); value = q * factor"
    """
    out = {k: q[k] for k in ("method", "original_dtype", "quantized_dtype")}
    if "scale" in q:
        out.update(scale=[float(q["scale"])], offset=[float(q["offset"])])
    elif "scale_array" in q:
        where = (f"GeoParquet column {column!r}" if column is not None
                 else f"Zarr array {q['scale_array']!r} ({dims})")
        link: dict[str, Any] = {"rel": "emb:quantization-scale",
                                "title": f"per-cell dequantisation factors: {where}; value = q * factor"}
        if scale_href is not None:
            link["href"] = scale_href
            link["type"] = "application/vnd.apache.parquet" if column is not None else "application/vnd.zarr"
        out["link"] = link
    return out


def describe_embeddings(spec_json: str, *, embed_dim: int, data_type: str,
                        quantization: Mapping[str, Any] | None, scales: list[float],
                        tiling: bool, versions: Mapping[str, Any] | None = None,
                        spec_hash: str | None = None,
                        windows: Sequence[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The description of a store's embeddings shared by the GeoParquet footer and STAC.

    Parameters
    ----------
    spec_json : str
        The cube's ``campaign_spec`` attribute.
    embed_dim, data_type : int, str
        Width and stored data type of the embeddings.
    quantization : mapping or None
        From :func:`read_quantization`.
    scales : list of float
        Pixel sizes (metres) described.
    tiling : bool
        A tiling store (tiles on a regular grid) rather than samples.
    versions, spec_hash : optional
        The cube's ``versions`` and ``spec_hash`` attributes.
    windows : sequence of (str, str), optional
        The compositing windows described, ``(start, end)`` in ``time`` order (a cube with a
        ``time`` dimension); default the spec's one window.

    Returns
    -------
    dict
        JSON-serialisable: ``type``, ``dimensions``, ``data_type``, ``gsd`` (list of m),
        ``chip_layout``, ``model``, ``collection``, ``source``, ``temporal_window``,
        ``start_datetime``, ``end_datetime``, ``temporal_resolution``, ``quantization``,
        ``runtime_parameters``, ``preprocessing``, ``postprocessing``, ``spec_hash``, ``versions``;
        with several ``windows`` also ``temporal_windows`` (each window, end exclusive), the
        ``temporal_window``, ``start_datetime`` and ``end_datetime`` then spanning them all and
        ``temporal_resolution`` from :func:`windows_resolution`.
    """
    spec = json.loads(spec_json)
    model, sensor, temporal, output = spec["model"], spec["sensor"], spec["temporal"], spec["output"]
    spans = [(str(a), str(b)) for a, b in windows] if windows else [(temporal["start"], temporal["end"])]
    first, last = spans[0][0], max(b for _, b in spans)
    start_dt, end_dt = window_datetimes(first, last)
    size = int(model["image_size"])
    if tiling:
        layout = {"layout_type": "regular_grid", "chip_size": [size, size], "stride": [size, size],
                  "grid_id": f"rsembed_dask-utm-tiles-{size}px"}
    else:
        layout = {"layout_type": "variable_grid"}
        if spec.get("buffer_m") is None:  # points: image_size native pixels a side at every scale
            layout["chip_size"] = [size, size]
    runtime = {
        "model_id": model["model_id"], "image_size": size, "res_reference_m": model["res_reference_m"],
        "dtype": model["dtype"], "batch_size": model.get("batch_size"), "device": model.get("device"),
        "output": output["mode"], "pooling": output["pooling"], "collection": sensor["collection"],
        "bands": list(sensor["bands"]), "composite": sensor["composite"], "cloudy_pct": sensor["cloudy_pct"],
        "cloud_property": sensor["cloud_property"], "scales_m": [float(s) for s in scales],
        "buffer_m": spec.get("buffer_m"), "chunk_size": spec["chunk_size"],
    }
    return {
        "type": "chip",
        "dimensions": int(embed_dim),
        "data_type": str(data_type),
        "gsd": [float(s) for s in scales],
        "chip_layout": layout,
        "model": {"id": model["model_id"], "source": model_href(model["model_id"]), "family": "ScaleMAE",
                  "config": f"{output['pooling']} of the patch tokens (CLS excluded) of forward_features, "
                            f"input {size}x{size} px, input_res = GSD / {model['res_reference_m']:g} m"},
        "collection": sensor["collection"],
        "source": source_href(sensor["collection"]),
        "temporal_window": {"start": first, "end": last, "end_exclusive": True},
        **({"temporal_windows": [{"start": a, "end": b, "end_exclusive": True} for a, b in spans]}
           if len(spans) > 1 else {}),
        "start_datetime": start_dt.isoformat().replace("+00:00", "Z"),
        "end_datetime": end_dt.isoformat().replace("+00:00", "Z"),
        "temporal_resolution": windows_resolution(spans),
        "quantization": None if quantization is None else dict(quantization),
        "runtime_parameters": runtime,
        "preprocessing": {"format": "rsembed_dask", "expression":
                          f"{sensor['composite']} composite of {sensor['collection']} {'/'.join(sensor['bands'])} "
                          f"(scenes under {sensor['cloudy_pct']:g}% {sensor['cloud_property']}); "
                          f"clip(x/10000, 0, 1)*255 as uint8; bicubic antialiased resize to {size} px; "
                          "ImageNet mean/std normalisation"},
        "postprocessing": {"format": "rsembed_dask", "expression":
                           f"{output['pooling']} pooling of patch tokens, CLS excluded"},
        "spec_hash": spec_hash,
        "versions": dict(versions or {}),
    }
