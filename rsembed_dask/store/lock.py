"""One writer per store: the lock a run holds on its cube (or tiling store).

The lock lives beside the store: ``out.zarr`` -> ``out.zarr.rsembed-lock`` (a file), or
``s3://bucket/out.zarr`` -> the object ``s3://bucket/out.zarr.rsembed-lock``. It holds a
random token, a heartbeat counter and who holds it (user, host, pid, boot id, pid
namespace, process start time, the holder's beat period and stale window).

- **Taking it** is a create-only write: ``link(2)`` of a fully written temporary file
  (the ``O_EXCL`` of a file that is never seen empty) on POSIX, a conditional PUT
  (``If-None-Match: *``) on a bucket. Of two runs starting together exactly one gets it.
- **Every heartbeat** (every ``heartbeat_s``, default :data:`HEARTBEAT_S`) is a
  compare-and-swap that bumps the counter only if the lock is still the version this run
  wrote: under an ``fcntl`` lock on the lock file on POSIX, with ``If-Match: <ETag>`` on a
  bucket. A run that finds the lock gone to another run marks it *lost*
  (:meth:`StoreLock.check` raises :class:`~rsembed_dask.errors.StoreLockedError` naming the
  new holder); it never writes the lock again. A beat that fails (``ESTALE``, ``EIO``, a
  removed file, an HTTP error) is retried; the lock is declared lost only when ownership
  could not be confirmed for longer than the stale window.
- **Staleness** is judged by the run that wants the lock, on its own monotonic clock: the
  holder is stale when its counter has not advanced for the stale window (default
  :data:`STALE_S`, or the holder's own recorded window when longer). No clock or mtime of
  two hosts is ever compared. "Its process is gone" is trusted at once only when host name,
  boot id and pid namespace all match this process's; otherwise the counter decides.
- ``break_lock=True`` takes over at once (naming the holder it broke); ``wait_s`` waits
  that long for a live holder to finish before giving up.

Readers (``inspect``, ``open_cube``) never take the lock. The lock lives beside the store
rather than inside it: Zarr warns about files in a group it does not know, and creating a
cube empties its directory.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import functools
import inspect
import json
import logging
import os
import pwd
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import CubeError, SpecError, StoreLockedError
from .location import StoreLocation

__all__ = ["LockInfo", "StoreLock", "lock_path", "read_lock", "store_lock", "held_lock", "confirm_held", "one_writer",
           "HEARTBEAT_S", "STALE_S"]

log = logging.getLogger(__name__)

#: Seconds between two heartbeats (compare-and-swap of the counter) of the holder.
HEARTBEAT_S = 10.0
#: Seconds without the counter advancing (on the watcher's own clock) after which a lock is
#: stale; also how long a holder goes on while its beats fail before it stops its run.
STALE_S = 60.0
#: Suffix of the lock file (object) beside the store.
SUFFIX = ".rsembed-lock"
#: Format of the lock record.
_VERSION = 2


def _is_url(store: Any) -> bool:
    """Whether ``store`` lives in a bucket (the one parser of locations: :class:`StoreLocation`)."""
    return not StoreLocation.parse(store).local


def _local(store: Any) -> str:
    return StoreLocation.parse(store).url


def lock_path(store: str | os.PathLike) -> str:
    """The lock of ``store``: ``<store>.rsembed-lock`` beside it (a path, or a URL for a bucket)."""
    return StoreLocation.parse(store).url + SUFFIX


# --- who we are --------------------------------------------------------------------------------

def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry (containers)
        return f"uid {os.getuid()}"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            # Field 22; the command name (field 2) may hold spaces and parentheses.
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP, Ctrl-Z, a debugger): alive, but not beating."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


def _alive(pid: int, start: int | None) -> bool:
    """Whether ``pid`` runs here and, where known, is the process that started at ``start``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    now = _process_start(pid)
    return start is None or now is None or now == start


# --- the record --------------------------------------------------------------------------------

@dataclass(frozen=True)
class LockInfo:
    """Who holds a store's lock, as its record says.

    ``counter`` is the holder's heartbeat count; ``readable`` is False for a lock whose
    content is not a lock record (``raw_size`` bytes), ``released`` True for a bucket's
    lock object left behind by a run that ended.
    """

    path: str
    user: str
    host: str
    pid: int
    started: str
    token: str = ""
    counter: int = 0
    pid_start: int | None = None
    boot_id: str = ""
    pid_ns: str = ""
    heartbeat_s: float = HEARTBEAT_S
    stale_s: float = STALE_S
    readable: bool = True
    released: bool = False
    raw_size: int = 0

    def describe(self) -> str:
        """``pid 12 on node-3 since 2026-01-01T10:00:00+00:00 (user ana; heartbeat 42)``."""
        if not self.readable:
            if self.raw_size == 0:
                return f"an unknown run (the lock {self.path} is empty)"
            return f"an unknown writer: {self.path} holds {self.raw_size} bytes that are not an rsembed lock record"
        return (f"pid {self.pid} on {self.host} since {self.started} (user {self.user}; "
                f"heartbeat {self.counter})")

    def same_machine(self) -> bool:
        """Whether the holder ran on this machine, in this pid namespace, since its last boot."""
        return bool(self.readable and self.host == socket.gethostname() and self.boot_id
                    and self.boot_id == _boot_id() and self.pid_ns and self.pid_ns == _pid_namespace())

    def stale_reason(self) -> str | None:
        """Why the lock is stale from one reading (its process is gone from this machine), else None.

        A holder on another host, boot or pid namespace is never judged from one reading:
        a watcher waits for its counter (:meth:`StoreLock.acquire`).
        """
        if self.released:
            return "its run released it"
        if self.same_machine() and not _alive(self.pid, self.pid_start):
            return f"its process {self.pid} on this host is gone"
        return None


def _parse(path: str, data: bytes) -> LockInfo:
    try:
        d = json.loads(data.decode("utf-8"))
        return LockInfo(path, str(d["user"]), str(d["host"]), int(d["pid"]), str(d["started"]),
                        str(d.get("token", "")), int(d.get("counter", 0)), d.get("pid_start"),
                        str(d.get("boot_id", "")), str(d.get("pid_ns", "")),
                        float(d.get("heartbeat_s", HEARTBEAT_S)), float(d.get("stale_s", STALE_S)),
                        released=bool(d.get("released", False)), raw_size=len(data))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return LockInfo(path, "unknown", "an unknown host", -1, "an unknown time", readable=False,
                        raw_size=len(data))


# --- where the lock is: one small Protocol, two backends ------------------------------------------

class _LockFile(Protocol):
    """A lock record at one place, written only by create-only and compare-and-swap writes.

    ``version`` is opaque: what :meth:`read` returned, or :meth:`create` / :meth:`replace`.
    I/O trouble raises OSError.
    """

    where: str

    def create(self, data: bytes) -> Any | None:
        """Write ``data`` if nothing is there; its version, or None when something is."""

    def read(self) -> tuple[bytes, Any] | None:
        """The record and its version, or None when there is none."""

    def replace(self, data: bytes, version: Any) -> Any | None:
        """Write ``data`` if the record is still ``version``; the new version, or None."""

    def remove(self, version: Any) -> bool:
        """Remove the record if it is still ``version``."""


def _fcntl(fd: int, op: int, where: str) -> None:
    """``lockf`` with a warning (once per place) where the filesystem has no locks."""
    try:
        fcntl.lockf(fd, op)
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        if where not in _NO_FCNTL:
            _NO_FCNTL.add(where)
            log.warning("%s: this filesystem offers no fcntl locks (%s): the lock's compare-and-swap "
                        "is only as safe as its re-read (see docs/guide/one-writer.md)", where, exc)


_NO_FCNTL: set[str] = set()
_POSIX_IO = threading.RLock()


class _PosixLock:
    """The lock as a file: created by ``link(2)``, updated in place under an fcntl lock.

    Every read and update holds an fcntl lock on the file (shared to read, exclusive to
    update) and checks that the path still names the open file, so a compare-and-swap
    (read, compare, write) is atomic among processes of one host, and across hosts on
    filesystems whose fcntl locks are coherent (NFSv3 with lockd, NFSv4, Lustre mounted
    with ``flock``, GPFS).
    """

    def __init__(self, path: str):
        self.where = path

    def create(self, data: bytes) -> Any | None:
        tmp = f"{self.where}.{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, self.where)  # atomic create-only, also on NFS
            except FileExistsError:
                return None
            except OSError:
                if os.stat(tmp).st_nlink != 2:  # NFS: a link whose reply was lost did happen
                    raise
            return data
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    @contextlib.contextmanager
    def _open(self, exclusive: bool) -> Iterator[int | None]:
        with _POSIX_IO:  # fcntl locks exclude processes, not threads of one process
            try:
                fd = os.open(self.where, os.O_RDWR if exclusive else os.O_RDONLY)
            except FileNotFoundError:
                yield None
                return
            with self._locked(fd, exclusive) as ok:
                yield fd if ok else None

    @contextlib.contextmanager
    def _locked(self, fd: int, exclusive: bool) -> Iterator[bool]:
        try:
            _fcntl(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, self.where)
            st = os.fstat(fd)
            try:
                current = os.stat(self.where)
            except FileNotFoundError:
                current = None
            # Removed (or replaced) while we waited for its fcntl lock: not the lock any more.
            yield bool(st.st_nlink and current is not None and current.st_ino == st.st_ino)
        finally:
            os.close(fd)  # also drops the fcntl lock

    @staticmethod
    def _read_fd(fd: int) -> bytes:
        chunks: list[bytes] = []
        off = 0
        while True:
            b = os.pread(fd, 65536, off)
            if not b:
                return b"".join(chunks)
            chunks.append(b)
            off += len(b)

    def read(self) -> tuple[bytes, Any] | None:
        with self._open(exclusive=False) as fd:
            if fd is None:
                return None
            data = self._read_fd(fd)
            return data, data

    def replace(self, data: bytes, version: Any) -> Any | None:
        with self._open(exclusive=True) as fd:
            if fd is None or self._read_fd(fd) != version:
                return None
            os.pwrite(fd, data, 0)  # then cut what is left of a longer record
            os.ftruncate(fd, len(data))
            os.fsync(fd)
            return data

    def remove(self, version: Any) -> bool:
        with self._open(exclusive=True) as fd:
            if fd is None or self._read_fd(fd) != version:
                return False
            os.unlink(self.where)
            os.ftruncate(fd, 0)  # a process waiting on this (now unlinked) file reads "released"
            return True


def _object_store(parent_url: str, storage_options: Mapping[str, Any] | None) -> Any:
    """The obstore store of the folder ``parent_url`` (the one place a lock opens a bucket)."""
    from datetime import timedelta

    from obstore.store import from_url

    options = dict(storage_options or {})
    # A beat retries itself on its next period: no request may hang past a few seconds.
    # (client_options are left to the store's own configuration: given, they would replace
    # what it reads from the environment, AWS_ALLOW_HTTP included.)
    retry: Any = {"max_retries": 2, "retry_timeout": timedelta(seconds=5)}
    return from_url(parent_url, retry_config=retry, **options)


class _ObjectLock:
    """The lock as an object: created with ``If-None-Match: *``, replaced with ``If-Match: <ETag>``.

    Buckets offer no conditional delete on every provider, so a run that ends replaces its
    record (compare-and-swap) by one marked released, which the next run replaces in turn.
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None):
        self.where = url
        parent, self.key = url.rsplit("/", 1)
        self.store = _object_store(parent, storage_options)

    @staticmethod
    def _io(exc: Exception) -> OSError:
        return OSError(errno.EIO, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    def create(self, data: bytes) -> Any | None:
        from obstore.exceptions import AlreadyExistsError, BaseError, PreconditionError

        try:
            return self.store.put(self.key, data, mode="create")["e_tag"]
        except (AlreadyExistsError, PreconditionError):
            got = self.read()  # a retried PUT whose first try landed finds its own record
            return got[1] if got is not None and got[0] == data else None
        except BaseError as exc:
            raise self._io(exc) from exc

    def read(self) -> tuple[bytes, Any] | None:
        from obstore.exceptions import BaseError, NotFoundError

        try:
            got = self.store.get(self.key)
            return bytes(got.bytes()), got.meta["e_tag"]
        except (FileNotFoundError, NotFoundError):
            return None
        except BaseError as exc:
            raise self._io(exc) from exc

    def replace(self, data: bytes, version: Any) -> Any | None:
        from obstore.exceptions import BaseError, NotFoundError, PreconditionError

        try:
            return self.store.put(self.key, data, mode={"e_tag": version})["e_tag"]
        except PreconditionError:
            got = self.read()
            return got[1] if got is not None and got[0] == data else None
        except (FileNotFoundError, NotFoundError):
            return None
        except BaseError as exc:
            raise self._io(exc) from exc

    def remove(self, version: Any) -> bool:
        got = self.read()
        if got is None:
            return False
        record = json.loads(got[0].decode("utf-8")) if got[1] == version else None
        if record is None:
            return False
        record["released"] = True
        return self.replace(json.dumps(record).encode(), version) is not None


def _lock_file(store: Any, storage_options: Mapping[str, Any] | None) -> _LockFile:
    path = lock_path(store)
    if not _is_url(store):
        return _PosixLock(path)
    if not storage_options and isinstance(store, StoreLocation):
        storage_options = store.storage_options  # a location carries its own options
    return _ObjectLock(path, storage_options)


def read_lock(store: str | os.PathLike, *, storage_options: Mapping[str, Any] | None = None) -> LockInfo | None:
    """The holder of ``store``'s lock, or None when nobody holds it.

    A lock whose content is not a lock record comes back with ``readable=False``.

    Raises
    ------
    CubeError
        The lock cannot be read (permissions, I/O).
    """
    lf = _lock_file(store, storage_options)
    try:
        got = lf.read()
    except OSError as exc:
        raise CubeError(f"cannot read the writer lock {lf.where}: {exc}") from None
    if got is None:
        return None
    info = _parse(lf.where, got[0])
    return None if info.released else info


# --- the holder ---------------------------------------------------------------------------------

#: Locks held, by (lock path, thread): a writer calling another writer of the same store in
#: its thread (``run_campaign`` -> repair) does not lock itself out.
_HELD: dict[tuple[str, int], StoreLock] = {}
_HELD_GUARD = threading.Lock()


class StoreLock:
    """The writer lock of one store; use :func:`store_lock` (a context manager).

    Parameters
    ----------
    store : str or path-like
        The cube or tiling store (it need not exist yet): a path or an object-store URL.
    storage_options : mapping, optional
        Options of the bucket's store (``obstore.store.from_url`` keywords).
    heartbeat_s : float
        Seconds between heartbeats.
    stale_s : float
        Seconds without a heartbeat after which this run takes a lock over, and after which
        this run, unable to confirm its lock, stops (more than twice ``heartbeat_s``).
    wait_s : float
        Seconds to wait for a live holder to finish before giving up.
    break_lock : bool
        Take the lock over at once, whoever holds it.
    notify : callable, optional
        Called with a line when this run starts waiting for a holder (default: a warning).
    interrupt : bool
        When the lock is lost, interrupt the main thread (KeyboardInterrupt) if it took the lock.
    """

    def __init__(self, store: str | os.PathLike, *, storage_options: Mapping[str, Any] | None = None,
                 heartbeat_s: float = HEARTBEAT_S, stale_s: float | None = None, wait_s: float = 0.0,
                 break_lock: bool = False, notify: Callable[[str], None] | None = None,
                 interrupt: bool = False):
        self.store = str(store).rstrip("/") if _is_url(store) else _local(store)
        self.heartbeat_s = float(heartbeat_s)
        self.stale_s = float(STALE_S if stale_s is None else stale_s)
        if not self.heartbeat_s > 0:
            raise SpecError("heartbeat_s", heartbeat_s, "a number of seconds > 0")
        if not self.stale_s >= 2 * self.heartbeat_s:
            raise SpecError("stale_s", stale_s, f"at least twice heartbeat_s ({2 * self.heartbeat_s:g} s)")
        if not wait_s >= 0:
            raise SpecError("wait_s", wait_s, "a number of seconds >= 0")
        self.wait_s, self.break_lock = float(wait_s), bool(break_lock)
        self.notify = notify or (lambda line: log.warning("%s", line))
        self._file = _lock_file(store, storage_options)
        self.path = self._file.where
        self.token = uuid.uuid4().hex
        self.counter = 0
        self._version: Any = None
        self._started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self._stop = threading.Event()
        self._io = threading.Lock()  # one beat at a time (the thread's, or check()'s)
        self._thread: threading.Thread | None = None
        self._last_ok = time.monotonic()
        self._lost: str | None = None
        self._readonly = False  # read-only storage: no lock could be (or needs to be) made
        self.interrupt, self.interrupted = bool(interrupt), False
        self._owner = threading.current_thread()

    # -- record
    def _record(self, counter: int) -> bytes:
        pid = os.getpid()
        return json.dumps({
            "format": _VERSION, "token": self.token, "counter": counter, "user": _user(),
            "host": socket.gethostname(), "pid": pid, "pid_start": _process_start(pid),
            "boot_id": _boot_id(), "pid_ns": _pid_namespace(), "started": self._started,
            "heartbeat_s": self.heartbeat_s, "stale_s": self.stale_s, "store": self.store,
        }).encode()

    # -- taking it
    def acquire(self) -> None:
        """Take the lock: at once when free, after the stale window when its holder stopped beating.

        Raises
        ------
        StoreLockedError
            A live run holds it (after ``wait_s``); the message names the holder.
        CubeError
            The lock cannot be created (missing or read-only folder), or holds something that
            is not a lock record.
        """
        mine = self._record(0)
        deadline = time.monotonic() + self.wait_s
        watched: tuple[Any, float] | None = None  # (version seen, since when on our clock)
        alive_seen = False
        waiting_said = False
        while True:
            version = self._try(self._file.create, mine)
            if version is not None:
                return self._took(version, None, "")
            got = self._try(self._file.read)
            if got is None:
                continue  # released in between
            data, seen = got
            holder = _parse(self.path, data)
            if not holder.readable and holder.raw_size and not self.break_lock:
                raise CubeError(f"{self.store}: the writer lock {self.path} holds {holder.raw_size} bytes that "
                                f"are not an rsembed lock record: remove it, or run with --break-lock "
                                f"(break_lock=True) to replace it")
            reason = "" if self.break_lock else holder.stale_reason()
            now = time.monotonic()
            if watched is None or watched[0] != seen:
                alive_seen = watched is not None  # the counter moved while we watched
                watched = (seen, now)
            window = max(self.stale_s, holder.stale_s if holder.readable else 0.0)
            if not reason and now - watched[1] >= window and not self.break_lock:
                reason = f"its heartbeat did not advance for {now - watched[1]:.0f} s (stale after {window:g} s)"
            if self.break_lock or reason:
                version = self._try(self._file.replace, mine, seen)
                if version is not None:  # (a released record, on a bucket, is taken without a word)
                    return self._took(version, None if holder.released else holder, reason or "")
                watched = None
                continue
            # Same host, boot and pid namespace, and not stale: its process lives (and, unless it is
            # stopped, beats: a stopped one is judged by its counter like a holder elsewhere).
            local_alive = holder.same_machine() and not _stopped(holder.pid)
            if (alive_seen or local_alive) and now >= deadline:
                waited = f" after waiting {self.wait_s:g} s" if self.wait_s else ""
                raise StoreLockedError(
                    f"{self.store} is being written by {holder.describe()}{waited}; wait for that run to end "
                    f"(--wait-lock S), or, if it is dead, let the next run take it over (after {window:g} s "
                    f"without a heartbeat) or break it with --break-lock")
            if not waiting_said:
                waiting_said = True
                why = (f"up to {self.wait_s:g} s for it to finish" if self.wait_s
                       else f"for its next heartbeat (taken over if none comes within {window:g} s)")
                self.notify(f"{self.store}: the writer lock is held by {holder.describe()}; waiting {why}")
            time.sleep(min(1.0, self.heartbeat_s / 4, max(holder.heartbeat_s, 0.05) / 4))

    def _try(self, op: Callable[..., Any], *args: Any) -> Any:
        """One lock operation while acquiring; storage errors become one-line CubeErrors."""
        try:
            return op(*args)
        except FileNotFoundError:
            folder = os.path.dirname(self.path)
            raise CubeError(f"{self.store}: the folder {folder} does not exist: create it first, or choose "
                            f"another output path") from None
        except PermissionError as exc:
            raise CubeError(f"{self.store} is not writable: cannot create its writer lock {self.path} ({exc}); "
                            f"the folder holding the store must be writable") from None
        except OSError as exc:
            if exc.errno == errno.EROFS:
                raise CubeError(f"{self.store} is not writable: {self.path} is on a read-only filesystem") from None
            raise CubeError(f"{self.store}: cannot take the writer lock {self.path}: {exc}") from None

    def _took(self, version: Any, holder: LockInfo | None, reason: str) -> None:
        self._version, self._last_ok = version, time.monotonic()
        if holder is not None:
            if self.break_lock:
                log.warning("%s: broke the writer lock of %s", self.store, holder.describe())
            else:
                log.warning("%s: taking over a stale lock of %s: %s", self.store, holder.describe(), reason)
        self._thread = threading.Thread(target=self._run_beats, name="rsembed-lock-heartbeat", daemon=True)
        self._thread.start()
        log.info("%s: lock taken (%s)", self.store, self.path)

    # -- holding it
    @property
    def lost(self) -> str | None:
        """Why this run no longer holds the lock, or None while it does."""
        return self._lost

    def check(self) -> None:
        """Raise when the lock is lost; confirm it first when the last confirmation is old.

        Called by the campaign before it submits work and before it writes its final
        attributes. A run that was paused (SIGSTOP, a VM pause) finds out here, before
        anything else, that another run took over.

        Raises
        ------
        StoreLockedError
            Naming who holds the lock now, or why ownership could not be confirmed.
        """
        if self._lost is None and not self._readonly and time.monotonic() - self._last_ok > 2 * self.heartbeat_s:
            self._beat()
        if self._lost is not None:
            raise StoreLockedError(f"{self.store}: this run lost its writer lock: {self._lost}; it stopped "
                                   f"writing (its finished units are kept; the holder goes on)")

    def confirm(self) -> None:
        """Confirm ownership now (one beat, whatever its age), then :meth:`check`.

        Before a step that replaces what is in the store (creating it, repairing it): a run
        resumed from a pause must not lay out a new store over the holder's.

        Raises
        ------
        StoreLockedError
            The lock is another run's now, or ownership could not be confirmed.
        """
        if self._lost is None and not self._readonly:
            self._beat()
        self.check()

    def _run_beats(self) -> None:
        try:
            while self._lost is None and not self._stop.wait(self.heartbeat_s):
                self._beat()
        except Exception as exc:  # noqa: BLE001 - the thread must never die silently: the run stops
            log.exception("%s: the lock's heartbeat failed", self.store)
            self._lose(f"its heartbeat failed ({type(exc).__name__}: {exc})")

    def _lose(self, reason: str) -> None:
        """Mark the lock lost; with ``interrupt``, raise KeyboardInterrupt in the main thread that took
        it (as Ctrl-C would), so a run blocked anywhere stops; :func:`one_writer` turns it into
        :class:`~rsembed_dask.errors.StoreLockedError`. The first reason stands (one interrupt)."""
        if self._lost is not None:
            return
        self._lost = reason
        if (self.interrupt and threading.current_thread() is not threading.main_thread()
                and self._owner is threading.main_thread()):
            import _thread
            import signal

            self.interrupted = True
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                # A real SIGINT to the main thread: it also ends a blocking wait (sleep, lock, select).
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            else:  # SIGINT handled otherwise: raise KeyboardInterrupt at the main thread's next step
                _thread.interrupt_main()

    def _beat(self) -> None:
        """One heartbeat: a compare-and-swap bumping the counter; marks the lock lost when it is not ours."""
        with self._io:
            if self._lost is not None or self._stop.is_set():
                return
            new = self._record(self.counter + 1)
            try:
                version = self._file.replace(new, self._version)
                if version is None:
                    got = self._file.read()
                    if got is None:  # removed from outside: put it back, if nobody took it meanwhile
                        version = self._file.create(new)
                        if version is None:
                            got = self._file.read()
                    if version is None and got is not None:
                        holder = _parse(self.path, got[0])
                        if holder.token == self.token:  # ours still (a retried write): adopt its version
                            version, new = got[1], got[0]
                            self.counter = holder.counter - 1
                        else:
                            log.info("%s: the writer lock was taken by %s; stopping", self.store,
                                     holder.describe())
                            self._lose(f"it is now held by {holder.describe()}")
                            return
                    if version is None:
                        raise OSError(errno.EAGAIN, "the lock changed during the beat")
            except OSError as exc:
                unconfirmed = time.monotonic() - self._last_ok
                if unconfirmed > self.stale_s:
                    log.error("%s: the writer lock could not be confirmed for %.0f s (%s); stopping",
                              self.store, unconfirmed, exc)
                    self._lose(f"its ownership could not be confirmed for {unconfirmed:.0f} s "
                               f"(stale window {self.stale_s:g} s; last error: {exc})")
                else:
                    log.warning("%s: heartbeat failed (%s); retrying (unconfirmed for %.0f s of %g s)",
                                self.store, exc, unconfirmed, self.stale_s)
                return
            self._version, self._last_ok = version, time.monotonic()
            self.counter += 1

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours (a lost lock is left alone)."""
        if self._readonly:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._lost is not None:
            log.info("%s: the lock is no longer ours (%s); left in place", self.store, self._lost)
            return
        with self._io:
            try:
                removed = self._file.remove(self._version)
            except OSError as exc:
                log.warning("%s: could not remove the writer lock %s (%s); the next run takes it over "
                            "after %g s", self.store, self.path, exc, self.stale_s)
                return
        if removed:
            log.info("%s: lock released", self.store)
        else:
            log.warning("%s: the lock changed under this run before its end; left in place", self.store)


def _read_only_store(store: Any) -> bool:
    """Whether ``store`` is an existing local directory this process cannot write."""
    if _is_url(store):
        return False
    path = _local(store)
    return os.path.isdir(path) and not os.access(path, os.W_OK)


@contextlib.contextmanager
def store_lock(store: str | os.PathLike, *, storage_options: Mapping[str, Any] | None = None,
               heartbeat_s: float = HEARTBEAT_S, stale_s: float | None = None, wait_s: float = 0.0,
               break_lock: bool = False, notify: Callable[[str], None] | None = None,
               interrupt: bool = False) -> Iterator[StoreLock]:
    """Hold the writer lock of ``store`` for the ``with`` block (released on errors and Ctrl-C too).

    Parameters are :class:`StoreLock`'s. Within the block, :meth:`StoreLock.check` raises
    once the lock is lost. A store this process already holds is not locked again (the
    outer lock is yielded, in the same thread). An existing local store on read-only storage takes no lock (a
    finished cube opens; a run with work left is refused by the cube itself).

    Raises
    ------
    StoreLockedError
        Another live run holds it.
    CubeError
        The lock cannot be created (a missing or read-only folder) or is not a lock record.

    Examples
    --------
    >>> with store_lock("campaign.zarr") as lock:  # doctest: +SKIP
    ...     lock.check()  # raises StoreLockedError once another run took it
    """
    lock = StoreLock(store, storage_options=storage_options, heartbeat_s=heartbeat_s, stale_s=stale_s,
                     wait_s=wait_s, break_lock=break_lock, notify=notify, interrupt=interrupt)
    with _HELD_GUARD:
        outer = _HELD.get((lock.path, threading.get_ident()))
    if outer is not None and outer.lost is None:
        yield outer
        return
    if _read_only_store(store):
        log.info("%s: read-only storage, no writer lock taken", lock.store)
        lock._readonly = True
        yield lock
        return
    lock.acquire()
    with _HELD_GUARD:
        _HELD[lock.path, threading.get_ident()] = lock
    try:
        yield lock
    finally:
        with _HELD_GUARD:
            _HELD.pop((lock.path, threading.get_ident()), None)
        lock.release()


def held_lock(store: str | os.PathLike) -> StoreLock | None:
    """The lock of ``store`` this thread holds (within :func:`store_lock` or :func:`one_writer`), if any.

    Parameters
    ----------
    store : str, path-like or StoreLocation
        The cube or tiling store.

    Returns
    -------
    StoreLock or None
        The lock held by this thread, or None.
    """
    with _HELD_GUARD:
        return _HELD.get((lock_path(store), threading.get_ident()))


def _close_unstarted_coroutines(tb: Any) -> None:
    """Close the coroutines an interrupt left unstarted in the frames it unwound.

    The interrupt of a lost lock lands wherever the main thread is, also between a library
    creating a coroutine and running it (Zarr's synchronous API): closed, it is not reported as
    "never awaited" when the run exits.
    """
    for frame, _ in traceback.walk_tb(tb):
        for value in list(frame.f_locals.values()):
            if inspect.iscoroutine(value) and inspect.getcoroutinestate(value) == inspect.CORO_CREATED:
                value.close()


def confirm_held(store: str | os.PathLike) -> None:
    """Before ``store`` is created, replaced or repaired: confirm the lock this thread holds on it, if any.

    Parameters
    ----------
    store : str, path-like or StoreLocation
        The cube or tiling store about to be laid out.

    Returns
    -------
    None

    Raises
    ------
    StoreLockedError
        This thread held the lock and lost it: another run writes the store now.
    """
    lock = held_lock(store)
    if lock is not None:
        lock.confirm()


#: Keywords of :func:`store_lock` a decorated function may take (they are passed through to it too).
_LOCK_KEYWORDS = ("storage_options",)


def one_writer(param: str, options: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
               ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a function that writes the store named by its argument ``param``: it runs holding the lock.

    A ``storage_options`` argument of the function, where it has one, opens the lock too;
    ``options``, given the function's bound arguments, returns more :func:`store_lock`
    keywords (``wait_s``, ``break_lock``, ``stale_s``...). Inside, :func:`held_lock` gives the lock.
    """
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs).arguments
            extra = {k: bound[k] for k in _LOCK_KEYWORDS if bound.get(k) is not None}
            if options is not None:
                extra.update(options(bound))
            taken: list[StoreLock] = []
            try:
                with store_lock(bound[param], **extra) as lock:
                    taken.append(lock)
                    return fn(*args, **kwargs)
            except KeyboardInterrupt as exc:
                if taken and taken[0].interrupted:  # the lock was lost (not a Ctrl-C): say so
                    _close_unstarted_coroutines(exc.__traceback__)
                    taken[0].check()
                raise
        return locked
    return wrap
