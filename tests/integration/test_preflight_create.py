"""Everything is checked before the cube exists; a store where nothing finished never blocks a rerun.

Weights, free space and the backend are checked before the cube is created, so a bad model
leaves no cube that would refuse the corrected run. A cube where no unit finished is
recreated for another spec, and so is a store whose creation was interrupted; a cube with
a finished cell, a foreign store or directory is still refused.
"""

import errno
import json
import os
import shutil
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pytest
import shapely
import zarr

from rsembed_dask.store import open as cube_store
from rsembed_dask.cli import main
from rsembed_dask.store.cube import OK, PENDING, Cube, open_cube
from rsembed_dask.store.layout import MARKER_ATTR
from rsembed_dask.store.open import CREATING_ATTR, check_free_space, store_bytes, unfinished_store
from rsembed_dask.errors import CubeDamagedError, CubeError, SpecMismatchError
from rsembed_dask.campaign.run import plan_campaign, run_campaign
from rsembed_dask.providers.gee import GEEProvider
from rsembed_dask.sampling import build_sample_table
from rsembed_dask.specs import ModelSpec, TemporalSpec
from rsembed_dask.store.size import MIN_EMBEDDING_RATIO, sample_store_size
from rsembed_dask.store.lock import lock_path
from rsembed_dask.store.tiling import create_or_open_tiling
from rsembed_dask.sampling.tiling import tile_aoi

from ..conftest import FAST_RETRY

WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")
TINY = ModelSpec("test-tiny", device="cpu")
N = 6


def _points(n=N):
    rng = np.random.default_rng(5)
    return gpd.GeoDataFrame({"site": [f"s{i}" for i in range(n)]},
                            geometry=gpd.points_from_xy(3 + rng.uniform(0, .2, n), 31 + rng.uniform(0, .2, n)),
                            crs="EPSG:4326")


@pytest.fixture
def samples(tmp_path):
    path = tmp_path / "samples.geojson"
    _points().to_file(path)
    return path


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """test-tiny saved as a local model directory (config.json + model.safetensors)."""
    from rsembed_dask.embed.weights import load_scalemae

    wrapper, _ = load_scalemae(TINY)
    path = tmp_path_factory.mktemp("weights") / "tiny"
    wrapper.save_pretrained(path)
    return path


def _cli(samples, out, client, *more, model="test-tiny"):
    return main(["run", str(samples), "--out", str(out), "--scales", "10", "--start", WINDOW.start, "--end",
                 WINDOW.end, "--model", model, "--id-column", "site", "--backend", "emulator", "--chunk-size", "4",
                 "--no-progress", "--scheduler", client.scheduler.address, *more])


def _plan(out, model="test-small"):
    """Create the cube of the samples (nothing run) with ``model``: every cell pending."""
    return plan_campaign(_points(), out, scales=[10], temporal=WINDOW, model=ModelSpec(model, device="cpu"),
                         chunk_size=4, id_column="site")[2]


def test_bad_weights_fail_before_any_cube_then_the_corrected_model_runs(tmp_path, samples, client,
                                                                         tiny_weights, capsys):
    bad = tmp_path / "badweights"
    shutil.copytree(tiny_weights, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:len(data) // 2])  # a download cut short
    out = tmp_path / "c.zarr"
    assert _cli(samples, out, client, model=str(bad)) == 2
    err = capsys.readouterr().err
    assert "unreadable weights" in err and str(bad / "model.safetensors") in err and "truncated" in err
    assert not out.exists() and not os.path.exists(lock_path(out))  # no cube to refuse the next run
    # The corrected model (the user's rerun): it works, no "model.model_id: stored ..." refusal.
    assert _cli(samples, out, client, model="test-tiny") == 0
    ds = open_cube(out)
    assert (ds.status.values == OK).all() and json.loads(ds.attrs["campaign_spec"])["model"]["model_id"] == "test-tiny"
    # A readable local model directory passes the check and runs.
    assert _cli(samples, tmp_path / "local.zarr", client, model=str(tiny_weights)) == 0


@pytest.mark.parametrize("damage, words", [
    (lambda b: b"not a safetensors file", "the header claims"),
    (lambda b: b[:8] + b"[" + b[9:], "not JSON"),
    (lambda b: b[:-10], "the file holds"),
    (lambda b: b"", "too short"),
])
def test_the_weight_check_reads_the_safetensors_header(tmp_path, tiny_weights, damage, words):
    from rsembed_dask.errors import ModelError
    from rsembed_dask.embed.weights import check_weights

    model = tmp_path / "m"
    shutil.copytree(tiny_weights, model)
    assert check_weights(ModelSpec(str(model))).embed_dim == 64
    weights = model / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(ModelError, match=words):
        check_weights(ModelSpec(str(model)))
    weights.unlink()
    with pytest.raises(ModelError, match="holds no weights"):
        check_weights(ModelSpec(str(model)))


@pytest.mark.timeout(120)
def test_a_hub_id_is_checked_in_the_local_cache_and_offline_it_says_so(tmp_path, samples, tiny_weights):
    """A hub id resolves from the Hugging Face cache (offline here): broken cached weights, or weights
    neither cached nor listable, stop the run before any cube exists."""
    snap = tmp_path / "hf" / "models--org--scalemae" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc123")
    shutil.copy(tiny_weights / "config.json", snap)
    (snap / "model.safetensors").write_bytes((tiny_weights / "model.safetensors").read_bytes()[:1000])
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PYTHONPATH=os.getcwd())
    out = tmp_path / "c.zarr"
    cmd = [sys.executable, "-m", "rsembed_dask.cli", "run", str(samples), "--out", str(out), "--scales", "10",
           "--start", WINDOW.start, "--end", WINDOW.end, "--model", "org/scalemae", "--backend", "emulator",
           "--no-progress"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=100)
    assert r.returncode == 2 and "ModelSpec.model_id='org/scalemae': unreadable weights" in r.stderr, r.stderr
    assert not out.exists()
    (snap / "model.safetensors").unlink()  # config cached, weights neither cached nor listable offline
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=100)
    assert r.returncode == 2 and "not in the local Hugging Face cache and the hub cannot list them" in r.stderr
    assert not out.exists()


def test_a_cube_where_nothing_finished_is_recreated_for_another_spec(tmp_path, samples, client, caplog):
    out = tmp_path / "c.zarr"
    assert _plan(out).status_counts()["pending"] == N  # the state the bad-model bug left behind
    with caplog.at_level("WARNING", logger="rsembed_dask.store.cube"):
        assert _cli(samples, out, client) == 0
    assert ("no unit has finished in it and it holds another campaign "
            "(model.model_id: stored 'test-small', given 'test-tiny')") in caplog.text
    assert "it is recreated" in caplog.text
    ds = open_cube(out)
    assert (ds.status.values == OK).all() and ds.sizes["feature"] == 64


def test_a_cube_with_one_finished_cell_keeps_refusing_another_spec(tmp_path, samples, client, capsys):
    out = tmp_path / "c.zarr"
    cube = _plan(out)
    n = cube.unit_stop(0)
    status = np.full(n, PENDING, np.int8)
    status[0] = OK
    emb = np.full((n, cube.embed_dim), np.nan, np.float32)
    emb[0] = 1.0
    cube.write_unit(0, n, 0, embedding=emb, status=status, input_res_m=np.full(n, 10.0),
                    valid_fraction=np.ones(n), error=[""] * n)
    assert _cli(samples, out, client) == 2
    err = capsys.readouterr().err
    assert "different campaign spec" in err and "model.model_id: stored 'test-small', given 'test-tiny'" in err
    kept = Cube.open(out)
    assert kept.status_counts()["ok"] == 1 and kept.embed_dim == 384  # untouched
    with pytest.raises(SpecMismatchError, match="model.model_id"):  # the API says the same
        run_campaign(_points(), out, scales=[10], temporal=WINDOW, model=TINY, chunk_size=4,
                     id_column="site", backend="emulator", client=client, progress=False)


def test_a_creation_cut_short_by_a_full_disk_is_recreated_by_the_next_run(tmp_path, samples, client, monkeypatch,
                                                                          capsys, caplog):
    real = zarr.Group.create_array

    def disk_full_at_embedding(self, name, *args, **kwargs):
        if name == "embedding":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(zarr.Group, "create_array", disk_full_at_embedding)
    out = tmp_path / "c.zarr"
    assert _cli(samples, out, client) == 2
    err = capsys.readouterr().err
    assert "cannot create cube" in err and "No space left on device" in err and "recreates it" in err
    monkeypatch.undo()
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]
    assert CREATING_ATTR in attrs and MARKER_ATTR not in attrs  # half made: coordinates only
    assert (out / "sample").is_dir() and not (out / "embedding").exists()
    with pytest.raises(CubeError, match="creation was interrupted.*running the campaign again recreates it"):
        open_cube(out)
    with caplog.at_level("WARNING", logger="rsembed_dask.store.cube"):
        assert _cli(samples, out, client) == 0
    assert "its creation was interrupted" in caplog.text and "it is recreated" in caplog.text
    ds = open_cube(out)
    assert (ds.status.values == OK).all() and CREATING_ATTR not in ds.attrs and ds.attrs[MARKER_ATTR] == 1


def test_only_our_unfinished_stores_are_recreated(tmp_path):
    # An interrupted creation from before the creating attribute: no attributes, only a cube's arrays.
    legacy = tmp_path / "legacy.zarr"
    zarr.open_group(legacy, mode="w", zarr_format=3).create_array("sample", shape=(N,), dtype="int64")
    assert "no attributes and it holds only a cube's arrays (sample)" in unfinished_store(legacy)
    assert _plan(legacy).n_samples == N
    # A foreign Zarr store (its own names, or attributes of its own), a foreign directory: refused, kept.
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(foreign, mode="w", zarr_format=3).create_array("temperature", shape=(3,), dtype="f4")
    titled = tmp_path / "titled.zarr"
    zarr.open_group(titled, mode="w", zarr_format=3, attributes={"title": "mine"}).create_array(
        "sample", shape=(3,), dtype="f4")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("keep me")
    for path, words in ((foreign, "not a finished rsembed_dask cube"), (titled, "not a finished rsembed_dask cube"),
                        (notes, "not an rsembed_dask cube")):
        assert unfinished_store(path) is None
        before = sorted(str(p.relative_to(path)) for p in path.rglob("*"))
        with pytest.raises(CubeError, match=words):
            _plan(path)
        assert sorted(str(p.relative_to(path)) for p in path.rglob("*")) == before
    # Ours, but a unit finished and its zarr.json was lost later: damaged, never recreated.
    done = tmp_path / "done.zarr"
    cube = _plan(done)
    n = cube.unit_stop(0)
    cube.write_unit(0, n, 0, embedding=np.ones((n, cube.embed_dim)), status=np.full(n, OK),
                    input_res_m=np.full(n, 10.0), valid_fraction=np.ones(n), error=[""] * n)
    (done / "zarr.json").write_text('{"attributes": {"campaign_')
    assert unfinished_store(done) is None
    with pytest.raises(CubeDamagedError, match="cannot read zarr.json"):
        _plan(done)
    # Ours, nothing finished, its zarr.json cut short by a full disk: recreated.
    cut = tmp_path / "cut.zarr"
    _plan(cut)
    (cut / "zarr.json").write_text('{"attributes": {"campaign_')
    assert "zarr.json is unreadable" in unfinished_store(cut)
    assert _plan(cut).n_samples == N


def test_tiling_stores_where_nothing_finished_are_recreated(tmp_path, client, provider, monkeypatch, caplog):
    from rsembed_dask.specs import CampaignSpec

    tiling = tile_aoi(shapely.box(3.0, 31.0, 3.05, 31.04), scales=[40])
    out = tmp_path / "t.zarr"
    # Another window, nothing run: recreated for the campaign given.
    other = CampaignSpec(temporal=TemporalSpec.range("2021-01-01", "2021-02-01"), model=TINY, scales=tiling.scales,
                         chunk_size=64, buffer_m=None)
    create_or_open_tiling(out, tiling, other, embed_dim=64)
    with caplog.at_level("WARNING", logger="rsembed_dask.store.tiling"):
        tree = run_campaign(tiling, out, temporal=WINDOW, model=TINY, backend=provider, client=client,
                            progress=False)
    assert "no unit has finished in it and it was written for another campaign" in caplog.text
    assert (tree["samples/40m"].to_dataset().status.values == OK).all()
    # Finished: another window is refused.
    with pytest.raises(SpecMismatchError, match="another campaign"):
        run_campaign(tiling, out, temporal=TemporalSpec.range("2021-01-01", "2021-02-01"), model=TINY,
                     backend=provider, client=client, progress=False)
    # A creation cut short (the grids could not be written): recreated by the next run.
    cut = tmp_path / "cut.zarr"
    monkeypatch.setattr("rsembed_dask.store.tiling._create_grids",
                        lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(CubeError, match="cannot create tiling store.*No space left"):
        run_campaign(tiling, cut, temporal=WINDOW, model=TINY, backend=provider, client=client, progress=False)
    monkeypatch.undo()
    assert "written first" in unfinished_store(cut, tiling=True) and unfinished_store(cut) is None
    caplog.clear()
    with caplog.at_level("WARNING", logger="rsembed_dask.store.tiling"):
        tree = run_campaign(tiling, cut, temporal=WINDOW, model=TINY, backend=provider, client=client,
                            progress=False)
    assert "its creation was interrupted" in caplog.text
    assert (tree["samples/40m"].to_dataset().status.values == OK).all()


def test_free_space_refuses_below_the_lower_estimate_and_warns_below_the_upper_bound(tmp_path, caplog):
    table = build_sample_table(_points(), id_column="site")
    size = sample_store_size(table.ids, table.wkb, n_scales=3, embed_dim=1024, chunk_size=4)
    assert size.lower == int(N * 3 * 1024 * 4 * MIN_EMBEDDING_RATIO)
    out = tmp_path / "c.zarr"
    with pytest.raises(CubeError, match=r"not enough free space for the store .*c.zarr.*needs at least 36.00 kiB"):
        check_free_space(out, size, free=size.lower - 1, block_size=4096)
    with caplog.at_level("WARNING", logger="rsembed_dask.store.open"):
        check_free_space(out, size, free=size.lower, block_size=4096)
    assert "may not fit" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="rsembed_dask.store.open"):
        check_free_space(out, size, free=size.upper(4096), block_size=4096)
        check_free_space(out, size, free=size.lower - 1, reclaim=size.upper(4096), block_size=4096)  # replaced
    assert caplog.text == ""
    assert not out.exists()


def test_the_run_checks_free_space_before_the_cube(tmp_path, samples, client, monkeypatch, capsys, caplog):
    table = build_sample_table(_points(), id_column="site")
    size = sample_store_size(table.ids, table.wkb, n_scales=1, embed_dim=64, chunk_size=4)
    out = tmp_path / "c.zarr"
    monkeypatch.setattr(cube_store, "free_space", lambda path: size.lower - 1)
    assert _cli(samples, out, client) == 2
    assert "not enough free space" in capsys.readouterr().err and not out.exists()
    monkeypatch.setattr(cube_store, "free_space", lambda path: size.lower + 1)
    with caplog.at_level("WARNING", logger="rsembed_dask.store.open"):
        assert _cli(samples, out, client) == 0
    assert "may not fit" in caplog.text
    # The bounds hold for the real store: lower estimate <= bytes on disk <= upper bound.
    assert size.lower <= store_bytes(out) <= size.upper(os.statvfs(out).f_frsize)


def test_a_finished_cube_reruns_without_any_check(tmp_path, client, provider):
    out = tmp_path / "c.zarr"
    run_campaign(_points(), out, scales=[10], temporal=WINDOW, model=TINY, chunk_size=4, id_column="site",
                 backend=provider, client=client, progress=False)
    unreachable = GEEProvider(api_url="http://127.0.0.1:9", credentials="anonymous", project="p", retry=FAST_RETRY)

    def no_cluster():
        raise AssertionError("a cluster was started")

    ds = run_campaign(_points(), out, scales=[10], temporal=WINDOW, model=TINY, chunk_size=4, id_column="site",
                      backend=unreachable, client=no_cluster, progress=False)
    assert (ds.status.values == OK).all()
