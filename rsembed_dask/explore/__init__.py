"""After running: PCA colours, GeoTIFF/PNG quicklooks, notebook helpers, the explorer web app."""

from .geotiff import grid_quicklook
from .pca import PCAColours
from .notebook import cube_info, pca_rgb, quicklook, similar, status_table, to_geodataframe
from .app import create_app, explore

__all__ = ["pca_rgb", "to_geodataframe", "similar", "quicklook", "status_table", "cube_info",
           "PCAColours", "grid_quicklook", "explore", "create_app"]
