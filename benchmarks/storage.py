"""Storage per embedding, float32 vs int8, and how close int8 stays to float32.

Two campaigns over the same random points, ``run_campaign(..., backend="emulator",
model=ModelSpec("test-small"))`` (D = 384, one scale, chunk 64), one with the default
``OutputSpec.pooled()`` and one with ``OutputSpec.pooled(dtype="int8")``, on an
in-process local cluster. Figures (one ``name: value`` line each):

1. ``bytes per embedding``: the files of ``embedding/`` (plus ``embedding_scale/`` for
   int8) on disk, as Zarr wrote them with its default codec (ZSTD, named in the output),
   over the number of ok embeddings; also the raw size (``D * 4`` vs ``D + 4``) and the
   whole cube per sample (coordinates, status and the rest included).
2. ``int8 cosine to float32``: cosine similarity of each dequantised int8 embedding
   (``open_cube`` default) to the float32 one of the same sample, worst and median.

Run: ``.venv/bin/python benchmarks/storage.py [--samples 256]`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

START, END = "2022-01-01", "2022-02-01"


def _points(n: int, seed: int = 0):
    import geopandas as gpd

    rng = np.random.default_rng(seed)
    return gpd.GeoDataFrame({"v": np.arange(n)}, index=[f"p{i}" for i in range(n)],
                            geometry=gpd.points_from_xy(rng.uniform(3.0, 4.0, n), rng.uniform(31.0, 32.0, n)),
                            crs="EPSG:4326")


def dir_bytes(path: str) -> int:
    """Bytes of the files under ``path`` (chunks and metadata)."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def codec_names(path: str, name: str) -> str:
    """The codecs of array ``name`` of the cube at ``path`` (from its zarr.json)."""
    with open(os.path.join(path, name, "zarr.json"), encoding="utf-8") as fh:
        meta = json.load(fh)
    return " + ".join(f"zstd (level {(c.get('configuration') or {}).get('level')})"
                      if c["name"] == "zstd" else c["name"] for c in meta["codecs"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=256)
    args = p.parse_args()

    from distributed import Client

    from rsembed_dask.cluster import local_cluster
    from rsembed_dask.store.cube import OK, open_cube
    from rsembed_dask.campaign.run import run_campaign
    from rsembed_dask.specs import ModelSpec, OutputSpec, TemporalSpec

    points = _points(args.samples)
    model = ModelSpec("test-small", device="cpu")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rsembed-storage-") as tmp, \
            local_cluster(n_gpus=0, n_fetch_workers=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        paths, cubes = {}, {}
        for dtype in ("float32", "int8"):
            paths[dtype] = os.path.join(tmp, f"{dtype}.zarr")
            cubes[dtype] = run_campaign(points, paths[dtype], scales=[10.0], temporal=TemporalSpec.range(START, END),
                                        model=model, output=OutputSpec.pooled(dtype=dtype), backend="emulator",
                                        client=client, chunk_size=64, progress=False)
        f32, i8 = cubes["float32"], cubes["int8"]
        ok = (f32.status.values[:, 0] == OK) & (i8.status.sel(sample=f32.sample.values).values[:, 0] == OK)
        n_ok, dim = int(ok.sum()), f32.sizes["feature"]
        stored = {"float32": dir_bytes(os.path.join(paths["float32"], "embedding")),
                  "int8": dir_bytes(os.path.join(paths["int8"], "embedding"))
                  + dir_bytes(os.path.join(paths["int8"], "embedding_scale"))}
        codec = codec_names(paths["int8"], "embedding")
        a = f32.embedding.values[ok, 0]
        b = i8.embedding.sel(sample=f32.sample.values).values[ok, 0]
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        whole = {k: dir_bytes(v) for k, v in paths.items()}
        raw = open_cube(paths["int8"], dequantize=False)
        assert raw.embedding.dtype == np.int8, raw.embedding.dtype
    print(f"samples: {args.samples} ({n_ok} ok), model test-small (D={dim}), scale 10 m, chunk 64")
    print(f"codec: {codec}")
    print(f"bytes per embedding (float32): {stored['float32'] / n_ok:.1f} on disk (raw {4 * dim})")
    print(f"bytes per embedding (int8 + float32 scale): {stored['int8'] / n_ok:.1f} on disk (raw {dim + 4})")
    print(f"int8 / float32 bytes: {stored['int8'] / stored['float32']:.3f}")
    print(f"whole cube bytes per sample: float32 {whole['float32'] / args.samples:.1f}, "
          f"int8 {whole['int8'] / args.samples:.1f}")
    print(f"int8 cosine to float32: worst {cos.min():.6f} median {np.median(cos):.6f}")
    print(f"elapsed s: {time.perf_counter() - t0:.1f}")


if __name__ == "__main__":
    main()
