"""The two Zarr store formats: sample cubes and tiling stores, their layout, checks and repair."""

from .cube import Cube
from .geoparquet import ExportReport, export_geoparquet
from .info import format_store_info, format_tiling_info, store_info, tiling_info
from .layout import FAILED, NO_DATA, OK, PENDING, STATUS_NAMES, scale_name
from .location import StoreLocation
from .lock import LockInfo, confirm_held, held_lock, one_writer, read_lock, store_lock
from .open import is_tiling_store, nearest_sample, open_cube
from .prepare import CubeForRun, WorkLeft, open_for_run, work_left
from .repair import repair_sample_cube, repair_tiling_layout, reset_damaged_units
from .samples import SampleChanges
from .size import StoreSize, sample_store_size, tiling_store_size
from .stac import write_stac
from .tiling import create_or_open_tiling
from .verify import CubeHealth, check_cube, verify_cube, verify_tiling_store

__all__ = [
    "Cube", "open_cube", "nearest_sample", "is_tiling_store",
    "PENDING", "OK", "NO_DATA", "FAILED", "STATUS_NAMES", "scale_name",
    "create_or_open_tiling", "SampleChanges",
    "CubeHealth", "check_cube", "verify_cube", "verify_tiling_store",
    "repair_sample_cube", "repair_tiling_layout", "reset_damaged_units",
    "store_info", "format_store_info", "tiling_info", "format_tiling_info",
    "LockInfo", "read_lock", "store_lock", "held_lock", "confirm_held", "one_writer",
    "export_geoparquet", "ExportReport", "write_stac",
    "StoreSize", "sample_store_size", "tiling_store_size",
    "StoreLocation", "open_for_run", "work_left", "CubeForRun", "WorkLeft",
]
