"""On-disk size of one scale of a tiling store, before it exists: uncompressed upper bounds.

The layout is :mod:`rsembed_dask.store.tiling`'s: per scale a sample cube
(:mod:`rsembed_dask.store.layout`) and one grid per UTM zone. The bounds count
every byte Zarr stores uncompressed, so the real store (compressed, with empty
chunks never written) is at most this; a test checks them against a created store.

Examples
--------
>>> from rsembed_dask.sampling.tiling import tile_aoi
>>> table = tile_aoi((10.0, 45.0, 10.5, 45.3), scales=[10]).tables[0]
>>> len(table), count_blocks(table)
(287, 6)
>>> sample_cube_bytes(table, embed_dim=64), grids_bytes(table, embed_dim=64)
(146890, 102592)
"""

from __future__ import annotations

import numpy as np

from ..geo.keys import GEOHASH_PRECISION
from .._validate import strict_int
from ..sampling.tiling import TileTable

__all__ = ["count_blocks", "sample_cube_bytes", "grids_bytes"]

#: Zarr v3 variable-length UTF-8 stores a 4-byte length before every string.
_VLEN_PREFIX = 4


def count_blocks(table: TileTable) -> int:
    """Blocks with tiles: the table is in block order, each block one run of rows."""
    if not len(table):
        return 0
    b = table.block
    brow, bcol = table.row // b, table.col // b
    return 1 + int(((np.diff(table.epsg) != 0) | (np.diff(brow) != 0) | (np.diff(bcol) != 0)).sum())


def sample_cube_bytes(table: TileTable, embed_dim: int, grid_shape: tuple[int, int] | None = None) -> int:
    """Upper bound of the scale's sample cube, uncompressed.

    Data per sample: embedding ``D`` float32, token grid ``D x gy x gx`` float32 when
    ``grid_shape``, status int8, input_res_m and valid_fraction float32, the error
    string counted empty (4-byte length; failed samples add up to 200 bytes each).
    Coordinates: ids, lon, lat, geohash, geometry as WKB hex; plus ``scale`` and ``feature``.

    Parameters
    ----------
    table : TileTable
    embed_dim : int
        Embedding width ``D``.
    grid_shape : tuple of int, optional
        Token grid ``(gy, gx)`` when token grids are stored.

    Returns
    -------
    int
    """
    strict_int("embed_dim", embed_dim)
    n, D = len(table), int(embed_dim)
    per_sample = D * 4 + 1 + 4 + 4 + _VLEN_PREFIX
    if grid_shape is not None:
        per_sample += D * int(grid_shape[0]) * int(grid_shape[1]) * 4
    coords = 8 + 8 + (_VLEN_PREFIX + GEOHASH_PRECISION)  # lon, lat, geohash
    wkb_hex = 0
    if n:
        head = table.slice(0, min(n, 16))
        wkb_hex = 2 * max(len(w) for w in head.wkb)
    return int(n * (per_sample + coords + _VLEN_PREFIX + wkb_hex) + _id_bytes(table) + D * 8 + 8)


def grids_bytes(table: TileTable, embed_dim: int) -> int:
    """Upper bound of the scale's zone grids, uncompressed.

    One ``block x block`` chunk of embedding float32 + status int8 + sample_index
    int64 per block with tiles (chunks of empty blocks are never written), plus each
    zone's ``x``, ``y`` and ``feature`` coordinates.

    Parameters
    ----------
    table : TileTable
    embed_dim : int
        Embedding width ``D``.

    Returns
    -------
    int
    """
    from ..store.tiling import grid_extent

    strict_int("embed_dim", embed_dim)
    D = int(embed_dim)
    grids = count_blocks(table) * table.block ** 2 * (D * 4 + 1 + 8)
    for code in table.zones():
        _, ny, _, nx = grid_extent(table, code)
        grids += (ny + nx) * 8 + D * 8
    return int(grids)


def _digits(v: np.ndarray) -> np.ndarray:
    """Characters of ``str(v)`` for int64 ``v`` (exact: integer thresholds, no logarithms)."""
    a = np.abs(v)
    d = np.ones(len(v), np.int64)
    for k in range(1, 19):
        d += a >= 10 ** k
    return d + (v < 0)


def _id_bytes(table: TileTable) -> int:
    """Bytes of the tile ids ``"{epsg}_{scale:g}m_{row}_{col}"`` as Zarr v3 strings."""
    if not len(table):
        return 0
    fixed = len(f"_{table.scale_m:g}m__") + _VLEN_PREFIX
    return int((_digits(table.epsg.astype(np.int64)) + _digits(table.row) + _digits(table.col) + fixed).sum())
