"""Command line: ``rsembed-dask emulator | embed | demo | run | inspect``.

Environment knobs (``RS_EMBED_SCALEMAE_*``) are read here, once, at the edge.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from .errors import RsEmbedError

log = logging.getLogger(__name__)


def _add_emulator(sub) -> None:
    p = sub.add_parser("emulator", help="serve the loopback Earth Engine emulator")
    p.add_argument("--port", type=int, default=8765, help="TCP port on 127.0.0.1 (default 8765)")
    p.add_argument("--latency-s", type=float, default=0.0, help="added latency per request")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic world")
    p.set_defaults(func=_cmd_emulator)


def _cmd_emulator(args) -> int:
    from .testing.gee_emulator import serve

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
    p.add_argument("--ee-url", default=None, help="Earth Engine API URL (default: Google's)")
    p.add_argument("--ee-project", default=None, help="Earth Engine cloud project")
    p.add_argument("--credentials", default=None, help="service-account key file")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_embed)


def _gee_options(args) -> dict:
    opts = {}
    if getattr(args, "ee_url", None):
        opts["api_url"] = args.ee_url
    if getattr(args, "ee_project", None):
        opts["project"] = args.ee_project
    if getattr(args, "credentials", None):
        opts["credentials"] = args.credentials
    return opts


def _cmd_embed(args) -> int:
    import numpy as np

    from .api import get_embedding
    from .specs import ModelSpec, OutputSpec, PointBuffer, SensorSpec, TemporalSpec

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
        gee_options=_gee_options(args),
    )
    data = np.asarray(emb.data)
    summary = {
        "shape": list(data.shape),
        "mean": float(np.nanmean(data)),
        "std": float(np.nanstd(data)),
        "min": float(np.nanmin(data)),
        "max": float(np.nanmax(data)),
        "head": [round(float(v), 6) for v in data.reshape(-1)[:8]],
    }
    if args.json:
        print(json.dumps({"embedding": summary, "meta": emb.meta}, indent=2, default=str))
    else:
        print(f"embedding {tuple(data.shape)} mean={summary['mean']:.4f} std={summary['std']:.4f} "
              f"min={summary['min']:.4f} max={summary['max']:.4f}")
        print("first values:", " ".join(f"{v:.4f}" for v in summary["head"]))
        for k, v in emb.meta.items():
            print(f"  {k}: {v}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="offline end-to-end demo on the emulator")
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    p.add_argument("--samples", type=int, default=256, help="campaign samples (default 256)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, n_samples=args.samples)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsembed-dask", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_emulator(sub)
    _add_embed(sub)
    _add_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except RsEmbedError as exc:
        print(f"rsembed-dask {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rsembed-dask {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
