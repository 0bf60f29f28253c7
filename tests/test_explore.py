"""Exploration helpers: PCA colours, GeoDataFrame view, similarity search, quicklook."""

import numpy as np
import pytest

from rsembed_dask.errors import SpecError
from rsembed_dask.explore import pca_rgb


# --------------------------------------------------------------------------- pca_rgb
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
    from rsembed_dask import explore

    direct = pca_rgb(x)
    old = explore._SCATTER_ROWS_PER_FEATURE
    explore._SCATTER_ROWS_PER_FEATURE = 10**9
    try:
        reference = pca_rgb(x)
    finally:
        explore._SCATTER_ROWS_PER_FEATURE = old
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
