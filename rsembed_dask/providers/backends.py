"""Turn a ``backend=`` argument into a :class:`~rsembed_dask.providers.base.Provider`.

Accepted forms:

- ``"gee"``: Google Earth Engine through earthengine-api (the default). Fetching
  initialises earthengine-api's process-wide client for the provider's URL,
  project and credentials with our HTTP transport and ``ee.data.setMaxRetries(0)``
  (see :mod:`rsembed_dask.providers.ee_session`).
- ``"emulator"``: a loopback Earth Engine emulator started in this process, for
  offline demos; the real earthengine-api client talks to it. On exit, ``ee``'s
  configuration in this process (URL, credentials, transport, max retries, or
  "not initialised") is given back as it was found.
- ``"local:PATH"``: GeoTIFF/COG/VRT files (a file, a directory or a glob).
- a provider instance (anything with ``fetch(grid, sensor, temporal)``).
"""

from __future__ import annotations

import contextlib
import glob
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import SpecError
from .base import Provider

log = logging.getLogger(__name__)

__all__ = ["open_backend", "check_backend", "BACKEND_FORMS"]

BACKEND_FORMS = "'gee', 'emulator', 'local:PATH' or a Provider instance"


def _local_paths(spec: str) -> list[Path]:
    p = Path(spec).expanduser()
    if p.is_dir():
        paths = sorted(x for x in p.iterdir() if x.suffix.lower() in (".tif", ".tiff", ".vrt"))
    elif any(ch in spec for ch in "*?["):
        paths = [Path(x) for x in sorted(glob.glob(str(p)))]
    else:
        paths = [p] if p.exists() else []
    if not paths:
        raise SpecError("backend", f"local:{spec}", "'local:PATH' naming an existing raster, "
                                                     "a directory of .tif/.vrt files or a glob")
    return paths


def check_backend(backend: Any) -> None:
    """Refuse a ``backend`` that :func:`open_backend` would refuse, without opening anything.

    Cheap enough to run before a cube is created or a cluster started.

    Parameters
    ----------
    backend : str or Provider
        As for :func:`open_backend`.

    Raises
    ------
    SpecError
        Not one of :data:`BACKEND_FORMS`, or ``local:PATH`` naming no raster.
    """
    if isinstance(backend, str):
        if backend in ("gee", "emulator"):
            return
        if backend.startswith("local:"):
            _local_paths(backend[len("local:"):])
            return
        raise SpecError("backend", backend, BACKEND_FORMS)
    if not callable(getattr(backend, "fetch", None)):
        raise SpecError("backend", backend, BACKEND_FORMS)


@contextlib.contextmanager
def open_backend(backend: Any = "gee", *, gee_options: dict[str, Any] | None = None,
                 emulator_options: dict[str, Any] | None = None) -> Iterator[Provider]:
    """Yield a provider for ``backend``; stops anything it started on exit.

    Parameters
    ----------
    backend : str or Provider
        One of :data:`BACKEND_FORMS`.
    gee_options : dict, optional
        Keyword arguments for :class:`~rsembed_dask.providers.gee.GEEProvider`
        (``project``, ``credentials``, ``api_url``, ``high_volume`` ...).
    emulator_options : dict, optional
        Keyword arguments for the emulator when ``backend="emulator"``.

    Yields
    ------
    Provider
        Ready to fetch; an emulator started for it runs until the ``with`` block ends.

    Raises
    ------
    SpecError
        An unknown backend, or ``local:PATH`` naming no raster.

    Examples
    --------
    >>> with open_backend("emulator") as provider:  # doctest: +SKIP
    ...     patch = provider.fetch(grid, sensor, temporal)
    """
    gee_options = dict(gee_options or {})
    if isinstance(backend, str):
        if backend == "gee":
            from .gee import GEEProvider

            yield GEEProvider(**gee_options)
            return
        if backend == "emulator":
            # Offline demo path: the emulator lives in the testing package and is
            # only imported when explicitly asked for.
            from .ee_session import preserved_ee_configuration
            from .gee import GEEProvider
            from ..emulator.server import GEEEmulator

            with preserved_ee_configuration(), GEEEmulator(**(emulator_options or {})) as emu:
                log.info("Earth Engine emulator serving at %s", emu.url)
                gee_options.update(api_url=emu.url, credentials="anonymous",
                                   project=gee_options.get("project") or "emulator-project")
                yield GEEProvider(**gee_options)
            return
        if backend.startswith("local:"):
            from .local import LocalRasterProvider

            yield LocalRasterProvider(_local_paths(backend[len("local:"):]))
            return
        raise SpecError("backend", backend, BACKEND_FORMS)
    if callable(getattr(backend, "fetch", None)):
        yield backend
        return
    raise SpecError("backend", backend, BACKEND_FORMS)
