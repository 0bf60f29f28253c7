"""Planning a tiling campaign and filling its georeferenced grids (used by ``run_campaign``).

A :class:`~rsembed_dask.tiling.Tiling` becomes one job per scale (its tile
table, its sample cube, the campaign spec at that scale); after the units ran,
the per-zone grids are filled from the sample cubes by tasks on the cluster,
one batch of blocks per task, so no embedding passes through the client.
"""

from __future__ import annotations

import logging
import os

import zarr

from .errors import SpecError
from .progress import ProgressBar
from .runner import Job
from .sampling import work_units
from .specs import CampaignSpec, ModelSpec, OutputSpec, SensorSpec, TemporalSpec
from .tile_cube import block_batches, create_or_open_tiling, is_tiling_store, rasterise_blocks, set_synced
from .tiling import Tiling

__all__ = ["plan_tiling", "sync_grids", "grids_synced"]

log = logging.getLogger(__name__)


def plan_tiling(tiling: Tiling, out, *, scales, temporal: TemporalSpec, sensor: SensorSpec | None,
                model: ModelSpec, output: OutputSpec | None, chunk_size: int | None, versions=None,
                preflight=None):
    """Validate, create (or reopen) the tiling store; returns ``(spec, [(Job, units)], path)``.

    ``preflight(path, spec, size)``, if given, is called before the store is created or
    opened (``size``: :func:`~rsembed_dask.store_size.tiling_store_size`).
    """
    from .store_size import tiling_store_size
    from .weights import model_info

    if not isinstance(temporal, TemporalSpec):
        raise SpecError("temporal", temporal, "a TemporalSpec (TemporalSpec.range(start, end) or .year(y))")
    if scales is not None and sorted(float(s) for s in  # order does not matter (the tiling's are sorted)
                                     ([scales] if isinstance(scales, (int, float)) else scales)) != sorted(tiling.scales):
        raise SpecError("scales", scales, f"None or the tiling's own scales {list(tiling.scales)}")
    if model.image_size != tiling.image_size:
        raise SpecError("model.image_size", model.image_size,
                        f"the tiling's tile size {tiling.image_size} px (tiles are fetched at model size)")
    spec = CampaignSpec(temporal=temporal, sensor=sensor or SensorSpec(), model=model,
                        output=output or OutputSpec.pooled(), scales=tiling.scales,
                        chunk_size=chunk_size or tiling.block ** 2, buffer_m=None)
    info = model_info(spec.model)
    grid_shape = (info.grid_size, info.grid_size) if spec.output.mode == "grid" else None
    path = os.path.abspath(os.fspath(out))
    if preflight is not None:
        preflight(path, spec, tiling_store_size(tiling.tables, embed_dim=info.embed_dim,
                                                chunk_size=spec.chunk_size, grid_shape=grid_shape,
                                                dtype=spec.output.dtype))
    cubes = create_or_open_tiling(path, tiling, spec, embed_dim=info.embed_dim, grid_shape=grid_shape,
                                  versions=versions)
    jobs = []
    for s, table in zip(tiling.scales, tiling.tables):
        cube = cubes[s]
        jobs.append((Job(table, cube, cube.spec), work_units(len(table), (s,), spec.chunk_size)))
    return spec, jobs, path


def grids_synced(path: str) -> bool:
    """Whether the store's grids reflect its sample cubes."""
    if not is_tiling_store(path):
        return False
    return bool(zarr.open_group(path, mode="r", zarr_format=3).attrs.get("raster_synced", False))


def sync_grids(client, path: str, tiling: Tiling, *, progress: bool = True) -> int:
    """Fill every zone grid from the sample cubes, one task per batch of blocks.

    Returns the number of tiles copied. Idempotent: every block is rewritten whole.
    """
    from distributed import as_completed

    futures = []
    for s, table in zip(tiling.scales, tiling.tables):
        for i, batch in enumerate(block_batches(table)):
            lo, hi = batch[0][3], batch[-1][4]
            futures.append(client.submit(rasterise_blocks, path, s, table.block, batch, table.row[lo:hi],
                                         table.col[lo:hi], pure=False,
                                         key=f"rasterise-{s:g}m-{i}-{os.urandom(4).hex()}"))
    bar = ProgressBar(len(futures), enabled=progress, desc="grids")
    copied = 0
    try:
        for fut in as_completed(futures):
            copied += fut.result()
            bar.update(1)
    finally:
        bar.close()
    set_synced(path, True)
    log.info("grids of %s synced: %d tiles", path, copied)
    return copied
