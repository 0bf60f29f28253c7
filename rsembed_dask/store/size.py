"""On-disk size of a store before it exists: uncompressed upper bounds, and a lower estimate.

The layout is :mod:`rsembed_dask.store.tiling`'s: per scale a sample cube
(:mod:`rsembed_dask.store.layout`) and one grid per UTM zone; a campaign on a sample
table writes one sample cube (:func:`sample_store_size`). The bounds count every byte
Zarr stores uncompressed, so the real store (compressed, with empty chunks never
written) is at most this; a test checks them against a created store.
:class:`StoreSize` adds what a free-space check needs (see
:func:`rsembed_dask.store.open.check_free_space`): one filesystem block per file on top
of the bound, and a lower estimate, the embeddings alone, compressed at most
:data:`MIN_EMBEDDING_RATIO`.

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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SpecError
from ..geo.keys import GEOHASH_PRECISION
from .._validate import strict_int
from ..sampling.tiling import TileTable
from .layout import _COORD_CHUNK

__all__ = ["count_blocks", "sample_cube_bytes", "grids_bytes", "TileCounts", "StoreSize", "sample_store_size",
           "tiling_store_size", "MIN_EMBEDDING_RATIO"]

#: Zarr v3 variable-length UTF-8 stores a 4-byte length before every string.
_VLEN_PREFIX = 4
#: The lower estimate's compression allowance: embeddings and token grids (float32 network
#: outputs, which Zarr's zstd shrinks by a few per cent only) take at least this share of their raw size.
MIN_EMBEDDING_RATIO = 0.5


@dataclass(frozen=True)
class StoreSize:
    """What a store will take on disk, before it exists.

    Attributes
    ----------
    lower : int
        A lower estimate: the embeddings (and token grids) of every cell, at
        :data:`MIN_EMBEDDING_RATIO` of their raw size. Cells without imagery store no
        embedding, so a campaign where most samples find none takes less.
    payload : int
        Upper bound of the bytes Zarr writes (every array uncompressed).
    files : int
        Upper bound of the files (chunks and metadata): each may waste up to one
        filesystem block.
    """

    lower: int
    payload: int
    files: int

    def upper(self, block_size: int = 4096) -> int:
        """Upper bound on disk: the payload plus one filesystem block of ``block_size`` bytes per file."""
        return int(self.payload + self.files * int(block_size))

    def scaled(self, fraction: float) -> StoreSize:
        """The share ``fraction`` (in [0, 1]) of this size: what is left when part of the cells are written."""
        f = min(max(float(fraction), 0.0), 1.0)
        return StoreSize(int(np.ceil(self.lower * f)), int(np.ceil(self.payload * f)), int(np.ceil(self.files * f)))

    def __add__(self, other: StoreSize) -> StoreSize:
        return StoreSize(self.lower + other.lower, self.payload + other.payload, self.files + other.files)


def _cube_payload(n: int, n_scales: int, embed_dim: int, grid_shape: tuple[int, int] | None,
                  id_bytes: int, geometry_bytes: int) -> int:
    """Uncompressed bytes of a sample cube (``cube_schema``'s arrays) of ``n`` samples.

    Per cell: embedding ``D`` float32 (and ``D x gy x gx`` float32 token grid), status
    int8, input_res_m and valid_fraction float32, the error string counted empty
    (failed cells add up to 200 bytes each). Per sample: lon, lat, geohash, the id
    (``id_bytes`` in all) and geometry (``geometry_bytes`` in all, WKB hex with prefixes);
    plus ``scale`` and ``feature``.
    """
    D = int(embed_dim)
    per_cell = D * 4 + 1 + 4 + 4 + _VLEN_PREFIX
    if grid_shape is not None:
        per_cell += D * int(grid_shape[0]) * int(grid_shape[1]) * 4
    coords = 8 + 8 + (_VLEN_PREFIX + GEOHASH_PRECISION)  # lon, lat, geohash
    return int(n * (n_scales * per_cell + coords) + geometry_bytes + id_bytes + D * 8 + 8 * n_scales)


#: Bytes allowed per ``zarr.json`` (an array's is under 1 KiB, a cube group's with its attributes about 3 KiB).
_METADATA_BYTES = 4096


def _cube_meta_files(grid: bool) -> int:
    """``zarr.json`` files of a sample cube: the group, 7 coordinates, 5 data arrays (6 with ``grid``)."""
    return 1 + 7 + (6 if grid else 5)


def _cube_files(n: int, n_scales: int, chunk_size: int, grid: bool) -> int:
    """Files of a sample cube: data chunks per unit, coordinate chunks, metadata."""
    units = -(-n // int(chunk_size)) * n_scales
    return units * (6 if grid else 5) + 5 * -(-n // _COORD_CHUNK) + 2 + _cube_meta_files(grid)


def _embedding_lower(n_cells: int, embed_dim: int, grid_shape: tuple[int, int] | None,
                     dtype: str = "float32") -> int:
    """The lower estimate: embeddings (and token grids) at :data:`MIN_EMBEDDING_RATIO` of their raw
    size; int8 vectors take a byte a value plus a float32 scale each."""
    vectors = 1 + (int(grid_shape[0]) * int(grid_shape[1]) if grid_shape else 0)
    per_vector = int(embed_dim) * 4 if dtype == "float32" else int(embed_dim) + 4
    return int(n_cells * vectors * per_vector * MIN_EMBEDDING_RATIO)


def sample_store_size(ids: Sequence[Any] | np.ndarray, wkb: Sequence[Any] | np.ndarray, *, n_scales: int, embed_dim: int, chunk_size: int,
                      grid_shape: tuple[int, int] | None = None, dtype: str = "float32") -> StoreSize:
    """Size of the sample cube a campaign on these samples writes (see :class:`StoreSize`).

    Parameters
    ----------
    ids : sequence of str or int
        Sample ids (integers take 8 bytes, strings their UTF-8 length plus a 4-byte prefix).
    wkb : sequence of bytes
        Footprint geometries as WKB (stored as hex).
    n_scales, embed_dim, chunk_size : int
    grid_shape : tuple of int, optional
        Token grid ``(gy, gx)`` when token grids are stored.
    dtype : str
        Stored embedding type (``"float32"`` or ``"int8"``); the upper bound counts float32 either way.

    Returns
    -------
    StoreSize
    """
    strict_int("embed_dim", embed_dim)
    strict_int("n_scales", n_scales)
    strict_int("chunk_size", chunk_size)
    n = len(ids)
    ints = n > 0 and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids)
    id_bytes = 8 * n if ints else _total_bytes([str(i) for i in ids], "string") + _VLEN_PREFIX * n
    geometry = 2 * _total_bytes(wkb, "binary") + _VLEN_PREFIX * len(wkb)  # stored as hex
    grid = grid_shape is not None
    return StoreSize(_embedding_lower(n * n_scales, embed_dim, grid_shape, dtype),
                     _cube_payload(n, n_scales, embed_dim, grid_shape, id_bytes, geometry)
                     + _cube_meta_files(grid) * _METADATA_BYTES,
                     _cube_files(n, n_scales, chunk_size, grid))


def _total_bytes(items: Sequence[Any] | np.ndarray, kind: str) -> int:
    """Total UTF-8 (``kind`` "string") or raw ("binary") length of ``items``, counted by Arrow."""
    import pyarrow as pa

    arr = pa.array(items, type=pa.large_string() if kind == "string" else pa.large_binary())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    return int(offsets[-1] - offsets[0]) if len(arr) else 0


def tiling_store_size(tables: Sequence[TileTable], *, embed_dim: int, chunk_size: int,
                      grid_shape: tuple[int, int] | None = None, dtype: str = "float32") -> StoreSize:
    """Size of a tiling store: each scale's sample cube and zone grids (see :class:`StoreSize`).

    The lower estimate counts the embeddings twice (sample cube and grid), as the store holds them.
    """
    grid = grid_shape is not None
    total = StoreSize(0, 2 * _METADATA_BYTES, 2)  # the root group and "samples"
    for table in tables:
        counts = TileCounts.of(table)
        n, zones = counts.tiles, counts.zones
        meta = _cube_meta_files(grid) + 1 + zones * 7  # the sample cube, the scale's group, each zone's
        total += StoreSize(_embedding_lower(n, embed_dim, grid_shape, dtype)
                           + _embedding_lower(n, embed_dim, None, dtype),
                           sample_cube_bytes(counts, embed_dim, grid_shape) + grids_bytes(counts, embed_dim)
                           + meta * _METADATA_BYTES,
                           _cube_files(n, 1, chunk_size, grid) + 3 * counts.blocks + zones * 12 + 1)
    return total


def count_blocks(table: TileTable) -> int:
    """Blocks with tiles: the table is in block order, each block one run of rows."""
    if not len(table):
        return 0
    b = table.block
    brow, bcol = table.row // b, table.col // b
    return 1 + int(((np.diff(table.epsg) != 0) | (np.diff(brow) != 0) | (np.diff(bcol) != 0)).sum())


@dataclass(frozen=True)
class TileCounts:
    """What the size bounds of one scale need from its tile table: counts that add up over zones.

    A scale too large to hold as one table (a continent at 10 m) is counted zone by zone,
    :meth:`of` each zone's tiles, and the counts added (``+``): tables of distinct zones.

    Attributes
    ----------
    tiles : int
    blocks : int
        Blocks with tiles (:func:`count_blocks`).
    block : int
        Tiles per block side.
    zones : int
        UTM zones with tiles.
    id_bytes : int
        The tile ids as Zarr v3 strings.
    wkb_bytes : int
        The longest footprint WKB among the table's first rows (every tile's is as long).
    zone_axes : int
        Cells of the zone grids' ``y`` and ``x`` coordinates, summed over the zones.
    """

    tiles: int
    blocks: int
    block: int
    zones: int
    id_bytes: int
    wkb_bytes: int
    zone_axes: int

    @classmethod
    def of(cls, table: TileTable) -> TileCounts:
        """The counts of ``table``."""
        from .tiling import grid_extent

        n = len(table)
        wkb = max((len(w) for w in table.slice(0, min(n, 16)).wkb), default=0) if n else 0
        codes = table.zones()
        axes = 0
        for code in codes:
            _, ny, _, nx = grid_extent(table, code)
            axes += ny + nx
        return cls(n, count_blocks(table), table.block, len(codes), _id_bytes(table), wkb, axes)

    def __add__(self, other: TileCounts) -> TileCounts:
        if other.block != self.block:
            raise SpecError("TileCounts.block", other.block, f"{self.block}, as the counts added to")
        return TileCounts(self.tiles + other.tiles, self.blocks + other.blocks, self.block, self.zones + other.zones,
                          self.id_bytes + other.id_bytes, max(self.wkb_bytes, other.wkb_bytes),
                          self.zone_axes + other.zone_axes)


def sample_cube_bytes(table: TileTable | TileCounts, embed_dim: int, grid_shape: tuple[int, int] | None = None) -> int:
    """Upper bound of the scale's sample cube, uncompressed.

    Data per sample: embedding ``D`` float32, token grid ``D x gy x gx`` float32 when
    ``grid_shape``, status int8, input_res_m and valid_fraction float32, the error
    string counted empty (4-byte length; failed samples add up to 200 bytes each).
    Coordinates: ids, lon, lat, geohash, geometry as WKB hex; plus ``scale`` and ``feature``.

    Parameters
    ----------
    table : TileTable or TileCounts
        The scale's tiles, or their counts.
    embed_dim : int
        Embedding width ``D``.
    grid_shape : tuple of int, optional
        Token grid ``(gy, gx)`` when token grids are stored.

    Returns
    -------
    int
    """
    strict_int("embed_dim", embed_dim)
    c = table if isinstance(table, TileCounts) else TileCounts.of(table)
    return _cube_payload(c.tiles, 1, embed_dim, grid_shape, c.id_bytes, c.tiles * (_VLEN_PREFIX + 2 * c.wkb_bytes))


def grids_bytes(table: TileTable | TileCounts, embed_dim: int) -> int:
    """Upper bound of the scale's zone grids, uncompressed.

    One ``block x block`` chunk of embedding float32 + status int8 + sample_index
    int64 per block with tiles (chunks of empty blocks are never written), plus each
    zone's ``x``, ``y`` and ``feature`` coordinates.

    Parameters
    ----------
    table : TileTable or TileCounts
        The scale's tiles, or their counts.
    embed_dim : int
        Embedding width ``D``.

    Returns
    -------
    int
    """
    strict_int("embed_dim", embed_dim)
    c = table if isinstance(table, TileCounts) else TileCounts.of(table)
    D = int(embed_dim)
    return int(c.blocks * c.block ** 2 * (D * 4 + 1 + 8) + c.zone_axes * 8 + c.zones * D * 8)


def _digit_total(v: np.ndarray) -> int:
    """Characters of ``str(x)`` summed over int64 ``v`` (exact: integer thresholds, no logarithms)."""
    if not len(v):
        return 0
    a = np.abs(v)
    total = len(v) + int(np.count_nonzero(v < 0))
    top, k = int(a.max()), 10
    while k <= top:
        total += int(np.count_nonzero(a >= k))
        k *= 10
    return total


def _id_bytes(table: TileTable) -> int:
    """Bytes of the tile ids ``"{epsg}_{scale:g}m_{row}_{col}"`` as Zarr v3 strings."""
    if not len(table):
        return 0
    fixed = len(f"_{table.scale_m:g}m__") + _VLEN_PREFIX
    return (_digit_total(table.epsg.astype(np.int64)) + _digit_total(table.row) + _digit_total(table.col)
            + fixed * len(table))
