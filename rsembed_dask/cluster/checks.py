"""Structural checks of cluster recipes: SLURM job types and dask-kubernetes manifests.

The embed (GPU) worker type must declare the Dask resource ``GPU=1`` and ask for
at most one GPU; fetch worker types must ask for none. In a Kubernetes manifest,
``GOOGLE_APPLICATION_CREDENTIALS`` must point into a volume mounted from a Secret.
Every failure is a :class:`~rsembed_dask.errors.SpecError` naming the file and key.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from dask.utils import parse_bytes

from .local import GPU_RESOURCE
from ..errors import SpecError

log = logging.getLogger(__name__)

__all__ = ["SCHEMA_KEY", "DASK_K8S_API", "SLURM_JOB_KEYS", "check_slurm_job", "check_manifest", "fail"]

SCHEMA_KEY = "rsembed_dask_cluster"
DASK_K8S_API = "kubernetes.dask.org/v1"

#: Keyword arguments of ``dask_jobqueue.SLURMCluster`` accepted in ``embed_job`` / ``fetch_job``.
SLURM_JOB_KEYS = frozenset({
    "cores", "memory", "processes", "queue", "account", "walltime", "job_cpu", "job_mem",
    "job_extra_directives", "job_directives_skip", "job_script_prologue", "worker_extra_args",
    "worker_command", "local_directory", "log_directory", "death_timeout", "nanny", "python",
    "job_name", "shebang"})
_LIST_KEYS = ("job_extra_directives", "job_directives_skip", "job_script_prologue", "worker_extra_args")
_GPU_DIRECTIVE = re.compile(r"^(?:--gres=gpu(?::[\w.-]+)?:(\d+)|--gpus(?:-per-task|-per-node)?=(?:[\w.-]+:)?(\d+)"
                            r"|-G\s*(\d+))")


def fail(source: str, key: str, value: Any, allowed: str):
    """Raise ``SpecError`` naming ``key`` of the recipe file ``source``."""
    raise SpecError(f"{source}: {key}", value, allowed)


def _gpu_count(directives: list[str]) -> int | None:
    for d in directives:
        m = _GPU_DIRECTIVE.match(d.strip())
        if m:
            return int(next(g for g in m.groups() if g is not None))
    return None


def check_slurm_job(job: Mapping[str, Any], name: str, src: str, *, embed: bool) -> None:
    """Check one job type of a ``slurm`` recipe (``SLURMCluster`` keywords).

    Parameters
    ----------
    job : Mapping
        The ``embed_job`` or ``fetch_job`` mapping.
    name : str
        Its key in the recipe, named in errors.
    src : str
        The recipe file, named in errors.
    embed : bool
        Embed job: one process, ``--resources GPU=1``, at most one GPU. Fetch job: no GPU.
    """
    key = f"{SCHEMA_KEY}.{name}"
    for k, v in job.items():
        if k not in SLURM_JOB_KEYS:
            fail(src, f"{key}.{k}", v, f"a dask_jobqueue.SLURMCluster keyword: {', '.join(sorted(SLURM_JOB_KEYS))}")
        if k in _LIST_KEYS and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            fail(src, f"{key}.{k}", v, "a list of strings")
    for k in ("cores", "memory"):
        if k not in job:
            fail(src, f"{key}.{k}", None, "a value (dask-jobqueue needs cores and memory per job)")
    if not (isinstance(job["cores"], int) and not isinstance(job["cores"], bool) and job["cores"] >= 1):
        fail(src, f"{key}.cores", job["cores"], "an integer >= 1 (threads of the worker)")
    try:
        parse_bytes(job["memory"])
    except (ValueError, TypeError):
        fail(src, f"{key}.memory", job["memory"], "a size such as '64GB'")
    if job.get("processes", 1) != 1:
        fail(src, f"{key}.processes", job["processes"], "1 (one worker process per job)")
    args = " ".join(job.get("worker_extra_args", [])).replace("--resources=", "--resources ")
    gpus = _gpu_count(job.get("job_extra_directives", []))
    if embed:
        if f"--resources {GPU_RESOURCE}=1" not in args:
            fail(src, f"{key}.worker_extra_args", job.get("worker_extra_args"),
                 "a list holding '--resources', 'GPU=1'")
        if gpus is None:
            log.warning("%s: %s requests no GPU (no --gres=gpu:1 directive): embed workers run on CPU", src, key)
        elif gpus != 1:
            fail(src, f"{key}.job_extra_directives", job["job_extra_directives"], "one GPU per job (--gres=gpu:1)")
    else:
        if f"{GPU_RESOURCE}=" in args:
            fail(src, f"{key}.worker_extra_args", job.get("worker_extra_args"), "no GPU resource on fetch workers")
        if gpus:
            fail(src, f"{key}.job_extra_directives", job["job_extra_directives"], "no GPU request for fetch jobs")


def _get(node: Any, *path: str) -> Any:
    for p in path:
        node = node.get(p) if isinstance(node, Mapping) else None
    return node


def _check_pod(doc: Mapping, path: tuple[str, ...], where: str, src: str, *, embed: bool | None) -> None:
    """Credentials come from a Secret volume; the embed group holds GPU=1, fetch groups no GPU."""
    pod, containers = _get(doc, *path), _get(doc, *path, "containers")
    if not (isinstance(containers, list) and containers and all(isinstance(c, Mapping) for c in containers)):
        fail(src, f"{where}.containers", containers, "a list of containers")
    secret_vols = {v.get("name") for v in pod.get("volumes") or [] if isinstance(v, Mapping) and "secret" in v}
    for c in containers:
        for env in [e for e in c.get("env") or [] if _get(e, "name") == "GOOGLE_APPLICATION_CREDENTIALS"]:
            mounts = [str(_get(m, "mountPath")).rstrip("/") + "/" for m in c.get("volumeMounts") or []
                      if _get(m, "name") in secret_vols and _get(m, "mountPath")]
            if not any(str(env.get("value", "")).startswith(m) and len(m) > 1 for m in mounts):
                fail(src, f"{where}.env.GOOGLE_APPLICATION_CREDENTIALS", env.get("value"),
                     "a key file under the mountPath of a volume from a Kubernetes Secret")
    if embed is None:
        return
    c = containers[0]
    args = " ".join(map(str, [*(c.get("command") or []), *(c.get("args") or [])]))
    args = args.replace("--resources=", "--resources ")
    gpu_limit = _get(c, "resources", "limits", "nvidia.com/gpu")
    if embed and f"--resources {GPU_RESOURCE}=1" not in args:
        fail(src, f"{where}.containers[0].args", c.get("args"), "worker arguments holding '--resources', 'GPU=1'")
    if embed and gpu_limit is not None and str(gpu_limit) != "1":
        fail(src, f"{where}.containers[0].resources.limits.nvidia.com/gpu", gpu_limit, "1 (one GPU per worker)")
    if embed and gpu_limit is None:
        log.warning("%s: %s has no nvidia.com/gpu limit: embed workers run on CPU", src, where)
    if not embed and (f"{GPU_RESOURCE}=" in args or gpu_limit is not None):
        fail(src, f"{where}.containers[0]", c.get("args"), "a fetch group without GPU resource or nvidia.com/gpu limit")


def check_manifest(docs: list[Any], src: str) -> tuple[Mapping[str, Any], ...]:
    """Check a dask-kubernetes manifest and return its documents.

    One ``DaskCluster`` (its worker group is the embed group) and any number of
    ``DaskWorkerGroup`` documents of that cluster (fetch groups), all
    ``kubernetes.dask.org/v1``.
    """
    kinds = [_get(d, "kind") for d in docs]
    if kinds.count("DaskCluster") != 1 or set(kinds) - {"DaskCluster", "DaskWorkerGroup"}:
        fail(src, "kind", kinds, "one DaskCluster document and any number of DaskWorkerGroup documents")
    for d in docs:
        if d.get("apiVersion") != DASK_K8S_API:
            fail(src, f"{d['kind']}.apiVersion", d.get("apiVersion"), DASK_K8S_API)
    cluster = docs[kinds.index("DaskCluster")]
    name = _get(cluster, "metadata", "name")
    if not (isinstance(name, str) and name):
        fail(src, "DaskCluster.metadata.name", name, "a non-empty string")
    _check_pod(cluster, ("spec", "scheduler", "spec"), "DaskCluster.spec.scheduler.spec", src, embed=None)
    _check_pod(cluster, ("spec", "worker", "spec"), "DaskCluster.spec.worker.spec", src, embed=True)
    for g in (d for d in docs if d["kind"] == "DaskWorkerGroup"):
        gname, where = _get(g, "metadata", "name"), f"DaskWorkerGroup {_get(g, 'metadata', 'name')!r}"
        if _get(g, "spec", "cluster") != name or not str(gname).startswith(f"{name}-"):
            fail(src, f"{where}.spec.cluster", _get(g, "spec", "cluster"),
                  f"the cluster '{name}', with a metadata.name starting with '{name}-'")
        _check_pod(g, ("spec", "worker", "spec"), f"{where}.spec.worker.spec", src, embed=False)
    return tuple(docs)
