"""For scripts run in a subprocess: die (SIGKILL) at the first write of a status chunk.

The real interruption point of a unit's write: its data arrays are written, the status
chunk vouching for them is next. Used by the never-lose tests (tests/integration/test_cube.py,
tests/e2e/test_never_lose.py).
"""

import os
import signal

from zarr.storage import LocalStore


def die_before_status_writes() -> None:
    """Patch zarr's LocalStore so that this process kills itself before writing ``status/c/...``."""
    original = LocalStore.set

    async def set_or_die(self, key, value):
        if key.startswith("status/c/"):
            print("killed before writing", key, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        await original(self, key, value)

    LocalStore.set = set_or_die
