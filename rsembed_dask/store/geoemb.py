"""Zarr conventions our stores carry: ``geoemb:`` on every group, ``proj:`` / ``spatial:`` on zone grids.

The geo-embeddings Zarr convention (github.com/geo-embeddings/embeddings-zarr-convention,
v1) describes a group of embeddings: ``geoemb:type`` (``chip``: one vector per
footprint), ``geoemb:dimensions`` (D), ``geoemb:model`` (a URL), ``geoemb:source_data``
(URLs), ``geoemb:data_type`` (``float32`` or ``int8``), ``geoemb:chip_layout``
(``irregular`` for sample cubes, ``regular_grid`` for tilings), ``geoemb:gsd`` (metres,
where the group has one scale), ``geoemb:quantization`` (int8 stores) and
``geoemb:spatial_layout`` (``utm_zones`` for the per-scale groups of a tiling store).
The zone grids of a tiling store also carry the ``proj:`` (CRS, from
:class:`pyproj.CRS`) and ``spatial:`` (affine transform, shape, bbox, from
:class:`affine.Affine`) conventions. Each convention is registered in the group's
``zarr_conventions`` list with the identifiers its own schema fixes.

None of these attributes is part of a campaign's spec identity or hash.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import SpecError
from .quantize import geoemb_quantization, is_quantised_dtype
from ..specs import CampaignSpec

logger = logging.getLogger(__name__)

__all__ = ["GEOEMB_CONVENTION", "PROJ_CONVENTION", "SPATIAL_CONVENTION", "model_url", "source_data_url",
           "geoemb_attrs", "zone_attrs", "merge_conventions"]

#: Registration of the geo-embeddings convention (the constants of its ``schema.json``).
GEOEMB_CONVENTION: dict[str, str] = {
    "schema_url": "https://raw.githubusercontent.com/geo-embeddings/embeddings-zarr-convention/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/geo-embeddings/embeddings-zarr-convention/blob/v1/README.md",
    "uuid": "61c12cc5-0e28-4056-999a-480cf3fb7e4c",
    "name": "geoemb:",
    "description": "Geoembeddings convention for geospatial embedding arrays with model provenance",
}
#: Registration of the ``proj:`` convention (zarr-conventions/geo-proj v1 ``schema.json``).
PROJ_CONVENTION: dict[str, str] = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/geo-proj/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/geo-proj/blob/v1/README.md",
    "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
    "name": "proj:",
    "description": "Coordinate reference system information for geospatial data",
}
#: Registration of the ``spatial:`` convention (zarr-conventions/spatial v1 ``schema.json``,
#: whose registered name is ``spatial``; its attributes are ``spatial:*``).
SPATIAL_CONVENTION: dict[str, str] = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/spatial/blob/v1/README.md",
    "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
    "name": "spatial",
    "description": "Spatial coordinate information",
}

_HUB = "https://huggingface.co/"
_EE_CATALOG = "https://developers.google.com/earth-engine/datasets/catalog/"
#: Named test configs (random weights) are no published model: a URN names them.
_TEST_URN = "urn:rsembed-dask:test-config:"


def model_url(model_id: str) -> str:
    """A URL for ``ModelSpec.model_id``: the hub page of a hub id, ``file://`` for a local
    directory, a ``urn:`` for the named test configs.

    >>> model_url("MVRL/scalemae-vitlarge-800")
    'https://huggingface.co/MVRL/scalemae-vitlarge-800'
    >>> model_url("test-small")
    'urn:rsembed-dask:test-config:test-small'
    """
    from ..embed.weights import TEST_CONFIGS

    if model_id in TEST_CONFIGS:
        return _TEST_URN + model_id
    if model_id.startswith(("/", "./", "../", "~", "\\")) or Path(model_id).expanduser().is_dir():
        return Path(model_id).expanduser().resolve().as_uri()
    return _HUB + model_id.strip("/")


def source_data_url(collection: str) -> str:
    """The Earth Engine catalogue page of an image collection id.

    >>> source_data_url("COPERNICUS/S2_SR_HARMONIZED")
    'https://developers.google.com/earth-engine/datasets/catalog/COPERNICUS_S2_SR_HARMONIZED'
    """
    return _EE_CATALOG + collection.strip("/").replace("/", "_")


def merge_conventions(*parts: Mapping[str, Any]) -> dict[str, Any]:
    """Attribute dicts merged, their ``zarr_conventions`` lists concatenated (each convention once)."""
    out: dict[str, Any] = {}
    conv: list[dict[str, Any]] = []
    for part in parts:
        for c in part.get("zarr_conventions", ()):
            if all(c.get("uuid") != have.get("uuid") for have in conv):
                conv.append(dict(c))
        out.update({k: v for k, v in part.items() if k != "zarr_conventions"})
    return {"zarr_conventions": conv, **out}


def geoemb_attrs(spec: CampaignSpec, embed_dim: int, *, layout: str = "irregular",
                 gsd: float | None = None, spatial_layout: str | None = None,
                 scale_array: str = "embedding_scale",
                 versions: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``geoemb:`` group attributes of a store written for ``spec``.

    Parameters
    ----------
    spec : CampaignSpec
        The campaign (model, collection, image size, output dtype).
    embed_dim : int
        ``D``.
    layout : str
        ``"irregular"`` (sample cubes: one chip per sample footprint) or ``"regular_grid"``
        (tilings: tiles of ``image_size`` pixels side by side, stride = size).
    gsd : float, optional
        Pixel size in metres of a group holding one scale (omitted otherwise).
    spatial_layout : str, optional
        ``"utm_zones"`` for groups that hold one group per UTM zone.
    scale_array : str
        Name of the scale array of an int8 store (``geoemb:quantization``).
    versions : mapping, optional
        Software versions; ``rsembed_dask``'s becomes ``geoemb:build_version``.

    Notes
    -----
    ``chip_size`` is the model input, ``image_size`` pixels a side: a point sample's
    footprint at each scale (unless ``buffer_m`` is set) and a tile; polygon footprints
    (and points with ``buffer_m``) are resampled to it, with their effective ground
    sample distance in ``input_res_m``.
    """
    if layout not in ("irregular", "regular_grid"):
        raise SpecError("layout", layout, "'irregular' or 'regular_grid'")
    size = [int(spec.model.image_size)] * 2
    chip: dict[str, Any] = {"layout_type": layout, "chip_size": size}
    if layout == "regular_grid":
        chip["stride"] = list(size)
    out: dict[str, Any] = {
        "zarr_conventions": [dict(GEOEMB_CONVENTION)],
        "geoemb:type": "chip",
        "geoemb:dimensions": int(embed_dim),
        "geoemb:model": model_url(spec.model.model_id),
        "geoemb:source_data": [source_data_url(spec.sensor.collection)],
        "geoemb:data_type": spec.output.dtype,
        "geoemb:chip_layout": chip,
    }
    if gsd is not None:
        out["geoemb:gsd"] = float(gsd)
    elif len(spec.scales) == 1:
        out["geoemb:gsd"] = float(spec.scales[0])
    if is_quantised_dtype(spec.output.dtype):
        out["geoemb:quantization"] = geoemb_quantization(scale_array)
    if spatial_layout is not None:
        out["geoemb:spatial_layout"] = spatial_layout
    build = (versions or {}).get("rsembed_dask")
    if build:
        out["geoemb:build_version"] = str(build)
    return out


def zone_attrs(epsg: int, transform: Any, shape: Sequence[int]) -> dict[str, Any]:
    """``proj:`` and ``spatial:`` attributes of a zone grid.

    Parameters
    ----------
    epsg : int
        The zone's EPSG code (``proj:code`` comes from :class:`pyproj.CRS`).
    transform : affine.Affine
        Cell ``(col, row)`` corner to CRS ``(x, y)`` (``spatial:transform``, pixel registration).
    shape : (int, int)
        ``(ny, nx)`` cells.
    """
    from affine import Affine
    from pyproj import CRS

    if not isinstance(transform, Affine):
        raise SpecError("transform", type(transform).__name__, "an affine.Affine")
    auth = CRS.from_epsg(int(epsg)).to_authority()
    if auth is None:
        raise SpecError("epsg", epsg, "an EPSG code with an authority code in PROJ's database")
    ny, nx = (int(v) for v in shape)
    xs, ys = zip(*(transform @ (c, r) for c, r in ((0, 0), (nx, 0), (0, ny), (nx, ny))))
    return {
        "zarr_conventions": [dict(PROJ_CONVENTION), dict(SPATIAL_CONVENTION)],
        "proj:code": f"{auth[0]}:{auth[1]}",
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": [float(v) for v in list(transform)[:6]],
        "spatial:shape": [ny, nx],
        "spatial:bbox": [float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))],
        "spatial:registration": "pixel",
    }
