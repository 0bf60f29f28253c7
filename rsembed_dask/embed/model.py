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

import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SpecError
from .preprocess import check_chw, effective_gsd_m, preprocess
from ..specs import MAX_SCALE_M, ModelSpec, OutputSpec
from .weights import ModelInfo, load_scalemae

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = ["EmbedResult", "ScaleMAEEmbedder", "resolve_device", "roi_token_slice"]

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
    """``"auto"`` → ``cuda`` when available, else ``cpu``; other names as given."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
        Weights, image size, batch size, device and dtype.

    Attributes
    ----------
    spec : ModelSpec
    info : ModelInfo
    device : torch.device
    """

    def __init__(self, spec: ModelSpec):
        import torch

        self.spec = spec
        self.device = resolve_device(spec.device)
        wrapper, info = load_scalemae(spec)
        self.info: ModelInfo = info
        self.wrapper = wrapper.eval().to(self.device)
        self.backbone = self.wrapper.model
        self.batch_size = spec.resolved_batch_size(self.device.type)
        self._dtype = torch.bfloat16 if spec.dtype == "bfloat16" else torch.float32
        log.info("ScaleMAEEmbedder %s on %s, %s, batch %d", spec.model_id, self.device, spec.dtype,
                 self.batch_size)

    def __repr__(self) -> str:
        return f"ScaleMAEEmbedder({self.spec.model_id!r}, device={str(self.device)!r}, dtype={self.spec.dtype!r})"

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
            tokens = self.backbone.forward_features(x, input_res=res.contiguous())
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
        for idx_all in groups.values():
            for start in range(0, len(idx_all), self.batch_size):
                idx = idx_all[start:start + self.batch_size]
                batch = _stack([imgs[i] for i in idx])
                x = preprocess(batch, S, device=self.device, uint8=uint8)
                res = torch.as_tensor(gsd[idx] / self.spec.res_reference_m, dtype=torch.float32)
                tokens = self.embed_tensor(x, res)
                patches = tokens[:, 1:, :] if self.backbone.cls_token_flag else tokens
                self._pool(patches.reshape(len(idx), g, g, D), idx, rois, output, vectors, grids)

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


def _stack(chips: list[Any]):
    """Stack chips (numpy or torch) into one ``[b, 3, H, W]`` array without changing dtype."""
    if all(isinstance(c, np.ndarray) for c in chips):
        return np.stack(chips)
    import torch

    return torch.stack([torch.as_tensor(c) for c in chips])
