"""Cluster recipes in cluster/: local.sh for real, `run --cluster` for local and SLURM
(jobqueue through stand-in sbatch/scancel that run each job script as a local process),
the Kubernetes manifest validated structurally, and bad recipes refused naming the key."""

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import psutil
import pytest
import yaml
from distributed import Client

from rsembed_dask.cli.commands import main
from rsembed_dask.cluster.local import WORKER_MALLOC_ENV
from rsembed_dask.cluster import load_cluster_config, start_cluster
from rsembed_dask.errors import ClusterDependencyError
from rsembed_dask.store.cube import OK, open_cube
from rsembed_dask.errors import SpecError

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "cluster"
BIN = Path(sys.executable).parent
RUN_ARGS = ["--scales", "10", "--start", "2022-01-01", "--end", "2022-02-01", "--model", "test-tiny",
            "--backend", "emulator", "--chunk-size", "4", "--no-progress"]


@pytest.fixture
def samples(tmp_path):
    rng = np.random.default_rng(7)
    gdf = gpd.GeoDataFrame(geometry=gpd.points_from_xy(3 + rng.uniform(0, .2, 8), 31 + rng.uniform(0, .2, 8)),
                           crs="EPSG:4326")
    path = tmp_path / "samples.geojson"
    gdf.to_file(path)
    return path


def _complete(cube) -> None:
    ds = open_cube(cube)
    assert ds.sizes["sample"] == 8 and (ds.status.values == OK).all()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _workers(addr_or_client):
    info = addr_or_client.scheduler_info(n_workers=-1)["workers"].values()
    return {w["name"]: w.get("resources", {}) for w in info}


@pytest.mark.timeout(180)
def test_local_sh_starts_a_cluster_that_runs_a_campaign_then_stops(tmp_path, samples):
    run_dir = tmp_path / "run"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DASK_BIN=str(BIN / "dask"))
    script = str(RECIPES / "local.sh")
    procs = []
    start = subprocess.run(["bash", script, "start", "--run-dir", str(run_dir), "--cpu", "--embed-workers", "1",
                            "--fetch-workers", "1", "--port", "0", "--no-dashboard", "--timeout", "90"],
                           env=env, capture_output=True, text=True, timeout=120)
    try:
        assert start.returncode == 0, start.stderr
        addr = (run_dir / "scheduler_address").read_text().strip()
        assert addr.startswith("tcp://127.0.0.1:")
        assert f"rsembed-dask run SAMPLES.gpkg --out CUBE.zarr --start YYYY-MM-DD --end YYYY-MM-DD " \
               f"--scheduler {addr}" in start.stdout
        pids = {f.stem: int(f.read_text()) for f in (run_dir / "pids").glob("*.pid")}
        assert set(pids) == {"scheduler", "embed-0", "fetch-0"}
        with Client(addr, timeout=30) as c:
            assert _workers(c) == {"embed-0": {"GPU": 1}, "fetch-0": {}}
        # Worker processes (the nanny's children) carry the MALLOC_* settings of cluster.py.
        worker = psutil.Process(pids["embed-0"]).children(recursive=True)[-1]
        assert {k: str(v) for k, v in WORKER_MALLOC_ENV.items()}.items() <= worker.environ().items()
        procs = [p.pid for name in pids for p in [psutil.Process(pids[name]),
                                                  *psutil.Process(pids[name]).children(recursive=True)]]

        out = tmp_path / "cube.zarr"
        run = subprocess.run([str(BIN / "rsembed-dask"), "run", str(samples), "--out", str(out), *RUN_ARGS,
                              "--scheduler", addr], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        _complete(out)
    finally:
        stop = subprocess.run(["bash", script, "stop", "--run-dir", str(run_dir)], env=env,
                              capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stderr
    assert "stopped 3 process(es)" in stop.stdout
    assert all(_gone(pid) for pid in procs), [p for p in procs if not _gone(p)]
    assert not list((run_dir / "pids").glob("*.pid")) and (run_dir / "logs" / "embed-0.log").exists()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("listed, visible, pinned, refusal", [
    (2, None, ["0", "1"], "only 2 GPU(s) found"),
    (8, "2,5", ["2", "5"], "only 2 GPU(s) found (CUDA_VISIBLE_DEVICES=2,5)"),  # a scheduler's allocation
])
def test_local_sh_pins_one_gpu_per_embed_worker(tmp_path, listed, visible, pinned, refusal):
    """GPU counting and pinning, with a stand-in `nvidia-smi -L` listing ``listed`` GPUs."""
    run_dir = tmp_path / "run"
    _fake_nvidia_smi(tmp_path / "bin", listed)
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("CUDA_VISIBLE_DEVICES", None)  # None: every GPU nvidia-smi lists
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    script = str(RECIPES / "local.sh")
    common = ["--run-dir", str(run_dir), "--port", "0", "--no-dashboard", "--fetch-workers", "0"]
    res = subprocess.run(["bash", script, "start", *common, "--embed-workers", "3"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and refusal in res.stderr
    res = subprocess.run(["bash", script, "start", *common, "--no-nanny"], env=env, capture_output=True,
                         text=True, timeout=90)
    pids = {}
    try:
        assert res.returncode == 0, res.stderr
        assert "2 GPU embed worker(s)" in res.stdout
        pids = {f.stem: int(f.read_text()) for f in (run_dir / "pids").glob("*.pid")}
        assert set(pids) == {"scheduler", "embed-0", "embed-1"}
        for i in (0, 1):
            environ = psutil.Process(pids[f"embed-{i}"]).environ()  # --no-nanny: the worker itself
            assert environ["CUDA_VISIBLE_DEVICES"] == pinned[i]
            assert {k: str(v) for k, v in WORKER_MALLOC_ENV.items()}.items() <= environ.items()
    finally:
        subprocess.run(["bash", script, "stop", "--run-dir", str(run_dir)], env=env, timeout=60)
    assert all(_gone(p) for p in pids.values())


def _fake_nvidia_smi(bin_dir: Path, n: int) -> None:
    """A stand-in ``nvidia-smi`` whose ``-L`` lists ``n`` GPUs (like the real one, it ignores CUDA_VISIBLE_DEVICES)."""
    bin_dir.mkdir(exist_ok=True)
    lines = "".join(f"echo 'GPU {i}: NVIDIA H200 (UUID: GPU-{i:04x})'\n" for i in range(n))
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\n" + lines)
    (bin_dir / "nvidia-smi").chmod(0o755)


def test_visible_gpus_reads_cuda_visible_devices_as_cuda_does():
    from rsembed_dask.cluster.local import visible_gpus

    assert visible_gpus(None, 3) == ["0", "1", "2"]
    assert visible_gpus("2,5", 8) == ["2", "5"]
    assert visible_gpus(" 5 , 02 ", 8) == ["5", "2"]
    assert visible_gpus("GPU-ab12,MIG-cd34", 2) == ["GPU-ab12", "MIG-cd34"]
    assert visible_gpus("1,-1,3", 4) == ["1"]  # CUDA stops at the first invalid entry
    assert visible_gpus("1,9", 4) == ["1"]  # no GPU 9 on a 4-GPU machine
    assert visible_gpus("", 4) == [] and visible_gpus("-1", 4) == [] and visible_gpus("0", 0) == []


@pytest.mark.timeout(120)
def test_local_cluster_pins_each_embed_worker_to_one_listed_gpu(tmp_path, monkeypatch):
    """CUDA_VISIBLE_DEVICES=5,2 on an 8-GPU machine: two embed worker processes, on GPU 5 and on GPU 2."""
    from rsembed_dask.cluster import local_cluster
    from rsembed_dask.cluster.local import embed_workers

    _fake_nvidia_smi(tmp_path / "bin", 8)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,2")
    with pytest.raises(SpecError, match="n_gpus=3.*2 GPU.*5,2"):
        local_cluster(n_gpus=3, n_fetch_workers=0, processes=True, dashboard_address=None)
    cluster = local_cluster(n_fetch_workers=1, processes=True, dashboard_address=None)
    try:
        with Client(cluster) as c:
            c.wait_for_workers(3, timeout=60)
            assert _workers(c) == {"embed-0": {"GPU": 1}, "embed-1": {"GPU": 1}, "fetch-0": {}}
            seen = c.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
            names = {a: w["name"] for a, w in c.scheduler_info(n_workers=-1)["workers"].items()}
            assert {names[a]: v for a, v in seen.items()} == {"embed-0": "5", "embed-1": "2", "fetch-0": ""}
            assert len(embed_workers(c)) == 2
    finally:
        cluster.close()


def test_local_sh_refuses_bad_flags(tmp_path):
    res = subprocess.run(["bash", str(RECIPES / "local.sh"), "start", "--run-dir", str(tmp_path), "--fetch-workers",
                          "many"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "--fetch-workers=many" in res.stderr
    assert not (tmp_path / "pids").exists()


def _rerun_starts_no_cluster(samples, out, recipe, monkeypatch):
    """A complete cube: running again starts no cluster (no jobs queued for nothing)."""
    import rsembed_dask.cluster.recipes as cc

    started = []
    real = cc.start_cluster
    monkeypatch.setattr(cc, "start_cluster", lambda cfg: started.append(cfg) or real(cfg))
    assert main(["run", str(samples), "--out", str(out), *RUN_ARGS, "--cluster", str(recipe)]) == 0
    assert started == []


@pytest.mark.timeout(180)
def test_run_cluster_local_recipe(tmp_path, samples, monkeypatch):
    recipe = yaml.safe_load((RECIPES / "local.yaml").read_text())
    recipe["rsembed_dask_cluster"].update(embed_workers=1, fetch_workers=1, dashboard_address="127.0.0.1:0")
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "cube.zarr"
    assert main(["run", str(samples), "--out", str(out), *RUN_ARGS, "--cluster", str(path)]) == 0
    _complete(out)
    _rerun_starts_no_cluster(samples, out, path, monkeypatch)


FAKE_SBATCH = """#!/usr/bin/env bash
# Stand-in for sbatch: run the job script as a local process group, print SLURM's answer.
set -e
d="{jobs}"; n=$$  # unique among concurrent submissions
cp "$1" "$d/job-$n.sh"
setsid bash "$d/job-$n.sh" > "$d/job-$n.log" 2>&1 < /dev/null &
echo $! > "$d/job-$n.pid"
echo "Submitted batch job $n"
"""
FAKE_SCANCEL = """#!/usr/bin/env bash
for id in "$@"; do echo "$id" >> "{jobs}/cancelled"; kill -TERM -- "-$(cat "{jobs}/job-$id.pid")" || true; done
"""


def test_slurm_recipe_declares_gpu_and_fetch_job_types():
    cfg = load_cluster_config(RECIPES / "slurm.yaml")
    o = cfg.options
    assert cfg.kind == "slurm" and o["embed_jobs"] >= 1 and o["fetch_jobs"] >= 1
    assert o["embed_job"]["processes"] == 1 and o["fetch_job"]["processes"] == 1
    assert "--gres=gpu:1" in o["embed_job"]["job_extra_directives"]
    assert " ".join(o["embed_job"]["worker_extra_args"]) == "--resources GPU=1"
    assert "GPU" not in " ".join(o["fetch_job"].get("worker_extra_args", []))
    assert not any("gpu" in d for d in o["fetch_job"].get("job_extra_directives", []))


def test_slurm_job_scripts():
    pytest.importorskip("dask_jobqueue")
    from rsembed_dask.cluster.recipes import slurm_job_scripts

    scripts = slurm_job_scripts(load_cluster_config(RECIPES / "slurm.yaml"), "tcp://10.0.0.1:8786")
    embed, fetch = scripts["embed"], scripts["fetch"]
    assert "#SBATCH --gres=gpu:1" in embed and "#SBATCH -p gpu" in embed
    worker_line = next(line for line in embed.splitlines() if "distributed.cli.dask_worker" in line)
    assert "--resources GPU=1" in worker_line and "--name embed-0" in worker_line
    assert "--nthreads 2" in worker_line and "--nanny" in worker_line
    assert "gres" not in fetch and "GPU" not in fetch and "#SBATCH -p cpu" in fetch
    for script in (embed, fetch):
        line = next(x for x in script.splitlines() if "PRE_SPAWN_ENVIRON" in x)
        assert ast.literal_eval(line.split("=", 1)[1].strip('"')) == WORKER_MALLOC_ENV


@pytest.mark.timeout(240)
def test_run_cluster_slurm_submits_gpu_and_fetch_jobs(tmp_path, samples, monkeypatch):
    pytest.importorskip("dask_jobqueue")
    jobs, fake_bin = tmp_path / "jobs", tmp_path / "bin"
    jobs.mkdir()
    fake_bin.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        (fake_bin / name).write_text(text.format(jobs=jobs))
        (fake_bin / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    recipe = yaml.safe_load((RECIPES / "slurm.yaml").read_text())
    r = recipe["rsembed_dask_cluster"]
    r.update(embed_jobs=1, fetch_jobs=1, wait_timeout_s=120,
             scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"})
    for job in (r["embed_job"], r["fetch_job"]):
        job.update(cores=1, memory="2GB", job_script_prologue=[], log_directory=None, death_timeout=30,
                   local_directory=str(tmp_path / "worker-space"))
        job["worker_extra_args"] = job.get("worker_extra_args", []) + ["--host", "127.0.0.1"]
    path = tmp_path / "slurm.yaml"
    path.write_text(yaml.safe_dump(recipe))

    cfg = load_cluster_config(path)
    with start_cluster(cfg) as client:
        assert _workers(client) == {"embed-0": {"GPU": 1}, "fetch-0": {}}
        scripts = {p.name: p.read_text() for p in jobs.glob("job-*.sh")}
        assert sum("#SBATCH --gres=gpu:1" in s and "--resources GPU=1" in s for s in scripts.values()) == 1
        assert sum("gres" not in s and "GPU" not in s for s in scripts.values()) == 1
    ids = sorted(p.stem[4:] for p in jobs.glob("job-*.pid"))
    assert len(ids) == 2 and sorted((jobs / "cancelled").read_text().split()) == ids

    out = tmp_path / "cube.zarr"
    assert main(["run", str(samples), "--out", str(out), *RUN_ARGS, "--cluster", str(path)]) == 0
    _complete(out)
    _rerun_starts_no_cluster(samples, out, path, monkeypatch)
    pids = [int(p.read_text()) for p in jobs.glob("job-*.pid")]
    assert len(pids) == 4 and len((jobs / "cancelled").read_text().split()) == 4
    psutil.wait_procs([psutil.Process(p) for p in pids if not _gone(p)], timeout=20)
    assert all(_gone(p) for p in pids)


def test_kubernetes_manifest_gpu_group_fetch_group_and_secret():
    docs = list(yaml.safe_load_all((RECIPES / "kubernetes.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["DaskCluster", "DaskWorkerGroup"]
    assert {d["apiVersion"] for d in docs} == {"kubernetes.dask.org/v1"}
    cluster, fetch = docs
    name = cluster["metadata"]["name"]
    assert fetch["spec"]["cluster"] == name and fetch["metadata"]["name"].startswith(name + "-")

    gpu = cluster["spec"]["worker"]["spec"]["containers"][0]
    args = [str(a) for a in gpu["args"]]
    assert args[args.index("--resources") + 1] == "GPU=1"
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    cpu = fetch["spec"]["worker"]["spec"]["containers"][0]
    assert "--resources" not in cpu["args"] and "nvidia.com/gpu" not in cpu["resources"].get("limits", {})

    pods = [cluster["spec"]["scheduler"]["spec"], cluster["spec"]["worker"]["spec"], fetch["spec"]["worker"]["spec"]]
    for pod in pods:
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        for c in pod["containers"]:
            env = {e["name"]: e.get("value") for e in c["env"]}
            key = env["GOOGLE_APPLICATION_CREDENTIALS"]
            mount = next(m for m in c["volumeMounts"] if m["mountPath"] == os.path.dirname(key))
            assert secrets[mount["name"]] == "earthengine-key" and mount["readOnly"] is True
            if "worker" in c["args"]:
                assert ast.literal_eval(env["DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"]) == WORKER_MALLOC_ENV
    readme = (RECIPES / "README.md").read_text()
    assert "kubectl create secret generic earthengine-key --from-file=key.json=" in readme

    cfg = load_cluster_config(RECIPES / "kubernetes.yaml")
    assert cfg.kind == "kubernetes" and len(cfg.documents) == 2 and cfg.manifest == "kubernetes.yaml"


def test_kubernetes_recipe_pointing_at_the_manifest(tmp_path):
    path = tmp_path / "k8s.yaml"
    path.write_text(yaml.safe_dump({"rsembed_dask_cluster": {
        "kind": "kubernetes", "manifest": str(RECIPES / "kubernetes.yaml"), "namespace": "campaigns"}}))
    cfg = load_cluster_config(path)
    assert cfg.namespace == "campaigns" and cfg.documents[0]["kind"] == "DaskCluster"
    if importlib.util.find_spec("dask_kubernetes") is None:  # the heavy optional package is not installed here
        with pytest.raises(ClusterDependencyError, match=r"pip install 'rsembed_dask\[cluster\]'"):
            with start_cluster(cfg):
                pass


def _k8s(edit):
    docs = list(yaml.safe_load_all((RECIPES / "kubernetes.yaml").read_text()))
    edit(docs)
    return yaml.safe_dump_all(docs)


def _slurm(edit):
    recipe = yaml.safe_load((RECIPES / "slurm.yaml").read_text())
    edit(recipe["rsembed_dask_cluster"])
    return yaml.safe_dump(recipe)


def _gpu_container(docs):
    return docs[0]["spec"]["worker"]["spec"]["containers"][0]


BAD = {
    "unknown key": ("rsembed_dask_cluster: {kind: local, fetch_worker: 2}", "rsembed_dask_cluster.fetch_worker"),
    "bad kind": ("rsembed_dask_cluster: {kind: pbs}", "rsembed_dask_cluster.kind"),
    "bad value": ("rsembed_dask_cluster: {kind: local, fetch_workers: -1}", "rsembed_dask_cluster.fetch_workers"),
    "bool is no count": ("rsembed_dask_cluster: {kind: local, embed_workers: true}", "embed_workers"),
    "top level": ("cluster: {kind: local}", "top level"),
    "not yaml": ("rsembed_dask_cluster: [kind: local", "cluster"),
    "missing key": (lambda: _slurm(lambda r: r.pop("embed_jobs")), "rsembed_dask_cluster.embed_jobs"),
    "missing cores": (lambda: _slurm(lambda r: r["fetch_job"].pop("cores")), "fetch_job.cores"),
    "bad memory": (lambda: _slurm(lambda r: r["embed_job"].update(memory="lots")), "embed_job.memory"),
    "jobqueue keyword": (lambda: _slurm(lambda r: r["embed_job"].update(gpus=1)), "embed_job.gpus"),
    "no GPU resource": (lambda: _slurm(lambda r: r["embed_job"].pop("worker_extra_args")),
                        "embed_job.worker_extra_args"),
    "two GPUs a job": (lambda: _slurm(lambda r: r["embed_job"].update(job_extra_directives=["--gres=gpu:2"])),
                       "embed_job.job_extra_directives"),
    "two processes": (lambda: _slurm(lambda r: r["embed_job"].update(processes=2)), "embed_job.processes"),
    "GPU fetch job": (lambda: _slurm(lambda r: r["fetch_job"].update(worker_extra_args=["--resources", "GPU=1"])),
                      "fetch_job.worker_extra_args"),
    "gres fetch job": (lambda: _slurm(lambda r: r["fetch_job"].update(job_extra_directives=["--gres=gpu:1"])),
                       "fetch_job.job_extra_directives"),
    "k8s no GPU=1": (lambda: _k8s(lambda d: _gpu_container(d).update(args=["dask", "worker"])),
                     "DaskCluster.spec.worker.spec.containers[0].args"),
    "k8s GPU fetch": (lambda: _k8s(lambda d: d[1]["spec"]["worker"]["spec"]["containers"][0]["resources"]
                                   ["limits"].update({"nvidia.com/gpu": 1})), "DaskWorkerGroup 'rsembed-dask-fetch'"),
    "k8s key not from a Secret": (lambda: _k8s(lambda d: _gpu_container(d).update(volumeMounts=[])),
                                  "GOOGLE_APPLICATION_CREDENTIALS"),
    "k8s foreign group": (lambda: _k8s(lambda d: d[1]["spec"].update(cluster="other")), "spec.cluster"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_recipes_name_the_file_and_key(tmp_path, case):
    text, key = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text() if callable(text) else text)
    with pytest.raises(SpecError) as err:
        load_cluster_config(path)
    assert key in err.value.field and (str(path) in str(err.value) or err.value.value == str(path))


def test_cli_refuses_a_bad_recipe_before_running(tmp_path, samples, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rsembed_dask_cluster: {kind: local, fetch_workers: many}")
    assert main(["run", str(samples), "--out", str(tmp_path / "c.zarr"), *RUN_ARGS, "--cluster", str(bad)]) == 2
    assert "rsembed_dask_cluster.fetch_workers='many'" in capsys.readouterr().err
    assert not (tmp_path / "c.zarr").exists()
    assert main(["run", str(samples), "--out", str(tmp_path / "c.zarr"), *RUN_ARGS, "--cluster",
                 str(tmp_path / "missing.yaml")]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["run", str(samples), "--out", "c.zarr", *RUN_ARGS, "--cluster", str(bad), "--scheduler", "tcp://x:1"])
    assert exc.value.code == 2
