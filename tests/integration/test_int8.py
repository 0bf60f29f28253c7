"""int8 storage (issue 15, part 4): quantisation, int8 cubes, dequantising on open, campaigns, the CLI."""

from __future__ import annotations

import json
import os

import geopandas as gpd
import numpy as np
import pytest
import shapely
import zarr

from rsembed_dask.cli import main
from rsembed_dask.store.cube import FAILED, NO_DATA, OK, PENDING, Cube, open_cube
from rsembed_dask.store.verify import verify_cube
from rsembed_dask.errors import SpecError, SpecMismatchError
from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.store.quantize import dequantize_int8, quantize_int8
from rsembed_dask.specs import CampaignSpec, ModelSpec, OutputSpec, TemporalSpec

N, D, CHUNK, SCALES = 10, 16, 4, (10.0, 20.0)
WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")
TINY = ModelSpec("test-tiny", device="cpu")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _spec(dtype: str = "int8", grid: bool = False) -> CampaignSpec:
    out = (OutputSpec.grid if grid else OutputSpec.pooled)(dtype=dtype)
    return CampaignSpec(temporal=WINDOW, model=ModelSpec("test-tiny", image_size=32), output=out,
                        scales=SCALES, chunk_size=CHUNK)


def _create(path, spec, grid_shape=None) -> Cube:
    lon, lat = np.linspace(2.0, 3.0, N), np.linspace(30.0, 31.0, N)
    return Cube.create_or_open(path, spec=spec, ids=[f"id-{i}" for i in range(N)], lon=lon, lat=lat,
                               geohash=[f"gh{i}" for i in range(N)],
                               wkb=[shapely.Point(x, y).buffer(0.01).wkb for x, y in zip(lon, lat)],
                               embed_dim=D, grid_shape=grid_shape)


def _unit(start: int, stop: int, seed: int, grid_shape=None) -> dict:
    rng = np.random.default_rng(seed)
    n = stop - start
    emb = (rng.normal(size=(n, D)) * rng.uniform(0.1, 10, size=(n, 1))).astype(np.float32)
    status = np.full(n, OK, np.int8)
    status[-1] = FAILED
    emb[-1] = np.nan
    out = dict(embedding=emb, status=status, input_res_m=np.full(n, 10.0, np.float32),
               valid_fraction=np.ones(n, np.float32), error=[""] * (n - 1) + ["boom"])
    if grid_shape is not None:
        grid = rng.normal(size=(n, D) + grid_shape).astype(np.float32)
        grid[-1] = np.nan
        out["grid"] = grid
    return out


def test_quantize_round_trip_bounds_and_no_data():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(300, 384)) * rng.uniform(1e-3, 50, size=(300, 1))).astype(np.float32)
    x[7] = np.nan            # no embedding
    x[8] = 0.0               # an all-zero vector
    x[9, 3] = np.inf         # not entirely finite: no embedding
    q, s = quantize_int8(x, axis=1)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (300,)
    assert q.min() >= -127 and q.max() <= 127
    back = dequantize_int8(q, s, axis=1)
    good = np.ones(300, bool)
    good[[7, 9]] = False
    assert np.isnan(s[[7, 9]]).all() and (q[[7, 9]] == 0).all() and np.isnan(back[[7, 9]]).all()
    assert s[8] == 0 and (back[8] == 0).all()
    err = np.abs(back[good] - x[good])
    assert (err <= s[good, None] * 0.5 * (1 + 1e-5) + 1e-12).all()  # round-off is at most half a step
    assert (np.abs(q[good]).max(axis=1)[s[good] > 0] == 127).all()  # the scale uses the full range
    cos = _cosine(back[good][s[good] > 0], x[good][s[good] > 0])
    assert cos.min() > 0.9999


def test_quantize_token_grids_along_the_feature_axis():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(3, 8, 2, 5)).astype(np.float32)
    g[1, :, 0, 4] = np.nan  # a cropped (empty) token
    q, s = quantize_int8(g, axis=1)
    assert q.shape == g.shape and s.shape == (3, 2, 5)
    np.testing.assert_allclose(s[0], np.abs(g[0]).max(axis=0) / 127, rtol=1e-6)
    back = dequantize_int8(q, s, axis=1)
    assert np.isnan(back[1, :, 0, 4]).all() and np.isfinite(np.delete(back.reshape(3, 8, -1), 4, axis=2)).all()


def test_output_dtype_is_validated_and_only_int8_changes_the_spec_identity():
    with pytest.raises(SpecError, match=r"OutputSpec.dtype='float16'.*'float32', 'int8'"):
        OutputSpec.pooled(dtype="float16")
    with pytest.raises(SpecError, match="OutputSpec.dtype"):
        CampaignSpec.from_dict({"temporal": WINDOW.to_dict(), "output": {"mode": "pooled", "dtype": 8}})
    f32, i8 = _spec("float32"), _spec("int8")
    assert "dtype" not in f32.to_dict()["output"]  # the default is left out: old hashes hold
    assert i8.to_dict()["output"]["dtype"] == "int8" and i8.identity()["output"]["dtype"] == "int8"
    assert f32.spec_hash() != i8.spec_hash()
    old = json.loads(f32.to_json())  # a spec stored before the field existed
    assert CampaignSpec.from_dict(old).output.dtype == "float32"
    assert CampaignSpec.from_dict(old).spec_hash() == f32.spec_hash()
    assert CampaignSpec.from_json(i8.to_json()) == i8


@pytest.mark.parametrize("grid_shape", [None, (2, 3)])
def test_int8_cube_stores_int8_and_opens_dequantised(tmp_path, grid_shape):
    path = tmp_path / "c.zarr"
    cube = _create(path, _spec("int8", grid=grid_shape is not None), grid_shape)
    units = {(start, si): _unit(start, min(start + CHUNK, N), 10 * start + si, grid_shape)
             for start in range(0, N, CHUNK) for si in range(2)}
    for (start, si), data in units.items():
        cube.write_unit(start, min(start + CHUNK, N), si, **data)
    group = zarr.open_group(path, mode="r")
    assert group["embedding"].dtype == np.int8 and group["embedding_scale"].dtype == np.float32
    assert group["embedding_scale"].metadata.dimension_names == ("sample", "scale")
    if grid_shape:
        assert group["grid"].dtype == np.int8
        assert group["grid_scale"].metadata.dimension_names == ("sample", "scale", "gy", "gx")
    attrs = group.attrs.asdict()
    assert attrs["geoemb:data_type"] == "int8"
    assert attrs["geoemb:quantization"] == {"method": "per_vector_scale", "original_dtype": "float32",
                                            "quantized_dtype": "int8",
                                            "scale": {"type": "array", "array_name": "embedding_scale",
                                                      "nodata": "NaN"}}
    want = np.stack([np.concatenate([units[(s, si)]["embedding"] for s in range(0, N, CHUNK)])
                     for si in range(2)], axis=1)
    ds = open_cube(path)
    assert ds.embedding.dtype == np.float32 and "embedding_scale" not in ds
    got = ds.embedding.values
    ok = ds.status.values == OK
    assert np.isnan(got[~ok]).all() and np.isfinite(got[ok]).all()
    step = np.abs(want[ok]).max(-1, keepdims=True) / 127
    assert (np.abs(got[ok] - want[ok]) <= step * 0.5001).all()
    assert _cosine(got[ok], want[ok]).min() > 0.999
    assert "quantization" not in ds.embedding.attrs and "int8" not in ds.embedding.attrs["long_name"]
    raw = open_cube(path, dequantize=False)
    assert raw.embedding.dtype == np.int8 and raw.embedding_scale.dims == ("sample", "scale")
    np.testing.assert_array_equal(
        dequantize_int8(raw.embedding.values, raw.embedding_scale.values, axis=-1)[ok], got[ok])
    if grid_shape:
        g = ds.grid.values
        assert ds.grid.dims == ("sample", "scale", "feature", "gy", "gx") and g.dtype == np.float32
        wg = np.stack([np.concatenate([units[(s, si)]["grid"] for s in range(0, N, CHUNK)])
                       for si in range(2)], axis=1)
        assert np.isnan(g[~ok]).all()
        np.testing.assert_allclose(g[ok], wg[ok], atol=float(np.nanmax(np.abs(wg))) / 254 * 1.001)
        assert raw.grid_scale.dims == ("sample", "scale", "gy", "gx")
    assert verify_cube(path) == []


def test_int8_cube_keeps_decided_cells_resets_and_verifies(tmp_path):
    path = tmp_path / "c.zarr"
    cube = _create(path, _spec("int8"))
    first = _unit(0, 4, 1)
    cube.write_unit(0, 4, 0, **first)
    before = open_cube(path).embedding.values[:4, 0]
    again = _unit(0, 4, 2)
    again["status"][:] = FAILED  # a retry that failed: the ok cells keep their int8 values and scales
    again["embedding"][:] = np.nan
    cube.write_unit(0, 4, 0, **again)
    ds = open_cube(path)
    np.testing.assert_array_equal(ds.embedding.values[:3, 0], before[:3])
    assert ds.status.values[:4, 0].tolist() == [OK, OK, OK, FAILED]
    assert verify_cube(path) == []
    # A missing scale chunk is damage when the status vouches for it, and a resume finds it.
    os.remove(path / "embedding_scale" / "c" / "0" / "0")
    problems = verify_cube(path)
    assert any("embedding_scale" in p and "chunk is missing" in p for p in problems), problems
    units = [type("U", (), {"start": 0, "scale_index": 0})()]
    assert Cube.open(path).units_missing_chunks(units) == units
    # Resetting a moved sample empties its int8 value and scale at every scale.
    cube2 = _create(tmp_path / "d.zarr", _spec("int8"))
    cube2.write_unit(0, 4, 1, **_unit(0, 4, 3))
    cube2.reset_samples([1])
    raw = open_cube(tmp_path / "d.zarr", dequantize=False)
    assert (raw.embedding.values[1] == 0).all() and np.isnan(raw.embedding_scale.values[1]).all()
    assert raw.status.values[1].tolist() == [PENDING, PENDING]
    assert np.isfinite(raw.embedding_scale.values[0, 1])


def test_no_data_cells_hold_no_int8_embedding(tmp_path):
    path = tmp_path / "c.zarr"
    cube = _create(path, _spec("int8"))
    data = _unit(0, 4, 5)
    data["status"][1] = NO_DATA
    data["embedding"][1] = np.nan
    cube.write_unit(0, 4, 0, **data)
    assert verify_cube(path) == []
    arr = zarr.open_array(path / "embedding", mode="r+")
    arr[1, 0, :] = 5  # an embedding where the status says there is no imagery
    assert any("no_data or failed cells that hold an embedding" in p for p in verify_cube(path))


@pytest.fixture(scope="module")
def points() -> gpd.GeoDataFrame:
    rng = np.random.default_rng(4)
    return gpd.GeoDataFrame({"site": [f"s{i:02d}" for i in range(12)]},
                            geometry=gpd.points_from_xy(3 + rng.uniform(0, .3, 12), 31 + rng.uniform(0, .3, 12)),
                            crs="EPSG:4326")


@pytest.mark.timeout(240)
def test_int8_campaign_is_close_to_float32_and_resumes_only_as_int8(tmp_path, client, provider, points):
    kw = dict(scales=[20.0], temporal=WINDOW, model=TINY, backend=provider, client=client, chunk_size=4,
              id_column="site", progress=False)
    f32 = run_campaign(points, tmp_path / "f32.zarr", **kw)
    i8 = run_campaign(points, tmp_path / "i8.zarr", output=OutputSpec.pooled(dtype="int8"), **kw)
    assert (i8.status.values == OK).all()
    a, b = f32.embedding.values[:, 0], i8.sel(sample=f32.sample.values).embedding.values[:, 0]
    cos = _cosine(a, b)
    assert np.median(cos) >= 0.999 and cos.min() > 0.995
    assert zarr.open_group(tmp_path / "i8.zarr", mode="r")["embedding"].dtype == np.int8
    with pytest.raises(SpecMismatchError, match=r"output.dtype: stored 'int8', given 'float32' \(the default\)"):
        run_campaign(points, tmp_path / "i8.zarr", **kw)
    again = run_campaign(points, tmp_path / "i8.zarr", output=OutputSpec.pooled(dtype="int8"), **kw)
    np.testing.assert_array_equal(again.embedding.values, i8.embedding.values)


@pytest.mark.timeout(300)
def test_cli_run_dtype_int8(tmp_path, points):
    samples = tmp_path / "samples.geojson"
    points.iloc[:6].to_file(samples)
    out = tmp_path / "cube.zarr"
    rc = main(["run", str(samples), "--out", str(out), "--scales", "40", "--start", "2022-01-01",
               "--end", "2022-02-01", "--model", "test-tiny", "--backend", "emulator", "--id-column", "site",
               "--chunk-size", "4", "--dtype", "int8", "--no-progress"])
    assert rc == 0
    assert zarr.open_group(out, mode="r")["embedding"].dtype == np.int8
    ds = open_cube(out)
    assert (ds.status.values == OK).all() and ds.embedding.dtype == np.float32
    assert CampaignSpec.from_json(ds.attrs["campaign_spec"]).output.dtype == "int8"


def test_int8_scale_metadata_is_part_of_the_layout_and_repaired(tmp_path):
    from rsembed_dask.errors import CubeDamagedError

    path = tmp_path / "c.zarr"
    cube = _create(path, _spec("int8"))
    cube.write_unit(0, 4, 0, **_unit(0, 4, 7))
    meta = (path / "embedding_scale" / "zarr.json").read_bytes()
    (path / "embedding_scale" / "zarr.json").unlink()
    with pytest.raises(CubeDamagedError, match="embedding_scale"):
        open_cube(path)
    from rsembed_dask.store.layout import sample_chunks
    from rsembed_dask.store.repair import repair_layout

    lon, lat = np.linspace(2.0, 3.0, N), np.linspace(30.0, 31.0, N)
    samples = dict(ids=[f"id-{i}" for i in range(N)], lon=lon, lat=lat, geohash=[f"gh{i}" for i in range(N)],
                   wkb=[shapely.Point(x, y).buffer(0.01).wkb for x, y in zip(lon, lat)])
    n, source = sample_chunks(**samples, chunks=None, n_samples=None)
    repair_layout(str(path), spec=_spec("int8"), n_samples=n, embed_dim=D, grid_shape=None, source=source)
    Cube.create_or_open(path, spec=_spec("int8"), embed_dim=D, **samples)
    assert (path / "embedding_scale" / "zarr.json").read_bytes() == meta
    assert np.isfinite(open_cube(path).embedding.values[:3, 0]).all()
