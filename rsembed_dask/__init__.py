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

__all__ = [
    "BBox",
    "CampaignSpec",
    "ConfigurationError",
    "Embedding",
    "get_embedding",
    "get_embeddings_batch",
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
