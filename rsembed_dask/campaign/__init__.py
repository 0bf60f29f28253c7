"""Orchestration on Dask: jobs, fetch and embed tasks, the runner, run_campaign."""

from .progress import CampaignReport
from .run import plan_campaign, run_campaign
from .runner import Job, Runner
from .tasks import UnitSummary, embed_unit, fetch_unit

__all__ = ["run_campaign", "plan_campaign", "Runner", "Job", "CampaignReport", "UnitSummary",
           "fetch_unit", "embed_unit"]
