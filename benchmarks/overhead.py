"""Pipeline overhead per embedding: CPU of every role around the model, memory over a soak, profiles.

On a GPU node the model is fast (ViT-L/16 at 224 px: 1,000-1,500 images/s in bf16), so what
bounds a campaign is everything around it. This measures that on the CPU, exactly: a
campaign through the real pipeline (``run_campaign`` on a local cluster of worker
*processes*: one embed worker declaring ``GPU=1`` holding the actor, one fetch worker;
the scheduler lives in the client process) with a zero-cost in-memory provider
(:class:`NullProvider`, no network) and the ``test-tiny`` model.

Figures (one ``name: value`` line each):

1. Marginal CPU per embedding of each role, from the processes' own CPU counters
   (psutil): the campaign is run at two sizes (after a warm-up campaign that pays the
   workers' first imports) and ``(cpu(large) - cpu(small)) / (large - small)`` is
   printed, so start-up (cluster, actor, planning constants) cancels out:
   ``client`` (this process: planning, the runner's loop, and on its event-loop thread
   the scheduler, the nannies and the client's comms), ``fetch`` (the fetch worker),
   ``embed worker`` (the worker holding the actor); ``model`` is the forward pass alone, timed in the
   embed worker on preprocessed batches of the campaign's batch size and chip shape;
   ``pipeline`` = every process minus the model. Goals: pipeline <= 1.5 ms, embed
   worker share (its CPU minus the model) <= 0.5 ms.
2. ``--soak [N]``: one campaign of N samples (default 20,000); peak RSS of the client,
   the fetch worker and the embed worker over the first 10 % of the units, until the
   last unit, and over the whole run (the client's end-of-run reads included), and
   ``memory growth`` = peak(100 %) / peak(10 %) (goal <= 1.1).
3. ``--components N``: the pipeline's pieces timed one by one in this process, without
   Dask (``fetch_unit``, the pixels' wire round trip, task-argument pickling,
   ``embedder.embed``, ``Cube.write_unit``, ...), per embedding and per unit.
4. ``--profile N`` (instead of the others): one campaign of N samples on a cluster of its own
   with every Python thread of every role under cProfile timed by the thread's own CPU
   clock (:class:`ThreadProfiles`; waits cost nothing), after a warm-up campaign;
   prints per role the CPU per thread group and the top functions by self and by
   inclusive CPU. CPU of threads that never run Python (torch's OpenMP pool) shows as
   "not profiled". cProfile's per-call cost inflates Python-heavy code: read shares
   within a role, and take each role's CPU from 1.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/overhead.py [--sizes 1000 4000]
[--soak [N]] [--components 1088]``, or ``... overhead.py --profile 2000``; ``--help`` for
the layout options (``--chunk``, ``--batch``, ``--box``, ``--dask-config``). About a
minute with ``--soak`` on 2 shared cores. Findings: ``benchmarks/OVERHEAD.md``.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import functools
import gc
import json
import os
import re
import sys
import tempfile
import threading
import time

import dask
import numpy as np
import psutil
import yaml
from distributed import Client

from rsembed_dask.campaign import fetch_unit, plan_campaign, run_campaign
from rsembed_dask.cluster import embed_workers, fetch_workers, local_cluster
from rsembed_dask.embed import ScaleMAEEmbedder
from rsembed_dask.embed.preprocess import preprocess
from rsembed_dask.providers import Patch, RequestStats
from rsembed_dask.sampling import build_sample_table
from rsembed_dask.specs import ModelSpec, OutputSpec, TemporalSpec
from rsembed_dask.store import OK

SCALE = 10.0
START, END = "2022-01-01", "2022-02-01"
MODEL = "test-tiny"
GOAL_PIPELINE_MS = 1.5
GOAL_EMBED_SHARE_MS = 0.5
GOAL_MEMORY_GROWTH = 1.1
#: Samples of ``--soak`` without a number: about 35-60 s on 2 shared cores (100,000: 3-5 min).
SOAK_DEFAULT = 20_000
EMBED_PART = "embedder.embed (preprocess + forward + pooling)"


# --------------------------------------------------------------------------- provider and samples


@functools.lru_cache(maxsize=8)
def _template(seed: int, bands: int, side: int = 1024) -> np.ndarray:
    """A textured ``(bands, side, side)`` uint16 image, once per process."""
    return np.random.default_rng(seed).integers(200, 4000, (bands, side, side), dtype=np.uint16)


class NullProvider:
    """A provider that costs (almost) nothing: deterministic uint16 chips of the grid's shape, no I/O.

    Every call returns a fresh array (a copy of part of a fixed textured template, made
    once per process), as a real provider's decoder would, so that no two patches share
    memory (pickle would otherwise send a shared array once). Requests are counted in
    ``stats`` (``sent``, ``bytes``) as the Earth Engine provider counts them. Picklable
    and thread-safe. The campaigns use it as
    ``benchmarks.overhead.NullProvider`` (see :func:`provider`), so that it is pickled by
    reference, like the package's own providers, not by value as a class of ``__main__``.
    """

    def __init__(self, seed: int = 0, stats: RequestStats | None = None):
        self.seed = seed
        self.stats = stats if stats is not None else RequestStats()

    def _chip(self, c: int, h: int, w: int) -> np.ndarray:
        t = _template(self.seed, c)
        if h <= t.shape[1] and w <= t.shape[2]:
            return t[:, :h, :w].copy()
        reps = (1, -(-h // t.shape[1]), -(-w // t.shape[2]))
        return np.ascontiguousarray(np.tile(t, reps)[:, :h, :w])

    def fetch(self, grid, sensor, temporal) -> Patch:
        """The chip of ``grid``: every band valid."""
        h, w = grid.shape
        data = self._chip(len(sensor.bands), h, w)
        self.stats.add(sent=1, bytes=int(data.nbytes))
        return Patch(data, np.ones((h, w), bool), grid, tuple(sensor.bands))


def importable() -> None:
    """Make ``benchmarks.overhead`` importable here and in worker processes started from now on.

    Run as a script this module is ``__main__``, whose classes Dask pickles by value
    (cloudpickle: the class's code in every fetch task). With the repository root on
    ``sys.path`` and ``PYTHONPATH`` (which worker processes inherit), :func:`provider`
    gives a :class:`NullProvider` that workers import by name, like the package's own.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root] + paths)


def provider() -> NullProvider:
    """A :class:`NullProvider` of the importable module (call :func:`importable` before the cluster)."""
    import importlib

    return importlib.import_module("benchmarks.overhead").NullProvider()


def points(n: int, seed: int = 0, box_deg: float = 10.0):
    """``n`` random points in a ``box_deg`` x ``box_deg`` degree box from (0 E, 40 N); string ids."""
    import geopandas as gpd

    rng = np.random.default_rng(seed)
    lon = rng.uniform(0.0, box_deg, n)
    lat = rng.uniform(40.0, 40.0 + box_deg, n)
    return gpd.GeoDataFrame({"v": np.arange(n)}, index=[f"p{i}" for i in range(n)],
                            geometry=gpd.points_from_xy(lon, lat), crs="EPSG:4326")


def chip_shape(image_size: int, scale_m: float = SCALE) -> tuple[int, int]:
    """The fetch grid's shape of a point sample (what the campaign's chips look like)."""
    table = build_sample_table(points(1))
    return table.footprint(0, scale_m, image_size).grid.shape


# --------------------------------------------------------------------------- processes and CPU


def roles(client) -> dict[str, int]:
    """pid of each role: ``client``, ``fetch``, ``embed``.

    The workers' nannies are objects of the local cluster, in the client process: their
    CPU counts as the client's.
    """
    pids = client.run(os.getpid)
    embed, fetch = embed_workers(client), fetch_workers(client)
    if len(embed) != 1 or len(fetch) != 1:
        raise SystemExit(f"expected one embed and one fetch worker, got {embed} and {fetch}")
    return {"client": os.getpid(), "fetch": pids[fetch[0]], "embed": pids[embed[0]]}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (its own threads, not its children)."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    snap = {role: cpu_s(pid) for role, pid in pids.items()}
    main = threading.main_thread().native_id
    snap["client main thread"] = sum(t.user_time + t.system_time for t in psutil.Process().threads()
                                     if t.id == main)
    return snap


def campaign(client, n: int, out: str, *, batch: int, chunk: int, box: float, on_unit=None):
    """One ``test-tiny`` campaign of ``n`` point samples at one scale with the null provider."""
    return run_campaign(points(n, seed=n, box_deg=box), out, scales=[SCALE],
                        temporal=TemporalSpec.range(START, END), model=ModelSpec(MODEL), backend=provider(),
                        client=client, chunk_size=chunk, batch_size=batch, progress=False, on_unit=on_unit)


def measured_campaign(client, pids, n, out, **kw) -> tuple[dict[str, float], float, dict]:
    """CPU seconds per role spent in one campaign, its wall seconds and its ``last_run``."""
    before = cpu_snapshot(pids)
    t0 = time.perf_counter()
    ds = campaign(client, n, out, **kw)
    wall = time.perf_counter() - t0
    after = cpu_snapshot(pids)
    lr = ds.attrs["last_run"]
    lr = json.loads(lr) if isinstance(lr, str) else dict(lr)
    if lr["samples_embedded"] != n:
        raise SystemExit(f"campaign of {n} samples embedded {lr['samples_embedded']}: {lr}")
    return {k: after[k] - before[k] for k in after}, wall, lr


def _time_model(spec: ModelSpec, shape: tuple[int, int], batch: int, n_batches: int) -> dict[str, float]:
    """In the embed worker (``client.run``): CPU seconds per image of preprocess, forward, embed().

    Torch threads as the actor sets them (every core of this process). Process CPU time,
    so torch's intra-op threads count.
    """
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    emb = ScaleMAEEmbedder(spec.replace(batch_size=batch, device="cpu"))
    rng = np.random.default_rng(0)
    raw = rng.integers(200, 4000, (batch, 3, *shape), dtype=np.uint16)
    chips = list(raw)
    res = torch.full((batch,), SCALE * min(shape) / spec.image_size)

    def per_image(fn) -> float:
        fn()  # warm-up
        c0 = time.process_time()
        for _ in range(n_batches):
            fn()
        return (time.process_time() - c0) / (n_batches * batch)

    x = preprocess(raw, spec.image_size)
    out = {"forward": per_image(lambda: emb.embed_tensor(x, res)),
           "preprocess": per_image(lambda: preprocess(raw, spec.image_size)),
           "embed()": per_image(lambda: emb.embed(chips, SCALE, output=OutputSpec.pooled())),
           "torch threads": torch.get_num_threads()}
    return out


# --------------------------------------------------------------------------- profiler


def _short(path: str) -> str:
    stdlib = f"/lib/python{sys.version_info.major}.{sys.version_info.minor}/"
    for mark in ("site-packages/", stdlib, "rsembed_dask/"):
        i = path.rfind(mark)
        if i >= 0:
            return ("rsembed_dask/" if mark == "rsembed_dask/" else "") + path[i + len(mark):]
    return os.path.basename(path)


def _package(key: str) -> str:
    """The top-level package (or stdlib module) of a function key; the benchmark's own code apart."""
    head = key.split("/", 1)[0] if "/" in key.split(":", 1)[0] else key.split(":", 1)[0]
    head = head.removesuffix(".py")
    if head in ("overhead", "<dynamic-code>"):
        name = key.rsplit("(", 1)[-1].rstrip(")")
        return "(null provider)" if name in ("fetch", "_chip", "_template") else "(this benchmark's profiler)"
    return head


def _code_key(code) -> str:
    if isinstance(code, str):  # a built-in: "<built-in method ...>", "<method 'x' of 'y' objects>"
        return code
    return f"{_short(code.co_filename)}:{code.co_firstlineno}({code.co_name})"


class ThreadProfiles:
    """cProfile in every Python thread of this process started after :meth:`install` (and its caller's).

    Each thread gets its own ``cProfile.Profile`` timed by its own CPU clock
    (``time.thread_time``), so blocking calls (``select``, lock waits) cost nothing and
    every figure is CPU. Python 3.11 cannot reach threads that already run, so install
    before the cluster (client) or before the first task (workers, via ``client.run``,
    which runs on the worker's event-loop thread). Profiles are never stopped; what a
    phase cost is the difference of two :meth:`snapshot` calls.
    """

    def __init__(self):
        self.profs: list[tuple[str, cProfile.Profile]] = []

    def install(self) -> None:
        threading.setprofile(self._hook)
        self.enable_here()

    def _hook(self, frame, event, arg) -> None:
        self.enable_here()  # replaces this hook in the new thread

    def enable_here(self) -> None:
        prof = cProfile.Profile(time.thread_time)
        self.profs.append((threading.current_thread().name, prof))
        prof.enable()

    def snapshot(self) -> dict:
        """Self and inclusive CPU seconds per function, and self CPU per thread group, so far."""
        out = {"self": collections.Counter(), "inclusive": collections.Counter(),
               "threads": collections.Counter(), "calls": collections.Counter(),
               "packages": collections.Counter(),
               "cpu_s": time.process_time()}
        # No garbage collection meanwhile: a finalizer running Python code would make the
        # profiler of this thread reorder its tree while getstats walks it (duplicate entries).
        gc_was = gc.isenabled()
        gc.disable()
        try:
            stats = [(name, prof.getstats()) for name, prof in list(self.profs)]
        finally:
            if gc_was:
                gc.enable()
        for name, entries in stats:
            group = re.sub(r"[-_]?\d+", "", name)
            for e in entries:
                key = _code_key(e.code)
                out["self"][key] += e.inlinetime
                out["inclusive"][key] += e.totaltime
                out["calls"][key] += e.callcount
                out["threads"][group] += e.inlinetime
                if isinstance(e.code, str):
                    continue  # a built-in: charged to its callers' packages below
                pkg = _package(key)
                out["packages"][pkg] += e.inlinetime
                for sub in e.calls or ():
                    if isinstance(sub.code, str):
                        out["packages"][pkg] += sub.inlinetime
        return {k: (dict(v) if isinstance(v, collections.Counter) else v) for k, v in out.items()}


def diff_snapshots(a: dict, b: dict) -> dict:
    """What happened between snapshots ``a`` and ``b``."""
    out = {"cpu_s": b["cpu_s"] - a["cpu_s"]}
    for k in ("self", "inclusive", "threads", "calls", "packages"):
        out[k] = {key: v - a[k].get(key, 0) for key, v in b[k].items() if v - a[k].get(key, 0) > 0}
    return out


def _profiles_install(dask_worker=None) -> int:
    """On a worker (``client.run``, its event-loop thread): profile it and every thread it starts."""
    dask_worker._overhead_profiles = ThreadProfiles()
    dask_worker._overhead_profiles.install()
    return os.getpid()


def _profiles_snapshot(dask_worker=None) -> dict:
    return dask_worker._overhead_profiles.snapshot()


def print_profile(role: str, prof: dict, n: int, top: int) -> None:
    """Per role: CPU per thread group, the top functions by self and inclusive CPU."""
    total = prof["cpu_s"]
    covered = sum(prof["threads"].values())
    print(f"== profile {role}: {total:.2f} CPU s = {1000 * total / n:.2f} ms per embedding under cProfile")
    groups = dict(prof["threads"])
    groups["(not profiled: native threads such as torch's OpenMP pool, and profiler overhead)"] = \
        max(total - covered, 0.0)
    for name, s in sorted(groups.items(), key=lambda kv: -kv[1]):
        if s / total >= 0.005:
            print(f"  thread {name}: {100 * s / total:.1f} %")
    print("  -- self CPU by package (built-ins charged to their caller's package)")
    for pkg, s in sorted(prof["packages"].items(), key=lambda kv: -kv[1]):
        if s / total >= 0.01:
            print(f"    {100 * s / total:5.1f} %  {1000 * s / n:7.3f} ms  {pkg}")
    tables = [("self", prof["self"]), ("inclusive", prof["inclusive"])]
    for pkg in ("rsembed_dask", "distributed", "zarr"):
        tables.append((f"inclusive, {pkg} only",
                       {k: v for k, v in prof["inclusive"].items() if k.startswith(pkg + "/")}))
    for kind, table in tables:
        print(f"  -- top {top} by {kind} CPU: % of the role's CPU, ms per embedding, calls per embedding")
        for key, s in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"    {100 * s / total:5.1f} %  {1000 * s / n:7.3f} ms  {prof['calls'].get(key, 0) / n:8.2f}  {key}")


# --------------------------------------------------------------------------- RSS over a soak


class RssWatch:
    """Sample the RSS of named processes from a thread; split peaks at ``progress <= 10 %``."""

    def __init__(self, pids: dict[str, int], interval: float = 0.2):
        self.procs = {role: psutil.Process(pid) for role, pid in pids.items()}
        self.interval = interval
        self.progress = 0.0
        self.peak10: dict[str, int] = collections.defaultdict(int)
        self.peak_run: dict[str, int] = collections.defaultdict(int)
        self.peak: dict[str, int] = collections.defaultdict(int)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-watch", daemon=True)

    def _sample(self) -> None:
        early, running = self.progress <= 0.10, self.progress < 1.0
        for role, p in self.procs.items():
            rss = p.memory_info().rss
            self.peak[role] = max(self.peak[role], rss)
            if running:
                self.peak_run[role] = max(self.peak_run[role], rss)
            if early:
                self.peak10[role] = max(self.peak10[role], rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssWatch:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# --------------------------------------------------------------------------- main


def main(argv=None) -> None:
    """Run the measurements and print the figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs=2, default=(1000, 4000), metavar=("SMALL", "LARGE"),
                   help="samples of the two timed campaigns (default 1000 4000)")
    p.add_argument("--warmup", type=int, default=256, help="samples of the untimed first campaign")
    p.add_argument("--batch", type=int, default=32, help="images per forward (32: the CUDA default)")
    p.add_argument("--chunk", type=int, default=64, help="samples per unit (default 64)")
    p.add_argument("--box", type=float, default=10.0,
                   help="side in degrees of the box the points are drawn in (default 10: hardly any "
                        "coalescing; smaller boxes make coalesced requests)")
    p.add_argument("--dask-config", action="append", default=[], metavar="KEY=VALUE",
                   help="Dask config for the whole run, workers included (repeatable), e.g. "
                        "distributed.worker.profile.enabled=False")
    p.add_argument("--model-batches", type=int, default=20, help="batches timed for the model figures")
    p.add_argument("--soak", type=int, nargs="?", const=SOAK_DEFAULT, default=0, metavar="N",
                   help=f"also run one campaign of N samples (default {SOAK_DEFAULT}) and report memory growth")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="instead, profile one campaign of N samples in every role (e.g. 2000)")
    p.add_argument("--top", type=int, default=15, help="functions listed per role and kind in profiles")
    p.add_argument("--components", type=int, default=0, metavar="N",
                   help="also time the pipeline's pieces one by one in this process over N samples "
                        "(e.g. 1088: 17 units of 64, the first one to warm up)")
    p.add_argument("--skip-timing", action="store_true", help="no timed campaigns: only --soak / --components")
    args = p.parse_args(argv)

    sys.stdout.reconfigure(line_buffering=True)
    importable()  # before any worker process starts
    print(f"cpus: {len(os.sched_getaffinity(0))}")
    print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    shape = chip_shape(ModelSpec(MODEL).image_size)
    print(f"model: {MODEL}, image 224, batch {args.batch}, chunk {args.chunk}, chips (3, {shape[0]}, {shape[1]})")
    t_all = time.perf_counter()
    kw = {"batch": args.batch, "chunk": args.chunk, "box": args.box}
    cfg = {}
    for item in args.dask_config:
        key, _, value = item.partition("=")
        cfg[key] = yaml.safe_load(value)
    if cfg:
        print(f"dask config: {cfg}")
    with dask.config.set(cfg):
        run_all(args, kw, shape, t_all)


def run_all(args, kw, shape, t_all) -> None:
    """Profile alone; else timing and soak on one cluster, then the components (in this process:
    after the soak, whose client RSS they would inflate with a model)."""
    if args.profile:
        profile(args, kw)
    else:
        if not args.skip_timing or args.soak:
            cluster = local_cluster(n_gpus=0, n_fetch_workers=1, processes=True, dashboard_address=None)
            with Client(cluster) as client, tempfile.TemporaryDirectory() as tmp:
                pids = roles(client)
                campaign(client, args.warmup, os.path.join(tmp, "warmup.zarr"), **kw)
                if not args.skip_timing:
                    timing(client, pids, embed_workers(client)[0], shape, tmp, args, kw)
                if args.soak:
                    soak(client, pids, args.soak, os.path.join(tmp, "soak.zarr"), kw)
            cluster.close()
        if args.components:
            components(args, kw)
    print("load average at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"total wall s: {time.perf_counter() - t_all:.1f}")


def timing(client, pids, embed_addr, shape, tmp, args, kw) -> None:
    small, large = args.sizes
    runs = {}
    for n in (small, large):
        runs[n] = measured_campaign(client, pids, n, os.path.join(tmp, f"t{n}.zarr"), **kw)
        cpu, wall, lr = runs[n]
        req = lr.get("requests", {})
        print(f"campaign {n}: wall s {wall:.2f}, run phase s {lr['elapsed_s']:.2f}, "
              f"embeddings/s {lr['embeddings_per_s']:.1f}, requests sent {req.get('sent', 0)} "
              f"(reused {req.get('reused', 0)}, MiB {req.get('bytes', 0) / 2**20:.0f}), "
              + ", ".join(f"{k} CPU s {v:.2f}" for k, v in cpu.items()))
    model = client.run(_time_model, ModelSpec(MODEL), shape, args.batch, args.model_batches,
                       workers=[embed_addr])[embed_addr]
    dn = large - small
    ms = {k: 1000 * (runs[large][0][k] - runs[small][0][k]) / dn for k in runs[large][0]}
    forward = 1000 * model["forward"]
    total = ms["client"] + ms["fetch"] + ms["embed"]
    print(f"embed worker torch threads: {model['torch threads']}")
    print(f"client CPU ms per embedding: {ms['client']:.3f}")
    print(f"  client main thread (planning, runner loop) ms per embedding: {ms['client main thread']:.3f}")
    print(f"  client other threads (scheduler, nannies, comms, Zarr I/O) ms per embedding: "
          f"{ms['client'] - ms['client main thread']:.3f}")
    print(f"fetch CPU ms per embedding: {ms['fetch']:.3f}")
    print(f"embed worker CPU ms per embedding: {ms['embed']:.3f}")
    print(f"model CPU ms per embedding: {forward:.3f}")
    print(f"  preprocess CPU ms per embedding (embed worker, CPU path): {1000 * model['preprocess']:.3f}")
    print(f"  embedder.embed() CPU ms per embedding (preprocess + forward + pooling): "
          f"{1000 * model['embed()']:.3f}")
    print(f"embed worker share (CPU minus model) ms per embedding: {ms['embed'] - forward:.3f} "
          f"(goal <= {GOAL_EMBED_SHARE_MS})")
    print(f"pipeline CPU ms per embedding: {total - forward:.3f} (goal <= {GOAL_PIPELINE_MS})")


def soak(client, pids, n, out, kw) -> None:
    """One campaign of ``n`` samples; peak RSS per role at 10 % and at 100 % of its units."""
    n_units = -(-n // kw["chunk"])
    done = [0]
    watch_pids = {r: pids[r] for r in ("client", "fetch", "embed")}
    with RssWatch(watch_pids) as watch:
        def on_unit(_summary) -> None:
            done[0] += 1
            watch.progress = done[0] / n_units
            if done[0] * 10 // n_units > (done[0] - 1) * 10 // n_units:
                print(f"  soak {100 * done[0] / n_units:.0f} % after {time.perf_counter() - t0:.1f} s, RSS MiB "
                      + ", ".join(f"{r} {p.memory_info().rss / 2**20:.0f}" for r, p in watch.procs.items()),
                      flush=True)

        t0 = time.perf_counter()
        ds = campaign(client, n, out, on_unit=on_unit, **kw)
        wall = time.perf_counter() - t0
    lr = ds.attrs["last_run"]
    ok = (json.loads(lr) if isinstance(lr, str) else dict(lr))["cells"].get("ok", 0)
    print(f"soak samples: {n} ({ok} ok, {done[0]} units) in {wall:.1f} s ({n / wall:.1f} embeddings/s)")
    for role in watch_pids:
        a, r, b = (x[role] / 2**20 for x in (watch.peak10, watch.peak_run, watch.peak))
        name = "embed worker" if role == "embed" else role
        print(f"peak RSS MiB at 10 % ({name}): {a:.1f}")
        print(f"peak RSS MiB until the last unit ({name}): {r:.1f}")
        print(f"peak RSS MiB at 100 %, end of run included ({name}): {b:.1f}")
        print(f"memory growth ({name}): {b / a:.3f} (goal <= {GOAL_MEMORY_GROWTH}; "
              f"{r / a:.3f} until the last unit)")


def components(args, kw) -> None:
    """CPU per embedding of the pipeline's pieces, one at a time, in this process (no Dask).

    Plans a campaign of ``args.components`` samples, then per unit: ``fetch_unit`` (the
    fetch task's body, with its thread pool), the round trip of its pixels through
    Dask's wire format without the socket (``distributed.protocol.dumps/loads``, as a
    fetch result travels to the embed worker), the pickle round trip of the ``Cube`` and
    of the unit's ``SampleTable`` slice (arguments of every task: unpickled by the
    scheduler and the worker), ``embedder.embed`` (preprocess + forward + pooling),
    ``Cube.write_unit`` and ``Cube.unit_status`` (read by the client before submitting).
    """
    import pickle

    import torch
    from distributed.protocol import dumps as wire_dumps
    from distributed.protocol import loads as wire_loads
    from distributed.protocol import to_serialize

    n, chunk = args.components, kw["chunk"]
    if n < 2 * chunk:
        raise SystemExit(f"--components {n}: expected at least two units ({2 * chunk} samples at --chunk {chunk}); "
                         f"the first one warms up")
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # as the actor sets them
    cpu: dict[str, float] = collections.defaultdict(float)

    warm = [True]  # the first unit warms up (imports, first forward, Zarr metadata): not counted

    def timed(name, fn):
        c0 = time.process_time()
        out = fn()
        if not warm[0]:
            cpu[name] += time.process_time() - c0
        return out

    with tempfile.TemporaryDirectory() as tmp:
        spec, table, cube, units = plan_campaign(
            points(n, seed=7, box_deg=kw["box"]), os.path.join(tmp, "parts.zarr"), scales=[SCALE],
            temporal=TemporalSpec.range(START, END), model=ModelSpec(MODEL), chunk_size=chunk,
            batch_size=kw["batch"])
        embedder = ScaleMAEEmbedder(spec.model.replace(device="cpu"))
        prov = provider()
        for u in units:
            part = table.slice(u.start, u.stop)
            grids = [part.footprint(i, u.scale_m, spec.model.image_size, spec.buffer_m).grid
                     for i in range(len(part))]
            timed("NullProvider.fetch alone, one call per footprint (inside fetch_unit below)",
                  lambda: [prov.fetch(g, spec.sensor, spec.temporal) for g in grids])
            px = timed("fetch_unit (provider, coalescing, crops)", lambda: fetch_unit(prov, part, u, spec, 8))
            px = timed("pixels through Dask's wire format, no socket (dumps + loads)",
                       lambda: wire_loads(wire_dumps({"data": to_serialize(px)}))["data"])
            timed("Cube pickle round trip (once per embed task)", lambda: pickle.loads(pickle.dumps(cube)))
            timed("SampleTable slice pickle round trip (once per fetch task)",
                  lambda: pickle.loads(pickle.dumps(part)))
            timed("Cube.unit_status (client, before each submit)", lambda: cube.unit_status(u.start, u.scale_index))
            ok = np.flatnonzero(px.status == OK)
            res = timed(EMBED_PART,
                        lambda: embedder.embed([px.images[i] for i in ok], u.scale_m, output=spec.output,
                                               roi=[px.rois[i] for i in ok]))
            vectors = np.full((len(px.images), cube.embed_dim), np.nan, np.float32)
            vectors[ok] = res.vectors
            res_m = np.full(len(px.images), np.nan, np.float32)
            res_m[ok] = res.input_res_m
            timed("Cube.write_unit (Zarr)", lambda: cube.write_unit(
                u.start, u.stop, u.scale_index, embedding=vectors, status=px.status, input_res_m=res_m,
                valid_fraction=px.valid_fraction, error=px.errors))
            warm[0] = False
    n, n_units = n - (units[0].stop - units[0].start), len(units) - 1
    print(f"components over {n_units} units of {chunk} samples after one to warm up "
          f"(torch threads {torch.get_num_threads()}):")
    for name, s in cpu.items():
        print(f"  {name}: {1000 * s / n:.3f} ms per embedding ({1000 * s / n_units:.2f} ms per unit)")
    rest = sum(v for k, v in cpu.items() if k != EMBED_PART and not k.startswith("NullProvider"))
    print(f"  all of the above but embed and the provider alone: {1000 * rest / n:.3f} ms per embedding")


def profile(args, kw) -> None:
    """Profile one campaign of ``args.profile`` samples in the client and in both workers.

    Its own cluster, with profiles installed before anything runs (in this process
    before the cluster starts, in the workers before their first task); a warm-up
    campaign, then the profiled one: the figures are the difference.
    """
    n = args.profile
    local = ThreadProfiles()
    local.install()
    cluster = local_cluster(n_gpus=0, n_fetch_workers=1, processes=True, dashboard_address=None)
    with Client(cluster) as client, tempfile.TemporaryDirectory() as tmp:
        addrs = {"fetch worker": fetch_workers(client)[0], "embed worker": embed_workers(client)[0]}
        for addr in addrs.values():
            client.run(_profiles_install, workers=[addr])
        campaign(client, args.warmup, os.path.join(tmp, "warmup.zarr"), **kw)

        def snap() -> dict:
            out = {"client": local.snapshot()}
            for role, addr in addrs.items():
                out[role] = client.run(_profiles_snapshot, workers=[addr])[addr]
            return out

        before = snap()
        t0 = time.perf_counter()
        campaign(client, n, os.path.join(tmp, "profile.zarr"), **kw)
        wall = time.perf_counter() - t0
        after = snap()
    cluster.close()
    print(f"profiled campaign: {n} samples in {wall:.1f} s (every Python thread under cProfile)")
    for role in before:
        print_profile(role, diff_snapshots(before[role], after[role]), n, args.top)


if __name__ == "__main__":
    main()
