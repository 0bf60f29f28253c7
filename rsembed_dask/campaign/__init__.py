"""Orchestration on Dask: jobs, fetch and embed tasks, the runner, run_campaign."""
