"""ScaleMAE embedding of raw Sentinel-2 chips: preprocessing, GSD-aware forward pass, pooling.

:class:`ScaleMAEEmbedder` loads the model once and embeds batches of raw CHW chips
(no Dask here). Each sample's ``input_res`` is its effective GSD after resizing,
divided by ``ModelSpec.res_reference_m``. Pooled vectors are the mean (or max) of the
patch tokens without CLS; grids are the patch tokens as ``(D, h, w)``, cropped to the
region of interest when one is given.

Examples
--------
>>> import numpy as np
>>> from rsembed_dask.specs import ModelSpec, OutputSpec
>>> emb = ScaleMAEEmbedder(ModelSpec("test-tiny", image_size=32, device="cpu"))
>>> res = emb.embed([np.full((3, 64, 64), 1200, np.uint16)], 10.0, output=OutputSpec.pooled())
>>> res.vectors.shape, float(res.input_res_m[0])
((1, 64), 20.0)
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import numbers
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SpecError
from .preprocess import check_chw, effective_gsd_m, normalise, preprocess_host
from ..specs import MAX_SCALE_M, ModelSpec, OutputSpec, auto_batch_size
from .weights import ModelInfo, load_scalemae

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = ["EmbedResult", "ScaleMAEEmbedder", "activation_bytes_per_image", "resolve_device", "roi_token_slice",
           "set_fused_attention"]

#: Prefetched batches waiting beside the one in the forward (1: batch k+1 is preprocessed
#: while batch k runs; more only holds more pinned memory, the forward sets the pace).
PREFETCH_DEPTH = 1
#: Margin on the activation estimate of :func:`activation_bytes_per_image`: PyTorch's caching
#: allocator rounds every block up (to 512 B, and to 2 MiB segments for large ones) and
#: cannot always reuse a freed block for a differently sized one, and the estimate counts
#: one block's peak only.
ACTIVATION_SAFETY = 2.0

ROI_ALLOWED = "None or (top, left, bottom, right) fractions in [0, 1] with top < bottom and left < right"


@dataclass(frozen=True)
class EmbedResult:
    """Embeddings of a batch of samples, in input order.

    Attributes
    ----------
    vectors : numpy.ndarray
        ``[B, D]`` float32 pooled vectors (always filled, per ``pooling``).
    grids : list of numpy.ndarray or None
        ``(D, h, w)`` float32 token grids (cropped to the ROI) when ``tokens_kind == "grid"``.
    input_res_m : numpy.ndarray
        ``[B]`` effective GSD in metres after resizing to ``image_size``.
    scale_m : numpy.ndarray
        ``[B]`` pixel size in metres of the input chips.
    """

    vectors: np.ndarray
    grids: list[np.ndarray] | None
    input_res_m: np.ndarray
    scale_m: np.ndarray
    tokens_kind: str
    pooling: str
    model_id: str
    image_size: int
    patch_size: int
    rshf_version: str
    res_reference_m: float

    def __len__(self) -> int:
        return len(self.vectors)

    def meta(self, i: int) -> dict[str, Any]:
        """Provenance of sample ``i`` (JSON-serialisable)."""
        return {
            "tokens_kind": self.tokens_kind,
            "used_patch_size": int(self.patch_size),
            "used_scale_m": float(self.scale_m[i]),
            "input_res_m": float(self.input_res_m[i]),
            "model_id": self.model_id,
            "image_size": int(self.image_size),
            "rshf_version": self.rshf_version,
            "pooling": self.pooling,
            "res_reference_m": float(self.res_reference_m),
        }


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → ``cuda`` when available, else ``cpu``; other names as given.

    Parameters
    ----------
    device : str
        ``"auto"`` or a torch device name (``"cpu"``, ``"cuda:1"``).

    Returns
    -------
    torch.device

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def activation_bytes_per_image(*, image_size: int, patch_size: int, embed_dim: int, num_heads: int,
                               mlp_hidden: int, act_bytes: int) -> int:
    """Device memory one image needs during an inference forward of a ViT, in bytes.

    Inference keeps no activations for a backward pass, so the peak is one transformer
    block's working set, per image with ``N = 1 + (S / p)**2`` tokens of width ``D``:

    * the residual stream and LayerNorm's output, float32 even under autocast: ``8 N D``;
    * attention: ``q, k, v`` and the attention output (``4 N D`` at ``act_bytes``), and, for
      an unfused fallback (no flash/memory-efficient kernel), the ``H x N x N`` scores and
      their softmax (float32 and ``act_bytes``): counted so that every path fits;
    * the MLP: the input cast to ``act_bytes``, the hidden layer and its GELU
      (``N (D + 2 M)`` at ``act_bytes``);
    * around the blocks: the float32 input (``12 S**2``), the resolution-dependent position
      embedding and the float32 copy of the output tokens (``12 N D``).

    The block peak is the larger of attention and MLP; the sum is multiplied by
    ``ACTIVATION_SAFETY``. For a ViT-L/16 at 224 px in bf16: 20 MB (19 MiB) per image
    (``benchmarks/gpu.py`` prints the measured peak per image to check it).
    """
    n = 1 + (image_size // patch_size) ** 2
    d, m, h, e = embed_dim, mlp_hidden, num_heads, act_bytes
    stream = 8 * n * d
    attention = 4 * n * d * e + h * n * n * (4 + e)
    mlp = n * (d + 2 * m) * e
    around = 12 * image_size ** 2 + 12 * n * d
    return int(ACTIVATION_SAFETY * (stream + max(attention, mlp) + around))


def set_fused_attention(module: Any, enabled: bool = True) -> int:
    """Switch timm's attention layers in ``module`` to ``F.scaled_dot_product_attention`` (or back).

    timm's ``Attention`` (which rshf's ScaleMAE blocks use) picks SDPA by default, but the
    choice is made at construction from the ``TIMM_FUSED_ATTN`` environment variable; the
    embedder sets it explicitly so that the fast kernels (flash / memory-efficient on CUDA)
    are used whatever the environment says. Returns the number of layers switched.
    """
    n = 0
    for m in module.modules():
        if hasattr(m, "fused_attn") and hasattr(m, "qkv"):
            m.fused_attn = bool(enabled)
            n += 1
    return n


def roi_token_slice(roi: Sequence[float], g: int) -> tuple[slice, slice]:
    """Token rows and columns of a ``g x g`` grid covering ``roi = (top, left, bottom, right)`` fractions."""
    top, left, bottom, right = roi
    r0 = min(int(math.floor(top * g)), g - 1)
    c0 = min(int(math.floor(left * g)), g - 1)
    r1 = max(int(math.ceil(bottom * g)), r0 + 1)
    c1 = max(int(math.ceil(right * g)), c0 + 1)
    return slice(r0, min(r1, g)), slice(c0, min(c1, g))


def _check_roi(roi: Any, n: int) -> list[tuple[float, ...] | None]:
    if roi is None:
        return [None] * n
    if isinstance(roi, (str, bytes)) or not isinstance(roi, Sequence) or len(roi) != n:
        raise SpecError("roi", roi, f"None or a sequence of {n} per-sample ROIs, each {ROI_ALLOWED}")
    out: list[tuple[float, ...] | None] = []
    for i, r in enumerate(roi):
        if r is None:
            out.append(None)
            continue
        try:
            vals = tuple(float(v) for v in r)
        except (TypeError, ValueError):
            raise SpecError(f"roi[{i}]", r, ROI_ALLOWED) from None
        if (len(vals) != 4 or not all(0.0 <= v <= 1.0 for v in vals)
                or not (vals[0] < vals[2] and vals[1] < vals[3])):
            raise SpecError(f"roi[{i}]", r, ROI_ALLOWED)
        out.append(None if vals == (0.0, 0.0, 1.0, 1.0) else vals)
    return out


def _check_scale(scale_m: Any, n: int) -> np.ndarray:
    allowed = f"a finite number in (0, {MAX_SCALE_M:g}] metres, or a sequence of {n} of them"
    if isinstance(scale_m, numbers.Real) and not isinstance(scale_m, bool):
        vals = np.full(n, float(scale_m))
    elif isinstance(scale_m, (str, bytes, bool)):
        raise SpecError("scale_m", scale_m, allowed)
    else:
        try:
            vals = np.asarray(scale_m, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise SpecError("scale_m", scale_m, allowed) from None
        if vals.shape != (n,):
            raise SpecError("scale_m", scale_m, allowed)
    if not (np.isfinite(vals).all() and (vals > 0).all() and (vals <= MAX_SCALE_M).all()):
        raise SpecError("scale_m", scale_m, allowed)
    return vals


class ScaleMAEEmbedder:
    """Load ScaleMAE once and embed batches of raw S2 SR RGB chips.

    Parameters
    ----------
    spec : ModelSpec
        Weights, image size, batch size, device, dtype and ``compile``.
    overlap : bool, optional
        Preprocess batch ``k + 1`` on a prefetch thread while batch ``k`` runs (when a
        call holds more than one batch). Default: on for CUDA, off on the CPU, where the
        two compete for the same cores (measured: see ``benchmarks/embed_overlap.py``).
        Results are identical either way.

    Attributes
    ----------
    spec : ModelSpec
    info : ModelInfo
    device : torch.device
    precision : str
        ``"float32"`` or ``"bfloat16"``: the forward's precision on this device.
    batch_size : int
        Images per forward (``spec.batch_size``, or fitted to the device: see ``ModelSpec``).
    overlap : bool
    fused_attention_layers : int
        Attention layers running ``scaled_dot_product_attention``.
    """

    def __init__(self, spec: ModelSpec, *, overlap: bool | None = None):
        import torch

        self.spec = spec
        self.device = resolve_device(spec.device)
        wrapper, info = load_scalemae(spec)
        self.info: ModelInfo = info
        self.wrapper = wrapper.eval().to(self.device)
        self.backbone = self.wrapper.model
        self.fused_attention_layers = set_fused_attention(self.backbone, True)
        self.precision = spec.resolved_dtype(self.device.type)
        self._dtype = torch.bfloat16 if self.precision == "bfloat16" else torch.float32
        self.batch_size = spec.resolved_batch_size(self.device.type, fits=self._fitting_batch())
        self.overlap = self.device.type == "cuda" if overlap is None else bool(overlap)
        self._forward = self.backbone
        if spec.compile:
            self._forward = torch.compile(self.backbone)
        self._device_lock = threading.Lock()
        log.info("ScaleMAEEmbedder %s on %s, %s, batch %d, overlap %s, compile %s", spec.model_id, self.device,
                 self.precision, self.batch_size, self.overlap, spec.compile)

    def __repr__(self) -> str:
        return (f"ScaleMAEEmbedder({self.spec.model_id!r}, device={str(self.device)!r}, "
                f"precision={self.precision!r}, batch_size={self.batch_size})")

    def activation_bytes_per_image(self) -> int:
        """:func:`activation_bytes_per_image` of this model, image size and precision."""
        blk = self.backbone.blocks[0]
        return activation_bytes_per_image(image_size=self.spec.image_size, patch_size=self.info.patch_size,
                                          embed_dim=self.info.embed_dim, num_heads=int(blk.attn.num_heads),
                                          mlp_hidden=int(blk.mlp.fc1.out_features),
                                          act_bytes=2 if self.precision == "bfloat16" else 4)

    def _fitting_batch(self) -> int | None:
        """On CUDA with ``batch_size`` None: the batch that fits the free memory now (model loaded)."""
        import torch

        if self.device.type != "cuda" or self.spec.batch_size is not None:
            return None
        free, total = torch.cuda.mem_get_info(self.device)
        per_image = self.activation_bytes_per_image()
        fits = auto_batch_size(free, per_image)
        log.info("auto batch size on %s: %d (%.1f of %.1f GiB free, %.1f MiB per image)", self.device, fits,
                 free / 2**30, total / 2**30, per_image / 2**20)
        return fits

    def embed_tensor(self, x: torch.Tensor, input_res: Any) -> torch.Tensor:
        """Bare forward pass: preprocessed ``[B, 3, S, S]`` → tokens ``[B, 1+N, D]`` float32 (CLS first).

        ``input_res`` is a number or ``[B]`` values passed to ``forward_features`` as is.
        """
        import torch

        x = torch.as_tensor(x).to(self.device, torch.float32, non_blocking=True)
        res = torch.as_tensor(input_res, dtype=torch.float32).reshape(-1)
        if res.numel() == 1:
            res = res.expand(x.shape[0])
        if res.shape != (x.shape[0],):
            raise SpecError("input_res", tuple(res.shape), f"a number or {x.shape[0]} values")
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                    enabled=self._dtype == torch.bfloat16):
            tokens = self._forward(x, input_res=res.contiguous())  # forward is forward_features
        return tokens.float()

    def embed(self, images: Any, scale_m: float | Sequence[float], *, output: OutputSpec | None = None,
              roi: Sequence[Any] | None = None,
              check: bool = True, uint8: bool = False) -> EmbedResult:
        """Embed raw chips.

        Parameters
        ----------
        images : sequence of array or array
            ``B`` raw ``(3, H, W)`` chips (numpy or torch), or one ``[B, 3, H, W]`` array.
            Chips of different shapes are batched by shape.
        scale_m : float or sequence of float
            Pixel size in metres, one for all or one per sample.
        output : OutputSpec, optional
            Pooled (default) or grid, and the pooling of the vectors.
        roi : sequence, optional
            Per sample ``None`` or ``(top, left, bottom, right)`` fractions of the chip
            covered by the region of interest; the token grid is cropped to it.
        check : bool
            Validate every chip with :func:`~rsembed_dask.embed.preprocess.check_chw`.
        uint8 : bool
            The chips are already uint8 images (:func:`~rsembed_dask.embed.preprocess.to_uint8`
            of raw chips, as a campaign's fetch task ships them: half the bytes, and that
            conversion's CPU off the GPU's process); checked for shape and dtype only.

        Returns
        -------
        EmbedResult
        """
        import torch

        output = output or OutputSpec()
        imgs = list(images)
        n = len(imgs)
        scales = _check_scale(scale_m, n)
        rois = _check_roi(roi, n)
        if check or uint8:
            for i, im in enumerate(imgs):
                check_chw(im, field=f"input_chw[{i}]", uint8=uint8)
        S, D = self.spec.image_size, self.info.embed_dim
        g = S // self.info.patch_size
        gsd = np.array([effective_gsd_m(scales[i], imgs[i].shape[-2], imgs[i].shape[-1], S)
                        for i in range(n)], dtype=np.float64)
        vectors = np.empty((n, D), dtype=np.float32)
        grids: list[np.ndarray | None] | None = [None] * n if output.mode == "grid" else None

        groups: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(imgs):
            groups.setdefault(tuple(im.shape), []).append(i)
        batches = [idx_all[start:start + self.batch_size] for idx_all in groups.values()
                   for start in range(0, len(idx_all), self.batch_size)]
        pin = self.device.type == "cuda"

        def prepare(idx: list[int]):  # CPU only: safe on the prefetch thread
            return preprocess_host(_stack([imgs[i] for i in idx]), S, pin_memory=pin, uint8=uint8)

        def run(idx: list[int], u8) -> None:
            with self._device_lock:  # concurrent calls overlap their preprocessing, not their forwards
                x = normalise(u8, self.device)
                res = torch.as_tensor(gsd[idx] / self.spec.res_reference_m, dtype=torch.float32)
                tokens = self.embed_tensor(x, res)
                patches = tokens[:, 1:, :] if self.backbone.cls_token_flag else tokens
                self._pool(patches.reshape(len(idx), g, g, D), idx, rois, output, vectors, grids)

        if self.overlap and len(batches) > 1:
            _pipelined(batches, prepare, run, _prefetch_pool(os.getpid()), PREFETCH_DEPTH)
        else:
            for idx in batches:
                run(idx, prepare(idx))

        return EmbedResult(vectors=vectors, grids=grids, input_res_m=gsd, scale_m=scales,  # type: ignore[arg-type]
                           tokens_kind=output.mode, pooling=output.pooling, model_id=self.spec.model_id,
                           image_size=S, patch_size=self.info.patch_size,
                           rshf_version=self.info.rshf_version, res_reference_m=self.spec.res_reference_m)

    @staticmethod
    def _pool(grid, idx, rois, output, vectors, grids) -> None:
        """Pool ``grid [b, g, g, D]`` into ``vectors[idx]`` (and ``grids``), cropping to ROIs."""
        g = grid.shape[1]
        whole = [k for k, i in enumerate(idx) if rois[i] is None]
        if whole:
            sub = grid[whole].flatten(1, 2)
            pooled = sub.mean(dim=1) if output.pooling == "mean" else sub.amax(dim=1)
            vectors[[idx[k] for k in whole]] = pooled.cpu().numpy()
        for k, i in enumerate(idx):
            if rois[i] is not None:
                rs, cs = roi_token_slice(rois[i], g)
                sub = grid[k, rs, cs, :].flatten(0, 1)
                pooled = sub.mean(dim=0) if output.pooling == "mean" else sub.amax(dim=0)
                vectors[i] = pooled.cpu().numpy()
        if grids is not None:
            host = grid.permute(0, 3, 1, 2).cpu().numpy()
            for k, i in enumerate(idx):
                cell = host[k]
                if rois[i] is not None:
                    rs, cs = roi_token_slice(rois[i], g)
                    cell = cell[:, rs, cs]
                grids[i] = np.ascontiguousarray(cell, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _prefetch_pool(pid: int) -> ThreadPoolExecutor:
    """One prefetch thread per process (``pid`` keys it: pools do not survive fork)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="rsembed-prefetch")


def _pipelined(batches: list[list[int]], prepare, run, pool: ThreadPoolExecutor, depth: int) -> None:
    """``run(b, prepare(b))`` for each batch in order, ``prepare`` of the next ``depth`` batches on ``pool``.

    ``prepare`` of batch ``k + 1`` is submitted before ``run`` of batch ``k`` starts, so the
    two overlap. An error in either is raised here, after the batches already submitted
    have finished (nothing keeps running behind the caller's back).
    """
    todo = collections.deque(batches)
    pending: collections.deque[tuple[list[int], Future]] = collections.deque()
    try:
        while todo or pending:
            while todo and len(pending) < depth + 1:
                b = todo.popleft()
                pending.append((b, pool.submit(prepare, b)))
            b, fut = pending.popleft()
            run(b, fut.result())  # meanwhile the thread prepares the next ``depth`` batches
    finally:
        for _, fut in pending:
            fut.cancel()
        for _, fut in pending:
            if not fut.cancelled():
                fut.exception()  # wait; its error (if any) is dropped: the first one is raised


def _stack(chips: list[Any]):
    """Stack chips (numpy or torch) into one ``[b, 3, H, W]`` array without changing dtype."""
    if all(isinstance(c, np.ndarray) for c in chips):
        return np.stack(chips)
    import torch

    return torch.stack([torch.as_tensor(c) for c in chips])
