"""After running: PCA colours, GeoTIFF/PNG quicklooks, notebook helpers, change maths, the explorer web app."""

from .windows_change import change, cosine_distance, roc_auc, window_index, write_change
from .window_choice import choose_window, window_starts
from .geotiff import grid_quicklook
from .sample_map import samples_quicklook
from .pca import PCAColours
from .picture import MapLayout, map_png, scalar_rgba
from .notebook import cube_info, pca_rgb, quicklook, similar, status_table, to_geodataframe
from .app import create_app, explore

__all__ = ["pca_rgb", "to_geodataframe", "similar", "quicklook", "status_table", "cube_info",
           "PCAColours", "grid_quicklook", "samples_quicklook", "cosine_distance", "roc_auc", "change", "window_index", "write_change",
           "choose_window", "window_starts",
           "map_png", "scalar_rgba", "MapLayout", "explore", "create_app"]
