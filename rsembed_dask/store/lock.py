"""One writer per store: the lock a run holds on its cube (or tiling store).

A run creates ``<store>.rsembed-lock`` beside the store (``out.zarr`` ->
``out.zarr.rsembed-lock``) with ``O_CREAT | O_EXCL``, so of two runs starting
together exactly one gets it. The file holds the holder's user, host, pid,
process start time and the time the lock was taken; its modification time is the
holder's heartbeat, refreshed every :data:`HEARTBEAT_S` seconds by a thread. The
lock is removed when the run ends, also on errors and Ctrl-C.

A second run stops at once with :class:`~rsembed_dask.errors.StoreLockedError`
naming the holder. A lock is stale, and taken over with a warning, when its
holder is on this host and its process is gone (or the pid now belongs to a
process started later), or, for a holder on another host, when its heartbeat is
older than :data:`STALE_S` seconds. Readers (``inspect``, ``open_cube``) never
take it.

The lock lives beside the store rather than inside it: Zarr v3 warns about any
file in a group it does not know, and creating a cube (``mode="w"``) empties
the directory, which would remove a lock inside it.
"""

from __future__ import annotations

import contextlib
import errno
import datetime as _dt
import functools
import inspect
import json
import logging
import os
import pwd
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import StoreLockedError

__all__ = ["LockInfo", "StoreLock", "lock_path", "read_lock", "store_lock", "one_writer",
           "HEARTBEAT_S", "STALE_S"]

log = logging.getLogger(__name__)

#: Seconds between two refreshes of the holder's heartbeat (the lock file's mtime).
HEARTBEAT_S = 30.0
#: A lock from another host whose heartbeat is older than this is stale.
STALE_S = 600.0
#: Suffix of the lock file beside the store.
SUFFIX = ".rsembed-lock"
#: Seconds a lock file may stay empty (its holder between create and write) before it is stale.
_EMPTY_GRACE_S = 10.0


def lock_path(store: str | os.PathLike) -> str:
    """The lock file of ``store``: ``<store>.rsembed-lock`` beside it."""
    return os.path.abspath(os.fspath(store)).rstrip(os.sep) + SUFFIX


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry (containers)
        return f"uid {os.getuid()}"


def _process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            # Field 22; the command name (field 2) may hold spaces and parentheses.
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, start: int | None) -> bool:
    """Whether ``pid`` runs on this host and, where known, is the process that started at ``start``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    now = _process_start(pid)
    return start is None or now is None or now == start


@dataclass(frozen=True)
class LockInfo:
    """Who holds a store's lock: user, host, pid, when it was taken and its last heartbeat."""

    path: str
    user: str
    host: str
    pid: int
    started: str
    heartbeat_age_s: float
    token: str = ""
    pid_start: int | None = None

    def describe(self) -> str:
        if self.pid < 0:
            return f"a run that has not yet written its name into {self.path}"
        return (f"pid {self.pid} on {self.host} since {self.started} (user {self.user}; "
                f"last heartbeat {self.heartbeat_age_s:.0f} s ago)")

    def stale_reason(self) -> str | None:
        """Why the lock is stale, or None while its holder may be alive."""
        if self.pid < 0:
            if self.heartbeat_age_s > _EMPTY_GRACE_S:
                return f"its file has held no readable holder for {self.heartbeat_age_s:.0f} s"
            return None
        if self.host == socket.gethostname():
            if not _alive(self.pid, self.pid_start):
                return f"its process {self.pid} on this host is gone"
            return None
        if self.heartbeat_age_s > STALE_S:
            return f"its heartbeat is {self.heartbeat_age_s:.0f} s old (stale after {STALE_S:.0f} s)"
        return None


def read_lock(store: str | os.PathLike) -> LockInfo | None:
    """The holder of ``store``'s lock, or None when nobody holds it.

    A lock file without readable content (its holder died between creating and
    writing it, or is writing it right now) is described as held by an unknown
    process, stale once older than a few seconds.
    """
    path = lock_path(store)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    try:
        d = json.loads(text)
        return LockInfo(path, str(d["user"]), str(d["host"]), int(d["pid"]), str(d["started"]), age,
                        str(d.get("token", "")), d.get("pid_start"))
    except (ValueError, KeyError, TypeError):
        # Unknown holder (pid -1): stale after a short grace period, whatever the host.
        return LockInfo(path, "unknown", "an unknown host", -1, "an unknown time", age, "")


class StoreLock:
    """The writer lock of one store; use :func:`store_lock` (a context manager).

    Parameters
    ----------
    store : str or path-like
        The cube or tiling store (it need not exist yet).
    heartbeat_s : float
        Seconds between heartbeats.
    """

    def __init__(self, store: str | os.PathLike, *, heartbeat_s: float = HEARTBEAT_S):
        self.store = os.path.abspath(os.fspath(store))
        self.path = lock_path(store)
        self.heartbeat_s = float(heartbeat_s)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._readonly = False  # read-only storage: no lock file could be (or needs to be) made

    def _content(self) -> bytes:
        pid = os.getpid()
        return json.dumps({
            "user": _user(), "host": socket.gethostname(), "pid": pid, "pid_start": _process_start(pid),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "store": self.store, "token": self.token,
        }).encode()

    def _create(self) -> bool:
        """Create the lock file atomically; False when it exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, self._content())
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def acquire(self) -> None:
        """Take the lock, or take over a stale one with a warning.

        Raises
        ------
        StoreLockedError
            Another live run holds it; the message names the holder.
        """
        for _ in range(3):
            try:
                created = self._create()
            except (PermissionError, OSError) as exc:
                if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
                if os.path.isdir(self.store) and not os.access(self.store, os.W_OK):
                    # Read-only storage: nothing can be written, so there is no writer to exclude
                    # (a finished cube opens; a run with work left is refused by the cube itself).
                    log.info("%s: read-only storage, no writer lock taken (%s)", self.store, exc)
                    self._readonly = True
                    return
                raise StoreLockedError(f"{self.store}: cannot create the writer lock {self.path} ({exc}): "
                                       "the folder holding the store must be writable") from None
            if created:
                break
            holder = read_lock(self.store)
            if holder is None:
                continue  # released in between: try again
            reason = holder.stale_reason()
            if reason is None:
                raise StoreLockedError(
                    f"{self.store} is being written by {holder.describe()}; wait for that run to end or, if it "
                    f"is dead, remove {self.path} (a lock is taken over by itself when its holder on this "
                    f"host is gone, or after {STALE_S:.0f} s without a heartbeat from another host)")
            if self._take_over(holder):
                log.warning("%s: taking over a stale lock of %s: %s", self.store, holder.describe(), reason)
                break
        else:
            raise StoreLockedError(f"{self.store}: could not take the lock {self.path} (other runs are "
                                   "taking it at the same time); try again")
        self._thread = threading.Thread(target=self._beat, name="rsembed-lock-heartbeat", daemon=True)
        self._thread.start()
        log.info("%s: lock taken (%s)", self.store, self.path)

    def _take_over(self, stale: LockInfo) -> bool:
        """Replace the stale lock by ours; False when another run took it first."""
        moved = f"{self.path}.stale-{self.token}"
        try:
            os.rename(self.path, moved)  # only one of several runs taking over moves it
        except FileNotFoundError:
            return self._create()
        try:
            with open(moved, encoding="utf-8") as fh:
                text = fh.read()
            was = json.loads(text).get("token", "") if text.strip() else ""
        except (OSError, ValueError, AttributeError):
            was = ""
        if was != stale.token:
            # A fresh lock of another run got between our reading and moving: put it back.
            with contextlib.suppress(FileExistsError):
                os.link(moved, self.path)
            os.unlink(moved)
            return False
        os.unlink(moved)
        return self._create()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                log.error("%s: the lock file %s was removed while this run holds it", self.store, self.path)
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours."""
        if self._readonly:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = read_lock(self.store)
        if holder is not None and holder.token == self.token:
            os.unlink(self.path)
            log.info("%s: lock released", self.store)
        elif holder is not None:
            log.warning("%s: the lock is no longer ours (now %s); left in place", self.store, holder.describe())


@contextlib.contextmanager
def store_lock(store: str | os.PathLike, *, heartbeat_s: float = HEARTBEAT_S) -> Iterator[StoreLock]:
    """Hold the writer lock of ``store`` for the ``with`` block (released on errors and Ctrl-C too).

    Raises
    ------
    StoreLockedError
        Another live run holds it.

    Examples
    --------
    >>> with store_lock("campaign.zarr"):  # doctest: +SKIP
    ...     ...  # write the cube
    """
    if str(os.fspath(store)).startswith(("s3://", "gs://", "az://")):  # TEMPORARY: the `lock` branch locks these
        log.warning("%s: an object store; this build does not lock it (one writer is up to you)", os.fspath(store))
        yield None  # type: ignore[misc]
        return
    lock = StoreLock(store, heartbeat_s=heartbeat_s)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


def one_writer(param: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a function that writes the store named by its argument ``param``: it runs holding the lock."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            store = signature.bind(*args, **kwargs).arguments[param]
            with store_lock(store):
                return fn(*args, **kwargs)
        return locked
    return wrap
