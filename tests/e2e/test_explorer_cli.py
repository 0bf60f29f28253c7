"""``rsembed-dask explore`` as a user runs it: a process that prints its address, serves, stops on Ctrl-C,
and leaves the cube byte for byte as it was."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import shapely

pytest.importorskip("fastapi")

from rsembed_dask.specs import CampaignSpec, ModelSpec, OutputSpec, TemporalSpec  # noqa: E402
from rsembed_dask.store.cube import OK, Cube  # noqa: E402

EXE = os.path.join(os.path.dirname(sys.executable), "rsembed-dask")
N, D = 200, 16


@pytest.fixture(scope="module")
def int8_cube(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "int8.zarr"
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(2, 3, N), rng.uniform(30, 31, N)
    spec = CampaignSpec(temporal=TemporalSpec.range("2022-01-01", "2022-02-01"), model=ModelSpec("test-tiny"),
                        output=OutputSpec.pooled(dtype="int8"), scales=(10.0,), chunk_size=64)
    cube = Cube.create_or_open(path, spec=spec, ids=[f"id-{i}" for i in range(N)], lon=lon, lat=lat,
                               geohash=[f"gh{i}" for i in range(N)],
                               wkb=[shapely.Point(x, y).wkb for x, y in zip(lon, lat)], embed_dim=D)
    emb = rng.normal(size=(N, D)).astype(np.float32)
    for start in range(0, N, 64):
        m = min(64, N - start)
        cube.write_unit(start, start + m, 0, embedding=emb[start:start + m], status=np.full(m, OK, np.int8),
                        input_res_m=np.full(m, 10.0, np.float32), valid_fraction=np.ones(m, np.float32),
                        error=[""] * m)
    return path


def _digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _call(url: str, method: str = "GET", body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def test_explore_prints_its_address_serves_and_stops_on_ctrl_c_leaving_the_cube_untouched(int8_cube):
    before = _digest(int8_cube)
    proc = subprocess.Popen([EXE, "explore", str(int8_cube), "--no-browser", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.fullmatch(r"explorer of int8\.zarr: (http://127\.0\.0\.1:(\d+)/)  \(Ctrl-C to stop\)\n", line)
        assert m, line
        url = m.group(1)
        info = _call(url + "api/info")
        assert info["kind"] == "samples" and info["scales"] == [10.0] and info["places"] == N
        fc = _call(url + "api/similar?lon=2.5&lat=30.5&k=3")
        assert len(fc["features"]) == 4
        _call(url + "api/labels", "PUT", {"labels": [{"id": "id-1", "label": "positive"},
                                                     {"id": "id-2", "label": "negative"}]})
        assert len(_call(url + "api/predict")["features"]) == N
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130  # the CLI's exit status for Ctrl-C, after a clean shutdown
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert _digest(int8_cube) == before  # opened read-only: not a byte written


def test_explore_errors_are_one_line_with_exit_2(tmp_path, int8_cube):
    r = subprocess.run([EXE, "explore", str(tmp_path / "nope.zarr"), "--no-browser"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("rsembed-dask explore: error:")
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = subprocess.run([EXE, "explore", str(int8_cube), "--no-browser", "--port", "70000"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "--port" in r.stderr and len(r.stderr.strip().splitlines()) == 1
