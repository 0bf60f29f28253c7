"""rsembed_dask: ScaleMAE embedding campaigns on Dask, from GeoDataFrames to Zarr datacubes.

The headline API; everything else is in the subpackages, in data-flow order: ``geo``,
``sampling``, ``providers``, ``embed``, ``store``, ``cluster``, ``campaign``, ``plan``,
``explore``, ``cli`` (and ``emulator``, the loopback Earth Engine, loaded on demand).
"""

from .api import Embedding, get_embedding, get_embeddings_batch
from .campaign import run_campaign
from .cluster import local_cluster
from .errors import (
    ConfigurationError,
    CubeDamagedError,
    CubeError,
    ModelError,
    NoImageryError,
    OutputError,
    PermanentProviderError,
    ProviderError,
    QuotaError,
    RsEmbedError,
    SpecError,
    SpecMismatchError,
    StoreLockedError,
    TransientProviderError,
)
from .plan import estimate_campaign
from .providers import GEEProvider, LocalRasterProvider
from .sampling import tile_aoi
from .specs import BBox, CampaignSpec, ModelSpec, OutputSpec, PointBuffer, SensorSpec, TemporalSpec, TemporalWindows
from .store import export_geoparquet, open_cube, write_stac

#: The package version, written only here (pyproject reads it; CHANGELOG.md records each release).
__version__ = "0.1.0"

__all__ = [
    # specs
    "BBox", "CampaignSpec", "ModelSpec", "OutputSpec", "PointBuffer", "SensorSpec", "TemporalSpec",
    "TemporalWindows",
    # single ROIs
    "Embedding", "get_embedding", "get_embeddings_batch",
    # campaigns
    "tile_aoi", "estimate_campaign", "run_campaign", "open_cube", "local_cluster",
    "GEEProvider", "LocalRasterProvider",
    # interchange formats
    "export_geoparquet", "write_stac",
    # errors
    "RsEmbedError", "SpecError", "ConfigurationError", "ProviderError", "NoImageryError",
    "TransientProviderError", "QuotaError", "PermanentProviderError", "ModelError", "CubeError",
    "SpecMismatchError", "CubeDamagedError", "StoreLockedError", "OutputError",
    "__version__",
]
