"""The text report of a campaign plan (``rsembed-dask plan`` without ``--json``).

:func:`format_plan` reads a :class:`~rsembed_dask.plan.estimate.CampaignPlan`; the
numbers are all the plan's (:meth:`~rsembed_dask.plan.estimate.CampaignPlan.as_dict`
holds the same as JSON).
"""

from __future__ import annotations

from dask.utils import format_bytes

from .estimate import CampaignPlan
from .latency import ASSUMED_LATENCY_BASE_S, ASSUMED_LATENCY_S_PER_MIB
from ..providers.limits import BYTES_PER_SAMPLE

__all__ = ["format_plan"]


def format_plan(plan: CampaignPlan) -> str:
    """The text report of ``plan``: one column per scale and a total.

    Parameters
    ----------
    plan : CampaignPlan

    Returns
    -------
    str
    """
    cols = [f"{s.scale_m:g} m" for s in plan.scales] + ["total"]
    first = plan.scales[0] if plan.scales else None
    lines = [
        f"AOI {plan.aoi_label}  (lon {plan.aoi_bounds[0]:g}..{plan.aoi_bounds[2]:g}"
        f"{' across the antimeridian' if plan.aoi_bounds[0] > plan.aoi_bounds[2] else ''}, "
        f"lat {plan.aoi_bounds[1]:g}..{plan.aoi_bounds[3]:g})",
    ]
    if first is not None:
        lines.append(f"tiles of {first.image_size} px, {first.n_bands} bands x {BYTES_PER_SAMPLE} bytes, "
                     f"{first.chunk_size} tiles per work unit; model {plan.model_id} "
                     f"(D = {plan.embed_dim}, {plan.embed_dim_source})")
    lines.append(f"Earth Engine quota: {plan.concurrency} concurrent requests, {plan.requests_per_s:g} requests/s")
    lat = plan.latency
    if lat.source == "assumed":
        lines.append(f"latency per request: assumed {ASSUMED_LATENCY_BASE_S:g} s + "
                     f"{ASSUMED_LATENCY_S_PER_MIB:g} s/MiB ({plan.latency_for(False):.2f} s single, "
                     f"{plan.latency_for(True):.2f} s coalesced); {lat.detail}")
    else:
        lines.append(f"latency per request: {lat.source} {lat.single_s:.3f} s single, "
                     f"{lat.coalesced_s:.3f} s coalesced ({lat.detail})")
    n = plan.n_windows
    if plan.windows:
        shown = ", ".join(w.label for w in plan.windows[:_WINDOWS_LISTED])
        more = f", ... ({len(plan.windows)} in all)" if len(plan.windows) > _WINDOWS_LISTED else ""
        lines.append(f"{len(plan.windows)} date window{'s' if n > 1 else ''} (end exclusive): {shown}{more}")
    lines.append("")
    if n > 1:
        lines.append(f"per window (each of the {n} windows fetches the same footprints):")

    def row(label, values):
        return f"{label:<34}" + "".join(f"{v:>15}" for v in values)

    def total_row(label, name, fmt):
        vals = [getattr(s, name) for s in plan.scales]
        return row(label, [fmt(v) for v in vals] + [fmt(sum(vals))])

    def per_req(s_req, s_fp):
        return f"{s_fp / s_req:.1f}" if s_req else "-"

    lines.append(row("", cols))
    lines.append(total_row("footprints (tiles)", "footprints", _int))
    lines.append(row("UTM zones", [str(s.zones) for s in plan.scales] + [""]))
    lines.append(total_row("work units", "work_units", _int))
    lines.append(total_row("requests, one per footprint", "requests_single", _int))
    lines.append(total_row("requests, coalesced", "requests_coalesced", _int))
    lines.append(row("  footprints per request", [per_req(s.requests_coalesced, s.footprints) for s in plan.scales]
                     + [per_req(plan.requests_coalesced, plan.footprints)]))
    lines.append(row("  largest request", [_bytes(s.largest_request_bytes) for s in plan.scales]
                     + [_bytes(max((s.largest_request_bytes for s in plan.scales), default=0))]))
    lines.append(total_row("pixels to fetch, coalesced", "pixels_coalesced", _count))
    lines.append(total_row("bytes to fetch, coalesced", "bytes_coalesced", _bytes))
    lines.append(total_row("bytes to fetch, one per footprint", "bytes_single", _bytes))
    lines.append(total_row("cube on disk (uncompressed, max)", "cube_bytes", _bytes))
    lines.append(total_row("  sample cubes", "sample_cube_bytes", _bytes))
    lines.append(total_row("  zone grids", "grids_bytes", _bytes))
    for label, coalesced in (("fetch time, one per footprint", False), ("fetch time, coalesced", True)):
        ts = [plan.fetch_time(coalesced, s) for s in plan.scales] + [plan.fetch_time(coalesced)]
        lines.append(row(label, [_duration(t.seconds) for t in ts]))
        lines.append(row("  bound by", [t.bound for t in ts]))
    if n > 1:
        lines.extend(_windows_block(plan, row))
    lines.append("")
    lines.append("fetch time = max(requests x latency / concurrency, requests / requests-per-s); "
                 "GPU time not included")
    lines.extend(plan.notes)
    lines.append(f"planned in {plan.planning_s:.1f} s")
    return "\n".join(lines)


#: Windows named one by one in the report (the rest are counted).
_WINDOWS_LISTED = 12


def _windows_block(plan: CampaignPlan, row) -> list[str]:
    """Rows for every window and for all windows together."""
    one = plan.fetch_time(True)
    lines = ["", "per window, coalesced:"]
    for w in plan.windows[:_WINDOWS_LISTED]:
        lines.append(f"  {w.label}: {_int(plan.footprints)} footprints, {_int(plan.requests_coalesced)} requests, "
                     f"{_bytes(plan._total('bytes_coalesced'))}, fetch {_duration(one.seconds)}")
    if len(plan.windows) > _WINDOWS_LISTED:
        lines.append(f"  ... {len(plan.windows) - _WINDOWS_LISTED} more windows, each the same")
    a = plan.all_windows()
    lines.append("")
    lines.append(row(f"all {plan.n_windows} windows", ["", "total"]))
    lines.append(row("  footprints", ["", _int(a["footprints"])]))
    lines.append(row("  requests, coalesced", ["", _int(a["requests_coalesced"])]))
    lines.append(row("  requests, one per footprint", ["", _int(a["requests_single"])]))
    lines.append(row("  bytes to fetch, coalesced", ["", _bytes(a["bytes_coalesced"])]))
    lines.append(row("  cube on disk (uncompressed, max)", ["", _bytes(a["cube_bytes"])]))
    for label, coalesced in (("  fetch time, coalesced", True), ("  fetch time, one per footprint", False)):
        t = plan.all_windows_fetch_time(coalesced)
        lines.append(row(label, ["", f"{_duration(t.seconds)} ({t.bound})"]))
    return lines


def _int(v: int) -> str:
    return f"{int(v):,}"


def _count(v: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.2f} {unit}"
    return f"{v:g}"


def _bytes(v: float) -> str:
    return format_bytes(int(v))


def _duration(s: float) -> str:
    if s >= 2 * 86400:
        return f"{s / 86400:.1f} d"
    if s >= 2 * 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.0f} min"
    return f"{s:.1f} s"
