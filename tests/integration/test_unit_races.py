"""No cell is ever ok without its data: two writers of one unit, driven deterministically.

One writer runs in a subprocess (tests/unit_writer.py) and is held inside zarr's LocalStore
at a chosen key (its data written, its status next; or before its vectors) while the other
writes from this process; then it is let go. Every interleaving must end with no ``ok``
cell over missing vectors, and an ``ok`` written with its vectors stays ``ok``.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from rsembed_dask.campaign.tasks import mark_unit_failed
from rsembed_dask.sampling.units import WorkUnit
from rsembed_dask.store.cube import FAILED, OK, PENDING, Cube, open_cube
from rsembed_dask.store.verify import verify_cube

from .test_cube import D, create, make_spec, unit_data

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WRITER = os.path.join(ROOT, "tests", "unit_writer.py")


class Held:
    """A writer subprocess held at its first store write of ``key`` until :meth:`go`."""

    def __init__(self, cube: Cube, action: str, key: str, tmp_path):
        self.flag = str(tmp_path / f"go-{action}")
        env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.p = subprocess.Popen([sys.executable, WRITER, cube.path, action, key, self.flag], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        assert line.startswith("held "), (line, self.p.stderr.read())

    def go(self) -> str:
        open(self.flag, "w").close()
        out, err = self.p.communicate(timeout=120)
        assert self.p.returncode == 0 and "done" in out, err
        return err


def unit(cube):
    return open_cube(cube.path).isel(scale=0, sample=slice(0, 4)).load()


def assert_no_ok_without_data(cube):
    ds = open_cube(cube.path).load()
    ok = ds.status.values == OK
    assert np.isfinite(ds.embedding.values[ok]).all(), "an ok cell stands over missing vectors"


def mark(cube):
    mark_unit_failed(cube, WorkUnit(chunk=0, start=0, stop=4, scale_index=0, scale_m=10.0), "lost its worker 4 times")


@pytest.mark.timeout(180)
def test_marked_failed_while_an_orphaned_write_is_between_its_data_and_its_status(tmp_path):
    """The issue's reproduction: the write's status lands after the failure mark."""
    cube = create(tmp_path / "c.zarr")
    writer = Held(cube, "ok", "status/c/", tmp_path)
    mark(cube)  # the vectors are there: nothing is marked, nothing written over them
    assert (cube.unit_status(0, 0) == PENDING).all()
    writer.go()
    ds = unit(cube)
    assert (ds.status.values == OK).all() and np.isfinite(ds.embedding.values).all()
    np.testing.assert_array_equal(ds.embedding.values[:, 0], [1, 2, 3, 4])
    assert_no_ok_without_data(cube)


@pytest.mark.timeout(180)
def test_marked_failed_before_the_orphaned_write_puts_its_vectors(tmp_path):
    cube = create(tmp_path / "c.zarr")
    writer = Held(cube, "ok", "embedding/c/", tmp_path)
    mark(cube)
    assert (cube.unit_status(0, 0) == FAILED).all()
    writer.go()  # its vectors, then its ok status: an ok with its data
    ds = unit(cube)
    assert (ds.status.values == OK).all() and np.isfinite(ds.embedding.values).all()
    assert_no_ok_without_data(cube)


@pytest.mark.timeout(180)
def test_a_failure_mark_landing_after_the_write_does_not_turn_ok_cells_failed(tmp_path):
    """The other interleaving: the mark read the unit undecided, the write finished, then the mark's
    status write lands."""
    cube = create(tmp_path / "c.zarr")
    marker = Held(cube, "mark", "status/c/", tmp_path)
    data = unit_data(0, 4, 0)
    data["status"][:] = OK
    data["embedding"][-1] = 7.0
    cube.write_unit(0, 4, 0, **data)
    marker.go()
    ds = unit(cube)
    assert (ds.status.values == OK).all() and ds.error.values.tolist() == [""] * 4
    np.testing.assert_array_equal(ds.embedding.values, data["embedding"])
    assert_no_ok_without_data(cube)


@pytest.mark.timeout(180)
def test_a_failed_write_between_an_ok_writes_data_and_status_leaves_the_vectors(tmp_path):
    """Two full writers: the ok one is held before its status; a failed one (a re-run whose fetch
    failed) writes meanwhile. Its failed cells vouch for no data, so it leaves the vectors."""
    cube = create(tmp_path / "c.zarr")
    writer = Held(cube, "ok", "status/c/", tmp_path)
    cube.write_unit(0, 4, 0, embedding=np.full((4, D), np.nan, "float32"), status=np.full(4, FAILED, "int8"),
                    input_res_m=np.full(4, 10.0, "float32"), valid_fraction=np.zeros(4, "float32"),
                    error=["fetch failed"] * 4)
    writer.go()
    ds = unit(cube)
    assert (ds.status.values == OK).all()
    np.testing.assert_array_equal(ds.embedding.values[:, 0], [1, 2, 3, 4])
    assert_no_ok_without_data(cube)


@pytest.mark.timeout(180)
def test_a_failed_write_whose_vectors_land_over_an_ok_one_leaves_no_ok_over_nan(tmp_path):
    """The failed writer read the unit undecided, is held before its first write; the ok writer
    finishes; the failed one's stale vectors land. The ok writer cannot know; the cells end
    failed without data (consistent), never ok over NaN."""
    cube = create(tmp_path / "c.zarr")
    writer = Held(cube, "failed", "input_res_m/c/", tmp_path)
    data = unit_data(0, 4, 0)
    data["status"][:] = OK
    data["embedding"][-1] = 7.0
    cube.write_unit(0, 4, 0, **data)
    writer.go()
    assert_no_ok_without_data(cube)


def test_an_ok_row_that_is_not_finite_is_stored_failed_with_the_reason(tmp_path):
    for dtype in ("float32", "int8"):
        from rsembed_dask.specs import OutputSpec

        cube = create(tmp_path / f"{dtype}.zarr", spec=make_spec(output=OutputSpec.pooled(dtype=dtype)))
        data = unit_data(0, 4, 0)
        data["status"][:] = OK
        data["embedding"][-1] = 7.0
        data["embedding"][1, 2] = np.nan
        data["embedding"][2, 0] = np.inf
        cube.write_unit(0, 4, 0, **data)
        ds = unit(cube)
        assert ds.status.values.tolist() == [OK, FAILED, FAILED, OK], dtype
        assert "not finite" in ds.error.values[1] and "not finite" in ds.error.values[2]
        assert_no_ok_without_data(cube)


@pytest.mark.timeout(180)
def test_a_writer_killed_inside_a_chunk_write_leaves_the_unit_pending_and_readable(tmp_path):
    """zarr >= 3.1.3 writes a LocalStore chunk to a temporary file and renames it: a writer killed
    half-way through its vectors' chunk leaves no torn chunk, and its status unwritten."""
    cube = create(tmp_path / "c.zarr")
    flag = str(tmp_path / "never")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, WRITER, cube.path, "ok", "kill:embedding/c/0/0", flag], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -9 and "killed inside" in r.stdout, r.stderr
    ds = unit(cube)  # every chunk decodes
    assert (ds.status.values == PENDING).all()
    assert not np.isfinite(ds.embedding.values).any()
    assert verify_cube(cube.path) == []
    data = unit_data(0, 4, 0)
    cube.write_unit(0, 4, 0, **data)  # the re-run completes it
    assert cube.unit_status(0, 0).tolist() == [OK, OK, OK, FAILED]
