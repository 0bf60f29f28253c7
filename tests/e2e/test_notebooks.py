"""The notebooks run top to bottom (nbclient, this venv's python) on the Earth Engine emulator.

01 runs a campaign on a local cluster; 02 explores a cube (building the same small
one itself when 01's is not there) and saves the PCA quicklook to
docs/img/explore_pca.png (shown in the README); 03 submits a campaign
to `dask scheduler` / `dask worker` processes whose address is injected into its
`parameters` cell; 04 tiles an AOI, plans, runs a tiling campaign and saves the grid
quicklooks to docs/img/tiling_quicklook.png. The committed notebooks must carry no outputs.
"""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

from distributed import Client  # noqa: E402

from rsembed_dask.cluster.local import embed_workers  # noqa: E402
from rsembed_dask.store.cube import OK, open_cube  # noqa: E402

from ..conftest import dask_processes  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NB_DIR = REPO / "notebooks"
NOTEBOOKS = ["01_quickstart.ipynb", "02_explore_cube.ipynb", "03_cluster_submission.ipynb",
             "04_tiling.ipynb"]
PCA_PNG = REPO / "docs" / "img" / "explore_pca.png"
TILING_PNG = REPO / "docs" / "img" / "tiling_quicklook.png"
EXECUTED = REPO / "build" / "notebooks"  # executed copies, with outputs, for the docs site
CELL_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory):
    """A `python3` kernelspec that runs this interpreter, first on JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (rsembed_dask tests)", "language": "python"}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root))
        mp.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        yield root


def inject_parameters(nb, params: dict) -> None:
    """Papermill-style: append ``name = value`` lines to the cell tagged ``parameters``."""
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "each notebook has exactly one cell tagged 'parameters'"
    cell = cells[0]
    for name in params:
        assert f"\n{name} = " in "\n" + cell.source, f"{name} is not a parameter of this notebook"
    lines = [f"{name} = {value!r}" for name, value in params.items()]
    cell.source = cell.source + "\n\n# injected by tests/e2e/test_notebooks.py\n" + "\n".join(lines)


def execute(name: str, workdir: Path, **params):
    """Run notebook ``name`` in ``workdir`` with ``params``; returns it executed and its wall time."""
    nb = nbformat.read(NB_DIR / name, as_version=4)
    inject_parameters(nb, params)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(workdir)}})
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    elapsed = time.perf_counter() - t0
    (workdir / name).write_text(nbformat.writes(nb))  # kept for debugging a failure
    EXECUTED.mkdir(parents=True, exist_ok=True)
    (EXECUTED / name).write_text(nbformat.writes(nb))  # rendered by the docs (docs/hooks/notebooks.py)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    return nb, elapsed


def text_of(nb) -> str:
    """All stream and text/plain outputs of the executed notebook."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif "data" in out and "text/plain" in out.data:
                parts.append(out.data["text/plain"])
    return "\n".join(parts)


def mime_count(nb, mime: str) -> int:
    return sum(1 for c in nb.cells for o in c.get("outputs", []) if mime in o.get("data", {}))


def check_kernel_python(nb) -> None:
    assert f"python: {sys.executable}" in text_of(nb), "the kernel must run this venv's python"


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, kernel_path):
    workdir = tmp_path_factory.mktemp("nb01")
    nb, elapsed = execute("01_quickstart.ipynb", workdir, n_samples=40, scales=[10, 40])
    print(f"01_quickstart: {elapsed:.1f}s")
    return nb, workdir


@pytest.mark.timeout(300)
def test_01_quickstart(quickstart):
    nb, workdir = quickstart
    check_kernel_python(nb)
    cube = open_cube(workdir / "quickstart.zarr")
    assert cube.sizes["sample"] == 40 and cube.scale.values.tolist() == [10.0, 40.0]
    assert (cube.status.values == OK).all()
    assert np.isfinite(cube.embedding.values).all() and cube.sizes["feature"] == 384  # test-small
    text = text_of(nb)
    assert "Dask dashboard: http://" in text
    assert "cells ok 80, no_data 0, failed 0" in text
    # tqdm.auto shows a Jupyter widget in a kernel, not a text bar.
    assert mime_count(nb, "application/vnd.jupyter.widget-view+json") >= 1


@pytest.mark.timeout(300)
def test_02_explore_cube(tmp_path, kernel_path):
    # Standalone: no cube from 01 in its directory, so it builds the same small cube itself
    # (beside 01's cube, the notebook only opens it).
    PCA_PNG.parent.mkdir(parents=True, exist_ok=True)
    before = PCA_PNG.stat().st_mtime_ns if PCA_PNG.exists() else None
    nb, elapsed = execute("02_explore_cube.ipynb", tmp_path, query="site-007", k=5, pca_png=str(PCA_PNG))
    print(f"02_explore_cube: {elapsed:.1f}s")
    check_kernel_python(nb)
    cube = open_cube(tmp_path / "quickstart.zarr")
    assert cube.sizes["sample"] == 40 and (cube.status.values == OK).all()
    text = text_of(nb)
    assert "5 samples most similar to site-007 at 10 m" in text
    assert "nearest sample site-007" in text  # the (lon, lat) query found the sample next to it
    assert "last run: 80 embeddings" in text
    assert mime_count(nb, "image/png") >= 4  # PCA panels, similarity map, scales, account
    # The figure the README shows was written by this run.
    assert PCA_PNG.exists() and PCA_PNG.stat().st_mtime_ns != before
    assert PCA_PNG.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and PCA_PNG.stat().st_size > 10_000


@pytest.mark.timeout(300)
def test_03_cluster_submission(tmp_path, kernel_path, emulator):
    with dask_processes(n_gpu=1, n_fetch=1) as (addr, _):
        nb, elapsed = execute("03_cluster_submission.ipynb", tmp_path, scheduler_address=addr,
                              n_samples=16, ee_url=emulator.url)
        with Client(addr) as c:
            gpu_workers = embed_workers(c)
    print(f"03_cluster_submission: {elapsed:.1f}s")
    check_kernel_python(nb)
    text = text_of(nb)
    assert f"scheduler: {addr}" in text and "Dask dashboard: http://" in text
    assert "fetch-only workers:   ['tcp://" in text
    cube = open_cube(tmp_path / "cluster.zarr")
    assert cube.sizes["sample"] == 16 and (cube.status.values == OK).all()
    # The campaign ran on the `dask worker --resources GPU=1` process, not in the kernel.
    run = cube.attrs["last_run"]
    assert run["actors_started"] == 1 and run["units_done"] == 4
    assert run["workers_used"] == gpu_workers and len(gpu_workers) == 1


@pytest.mark.timeout(300)
def test_04_tiling(tmp_path, kernel_path, emulator):
    from rsembed_dask.campaign.jobs import grids_synced
    from rsembed_dask.sampling.tiling import tile_aoi

    aoi = (3.0, 31.0, 3.5, 31.3)
    before = TILING_PNG.stat().st_mtime_ns if TILING_PNG.exists() else None
    nb, elapsed = execute("04_tiling.ipynb", tmp_path, aoi=aoi, scales=[20, 40], ee_url=emulator.url,
                          quicklook_png=str(TILING_PNG))
    print(f"04_tiling: {elapsed:.1f}s")
    check_kernel_python(nb)
    tiling = tile_aoi(aoi, scales=[20, 40])
    store = tmp_path / "tiles.zarr"
    assert grids_synced(str(store))
    tree = open_cube(store)
    for s, table in zip(tiling.scales, tiling.tables):
        assert (tree[f"samples/{s:g}m"].to_dataset().status.values == OK).all()
        assert (tmp_path / "quicklooks" / f"quicklook_{s:g}m_EPSG32631.tif").is_file()
    text = text_of(nb)
    assert str(tiling) in text and "requests, coalesced" in text
    n20 = len(tiling.tables[0])
    assert f"tiles ok: {n20} of {n20}" in text and "CRS: EPSG:32631" in text
    assert TILING_PNG.exists() and TILING_PNG.stat().st_mtime_ns != before


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_are_stripped(name):
    nb = nbformat.read(NB_DIR / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert "widgets" not in nb.metadata
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    assert any(c.cell_type == "markdown" for c in nb.cells)


def test_strip_outputs_script(tmp_path, quickstart):
    executed = quickstart[1] / "01_quickstart.ipynb"  # as run by the quickstart fixture
    nb_path = tmp_path / "run.ipynb"
    shutil.copy(executed, nb_path)
    script = [sys.executable, str(NB_DIR / "strip_outputs.py")]
    assert subprocess.run([*script, "--check", str(nb_path)], capture_output=True).returncode == 1
    done = subprocess.run([*script, str(nb_path)], capture_output=True, text=True)
    assert done.returncode == 0 and "stripped" in done.stdout
    assert subprocess.run([*script, "--check", str(nb_path)], capture_output=True).returncode == 0
    stripped = nbformat.read(nb_path, as_version=4)
    original = nbformat.read(NB_DIR / "01_quickstart.ipynb", as_version=4)
    def sources(nb):  # the parameters cell differs: the fixture injected values into it
        return [c.source for c in nb.cells if "parameters" not in c.metadata.get("tags", [])]

    assert sources(stripped) == sources(original)
    assert all(c.outputs == [] and c.execution_count is None for c in stripped.cells if c.cell_type == "code")
    assert "widgets" not in stripped.metadata
