"""What to embed: sample tables from GeoDataFrames, work units, tilings of areas."""

from .samples import Footprint, SampleTable, build_sample_table, samples_digest
from .units import DEFAULT_UNIT_SAMPLES, WorkUnit, default_unit_size, work_units
from .tiling import DEFAULT_BLOCK, TileLattice, TileTable, Tiling, ZonedTiling, ZoneTiles, table_order, tile_aoi, tile_zones

__all__ = [
    "Footprint", "SampleTable", "build_sample_table", "samples_digest", "WorkUnit", "work_units",
    "DEFAULT_UNIT_SAMPLES", "default_unit_size",
    "DEFAULT_BLOCK", "TileLattice", "TileTable", "Tiling", "tile_aoi",
    "ZonedTiling", "ZoneTiles", "table_order", "tile_zones",
]
