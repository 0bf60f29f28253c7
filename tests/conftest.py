import pytest

from rsembed_dask.providers.gee import GEEProvider
from rsembed_dask.providers.retry import RetryPolicy
from rsembed_dask.testing import GEEEmulator

FAST_RETRY = RetryPolicy(max_retries=6, base_s=0.005, cap_s=0.05)


@pytest.fixture(scope="session")
def emulator():
    with GEEEmulator(seed=0) as emu:
        yield emu


@pytest.fixture
def emu(emulator):
    """The session emulator with counters reset and no faults left over."""
    emulator.stats.reset()
    emulator._forced.clear()
    yield emulator
    emulator._forced.clear()


@pytest.fixture
def provider(emu):
    return GEEProvider(api_url=emu.url, credentials="anonymous", project="test-project",
                       retry=FAST_RETRY)
