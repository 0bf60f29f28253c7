"""The explorer web app: a map of a cube, click to find similar places, label and predict.

``rsembed-dask explore CUBE`` serves it (:func:`serve`); :func:`explore` shows it inside
Jupyter. The HTTP API is described in :mod:`rsembed_dask.explore.app.server`.
"""

from .index import VectorIndex
from .labels import PREDICT_METHOD, LabelSet, mean_difference
from .overlay import ZoneOverlay, zone_overlay
from .server import (DEFAULT_HOST, DEFAULT_PORT, MAX_BODY_BYTES, MAX_K, MAX_LABELS, MAX_PLACES_SHOWN,
                     ExplorerServer, create_app, explore, serve)
from .source import CubeSource, Window

__all__ = ["create_app", "serve", "explore", "ExplorerServer", "VectorIndex", "CubeSource", "Window",
           "LabelSet", "mean_difference", "PREDICT_METHOD", "ZoneOverlay", "zone_overlay",
           "DEFAULT_HOST", "DEFAULT_PORT", "MAX_K", "MAX_LABELS", "MAX_BODY_BYTES", "MAX_PLACES_SHOWN"]
