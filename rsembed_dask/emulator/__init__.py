"""Test and demo helpers: the loopback Earth Engine emulator (never imported by production paths)."""

from .server import EmulatorStats, Faults, GEEEmulator

__all__ = ["GEEEmulator", "Faults", "EmulatorStats"]
