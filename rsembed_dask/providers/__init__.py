"""Imagery providers: a grid, a sensor and a date window in, a :class:`Patch` out."""

from .base import Patch, Provider, RequestStats
from .gee import GEEProvider
from .local import LocalRasterProvider
from .retry import RetryPolicy

__all__ = ["GEEProvider", "LocalRasterProvider", "Patch", "Provider", "RequestStats", "RetryPolicy"]
