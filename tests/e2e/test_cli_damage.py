"""Damage named and one-line errors through the CLI (issue 21): exit codes and messages.

One campaign is run through ``rsembed-dask run`` (emulator, default local cluster); every
case works on a copy of its cube. Damage is done from outside, as it happens: bytes of a
chunk file overwritten, the root ``zarr.json`` deleted, a disk that fills (a patched
store on the PYTHONPATH of the run's processes, via ``sitecustomize``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import geopandas as gpd
import numpy as np
import pytest

from rsembed_dask.cli.commands import main
from rsembed_dask.errors import CubeDamagedError
from rsembed_dask.explore import similar
from rsembed_dask.store.cube import OK, open_cube
from rsembed_dask.store.layout import ROOT_COPY_KEY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IDS = [f"plot-{i}" for i in range(6)]


def _run_args(samples, out, *extra) -> list[str]:
    return ["run", str(samples), "--out", str(out), "--scales", "10", "--start", "2022-01-01",
            "--end", "2022-02-01", "--model", "test-tiny", "--backend", "emulator", "--id-column", "plot",
            "--chunk-size", "4", "--no-progress", *extra]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """``(samples, cube, printed)``: a finished cube of 6 samples at 10 m (chunks of 4) and what ``run`` printed."""
    tmp = tmp_path_factory.mktemp("damage")
    rng = np.random.default_rng(3)
    gdf = gpd.GeoDataFrame({"plot": IDS}, geometry=gpd.points_from_xy(3 + rng.uniform(0, .2, 6),
                                                                      31 + rng.uniform(0, .2, 6)), crs="EPSG:4326")
    samples = tmp / "samples.geojson"
    gdf.to_file(samples)
    out = tmp / "cube.zarr"
    proc = subprocess.run([sys.executable, "-m", "rsembed_dask.cli", *_run_args(samples, out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr
    return samples, out, proc


def _copy(campaign, tmp_path):
    dst = tmp_path / "cube.zarr"
    shutil.copytree(campaign[1], dst)
    return dst


def _corrupt(path, rel="embedding/c/1/0/0") -> None:
    """Flip a byte in the middle of a stored chunk file (rows 4-5 of the cube: chunk 1)."""
    f = path / rel
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _ids_of_chunk(path, chunk: int) -> list[str]:
    return [str(v) for v in open_cube(path).sample.values[chunk * 4:(chunk + 1) * 4]]


@pytest.mark.timeout(300)
def test_plain_run_says_what_it_did_not_read(campaign):
    assert "not read: the data chunks of finished units" in campaign[2].stdout
    assert "inspect --verify" in campaign[2].stdout
    # the copy of the root attributes, written at creation
    copy = json.loads(json.loads((campaign[1] / "scale" / "zarr.json").read_text())["attributes"][ROOT_COPY_KEY])
    assert copy["spec_hash"] == open_cube(campaign[1]).attrs["spec_hash"]
    assert ROOT_COPY_KEY not in open_cube(campaign[1]).scale.attrs


@pytest.mark.timeout(300)
def test_export_and_stac_name_a_damaged_chunk(campaign, tmp_path, capsys):
    cube = _copy(campaign, tmp_path)
    _corrupt(cube)
    rc = main(["export", str(cube), str(tmp_path / "x.parquet")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and line.startswith("rsembed-dask export: error: cube ")
    assert "array 'embedding' at scale 10 m" in line and "checksum" in line and "--repair" in line
    assert repr(_ids_of_chunk(cube, 1)[0]) in line and "rows 4-5" in line
    assert not (tmp_path / "x.parquet").exists() and not list(tmp_path.glob("x.parquet*"))
    rc = main(["stac", str(cube), "--out", str(tmp_path / "stac")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and "array 'embedding' at scale 10 m" in line and "--repair" in line
    assert not (tmp_path / "stac" / "collection.json").exists()  # nothing published
    with pytest.raises(CubeDamagedError, match="array 'embedding' at scale 10 m"):
        similar(str(cube), _ids_of_chunk(cube, 0)[0], k=3)


@pytest.mark.timeout(300)
def test_export_and_stac_into_a_folder_that_cannot_be_written(campaign, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rc = main(["export", str(campaign[1]), str(blocker / "out.parquet")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and line.startswith("rsembed-dask export: error: cannot write ") and str(blocker) in line
    rc = main(["stac", str(campaign[1]), "--out", str(blocker / "stac")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and line.startswith("rsembed-dask stac: error: cannot write ") and str(blocker) in line


@pytest.mark.timeout(300)
def test_repair_rebuilds_a_deleted_root_and_a_damaged_chunk(campaign, tmp_path, capsys):
    samples = campaign[0]
    cube = _copy(campaign, tmp_path)
    want = json.loads((campaign[1] / "zarr.json").read_text())["attributes"]
    _corrupt(cube)
    (cube / "zarr.json").unlink()
    rc = main(["export", str(cube), str(tmp_path / "x.parquet")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and "root zarr.json is missing" in line and "--repair" in line
    rc = main(_run_args(samples, cube))  # a plain run refuses it the same way, touching nothing
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and "root zarr.json is missing" in line and not (cube / "zarr.json").exists()
    rc = main(_run_args(samples, cube, "--repair"))
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    got = json.loads((cube / "zarr.json").read_text())["attributes"]
    for key in ("spec_hash", "campaign_spec", "created", "versions", "sample_segments"):
        assert got[key] == want[key], key
    ds = open_cube(cube)
    assert (ds.status.values == OK).all() and np.isfinite(ds.embedding.values).all()
    assert main(["export", str(cube), str(tmp_path / "x.parquet")]) == 0


@pytest.mark.timeout(300)
def test_invalid_rows_hint_names_the_flag(tmp_path, capsys):
    gdf = gpd.GeoDataFrame({"plot": ["a", "b"]}, geometry=gpd.points_from_xy([3.0, 3.1], [31.0, 95.0]))
    samples = tmp_path / "bad.geojson"
    gdf.to_file(samples)
    rc = main(_run_args(samples, tmp_path / "c.zarr"))
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and "--skip-invalid" in line and "on_invalid" not in line


SITE_FULL_DISK = textwrap.dedent('''
    """Test fault: the cube's disk fills once the first data chunk is written (ENOSPC after that)."""
    import errno
    import os

    from zarr.storage import LocalStore

    _set = LocalStore.set

    async def _set_until_full(self, key, value, *args, **kwargs):
        if key.startswith("embedding/c/") and key != "embedding/c/0/0/0":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(str(self.root), key))
        return await _set(self, key, value, *args, **kwargs)

    LocalStore.set = _set_until_full
''')


@pytest.mark.timeout(300)
def test_a_disk_that_fills_mid_run_is_one_line(campaign, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE_FULL_DISK)
    out = tmp_path / "full.zarr"
    proc = subprocess.run([sys.executable, "-m", "rsembed_dask.cli", *_run_args(campaign[0], out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"})
    line = _one_line(proc.stderr)
    assert proc.returncode == 2
    assert line.startswith("rsembed-dask run: error: cannot write unit") and "No space left on device" in line
    assert "run the same command again" in line
