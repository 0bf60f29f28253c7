"""Test and demo helpers: the loopback Earth Engine emulator (never imported by production paths)."""

from .gee_emulator import EmulatorStats, Faults, GEEEmulator

__all__ = ["GEEEmulator", "Faults", "EmulatorStats"]
