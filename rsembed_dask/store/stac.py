"""A STAC catalogue of a store's embeddings, with the STAC Embedding extension (``emb:``).

:func:`write_stac` writes a self-contained Collection (``collection.json``) and its
Items (``<item id>/<item id>.json``) with :mod:`pystac`:

* a sample cube: one Item per scale; a cube with a ``time`` dimension: one Item per scale and
  window (id ``<collection>-<scale>-<window start>``), its ``start_datetime``/``end_datetime``
  the window's (``datetime`` null, as STAC requires with a range);
* a tiling store: one Item per scale and UTM zone (with ``proj:`` fields of the zone grid);
  with ``time``: per scale, zone and window (id ``<collection>-<scale>-<zone>-<window start>``,
  the zone grid's ``embedding(time, y, x, feature)`` its asset).

The Collection carries the extension's Collection fields (``emb:type`` "chip",
``emb:dimensions``, ``data_type``, ``emb:chip_layout``, ``emb:temporal_resolution``,
``gsd`` when there is one scale, summaries of each) and its required links
(``emb:model`` to the encoder, ``emb:source-data`` to the Earth Engine collection).
``emb:temporal_resolution`` is the compositing window as an ISO 8601 duration, the same for
every window (``P1Y``, ``P3M``, ``P10D``), else ``irregular`` with the distinct durations in
the summaries (:func:`rsembed_dask.store.metadata.windows_resolution`). With ``time``, the
Collection's temporal extent lists the span of all windows, then each window.
Items carry ``gsd``, ``data_type``, ``start_datetime``/``end_datetime`` (the compositing
window), ``emb:runtime_parameters``, ``emb:preprocessing``/``emb:postprocessing``,
``emb:quantization`` (int8 cubes), ``processing:datetime`` (when the last embedding was
written) and ``processing:software``, and the asset ``embeddings``: the Zarr store (or
its zone group, with ``xarray:open_kwargs``), or with ``geoparquet=True`` a GeoParquet
file exported next to the Item (:func:`rsembed_dask.geoparquet.export_geoparquet`).
Per the extension's schema, ``emb:type`` and ``emb:dimensions`` are Collection fields
(its Item properties allow no other ``emb:`` names).

Needs ``pystac`` (``pip install 'rsembed_dask[stac]'``).

Examples
--------
>>> collection = write_stac("campaign.zarr", "stac/")                     # doctest: +SKIP
>>> pystac.read_file("stac/collection.json").get_items()                  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SpecError
from ..geo.grid import xy_to_lonlat
from .footprints import DENSIFY_M, split_antimeridian
from .geoparquet import (OkCells, StorePart, covering_bounds, export_geoparquet, lon_extent, output_error,
                         part_scales, part_windows, portable_href, store_parts)
from .layout import OK, SPEC_ATTR, SPEC_HASH_ATTR, VERSIONS_ATTR, scale_name
from .metadata import describe_embeddings, stac_quantization, temporal_resolution, window_datetimes
from .location import StoreLocation
from .open import array_of, attr_text, is_tiling_store

if TYPE_CHECKING:
    import pystac

__all__ = ["write_stac", "EMB_EXTENSION", "PROCESSING_EXTENSION", "PROJECTION_EXTENSION", "XARRAY_EXTENSION"]

log = logging.getLogger(__name__)

EMB_EXTENSION = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
PROCESSING_EXTENSION = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
PROJECTION_EXTENSION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
XARRAY_EXTENSION = "https://stac-extensions.github.io/xarray-assets/v1.0.0/schema.json"
ZARR_MEDIA_TYPE = "application/vnd.zarr"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
_ZARR_OPEN = {"engine": "zarr", "consolidated": False, "zarr_format": 3}


def _pystac():
    try:
        import pystac
    except ImportError as exc:  # an optional dependency: say how to get it
        raise ImportError("write_stac needs pystac: pip install 'rsembed_dask[stac]'") from exc
    return pystac


def _collection_id(path: str | StoreLocation, given: str | None) -> str:
    if given is not None:
        if not isinstance(given, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", given):
            raise SpecError("collection_id", given, "letters, digits, '.', '_' and '-' (starting with a letter or digit)")
        return given
    base = re.sub(r"\.zarr$", "", StoreLocation.parse(path).name)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "embeddings"


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _processing_datetime(cube_path: str | StoreLocation, attrs: dict[str, Any],
                         window: int | None = None) -> str | None:
    """When the cube's embeddings (of one window along ``time``, if given) were last written: the
    newest ``status`` chunk (status is written last in every unit), else the cube's ``created``
    attribute."""
    newest = 0.0
    loc = StoreLocation.parse(cube_path)
    prefix = ("status", "c") if window is None else ("status", "c", str(int(window)))
    if loc.local:
        for root, _, files in os.walk(os.path.join(loc.path, *prefix)):
            for f in files:
                newest = max(newest, os.stat(os.path.join(root, f)).st_mtime)
    else:  # one listing of the status chunks (their last-modified times)
        import obstore

        for batch in obstore.list(loc.object_store(), "/".join(prefix) + "/"):
            for meta in batch:
                newest = max(newest, meta["last_modified"].timestamp())
    if newest:
        return _iso(dt.datetime.fromtimestamp(newest, dt.timezone.utc))
    created = attrs.get("created")
    return _iso(dt.datetime.fromisoformat(created)) if created else None


def _box_geometry(b: list[float]) -> dict[str, Any]:
    """A bbox as GeoJSON: two boxes when it crosses the antimeridian (``west > east``)."""
    import shapely

    if b[0] > b[2]:
        geom = shapely.MultiPolygon([shapely.box(b[0], b[1], 180.0, b[3]), shapely.box(-180.0, b[1], b[2], b[3])])
    else:
        geom = shapely.box(*b)
    return json.loads(shapely.to_geojson(geom))  # lists, not tuples: what JSON validators accept


def _union_bbox(boxes: list[list[float]]) -> list[float]:
    """The bbox holding ``boxes`` (any of them across the antimeridian, ``west > east``)."""
    w, e = lon_extent([b[0] for b in boxes], [b[2] for b in boxes])
    return [w, min(b[1] for b in boxes), e, max(b[3] for b in boxes)]


def _ok_extent(part: StorePart) -> tuple[list[float] | None, int]:
    """Bounds of the ok cells' footprints of ``part`` (``west > east`` across the antimeridian)
    and their number.

    The embeddings are read too (and dropped): a catalogue is not published over chunks that
    do not decode (their checksum fails), which stops with the damage named instead.
    """
    boxes, n = [], 0
    for block in OkCells(part, embeddings=True):
        b = covering_bounds(block["geometry"])
        w, e = lon_extent(b[:, 0], b[:, 2])
        boxes.append([w, float(b[:, 1].min()), e, float(b[:, 3].max())])
        n += len(block["id"])
    return (_union_bbox(boxes) if boxes else None), n


def _zone_items(store: str | StoreLocation, scale_m: float, window: int | None = None) -> list[dict[str, Any]]:
    """Geometry, bbox and ``proj:`` fields of each zone grid of one scale of a tiling store, and its
    ok tiles (in ``window``, the index along ``time`` of a store with time)."""
    import shapely
    import zarr

    name = scale_name(scale_m)
    group = zarr.open_group(StoreLocation.parse(store).child(name).zarr_store(read_only=True), mode="r",
                            zarr_format=3)
    out = []
    for zone, g in sorted(group.groups()):
        epsg = int(zone.removeprefix("EPSG"))
        c, a, _, f, _, e = (float(v) for v in attr_text(array_of(g, "spatial_ref").attrs, "GeoTransform").split())
        ny, nx = array_of(g, "status").shape[-2:]  # (time,) y, x
        box = shapely.segmentize(shapely.box(c, f + e * ny, c + a * nx, f), DENSIFY_M)
        lonlat = shapely.transform(box, lambda xy, crs=f"EPSG:{epsg}": np.column_stack(
            xy_to_lonlat(xy[:, 0], xy[:, 1], crs)))
        geom = split_antimeridian([lonlat])[0]
        status = np.asarray(array_of(g, "status")[...] if window is None else array_of(g, "status")[int(window)])
        out.append({"zone": zone, "group": f"{name}/{zone}", "geometry": json.loads(shapely.to_geojson(geom)),
                    "bbox": [float(v) for v in covering_bounds([geom])[0]],
                    "proj": {"proj:code": f"EPSG:{epsg}", "proj:shape": [int(ny), int(nx)],
                             "proj:transform": [a, 0.0, c, 0.0, e, f]},
                    "ok": int((status == OK).sum())})
    return out


def write_stac(store: str | os.PathLike, out_dir: str | os.PathLike, *, geoparquet: bool = False,
               collection_id: str | None = None, title: str | None = None, description: str | None = None,
               license: str = "other", model_href: str | None = None,
               source_href: str | None = None) -> pystac.Collection:
    """Write a STAC Collection and Items describing the embeddings of ``store``.

    Parameters
    ----------
    store : str or path
        A cube or a tiling store.
    out_dir : str or path
        Directory of the catalogue (``collection.json``, one folder per Item); created.
    geoparquet : bool
        Export each scale to GeoParquet next to its Item and make that file the Item's
        ``embeddings`` asset (tiling stores: an extra ``samples`` asset on each zone Item;
        the zone grid stays the ``embeddings`` asset). Default: the Zarr store is the asset.
    collection_id, title, description : str, optional
        Defaults from the store's name and campaign.
    license : str
        SPDX identifier or ``"other"`` (default; Sentinel-2 data is under the Copernicus licence).
    model_href, source_href : str, optional
        Targets of the ``emb:model`` and ``emb:source-data`` links (defaults: the model's
        Hugging Face page or local directory, the collection's Earth Engine catalogue page).

    Returns
    -------
    pystac.Collection
        The Collection written (its Items attached), hrefs relative to ``out_dir``.

    Raises
    ------
    CubeError
        ``store`` is not a cube or a tiling store.
    ImportError
        pystac is not installed.
    """
    pystac = _pystac()
    path = StoreLocation.parse(store)
    out_dir = os.path.abspath(os.fspath(out_dir))
    tiling = is_tiling_store(path)
    parts = store_parts(path)
    cid = _collection_id(path, collection_id)
    first = OkCells(parts[0], embeddings=False)
    attrs = parts[0].cube.attrs
    if tiling:
        import zarr

        attrs = {**attrs, SPEC_ATTR: zarr.open_group(path.zarr_store(read_only=True), mode="r",
                                                     zarr_format=3).attrs[SPEC_ATTR]}
    windows = part_windows(parts)
    timed = parts[0].window is not None  # a cube with time: an Item per scale and window
    emb = describe_embeddings(attrs[SPEC_ATTR], embed_dim=parts[0].cube.embed_dim,
                              data_type=first.emb.dtype.name, quantization=first.quant,
                              scales=part_scales(parts), tiling=tiling,
                              versions=attrs.get(VERSIONS_ATTR), spec_hash=attrs.get(SPEC_HASH_ATTR),
                              windows=windows)
    start, end = (dt.datetime.fromisoformat(emb[k].replace("Z", "+00:00")) for k in ("start_datetime", "end_datetime"))
    model_link = pystac.Link("emb:model", model_href or portable_href(emb["model"]["source"], out_dir),
                             title=f"encoder: {emb['model']['id']}")
    source_link = pystac.Link("emb:source-data", source_href or emb["source"], media_type="text/html",
                              title=f"Earth Engine collection {emb['collection']}")
    properties = {"data_type": emb["data_type"], "emb:runtime_parameters": emb["runtime_parameters"],
                  "emb:preprocessing": emb["preprocessing"], "emb:postprocessing": emb["postprocessing"],
                  "processing:software": {"rsembed_dask": emb["versions"].get("rsembed_dask", "unknown"),
                                          **{k: str(v) for k, v in emb["versions"].items()}}}
    try:
        os.makedirs(out_dir, exist_ok=True)
        if not os.access(out_dir, os.W_OK):
            raise PermissionError(13, "Permission denied", os.fspath(out_dir))
    except OSError as exc:
        raise output_error(out_dir, exc) from exc

    items: list = []
    for part in parts:
        sname = scale_name(part.scale_m)
        temporal = part.cube.spec.temporal  # the part's window
        iid = f"{cid}-{sname}" + ("" if part.window is None else f"-{temporal.start}")
        quant = _item_quantization(emb["quantization"], part, out_dir, cid, iid, tiling, geoparquet)
        w_start, w_end = window_datetimes(temporal.start, temporal.end)
        runtime = {**emb["runtime_parameters"], "scale_m": part.scale_m}
        if timed:
            runtime.update(window_start=temporal.start, window_end=temporal.end)
        props = {**properties, **quant, "gsd": part.scale_m, "emb:runtime_parameters": runtime,
                 "processing:datetime": _processing_datetime(part.cube.location, part.cube.attrs, part.window)}
        if tiling:
            parquet = None
            when = "" if part.window is None else f"-{temporal.start}"
            if geoparquet:
                parquet = os.path.join(out_dir, f"{cid}-{sname}{when}.parquet")
                export_geoparquet(path, parquet, scale=part.scale_m, window=part.window)
            for zone in _zone_items(path, part.scale_m, part.window):
                item = pystac.Item(f"{cid}-{sname}-{zone['zone']}{when}", zone["geometry"], zone["bbox"], None,
                                   {**props, "start_datetime": _iso(w_start if timed else start),
                                    "end_datetime": _iso(w_end if timed else end), **zone["proj"]},
                                   stac_extensions=[EMB_EXTENSION, PROCESSING_EXTENSION, PROJECTION_EXTENSION,
                                                    XARRAY_EXTENSION])
                item.add_asset("embeddings", pystac.Asset(
                    path.url, title=(f"{sname} grid of {zone['zone']}: embedding(y, x, feature), {zone['ok']} ok tiles"
                                     if not timed else f"{sname} grid of {zone['zone']}: embedding(time, y, x, feature); "
                                     f"select time={temporal.start}: {zone['ok']} ok tiles"),
                    media_type=ZARR_MEDIA_TYPE,
                    roles=["data"], extra_fields={"xarray:open_kwargs": {**_ZARR_OPEN, "group": zone["group"]}}))
                if parquet is not None:
                    item.add_asset("samples", pystac.Asset(
                        parquet, title=f"every {sname} tile (all zones) as GeoParquet rows",
                        media_type=PARQUET_MEDIA_TYPE, roles=["data"]))
                items.append(item)
            continue
        if geoparquet:
            parquet = os.path.join(out_dir, iid, "embeddings.parquet")
            report = export_geoparquet(path, parquet, scale=part.scale_m, window=part.window)
            meta = json.loads(_parquet_geo(parquet))["columns"]["geometry"]
            bbox, n_ok = meta.get("bbox"), report.rows
            asset = pystac.Asset(parquet, title=f"{n_ok} chip embeddings at {sname} (GeoParquet 1.1)",
                                 media_type=PARQUET_MEDIA_TYPE, roles=["data"])
        else:
            bbox, n_ok = _ok_extent(part)
            what = (f"embedding(time, sample, scale, feature); select time={temporal.start}, scale={part.scale_m:g}"
                    if timed else f"embedding(sample, scale, feature); select scale={part.scale_m:g}")
            asset = pystac.Asset(path.url, title=f"sample cube: {what}",
                                 media_type=ZARR_MEDIA_TYPE, roles=["data"],
                                 extra_fields={"xarray:open_kwargs": dict(_ZARR_OPEN)})
        if bbox is None:
            log.warning("stac: no ok cell at %s in %s; item %s has no geometry", sname, path, iid)
        item = pystac.Item(iid, None if bbox is None else _box_geometry(bbox), bbox, None,
                           {**props, "start_datetime": _iso(w_start), "end_datetime": _iso(w_end)},
                           stac_extensions=[EMB_EXTENSION, PROCESSING_EXTENSION]
                           + ([] if geoparquet else [XARRAY_EXTENSION]))
        item.add_asset("embeddings", asset)
        items.append(item)
    for item in items:
        item.add_link(source_link.clone())

    boxes = [i.bbox for i in items if i.bbox is not None]
    spatial = _union_bbox(boxes) if boxes else [-180.0, -90.0, 180.0, 90.0]
    spec = json.loads(attrs[SPEC_ATTR])
    scales = part_scales(parts)
    scales_txt = ", ".join(f"{s:g}" for s in scales)
    when = (f"{len(windows)} windows from {windows[0][0]} to {windows[-1][1]} (end exclusive)" if timed
            else f"[{emb['temporal_window']['start']}, {emb['temporal_window']['end']})")
    intervals = [[start, end]] + ([[*window_datetimes(a, b)] for a, b in windows] if timed else [])
    resolutions = sorted({temporal_resolution(a, b) for a, b in windows})
    collection = pystac.Collection(
        cid, description or (f"ScaleMAE ({emb['model']['id']}) chip embeddings of {emb['collection']} "
                             f"{'/'.join(spec['sensor']['bands'])} {spec['sensor']['composite']} composites over "
                             f"{when} at {scales_txt} m"
                             f"{', tiled over an AOI' if tiling else ''}; written by rsembed_dask"),
        pystac.Extent(pystac.SpatialExtent([spatial]), pystac.TemporalExtent(intervals)),
        title=title or f"{cid}: ScaleMAE embeddings", license=license,
        stac_extensions=[EMB_EXTENSION],
        extra_fields={"emb:type": emb["type"], "emb:dimensions": emb["dimensions"], "data_type": emb["data_type"],
                      "emb:chip_layout": emb["chip_layout"], "emb:temporal_resolution": emb["temporal_resolution"],
                      **({"gsd": scales[0]} if len(scales) == 1 else {})},
        summaries=pystac.Summaries({"gsd": scales, "emb:type": [emb["type"]],
                                    "emb:dimensions": [emb["dimensions"]], "data_type": [emb["data_type"]],
                                    **({"emb:temporal_resolution": resolutions} if timed else {})}))
    collection.item_assets = {"embeddings": pystac.ItemAssetDefinition.create(
        title="chip embedding vectors", description=None,
        media_type=PARQUET_MEDIA_TYPE if geoparquet and not tiling else ZARR_MEDIA_TYPE, roles=["data"])}
    collection.add_link(model_link)
    collection.add_link(source_link)
    collection.add_items(items)
    collection.normalize_hrefs(out_dir)
    collection.make_all_asset_hrefs_relative()
    try:
        collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    except OSError as exc:
        raise output_error(out_dir, exc) from exc
    log.info("stac: wrote collection %s with %d item(s) to %s", cid, len(items), out_dir)
    return collection


def _item_quantization(q: dict[str, Any] | None, part: StorePart, out_dir: str, cid: str, iid: str,
                       tiling: bool, geoparquet: bool) -> dict[str, Any]:
    """``emb:quantization`` of one scale's Item(s), its per-cell factors (if any) linked
    relative to the Item's folder (``<out_dir>/<item id>/``)."""
    if q is None:
        return {}
    sname = scale_name(part.scale_m)
    if "scale_array" not in q:
        return {"emb:quantization": stac_quantization(q)}
    if geoparquet:
        # The exported file carries the factors in its embedding_scale column.
        target = os.path.join(out_dir, f"{cid}-{sname}.parquet") if tiling else \
            os.path.join(out_dir, iid, "embeddings.parquet")
        column: str | None = "embedding_scale"
    else:
        target, column = os.path.join(part.cube.path, q["scale_array"]), None
    dims = "sample, scale" if part.window is None else f"time, sample, scale; time={part.cube.spec.temporal.start}"
    # A tiling store's zone Items sit in their own folders, one level down like the others.
    return {"emb:quantization": stac_quantization(q, portable_href(target, os.path.join(out_dir, "item")), column,
                                                  dims)}


def _parquet_geo(path: str) -> str:
    """The ``geo`` metadata of a GeoParquet file (JSON text)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.metadata[b"geo"].decode()
