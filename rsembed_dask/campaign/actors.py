"""ScaleMAE held by Dask actors: one per GPU worker, loaded once, placed explicitly.

Each embed worker (declaring ``GPU=1``) gets one :class:`EmbedActor`. Dask
actor methods do not resolve futures, and actor futures do not work with
``as_completed``, so pixels reach the model through an ordinary task pinned to
the actor's worker (with a share of its ``GPU`` resource; forwards one at a time),
which looks the actor instance up in its own worker and calls it in-process:
no pixels are serialised to reach the model.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ..errors import ModelError
from ..specs import ModelSpec

__all__ = ["EmbedActor", "start_actor", "submit_actor", "describe_actor", "local_actor"]

log = logging.getLogger(__name__)


class EmbedActor:
    """A loaded :class:`~rsembed_dask.embed.model.ScaleMAEEmbedder` living on one worker.

    Parameters
    ----------
    spec : ModelSpec
        Weights and runtime options; loaded once, in ``__init__``.
    cpu_threads : int, optional
        Torch threads when running on CPU (default: every core this process may use).
        Dask's nanny starts workers with ``OMP_NUM_THREADS=MKL_NUM_THREADS=1``, which
        would leave a CPU model on one core; the actor owns its worker's model, so it
        sets the count.
    """

    def __init__(self, spec: ModelSpec, cpu_threads: int | None = None):
        import torch

        from ..embed.model import ScaleMAEEmbedder

        t0 = time.perf_counter()
        self.embedder = ScaleMAEEmbedder(spec)
        if self.embedder.device.type == "cpu":
            torch.set_num_threads(cpu_threads or len(os.sched_getaffinity(0)))
        self.load_s = time.perf_counter() - t0
        self.batches = 0
        log.info("EmbedActor loaded %s on %s in %.1fs (pid %d)", spec.model_id, self.embedder.device,
                 self.load_s, os.getpid())

    def describe(self) -> dict[str, Any]:
        """Where and what: pid, device, model id, how it runs, load time, calls.

        ``precision`` and ``batch_size`` are the resolved ones (``dtype="auto"`` and
        ``batch_size=None`` say what this device made of them); a runner can record them.
        """
        import torch

        emb = self.embedder
        return {"pid": os.getpid(), "device": str(emb.device),
                "torch_threads": torch.get_num_threads(),
                "model_id": emb.spec.model_id, "precision": emb.precision, "batch_size": emb.batch_size,
                "overlap": emb.overlap, "compile": emb.spec.compile,
                "fused_attention_layers": emb.fused_attention_layers,
                "load_s": self.load_s, "batches": self.batches}

    def embed(self, images, scale_m, *, output, roi=None, uint8=False):
        """Embed raw chips, or uint8 images (see :meth:`ScaleMAEEmbedder.embed`)."""
        self.batches += 1
        return self.embedder.embed(images, scale_m, output=output, roi=roi, uint8=uint8)


#: Dask priority of an actor's creation (and of the runner's look at it): ahead of fetches.
ACTOR_PRIORITY = 100


def submit_actor(client, spec: ModelSpec, worker: str):
    """Start creating an :class:`EmbedActor` on ``worker``; returns its future at once.

    The model loads on the worker meanwhile; the future's key is the actor's key
    (:func:`local_actor`). Poll it (``status``): a runner keeps feeding the other actors.
    """
    # Before any fetch waiting for a thread of that worker (fetches may run on GPU workers).
    return client.submit(EmbedActor, spec, actor=True, workers=[worker], allow_other_workers=False,
                         pure=False, priority=ACTOR_PRIORITY, key=f"embed-actor-{worker.rsplit(':', 1)[-1]}-{time.monotonic_ns()}")


def start_actor(client, spec: ModelSpec, worker: str, *, timeout_s: float = 600.0):
    """Create an :class:`EmbedActor` on ``worker`` and wait until its model is loaded.

    Returns the ``distributed.Actor`` handle (blocking: the campaign runner uses
    :func:`submit_actor` and polls instead).
    """
    from distributed import TimeoutError as DaskTimeoutError

    fut = submit_actor(client, spec, worker)
    try:
        actor = fut.result(timeout=timeout_s)
    except DaskTimeoutError:
        raise ModelError(f"the model {spec.model_id!r} did not load on {worker} within {timeout_s:g}s") from None
    log.info("actor ready on %s: %s", worker, actor.describe().result())
    return actor


def describe_actor(actor_key: str) -> dict[str, Any]:
    """In a task on the actor's worker: :meth:`EmbedActor.describe` of the local actor ``actor_key``."""
    return local_actor(actor_key).describe()


def local_actor(actor_key: str) -> EmbedActor:
    """The actor instance with key ``actor_key``, from inside a task on its worker.

    This is what distributed itself does for actor-to-actor calls on one worker.
    Tasks get the key, not the ``Actor`` handle: a handle argument would make the
    task depend on the actor's key, and fail rather than wait when it is lost.
    """
    from distributed import get_worker

    worker = get_worker()
    try:
        actor = worker.state.actors[actor_key]
    except KeyError:
        raise ModelError(f"no actor {actor_key} on worker {worker.address}: embed tasks must run on "
                         f"their actor's worker") from None
    if not isinstance(actor, EmbedActor):
        raise ModelError(f"actor {actor_key} on worker {worker.address} is a {type(actor).__name__}, "
                         f"not an EmbedActor")
    return actor
