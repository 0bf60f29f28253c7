"""Where a campaign runs: local clusters, cluster recipes and their checks."""

from .local import (GPU_RESOURCE, WORKER_MALLOC_ENV, ClusterRateLimit, ClusterSemaphore, check_scheduler, connect, count_gpus,
                    embed_workers, fetch_workers, local_cluster, WorkerInfo, worker_roster)
from .recipes import ClusterConfig, load_cluster_config, slurm_job_scripts, start_cluster

__all__ = [
    "local_cluster", "connect", "check_scheduler", "embed_workers", "fetch_workers", "count_gpus",
    "ClusterSemaphore", "ClusterRateLimit", "GPU_RESOURCE", "WorkerInfo", "worker_roster", "WORKER_MALLOC_ENV",
    "ClusterConfig", "load_cluster_config", "start_cluster", "slurm_job_scripts",
]
