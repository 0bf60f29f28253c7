"""Which samples a cube holds against those given: moved, new and missing ids.

A sample campaign that reopens its cube compares, id by id, the samples given with
those stored (the ``sample`` ids and their ``geometry``):

- same id, same geometry: resumed as before;
- same id, another geometry (a corrected coordinate): *moved*, refused unless
  ``update=True`` (then its cells are reset to pending and re-embedded);
- id not in the cube: *new*, refused unless ``append=True`` (then appended as new chunks);
- id in the cube but not given: *missing*, kept (never deleted) and reported.

Geometries are the same when both are points or both are not, and their discrete
Hausdorff distance in degrees (EPSG:4326) is at most :data:`GEOMETRY_TOLERANCE_DEG`:
float noise from reprojection or re-export, a changed ring start or orientation, or a
Polygon saved as a one-part MultiPolygon are not moves.

:func:`table_in_cube_rows` then lays the campaign's sample table out row for row like
the cube (which may hold padding rows, moved samples in their old place and appended
chunks), so that ``table.slice(unit.start, unit.stop)`` is the unit's samples.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CubeError

logger = logging.getLogger(__name__)

__all__ = ["GEOMETRY_TOLERANCE_DEG", "SampleChanges", "compare_samples", "same_geometry",
           "describe_ids", "table_in_cube_rows"]

#: Largest vertex displacement (degrees, ~1.1 cm at the equator, far below a 10 m pixel)
#: under which a stored geometry and a given one are the same sample geometry.
GEOMETRY_TOLERANCE_DEG = 1e-7
#: Ids named in messages (then "and N more").
MAX_LISTED_IDS = 5


@dataclass
class SampleChanges:
    """Given samples against a cube's stored ones.

    Attributes
    ----------
    rows : int64 array
        Cube row of each given sample, in the order given; -1 for new ones (until appended).
    moved : int64 array
        Indices (into the given samples) of ids stored with another geometry.
    new : int64 array
        Indices (into the given samples) of ids the cube does not hold.
    missing_rows : int64 array
        Cube rows of stored samples that were not given.
    """

    rows: np.ndarray
    moved: np.ndarray
    new: np.ndarray
    missing_rows: np.ndarray

    @classmethod
    def identity(cls, n: int) -> SampleChanges:
        """A fresh cube: given sample ``i`` is row ``i``; nothing moved, new or missing."""
        empty = np.zeros(0, np.int64)
        return cls(np.arange(n, dtype=np.int64), empty, empty, empty)


def describe_ids(ids: Sequence[Any]) -> str:
    """``"['a', 'b'] and 3 more"``: the first ids and how many others."""
    ids = list(ids)
    listed = [v.item() if isinstance(v, np.generic) else v for v in ids[:MAX_LISTED_IDS]]
    more = f" and {len(ids) - MAX_LISTED_IDS} more" if len(ids) > MAX_LISTED_IDS else ""
    return f"{listed}{more}"


def same_geometry(stored_hex: Sequence[str] | np.ndarray, given_hex: Sequence[str] | np.ndarray,
                  tolerance: float = GEOMETRY_TOLERANCE_DEG) -> np.ndarray:
    """Whether each pair of WKB hex geometries is the same sample geometry (see module doc)."""
    import shapely

    a = np.asarray(list(stored_hex), dtype=object)
    b = np.asarray(list(given_hex), dtype=object)
    out = a == b
    todo = np.flatnonzero(~out & (a != "") & (b != ""))
    if len(todo):
        ga, gb = shapely.from_wkb(a[todo]), shapely.from_wkb(b[todo])
        kind = (shapely.get_type_id(ga) == 0) == (shapely.get_type_id(gb) == 0)
        out[todo] = kind & (shapely.hausdorff_distance(ga, gb) <= tolerance)
    return out


def compare_samples(stored_ids: np.ndarray, stored_geometry: np.ndarray, stored_rows: np.ndarray,
                    given: dict[str, Any], path: str) -> SampleChanges:
    """Compare given samples (:func:`~rsembed_dask.store.layout.check_inputs` output) with stored ones.

    Parameters
    ----------
    stored_ids, stored_geometry : array
        Ids and WKB hex geometries of the cube's samples, at ``stored_rows``.
    stored_rows : int64 array
        Their rows in the cube's arrays.
    given : dict
        ``sample`` (ids), ``id_dtype`` and ``geometry`` (WKB hex) of the given samples.
    path : str
        The cube, for messages.

    Raises
    ------
    CubeError
        Stored and given ids are not of one kind (integers against strings).
    """
    import pandas as pd

    stored_int = np.asarray(stored_ids).dtype.kind in "iu"
    given_int = given["id_dtype"] != str
    if stored_int != given_int:
        kinds = {True: "integers", False: "strings"}
        raise CubeError(f"cube {path!r} holds sample ids that are {kinds[stored_int]}, given "
                        f"{kinds[given_int]} (first given: {given['sample'][0]!r}): ids must match "
                        "the stored ones (check --id-column / id_column)")
    stored = np.asarray(stored_ids, dtype=np.int64 if stored_int else object)
    if not stored_int:
        stored = np.array([str(v) for v in stored.tolist()], dtype=object)
    ids = given["sample"]
    if stored.shape == ids.shape and np.array_equal(stored, ids):
        pos = np.arange(len(ids), dtype=np.int64)  # the usual resume: same ids, same order
    else:
        pos = pd.Index(stored).get_indexer(pd.Index(ids)).astype(np.int64)
    matched = np.flatnonzero(pos >= 0)
    rows = np.full(len(ids), -1, np.int64)
    rows[matched] = stored_rows[pos[matched]]
    same = same_geometry(np.asarray(stored_geometry, dtype=object)[pos[matched]],
                         given["geometry"][matched])
    not_given = np.ones(len(stored), bool)
    not_given[pos[matched]] = False
    return SampleChanges(rows=rows, moved=matched[~same].astype(np.int64),
                         new=np.flatnonzero(pos < 0).astype(np.int64),
                         missing_rows=np.asarray(stored_rows, np.int64)[not_given])


def table_in_cube_rows(table, cube) -> tuple[Any, np.ndarray]:
    """The sample table laid out like the cube's rows, and which rows were given.

    Parameters
    ----------
    table : SampleTable
        The samples given to :meth:`Cube.create_or_open` (same order).
    cube : Cube
        Opened with those samples (``cube.last_changes`` set).

    Returns
    -------
    table : SampleTable
        ``cube.n_rows`` rows: row ``r`` is the sample at cube row ``r``. Stored samples
        not given but sharing a unit with given ones are rebuilt from their stored
        geometry (a unit runs as a whole). Other rows (padding, units made only of
        samples not given) repeat row 0: no unit covers them.
    given : bool array
        ``cube.n_rows`` flags: the cube row holds a given sample.
    """
    changes = cube.last_changes
    n_rows, cs = cube.n_rows, cube.chunk_size
    if changes is None or len(changes.rows) != len(table) or (changes.rows < 0).any():
        raise CubeError("table_in_cube_rows: the cube was not opened with this table's samples")
    if n_rows == len(table) and np.array_equal(changes.rows, np.arange(n_rows)):
        return table, np.ones(n_rows, bool)
    source = np.full(n_rows, -1, np.int64)
    source[changes.rows] = np.arange(len(table))
    given = source >= 0
    shared = np.isin(changes.missing_rows // cs, np.unique(changes.rows // cs))
    extra_rows = changes.missing_rows[shared]
    if len(extra_rows):
        source[extra_rows] = len(table) + np.arange(len(extra_rows))
        table = table.extend(cube.stored_table(extra_rows))
        logger.info("%d samples not given share units with given ones: run from their stored geometry",
                    len(extra_rows))
    source[source < 0] = 0
    return table.take(source), given
