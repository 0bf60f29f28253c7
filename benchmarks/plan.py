"""Campaign planning at world scale: ``rsembed-dask plan`` of the whole UTM band, timed and weighed.

``rsembed-dask plan -180,-80,180,84 --scales 10,20,40`` counts 132 M footprints
(100.6 M tiles of 224 px at 10 m, 25.1 M at 20 m, 6.3 M at 40 m in 120 UTM zones),
their work units, coalesced Earth Engine requests, bytes and cube size. The planner
tiles one zone of one scale at a time and drops it (``estimate_campaign`` on
``tile_zones``), so memory stays that of one zone whatever the AOI.

Goals (2 shared cores): ``plan seconds`` under 60 and ``plan peak MiB`` under 1024.
Before the zone-by-zone planner the same command took 193 s and 7.9 GiB (the whole
tile tables of every scale at once).

The command runs in a child process (``python -m rsembed_dask.cli plan ... --json``,
progress off) so that its peak RSS is its own: ``ru_maxrss`` of the waited-for child.
Figures (one ``name: value`` line each): ``plan seconds`` (wall time of the child,
Python start-up and imports included), ``plan cpu seconds`` (user + system),
``plan peak MiB``, ``plan footprints``, ``plan footprints per s``, ``plan zones``,
``plan work units``, ``plan requests coalesced``, the footprints per scale, and
whether each goal is met.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/plan.py [--aoi -180,-80,180,84]
[--scales 10,20,40]``. About 40 s on 2 shared cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

WORLD = "-180,-80,180,84"
SCALES = "10,20,40"
GOAL_S = 60.0
GOAL_MIB = 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--aoi", default=WORLD, help=f"minlon,minlat,maxlon,maxlat (default {WORLD})")
    parser.add_argument("--scales", default=SCALES, help=f"comma-separated metres (default {SCALES})")
    args = parser.parse_args()

    cmd = [sys.executable, "-m", "rsembed_dask.cli", "plan", args.aoi, "--scales", args.scales, "--json",
           "--no-progress"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"plan failed ({done.returncode}): {done.stderr.strip()}")
    plan = json.loads(done.stdout)
    peak_mib = after.ru_maxrss / 1024  # KiB on Linux; the largest child so far: the only one
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    total = plan["total"]
    print(f"plan seconds: {wall:.1f}")
    print(f"plan cpu seconds: {cpu:.1f}")
    print(f"plan peak MiB: {peak_mib:.0f}")
    print(f"plan footprints: {total['footprints']}")
    print(f"plan footprints per s: {total['footprints'] / wall:,.0f}")
    print(f"plan zones: {max(s['zones'] for s in plan['scales'])}")
    print(f"plan work units: {total['work_units']}")
    print(f"plan requests coalesced: {total['requests_coalesced']}")
    for s in plan["scales"]:
        print(f"plan footprints at {s['scale_m']:g} m: {s['footprints']}")
    print(f"plan planning_s (in the command): {plan['planning_s']:.1f}")
    print(f"plan seconds goal (< {GOAL_S:g}): {'met' if wall < GOAL_S else 'NOT met'}")
    print(f"plan peak MiB goal (< {GOAL_MIB:g}): {'met' if peak_mib < GOAL_MIB else 'NOT met'}")


if __name__ == "__main__":
    main()
