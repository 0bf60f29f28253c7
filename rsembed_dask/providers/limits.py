"""Earth Engine's limits and quota, named once.

The client (:mod:`~rsembed_dask.providers.gee`), the request planner
(:mod:`~rsembed_dask.providers.coalesce`), the campaign's size check, the cost
estimate (:mod:`rsembed_dask.plan`) and the loopback emulator all read them here.
"""

from __future__ import annotations

__all__ = ["REQUEST_BYTE_LIMIT", "MAX_DIMENSION", "BYTES_PER_SAMPLE", "EE_CONCURRENCY", "EE_REQUESTS_PER_S"]

#: computePixels refuses requests over 48 MiB of uncompressed pixels.
REQUEST_BYTE_LIMIT = 48 * 2**20
#: computePixels also caps either grid dimension.
MAX_DIMENSION = 32768
#: Bytes per pixel per band of the answer (the composite is cast to uint16).
BYTES_PER_SAMPLE = 2
#: Earth Engine's default quota per cloud project: 40 concurrent requests ...
EE_CONCURRENCY = 40
#: ... and 100 requests started per second.
EE_REQUESTS_PER_S = 100
