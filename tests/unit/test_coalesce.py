"""Request coalescing: the planning maths, and one request per neighbourhood through the real ee client."""


import numpy as np
import pytest

from rsembed_dask.errors import SpecError
from rsembed_dask.geo.grid import PixelGrid
from rsembed_dask.providers.base import Patch
from rsembed_dask.providers.coalesce import MAX_WASTE, CoalescedRequest, plan_requests
from rsembed_dask.providers.limits import BYTES_PER_SAMPLE, MAX_DIMENSION, REQUEST_BYTE_LIMIT
from rsembed_dask.specs import TemporalSpec


CRS = "EPSG:32631"
X0, Y0 = 500000.0, 3450000.0
WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")


def _tile(r: int, c: int, size: int = 224, scale: float = 10.0, crs: str = CRS) -> PixelGrid:
    """Footprint ``(r, c)`` of a lattice of touching ``size`` px tiles."""
    return PixelGrid(crs, X0 + c * size * scale, Y0 - r * size * scale, scale, size, size)


def _check_plan(plan: list[CoalescedRequest], grids, n_bands=3, byte_limit=REQUEST_BYTE_LIMIT,
                max_side=MAX_DIMENSION, max_waste=MAX_WASTE) -> None:
    """The invariants of every plan."""
    seen = sorted(i for r in plan for i in r.members)
    assert seen == list(range(len(grids))), "every index exactly once"
    assert [r.members[0] for r in plan] == sorted(r.members[0] for r in plan), "ordered by first member"
    for r in plan:
        assert list(r.members) == sorted(r.members)
        members = [grids[i] for i in r.members]
        assert r.grid == PixelGrid.union(members), "the request is exactly the union"
        for g in members:
            row, col = r.grid.offset_of(g)  # same CRS, lattice, inside
            assert r.grid.crop(row, col, g.height, g.width) == g
        if len(members) > 1:
            assert r.grid.nbytes(n_bands, BYTES_PER_SAMPLE) <= byte_limit
            assert max(r.grid.shape) <= max_side
            assert r.grid.width * r.grid.height <= max_waste * sum(g.width * g.height for g in members)


def test_adjacent_block_is_one_request_of_exactly_the_union():
    grids = [_tile(r, c) for r in range(8) for c in range(8)]
    plan = plan_requests(grids, 3)
    assert len(plan) == 1
    assert plan[0].members == tuple(range(64))
    assert plan[0].grid == PixelGrid(CRS, X0, Y0, 10.0, 8 * 224, 8 * 224)
    _check_plan(plan, grids)


def test_block_over_48_mib_is_split_under_the_limit():
    grids = [_tile(r, c) for r in range(16) for c in range(16)]
    assert PixelGrid.union(grids).nbytes(3, BYTES_PER_SAMPLE) == 3584 * 3584 * 3 * 2 > REQUEST_BYTE_LIMIT
    plan = plan_requests(grids, 3)
    _check_plan(plan, grids)
    # one median split of the square gives two 8 x 16 tile halves of 38.5 MB each
    assert len(plan) == 2
    assert sorted(r.grid.shape for r in plan) == [(3584, 1792), (3584, 1792)]
    # more bands, more requests; still every member once and each request under the limit
    plan12 = plan_requests(grids, 12)
    _check_plan(plan12, grids, n_bands=12)
    assert len(plan12) > len(plan)


def test_side_limit_splits_a_long_row():
    grids = [_tile(0, c, size=100) for c in range(10)]  # a 1000 px strip
    plan = plan_requests(grids, 1, max_side=300)
    _check_plan(plan, grids, n_bands=1, max_side=300)
    assert len(plan) >= 4 and all(r.grid.width <= 300 for r in plan)


def test_far_apart_footprints_are_one_request_each():
    grids = [_tile(0, 0), _tile(0, 10), _tile(10, 0), _tile(10, 10)]  # 20 km apart
    plan = plan_requests(grids, 3)
    assert [r.members for r in plan] == [(0,), (1,), (2,), (3,)]
    assert [r.grid for r in plan] == grids
    # one tile gap: the union of two is 3 tiles for 2 tiles' pixels (1.5 <= 2): one request
    pair = [_tile(0, 0), _tile(0, 2)]
    assert [r.members for r in plan_requests(pair, 3)] == [(0, 1)]
    # ... and the waste limit decides
    assert [r.members for r in plan_requests(pair, 3, max_waste=1.4)] == [(0,), (1,)]


def test_crs_scale_and_lattice_phase_are_never_mixed():
    a, b = _tile(0, 0), _tile(0, 1)
    other_zone = [_tile(0, 0, crs="EPSG:32632"), _tile(0, 1, crs="EPSG:32632")]
    coarser = PixelGrid(CRS, X0, Y0, 20.0, 112, 112)  # same ground, another pixel size
    shifted = PixelGrid(CRS, X0 + 5.0, Y0, 10.0, 224, 224)  # half a pixel off the lattice
    grids = [a, other_zone[0], b, other_zone[1], coarser, shifted]
    plan = plan_requests(grids, 3)
    assert [r.members for r in plan] == [(0, 2), (1, 3), (4,), (5,)]
    _check_plan(plan, grids)


def test_duplicates_and_overlaps_are_one_request():
    a = _tile(3, 3)
    dup = plan_requests([a, a, a], 3)
    assert len(dup) == 1 and dup[0].grid == a and dup[0].members == (0, 1, 2)
    # chips every 50 px along a row overlap heavily: one request smaller than the sum
    over = [PixelGrid(CRS, X0 + 500.0 * k, Y0, 10.0, 224, 224) for k in range(10)]
    plan = plan_requests(over, 3)
    assert len(plan) == 1 and plan[0].grid.shape == (224, 224 + 9 * 50)
    _check_plan(plan, over)


def test_single_footprints_are_not_refused_here():
    huge = PixelGrid(CRS, X0, Y0, 10.0, 40000, 40000)
    plan = plan_requests([huge, _tile(0, 0)], 3)
    assert [r.members for r in plan] == [(0,), (1,)] and plan[0].grid == huge
    assert plan_requests([], 3) == []


def test_plans_hold_for_random_layouts():
    rng = np.random.default_rng(1234)
    for trial in range(300):
        n = int(rng.integers(1, 70))
        scale = float(rng.choice([10.0, 20.0]))
        spread = int(rng.choice([300, 3000, 30000]))  # pixels: dense to sparse
        grids = []
        for _ in range(n):
            size = int(rng.choice([32, 224, 224, 500]))
            col, row = rng.integers(0, spread, 2)
            crs = str(rng.choice(["EPSG:32631", "EPSG:32631", "EPSG:32632"]))
            grids.append(PixelGrid(crs, X0 + col * scale, Y0 - row * scale, scale, size, size))
        if n > 3 and trial % 3 == 0:
            grids[-1] = grids[0]  # a duplicate
        limit = int(rng.choice([REQUEST_BYTE_LIMIT, 2 * 600 * 600 * 3]))
        side = int(rng.choice([MAX_DIMENSION, 1000]))
        waste = float(rng.choice([1.0, MAX_WASTE, 8.0]))
        plan = plan_requests(grids, 3, byte_limit=limit, max_side=side, max_waste=waste)
        _check_plan(plan, grids, byte_limit=limit, max_side=side, max_waste=waste)
        assert plan == plan_requests(grids, 3, byte_limit=limit, max_side=side, max_waste=waste)


def test_members_crop_back_to_their_own_pixels():
    def world(g: PixelGrid) -> np.ndarray:
        """Values that depend only on the lattice pixel, so any grid can be rendered directly."""
        cols = np.round((g.x0 - X0) / g.scale_m).astype(int) + np.arange(g.width)
        rows = np.round((Y0 - g.y0) / g.scale_m).astype(int) + np.arange(g.height)
        v = (rows[:, None] * 7919 + cols[None, :] * 104729) % 65521
        return np.stack([v, v // 2, v // 3]).astype(np.uint16)

    rng = np.random.default_rng(7)
    grids = [PixelGrid(CRS, X0 + int(c) * 10.0, Y0 - int(r) * 10.0, 10.0, 64, 64)
             for r, c in rng.integers(0, 200, (12, 2))]
    plan = plan_requests(grids, 3)
    assert len(plan) < len(grids)
    for req in plan:
        big = Patch(world(req.grid), np.ones(req.grid.shape, bool), req.grid, ("B4", "B3", "B2"))
        for i in req.members:
            crop = big.crop_to(grids[i])
            assert crop.grid == grids[i]
            np.testing.assert_array_equal(crop.data, world(grids[i]))


@pytest.mark.parametrize("kwargs", [{"n_bands": 0}, {"n_bands": 2.5}, {"n_bands": True},
                                    {"n_bands": 3, "max_waste": 0.5}, {"n_bands": 3, "max_waste": float("nan")},
                                    {"n_bands": 3, "byte_limit": 0}, {"n_bands": 3, "max_side": -1}])
def test_bad_arguments_name_the_field(kwargs):
    with pytest.raises(SpecError) as info:
        plan_requests([_tile(0, 0)], **kwargs)
    field = next(k for k in kwargs if k != "n_bands") if len(kwargs) > 1 else "n_bands"
    assert info.value.field == field


def test_non_grids_are_refused():
    with pytest.raises(SpecError, match=r"grids\[1\]"):
        plan_requests([_tile(0, 0), (0, 0, 1, 1)], 3)
