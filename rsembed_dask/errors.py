"""Error hierarchy: one base class, a few subclasses per stage.

Every error derives from :class:`RsEmbedError`; the spec and input errors also
derive from :class:`ValueError` so generic callers can catch them as such.
Messages say which field was wrong, the value given and what is allowed.

Every error survives pickling (a Dask worker sends it to the client) with its class,
message and attributes, whatever its constructor's signature.

Examples
--------
>>> import pickle
>>> err = pickle.loads(pickle.dumps(SpecError("PointBuffer.lat", 95, "a number in [-90, 90]")))
>>> type(err).__name__, err.field, err.value
('SpecError', 'PointBuffer.lat', 95)
>>> str(err)
'PointBuffer.lat=95 is invalid: expected a number in [-90, 90]'
"""

from __future__ import annotations

import pickle
from typing import Any

__all__ = [
    "RsEmbedError",
    "SpecError",
    "ProviderError",
    "NoImageryError",
    "TransientProviderError",
    "QuotaError",
    "PermanentProviderError",
    "RequestTooLargeError",
    "ComputationTooLargeError",
    "ModelError",
    "ClusterError",
    "ClusterDependencyError",
    "CubeError",
    "SpecMismatchError",
    "CubeDamagedError",
    "StoreLockedError",
    "OutputError",
    "ConfigurationError",
    "RsEmbedWarning",
    "NoImageryWarning",
]


def _rebuild(cls: type, args: tuple, state: dict[str, Any]) -> BaseException:
    """Unpickle an :class:`RsEmbedError` without calling its ``__init__``."""
    err = cls.__new__(cls, *args)
    err.args = args
    err.__dict__.update(state)
    return err


def _picklable(value: object) -> object:
    """``value`` if it pickles, else its ``repr`` (so the error carrying it still pickles)."""
    try:
        pickle.dumps(value)
    except (pickle.PicklingError, TypeError, AttributeError, RecursionError):
        return repr(value)
    return value


class RsEmbedError(Exception):
    """Base class of every error raised by rsembed_dask."""

    def __reduce__(self):
        # Exception's default calls ``cls(*self.args)``: wrong for any subclass whose
        # ``__init__`` does not take the message alone (SpecError, QuotaError).
        return (_rebuild, (type(self), self.args, {k: _picklable(v) for k, v in self.__dict__.items()}))


class SpecError(RsEmbedError, ValueError):
    """A spec or input value is invalid.

    Parameters
    ----------
    field : str
        Name of the offending field, e.g. ``"PointBuffer.lat"``.
    value : object
        The value that was given.
    allowed : str
        What is allowed, in words, e.g. ``"a finite number in [-90, 90]"``.
    """

    def __init__(self, field: str, value: object, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}={value!r} is invalid: expected {allowed}")


class ProviderError(RsEmbedError):
    """Fetching imagery failed."""


class NoImageryError(ProviderError):
    """No scene matched the collection, date window, bounds and cloud filter."""


class TransientProviderError(ProviderError):
    """A failure worth retrying (HTTP 5xx, connection reset, timeout)."""


class QuotaError(TransientProviderError):
    """Earth Engine answered 429 (too many requests / quota exceeded).

    ``retry_after`` carries the server's ``Retry-After`` in seconds, if it sent one.
    """

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentProviderError(ProviderError):
    """A failure that retrying cannot fix (HTTP 400/403/404, malformed answer)."""


class RequestTooLargeError(PermanentProviderError, ValueError):
    """A single request would exceed Earth Engine's per-request byte limit."""


class ModelError(RsEmbedError):
    """The model could not be loaded or run."""


class ClusterError(RsEmbedError):
    """No Dask scheduler answers at the address given, or the cluster cannot be used."""


class ClusterDependencyError(RsEmbedError, ImportError):
    """A cluster kind needs an optional package that is not installed."""


class CubeError(RsEmbedError):
    """The Zarr datacube is missing, unreadable or inconsistent."""


class SpecMismatchError(CubeError):
    """An existing cube was written with a different campaign spec."""


class CubeDamagedError(CubeError):
    """A cube's metadata or chunks are damaged (unreadable, missing or undecodable).

    The message names what is damaged and how to find the rest
    (``rsembed-dask inspect --verify``) and to repair it (``run --repair``).
    """


class StoreLockedError(CubeError):
    """Another run holds the store's writer lock (see :mod:`rsembed_dask.store.lock`)."""


class OutputError(RsEmbedError):
    """An output (GeoParquet export, STAC catalogue, quicklook) cannot be written where asked:
    the message names the path, the operating system's reason and what to do."""


class ConfigurationError(RsEmbedError):
    """The Earth Engine configuration cannot work: credentials, project, URL, collection or bands.

    Not a :class:`ProviderError` on purpose: a campaign stops at once on it
    (nothing is recorded sample by sample) and :func:`rsembed_dask.get_embedding`
    raises it. The message says what is wrong, the value given and how to fix it.
    """


class ComputationTooLargeError(PermanentProviderError):
    """Earth Engine gave up on a request's work (``Computation timed out.``,
    ``User memory limit exceeded.``): a coalesced request is split and its parts retried."""


class RsEmbedWarning(UserWarning):
    """Base class of the warnings rsembed_dask emits."""


class NoImageryWarning(RsEmbedWarning):
    """A campaign ended without a single sample that found imagery."""
