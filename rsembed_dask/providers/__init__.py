"""Imagery providers: a grid, a sensor and a date window in, a :class:`Patch` out."""

from .backends import check_backend, open_backend
from .base import Patch, Provider, RequestStats
from .coalesce import CoalescedRequest, plan_requests
from .fetching import fetch_coalesced
from .gee import GEEProvider
from .local import LocalRasterProvider
from .retry import RetryPolicy

__all__ = ["GEEProvider", "LocalRasterProvider", "Patch", "Provider", "RequestStats", "RetryPolicy",
           "open_backend", "check_backend", "CoalescedRequest", "plan_requests", "fetch_coalesced"]
