"""Thread-safe integer counters as dataclass fields (request accounts, emulator stats)."""

from __future__ import annotations

import threading
from dataclasses import Field, fields
from typing import Any

__all__ = ["Counters"]


class Counters:
    """Mixin for a dataclass of ``int`` fields: locked ``add``, ``as_dict``, ``reset``, pickling.

    Fields whose name starts with ``_`` are internal: left out of ``as_dict``.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Hits(Counters):
    ...     ok: int = 0
    >>> h = Hits(); h.add(ok=2); h.as_dict()
    {'ok': 2}
    """

    def __post_init__(self):
        self._lock = threading.Lock()

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)
            self._after_add()

    def _after_add(self) -> None:
        """Hook run under the lock after each ``add``."""

    def _fields(self) -> tuple[Field[Any], ...]:
        return fields(self)  # type: ignore[arg-type]  # a mixin: every user is a dataclass

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in self._fields() if not f.name.startswith("_")}

    def reset(self) -> None:
        with self._lock:
            for f in self._fields():
                setattr(self, f.name, 0)

    def __getstate__(self) -> dict[str, int]:
        return self.as_dict()

    def __setstate__(self, state: dict[str, int]) -> None:
        type(self).__init__(self, **state)
