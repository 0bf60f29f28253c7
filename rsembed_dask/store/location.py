"""Where a store lives: a local directory or an object-store URL, and the few bytes it reads and writes.

A :class:`StoreLocation` is a local path (``file://`` URLs are local paths) or an
``s3://``, ``gs://`` or ``az://`` URL, plus storage options. It is the one place that
parses and validates where a cube, a tiling store or an export goes; it opens the
Zarr store (:class:`zarr.storage.LocalStore` for a path, :class:`zarr.storage.ObjectStore`
over `obstore <https://developmentseed.org/obstore/>`_ for a URL) and does the small
I/O the store needs beside Zarr (group metadata, listings of a prefix, single objects).

Credentials come from where each cloud's tools look for them (obstore reads the
environment: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
``AWS_ENDPOINT_URL`` and ``AWS_ALLOW_HTTP=true`` reach an S3-compatible server;
``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_ACCOUNT_NAME``...; instance and
workload identity), plus ``storage_options`` (obstore's config keys, e.g.
``{"region": "eu-west-1"}``). Storage options are never shown: not in ``repr``, ``str``,
messages, logs or anything written to a store. They travel to Dask workers inside the
pickled location (the workers open the store themselves), so pickles of a location
must not be written to disk.

Examples
--------
>>> loc = StoreLocation.parse("s3://bucket/campaign.zarr", {"region": "eu-west-1"})
>>> loc
StoreLocation('s3://bucket/campaign.zarr')
>>> loc.child("status").url
's3://bucket/campaign.zarr/status'
>>> StoreLocation.parse("/data/c.zarr").local
True
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import SpecError

__all__ = ["StoreLocation", "STORE_ERRORS", "OBJECT_SCHEMES", "parse_storage_options", "is_url"]

#: URL schemes of object stores (obstore's names for S3, Google Cloud Storage, Azure Blob Storage).
OBJECT_SCHEMES = ("s3", "gs", "az")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _object_errors() -> tuple[type[BaseException], ...]:
    from obstore.exceptions import BaseError

    return (OSError, BaseError)


#: What a failed read or write of a store raises: OSError (local) or obstore's errors (object stores).
STORE_ERRORS: tuple[type[BaseException], ...] = _object_errors()


def is_url(where: Any) -> bool:
    """Whether ``where`` is a string with a URL scheme (``s3://...``, ``file://...``)."""
    return isinstance(where, str) and _SCHEME.match(where) is not None


def parse_storage_options(items: Any) -> dict[str, str]:
    """``{"key": "value"}`` from ``["key=value", ...]`` (the CLI's repeated ``--storage-option``).

    Raises
    ------
    SpecError
        An item without ``=`` or with an empty key.

    Examples
    --------
    >>> parse_storage_options(["region=eu-west-1", "allow_http=true"])
    {'region': 'eu-west-1', 'allow_http': 'true'}
    """
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise SpecError("--storage-option", item, "KEY=VALUE (e.g. region=eu-west-1)")
        out[key.strip()] = value
    return out


@dataclass(frozen=True)
class StoreLocation:
    """A store's place: an absolute local path, or an object-store URL with its storage options.

    Build it with :meth:`parse`. ``url`` is the absolute path for a local store.

    Attributes
    ----------
    url : str
        ``/abs/path.zarr`` or ``s3://bucket/prefix.zarr`` (no trailing slash).
    storage_options : mapping
        obstore config keys for an object store (not shown, not compared).
    """

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    def __repr__(self) -> str:
        return f"StoreLocation({self.url!r})"

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:  # so that a location goes where a path went (a URL stays a URL)
        return self.url

    @classmethod
    def parse(cls, where: str | os.PathLike | StoreLocation,
              storage_options: Mapping[str, Any] | None = None) -> StoreLocation:
        """The location of ``where``: a path, a ``file://``/``s3://``/``gs://``/``az://`` URL, or a location.

        Parameters
        ----------
        where : str, path-like or StoreLocation
        storage_options : mapping, optional
            For an object store (ignored, and refused when not empty, for a local path).
            A location given with options of its own keeps them unless others are given.

        Raises
        ------
        SpecError
            Another scheme, a URL without bucket, or storage options for a local path.
        """
        if isinstance(where, StoreLocation):
            if storage_options:
                return cls.parse(where.url, storage_options)
            return where
        if not isinstance(where, (str, os.PathLike)):
            raise SpecError("store", where, "a local path or an s3://, gs://, az:// or file:// URL")
        text = os.fspath(where)
        if not isinstance(text, str) or not text:
            raise SpecError("store", where, "a local path or an s3://, gs://, az:// or file:// URL")
        match = _SCHEME.match(text)
        if match is None or match.group(1).lower() == "file":
            if match is not None:
                text = text[len("file://"):]
            if storage_options:
                raise SpecError("storage_options", sorted(storage_options),
                                f"none for the local path {text!r} (they are for s3://, gs://, az:// URLs)")
            return cls(os.path.abspath(text))
        scheme = match.group(1).lower()
        if scheme not in OBJECT_SCHEMES:
            raise SpecError("store", text, "a local path or an s3://, gs://, az:// or file:// URL "
                                           f"(scheme {scheme!r} is not supported)")
        rest = text[match.end():].strip("/")
        if not rest or rest.startswith("/"):
            raise SpecError("store", text, f"{scheme}://BUCKET/PREFIX (a bucket or container name is missing)")
        return cls(f"{scheme}://{rest}", dict(storage_options or {}))

    @property
    def local(self) -> bool:
        """Whether the store is a local (or mounted shared) directory."""
        return _SCHEME.match(self.url) is None

    @property
    def path(self) -> str:
        """The local directory (a URL for an object store: for messages only)."""
        return self.url

    @property
    def name(self) -> str:
        """The last part of the path (``campaign.zarr``)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def child(self, *parts: str) -> StoreLocation:
        """The location of ``parts`` inside this one (same storage options)."""
        rel = "/".join(p.strip("/") for p in parts if p)
        if not rel:
            return self
        if self.local:
            return StoreLocation(os.path.join(self.url, *rel.split("/")))
        return StoreLocation(f"{self.url}/{rel}", self.storage_options)

    def parent(self) -> StoreLocation:
        """The location holding this one."""
        if self.local:
            return StoreLocation(os.path.dirname(self.url))
        head, _, _ = self.url.rpartition("/")
        return StoreLocation(head, self.storage_options)

    # -- stores ---------------------------------------------------------------------------------

    def object_store(self) -> Any:
        """The obstore store rooted at this URL (one per process and location)."""
        if self.local:
            raise ValueError(f"{self.url!r} is a local path, not an object store")
        return _object_store(self.url, tuple(sorted((str(k), str(v)) for k, v in self.storage_options.items())))

    def zarr_store(self, *, read_only: bool = False) -> Any:
        """The Zarr store: a ``LocalStore`` of the directory, or an ``ObjectStore`` over obstore."""
        from zarr.storage import LocalStore, ObjectStore

        if self.local:
            return LocalStore(self.url, read_only=read_only)
        return ObjectStore(self.object_store(), read_only=read_only)

    # -- small I/O beside Zarr --------------------------------------------------------------------

    def _local(self, key: str) -> str:
        return os.path.join(self.url, *key.split("/")) if key else self.url

    def read(self, key: str) -> bytes | None:
        """The bytes of ``key`` (relative, ``/``-separated), None when it does not exist.

        Raises
        ------
        OSError or obstore error
            It exists and cannot be read (IsADirectoryError for a local directory).
        """
        if self.local:
            try:
                with open(self._local(key), "rb") as fh:
                    return fh.read()
            except FileNotFoundError:
                return None
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            return bytes(obstore.get(self.object_store(), key).bytes())
        except (NotFoundError, FileNotFoundError):
            return None

    def write(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` whole (local: a temporary file renamed over it)."""
        if self.local:
            target = self._local(key)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.{os.getpid()}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
            return
        import obstore

        obstore.put(self.object_store(), key, data)

    def is_file(self, key: str = "") -> bool:
        """Whether ``key`` is a file (local) or an object (object store)."""
        if self.local:
            return os.path.isfile(self._local(key))
        import obstore
        from obstore.exceptions import NotFoundError

        if not key:  # the location itself as one object: head of its last part from the parent
            return self.parent().is_file(self.name)
        try:
            obstore.head(self.object_store(), key)
            return True
        except (NotFoundError, FileNotFoundError):
            return False

    def exists(self, key: str = "") -> bool:
        """Whether anything is at ``key``: a file or a directory, an object or objects under the prefix."""
        if self.local:
            return os.path.exists(self._local(key))
        return self.is_file(key) or bool(self.children(key))

    def is_dir(self, key: str = "") -> bool:
        """Whether ``key`` is a directory (local) or a prefix holding objects (object store)."""
        if self.local:
            return os.path.isdir(self._local(key))
        return bool(self.children(key))

    def children(self, key: str = "") -> set[str]:
        """Names directly under ``key``: files and directories, or objects and common prefixes
        (one listing request per 1,000 names). Empty when there is nothing."""
        if self.local:
            try:
                return set(os.listdir(self._local(key)))
            except (FileNotFoundError, NotADirectoryError):
                return set()
        import obstore

        prefix = key.strip("/") or None
        found = obstore.list_with_delimiter(self.object_store(), prefix)
        names = {p.rstrip("/").rsplit("/", 1)[-1] for p in found["common_prefixes"]}
        names.update(o["path"].rsplit("/", 1)[-1] for o in found["objects"])
        return names

    def walk(self, key: str = "") -> Iterator[tuple[str, int]]:
        """``(key, size)`` of every file or object under ``key`` (relative to this location)."""
        if self.local:
            base = self._local(key)
            for root, _, files in os.walk(base):
                for f in files:
                    full = os.path.join(root, f)
                    try:
                        size = os.lstat(full).st_blocks * 512
                    except FileNotFoundError:
                        continue
                    yield os.path.relpath(full, self.url).replace(os.sep, "/"), size
            return
        import obstore

        prefix = key.strip("/")
        for batch in obstore.list(self.object_store(), prefix + "/" if prefix else None):
            for meta in batch:
                yield meta["path"], int(meta["size"])

    def upload(self, key: str, local_file: str) -> None:
        """Move the local file ``local_file`` to ``key`` (local: renamed; object store: streamed, multipart)."""
        if self.local:
            target = self._local(key)
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            os.replace(local_file, target)
            return
        import pathlib

        import obstore

        obstore.put(self.object_store(), key, pathlib.Path(local_file))
        os.remove(local_file)

    def size(self, key: str = "") -> int:
        """Bytes of the file or object ``key``."""
        if self.local:
            return os.path.getsize(self._local(key))
        if not key:
            return self.parent().size(self.name)
        import obstore

        return int(obstore.head(self.object_store(), key)["size"])

    def delete(self, key: str) -> None:
        """Remove the file or object ``key`` (nothing when it is absent)."""
        if self.local:
            try:
                os.remove(self._local(key))
            except FileNotFoundError:
                pass
            return
        import obstore

        obstore.delete(self.object_store(), key)


@functools.lru_cache(maxsize=32)
def _object_store(url: str, options: tuple[tuple[str, str], ...]) -> Any:
    """One obstore store per URL and options in this process (its HTTP connections are reused)."""
    from obstore.store import from_url

    # The rest from the environment (AWS_*, GOOGLE_*, AZURE_*): obstore reads it itself.
    return from_url(url, config=dict(options) or None)  # type: ignore[arg-type]
