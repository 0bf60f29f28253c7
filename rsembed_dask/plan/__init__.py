"""Estimates before running: requests, latency, store size, time, and the report."""
