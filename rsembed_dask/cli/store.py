"""``rsembed-dask inspect`` and ``quicklook``: subcommands that read cubes and tiling stores."""

from __future__ import annotations

import json

__all__ = ["add_inspect", "add_quicklook"]


def add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="schema, status counts and spec of a cube or tiling store")
    p.add_argument("cube", help="path of the .zarr cube or tiling store")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--verify", action="store_true",
                   help="read every chunk of every array: report missing or undecodable chunks, unreadable "
                        "array metadata, empty ids, and cells whose data contradicts their status, naming sample "
                        "ids and scale (exit 1 if anything is found; `run --repair` repairs it)")
    p.set_defaults(func=_cmd_inspect)


def _writer(path: str) -> str | None:
    """Who is writing the store now (its lock), if anyone; inspect itself never takes the lock."""
    from ..store.lock import read_lock

    holder = read_lock(path)
    return None if holder is None else holder.describe()


def _print_problems(problems: list[str]) -> None:
    print("verify:", "consistent" if not problems else "\n  ".join(["PROBLEMS"] + problems))


def _problems_only(args, problems: list[str]) -> int:
    """Report a store too damaged to summarise: only what verify found (exit 1)."""
    if args.json:
        print(json.dumps({"path": str(args.cube), "problems": problems, "writer": _writer(args.cube)}, indent=2))
    else:
        print(f"{args.cube}: damaged too much to summarise")
        _print_problems(problems)
    return 1


def _cmd_inspect(args) -> int:
    from ..store.cube import Cube, open_cube
    from ..store.open import is_tiling_store
    from ..errors import CubeDamagedError

    if is_tiling_store(args.cube):
        return _inspect_tiling(args)
    health = None
    if args.verify:
        from ..store.verify import check_cube

        health = check_cube(args.cube)
        if not health.openable:  # the summary below needs every array's metadata
            return _problems_only(args, health.problems)
    try:
        cube = Cube.open(args.cube)
        ds = open_cube(args.cube)
        # CubeDamagedError when a status chunk does not decode
        counts = cube.status_counts() if health is None else health.status_counts
    except CubeDamagedError:
        if health is None:
            raise
        return _problems_only(args, health.problems)
    counts = {k: v for k, v in counts.items() if k != "unreadable" or v}
    info = {"path": str(args.cube), "samples": cube.n_samples, "scales": list(cube.scales),
            "embed_dim": cube.embed_dim, "grid_shape": cube.grid_shape,
            "status": counts, "spec": json.loads(cube.spec.to_json()),
            "spec_hash": cube.attrs.get("spec_hash"), "versions": cube.attrs.get("versions"),
            "request_account": cube.attrs.get("request_account"), "writer": _writer(args.cube),
            "variables": {k: {"dims": list(v.dims), "dtype": str(v.dtype), "shape": list(v.shape)}
                          for k, v in ds.variables.items()}}
    rc = 0
    if health is not None:
        info["problems"] = health.problems
        rc = 1 if health.problems else 0
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return rc
    print(ds)
    print("\nstatus:", ", ".join(f"{k} {v}" for k, v in info["status"].items()))
    print("spec hash:", info["spec_hash"])
    print("spec:", cube.spec.to_json())
    print("versions:", info["versions"])
    print("request account:", info["request_account"])
    if info["writer"]:
        print("being written by:", info["writer"])
    if health is not None:
        _print_problems(health.problems)
    return rc


def _inspect_tiling(args) -> int:
    from ..errors import CubeDamagedError
    from ..store.info import format_tiling_info, tiling_info

    problems = None
    if args.verify:
        from ..store.verify import verify_tiling_store

        problems = verify_tiling_store(args.cube)
    try:
        info = tiling_info(args.cube)
    except CubeDamagedError:
        if problems is None:
            raise
        return _problems_only(args, problems)
    info["writer"] = _writer(args.cube)
    rc = 0
    if problems is not None:
        info["problems"] = problems
        rc = 1 if problems else 0
    print(json.dumps(info, indent=2, default=str) if args.json else format_tiling_info(info))
    return rc


def add_quicklook(sub) -> None:
    p = sub.add_parser("quicklook", help="PCA RGB GeoTIFF + PNG per UTM zone of one scale of a tiling store")
    p.add_argument("store", help="path of the tiling store (.zarr)")
    p.add_argument("--scale", type=float, required=True, help="pixel size in metres, e.g. 10")
    p.add_argument("--out", required=True, help="directory for quicklook_<scale>_EPSG<zone>.tif/.png")
    p.add_argument("--components", type=int, nargs=3, default=[0, 1, 2], metavar="PC",
                   help="principal components shown as red, green, blue (default 0 1 2)")
    p.add_argument("--no-png", action="store_true", help="GeoTIFFs only")
    p.set_defaults(func=_cmd_quicklook)


def _cmd_quicklook(args) -> int:
    from ..explore.geotiff import grid_quicklook

    for path in grid_quicklook(args.store, args.scale, args.out, components=tuple(args.components),
                               png=not args.no_png):
        print(path)
    return 0
