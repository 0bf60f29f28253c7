"""Digests of a cube's samples, block by block: how a resume knows the samples are the same without reading them.

At creation (and after ``--update``) a cube stores, in its group attributes
(:data:`~rsembed_dask.store.layout.DIGESTS_ATTR`), one BLAKE2b digest of the ids and WKB
geometries of every block of :data:`DIGEST_ROWS` rows. A resume digests the given samples
the same way and compares block by block: it reads the stored ids and geometries only for
blocks whose digest differs (none when nothing changed), instead of all of them (a million
samples: ~800 MiB and many seconds). A cube without digests (written before they existed),
or whose rows are not the given samples in the given order (one that took ``--append``),
is compared whole, as before.

Examples
--------
>>> import numpy as np
>>> rec = digest_record(np.array(["a", "b"], dtype=object), np.array(["0101", "0102"], dtype=object))
>>> differing_blocks(rec, np.array(["a", "b"], dtype=object), np.array(["0101", "0102"], dtype=object))
[]
>>> differing_blocks(rec, np.array(["a", "c"], dtype=object), np.array(["0101", "0102"], dtype=object))
[(0, 2)]
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["DIGEST_ROWS", "block_digests", "digest_record", "differing_blocks"]

#: Rows per digest block.
DIGEST_ROWS = 65_536


def block_digests(ids: Any, geometry: Any, rows: int = DIGEST_ROWS) -> list[str]:
    """Hex BLAKE2b (16 bytes) of each block of ``rows`` ids and WKB-hex geometries."""
    ids = np.asarray(ids)
    geometry = np.asarray(geometry, dtype=object)
    out = []
    for a in range(0, len(ids), rows):
        h = hashlib.blake2b(digest_size=16)
        h.update("\0".join(map(str, ids[a:a + rows].tolist())).encode())
        h.update(b"\1")
        h.update("\0".join(map(str, geometry[a:a + rows].tolist())).encode())
        out.append(h.hexdigest())
    return out


def digest_record(ids: Any, geometry: Any) -> dict[str, Any]:
    """The attribute value stored for samples ``ids``/``geometry`` at rows ``0..n``."""
    return {"rows": DIGEST_ROWS, "blake2b": block_digests(ids, geometry, DIGEST_ROWS)}


def differing_blocks(record: Any, ids: Any, geometry: Any) -> list[tuple[int, int]] | None:
    """``[(start, stop), ...]`` rows whose stored digest differs from the given samples' at the same rows.

    None when ``record`` cannot be used (absent, malformed, or for another number of rows):
    then the samples must be compared whole.
    """
    if not isinstance(record, Mapping) or not isinstance(record.get("blake2b"), list):
        return None
    rows = record.get("rows")
    stored = record["blake2b"]
    n = len(ids)
    if not isinstance(rows, int) or rows <= 0 or len(stored) != -(-n // rows):
        return None
    given = block_digests(ids, geometry, rows)
    return [(k * rows, min((k + 1) * rows, n)) for k, (a, b) in enumerate(zip(stored, given)) if a != b]
