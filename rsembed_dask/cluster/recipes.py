"""Cluster recipes as YAML: ``rsembed-dask run --cluster FILE.yaml``.

A recipe file holds one mapping under ``rsembed_dask_cluster:`` whose ``kind`` is
``local``, ``slurm`` or ``kubernetes`` (see ``cluster/README.md`` for every key).
A dask-kubernetes manifest (``DaskCluster`` plus ``DaskWorkerGroup`` documents)
is also accepted as is. Each kind is a frozen dataclass (:class:`LocalRecipe`,
:class:`SlurmRecipe`, :class:`KubernetesRecipe`) whose fields are the recipe's keys,
checked at construction with the specs' wording (a :class:`~rsembed_dask.errors.SpecError`
naming the file and the key). :func:`start_cluster` starts what the file describes and
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
import dataclasses
import importlib
import logging
import os
import time
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

from ..errors import ClusterDependencyError, RsEmbedError, SpecError
from .checks import DASK_K8S_API, SCHEMA_KEY, check_manifest, check_slurm_job, fail
from .local import GPU_RESOURCE, WORKER_MALLOC_ENV, connect, embed_workers

log = logging.getLogger(__name__)

__all__ = ["Recipe", "LocalRecipe", "SlurmRecipe", "KubernetesRecipe", "ClusterConfig", "ClusterDependencyError",
           "load_cluster_config", "start_cluster", "slurm_job_scripts", "SCHEMA_KEY", "KINDS"]

KINDS = ("local", "slurm", "kubernetes")

#: The nanny overwrites inherited MALLOC_* with its pre-spawn defaults; per-key DASK_... variables
#: are lower-cased by dask. One dict-valued variable sets them with their case intact.
PRESPAWN_ENV_VAR = "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"
PRESPAWN_ENV_VALUE = "{" + ", ".join(f"'{k}': {v}" for k, v in WORKER_MALLOC_ENV.items()) + "}"


def _is_int(v: Any, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_str(v: Any) -> bool:
    return isinstance(v, str) and v != ""


@dataclass(frozen=True)
class _Allowed:
    """What a recipe key accepts: a test and its words for the error message."""

    test: Callable[[Any], bool]
    words: str


COUNT = _Allowed(lambda v: _is_int(v, 1), "an integer >= 1")
COUNT_OR_ZERO = _Allowed(lambda v: _is_int(v, 0), "an integer >= 0")
COUNT_OR_NULL = _Allowed(lambda v: v is None or _is_int(v, 1), "an integer >= 1, or null")
SECONDS = _Allowed(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "seconds > 0")
TEXT = _Allowed(_is_str, "a non-empty string")
TEXT_OR_NULL = _Allowed(lambda v: v is None or _is_str(v), "a non-empty string, or null")
SIZE = _Allowed(lambda v: _is_str(v) or _is_int(v, 1), "a size such as '16GB', 'auto' or bytes")
MAPPING = _Allowed(lambda v: isinstance(v, Mapping), "a mapping")


def _key(allowed: _Allowed, default: Any = dataclasses.MISSING) -> Any:
    """A recipe key: its default (none: required) and what it accepts."""
    if isinstance(default, dict):
        return field(default_factory=lambda: types.MappingProxyType(dict(default)), metadata={"allowed": allowed})
    return field(default=default, metadata={"allowed": allowed})


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """What every recipe kind has: the file it was read from (named in errors).

    Subclasses are frozen dataclasses, one per kind; their fields are the recipe's keys,
    each checked at construction (:class:`~rsembed_dask.errors.SpecError` naming the file
    and the key, as the specs do).
    """

    source: str
    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            allowed = f.metadata.get("allowed")
            value = getattr(self, f.name)
            if allowed is not None and not allowed.test(value):
                fail(self.source, f"{SCHEMA_KEY}.{f.name}", value, allowed.words)
            if isinstance(value, Mapping) and not isinstance(value, types.MappingProxyType):
                object.__setattr__(self, f.name, types.MappingProxyType(copy.deepcopy(dict(value))))

    @classmethod
    def keys(cls) -> list[str]:
        """The keys of this kind (its fields but ``source``)."""
        return [f.name for f in dataclasses.fields(cls) if "allowed" in f.metadata]

    @classmethod
    def from_mapping(cls, given: Mapping[str, Any], source: str, **extra: Any) -> Recipe:
        """The recipe of the keys ``given`` (without ``kind``), read from ``source``.

        Raises
        ------
        SpecError
            An unknown key (the message lists the kind's keys), a missing required key,
            or a bad value; naming the file and the key.
        """
        keys = cls.keys()
        for key in given:
            if key not in keys:
                fail(source, f"{SCHEMA_KEY}.{key}", given[key], f"a key of kind '{cls.kind}': {', '.join(sorted(keys))}")
        for f in dataclasses.fields(cls):
            if f.name in keys and f.name not in given and f.default is dataclasses.MISSING \
                    and f.default_factory is dataclasses.MISSING:
                fail(source, f"{SCHEMA_KEY}.{f.name}", None, f"{f.metadata['allowed'].words} (required for kind "
                                                             f"'{cls.kind}')")
        return cls(source=source, **{k: copy.deepcopy(v) for k, v in given.items()}, **extra)

    @property
    def options(self) -> Mapping[str, Any]:
        """Every key of the recipe with defaults filled in (read-only)."""
        return types.MappingProxyType({k: getattr(self, k) for k in self.keys()})

    def start(self) -> contextlib.AbstractContextManager[Any]:
        """Start the cluster; a context manager yielding a ``distributed.Client`` (see :func:`start_cluster`)."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class LocalRecipe(Recipe):
    """``kind: local``: a local cluster started in this process (:func:`~rsembed_dask.cluster.local.local_cluster`)."""

    kind: ClassVar[str] = "local"
    embed_workers: int | None = _key(COUNT_OR_NULL, None)
    fetch_workers: int = _key(COUNT_OR_ZERO, 1)
    fetch_worker_threads: int = _key(COUNT, 4)
    memory_limit: str | int = _key(SIZE, "auto")
    dashboard_address: str | None = _key(TEXT_OR_NULL, ":8787")
    host: str = _key(TEXT, "127.0.0.1")

    @contextlib.contextmanager
    def start(self) -> Iterator[Any]:
        with connect(None, n_gpus=self.embed_workers, n_fetch_workers=self.fetch_workers,
                     fetch_threads=self.fetch_worker_threads, memory_limit=self.memory_limit,
                     dashboard_address=self.dashboard_address, host=self.host) as client:
            yield client


@dataclass(frozen=True, kw_only=True)
class SlurmRecipe(Recipe):
    """``kind: slurm``: GPU embed jobs and CPU fetch jobs of one ``dask_jobqueue.SLURMCluster``."""

    kind: ClassVar[str] = "slurm"
    embed_jobs: int = _key(COUNT)
    embed_job: Mapping[str, Any] = _key(MAPPING)
    fetch_jobs: int = _key(COUNT_OR_ZERO, 1)
    fetch_job: Mapping[str, Any] = _key(MAPPING, {})
    scheduler_options: Mapping[str, Any] = _key(MAPPING, {})
    interface: str | None = _key(TEXT_OR_NULL, None)
    wait_for_embed_workers: int = _key(COUNT, 1)
    wait_timeout_s: float = _key(SECONDS, 3600)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_slurm_job(self.embed_job, "embed_job", self.source, embed=True)
        if self.fetch_jobs:
            check_slurm_job(self.fetch_job, "fetch_job", self.source, embed=False)

    @contextlib.contextmanager
    def start(self) -> Iterator[Any]:
        from distributed import Client

        slurm_cls = _import("slurm", "dask_jobqueue", "SLURMCluster")
        cluster = slurm_cls(n_workers=0, interface=self.interface, scheduler_options=dict(self.scheduler_options),
                            **_slurm_kwargs(self.embed_job))
        try:
            embed_opts = cluster.new_spec["options"]
            base = {k: embed_opts[k] for k in ("config_name", "interface", "protocol", "security") if k in embed_opts}
            for i in range(self.embed_jobs):
                cluster.worker_spec[f"embed-{i}"] = {"cls": cluster.job_cls, "options": dict(embed_opts)}
            for i in range(self.fetch_jobs):
                cluster.worker_spec[f"fetch-{i}"] = {"cls": cluster.job_cls,
                                                     "options": {**base, **_slurm_kwargs(self.fetch_job)}}
            cluster.scale(jobs=len(cluster.worker_spec))  # submits every job spec above
            with Client(cluster) as client:
                _wait_for_embed_workers(client, self.wait_for_embed_workers, self.wait_timeout_s)
                yield client
        finally:
            cluster.close()


@dataclass(frozen=True, kw_only=True)
class KubernetesRecipe(Recipe):
    """``kind: kubernetes``: a dask-kubernetes manifest (``DaskCluster`` + ``DaskWorkerGroup`` documents).

    ``manifest`` is the manifest file as given (relative to the recipe's directory);
    ``documents`` its checked documents.
    """

    kind: ClassVar[str] = "kubernetes"
    manifest: str = _key(TEXT)
    namespace: str | None = _key(TEXT_OR_NULL, None)
    wait_for_embed_workers: int = _key(COUNT, 1)
    wait_timeout_s: float = _key(SECONDS, 1800)
    documents: tuple[Mapping[str, Any], ...] = ()

    @contextlib.contextmanager
    def start(self) -> Iterator[Any]:
        from distributed import Client

        kube_cls = _import("kubernetes", "dask_kubernetes.operator", "KubeCluster")
        spec = copy.deepcopy(dict(next(d for d in self.documents if d["kind"] == "DaskCluster")))
        name = spec["metadata"]["name"]
        cluster = kube_cls(custom_cluster_spec=spec, namespace=self.namespace or spec["metadata"].get("namespace"))
        try:
            for g in self.documents:
                if g["kind"] == "DaskWorkerGroup":
                    cluster.add_worker_group(g["metadata"]["name"][len(name) + 1:],
                                             custom_spec=copy.deepcopy(dict(g["spec"]["worker"])))
            with Client(cluster) as client:
                _wait_for_embed_workers(client, self.wait_for_embed_workers, self.wait_timeout_s)
                yield client
        finally:
            cluster.close()


#: A validated cluster recipe, of one of the kinds.
ClusterConfig = Union[LocalRecipe, SlurmRecipe, KubernetesRecipe]
RECIPES: dict[str, type[Recipe]] = {cls.kind: cls for cls in (LocalRecipe, SlurmRecipe, KubernetesRecipe)}


def _read_yaml(path: Path) -> list[Any]:
    import yaml

    if not path.is_file():
        raise SpecError("cluster", str(path), "an existing YAML cluster recipe (e.g. cluster/local.yaml)")
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise SpecError("cluster", str(path), f"a valid YAML file ({e})") from None


def load_cluster_config(path: str | os.PathLike) -> Recipe:
    """Read and validate a cluster recipe.

    Parameters
    ----------
    path : str or path
        A YAML file with a top-level ``rsembed_dask_cluster:`` mapping, or a
        dask-kubernetes manifest (``apiVersion: kubernetes.dask.org/v1``).

    Returns
    -------
    LocalRecipe, SlurmRecipe or KubernetesRecipe

    Raises
    ------
    SpecError
        Naming the file and the key: an unknown or missing key, a bad value.
    """
    path = Path(path)
    src = str(path)
    docs = _read_yaml(path)
    if docs and all(isinstance(d, Mapping) and d.get("apiVersion") == DASK_K8S_API for d in docs):
        return KubernetesRecipe.from_mapping({"manifest": path.name}, src, documents=check_manifest(docs, src))
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
    given = {k: v for k, v in raw.items() if k != "kind"}
    if kind == "kubernetes" and _is_str(given.get("manifest")):
        m = given["manifest"]
        mpath = Path(m) if os.path.isabs(m) else path.parent / m
        return KubernetesRecipe.from_mapping(given, src, documents=check_manifest(_read_yaml(mpath), str(mpath)))
    return RECIPES[kind].from_mapping(given, src)


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


def slurm_job_scripts(config: SlurmRecipe, scheduler: str = "tcp://SCHEDULER:8786") -> dict[str, str]:
    """The batch scripts a ``slurm`` recipe submits, for review.

    Parameters
    ----------
    config : SlurmRecipe
        The recipe.
    scheduler : str
        The scheduler address written into the scripts.

    Returns
    -------
    dict of str to str
        ``{"embed": ..., "fetch": ...}``: each job type's script.
    """
    if not isinstance(config, SlurmRecipe):
        raise SpecError("config", f"a {config.kind} recipe", "a slurm recipe")
    job_cls = _import("slurm", "dask_jobqueue.slurm", "SLURMJob")
    out = {"embed": job_cls(scheduler, name="embed-0", **_slurm_kwargs(config.embed_job)).job_script()}
    if config.fetch_jobs:
        out["fetch"] = job_cls(scheduler, name="fetch-0", **_slurm_kwargs(config.fetch_job)).job_script()
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


def start_cluster(config: Recipe) -> contextlib.AbstractContextManager[Any]:
    """Start the cluster a recipe describes; a context manager yielding a ``distributed.Client``.

    Leaving the ``with`` block stops it. ``local`` runs
    :func:`rsembed_dask.cluster.local.local_cluster`. ``slurm`` runs one
    ``dask_jobqueue.SLURMCluster`` whose default job type is the embed (GPU) job, and
    adds the fetch jobs to the same cluster as worker specs of their own options.
    ``kubernetes`` creates the ``DaskCluster`` with ``dask_kubernetes.operator.KubeCluster``
    and adds each ``DaskWorkerGroup`` of the manifest. Both wait (``wait_timeout_s``)
    for ``wait_for_embed_workers`` workers with the ``GPU`` resource.

    Parameters
    ----------
    config : LocalRecipe, SlurmRecipe or KubernetesRecipe
        A recipe, as :func:`load_cluster_config` reads it.

    Returns
    -------
    context manager
        Yields a ``distributed.Client`` connected to the started cluster.

    Raises
    ------
    ClusterError
        The cluster's library is missing, or its GPU workers do not join in time.
    """
    log.info("starting a %s cluster from %s", config.kind, config.source)
    return config.start()
