"""Validation helpers and the spec base class (JSON round trip, stable Dask tokens).

The concrete specs live in :mod:`rsembed_dask.specs`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import numbers
import typing
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from .errors import SpecError

__all__ = ["number", "integer", "strict_int", "choice", "iso_date", "set_field", "SpecBase"]


def number(name: str, value: Any, *, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, allowed: str | None = None) -> float:
    """Return ``value`` as a finite float within bounds, or raise SpecError."""
    what = allowed or _range_words(lo, hi, lo_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SpecError(name, value, what)
    v = float(value)
    if not math.isfinite(v):
        raise SpecError(name, value, what)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise SpecError(name, value, what)
    if hi is not None and v > hi:
        raise SpecError(name, value, what)
    return v


def _range_words(lo: float | None, hi: float | None, lo_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    if lo is not None:
        return f"a finite number {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"a finite number <= {hi:g}"
    return "a finite number"


def integer(name: str, value: Any, *, lo: int, hi: int | None = None) -> int:
    allowed = f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")
    if isinstance(value, bool):
        raise SpecError(name, value, allowed)
    try:
        iv = int(value)
    except (TypeError, ValueError):
        raise SpecError(name, value, allowed) from None
    if iv != value or iv < lo or (hi is not None and iv > hi):
        raise SpecError(name, value, allowed)
    return iv


def strict_int(name: str, value: Any, *, lo: int = 1) -> int:
    """Return ``value`` as int when it is an integer (``numbers.Integral``: not a bool, not a
    float, not a string) >= ``lo``, or raise SpecError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise SpecError(name, value, f"an integer >= {lo}")
    return int(value)


def choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SpecError(name, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


def iso_date(name: str, value: Any) -> str:
    """Normalise a date-like value to ``YYYY-MM-DD``."""
    allowed = "a date as 'YYYY-MM-DD', datetime.date or datetime.datetime"
    if isinstance(value, _dt.datetime):
        return value.date().isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return _dt.date.fromisoformat(value.strip()[:10]).isoformat()
        except ValueError:
            raise SpecError(name, value, allowed) from None
    raise SpecError(name, value, allowed)


def set_field(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


class SpecBase:
    """Mixin: JSON round-trip and a stable Dask token for frozen dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, SpecBase):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = [x.to_dict() if isinstance(x, SpecBase) else x for x in v]
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        if not isinstance(data, Mapping):
            raise SpecError(cls.__name__, data, "a mapping of field names to values")
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise SpecError(f"{cls.__name__}.{unknown[0]}", data[unknown[0]],
                            "one of the fields " + ", ".join(sorted(names)))
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for k, v in data.items():
            t = hints.get(k)
            if isinstance(t, type) and issubclass(t, SpecBase) and isinstance(v, Mapping):
                v = t.from_dict(v)
            kwargs[k] = v
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

    def __dask_tokenize__(self):
        return (type(self).__qualname__, self.to_json())

    def replace(self, **changes):
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
