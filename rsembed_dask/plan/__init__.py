"""Estimates before running: requests, latency, store size, fetch time, and the report."""

from .estimate import CampaignPlan, PlanProgress, ScalePlan, estimate_campaign, plan_scale, resolve_embed_dim
from .latency import Latency, assumed_latency, fetch_time, measure_latency
from .report import format_plan
from .requests import RequestTally, UnitRequests, unit_requests

__all__ = [
    "estimate_campaign", "CampaignPlan", "PlanProgress", "ScalePlan", "plan_scale", "resolve_embed_dim", "format_plan",
    "Latency", "assumed_latency", "fetch_time", "measure_latency",
    "UnitRequests", "RequestTally", "unit_requests",
]
