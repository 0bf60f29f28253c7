"""Exploration helpers: PCA colours, GeoDataFrame view, similarity search, quicklook."""

import geopandas as gpd
import numpy as np
import pytest
import shapely

from rsembed_dask.store.cube import NO_DATA, OK, open_cube
from rsembed_dask.errors import SpecError
from rsembed_dask.explore.notebook import cube_info, pca_rgb, quicklook, similar, status_table, to_geodataframe
from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.providers.gee import GEEProvider
from rsembed_dask.specs import ModelSpec, TemporalSpec

from ..conftest import FAST_RETRY


def _anisotropic(n=200, d=12, seed=0):
    """Rows whose variance is largest along feature 0, then 1, then 2 (known principal axes)."""
    rng = np.random.default_rng(seed)
    scales = np.array([100.0, 10.0, 1.0] + [0.01] * (d - 3))
    return rng.normal(size=(n, d)) * scales + 5.0


def test_pca_rgb_shape_dtype_and_full_stretch():
    rgb = pca_rgb(_anisotropic())
    assert rgb.shape == (200, 3) and rgb.dtype == np.uint8
    for ch in range(3):  # 2-98 percentile stretch: both ends are reached, ~2 % clip at each
        assert rgb[:, ch].min() == 0 and rgb[:, ch].max() == 255
        assert 2 <= (rgb[:, ch] == 0).sum() <= 8 and 2 <= (rgb[:, ch] == 255).sum() <= 8


def test_pca_rgb_components_follow_variance_and_order():
    x = _anisotropic()
    rgb = pca_rgb(x).astype(float)
    # Component 0 is feature 0 (largest variance), 1 is feature 1, 2 is feature 2; the
    # sign convention makes the largest loading positive, so the correlation is positive.
    for ch in range(3):
        assert np.corrcoef(rgb[:, ch], x[:, ch])[0, 1] > 0.95
    swapped = pca_rgb(x, components=(2, 0, 1))
    base = pca_rgb(x)
    np.testing.assert_array_equal(swapped[:, 0], base[:, 2])
    np.testing.assert_array_equal(swapped[:, 1], base[:, 0])
    np.testing.assert_array_equal(swapped[:, 2], base[:, 1])
    # A component beyond the first three is a different channel.
    assert not np.array_equal(pca_rgb(x, components=(3, 1, 2))[:, 0], base[:, 0])


def test_pca_rgb_nan_rows_black_and_left_out_of_the_fit():
    x = _anisotropic()
    with_nan = np.vstack([x[:50], np.full((1, x.shape[1]), np.nan), x[50:]])
    with_nan[120, 4] = np.inf
    rgb = pca_rgb(with_nan)
    assert rgb[50].tolist() == [0, 0, 0] and rgb[120].tolist() == [0, 0, 0]
    # The other rows get the colours of a fit without the bad rows.
    keep = np.ones(len(with_nan), bool)
    keep[[50, 120]] = False
    np.testing.assert_array_equal(rgb[keep], pca_rgb(with_nan[keep]))
    assert pca_rgb(np.full((3, 4), np.nan)).tolist() == [[0, 0, 0]] * 3


def test_pca_rgb_equal_vectors_equal_colours_and_deterministic():
    x = _anisotropic(n=60)
    x[10] = x[40] = x[55]
    rgb = pca_rgb(x)
    assert rgb[10].tolist() == rgb[40].tolist() == rgb[55].tolist()
    # Row order and a global sign flip of the data do not change a row's colour
    # (the sign of each axis is fixed by its loadings, not by the data's order).
    perm = np.random.default_rng(1).permutation(len(x))
    np.testing.assert_array_equal(pca_rgb(x[perm]), rgb[perm])
    flat = pca_rgb(np.tile(np.arange(5.0), (7, 1)))
    assert (flat == 128).all()


def test_pca_rgb_scatter_path_matches_direct_svd():
    # Many rows per feature go through the (D, D) scatter matrix: same colours (+-1 rounding).
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(400, 8)) * np.arange(8, 0, -1)).astype(np.float32)
    assert x.shape[0] > 4 * x.shape[1]
    from rsembed_dask.explore import pca

    direct = pca_rgb(x)
    old = pca._SCATTER_ROWS_PER_FEATURE
    pca._SCATTER_ROWS_PER_FEATURE = 10**9
    try:
        reference = pca_rgb(x)
    finally:
        pca._SCATTER_ROWS_PER_FEATURE = old
    assert np.abs(direct.astype(int) - reference.astype(int)).max() <= 1


@pytest.mark.parametrize("vectors, components, field", [
    (np.zeros(5), (0, 1, 2), "vectors"),
    (np.zeros((4, 3, 2)), (0, 1, 2), "vectors"),
    (np.zeros((4, 8)), (0, 1), "components"),
    (np.zeros((4, 8)), (0, 1, 8), "components"),
    (np.zeros((4, 8)), (0, -1, 2), "components"),
    (np.zeros((4, 8)), (0, 1.0, 2), "components"),
])
def test_pca_rgb_bad_input(vectors, components, field):
    with pytest.raises(SpecError) as info:
        pca_rgb(vectors, components)
    assert info.value.field == field


WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")


@pytest.fixture(scope="module")
def cube_path(tmp_path_factory, client, emulator):
    """A cube written by a real campaign: 24 points x 10/40 m, test-tiny, on the emulator."""
    rng = np.random.default_rng(7)
    n = 24
    gdf = gpd.GeoDataFrame({"site": [f"site-{i:02d}" for i in range(n)]}, crs="EPSG:4326",
                           geometry=gpd.points_from_xy(3.0 + rng.uniform(0, .4, n),
                                                       31.0 + rng.uniform(0, .4, n)))
    provider = GEEProvider(api_url=emulator.url, credentials="anonymous", project="test-project",
                           retry=FAST_RETRY)
    out = tmp_path_factory.mktemp("explore") / "c.zarr"
    ds = run_campaign(gdf, out, scales=[10, 40], temporal=WINDOW, model=ModelSpec("test-tiny", device="cpu"),
                      backend=provider, client=client, chunk_size=8, id_column="site", progress=False)
    assert (ds.status.values == OK).all()
    return out


@pytest.fixture
def cube(cube_path):
    return open_cube(cube_path)


def _cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_to_geodataframe(cube, cube_path):
    gdf = to_geodataframe(cube_path, scale=40)
    assert isinstance(gdf, gpd.GeoDataFrame) and gdf.crs.to_epsg() == 4326
    assert gdf.index.name == "sample" and gdf.index.tolist() == cube.sample.values.tolist()
    assert set(gdf.status) == {"ok"}
    np.testing.assert_array_equal(gdf.lon.to_numpy(), cube.lon.values)
    assert gdf.loc["site-03", "geohash"] == str(cube.geohash.sel(sample="site-03").values)
    emb = np.stack(gdf.embedding.to_numpy())
    np.testing.assert_array_equal(emb, cube.embedding.sel(scale=40).values)
    # Geometry from the stored WKB: the input points, at the lon/lat centroids.
    g = gdf.geometry.loc["site-05"]
    assert g.geom_type == "Point"
    assert g.distance(shapely.Point(gdf.loc["site-05", ["lon", "lat"]].to_numpy(float))) < 1e-9
    with pytest.raises(SpecError, match="10, 40"):
        to_geodataframe(cube, scale=20)
    with pytest.raises(SpecError, match="scale=None"):
        to_geodataframe(cube)


def test_similar_by_id(cube):
    res = similar(cube, "site-04", k=5, scale=10)
    assert len(res) == 5 and "site-04" not in res.index
    assert res.attrs["query_sample"] == "site-04" and res.attrs["scale"] == 10.0
    sims = res.similarity.to_numpy()
    assert (np.diff(sims) <= 0).all()
    emb = cube.embedding.sel(scale=10)
    q = emb.sel(sample="site-04").values
    direct = {sid: _cos(q, emb.sel(sample=sid).values)
              for sid in cube.sample.values.tolist() if sid != "site-04"}
    best = max(direct, key=direct.get)
    assert res.index[0] == best
    assert sims[0] == pytest.approx(direct[best], abs=1e-9)
    expected = sorted(direct.values(), reverse=True)[:5]
    np.testing.assert_allclose(sims, expected, atol=1e-9)
    # Same ranking when read in small blocks; k beyond the candidates returns them all.
    small = similar(cube, "site-04", k=5, scale=10, block_size=3)
    assert small.index.tolist() == res.index.tolist()
    everything = similar(cube, "site-04", k=100, scale=10)
    assert len(everything) == 23 and everything.geometry.notna().all()


def test_similar_by_lon_lat_uses_the_nearest_sample(cube):
    lon, lat = float(cube.lon.sel(sample="site-11")), float(cube.lat.sel(sample="site-11"))
    res = similar(cube, (lon + 1e-4, lat - 1e-4), k=4, scale=40)
    assert res.attrs["query_sample"] == "site-11" and "site-11" not in res.index
    by_id = similar(cube, "site-11", k=4, scale=40)
    assert res.index.tolist() == by_id.index.tolist()
    np.testing.assert_array_equal(res.similarity, by_id.similarity)


def test_similar_refuses_bad_queries(cube):
    with pytest.raises(SpecError, match="site-") as info:
        similar(cube, "nope", scale=10)
    assert info.value.field == "query"
    with pytest.raises(SpecError, match="10, 40") as info:
        similar(cube, "site-01", scale=20)
    assert info.value.field == "scale"
    for k in (0, -3, 2.5, True):
        with pytest.raises(SpecError) as info:
            similar(cube, "site-01", k=k, scale=10)
        assert info.value.field == "k"
    with pytest.raises(SpecError) as info:
        similar(cube, "site-01", scale=10, block_size=0)
    assert info.value.field == "block_size"
    with pytest.raises(SpecError, match="lat in"):
        similar(cube, (3.0, 95.0), scale=10)
    # A query sample that is not ok at that scale (as a failed or no_data sample would be),
    # and candidates that are not ok are never returned.
    mem = cube.load()
    pos = mem.indexes["sample"].get_loc("site-02")
    mem["status"].values[pos, 0] = NO_DATA
    mem["embedding"].values[pos, 0] = np.nan
    with pytest.raises(SpecError, match="no_data") as info:
        similar(mem, "site-02", scale=10)
    assert info.value.field == "query"
    assert "site-02" not in similar(mem, "site-05", k=100, scale=10).index
    assert "site-02" in similar(mem, "site-05", k=100, scale=40).index


def test_quicklook_status_table_and_info(cube, cube_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = quicklook(cube_path, scale=40)
    coll = ax.collections[0]
    assert len(coll.get_offsets()) == 24
    expected = pca_rgb(cube.embedding.sel(scale=40).values) / 255.0
    np.testing.assert_allclose(coll.get_facecolors()[:, :3], expected, atol=1e-6)
    assert "40 m" in ax.get_title()
    plt.close(ax.figure)
    table = status_table(cube)
    assert table.index.tolist() == [10.0, 40.0] and table["ok"].tolist() == [24, 24]
    assert table[["pending", "no_data", "failed"]].to_numpy().sum() == 0
    info = cube_info(cube)
    assert info["request_account"]["sent"] >= 6 and info["last_run"]["units_done"] == 6
    assert info["campaign_spec"]["scales"] == [10.0, 40.0]
