"""``rsembed-dask inspect`` and ``quicklook``: subcommands that read cubes and tiling stores."""

from __future__ import annotations

import json

__all__ = ["add_inspect", "add_quicklook"]


def add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="schema, status counts and spec of a cube or tiling store")
    p.add_argument("cube", help="path of the .zarr cube or tiling store")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--verify", action="store_true",
                   help="check every ok cell is finite and every other cell empty, and a tiling store's "
                        "grid cells against their samples (exit 1 if not)")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args) -> int:
    from .cube import Cube, open_cube
    from .cube_store import is_tiling_store

    if is_tiling_store(args.cube):
        return _inspect_tiling(args)
    cube = Cube.open(args.cube)
    ds = open_cube(args.cube)
    info = {"path": str(args.cube), "samples": cube.n_samples, "scales": list(cube.scales),
            "embed_dim": cube.embed_dim, "grid_shape": cube.grid_shape,
            "status": cube.status_counts(), "spec": json.loads(cube.spec.to_json()),
            "spec_hash": cube.attrs.get("spec_hash"), "versions": cube.attrs.get("versions"),
            "request_account": cube.attrs.get("request_account"),
            "variables": {k: {"dims": list(v.dims), "dtype": str(v.dtype), "shape": list(v.shape)}
                          for k, v in ds.variables.items()}}
    rc = 0
    if args.verify:
        from .cube_verify import verify_cube

        info["problems"] = verify_cube(args.cube)
        rc = 1 if info["problems"] else 0
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return rc
    print(ds)
    print("\nstatus:", ", ".join(f"{k} {v}" for k, v in info["status"].items()))
    print("spec hash:", info["spec_hash"])
    print("spec:", cube.spec.to_json())
    print("versions:", info["versions"])
    print("request account:", info["request_account"])
    if args.verify:
        print("verify:", "consistent" if not info["problems"] else "\n  ".join(["PROBLEMS"] + info["problems"]))
    return rc


def _inspect_tiling(args) -> int:
    from .tile_inspect import format_tiling_info, tiling_info

    info = tiling_info(args.cube)
    rc = 0
    if args.verify:
        from .cube_verify import verify_tiling_store

        info["problems"] = verify_tiling_store(args.cube)
        rc = 1 if info["problems"] else 0
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
    from .quicklook import grid_quicklook

    for path in grid_quicklook(args.store, args.scale, args.out, components=tuple(args.components),
                               png=not args.no_png):
        print(path)
    return 0
