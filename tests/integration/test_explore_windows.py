"""Exploring a cube written over several windows: ``similar``, the quicklooks, ``inspect`` and the
explorer read one window, named by its start date or its year (one rule: ``choose_window``).

One real campaign on the emulator (``test-tiny``, two windows, 2019 and 2020) for the module.
"""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rsembed_dask.campaign.options import RunOptions
from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.cli import main
from rsembed_dask.errors import SpecError
from rsembed_dask.explore import (choose_window, quicklook, samples_quicklook, similar, status_table,
                                  to_geodataframe)
from rsembed_dask.explore.app import CubeSource
from rsembed_dask.explore.picture import MIN_LONG_SIDE
from rsembed_dask.providers.gee import GEEProvider
from rsembed_dask.specs import ModelSpec, TemporalSpec
from rsembed_dask.store.cube import OK
from rsembed_dask.store.open import nearest_sample, open_cube

from ..conftest import FAST_RETRY
from .test_time_cube import _points

WINDOWS = [TemporalSpec.range(f"{y}-04-01", f"{y}-06-01") for y in (2019, 2020)]
STARTS = [w.start for w in WINDOWS]


@pytest.fixture(scope="module")
def years(tmp_path_factory, emulator, client):
    """A sample cube of 12 points at 10 and 40 m over two windows (a ``time`` dimension)."""
    out = tmp_path_factory.mktemp("years") / "years.zarr"
    provider = GEEProvider(api_url=emulator.url, credentials="anonymous", project="test-project", retry=FAST_RETRY)
    ds = run_campaign(_points(12), out, scales=[10, 40], temporal=WINDOWS, model=ModelSpec("test-tiny", device="cpu"),
                      backend=provider, client=client, chunk_size=4, id_column="site", progress=False,
                      options=RunOptions(progress=False))
    assert ds.sizes["time"] == 2 and (ds.status.values == OK).all()
    return out


def _cosines(vectors: np.ndarray, q: int) -> np.ndarray:
    v = vectors.astype(np.float64)
    return v @ v[q] / (np.linalg.norm(v, axis=1) * np.linalg.norm(v[q]))


def test_similar_reads_the_window_it_is_given(years):
    ds = open_cube(years)
    query = str(ds["sample"].values[3])
    first = similar(years, query, k=5, scale=40, time=2019)
    # The same as the window cut by hand, and the same by start date.
    pd.testing.assert_frame_equal(first, similar(ds.isel(time=0), query, k=5, scale=40))
    pd.testing.assert_frame_equal(first, similar(ds, query, k=5, scale=40, time="2019-04-01"))
    assert (first["time"] == "2019-04-01").all() and first.attrs["time"] == "2019-04-01"
    # Window 1: its own vectors (query and candidates), hence other similarities.
    second = similar(ds, query, k=11, scale=40, time=2020)
    assert (second["time"] == "2020-04-01").all() and second.attrs == {"query_sample": query, "scale": 40.0,
                                                                        "time": "2020-04-01"}
    vectors = ds.embedding.sel(scale=40.0).isel(time=1).values
    cos = pd.Series(_cosines(vectors, 3), index=ds["sample"].values)
    np.testing.assert_allclose(second.similarity.values, cos[second.index].values, rtol=1e-6)
    np.testing.assert_allclose(second.similarity.values, np.sort(cos.drop(query).values)[::-1], rtol=1e-6)
    both = similar(ds, query, k=11, scale=40, time=2019).similarity
    assert not np.allclose(both[second.index].values, second.similarity.values)
    # A point query: the nearest sample is the same in every window (locations do not change).
    lon, lat = float(ds.lon.values[3]), float(ds.lat.values[3])
    assert nearest_sample(ds, lon, lat) == query == nearest_sample(ds.isel(time=1), lon, lat)
    assert similar(ds, (lon, lat), k=3, scale=40, time=2020).attrs["query_sample"] == query


def test_a_window_must_be_named_in_a_cube_with_several(years):
    ds = open_cube(years)
    query = str(ds["sample"].values[0])
    for bad, why in ((None, "one of the cube's 2 windows"), (2018, "no window starts in 2018"),
                     ("2019-05-01", "start date"), ("next year", "start date")):
        with pytest.raises(SpecError) as info:
            similar(ds, query, scale=10, time=bad)
        assert info.value.field == "time" and info.value.value == bad and why in str(info.value)
        assert all(s in str(info.value) for s in STARTS)  # the message lists the windows
    for f in (lambda: to_geodataframe(ds, scale=10), lambda: status_table(ds),
              lambda: samples_quicklook(ds, 10, "unused")):
        with pytest.raises(SpecError, match="time=None .*2019-04-01, 2020-04-01"):
            f()
    # A cube of one window (a time dimension of length 1): time may be left out.
    one = ds.isel(time=[1])
    pd.testing.assert_frame_equal(similar(one, query, k=4, scale=10), similar(ds, query, k=4, scale=10, time=2020))
    # A cube without a time dimension takes no time.
    flat = ds.isel(time=0).drop_vars(["time", "time_bnds"])
    assert choose_window(flat, None) is None and "time" not in similar(flat, query, k=2, scale=10)
    with pytest.raises(SpecError, match="no time dimension"):
        similar(flat, query, scale=10, time=2019)


def test_frames_and_tables_of_one_window(years):
    gdf = to_geodataframe(years, scale=10, time=2020)
    ds = open_cube(years).sel(scale=10.0).isel(time=1)
    assert (gdf["time"] == "2020-04-01").all() and (gdf.status == "ok").all()
    np.testing.assert_array_equal(np.stack(gdf.embedding), ds.embedding.values)
    table = status_table(years, time="2019-04-01")
    assert table.loc[10.0, "ok"] == 12 and table.loc[40.0, "ok"] == 12


def test_quicklooks_name_their_window(years, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    ax = quicklook(years, scale=10, time=2020)
    assert "window 2020-04-01" in ax.get_title()
    png = samples_quicklook(years, 10, tmp_path, time=2019)
    assert png.endswith("quicklook_10m_2019-04-01.png")
    image = Image.open(png)
    assert image.text["time"] == "2019-04-01" and image.text["time_end"] == "2019-06-01"
    assert "window 2019-04-01..2019-06-01" in image.text["Title"] and max(image.size) >= MIN_LONG_SIDE


def test_quicklook_command_takes_a_window(years, tmp_path, capsys):
    assert main(["quicklook", str(years), "--scale", "40", "--time", "2020", "--out", str(tmp_path / "ql")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "ql" / "quicklook_40m_2020-04-01.png")]
    image = Image.open(printed[0])
    assert image.text["time"] == "2020-04-01" and "40 m, window 2020-04-01" in image.text["Title"]
    pixels = np.asarray(image.convert("RGBA"))
    assert (pixels[..., 3] == 0).any() and (pixels[..., 3] == 255).any()  # samples drawn, the rest transparent
    for bad in ([], ["--time", "2018"], ["--time", "2019-05-01"]):
        assert main(["quicklook", str(years), "--scale", "40", "--out", str(tmp_path / "x")] + bad) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err and "time=" in err
        assert all(s in err for s in STARTS)


def test_inspect_lists_the_windows_and_the_complete_ones(years, capsys):
    assert main(["inspect", str(years), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [w["start"] for w in info["windows"]] == STARTS and [w["end"] for w in info["windows"]] == [
        w.end for w in WINDOWS]
    assert all(w["complete"] and w["status"]["ok"] == 24 for w in info["windows"])
    assert info["completed_windows"] == STARTS
    assert main(["inspect", str(years)]) == 0
    text = capsys.readouterr().out
    for w in WINDOWS:
        assert f"window {w.label}: pending 0, ok 24, no_data 0, failed 0 (complete)" in text
    assert "completed windows: ['2019-04-01', '2020-04-01']" in text


def test_the_explorer_follows_the_same_rule(years):
    source = CubeSource.open(years)
    assert [w.start for w in source.windows] == STARTS
    ds = open_cube(years)
    for value in (2019, "2020", "2020-04-01"):
        assert source.window(value).position == choose_window(ds, value)
    for bad in (None, "", 2021, "2019-04-02"):
        with pytest.raises(SpecError) as app_error:
            source.window(bad)
        with pytest.raises(SpecError) as rule_error:
            choose_window(ds, None if bad == "" else bad)
        assert str(app_error.value).split("expected")[1] == str(rule_error.value).split("expected")[1]


def _tiling_has_time() -> bool:
    """Whether tiling stores take several windows yet (branch ``tiletime``; before it, refused)."""
    import inspect

    from rsembed_dask.store.tiling import create_or_open_tiling

    return "windows" in inspect.signature(create_or_open_tiling).parameters


@pytest.mark.skipif(not _tiling_has_time(), reason="tiling stores over several windows are not built yet")
def test_grid_quicklook_of_a_tiling_store_takes_a_window(tmp_path, emulator, client, capsys):
    import rasterio
    import shapely

    from rsembed_dask.sampling.tiling import tile_aoi

    tiling = tile_aoi(shapely.box(2.0, 31.0, 2.08, 31.05), scales=[40])
    provider = GEEProvider(api_url=emulator.url, credentials="anonymous", project="test-project", retry=FAST_RETRY)
    out = tmp_path / "tiles.zarr"
    run_campaign(tiling, out, temporal=WINDOWS, model=ModelSpec("test-tiny", device="cpu"), backend=provider,
                 client=client, progress=False)
    assert main(["quicklook", str(out), "--scale", "40", "--time", "2020", "--out", str(tmp_path / "ql")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed and all(p.rsplit(".", 1)[0].endswith("_2020-04-01") for p in printed)
    tifs = [p for p in printed if p.endswith(".tif")]
    png = Image.open(next(p for p in printed if p.endswith(".png")))
    assert png.text["time"] == "2020-04-01" and "window 2020-04-01..2020-06-01" in png.text["Title"]
    # Window 0 and window 1 draw their own embeddings (one PCA fit per window: other colours).
    first = main(["quicklook", str(out), "--scale", "40", "--time", "2019-04-01", "--out", str(tmp_path / "ql")])
    assert first == 0
    other = [p.replace("2020-04-01", "2019-04-01") for p in tifs]
    assert all(p in capsys.readouterr().out.split() for p in other)
    with rasterio.open(tifs[0]) as a, rasterio.open(other[0]) as b:
        ra, rb = a.read(), b.read()
    assert (ra[3] == 255).any() and (ra[3] == rb[3]).all() and not (ra[:3] == rb[:3]).all()
    assert main(["quicklook", str(out), "--scale", "40", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "time=None" in err and all(s in err for s in STARTS)
