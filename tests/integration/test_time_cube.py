"""A cube with a ``time`` dimension: one sample campaign over several windows, a backfill that
rewrites no byte, and the change between two windows (``explore.change``, ``rsembed-dask change``)."""

import hashlib
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import zarr

from rsembed_dask.campaign.options import RunOptions
from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.cli import main
from rsembed_dask.errors import CubeError, SpecError
from rsembed_dask.explore import change, roc_auc, window_index
from rsembed_dask.providers.gee import GEEProvider
from rsembed_dask.specs import CampaignSpec, ModelSpec, TemporalSpec
from rsembed_dask.store.cube import OK, Cube
from rsembed_dask.store.layout import COMPLETED_WINDOWS_ATTR, SPEC_HASH_ATTR, TIME_WINDOWS_ATTR

from ..conftest import FAST_RETRY
from .test_changing_world import MODEL, MIN_AUC, SCALE, _points_and_truth, _window

TINY = ModelSpec("test-tiny", device="cpu")
WINDOWS = [TemporalSpec.range(f"{y}-04-01", f"{y}-06-01") for y in (2019, 2020, 2021)]


def _points(n=5):
    return gpd.GeoDataFrame({"site": [f"s{i}" for i in range(n)]},
                            geometry=gpd.points_from_xy(np.linspace(2.0, 2.1, n), np.linspace(31.0, 31.1, n)),
                            crs="EPSG:4326")


def _run(out, windows, provider, client, **options):
    return run_campaign(_points(), out, scales=[10, 40], temporal=windows, model=TINY, backend=provider,
                        client=client, chunk_size=2, id_column="site", progress=False,
                        options=RunOptions(progress=False, **options))


def _chunk_bytes(cube: Path) -> dict[str, str]:
    """Digest of every chunk object of the cube (every file under an array's ``c/``)."""
    return {str(p.relative_to(cube)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(cube.rglob("*")) if p.is_file() and "/c/" in f"/{p.relative_to(cube)}"}


def test_several_windows_make_a_time_dimension(tmp_path, provider, client):
    out = tmp_path / "t.zarr"
    ds = _run(out, WINDOWS[:2], provider, client)
    assert ds.embedding.dims == ("time", "sample", "scale", "feature")
    assert ds.status.dims == ("time", "sample", "scale")
    assert (ds.status.values == OK).all() and np.isfinite(ds.embedding.values).all()
    assert ds.time.dtype.kind == "M"
    assert list(ds.time.values) == list(pd.to_datetime(["2019-04-01", "2020-04-01"]).values)
    assert ds.time.attrs["bounds"] == "time_bnds" or ds.time.encoding.get("bounds") == "time_bnds"
    assert (ds.time_bnds.values[:, 1] == pd.to_datetime(["2019-06-01", "2020-06-01"]).values).all()
    group = zarr.open_group(str(out), mode="r")
    for name in ("embedding", "status", "input_res_m", "valid_fraction", "error"):
        assert group[name].metadata.dimension_names[0] == "time" and group[name].chunks[0] == 1
    assert group.attrs[TIME_WINDOWS_ATTR] == [["2019-04-01", "2019-06-01"], ["2020-04-01", "2020-06-01"]]
    assert group.attrs[COMPLETED_WINDOWS_ATTR] == ["2019-04-01", "2020-04-01"]
    # The spec's temporal identity is the first window: the hash of a one-window campaign on it.
    assert group.attrs[SPEC_HASH_ATTR] == Cube.open(out).spec.spec_hash()
    assert json.loads(group.attrs["campaign_spec"])["temporal"]["start"] == "2019-04-01"
    # Each window was fetched for its own dates: the composites (hence embeddings) differ.
    assert not np.allclose(ds.embedding.values[0], ds.embedding.values[1])
    # A resume with the same windows has nothing to do and rewrites nothing.
    before = _chunk_bytes(out)
    again = _run(out, WINDOWS[:2], provider, client)
    assert again.attrs["last_run"] == ds.attrs["last_run"] and _chunk_bytes(out) == before


def test_backfill_adds_a_window_without_rewriting_a_byte(tmp_path, provider, client):
    out = tmp_path / "b.zarr"
    _run(out, WINDOWS[:2], provider, client)
    before = _chunk_bytes(out)
    assert any(k.startswith("embedding/c/1/") for k in before)
    with pytest.raises(CubeError, match="--append-windows"):
        _run(out, WINDOWS, provider, client)
    assert _chunk_bytes(out) == before
    ds = _run(out, WINDOWS, provider, client, append_windows=True)
    after = _chunk_bytes(out)
    assert {k: after[k] for k in before} == before  # every chunk there before is there, byte for byte
    new = set(after) - set(before)
    assert new and all(k.split("/c/")[1].startswith("2/") or k.startswith("time") for k in new)
    assert ds.sizes["time"] == 3 and (ds.status.values == OK).all()
    assert ds.attrs[COMPLETED_WINDOWS_ATTR] == [w.start for w in WINDOWS]
    # The stored windows come first, in their order (the first is the spec's temporal identity).
    with pytest.raises(CubeError, match="give the stored windows first"):
        _run(out, [WINDOWS[0], WINDOWS[2]], provider, client)
    with pytest.raises(CubeError, match="temporal.start: stored '2019-04-01', given '2020-04-01'"):
        _run(out, WINDOWS[1:], provider, client)


def test_one_window_keeps_the_layout_without_time(tmp_path, provider, client):
    out = tmp_path / "one.zarr"
    ds = _run(out, [WINDOWS[0]], provider, client)
    assert "time" not in ds.dims and ds.embedding.dims == ("sample", "scale", "feature")
    spec = Cube.open(out).spec
    assert spec.temporal == WINDOWS[0] and isinstance(spec, CampaignSpec)
    with pytest.raises(CubeError, match="no time dimension"):
        _run(out, WINDOWS[:2], provider, client, append_windows=True)
    with pytest.raises(SpecError, match="no time dimension"):
        change(out, 2019, 2019, scale=10.0)


def test_windows_are_named_by_start_date_or_year(tmp_path, provider, client):
    out = tmp_path / "w.zarr"
    ds = _run(out, WINDOWS[:2], provider, client)
    assert window_index(ds, "2020-04-01") == 1 and window_index(ds, 2019) == 0 and window_index(ds, "2020") == 1
    with pytest.raises(SpecError, match="no window starts in 2018"):
        window_index(ds, 2018)
    with pytest.raises(SpecError, match="start date"):
        window_index(ds, "2019-05-01")
    d = change(ds, 2019, 2020, scale=40.0)
    assert d.dims == ("sample",) and d.sizes["sample"] == 5 and np.isfinite(d.values).all()
    assert (d.values >= 0).all() and (d.values <= 2).all()
    assert change(ds, 2019, 2019, scale=40.0).values == pytest.approx(0, abs=1e-5)
    with pytest.raises(SpecError, match="scale"):
        change(ds, 2019, 2020, scale=20.0)


def test_change_is_nan_where_a_window_is_not_ok(tmp_path, provider, client):
    # A window after the emulator's "today" is an empty composite: no_data everywhere.
    out = tmp_path / "n.zarr"
    ds = _run(out, [WINDOWS[0], TemporalSpec.year(2030)], provider, client)
    assert (ds.status.values[0] == OK).all() and not (ds.status.values[1] == OK).any()
    assert np.isnan(change(ds, 2019, 2030, scale=10.0).values).all()


def test_change_command_writes_points_and_a_png(tmp_path, provider, client, capsys):
    out = tmp_path / "cli.zarr"
    _run(out, WINDOWS[:2], provider, client)
    rc = main(["change", str(out), "--from", "2019", "--to", "2020-04-01", "--scale", "10", "--out",
               str(tmp_path / "maps")])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    parquet = next(Path(p) for p in printed if p.endswith(".parquet"))
    png = next(Path(p) for p in printed if p.endswith(".png"))
    gdf = gpd.read_parquet(parquet)
    assert len(gdf) == 5 and set(gdf.columns) >= {"sample", "change", "from", "to", "scale_m", "geometry"}
    assert (gdf.geom_type == "Point").all() and gdf.crs.to_epsg() == 4326
    assert gdf["from"].iloc[0] == "2019-04-01" and np.isfinite(gdf.change).all()
    from PIL import Image

    assert max(Image.open(png).size) >= 512
    assert main(["change", str(out), "--from", "2018", "--to", "2020", "--scale", "10",
                 "--out", str(tmp_path / "x")]) == 2
    assert "no window starts in 2018" in capsys.readouterr().err
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "status: pending 0, ok 20, no_data 0, failed 0" in text
    assert "window 2020-04-01..2020-06-01: pending 0, ok 10, no_data 0, failed 0" in text
    assert "completed windows: ['2019-04-01', '2020-04-01']" in text


@pytest.mark.timeout(900)  # one campaign of two windows with test-small: ~150 s on a loaded 2-core machine
def test_change_on_the_cube_finds_the_changed_land(tmp_path, client, emulator):
    gdf, truth, _ = _points_and_truth()
    provider = GEEProvider(api_url=emulator.url, credentials="anonymous", project="change-cube", retry=FAST_RETRY)
    out = tmp_path / "y.zarr"
    ds = run_campaign(gdf, out, scales=[SCALE], temporal=[_window(2019), _window(2024)], model=MODEL,
                      backend=provider, id_column="site", client=client, progress=False)
    assert ds.sizes["time"] == 2 and (ds.status.values == OK).all()
    score = change(out, 2019, 2024, scale=SCALE).sel(sample=gdf.site.tolist()).values
    auc = roc_auc(score, truth)
    print(f"\nchange AUC (one cube, two windows): {auc:.3f}")
    assert auc >= MIN_AUC


def test_readers_of_one_window_ask_for_it_and_the_others_read_every_window(tmp_path, provider, client, capsys):
    from rsembed_dask.explore import similar
    from rsembed_dask.store import open_cube
    from rsembed_dask.store.verify import check_cube

    out = tmp_path / "r.zarr"
    _run(out, WINDOWS[:2], provider, client)
    ds = open_cube(out)
    with pytest.raises(SpecError, match="expected one of the cube's 2 windows.*2019-04-01, 2020-04-01"):
        similar(ds, "s0", k=2, scale=10.0)
    assert similar(ds.isel(time=1), "s0", k=2, scale=10.0).index.tolist()[0] != "s0"  # one window: as before
    assert check_cube(out).problems == []  # verify reads every window (tests/integration/test_time_verify.py)
    assert main(["export", str(out), str(tmp_path / "e.parquet")]) == 0  # rows per window (test_time_formats.py)
