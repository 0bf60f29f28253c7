"""The store's names and codes, each defined once in ``store/layout.py``, and the zone grids'
georeferencing from library primitives (``pyproj.CRS.to_cf``, ``affine.Affine``)."""

from __future__ import annotations

import numpy as np
from affine import Affine
from pyproj import CRS

from rsembed_dask.store import layout
from rsembed_dask.store.tiling import grid_mapping


def test_attribute_names_are_distinct():
    names = {k: v for k, v in vars(layout).items() if k.endswith("_ATTR")}
    assert len(set(names.values())) == len(names), names


def test_status_codes_and_names_agree():
    codes = [layout.PENDING, layout.OK, layout.NO_DATA, layout.FAILED]
    assert codes == list(range(len(layout.STATUS_NAMES)))
    assert layout.FLAG_ATTRS["flag_values"] == codes
    assert layout.FLAG_ATTRS["flag_meanings"].split() == list(layout.STATUS_NAMES)


def test_count_statuses_counts_per_scale_and_ignores_other_codes():
    status = np.array([[layout.OK, layout.PENDING], [layout.OK, layout.FAILED],
                       [layout.NO_DATA, layout.NO_TILE]], dtype="int8")
    assert layout.count_statuses(status).tolist() == [[0, 2, 1, 0], [1, 0, 0, 1]]


def test_zone_grid_mapping_is_complete_cf_and_round_trips():
    transform = Affine(2240.0, 0.0, 448000.0, 0.0, -2240.0, 3472640.0)
    attrs = grid_mapping(32631, transform)
    assert attrs["grid_mapping_name"] == "transverse_mercator"
    assert CRS.from_cf(attrs) == CRS.from_epsg(32631)
    assert attrs["spatial_ref"] == attrs["crs_wkt"]
    assert Affine.from_gdal(*map(float, attrs["GeoTransform"].split())) == transform
    # the string GDAL and rioxarray read, as grids written before the move have it
    assert attrs["GeoTransform"] == "448000.0 2240.0 0.0 3472640.0 0.0 -2240.0"
