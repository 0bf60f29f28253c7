"""One window of an array with ``time`` first, indexed like the array without it.

A cube or tiling store written over several date windows puts ``time`` first on every
per-cell array (one chunk per window). Code that reads or writes one window at a time
(a unit write, a verify pass, a quicklook) takes :func:`at_window` of an array and indexes
it as it would a cube of one window.

Examples
--------
>>> import numpy as np, zarr
>>> a = zarr.create_array(store={}, shape=(2, 3), chunks=(1, 3), dtype="i1", dimension_names=("time", "sample"))
>>> a[...] = np.arange(6).reshape(2, 3)
>>> at_window(a, 1)[1:].tolist(), at_window(a, None) is a
([4, 5], True)
"""

from __future__ import annotations

from typing import Any

__all__ = ["WindowSlice", "at_window", "has_time"]

#: The dimension of date windows.
TIME_DIM = "time"


def has_time(arr: Any) -> bool:
    """Whether a Zarr array has ``time`` as its first dimension (and more after it).

    Parameters
    ----------
    arr : zarr.Array

    Returns
    -------
    bool
    """
    names = tuple(getattr(arr.metadata, "dimension_names", None) or ())
    return len(names) > 1 and names[0] == TIME_DIM


class WindowSlice:
    """One window of a Zarr array with ``time`` first, indexed (read and written) like an array without it.

    Parameters
    ----------
    arr : zarr.Array
        An array whose first dimension is ``time``.
    window : int
        The position along ``time``.
    """

    def __init__(self, arr: Any, window: int):
        self.arr, self.window = arr, int(window)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.arr.shape[1:])

    @property
    def ndim(self) -> int:
        return int(self.arr.ndim) - 1

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.arr.chunks[1:])

    @property
    def dtype(self) -> Any:
        return self.arr.dtype

    @property
    def metadata(self) -> Any:
        return self.arr.metadata

    def _key(self, key: Any) -> tuple[Any, ...]:
        return (self.window,) + (key if isinstance(key, tuple) else (key,))

    def __getitem__(self, key: Any) -> Any:
        return self.arr[self._key(key)]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.arr[self._key(key)] = value

    def set_orthogonal_selection(self, selection: Any, value: Any) -> None:
        self.arr.set_orthogonal_selection(self._key(selection), value)


def at_window(arr: Any, window: int | None) -> Any:
    """``arr`` at ``window`` when it has ``time`` first (:class:`WindowSlice`), else ``arr`` itself.

    Parameters
    ----------
    arr : zarr.Array
    window : int or None
        The position along ``time``; None: the array as it is.

    Returns
    -------
    WindowSlice or zarr.Array
    """
    return WindowSlice(arr, window) if window is not None and has_time(arr) else arr
