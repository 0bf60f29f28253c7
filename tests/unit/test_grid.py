"""UTM grids: zone choice, snapping, true ground spacing, sub-grids."""

import numpy as np
import pytest
from pyproj import Geod

from rsembed_dask.errors import SpecError
from rsembed_dask.geo.grid import PixelGrid, bbox_grid, point_grid, utm_epsg, xy_to_lonlat


@pytest.mark.parametrize("lon, lat, epsg", [(3.0, 31.2, 32631), (5.99, 50, 32631), (6.01, 50, 32632),
                                            (-73.9, 40.7, 32618), (151.2, -33.9, 32756),
                                            (180.0, 0.0, 32660), (-180.0, 10.0, 32601)])
def test_utm_zone(lon, lat, epsg):
    assert utm_epsg(lon, lat) == epsg


def test_polar_latitudes_are_refused():
    with pytest.raises(SpecError, match="lat=85"):
        utm_epsg(0, 85)


@pytest.mark.parametrize("lat", [31.2, 60.0])
def test_point_grid_pixels_are_true_ground_metres(lat):
    g = point_grid(3.0, lat, buffer_m=1120, scale_m=10)
    assert (g.width, g.height) == (224, 224)
    assert g.x0 % 10 == 0 and g.y0 % 10 == 0
    # Geodesic distance across the grid's width is 2240 m at any latitude
    # (a Web-Mercator "10 m" grid would cover 2240*cos(lat) m).
    left, bottom, right, top = g.bounds
    cy = (bottom + top) / 2
    lon0, lat0 = xy_to_lonlat(left, cy, g.crs)
    lon1, lat1 = xy_to_lonlat(right, cy, g.crs)
    _, _, dist = Geod(ellps="WGS84").inv(lon0, lat0, lon1, lat1)
    assert dist == pytest.approx(2240, rel=2e-3)


def test_neighbouring_points_share_a_lattice_and_union_covers_them():
    a = point_grid(3.0, 31.2, 320, 10)
    b = point_grid(3.004, 31.203, 320, 10)
    u = PixelGrid.union([a, b])
    ra, ca = u.offset_of(a)
    rb, cb = u.offset_of(b)
    assert u.crop(ra, ca, a.height, a.width) == a
    assert u.crop(rb, cb, b.height, b.width) == b
    assert u.width < a.width + b.width


def test_offset_of_refuses_other_lattice():
    a = point_grid(3.0, 31.2, 320, 10)
    shifted = PixelGrid(a.crs, a.x0 + 5, a.y0, 10, 4, 4)
    with pytest.raises(SpecError, match="lattice"):
        a.offset_of(shifted)


def test_bbox_grid_covers_box():
    g = bbox_grid(3.0, 31.0, 3.05, 31.04, 20)
    assert g.crs == "EPSG:32631"
    left, bottom, right, top = g.bounds
    xs = np.array([left, right]); ys = np.array([bottom, top])
    lons, lats = xy_to_lonlat(xs, ys, g.crs)
    assert lons[0] <= 3.0 and lons[1] >= 3.05 and lats[0] <= 31.0 and lats[1] >= 31.04
