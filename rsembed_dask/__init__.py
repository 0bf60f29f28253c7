"""rsembed_dask: ScaleMAE embedding campaigns on Dask, from GeoDataFrames to Zarr datacubes."""

from .errors import (
    ConfigurationError,
    CubeError,
    ModelError,
    NoImageryError,
    PermanentProviderError,
    ProviderError,
    QuotaError,
    RsEmbedError,
    SpecError,
    SpecMismatchError,
    TransientProviderError,
)
from .api import Embedding, get_embedding, get_embeddings_batch
from .specs import BBox, CampaignSpec, ModelSpec, OutputSpec, PointBuffer, SensorSpec, TemporalSpec

__version__ = "0.1.0"

#: Exported on first use (they import zarr, xarray and pyarrow, which ``import rsembed_dask`` does not need).
_LAZY = {"export_geoparquet": ".geoparquet", "write_stac": ".stac"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BBox",
    "CampaignSpec",
    "ConfigurationError",
    "Embedding",
    "get_embedding",
    "get_embeddings_batch",
    "export_geoparquet",
    "write_stac",
    "CubeError",
    "ModelError",
    "ModelSpec",
    "NoImageryError",
    "OutputSpec",
    "PermanentProviderError",
    "PointBuffer",
    "ProviderError",
    "QuotaError",
    "RsEmbedError",
    "SensorSpec",
    "SpecError",
    "SpecMismatchError",
    "TemporalSpec",
    "TransientProviderError",
    "__version__",
]
