"""``rsembed-dask export`` and ``stac``: interchange files from a cube or tiling store."""

from __future__ import annotations

import json

from .args import add_storage_options, store_location

__all__ = ["add_export", "add_stac"]


def add_export(sub) -> None:
    p = sub.add_parser("export", help="write a cube's ok embeddings to GeoParquet 1.1 (streamed, bounded memory)")
    p.add_argument("store", help="path or s3://, gs://, az:// URL of the .zarr cube or tiling store")
    p.add_argument("out", help="the .parquet file to write, a path or a URL (replaced if it exists)")
    add_storage_options(p)
    p.add_argument("--scale", type=float, default=None, help="export only this scale in metres (default: every scale)")
    p.add_argument("--geometry", choices=("footprint", "sample"), default="footprint",
                   help="footprint: the pixels fetched at each scale (default); sample: the geometry given")
    p.add_argument("--dequantize", action="store_true", help="int8 cubes: write float32 values")
    p.add_argument("--row-group-mb", type=float, default=128.0,
                   help="target uncompressed row group size in MiB (default 128)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    from ..store.geoparquet import export_geoparquet

    report = export_geoparquet(store_location(args, "store"), store_location(args, "out"), args.scale, geometry=args.geometry,
                               dequantize=args.dequantize, row_group_bytes=int(args.row_group_mb * 2**20))
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.summary())
    return 0


def add_stac(sub) -> None:
    p = sub.add_parser("stac", help="write a STAC Collection and Items (Embedding extension) for a cube or tiling store")
    p.add_argument("store", help="path or s3://, gs://, az:// URL of the .zarr cube or tiling store")
    add_storage_options(p)
    p.add_argument("--out", required=True, help="catalogue directory (collection.json, one folder per item)")
    p.add_argument("--geoparquet", action="store_true",
                   help="export each scale to GeoParquet next to its item and point the item's asset at it")
    p.add_argument("--id", dest="collection_id", default=None, help="collection id (default: the store's name)")
    p.add_argument("--title", default=None)
    p.add_argument("--license", default="other", help="SPDX id or 'other' (default)")
    p.set_defaults(func=_cmd_stac)


def _cmd_stac(args) -> int:
    from ..store.stac import write_stac

    collection = write_stac(store_location(args, "store"), args.out, geoparquet=args.geoparquet, collection_id=args.collection_id,
                            title=args.title, license=args.license)
    items = list(collection.get_items())
    print(f"{collection.self_href}: collection {collection.id!r} with {len(items)} item(s): "
          + ", ".join(i.id for i in items))
    return 0
