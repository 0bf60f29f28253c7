"""The loopback Earth Engine: an HTTP server answering the real ``earthengine-api`` client
from a synthetic Sentinel-2 world (for tests, demos and benchmarks).

Never imported by production paths: ``providers.backends`` (``backend="emulator"``) and the
CLI (``rsembed-dask emulator``, ``demo``) load it on demand. Importing it starts nothing.
"""

from .server import EmulatorStats, Faults, GEEEmulator, Traffic, serve
from .synthetic_s2 import SyntheticS2World

__all__ = ["GEEEmulator", "Faults", "EmulatorStats", "Traffic", "serve", "SyntheticS2World"]
