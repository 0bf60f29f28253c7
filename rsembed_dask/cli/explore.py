"""``rsembed-dask explore``: serve the explorer web app of a cube or tiling store."""

from __future__ import annotations

__all__ = ["add_explore"]


def add_explore(sub) -> None:
    from ..explore.app import DEFAULT_HOST, DEFAULT_PORT
    from .args import add_storage_options

    p = sub.add_parser("explore", help="serve a local web app: map, click to find similar places, label and predict")
    p.add_argument("cube", help="the cube or tiling store: a path or an s3://, gs://, az:// URL (opened read-only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"TCP port (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser, only print the address")
    p.add_argument("--basemap", default=None, metavar="URL-TEMPLATE",
                   help="tile URL template drawn under the data, e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png "
                        "(default none: the page needs no internet)")
    add_storage_options(p)
    p.set_defaults(func=_cmd_explore)


def _cmd_explore(args) -> int:
    import sys

    from ..errors import SpecError
    from ..explore.app import serve
    from .args import store_location

    if not 0 <= args.port <= 65535:
        raise SpecError("--port", args.port, "a TCP port in 0..65535 (0: any free port)")

    def announce(line: str) -> None:
        print(line, flush=True)

    serve(store_location(args, "cube"), host=args.host, port=args.port, basemap=args.basemap, open_browser=not args.no_browser,
          announce=announce)
    sys.stdout.flush()
    return 0
