"""rsembed_dask: ScaleMAE embedding campaigns on Dask, from GeoDataFrames to Zarr datacubes."""

from .errors import (
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
from .specs import BBox, ModelSpec, OutputSpec, PointBuffer, SensorSpec, TemporalSpec

__version__ = "0.1.0"

__all__ = [
    "BBox",
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
