"""Orchestration on Dask: jobs, fetch, embed and write tasks, the runner, run_campaign."""

from .jobs import Job, Jobs, plan_samples, plan_tiling
from .options import RunOptions
from .progress import CampaignReport
from .run import plan_campaign, run_campaign
from .runner import Runner
from .tasks import UnitSummary, UnitVectors, embed_unit, fetch_unit, write_unit

__all__ = ["run_campaign", "RunOptions", "plan_campaign", "plan_samples", "plan_tiling", "Jobs", "Job",
           "Runner", "CampaignReport", "UnitSummary", "UnitVectors", "fetch_unit", "embed_unit",
           "write_unit"]
