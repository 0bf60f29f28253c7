"""``rsembed-dask inspect`` and ``quicklook``: subcommands that read cubes and tiling stores."""

from __future__ import annotations

import json

from .args import add_storage_options, store_location

__all__ = ["add_inspect", "add_quicklook", "add_change"]


def add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="schema, status counts and spec of a cube or tiling store")
    p.add_argument("cube", help="path or s3://, gs://, az:// URL of the .zarr cube or tiling store")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_storage_options(p)
    p.add_argument("--verify", action="store_true",
                   help="read every chunk of every array: report missing or undecodable chunks, unreadable "
                        "array metadata, empty ids, and cells whose data contradicts their status, naming sample "
                        "ids, scale, chunk and, in a cube with time, the window (exit 1 if anything is found; "
                        "`run --repair` repairs it)")
    p.set_defaults(func=_cmd_inspect)


def _problems_only(args, problems: list[str]) -> int:
    """Report a store too damaged to summarise: only what verify found (exit 1)."""
    from ..store.info import format_problems, writer_of

    if args.json:
        print(json.dumps({"path": str(args.cube), "problems": problems, "writer": writer_of(args.cube)},
                         indent=2))
    else:
        print(f"{args.cube}: damaged too much to summarise")
        print(format_problems(problems))
    return 1


def _cmd_inspect(args) -> int:
    from ..errors import CubeDamagedError
    from ..store.info import format_store_info, store_info
    from ..store.open import is_tiling_store, open_cube
    from ..store.verify import check_cube, verify_tiling_store

    args.cube = store_location(args, "cube")
    tiling = is_tiling_store(args.cube)
    problems, counts = None, None
    if args.verify:
        if tiling:
            problems = verify_tiling_store(args.cube)
        else:
            health = check_cube(args.cube)
            if not health.openable:  # the summary needs every array's metadata
                return _problems_only(args, health.problems)
            problems, counts = health.problems, health.status_counts
    try:
        info = store_info(args.cube, status_counts=counts)  # CubeDamagedError: a status chunk does not decode
    except CubeDamagedError:
        if problems is None:
            raise
        return _problems_only(args, problems)
    rc = 0
    if problems is not None:
        info["problems"] = problems
        rc = 1 if problems else 0
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return rc
    if not tiling:
        print(open_cube(args.cube))
        print()
    print(format_store_info(info))
    return rc


def add_quicklook(sub) -> None:
    p = sub.add_parser("quicklook", help="PCA RGB maps of one scale (and window): a GeoTIFF + PNG per UTM zone of "
                                         "a tiling store, a PNG of the samples of a sample cube")
    p.add_argument("store", help="path or URL of the tiling store or sample cube (.zarr)")
    add_storage_options(p)
    p.add_argument("--scale", type=float, required=True, help="pixel size in metres, e.g. 10")
    p.add_argument("--time", default=None, metavar="T",
                   help="the window drawn, for a store written over several windows: its start date (YYYY-MM-DD) "
                        "or its year where one window starts in it (default: the only window)")
    p.add_argument("--out", required=True, help="directory for quicklook_<scale>_EPSG<zone>[_<window>].tif/.png "
                                                "(a sample cube: quicklook_<scale>[_<window>].png)")
    p.add_argument("--components", type=int, nargs=3, default=[0, 1, 2], metavar="PC",
                   help="principal components shown as red, green, blue (default 0 1 2)")
    p.add_argument("--no-png", action="store_true", help="GeoTIFFs only (tiling stores)")
    p.set_defaults(func=_cmd_quicklook)


def _cmd_quicklook(args) -> int:
    from ..errors import SpecError
    from ..explore.geotiff import grid_quicklook
    from ..explore.sample_map import samples_quicklook
    from ..store.open import is_tiling_store, open_cube

    loc = store_location(args, "store")
    if is_tiling_store(loc):
        paths = grid_quicklook(loc, args.scale, args.out, time=args.time, components=tuple(args.components),
                               png=not args.no_png)
    elif args.no_png:
        raise SpecError("--no-png", True, "no --no-png for a sample cube (its quicklook is a PNG; GeoTIFFs are "
                                          "written for tiling stores)")
    else:
        paths = [samples_quicklook(open_cube(loc), args.scale, args.out, time=args.time,
                                   components=tuple(args.components))]
    for path in paths:
        print(path)
    return 0


def add_change(sub) -> None:
    p = sub.add_parser("change", help="cosine distance between two windows: per sample of a cube (GeoParquet + PNG) "
                                      "or per tile of a tiling store (a GeoTIFF + PNG per UTM zone)")
    p.add_argument("cube", help="path or URL of a cube or tiling store written with several windows (.zarr)")
    add_storage_options(p)
    p.add_argument("--from", dest="t0", required=True, metavar="T0",
                   help="the first window: its start date (YYYY-MM-DD), or its year where one window starts in it")
    p.add_argument("--to", dest="t1", required=True, metavar="T1", help="the second window (as --from)")
    p.add_argument("--scale", type=float, required=True, help="pixel size in metres, e.g. 10")
    p.add_argument("--out", required=True, help="directory for change_<from>_<to>_<scale>m.parquet/.png (a tiling "
                                                "store: change_<from>_<to>_<scale>m_EPSG<zone>.tif/.png)")
    p.set_defaults(func=_cmd_change)


def _cmd_change(args) -> int:
    from ..explore.windows_change import write_change
    from ..store.open import open_cube

    paths = write_change(open_cube(store_location(args, "cube")), args.t0, args.t1, scale=args.scale, out=args.out)
    for path in paths.values():
        print(path)
    return 0
