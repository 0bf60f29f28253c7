"""The ``rsembed-dask`` command line (entry point ``rsembed_dask.cli:main``)."""

from .commands import main

__all__ = ["main"]
