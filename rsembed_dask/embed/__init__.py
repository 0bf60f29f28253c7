"""Embedding without Dask: weights, preprocessing, the ScaleMAE embedder."""
