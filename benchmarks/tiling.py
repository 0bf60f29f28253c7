"""Tiling campaign: coalesced requests vs one request per footprint, in one run.

A dense AOI (1 x 0.9 degrees in northern Italy: 2,056 tiles of 224 px at 10 m and
20 m) is embedded twice on the same local cluster (one CPU embed worker, one
fetch worker; test-small, bfloat16 autocast, batch 32), against the Earth Engine
emulator in a process of its own (Earth Engine is remote in production) answering
each request after ``--latency-s`` (default 0.3 s, a small computePixels round trip):

1. coalesced (the default): neighbouring tiles of a work unit share one request;
2. per-sample: ``coalesce=False``, one computePixels per tile.

Figures (one ``name: value`` line each):
``requests per embedding`` (coalesced; target <= 0.05) and ``requests per embedding
(per-sample)``, ``bytes fetched per embedded pixel`` (NPY bytes received over the
tiles' pixels; 3 uint16 bands are 6 bytes), ``embeddings/s`` of both runs (run phase,
from the store's ``last_run``) and their ``ratio`` (coalesced / per-sample), the
wall time of each run, and ``client peak MiB`` (VmHWM of this process).

Run: ``.venv/bin/python benchmarks/tiling.py [--latency-s 0.3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

AOI = (10.0, 45.0, 11.0, 45.9)
SCALES = (10, 20)
START, END = "2022-01-01", "2022-02-01"
BATCH = 32


def _emulator(latency_s: float):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "rsembed_dask.cli", "emulator", "--port", str(port),
                             "--latency-s", str(latency_s)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/$discovery/rest?version=v1alpha", timeout=1).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the emulator did not start")


def _vm_hwm_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _run(tiling, out: str, provider, client, coalesce: bool) -> dict:
    from rsembed_dask.campaign.run import run_campaign
    from rsembed_dask.specs import ModelSpec, TemporalSpec

    t0 = time.perf_counter()
    tree = run_campaign(tiling, out, temporal=TemporalSpec.range(START, END),
                        model=ModelSpec("test-small", dtype="bfloat16", batch_size=BATCH),
                        backend=provider, client=client, progress=False, coalesce=coalesce)
    wall = time.perf_counter() - t0
    attrs = tree["samples/10m"].attrs
    last = attrs["last_run"] if isinstance(attrs["last_run"], dict) else json.loads(attrs["last_run"])
    account = attrs["request_account"]
    account = account if isinstance(account, dict) else json.loads(account)
    return {"wall_s": wall, "last_run": last, "account": account}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-s", type=float, default=0.3)
    args = parser.parse_args()

    from distributed import Client

    from rsembed_dask.cluster.local import local_cluster
    from rsembed_dask.providers import GEEProvider
    from rsembed_dask.sampling.tiling import tile_aoi

    tiling = tile_aoi(AOI, scales=SCALES)
    n = len(tiling)
    print(f"footprints: {n} ({', '.join(f'{s:g} m: {len(t)}' for s, t in zip(tiling.scales, tiling.tables))})")
    emu, url = _emulator(args.latency_s)
    try:
        provider = GEEProvider(api_url=url, credentials="anonymous", project="bench")
        cluster = local_cluster(n_gpus=0, n_fetch_workers=1, dashboard_address=None)
        with Client(cluster) as client, tempfile.TemporaryDirectory() as tmp:
            runs = {name: _run(tiling, os.path.join(tmp, f"{name}.zarr"), provider, client, coalesce)
                    for name, coalesce in (("coalesced", True), ("per-sample", False))}
        cluster.close()
    finally:
        emu.terminate()
        emu.wait(10)
    co, ps = runs["coalesced"], runs["per-sample"]
    embedded = co["last_run"]["samples_embedded"]
    assert embedded == n == ps["last_run"]["samples_embedded"], (embedded, n)
    pixels = n * 224 * 224
    print(f"requests per embedding: {co['account']['sent'] / n:.4f}")
    print(f"requests per embedding (per-sample): {ps['account']['sent'] / n:.4f}")
    print(f"requests sent: {co['account']['sent']} vs {ps['account']['sent']}")
    print(f"bytes fetched per embedded pixel: {co['account']['bytes'] / pixels:.3f}")
    print(f"bytes fetched per embedded pixel (per-sample): {ps['account']['bytes'] / pixels:.3f}")
    rate_co, rate_ps = co["last_run"]["embeddings_per_s"], ps["last_run"]["embeddings_per_s"]
    print(f"embeddings/s: {rate_co:.2f}")
    print(f"embeddings/s (per-sample): {rate_ps:.2f}")
    print(f"ratio: {rate_co / rate_ps:.3f}")
    print(f"wall s: {co['wall_s']:.1f}")
    print(f"wall s (per-sample): {ps['wall_s']:.1f}")
    print(f"client peak MiB: {_vm_hwm_mib():.0f}")


if __name__ == "__main__":
    main()
