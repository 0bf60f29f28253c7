"""Pure geometry, no I/O: pixel grids, the UTM-zone rule, location keys, areas of interest."""

from .aoi import aoi_bounds, aoi_geometry, read_aoi
from .grid import PixelGrid, bbox_grid, lonlat_to_xy, point_grid, utm_epsg, xy_to_lonlat
from .keys import GEOHASH_PRECISION, HILBERT_BITS, geohash_encode, hilbert_order

__all__ = [
    "PixelGrid", "utm_epsg", "point_grid", "bbox_grid", "lonlat_to_xy", "xy_to_lonlat",
    "geohash_encode", "hilbert_order", "GEOHASH_PRECISION", "HILBERT_BITS",
    "aoi_geometry", "aoi_bounds", "read_aoi",
]
