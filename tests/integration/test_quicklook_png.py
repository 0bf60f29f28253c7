"""Quicklook PNGs a person can read: upsampled (nearest) to >= 512 px, no data transparent,
a title, a legend and a scale bar; read back from the file."""

import numpy as np
import pytest
import zarr
from PIL import Image

from rsembed_dask.explore import grid_quicklook, map_png, scalar_rgba
from rsembed_dask.explore.picture import MIN_LONG_SIDE
from rsembed_dask.store.layout import OK

from ..emb_stores import make_tiling


def _cells(img: np.ndarray, layout, h: int, w: int) -> np.ndarray:
    """The RGBA of each cell's centre pixel."""
    f = layout.factor
    ys = layout.y0 + np.arange(h) * f + f // 2
    xs = layout.x0 + np.arange(w) * f + f // 2
    return img[ys[:, None], xs[None, :]]


def test_map_png_upsamples_keeps_no_data_transparent_and_draws_a_title(tmp_path):
    rng = np.random.default_rng(0)
    rgba = np.zeros((5, 9, 4), np.uint8)
    rgba[..., :3] = rng.integers(0, 256, (5, 9, 3))
    rgba[..., 3] = 255
    rgba[1, 2, 3] = rgba[4, 8, 3] = 0
    rgba[rgba[..., 3] == 0, :3] = 0
    layout = map_png(rgba, tmp_path / "m.png", "EPSG32631, 20 m", cell_m=4480.0, channels=("PC1", "PC2", "PC3"))
    img = np.asarray(Image.open(tmp_path / "m.png"))
    assert img.shape == (layout.height, layout.width, 4)
    assert 9 * layout.factor >= MIN_LONG_SIDE and 8 * layout.factor < MIN_LONG_SIDE  # the smallest such factor
    np.testing.assert_array_equal(_cells(img, layout, 5, 9), rgba)
    # Every pixel of a cell is its colour (nearest, no blur), and only the no-data cells are transparent.
    f = layout.factor
    block = img[layout.y0 + f:layout.y0 + 2 * f, layout.x0 + 2 * f:layout.x0 + 3 * f]
    assert (block[..., 3] == 0).all()
    assert (img[..., 3] == 0).sum() == 2 * f * f
    # The title band holds dark text; the legend band too.
    assert (img[:layout.y0, :, :3] < 100).all(axis=2).sum() > 50
    assert (img[layout.y0 + 5 * f:, :, :3] < 100).all(axis=2).sum() > 50


def test_scalar_maps_get_a_colour_bar(tmp_path):
    values = np.linspace(0, 0.02, 12).reshape(3, 4)
    values[0, 0] = np.nan
    rgba, lo, hi = scalar_rgba(values)
    assert rgba[0, 0, 3] == 0 and (rgba[..., 3].ravel()[1:] == 255).all() and (lo, hi) == (values[0, 1], 0.02)
    layout = map_png(rgba, tmp_path / "c.png", "change 2019 -> 2024", colour_bar=(lo, hi, "cosine distance"))
    img = np.asarray(Image.open(tmp_path / "c.png"))
    assert max(3, 4) * layout.factor >= MIN_LONG_SIDE and img[..., 3].min() == 0


def test_grid_quicklook_png_is_readable(tmp_path):
    store = tmp_path / "t.zarr"
    make_tiling(store)
    files = grid_quicklook(store, 40, tmp_path / "ql")
    pngs = sorted(f for f in files if f.endswith(".png"))
    assert pngs
    root = zarr.open_group(str(store), mode="r", zarr_format=3)
    for png in pngs:
        zone = png.rsplit("_", 1)[1][:-4]
        status = np.asarray(root[f"40m/{zone}/status"][...])
        h, w = status.shape
        img = np.asarray(Image.open(png))
        assert img.shape[2] == 4
        factor = -(-MIN_LONG_SIDE // max(h, w))
        assert max(h, w) * factor >= MIN_LONG_SIDE and img.shape[1] >= max(w * factor, 420)
        # Transparent exactly where a cell has no embedding, each such cell a factor x factor block.
        assert (img[..., 3] == 0).sum() == int((status != OK).sum()) * factor * factor
        assert (status != OK).any()
        tif = png[:-4] + ".tif"
        assert tif in files


@pytest.mark.parametrize("shape", [(0, 3, 4), (3, 3, 3)])
def test_map_png_refuses_what_is_not_a_grid(tmp_path, shape):
    from rsembed_dask.errors import SpecError

    with pytest.raises(SpecError, match=r"\(H, W, 4\) uint8"):
        map_png(np.zeros(shape, np.uint8), tmp_path / "x.png", "x")
