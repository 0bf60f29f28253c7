"""Loading ScaleMAE weights: hub ids, local ``save_pretrained`` directories, test configs.

rshf 0.2.2's ``ScaleMAE.from_pretrained`` fails with transformers 5.x, so weights are
loaded robustly: read ``config.json``, build ``ScaleMAE(config=dict)`` and load the
state dict strictly. Importing rshf sets ``ssl._create_default_https_context`` to the
unverified context for the whole process; :func:`import_rshf_scalemae` undoes that, also
when rshf was imported before us.

rshf's ``ScaleMAE`` always builds a ViT-L/16. Architecture keys in ``config.json``
(``embed_dim``, ``depth``, ``num_heads``, ``patch_size``, ``mlp_ratio``; absent in the
published checkpoints, which are ViT-L/16) select a smaller rshf ``VisionTransformer``;
the named test configs use them and survive ``save_pretrained``.

Examples
--------
>>> from rsembed_dask.specs import ModelSpec
>>> model_info(ModelSpec("test-tiny")).embed_dim
64
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import math
import os
import ssl
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ModelError, SpecError
from ..specs import ModelSpec

log = logging.getLogger(__name__)

__all__ = ["ModelInfo", "TEST_CONFIGS", "import_rshf_scalemae", "load_scalemae", "model_info", "check_weights"]

# The published ScaleMAE checkpoints (and what rshf's ScaleMAE always builds).
VIT_LARGE: dict[str, Any] = {"embed_dim": 1024, "depth": 24, "num_heads": 16, "patch_size": 16, "mlp_ratio": 4.0}
ARCH_KEYS = tuple(VIT_LARGE)

TEST_CONFIGS: dict[str, dict[str, Any]] = {
    "test-tiny": {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 16, "mlp_ratio": 4.0},
    "test-small": {"embed_dim": 384, "depth": 12, "num_heads": 6, "patch_size": 16, "mlp_ratio": 4.0},
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HUB_PATTERNS = ["config.json", "*.safetensors", "*.bin"]


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline needs to know about a model, available before loading weights."""

    model_id: str
    embed_dim: int
    patch_size: int
    image_size: int
    depth: int
    rshf_version: str
    source: Literal["hub", "local", "test"]

    @property
    def grid_size(self) -> int:
        """Tokens per side of the patch grid (``image_size // patch_size``)."""
        return self.image_size // self.patch_size


@functools.lru_cache(maxsize=1)
def _warn_tls_restored() -> None:
    log.warning("ssl._create_default_https_context was the unverified context (rshf was imported "
                "before rsembed_dask loaded it); restored ssl.create_default_context so that TLS "
                "certificates are verified again")


def _restore_tls_verification() -> None:
    """Re-enable TLS verification if the process default is rshf's unverified context (warn once)."""
    if ssl._create_default_https_context is ssl._create_unverified_context:
        ssl._create_default_https_context = ssl.create_default_context
        _warn_tls_restored()


def import_rshf_scalemae():
    """Import and return rshf's ``ScaleMAE`` class, leaving TLS verification on.

    The default HTTPS context is restored to what it was before the import; if that
    was already the unverified context (rshf imported earlier by someone else), it is
    set back to ``ssl.create_default_context`` and a warning is logged once.

    Returns
    -------
    type
        ``rshf.scalemae.ScaleMAE``.

    Raises
    ------
    ModelError
        rshf is not installed.
    """
    saved = ssl._create_default_https_context
    try:
        from rshf.scalemae import ScaleMAE
    except ImportError as exc:
        raise ModelError("rshf is not importable; install it with `pip install --no-deps rshf==0.2.2` "
                         f"({exc})") from exc
    finally:
        ssl._create_default_https_context = saved
        _restore_tls_verification()
    return ScaleMAE


def _rshf_vit_class():
    import_rshf_scalemae()  # the package import (and its TLS hack) goes through the guard
    from rshf.scalemae.model import VisionTransformer

    return VisionTransformer


def rshf_version() -> str:
    """Installed rshf version, or ``"unknown"``."""
    try:
        return importlib.metadata.version("rshf")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _looks_like_path(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~", "\\")) or Path(model_id).expanduser().is_dir()


def _allowed() -> str:
    return ("a hub id 'org/name', a local directory with config.json and model.safetensors "
            "(or pytorch_model.bin), or one of the test configs " + ", ".join(map(repr, TEST_CONFIGS)))


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    import importlib.util

    errs: list[type[BaseException]] = [HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, OSError]
    if importlib.util.find_spec("httpx") is not None:  # huggingface_hub >= 1.0
        import httpx

        errs.append(httpx.HTTPError)
    if importlib.util.find_spec("requests") is not None:  # huggingface_hub < 1.0
        import requests

        errs.append(requests.RequestException)
    return tuple(errs)


def _hub_fetch(model_id: str, patterns: list[str]) -> Path:
    """Download ``patterns`` of hub repo ``model_id``; return the snapshot directory."""
    import huggingface_hub

    try:
        path = huggingface_hub.snapshot_download(model_id, allow_patterns=patterns)
    except _hub_errors() as exc:
        raise ModelError(f"ModelSpec.model_id={model_id!r}: not a test config or local directory, and "
                         f"downloading it from the Hugging Face hub failed ({type(exc).__name__}: {exc}). "
                         f"Expected {_allowed()}.") from exc
    return Path(path)


def _read_config(directory: Path, model_id: str) -> dict[str, Any]:
    cfg_path = directory / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"ModelSpec.model_id={model_id!r}: cannot read {cfg_path} ({exc}); "
                         f"expected {_allowed()}") from exc
    if not isinstance(cfg, dict):
        raise ModelError(f"ModelSpec.model_id={model_id!r}: {cfg_path} is not a JSON object")
    return cfg


def _arch(cfg: dict[str, Any], model_id: str) -> dict[str, Any]:
    arch = {k: cfg.get(k, v) for k, v in VIT_LARGE.items()}
    try:
        arch = {k: (float(v) if k == "mlp_ratio" else int(v)) for k, v in arch.items()}
    except (TypeError, ValueError) as exc:
        raise ModelError(f"ModelSpec.model_id={model_id!r}: bad architecture in config.json: {arch}") from exc
    if min(arch.values()) <= 0 or arch["embed_dim"] % arch["num_heads"] or arch["embed_dim"] % 4:
        raise ModelError(f"ModelSpec.model_id={model_id!r}: inconsistent architecture in config.json: {arch} "
                         "(embed_dim must be a multiple of num_heads and of 4)")
    return arch


def _resolve_config(spec: ModelSpec, *, weights: bool) -> tuple[dict[str, Any], Path | None, str]:
    """Return (config dict, directory or None for test configs, source)."""
    mid = spec.model_id
    if mid in TEST_CONFIGS:
        cfg = {"feat_dim": TEST_CONFIGS[mid]["embed_dim"], "fc_dim": TEST_CONFIGS[mid]["embed_dim"],
               "global_pool": False, "cls_token_flag": True, **TEST_CONFIGS[mid]}
        return cfg, None, "test"
    if _looks_like_path(mid):
        directory = Path(mid).expanduser()
        if not directory.is_dir():
            raise ModelError(f"ModelSpec.model_id={mid!r} looks like a path but is not a directory; "
                             f"expected {_allowed()}")
        return _read_config(directory, mid), directory, "local"
    if mid.startswith("test-"):
        raise ModelError(f"ModelSpec.model_id={mid!r} is not a known test config; expected {_allowed()}")
    directory = _hub_fetch(mid, HUB_PATTERNS if weights else ["config.json"])
    return _read_config(directory, mid), directory, "hub"


def _info(spec: ModelSpec, cfg: dict[str, Any], source: str) -> ModelInfo:
    arch = _arch(cfg, spec.model_id)
    patch = arch["patch_size"]
    if spec.image_size % patch:
        raise SpecError("ModelSpec.image_size", spec.image_size,
                        f"a multiple of the patch size {patch} of model {spec.model_id!r}")
    return ModelInfo(model_id=spec.model_id, embed_dim=arch["embed_dim"], patch_size=patch,
                     image_size=spec.image_size, depth=arch["depth"], rshf_version=rshf_version(),
                     source=source)  # type: ignore[arg-type]


def model_info(spec: ModelSpec) -> ModelInfo:
    """Describe ``spec``'s model without loading weights (hub ids fetch ``config.json`` only).

    Parameters
    ----------
    spec : ModelSpec
        The model.

    Returns
    -------
    ModelInfo
        Its id, embedding dimension, patch size, image size and source.

    Raises
    ------
    ModelError
        Unknown model id, unreadable config or failed download.
    SpecError
        ``spec.image_size`` is not a multiple of the patch size.
    """
    cfg, _, source = _resolve_config(spec, weights=False)
    return _info(spec, cfg, source)


#: Bytes per element of the safetensors dtypes (others are not size-checked).
_ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
#: A safetensors header longer than this is refused (the format's own limit is 100 MB).
_ST_MAX_HEADER = 100_000_000


def _check_safetensors(path: Path, model_id: str) -> int:
    """Parse the header of a ``.safetensors`` file and check it against the file's size.

    Reads the 8-byte header length and the JSON header only. Returns the number of tensors.

    Raises
    ------
    ModelError
        Unreadable file, a header that does not parse, or tensors that do not fit the file
        (a truncated download, say).
    """
    def bad(why: str) -> ModelError:
        return ModelError(f"ModelSpec.model_id={model_id!r}: unreadable weights {path}: {why}; expected a "
                          "safetensors file as written by save_pretrained")

    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) < 8:
                raise bad(f"{size} bytes, too short for a safetensors header")
            n = int.from_bytes(head, "little")
            if n > min(size - 8, _ST_MAX_HEADER):
                raise bad(f"the header claims {n} bytes, the file has {size}")
            raw = fh.read(n)
    except OSError as exc:
        raise bad(str(exc)) from exc
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"its header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    data = size - 8 - n
    end, tensors = 0, 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            lo, hi = (int(v) for v in t["data_offsets"])
            shape = [int(v) for v in t["shape"]]
            dtype = str(t["dtype"])
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"tensor {name!r} has no valid dtype, shape and data_offsets ({exc!r})") from exc
        item = _ST_ITEMSIZE.get(dtype)
        if not 0 <= lo <= hi or (item is not None and hi - lo != math.prod(shape) * item):
            raise bad(f"tensor {name!r} ({dtype} {shape}) has data_offsets [{lo}, {hi}] that do not fit its shape")
        end, tensors = max(end, hi), tensors + 1
    if end != data:
        raise bad(f"its tensors need {end} bytes of data, the file holds {data} (truncated or padded?)")
    if not tensors:
        raise bad("it holds no tensors")
    return tensors


def _check_torch_bin(path: Path, model_id: str) -> None:
    """Check that a ``pytorch_model.bin`` is a readable ``torch.save`` archive (central directory only)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                if not any(n.endswith("data.pkl") for n in zf.namelist()):
                    raise ModelError(f"ModelSpec.model_id={model_id!r}: unreadable weights {path}: a zip "
                                     "archive without data.pkl, not a torch.save file")
            return
        with open(path, "rb") as fh:
            magic = fh.read(2)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelError(f"ModelSpec.model_id={model_id!r}: unreadable weights {path}: {exc}") from exc
    if not magic.startswith(b"\x80"):  # a legacy torch.save pickle starts with the protocol opcode
        raise ModelError(f"ModelSpec.model_id={model_id!r}: unreadable weights {path}: neither a torch.save "
                         "archive nor a pickle")


def _check_weight_file(directory: Path, model_id: str) -> Path:
    """Check the weight file :func:`_load_state_dict` would load from ``directory``; return its path."""
    for name in WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            if name.endswith(".safetensors"):
                _check_safetensors(path, model_id)
            else:
                _check_torch_bin(path, model_id)
            return path
    raise ModelError(f"ModelSpec.model_id={model_id!r}: {directory} holds no weights "
                     f"(expected one of {', '.join(WEIGHT_FILES)})")


def _check_hub_weights(model_id: str) -> None:
    """Weights of hub repo ``model_id``: checked in the local cache, else listed on the hub (not downloaded)."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        cached = Path(huggingface_hub.snapshot_download(model_id, allow_patterns=HUB_PATTERNS,
                                                        local_files_only=True))
    except LocalEntryNotFoundError:
        cached = None
    if cached is not None and any((cached / name).is_file() for name in WEIGHT_FILES):
        _check_weight_file(cached, model_id)
        return
    try:
        files = huggingface_hub.list_repo_files(model_id)
    except _hub_errors() as exc:
        raise ModelError(f"ModelSpec.model_id={model_id!r}: its weights are not in the local Hugging Face "
                         f"cache and the hub cannot list them ({type(exc).__name__}: {exc}); expected "
                         f"{_allowed()}") from exc
    if not any(name in files for name in WEIGHT_FILES):
        raise ModelError(f"ModelSpec.model_id={model_id!r}: the hub repository holds no weights "
                         f"(expected one of {', '.join(WEIGHT_FILES)}; it has {sorted(files)[:10]})")


def check_weights(spec: ModelSpec) -> ModelInfo:
    """Resolve ``spec``'s model and check that its weights can be read, without loading them.

    For a local directory: ``config.json`` parses and the weight file's header parses and
    fits the file (``model.safetensors``; a ``pytorch_model.bin`` is checked as an archive).
    For a hub id: the same in the local Hugging Face cache, else the hub lists a weight
    file. A named test config has no weights to check. Neither torch nor the model is loaded.

    Returns
    -------
    ModelInfo

    Raises
    ------
    ModelError
        Unknown model id, unreadable config or weights, weights missing, hub unreachable.
    SpecError
        ``spec.image_size`` is not a multiple of the patch size.
    """
    cfg, directory, source = _resolve_config(spec, weights=False)
    info = _info(spec, cfg, source)
    if source == "local":
        _check_weight_file(directory, spec.model_id)  # type: ignore[arg-type]
    elif source == "hub":
        _check_hub_weights(spec.model_id)
    return info


def _build_wrapper(cfg: dict[str, Any], arch: dict[str, Any], *, seed: int | None):
    """Build a ScaleMAE wrapper for ``arch``.

    With ``seed`` the backbone gets deterministic random weights on CPU (global RNG
    untouched); without, every tensor stays on the meta device until weights are assigned.
    """
    import torch
    from torch import nn

    ScaleMAE = import_rshf_scalemae()
    with torch.device("meta"):
        wrapper = ScaleMAE(config=dict(cfg))  # always a ViT-L: cheap on meta

    if arch == VIT_LARGE and seed is None:
        return wrapper

    VisionTransformer = _rshf_vit_class()

    def backbone():
        return VisionTransformer(
            cls_token_flag=bool(cfg.get("cls_token_flag", True)), global_pool=bool(cfg.get("global_pool", False)),
            patch_size=arch["patch_size"], embed_dim=arch["embed_dim"], depth=arch["depth"],
            num_heads=arch["num_heads"], mlp_ratio=arch["mlp_ratio"], qkv_bias=True,
            norm_layer=functools.partial(nn.LayerNorm, eps=1e-6), num_classes=1000, drop_path_rate=0.1)

    if seed is None:
        with torch.device("meta"):
            wrapper.model = backbone()
    else:
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):
            torch.manual_seed(seed)
            wrapper.model = backbone()
    return wrapper


def _load_state_dict(directory: Path, model_id: str) -> dict[str, Any]:
    import torch

    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors import SafetensorError
                from safetensors.torch import load_file

                try:
                    return load_file(str(path), device="cpu")
                except SafetensorError as exc:
                    raise ModelError(f"ModelSpec.model_id={model_id!r}: unreadable weights {path}: {exc}") from exc
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError, EOFError) as exc:
            raise ModelError(f"ModelSpec.model_id={model_id!r}: unreadable weights {path}: {exc}") from exc
    raise ModelError(f"ModelSpec.model_id={model_id!r}: {directory} holds no weights "
                     f"(expected one of {', '.join(WEIGHT_FILES)})")


def load_scalemae(spec: ModelSpec) -> tuple[Any, ModelInfo]:
    """Load the ScaleMAE wrapper named by ``spec.model_id`` on CPU, in eval mode.

    Parameters
    ----------
    spec : ModelSpec
        The model: hub id, local ``save_pretrained`` directory or a test config.

    Returns
    -------
    (rshf.scalemae.ScaleMAE, ModelInfo)
        The wrapper (use ``wrapper.model.forward_features(x, input_res=...)``) and its info.

    Raises
    ------
    ModelError
        Unknown model id, failed download, missing or mismatched weights.
    SpecError
        ``spec.image_size`` is not a multiple of the patch size.
    """
    cfg, directory, source = _resolve_config(spec, weights=True)
    info = _info(spec, cfg, source)
    arch = _arch(cfg, spec.model_id)
    if directory is None:
        seed = zlib.crc32(spec.model_id.encode())
        wrapper = _build_wrapper(cfg, arch, seed=seed)
    else:
        state = _load_state_dict(directory, spec.model_id)
        wrapper = _build_wrapper(cfg, arch, seed=None)
        try:
            wrapper.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise ModelError(f"ModelSpec.model_id={spec.model_id!r}: weights in {directory} do not match "
                             f"the architecture {arch}: {str(exc)[:2000]}") from exc
    meta = [n for n, t in [*wrapper.named_parameters(), *wrapper.named_buffers()] if t.is_meta]
    if meta:
        raise ModelError(f"ModelSpec.model_id={spec.model_id!r}: tensors left uninitialised: {meta[:5]}")
    wrapper.eval()
    log.info("loaded ScaleMAE %s (%s, D=%d, depth=%d, patch=%d)", spec.model_id, source,
             info.embed_dim, info.depth, info.patch_size)
    return wrapper, info
