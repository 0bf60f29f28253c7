"""Cube: Zarr v3 layout, unit writes, resume, spec checks, xarray reading, pickling."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from collections import namedtuple
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import shapely
import xarray as xr

from rsembed_dask.store.cube import (
    FAILED,
    NO_DATA,
    OK,
    PENDING,
    Cube,
    nearest_sample,
    open_cube,
)
from rsembed_dask.errors import CubeError, SpecError, SpecMismatchError
from rsembed_dask.specs import CampaignSpec, ModelSpec, OutputSpec, SensorSpec, TemporalSpec

Unit = namedtuple("Unit", "start scale_index")

N = 10  # chunks of 4: [0,4) [4,8) [8,10) (last one partial)
D = 6
CHUNK = 4
SCALES = (10.0, 20.0)


def make_spec(**over) -> CampaignSpec:
    kw = dict(temporal=TemporalSpec.year(2022), model=ModelSpec(model_id="test-tiny", image_size=32),
              scales=SCALES, chunk_size=CHUNK)
    kw.update(over)
    return CampaignSpec(**kw)


def samples(n: int = N, int_ids: bool = False) -> dict:
    lon = np.linspace(2.0, 3.0, n)
    lat = np.linspace(30.0, 31.0, n)
    ids = np.arange(100, 100 + n) if int_ids else [f"id-{i}" for i in range(n)]
    wkb = [shapely.Point(x, y).buffer(0.01).wkb for x, y in zip(lon, lat)]
    return dict(ids=ids, lon=lon, lat=lat, geohash=[f"gh{i:03d}" for i in range(n)], wkb=wkb)


def unit_data(start: int, stop: int, si: int, d: int = D, grid_shape=None) -> dict:
    n = stop - start
    rows = np.arange(start, stop, dtype="float32")[:, None]
    emb = rows * 100 + si * 10 + np.arange(d, dtype="float32")[None, :]
    status = np.full(n, OK, dtype="int8")
    err = [""] * n
    if n > 1:
        status[-1] = FAILED
        err[-1] = f"boom at {start + n - 1}/{si} " + "x" * 300  # truncated to 200 chars
        emb[-1] = np.nan
    out = dict(embedding=emb, status=status, input_res_m=np.full(n, SCALES[si], "float32"),
               valid_fraction=np.linspace(0.5, 1.0, n).astype("float32"), error=err)
    if grid_shape is not None:
        out["grid"] = emb[:, :, None, None] + np.zeros((1, 1, *grid_shape), "float32")
    return out


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def create(path, spec=None, **over) -> Cube:
    kw = dict(samples(), embed_dim=D, versions={"torch": "0.0-test"})
    kw.update(over)
    return Cube.create_or_open(path, spec=spec or make_spec(), **kw)


def all_units(cube: Cube) -> list:
    return [Unit(s, si) for s in range(0, cube.n_samples, cube.chunk_size) for si in range(cube.n_scales)]


def test_create_write_and_read_back(tmp_path):
    path = tmp_path / "c.zarr"
    cube = create(path)
    assert cube.status_counts() == {"pending": N * 2, "ok": 0, "no_data": 0, "failed": 0}
    written = [(0, 4, 1), (8, 10, 0), (8, 10, 1)]
    for start, stop, si in written:
        cube.write_unit(start, stop, si, **unit_data(start, stop, si))

    ds = open_cube(path)
    assert ds.embedding.dims == ("sample", "scale", "feature")
    assert ds.status.dims == ("sample", "scale")
    assert ds.embedding.dtype == np.float32 and ds.status.dtype == np.int8
    assert ds.input_res_m.dtype == np.float32 and ds.valid_fraction.dtype == np.float32
    assert ds.embedding.chunks == ((4, 4, 2), (1, 1), (D,))
    assert ds.embedding.data.__class__.__module__.startswith("dask")
    assert "grid" not in ds
    for c in ("lon", "lat", "geohash", "geometry"):
        assert ds[c].dims == ("sample",) and c in ds.coords
    assert ds.lon.dtype == np.float64 and ds.lat.dtype == np.float64
    assert ds.scale.dtype == np.float64 and ds.scale.values.tolist() == list(SCALES)
    assert ds.feature.values.tolist() == list(range(D))
    assert ds.sample.values.tolist() == [f"id-{i}" for i in range(N)]
    assert ds.status.attrs["flag_values"] == [0, 1, 2, 3]
    assert ds.status.attrs["flag_meanings"] == "pending ok no_data failed"

    # attrs: spec JSON string, hash, versions, marker
    spec = make_spec()
    assert isinstance(ds.attrs["campaign_spec"], str)
    assert CampaignSpec.from_json(ds.attrs["campaign_spec"]) == spec
    assert ds.attrs["spec_hash"] == spec.spec_hash()
    assert ds.attrs["versions"]["torch"] == "0.0-test"
    assert ds.attrs["rsembed_dask_cube_version"] == 1 and ds.attrs["created"]

    # values, by scale and id
    st = ds.status.values
    assert (st[0:3, 1] == OK).all() and st[3, 1] == FAILED
    assert (st[0:4, 0] == PENDING).all() and (st[4:8] == PENDING).all()
    assert st[8, 0] == OK and st[9, 0] == FAILED
    v = ds.embedding.sel(scale=20, sample="id-2").values
    np.testing.assert_array_equal(v, 200 + 10 + np.arange(D, dtype="float32"))
    assert ds.sel(scale=20.0).embedding.shape == (N, D)
    assert np.isnan(ds.embedding.sel(sample="id-5").values).all()  # never written
    assert np.isnan(ds.embedding.sel(sample="id-3", scale=20).values).all()  # failed row
    np.testing.assert_allclose(ds.input_res_m.sel(scale=20).values[:4], 20.0)

    # strings round-trip as str
    err = ds.error.sel(scale=10.0, sample="id-9").values.item()
    assert isinstance(err, str) and err.startswith("boom at 9/0 xxx") and len(err) == 200
    assert ds.error.sel(scale=10.0, sample="id-8").values.item() == ""
    assert ds.geohash.sel(sample="id-7").values.item() == "gh007"

    # geometry is WKB (hex) that shapely reads back
    geom = shapely.from_wkb(ds.geometry.values)
    assert geom[4].equals_exact(shapely.Point(ds.lon.values[4], ds.lat.values[4]).buffer(0.01), 1e-12)

    # nearest lookup
    assert nearest_sample(ds, 2.0 + 5 / 9 + 0.001, 30.0 + 5 / 9) == "id-5"
    assert nearest_sample(ds, -120, -40) in ("id-0", "id-9")


def test_int_ids_and_cube_open(tmp_path):
    path = tmp_path / "ints.zarr"
    create(path, **samples(int_ids=True))
    cube = Cube.open(path)
    assert (cube.n_samples, cube.embed_dim, cube.grid_shape, cube.n_units) == (N, D, None, 6)
    assert cube.spec == make_spec()
    cube.write_unit(4, 8, 0, **unit_data(4, 8, 0))
    ds = open_cube(path)
    assert ds.sample.dtype == np.int64
    assert ds.status.sel(sample=104, scale=10).values.item() == OK
    assert nearest_sample(ds, 3.0, 31.0) == 109
    assert cube.unit_status(4, 0).tolist() == [OK, OK, OK, FAILED]
    assert cube.unit_status(8, 1).tolist() == [PENDING, PENDING]


def test_grid_mode(tmp_path):
    path = tmp_path / "g.zarr"
    spec = make_spec(output=OutputSpec.grid())
    with pytest.raises(SpecError, match="grid_shape"):
        create(path, spec=spec)
    cube = create(path, spec=spec, grid_shape=(2, 3))
    cube.write_unit(8, 10, 1, **unit_data(8, 10, 1, grid_shape=(2, 3)))
    ds = open_cube(path)
    assert ds.grid.dims == ("sample", "scale", "feature", "gy", "gx")
    assert ds.grid.dtype == np.float32 and ds.grid.shape == (N, 2, D, 2, 3)
    assert ds.grid.chunks == ((4, 4, 2), (1, 1), (D,), (2,), (3,))
    g = ds.grid.sel(sample="id-8", scale=20).values
    np.testing.assert_array_equal(g[:, 1, 2], ds.embedding.sel(sample="id-8", scale=20).values)
    assert np.isnan(ds.grid.sel(sample="id-0").values).all()
    # pooled cube refuses grids
    pooled = create(tmp_path / "p.zarr")
    with pytest.raises(CubeError, match="pooled"):
        pooled.write_unit(0, 4, 0, **unit_data(0, 4, 0, grid_shape=(2, 3)))


def test_refuse_non_chunk_writes_and_bad_shapes(tmp_path):
    cube = create(tmp_path / "c.zarr")
    for start, stop in ((1, 5), (0, 3), (0, 8), (8, 12), (12, 14), (-4, 0)):
        with pytest.raises(CubeError, match="chunk"):
            cube.write_unit(start, stop, 0, **unit_data(0, 4, 0))
    with pytest.raises(CubeError, match="scale_index"):
        cube.write_unit(0, 4, 2, **unit_data(0, 4, 0))
    bad = unit_data(0, 4, 0)
    bad["embedding"] = bad["embedding"][:, :3]
    with pytest.raises(CubeError, match="embedding"):
        cube.write_unit(0, 4, 0, **bad)
    bad = unit_data(0, 4, 0)
    bad["status"] = np.array([0, 1, 2, 7])
    with pytest.raises(CubeError, match="status"):
        cube.write_unit(0, 4, 0, **bad)
    assert cube.status_counts()["pending"] == N * 2  # nothing was written


def test_path_is_file_or_foreign_dir(tmp_path):
    f = tmp_path / "afile"
    f.write_text("hello")
    with pytest.raises(CubeError, match="afile"):
        create(f)
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.txt").write_text("x")
    with pytest.raises(CubeError, match="not an rsembed_dask cube"):
        create(other)
    with pytest.raises(CubeError, match="missing"):
        open_cube(tmp_path / "missing")
    with pytest.raises(CubeError, match="missing"):
        Cube.open(tmp_path / "missing")
    # an empty directory is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    assert create(empty).n_samples == N


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_not_writable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(CubeError, match="not writable"):
            create(ro / "c.zarr")
    finally:
        ro.chmod(0o700)


def test_bad_inputs(tmp_path):
    s = samples()
    s["ids"] = ["a", "b", "a"] + [f"x{i}" for i in range(N - 3)]
    with pytest.raises(SpecError, match="unique"):
        create(tmp_path / "c.zarr", **s)
    s = samples()
    s["lat"] = s["lat"][:-1]
    with pytest.raises(SpecError, match="lat"):
        create(tmp_path / "c.zarr", **s)


def test_spec_mismatch_names_fields(tmp_path, caplog):
    path = tmp_path / "c.zarr"
    create(path).write_unit(0, 4, 0, **unit_data(0, 4, 0))  # a finished unit: another spec is refused
    other = make_spec(model=ModelSpec(model_id="test-small", image_size=64),
                      sensor=SensorSpec(cloudy_pct=10))
    with pytest.raises(SpecMismatchError) as info:
        create(path, spec=other)
    msg = str(info.value)
    assert "model.model_id: stored 'test-tiny', given 'test-small'" in msg
    assert "model.image_size: stored 32, given 64" in msg
    assert "sensor.cloudy_pct: stored 30.0, given 10.0" in msg
    assert "temporal" not in msg and "chunk_size" not in msg
    with pytest.raises(SpecMismatchError, match="scales: stored \\[10.0, 20.0\\], given \\[10.0\\]"):
        create(path, spec=make_spec(scales=(10.0,)))
    # runtime-only fields do not matter
    rt = make_spec(model=ModelSpec(model_id="test-tiny", image_size=32, batch_size=3, device="cpu"))
    assert create(path, spec=rt).spec.model.batch_size == 3
    # ids the cube does not hold are refused (naming them and the flag), unless appended
    # (tests/integration/test_changing_samples.py); ids of another kind are refused outright
    s = samples()
    s["ids"] = [f"id-{i}" for i in range(N - 1)] + ["zzz"]
    with pytest.raises(CubeError, match=r"not in the cube \(\['zzz'\]\).*--append"):
        create(path, **s)
    with pytest.raises(CubeError, match="sample ids that are strings, given integers"):
        create(path, **samples(int_ids=True))
    # stored ids not given are kept and reported, not deleted
    with caplog.at_level("WARNING", logger="rsembed_dask.store.cube"):
        assert create(path, **{k: v[:N - 1] for k, v in samples().items()}).n_samples == N
    assert "1 sample(s) not among those given (['id-9'])" in caplog.text
    with pytest.raises(CubeError, match="embed_dim"):
        create(path, embed_dim=D + 1)


def test_resume_and_incomplete_units(tmp_path):
    path = tmp_path / "c.zarr"
    cube = create(path)
    units = all_units(cube)
    assert cube.incomplete_units(units) == units
    cube.write_unit(0, 4, 0, **unit_data(0, 4, 0))  # has one FAILED cell
    d = unit_data(8, 10, 1)
    d["status"][:] = NO_DATA
    cube.write_unit(8, 10, 1, **d)

    again = create(path)  # same spec: resume, nothing overwritten
    assert again.status_counts() == {"pending": 14, "ok": 3, "no_data": 2, "failed": 1}
    todo = again.incomplete_units(units)
    assert Unit(0, 0) not in todo and Unit(8, 1) not in todo and len(todo) == 4
    assert Unit(0, 0) in again.incomplete_units(units, retry_failed=True)
    assert Unit(8, 1) not in again.incomplete_units(units, retry_failed=True)

    again.set_attrs(requests={"planned": 6, "sent": 5})
    assert open_cube(path).attrs["requests"] == {"planned": 6, "sent": 5}
    assert Cube.open(path).attrs["requests"]["sent"] == 5
    with pytest.raises(CubeError, match="reserved"):
        again.set_attrs(spec_hash="x")
    with pytest.raises(CubeError, match="JSON"):
        again.set_attrs(bad=object())


def test_unpickled_cubes_are_shared_per_process(tmp_path):
    """Every task unpickles the same Cube in one process: arrays opened once, spec parsed once."""
    path = tmp_path / "c.zarr"
    cube = create(path)
    first = pickle.loads(pickle.dumps(cube))
    first.write_unit(0, cube.chunk_size, 0, **unit_data(0, cube.chunk_size, 0))
    opened = dict(first._arrays)
    again = pickle.loads(pickle.dumps(cube))
    assert again is first and again._arrays == opened and "status" in opened
    # A cube that pickles differently (here a second scale list) is another Cube.
    other = create(tmp_path / "d.zarr", spec=make_spec(scales=(10.0, 30.0)))
    assert pickle.loads(pickle.dumps(other)) is not first


def _write_in_worker(cube: Cube, start: int, si: int) -> int:
    stop = min(start + cube.chunk_size, cube.n_samples)
    cube.write_unit(start, stop, si, **unit_data(start, stop, si))
    return os.getpid()


def test_pickle_and_parallel_writes(tmp_path):
    path = tmp_path / "c.zarr"
    cube = create(path)
    cube.status_counts()  # opens zarr handles that must not travel
    clone = pickle.loads(pickle.dumps(cube))
    assert clone.path == cube.path and clone.spec == cube.spec and clone._group is None
    assert len(pickle.dumps(cube)) < 4000

    units = all_units(cube)
    ctx = multiprocessing.get_context("spawn")  # zarr runs an event-loop thread: don't fork
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        pids = list(pool.map(_write_in_worker, [cube] * len(units),
                             [u.start for u in units], [u.scale_index for u in units]))
    assert os.getpid() not in pids

    assert cube.incomplete_units(units) == []
    ds = open_cube(path).load()
    for u in units:
        stop = min(u.start + CHUNK, N)
        exp = unit_data(u.start, stop, u.scale_index)
        got = ds.isel(sample=slice(u.start, stop), scale=u.scale_index)
        np.testing.assert_array_equal(got.embedding.values, exp["embedding"])
        np.testing.assert_array_equal(got.status.values, exp["status"])
        assert got.error.values.tolist() == [e[:200] for e in exp["error"]]
    assert cube.status_counts() == {"pending": 0, "ok": 14, "no_data": 0, "failed": 6}
    assert isinstance(ds, xr.Dataset)


def test_not_writable_simulated(tmp_path, monkeypatch):
    path = tmp_path / "c.zarr"
    create(path)
    monkeypatch.setattr(os, "access", lambda p, mode: False)
    with pytest.raises(CubeError, match="not writable"):
        create(tmp_path / "new.zarr")
    # An existing cube opens read-only (a finished one has nothing to do); work is refused.
    cube = create(path)
    assert cube.writable is False
    cube.require_writable(0)
    with pytest.raises(CubeError, match="not writable"):
        cube.require_writable(3)


def test_distributed_workers_write_units(tmp_path):
    distributed = pytest.importorskip("distributed")
    path = tmp_path / "c.zarr"
    cube = create(path)
    units = all_units(cube)
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=2,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        futs = [client.submit(_write_in_worker, cube, u.start, u.scale_index, pure=False)
                for u in units]
        pids = set(client.gather(futs))
    assert os.getpid() not in pids
    assert cube.incomplete_units(units) == []
    ds = open_cube(path)
    exp = unit_data(8, 10, 1)
    np.testing.assert_array_equal(ds.embedding.isel(sample=slice(8, 10), scale=1).values,
                                  exp["embedding"])
    assert cube.status_counts() == {"pending": 0, "ok": 14, "no_data": 0, "failed": 6}


def _failed_unit(n: int, d: int = D, reason: str = "lost its worker 4 times", grid_shape=None) -> dict:
    """What ``mark_unit_failed`` writes: every cell failed, no data."""
    out = dict(embedding=np.full((n, d), np.nan, "float32"), status=np.full(n, FAILED, "int8"),
               input_res_m=np.full(n, np.nan, "float32"), valid_fraction=np.zeros(n, "float32"),
               error=[reason] * n)
    if grid_shape is not None:
        out["grid"] = np.full((n, d, *grid_shape), np.nan, "float32")
    return out


def test_a_decided_cell_is_never_overwritten(tmp_path):
    cube = create(tmp_path / "c.zarr", spec=make_spec(output=OutputSpec.grid()), grid_shape=(2, 3))
    first = unit_data(0, 4, 0, grid_shape=(2, 3))  # ok, ok, ok, failed
    first["status"][1] = NO_DATA
    first["embedding"][1] = np.nan
    first["error"][1] = "no scene matches"
    cube.write_unit(0, 4, 0, **first)
    before = open_cube(cube.path).isel(scale=0, sample=slice(0, 4)).load()

    # A re-run that failed for good: the ok and no_data cells keep everything.
    cube.write_unit(0, 4, 0, **_failed_unit(4, grid_shape=(2, 3)))
    after = open_cube(cube.path).isel(scale=0, sample=slice(0, 4)).load()
    np.testing.assert_array_equal(after.status.values, [OK, NO_DATA, OK, FAILED])
    for name in ("embedding", "grid", "input_res_m", "valid_fraction"):
        np.testing.assert_array_equal(after[name].values[:3], before[name].values[:3], err_msg=name)
    assert after.error.values.tolist() == ["", "no scene matches", "", "lost its worker 4 times"]
    assert np.isfinite(after.embedding.values[[0, 2]]).all()

    # The failed cell is replaced; a cell written pending ("not touched") keeps what is stored.
    fix = unit_data(0, 4, 0, grid_shape=(2, 3))
    fix["embedding"] += 1000
    fix["embedding"][3] = 1000.0  # finite: an ok row that is not finite would be stored failed
    fix["grid"][3] = 1000.0
    fix["status"][:] = [PENDING, PENDING, PENDING, OK]
    fix["error"][3] = ""
    cube.write_unit(0, 4, 0, **fix)
    done = open_cube(cube.path).isel(scale=0, sample=slice(0, 4)).load()
    np.testing.assert_array_equal(done.status.values, [OK, NO_DATA, OK, OK])
    np.testing.assert_array_equal(done.embedding.values[:3], before.embedding.values[:3])
    np.testing.assert_array_equal(done.embedding.values[3], fix["embedding"][3])
    np.testing.assert_array_equal(done.grid.values[3], fix["grid"][3])
    assert done.error.values.tolist() == ["", "no scene matches", "", ""]


def test_pending_cells_are_written_and_a_fully_decided_unit_is_not_touched(tmp_path):
    cube = create(tmp_path / "c.zarr")
    data = unit_data(4, 8, 1)
    data["status"][:] = OK
    data["embedding"][-1] = 1.0  # an ok row must be finite (else it is stored failed)
    cube.write_unit(4, 8, 1, **data)
    mtime = os.stat(os.path.join(cube.path, "embedding", "c", "1", "1", "0")).st_mtime_ns
    cube.write_unit(4, 8, 1, **_failed_unit(4))  # nothing to change: nothing written
    assert os.stat(os.path.join(cube.path, "embedding", "c", "1", "1", "0")).st_mtime_ns == mtime
    assert (cube.unit_status(4, 1) == OK).all()
    cube.write_unit(0, 4, 1, **_failed_unit(4))  # pending cells take the failure
    assert (cube.unit_status(0, 1) == FAILED).all()


def test_failure_reasons_counts_failed_cells_only(tmp_path):
    cube = create(tmp_path / "c.zarr")
    assert cube.failure_reasons() == {}
    cube.write_unit(0, 4, 0, **unit_data(0, 4, 0))  # one failed cell with a long reason
    cube.write_unit(4, 8, 1, **_failed_unit(4, reason="HTTP 503"))
    d = unit_data(8, 10, 0)
    d["status"][:] = NO_DATA
    d["error"] = ["no scene matches"] * 2
    cube.write_unit(8, 10, 0, **d)
    reasons = cube.failure_reasons()
    assert reasons["HTTP 503"] == 4 and sum(reasons.values()) == 5 == cube.status_counts()["failed"]
    assert "no scene matches" not in reasons


_KILL_BEFORE_STATUS = """
import sys

import numpy as np

from rsembed_dask.store.cube import FAILED, Cube
from tests.kill_at_status import die_before_status_writes

die_before_status_writes()
cube = Cube.open(sys.argv[1])
n = 4
cube.write_unit(0, n, 0, embedding=np.full((n, cube.embed_dim), np.nan, "float32"),
                status=np.full(n, FAILED, "int8"), input_res_m=np.full(n, np.nan, "float32"),
                valid_fraction=np.zeros(n, "float32"), error=["lost its worker 4 times"] * n)
print("not killed", flush=True)
"""


def test_killed_between_data_and_status_leaves_no_ok_cell_without_data(tmp_path):
    """A process killed after writing a unit's data and before its status: the ok cells still
    hold their embeddings (the old write put NaN under them), and a rerun finishes the unit."""
    import subprocess
    import sys

    cube = create(tmp_path / "c.zarr")
    cube.write_unit(0, 4, 0, **unit_data(0, 4, 0))  # ok, ok, ok, failed
    before = open_cube(cube.path).embedding.values[:4, 0]
    proc = subprocess.run([sys.executable, "-c", _KILL_BEFORE_STATUS, cube.path], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == -9 and "killed before writing status/c/0/0" in proc.stdout, proc.stderr
    ds = open_cube(cube.path)
    status, emb = ds.status.values, ds.embedding.values
    assert not np.isnan(emb[status == OK]).any()
    np.testing.assert_array_equal(status[:4, 0], [OK, OK, OK, FAILED])
    np.testing.assert_array_equal(emb[:3, 0], before[:3])
    rerun = unit_data(0, 4, 0)
    rerun["status"][:] = OK
    rerun["embedding"][3] = 7.0
    cube.write_unit(0, 4, 0, **rerun)
    ds = open_cube(cube.path)
    assert (ds.status.values[:4, 0] == OK).all() and np.isfinite(ds.embedding.values[:4, 0]).all()
    np.testing.assert_array_equal(ds.embedding.values[:3, 0], before[:3])
