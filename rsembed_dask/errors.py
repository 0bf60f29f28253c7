"""Error hierarchy: one base class, a few subclasses per stage.

Every error derives from :class:`RsEmbedError`; the spec and input errors also
derive from :class:`ValueError` so generic callers can catch them as such.
Messages say which field was wrong, the value given and what is allowed.
"""

from __future__ import annotations


class RsEmbedError(Exception):
    """Base class of every error raised by rsembed_dask."""


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


class CubeError(RsEmbedError):
    """The Zarr datacube is missing, unreadable or inconsistent."""


class SpecMismatchError(CubeError):
    """An existing cube was written with a different campaign spec."""
