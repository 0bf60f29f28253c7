"""Command line: ``rsembed-dask emulator | embed | demo | run | inspect | plan | quicklook | export | stac | explore``.

``inspect`` and ``quicklook`` (reading stores) live in :mod:`rsembed_dask.cli.store`;
``export`` and ``stac`` (interchange files) in :mod:`rsembed_dask.cli.export`; ``explore`` (the web app)
in :mod:`rsembed_dask.cli.explore`.

Environment knobs (``RS_EMBED_SCALEMAE_*``) are read here, once, at the edge.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .args import (add_aoi_positional, add_ee_options, add_scales, add_storage_options, add_windows, gee_options,
                   positive_int, positive_seconds, scales_given, storage_options, take_negative_bbox,
                   window_flags_given, windows_given)
from .explore import add_explore
from .export import add_export, add_stac
from .store import add_change, add_inspect, add_quicklook
from ..cluster.local import SCHEDULER_TIMEOUT_S
from ..campaign.options import GPU_WAIT_S
from ..errors import NoImageryWarning, RsEmbedError, StoreLockedError
from ..specs import DEFAULT_IMAGE_SIZE
from ..store.location import is_url

if TYPE_CHECKING:
    from ..plan.estimate import PlanProgress

log = logging.getLogger(__name__)

#: Exit status when another run holds the store's lock (2: any other error; 1: unfinished cells).
EXIT_LOCKED = 3
#: ``plan``'s window when none is given (the one ``--measure-latency`` composites).
PLAN_LATENCY_WINDOW = ("2023-01-01", "2024-01-01")


def _add_emulator(sub) -> None:
    p = sub.add_parser("emulator", help="serve the loopback Earth Engine emulator")
    p.add_argument("--port", type=int, default=8765, help="TCP port on 127.0.0.1 (default 8765)")
    p.add_argument("--latency-s", type=float, default=0.0, help="added latency per request")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic world")
    p.set_defaults(func=_cmd_emulator)


def _cmd_emulator(args) -> int:
    from ..emulator.server import serve

    serve(port=args.port, latency_s=args.latency_s, seed=args.seed)
    return 0


def _add_embed(sub) -> None:
    p = sub.add_parser("embed", help="embed one point footprint (rs-embed style)")
    p.add_argument("--lon", type=float, required=True)
    p.add_argument("--lat", type=float, required=True)
    p.add_argument("--buffer-m", type=float, default=1120.0, help="half-side in metres (default 1120)")
    p.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    p.add_argument("--end", required=True, help="day after the last, YYYY-MM-DD (exclusive)")
    p.add_argument("--scale-m", type=float, default=10.0, help="pixel size in metres (default 10)")
    p.add_argument("--grid", action="store_true", help="token grid instead of a pooled vector")
    p.add_argument("--pooling", choices=("mean", "max"), default="mean")
    p.add_argument("--model", default=None, help="hub id, local dir or test-tiny/test-small")
    p.add_argument("--backend", default="gee", help="gee | emulator | local:PATH")
    add_ee_options(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true",
                   help="print JSON: the embedding itself (NaN as null), its shape and provenance")
    p.add_argument("--out", default=None, metavar="FILE.npy",
                   help="save the embedding (float32, (D,) or (D, H, W)) to this .npy file; the output then "
                        "names the file instead of listing the values (for large grids)")
    p.set_defaults(func=_cmd_embed)


def _cmd_embed(args) -> int:
    import numpy as np

    from ..api import get_embedding
    from ..specs import ModelSpec, OutputSpec, PointBuffer, SensorSpec, TemporalSpec

    if args.out is not None and not args.out.endswith(".npy"):  # before any fetch
        from ..errors import SpecError

        raise SpecError("--out", args.out, "a file name ending in .npy")
    model = ModelSpec.from_env(model_id=args.model, device=args.device)
    output = OutputSpec.grid(args.pooling) if args.grid else OutputSpec.pooled(args.pooling)
    emb = get_embedding(
        "scalemae_rgb",
        spatial=PointBuffer(args.lon, args.lat, args.buffer_m),
        temporal=TemporalSpec.range(args.start, args.end),
        sensor=SensorSpec(scale_m=args.scale_m),
        output=output,
        backend=args.backend,
        model=model,
        gee_options=gee_options(args),
    )
    data = np.asarray(emb.data, dtype=np.float32)
    summary: dict[str, Any] = {
        "shape": list(data.shape),
        "mean": float(np.nanmean(data)),
        "std": float(np.nanstd(data)),
        "min": float(np.nanmin(data)),
        "max": float(np.nanmax(data)),
        "head": [round(float(v), 6) for v in data.reshape(-1)[:8]],
    }
    if args.out is not None:
        _save_npy(args.out, data)
    if args.json:
        out: dict[str, Any] = {"shape": list(data.shape), "dtype": str(data.dtype)}
        if args.out is None:
            out["embedding"] = _json_values(data)
        else:
            out["embedding_file"] = args.out
        out.update(summary=summary, meta=emb.meta)
        print(json.dumps(out, default=str))
    else:
        print(f"embedding {tuple(data.shape)} mean={summary['mean']:.4f} std={summary['std']:.4f} "
              f"min={summary['min']:.4f} max={summary['max']:.4f}")
        print("first values:", " ".join(f"{v:.4f}" for v in summary["head"]))
        if args.out is not None:
            print(f"saved to {args.out} (numpy.load)")
        for k, v in emb.meta.items():
            print(f"  {k}: {v}")
    return 0


def _json_values(data):
    """Nested lists of Python floats (the exact float32 values), NaN as ``None``."""
    import numpy as np

    values = data.astype(object)
    values[np.isnan(data)] = None
    return values.tolist()


def _save_npy(path: str, data) -> None:
    """Save ``data`` to ``path`` (ending in ``.npy``: checked by the caller), or SpecError naming it."""
    import numpy as np

    from ..errors import SpecError

    try:
        np.save(path, data, allow_pickle=False)
    except OSError as exc:
        raise SpecError("--out", path, f"a writable .npy path ({exc.strerror or exc})") from None


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="offline end-to-end demo on the emulator")
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    p.add_argument("--samples", type=positive_int, default=64, help="campaign samples (default 64)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, n_samples=args.samples)
    return 0


def _add_run(sub) -> None:
    from ..providers.limits import EE_CONCURRENCY

    p = sub.add_parser("run", help="embed a sample file, or tiles over an AOI (--tile), into a Zarr cube on Dask")
    add_aoi_positional(p, "samples", "SAMPLES|AOI",
                       help="GeoPackage, GeoJSON or GeoParquet of sample geometries; with --tile the AOI: "
                            "minlon,minlat,maxlon,maxlat or a vector file")
    p.add_argument("--tile", action="store_true",
                   help="tile the AOI at each scale (non-overlapping model-size tiles on UTM lattices) and write "
                        "a tiling store: per-scale sample cubes plus georeferenced per-zone grids")
    p.add_argument("--out", required=True, help="the cube (.zarr): a path or an s3://, gs://, az:// URL; an existing "
                                                "one with the same spec resumes")
    add_storage_options(p)
    add_scales(p)
    p.add_argument("--image-size", type=int, default=None, help="model input size and, with --tile, tile side "
                                                                   f"in pixels (default {DEFAULT_IMAGE_SIZE} or $RS_EMBED_SCALEMAE_IMG)")
    add_windows(p)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, help="Dask scheduler address (default: a local cluster)")
    p.add_argument("--scheduler-timeout", type=positive_seconds, default=None, metavar="S",
                   help=f"seconds for --scheduler to answer before giving up (default {SCHEDULER_TIMEOUT_S:g})")
    where.add_argument("--cluster", default=None, metavar="FILE",
                       help="start the cluster a recipe describes (cluster/local.yaml, slurm.yaml, kubernetes.yaml)")
    p.add_argument("--model", default=None, help="hub id, local dir or test-tiny/test-small")
    p.add_argument("--grid", action="store_true", help="also store token grids")
    p.add_argument("--pooling", choices=("mean", "max"), default="mean")
    p.add_argument("--dtype", choices=("float32", "int8"), default="float32",
                   help="storage of embeddings (and grids): float32 (default) or int8 with a float32 scale per "
                        "vector (about 4x smaller; open_cube dequantises; part of the cube's spec)")
    p.add_argument("--id-column", default=None, help="column holding sample ids (default: the index; not with --tile)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip (and record) invalid rows instead of refusing (not with --tile)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="samples per work unit and cube chunk (default: an existing cube's own, else 512; "
                        "with --tile 8 blocks of 8x8 tiles)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass (default: 8 on a CPU, fitted to free memory on a GPU, at most 256)")
    p.add_argument("--precision", choices=("float32", "bfloat16", "auto"), default=None,
                   help="the forward's precision (default float32; auto: bfloat16 on CUDA, float32 elsewhere; "
                        "part of the cube's spec, so a cube keeps the precision it was started with)")
    p.add_argument("--stac-dir", default=None, metavar="DIR",
                   help="after the run, write a STAC catalogue of the cube there (as `rsembed-dask stac`; "
                        "needs pystac: pip install 'rsembed_dask[stac]')")
    p.add_argument("--retry-failed", action="store_true", help="also re-run units with failed samples")
    p.add_argument("--retry-no-data", action="store_true",
                   help="re-run the no_data cells (e.g. a window reaching recent dates, whose scenes were not "
                        "ingested yet); ok cells are never re-run; failed ones only with --retry-failed")
    p.add_argument("--max-in-flight", type=int, default=None, metavar="N",
                   help="units in flight at most (default: as the Earth Engine bound and a 2 GiB budget of "
                        "fetched chips allow, at least 4 per GPU worker)")
    p.add_argument("--ee-concurrency", type=int, default=EE_CONCURRENCY, metavar="N",
                   help=f"Earth Engine requests in flight across the whole cluster (default {EE_CONCURRENCY}, "
                        f"the per-project quota)")
    p.add_argument("--ee-rate", type=float, default=None, metavar="R",
                   help="Earth Engine requests started per second across the whole cluster (the per-project "
                        "quota is 100; default: not limited)")
    p.add_argument("--repair", action="store_true",
                   help="read the whole cube first and run again every unit found damaged (missing or undecodable "
                        "chunks, data that contradicts its status); restore unreadable array metadata and damaged "
                        "coordinates from the samples (a plain run re-runs only units that lost chunks)")
    p.add_argument("--update", action="store_true",
                   help="re-embed samples of an existing cube whose geometry changed (same id, moved)")
    p.add_argument("--append", action="store_true",
                   help="add sample ids an existing cube does not hold, as new chunks")
    p.add_argument("--append-windows", action="store_true",
                   help="add date windows an existing cube or tiling store (written with several windows) does not hold, "
                        "along its time dimension; no existing chunk is rewritten")
    p.add_argument("--backend", default="gee", help="gee | emulator | local:PATH")
    add_ee_options(p)
    p.add_argument("--max-retries", type=int, default=None,
                   help="re-sends of one Earth Engine request on 429/5xx/malformed answers (default 6)")
    p.add_argument("--ee-startup-timeout", type=float, default=None, metavar="S",
                   help="seconds to connect to Earth Engine and for each start-up answer before the "
                        "configuration check gives up (default 20)")
    p.add_argument("--gpu-wait", type=float, default=GPU_WAIT_S, metavar="S",
                   help="seconds to wait for a GPU worker (--resources GPU=1) when there is none, at start or "
                        f"after the only one died, before giving up (default {GPU_WAIT_S:g})")
    lock = p.add_mutually_exclusive_group()
    lock.add_argument("--break-lock", action="store_true",
                      help="take the cube's writer lock over at once, whoever holds it (names the holder it broke)")
    lock.add_argument("--wait-lock", type=positive_seconds, default=0.0, metavar="S",
                      help="wait up to S seconds for a run holding the cube's lock to finish (default: exit 3 at once)")
    p.add_argument("--lock-stale", type=positive_seconds, default=None, metavar="S",
                   help="seconds without a heartbeat after which a holder's lock is taken over, and after which "
                        "this run stops when it cannot confirm its own (default 60; heartbeats every S/6)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_run, check=lambda args, p=p: _check_run(p, args), preflight=_preflight_run)


def _check_run(p: argparse.ArgumentParser, args) -> None:
    """Refuse options that mean nothing for a tiling run (argparse error, exit 2)."""
    if args.tile:
        for flag, given in (("--id-column", args.id_column is not None), ("--skip-invalid", args.skip_invalid),
                            ("--update", args.update), ("--append", args.append)):
            if given:
                p.error(f"{flag} is for sample files, not --tile (tiles are their own ids and footprints)")
    if args.ee_startup_timeout is not None and not args.ee_startup_timeout > 0:
        p.error(f"--ee-startup-timeout {args.ee_startup_timeout:g}: expected a positive number of seconds")
    if args.max_retries is not None and args.max_retries < 0:
        p.error(f"--max-retries {args.max_retries}: expected an integer >= 0")
    if not args.gpu_wait >= 0:
        p.error(f"--gpu-wait {args.gpu_wait:g}: expected a number of seconds >= 0")
    if args.max_in_flight is not None and args.max_in_flight < 1:
        p.error(f"--max-in-flight {args.max_in_flight}: expected an integer >= 1")
    if args.ee_concurrency < 1:
        p.error(f"--ee-concurrency {args.ee_concurrency}: expected an integer >= 1")
    if args.ee_rate is not None and not args.ee_rate >= 0.1:
        p.error(f"--ee-rate {args.ee_rate:g}: expected a number of requests per second >= 0.1")


def _preflight_run(args) -> None:
    """Checks of ``run`` that need more than argparse, before any cube or cluster exists.

    The backend's form, and that a scheduler answers at ``--scheduler`` (one line naming
    the address and how to start one, within ``--scheduler-timeout`` seconds).
    """
    from ..providers.backends import check_backend
    from ..cluster.local import check_scheduler

    check_backend(args.backend)
    if args.scheduler is not None:
        timeout = args.scheduler_timeout or SCHEDULER_TIMEOUT_S
        args.scheduler = check_scheduler(args.scheduler, timeout=timeout)
    elif args.scheduler_timeout is not None:
        from ..errors import SpecError

        raise SpecError("--scheduler-timeout", args.scheduler_timeout, "no value without --scheduler")


def _read_samples(path: str):
    from pathlib import Path

    import geopandas as gpd
    from pyogrio.errors import DataSourceError

    from ..errors import SpecError

    if not Path(path).is_file():
        raise SpecError("samples", path, "an existing .gpkg, .geojson or .parquet file")
    try:
        if path.endswith(".parquet"):
            return gpd.read_parquet(path)
        return gpd.read_file(path)
    except (OSError, ValueError, DataSourceError) as e:
        raise SpecError("samples", path, f"a readable .gpkg, .geojson or .parquet file ({e})") from None


def _cmd_run(args) -> int:
    from ..campaign import RunOptions, run_campaign
    from ..specs import ModelSpec, OutputSpec, env_defaults

    temporal = windows_given(args)  # checked before anything starts
    cluster = None
    if args.cluster:  # validated before anything else runs; started around the campaign
        from ..cluster.recipes import load_cluster_config, start_cluster

        cluster = load_cluster_config(args.cluster)
    scales = scales_given(args)
    model = ModelSpec.from_env(model_id=args.model, batch_size=args.batch_size, image_size=args.image_size,
                               dtype=args.precision)
    if args.tile:
        from ..geo.aoi import read_aoi
        from ..sampling.tiling import tile_aoi

        source = tile_aoi(read_aoi(args.samples), scales, image_size=model.image_size)
        samples = {}  # a tiling brings its own scales, ids and footprints
    else:
        source = _read_samples(args.samples)
        samples = {"scales": scales, "id_column": args.id_column,
                   "on_invalid": "skip" if args.skip_invalid else "raise"}
    run = RunOptions(retry_failed=args.retry_failed, retry_no_data=args.retry_no_data,
                     max_in_flight=args.max_in_flight, ee_concurrency=args.ee_concurrency,
                     ee_requests_per_s=args.ee_rate, repair=args.repair, update=args.update, append=args.append,
                     append_windows=args.append_windows,
                     gpu_wait_s=args.gpu_wait, progress=not args.no_progress, summary=True,
                     fetch_threads=env_defaults()["fetch_workers"], break_lock=args.break_lock,
                     wait_lock_s=args.wait_lock, lock_stale_s=args.lock_stale)
    # A recipe's cluster is started only when there is work (no SLURM jobs for a finished cube).
    client = (lambda: start_cluster(cluster)) if cluster is not None else args.scheduler
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NoImageryWarning)
        result = run_campaign(
            source, args.out, temporal=temporal,
            model=model, output=(OutputSpec.grid if args.grid else OutputSpec.pooled)(args.pooling, dtype=args.dtype),
            backend=args.backend, client=client, chunk_size=args.chunk_size,
            gee_options=_run_gee_options(args), stac_dir=args.stac_dir, options=run,
            storage_options=storage_options(args) if is_url(args.out) else None,
            cluster_options=_local_cluster_options(args), **samples)
    no_imagery = [w for w in caught if issubclass(w.category, NoImageryWarning)]
    for w in caught:
        if w not in no_imagery:  # give back what was not ours to catch
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(f"open it with: rsembed_dask.open_cube({str(args.out)!r})")
    if not args.repair:
        print(UNCHECKED_NOTE.format(out=shlex.quote(str(args.out))))
    if args.stac_dir is not None:
        print(f"STAC catalogue: {os.path.join(args.stac_dir, 'collection.json')}")
    if args.tile:
        names = ", ".join(f"{s:g}m" for s in source.scales)
        print(f"  an xarray.DataTree: tree['samples/<scale>'] holds the tiles, tree['<scale>/EPSG<zone>'] the "
              f"georeferenced grids (scales {names}); details: rsembed-dask inspect {args.out}")
    for w in no_imagery:
        print(f"rsembed-dask run: warning: {w.message}", file=sys.stderr)
    if no_imagery:
        return 1
    return 0 if _unfinished_cells(result) == 0 else 1


#: What a plain ``run`` did not check, printed after its summary (``--repair`` reads every chunk).
UNCHECKED_NOTE = ("checked: the status of every unit; not read: the "
                  "data chunks of finished units (a damaged one fails its checksum when read); "
                  "`rsembed-dask inspect --verify {out}` reads them all")


def _local_cluster_options(args) -> dict | None:
    """Options of the local cluster ``run`` starts (none given with ``--scheduler`` or ``--cluster``).

    Without ``-v`` its workers and nanny log only CRITICAL records: a task that fails (a
    unit that hits a full disk, a lost worker) is the campaign's to report, in one line,
    not the workers' in tracebacks; ``-v`` shows their warnings and errors again.
    """
    if args.scheduler or args.cluster or args.verbose:
        return None
    return {"silence_logs": logging.CRITICAL}


def _run_gee_options(args) -> dict:
    """``gee_options`` of ``run``: the shared Earth Engine flags plus the start-up timeout."""
    opts = gee_options(args)
    if args.ee_startup_timeout is not None:
        opts.update(connect_timeout_s=args.ee_startup_timeout, startup_timeout_s=args.ee_startup_timeout)
    return opts


def _unfinished_cells(result) -> int:
    """Pending or failed cells of a campaign's result: one cube, or every ``samples/<scale>`` of a tiling."""
    import xarray as xr

    from ..store.cube import FAILED, PENDING

    if isinstance(result, xr.DataTree):
        cubes = [node.to_dataset() for node in result["samples"].children.values()]
    else:
        cubes = [result]
    return sum(int(ds.status.isin([PENDING, FAILED]).sum()) for ds in cubes)


def _add_plan(sub) -> None:
    from ..plan.latency import ASSUMED_LATENCY_BASE_S, ASSUMED_LATENCY_S_PER_MIB
    from ..providers.limits import EE_CONCURRENCY, EE_REQUESTS_PER_S

    p = sub.add_parser("plan", help="tiles, units, requests, bytes, cube size and fetch time of a tiling "
                                    "campaign, before anything runs")
    add_aoi_positional(p, "aoi", "AOI", help="minlon,minlat,maxlon,maxlat or a GeoJSON/GeoPackage/GeoParquet file")
    add_scales(p)
    p.add_argument("--image-size", type=int, default=None, help=f"tile side in pixels (default {DEFAULT_IMAGE_SIZE} or $RS_EMBED_SCALEMAE_IMG)")
    p.add_argument("--chunk-size", type=int, default=None, help="tiles per work unit (default 512: eight 8x8 blocks)")
    p.add_argument("--bands", type=int, default=3, help="bands fetched (default 3: B4,B3,B2)")
    p.add_argument("--model", default=None, help="hub id, local dir or test-tiny/test-small (for D)")
    p.add_argument("--embed-dim", type=int, default=None,
                   help="embedding width D, overriding the model's (default: the model's; 1024 for ViT-L)")
    p.add_argument("--grid", action="store_true", help="token grids are stored too")
    p.add_argument("--ee-concurrency", type=int, default=EE_CONCURRENCY,
                   help=f"concurrent Earth Engine requests (quota; default {EE_CONCURRENCY})")
    p.add_argument("--requests-per-s", type=float, default=EE_REQUESTS_PER_S,
                   help=f"Earth Engine requests per second (quota; default {EE_REQUESTS_PER_S})")
    lat = p.add_mutually_exclusive_group()
    lat.add_argument("--latency-s", type=float, default=None,
                     help="mean seconds per request, for both modes (default: assumed "
                          f"{ASSUMED_LATENCY_BASE_S:g} s + {ASSUMED_LATENCY_S_PER_MIB:g} s per MiB)")
    lat.add_argument("--measure-latency", action="store_true",
                     help="time a few real single and coalesced requests on --backend and use the medians")
    p.add_argument("--latency-samples", type=int, default=3, help="units sampled by --measure-latency (default 3)")
    p.add_argument("--backend", default="gee", help="gee | emulator, for --measure-latency")
    add_windows(p, default=PLAN_LATENCY_WINDOW)  # counted by the plan; the first one for --measure-latency
    add_ee_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress lines on stderr (default: one per UTM zone and scale planned)")
    p.set_defaults(func=_cmd_plan)


def _cmd_plan(args) -> int:
    import time

    from ..geo.aoi import read_aoi
    from ..plan.latency import measure_latency
    from ..plan.estimate import estimate_campaign, resolve_embed_dim
    from ..plan.report import format_plan
    from ..specs import ModelSpec
    from ..sampling.tiling import tile_zones

    t0 = time.perf_counter()
    windows = windows_given(args)  # checked before any planning
    named = windows if window_flags_given(args) else None
    aoi = read_aoi(args.aoi)
    scales = scales_given(args)
    model = ModelSpec.from_env(model_id=args.model, **({"image_size": args.image_size} if args.image_size else {}))
    dim, patch, source = resolve_embed_dim(model.model_id, model.image_size)
    if args.embed_dim is not None:
        dim, source = args.embed_dim, "given by --embed-dim"
    zoned = tile_zones(aoi, scales, model.image_size)  # tiled zone by zone while planning
    latency = args.latency_s
    if args.measure_latency:
        from ..providers.backends import open_backend

        if args.backend not in ("gee", "emulator"):
            from ..errors import SpecError

            raise SpecError("--backend", args.backend, "'gee' or 'emulator' for --measure-latency")
        with open_backend(args.backend, gee_options=gee_options(args)) as provider:
            # units spread over the first scale's whole table (held while measuring only)
            latency = measure_latency(provider, zoned.table(zoned.scales[0]), n_bands=args.bands,
                                      temporal=windows[0],
                                      chunk_size=args.chunk_size, samples=args.latency_samples)
    grid_shape = (model.image_size // patch,) * 2 if args.grid else None
    progress = None if args.no_progress else _PlanProgressLines(sys.stderr)
    plan = estimate_campaign(zoned, chunk_size=args.chunk_size, n_bands=args.bands, embed_dim=dim,
                             embed_dim_source=source, model_id=model.model_id, grid_shape=grid_shape,
                             latency=latency, concurrency=args.ee_concurrency,
                             requests_per_s=args.requests_per_s, aoi_label=args.aoi, progress=progress,
                             windows=named)
    plan = dataclasses.replace(plan, planning_s=time.perf_counter() - t0)
    print(json.dumps(plan.as_dict(), indent=2) if args.json else format_plan(plan))
    return 0


class _PlanProgressLines:
    """``plan``'s progress on ``stream``: ``plan: zone 32633 at 10 m (12/360), 1.1 M footprints so far, 14 s``,
    one line per zone of each scale; on a terminal the line is rewritten in place."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())

    def __call__(self, p: PlanProgress) -> None:
        n = f"{p.footprints / 1e6:.1f} M" if p.footprints >= 1e6 else f"{p.footprints:,}"
        line = (f"plan: zone {p.epsg} at {p.scale_m:g} m ({p.step}/{p.steps}), {n} footprints so far, "
                f"{p.elapsed_s:.0f} s")
        if self.tty:
            line = "\r" + line + "\x1b[K" + ("\n" if p.step == p.steps else "")
        else:
            line += "\n"
        self.stream.write(line)
        self.stream.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsembed-dask", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_emulator(sub)
    _add_embed(sub)
    _add_demo(sub)
    _add_run(sub)
    add_inspect(sub)
    _add_plan(sub)
    add_quicklook(sub)
    add_change(sub)
    add_export(sub)
    add_stac(sub)
    add_explore(sub)
    return parser


#: Loggers of the Dask stack whose INFO records (workers closing, comms closed during a normal
#: shutdown, with tracebacks) are shown only from ``-vv`` on.
_CHATTY_LOGGERS = ("distributed", "tornado", "bokeh", "asyncio")
#: Exit codes of a run ended by a signal (the shell's 128 + signal number).
_SIGNAL_EXIT: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}


class _QuietDask(logging.Filter):
    """Let through records of the Dask stack only from WARNING on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(_CHATTY_LOGGERS)


def _configure_logging(verbose: int) -> None:
    """WARNING by default, ``-v`` INFO, ``-vv`` DEBUG and the Dask stack's INFO too."""
    level = max(logging.WARNING - 10 * verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose >= 2:
        return
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _QuietDask) for f in handler.filters):
            handler.addFilter(_QuietDask())
    for name in _CHATTY_LOGGERS:  # already imported with handlers of their own
        logger = logging.getLogger(name)
        if logger.handlers and logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
    if verbose == 0:  # "Worker process still alive after 4.0 seconds, killing": teardown, not news
        logging.getLogger("distributed.nanny").setLevel(logging.ERROR)


class _Signals:
    """SIGTERM handled like Ctrl-C while a command runs: KeyboardInterrupt in the main thread."""

    def __init__(self):
        self.received: int | None = None
        self._previous = None

    def _on_term(self, signum, frame) -> None:
        self.received = signum
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise KeyboardInterrupt

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_term)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _interrupted(args, argv: Sequence[str], signum: int) -> str:
    """The one line printed when a signal ends a command."""
    name = signal.Signals(signum).name
    line = f"rsembed-dask {args.command}: interrupted ({name})"
    if args.command == "run":
        line += (f": finished units are kept in {args.out} and the others stay pending; "
                 f"run the same command again to resume: {shlex.join(['rsembed-dask', *argv])}")
    return line


def in_cli_words(message: str) -> str:
    """``message`` with the Python keywords it names as a way out replaced by this CLI's flags."""
    from ..sampling.samples import SKIP_INVALID

    return message.replace(SKIP_INVALID, "--skip-invalid")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rsembed-dask`` command line (the console script's entry point).

    Errors are one line on stderr, without a traceback.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit code: 0 done; 1 cells left pending or failed, or problems found by
        ``inspect --verify``; 2 an error; 3 another run holds the cube's lock; 130 / 143
        interrupted by Ctrl-C / SIGTERM.

    Examples
    --------
    >>> main(["plan", "3.0,31.0,3.3,31.2", "--scales", "20", "--json"])  # doctest: +SKIP
    0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    unknown = take_negative_bbox(args, unknown)  # "-10,35,40,70" is a bbox, not an option
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if getattr(args, "check", None) is not None:  # option combinations argparse cannot express
        args.check(args)
    _configure_logging(args.verbose)
    with _Signals() as signals:
        try:
            if getattr(args, "preflight", None) is not None:  # before any cube or cluster exists
                args.preflight(args)
            return args.func(args)
        except StoreLockedError as exc:  # another run writes the store: wait, do not fix anything
            print(f"rsembed-dask {args.command}: {exc}", file=sys.stderr)
            return EXIT_LOCKED
        except RsEmbedError as exc:
            print(f"rsembed-dask {args.command}: error: {in_cli_words(str(exc))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            signum = signals.received or signal.SIGINT
            print(_interrupted(args, argv, signum), file=sys.stderr)
            return _SIGNAL_EXIT[signum]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
