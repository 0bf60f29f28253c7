"""Cluster recipes as YAML: ``rsembed-dask run --cluster FILE.yaml``.

A recipe file holds one mapping under ``rsembed_dask_cluster:`` whose ``kind`` is
``local``, ``slurm`` or ``kubernetes`` (see ``cluster/README.md`` for every key).
A dask-kubernetes manifest (``DaskCluster`` plus ``DaskWorkerGroup`` documents)
is also accepted as is. :func:`start_cluster` starts what the file describes and
yields a ``distributed.Client``; leaving the ``with`` block stops it.

Examples
--------
>>> cfg = load_cluster_config("cluster/local.yaml")           # doctest: +SKIP
>>> with start_cluster(cfg) as client:                        # doctest: +SKIP
...     run_campaign(gdf, "cube.zarr", client=client, ...)
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import os
import time
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .local import GPU_RESOURCE, WORKER_MALLOC_ENV, connect, embed_workers
from .checks import DASK_K8S_API, SCHEMA_KEY, check_manifest, check_slurm_job, fail
from ..errors import ClusterDependencyError, RsEmbedError, SpecError

log = logging.getLogger(__name__)

__all__ = ["ClusterConfig", "ClusterDependencyError", "load_cluster_config", "start_cluster",
           "slurm_job_scripts", "SCHEMA_KEY", "KINDS"]

KINDS = ("local", "slurm", "kubernetes")
_REQUIRED = object()

#: The nanny overwrites inherited MALLOC_* with its pre-spawn defaults; per-key DASK_... variables
#: are lower-cased by dask. One dict-valued variable sets them with their case intact.
PRESPAWN_ENV_VAR = "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"
PRESPAWN_ENV_VALUE = "{" + ", ".join(f"'{k}': {v}" for k, v in WORKER_MALLOC_ENV.items()) + "}"


def _is_int(v, lo):
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_str(v):
    return isinstance(v, str) and v != ""


_CHECKS = {  # name: (test, what is allowed)
    "int>=0": (lambda v: _is_int(v, 0), "an integer >= 0"),
    "int>=1": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "int>=1|null": (lambda v: v is None or _is_int(v, 1), "an integer >= 1, or null"),
    "seconds": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "seconds > 0"),
    "str": (_is_str, "a non-empty string"),
    "str|null": (lambda v: v is None or _is_str(v), "a non-empty string, or null"),
    "str|int": (lambda v: _is_str(v) or _is_int(v, 1), "a size such as '16GB', 'auto' or bytes"),
    "mapping": (lambda v: isinstance(v, Mapping), "a mapping"),
}
#: kind -> key -> (default or _REQUIRED, check)
SCHEMA: dict[str, dict[str, tuple[Any, str]]] = {
    "local": {"embed_workers": (None, "int>=1|null"), "fetch_workers": (1, "int>=0"),
              "fetch_worker_threads": (4, "int>=1"), "memory_limit": ("auto", "str|int"),
              "dashboard_address": (":8787", "str|null"), "host": ("127.0.0.1", "str")},
    "slurm": {"embed_jobs": (_REQUIRED, "int>=1"), "fetch_jobs": (1, "int>=0"),
              "embed_job": (_REQUIRED, "mapping"), "fetch_job": ({}, "mapping"),
              "scheduler_options": ({}, "mapping"), "interface": (None, "str|null"),
              "wait_for_embed_workers": (1, "int>=1"), "wait_timeout_s": (3600, "seconds")},
    "kubernetes": {"manifest": (_REQUIRED, "str"), "namespace": (None, "str|null"),
                   "wait_for_embed_workers": (1, "int>=1"), "wait_timeout_s": (1800, "seconds")},
}


@dataclass(frozen=True)
class ClusterConfig:
    """A validated cluster recipe.

    Attributes
    ----------
    kind : str
        ``"local"``, ``"slurm"`` or ``"kubernetes"``.
    source : str
        The file it was read from (named in errors).
    options : Mapping
        Every key of the kind with defaults filled in (read-only).
    manifest : tuple of Mapping
        Kubernetes only: the ``DaskCluster`` and ``DaskWorkerGroup`` documents.
    """

    kind: str
    source: str
    options: Mapping[str, Any] = field(default_factory=dict)
    manifest: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "options", types.MappingProxyType(dict(self.options)))


def _read_yaml(path: Path) -> list[Any]:
    import yaml

    if not path.is_file():
        raise SpecError("cluster", str(path), "an existing YAML cluster recipe (e.g. cluster/local.yaml)")
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise SpecError("cluster", str(path), f"a valid YAML file ({e})") from None


def load_cluster_config(path: str | os.PathLike) -> ClusterConfig:
    """Read and validate a cluster recipe.

    Parameters
    ----------
    path : str or path
        A YAML file with a top-level ``rsembed_dask_cluster:`` mapping, or a
        dask-kubernetes manifest (``apiVersion: kubernetes.dask.org/v1``).

    Returns
    -------
    ClusterConfig

    Raises
    ------
    SpecError
        Naming the file and the key: an unknown or missing key, a bad value.
    """
    path = Path(path)
    src = str(path)
    docs = _read_yaml(path)
    if docs and all(isinstance(d, Mapping) and d.get("apiVersion") == DASK_K8S_API for d in docs):
        return ClusterConfig("kubernetes", src, _options("kubernetes", {"manifest": path.name}, src),
                             check_manifest(docs, src))
    if len(docs) != 1 or not isinstance(docs[0], Mapping) or set(docs[0]) != {SCHEMA_KEY}:
        top = sorted(docs[0]) if len(docs) == 1 and isinstance(docs[0], Mapping) else f"{len(docs)} document(s)"
        fail(src, "top level", top, f"one mapping with the single key '{SCHEMA_KEY}', "
                                     f"or a dask-kubernetes manifest ({DASK_K8S_API})")
    raw = docs[0][SCHEMA_KEY]
    if not isinstance(raw, Mapping):
        fail(src, SCHEMA_KEY, raw, "a mapping with 'kind' and the keys of that kind")
    kind = raw.get("kind")
    if kind not in KINDS:
        fail(src, f"{SCHEMA_KEY}.kind", kind, " | ".join(KINDS))
    opts = _options(kind, {k: v for k, v in raw.items() if k != "kind"}, src)
    if kind == "slurm":
        check_slurm_job(opts["embed_job"], "embed_job", src, embed=True)
        if opts["fetch_jobs"]:
            check_slurm_job(opts["fetch_job"], "fetch_job", src, embed=False)
        return ClusterConfig(kind, src, opts)
    if kind == "kubernetes":
        mpath = (path.parent / opts["manifest"]) if not os.path.isabs(opts["manifest"]) else Path(opts["manifest"])
        return ClusterConfig(kind, src, opts, check_manifest(_read_yaml(mpath), str(mpath)))
    return ClusterConfig(kind, src, opts)


def _options(kind: str, given: Mapping[str, Any], src: str) -> dict[str, Any]:
    schema = SCHEMA[kind]
    for key in given:
        if key not in schema:
            fail(src, f"{SCHEMA_KEY}.{key}", given[key], f"a key of kind '{kind}': {', '.join(sorted(schema))}")
    opts = {}
    for key, (default, check) in schema.items():
        test, allowed = _CHECKS[check]
        if key not in given:
            if default is _REQUIRED:
                fail(src, f"{SCHEMA_KEY}.{key}", None, f"{allowed} (required for kind '{kind}')")
            opts[key] = copy.deepcopy(default)
        elif not test(given[key]):
            fail(src, f"{SCHEMA_KEY}.{key}", given[key], allowed)
        else:
            opts[key] = copy.deepcopy(given[key])
    return opts


def _import(kind: str, module: str, attr: str):
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise ClusterDependencyError(f"kind '{kind}' needs {module} ({e}): "
                                     "pip install 'rsembed_dask[cluster]'") from None


def _slurm_kwargs(job: Mapping[str, Any]) -> dict[str, Any]:
    """jobqueue keywords for one job type: one process, MALLOC_* set for the worker."""
    kw = copy.deepcopy(dict(job))
    kw["processes"] = 1
    prologue = list(kw.get("job_script_prologue", []))
    if not any(PRESPAWN_ENV_VAR in line or "MALLOC_" in line for line in prologue):
        if kw.get("nanny", True):
            prologue.append(f'export {PRESPAWN_ENV_VAR}="{PRESPAWN_ENV_VALUE}"')
        else:
            prologue += [f"export {k}={v}" for k, v in WORKER_MALLOC_ENV.items()]
    kw["job_script_prologue"] = prologue
    return kw


def slurm_job_scripts(config: ClusterConfig, scheduler: str = "tcp://SCHEDULER:8786") -> dict[str, str]:
    """The batch scripts a ``slurm`` recipe submits (``{"embed": ..., "fetch": ...}``), for review."""
    job_cls = _import("slurm", "dask_jobqueue.slurm", "SLURMJob")
    out = {"embed": job_cls(scheduler, name="embed-0", **_slurm_kwargs(config.options["embed_job"])).job_script()}
    if config.options["fetch_jobs"]:
        out["fetch"] = job_cls(scheduler, name="fetch-0", **_slurm_kwargs(config.options["fetch_job"])).job_script()
    return out


def _wait_for_embed_workers(client, n: int, timeout_s: float) -> None:
    deadline, have = time.monotonic() + timeout_s, -1
    while (now := len(embed_workers(client))) < n:
        if now != have:
            log.info("%d of %d embed worker(s) joined; waiting (jobs/pods may be queued)", now, n)
            have = now
        if time.monotonic() > deadline:
            raise RsEmbedError(f"{now} of {n} embed worker(s) (resource {GPU_RESOURCE}=1) joined within "
                               f"{timeout_s:g}s: check the job queue or pods (wait_timeout_s raises the limit)")
        time.sleep(1.0)


@contextlib.contextmanager
def start_cluster(config: ClusterConfig) -> Iterator[Any]:
    """Start the cluster a recipe describes; yield a ``distributed.Client``; stop it on exit.

    ``local`` runs :func:`rsembed_dask.cluster.local.local_cluster`. ``slurm`` runs one
    ``dask_jobqueue.SLURMCluster`` whose default job type is the embed (GPU) job, and
    adds the fetch jobs to the same cluster as worker specs of their own options.
    ``kubernetes`` creates the ``DaskCluster`` with ``dask_kubernetes.operator.KubeCluster``
    and adds each ``DaskWorkerGroup`` of the manifest. Both wait (``wait_timeout_s``)
    for ``wait_for_embed_workers`` workers with the ``GPU`` resource.
    """
    from distributed import Client

    o = config.options
    log.info("starting a %s cluster from %s", config.kind, config.source)
    if config.kind == "local":
        with connect(None, n_gpus=o["embed_workers"], n_fetch_workers=o["fetch_workers"],
                     fetch_threads=o["fetch_worker_threads"], memory_limit=o["memory_limit"],
                     dashboard_address=o["dashboard_address"], host=o["host"]) as client:
            yield client
        return
    if config.kind == "slurm":
        slurm_cls = _import("slurm", "dask_jobqueue", "SLURMCluster")
        cluster = slurm_cls(n_workers=0, interface=o["interface"], scheduler_options=dict(o["scheduler_options"]),
                            **_slurm_kwargs(o["embed_job"]))
        try:
            embed_opts = cluster.new_spec["options"]
            base = {k: embed_opts[k] for k in ("config_name", "interface", "protocol", "security") if k in embed_opts}
            for i in range(o["embed_jobs"]):
                cluster.worker_spec[f"embed-{i}"] = {"cls": cluster.job_cls, "options": dict(embed_opts)}
            for i in range(o["fetch_jobs"]):
                cluster.worker_spec[f"fetch-{i}"] = {"cls": cluster.job_cls,
                                                     "options": {**base, **_slurm_kwargs(o["fetch_job"])}}
            cluster.scale(jobs=len(cluster.worker_spec))  # submits every job spec above
            with Client(cluster) as client:
                _wait_for_embed_workers(client, o["wait_for_embed_workers"], o["wait_timeout_s"])
                yield client
        finally:
            cluster.close()
        return
    kube_cls = _import("kubernetes", "dask_kubernetes.operator", "KubeCluster")
    spec = copy.deepcopy(dict(next(d for d in config.manifest if d["kind"] == "DaskCluster")))
    name = spec["metadata"]["name"]
    cluster = kube_cls(custom_cluster_spec=spec, namespace=o["namespace"] or spec["metadata"].get("namespace"))
    try:
        for g in config.manifest:
            if g["kind"] == "DaskWorkerGroup":
                cluster.add_worker_group(g["metadata"]["name"][len(name) + 1:],
                                         custom_spec=copy.deepcopy(dict(g["spec"]["worker"])))
        with Client(cluster) as client:
            _wait_for_embed_workers(client, o["wait_for_embed_workers"], o["wait_timeout_s"])
            yield client
    finally:
        cluster.close()
