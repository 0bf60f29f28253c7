"""Embedding without Dask: weights, preprocessing, the ScaleMAE embedder."""

from .model import EmbedResult, ScaleMAEEmbedder, resolve_device
from .preprocess import check_chw, effective_gsd_m
from .weights import TEST_CONFIGS, ModelInfo, load_scalemae, model_info

__all__ = ["ScaleMAEEmbedder", "EmbedResult", "resolve_device", "check_chw", "effective_gsd_m",
           "ModelInfo", "TEST_CONFIGS", "load_scalemae", "model_info"]
