"""A copy of a cube's identifying root attributes, and the root ``zarr.json`` rebuilt from it.

The root ``zarr.json`` of a cube holds what makes it a cube: the campaign spec, its
identity and hash, the versions, the creation time, the sample segments and the
marker. Losing it (a deleted or overwritten file, a bucket object gone) leaves intact
arrays that nothing can resume. So :meth:`Cube._create <rsembed_dask.store.cube.Cube>`
also writes those attributes into a second object: the attribute
:data:`~.layout.ROOT_COPY_KEY` of the ``scale`` coordinate array (its ``zarr.json``,
written once and again only when samples are appended); ``--repair``
(:func:`rebuild_root`) writes the root ``zarr.json`` again from it.

A cube created before the copy existed is rebuilt from the campaign the repairing run
is given (its spec, model and samples), once the arrays are checked to agree with it:
the chunk size, the scales, the embedding width and the number of samples. What that
cannot recover (the original creation time and versions, the last run's report) is
written as unknown.

Both copy and root are written through Zarr's store API (one PUT each on an object
store); the arrays are never touched.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ..errors import CubeDamagedError
from ..specs import CampaignSpec, TemporalSpec
from .geoemb import geoemb_attrs
from .layout import (CREATED_ATTR, CREATING_ATTR, CUBE_VERSION, MARKER_ATTR, ROOT_COPY_ATTRS, ROOT_COPY_KEY,
                     SEGMENTS_ATTR, SPEC_ATTR, SPEC_HASH_ATTR, SPEC_IDENTITY_ATTR, TIME_WINDOWS_ATTR, VERSIONS_ATTR,
                     normalise_identity, spec_differences)
from .location import STORE_ERRORS, StoreLocation
from .open import DECODE_ERRORS, array_meta_problem

__all__ = ["write_root_copy", "read_root_copy", "root_problem", "rebuild_root"]

log = logging.getLogger(__name__)


def write_root_copy(path: str | os.PathLike | StoreLocation, attrs: Mapping[str, Any]) -> None:
    """Write the identifying root attributes (:data:`~.layout.ROOT_COPY_ATTRS`) of ``attrs`` to the copy."""
    keep = {k: attrs[k] for k in ROOT_COPY_ATTRS if k in attrs}
    scale = zarr.open_array(StoreLocation.parse(path).zarr_store(), path="scale", mode="r+", zarr_format=3)
    scale.attrs[ROOT_COPY_KEY] = json.dumps(keep, sort_keys=True)


def read_root_copy(path: str | os.PathLike | StoreLocation) -> dict[str, Any] | None:
    """The copy of the root attributes of the cube at ``path``; None where absent or unreadable."""
    meta, _ = array_meta_problem(StoreLocation.parse(path), "scale")
    text = (meta.get("attributes") or {}).get(ROOT_COPY_KEY) if meta is not None else None
    if not isinstance(text, str):
        return None
    try:
        out = json.loads(text)
    except ValueError:
        return None
    return out if isinstance(out, dict) and SPEC_ATTR in out else None


def root_problem(path: str | os.PathLike | StoreLocation) -> str | None:
    """Why the root ``zarr.json`` of the store at ``path`` cannot serve as a cube's (None when it can,
    or when it belongs to a store being created)."""
    try:
        raw = StoreLocation.parse(path).read("zarr.json")
        if raw is None:
            return "its root zarr.json is missing"
        meta = json.loads(raw)
    except STORE_ERRORS + (ValueError,) as exc:
        return f"its root zarr.json cannot be read ({type(exc).__name__}: {exc})"
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    if not isinstance(attrs, dict) or meta.get("node_type") != "group":
        return "its root zarr.json is not Zarr group metadata"
    if CREATING_ATTR in attrs or MARKER_ATTR in attrs:
        return None
    return "its root zarr.json holds no rsembed_dask cube attributes"


def _status_meta(path: StoreLocation) -> dict[str, Any] | None:
    meta, _ = array_meta_problem(path, "status")
    return meta


def rebuild_root(path: str | os.PathLike | StoreLocation, *, spec: CampaignSpec, n_samples: int, embed_dim: int,
                 windows: Sequence[TemporalSpec] | None = None) -> list[str]:
    """Write the root ``zarr.json`` of a cube whose root is lost, from its copy or the given campaign.

    Nothing happens unless ``path`` holds the arrays of a cube (a readable ``status``) and
    a root that cannot serve (:func:`root_problem`).

    Parameters
    ----------
    path : str or path-like
        The cube.
    spec, n_samples, embed_dim
        The campaign the repairing run was given (used when the cube has no copy, and to
        check the copy: a copy of another campaign is refused).
    windows : sequence of TemporalSpec, optional
        The campaign's windows, ``spec.temporal`` first: a cube with a ``time`` dimension and
        no copy gets them as its ``time_windows`` (their number must fit its arrays).

    Returns
    -------
    list of str
        What was done (one line), or nothing.

    Raises
    ------
    CubeDamagedError
        The arrays (or the copy) hold another campaign than the one given: the root is not
        rebuilt, since resuming would mix two campaigns in one cube.
    """
    path = StoreLocation.parse(path)
    status = _status_meta(path)
    if status is None:  # no cube's arrays here: nothing to rebuild a root for
        return []
    why = root_problem(path)
    if why is None:
        return []
    copy = read_root_copy(path)
    if copy is not None:
        stored = json.loads(copy[SPEC_IDENTITY_ATTR])
        diffs = spec_differences(stored, normalise_identity(spec.identity()))
        if diffs:
            raise CubeDamagedError(f"cube {path.url!r}: {why}, and its copy (scale/zarr.json) holds another campaign "
                                   f"than the one given ({'; '.join(diffs)}); repair it with the campaign that "
                                   "wrote it")
        stored_spec = CampaignSpec.from_json(copy[SPEC_ATTR])
        attrs = {**geoemb_attrs(stored_spec, embed_dim, versions=copy.get(VERSIONS_ATTR) or {}), **copy}
        source = f"its copy (attribute {ROOT_COPY_KEY} of scale/zarr.json)"
    else:
        spec, times = _check_arrays(path, status, spec, n_samples, embed_dim, why, windows)
        versions = {"rsembed_dask": "unknown (root rebuilt by --repair)"}
        attrs = {**geoemb_attrs(spec, embed_dim, versions=versions),
                 SPEC_ATTR: spec.to_json(), SPEC_IDENTITY_ATTR: json.dumps(spec.identity(), sort_keys=True),
                 SPEC_HASH_ATTR: spec.spec_hash(), VERSIONS_ATTR: versions,
                 CREATED_ATTR: "unknown (root rebuilt by --repair "
                               f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')})",
                 SEGMENTS_ATTR: [[0, int(n_samples)]], **times, MARKER_ATTR: CUBE_VERSION}
        source = "the campaign and samples given (the cube has no copy of it)"
    data = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs}, indent=2).encode()
    sync(path.zarr_store().set("zarr.json", default_buffer_prototype().buffer.from_bytes(data)))
    if copy is None:
        write_root_copy(path, attrs)
    log.warning("cube %s: %s; rebuilt it from %s", path, why, source)
    return [f"root zarr.json rebuilt from {source} ({why})"]


def _check_arrays(path: StoreLocation, status: Mapping[str, Any], spec: CampaignSpec, n_samples: int, embed_dim: int,
                  why: str, windows: Sequence[TemporalSpec] | None = None) -> tuple[CampaignSpec, dict[str, Any]]:
    """The given spec in the cube's scale order, and the root's ``time_windows`` (``{}`` for a cube
    without ``time``), once the arrays are checked to be its cube's."""
    problems = []
    shape = [int(v) for v in status.get("shape", [])]
    dims = list(status.get("dimension_names") or [])
    t0 = 1 if dims[:1] == ["time"] else 0  # the position of ``sample``
    given = list(windows) if windows is not None else [spec.temporal]
    times: dict[str, Any] = {}
    if t0:
        starts = _stored_starts(path)
        if shape[:1] != [len(given)]:
            problems.append(f"a time dimension of {shape[0] if shape else '?'} windows stored, {len(given)} "
                            "window(s) given (give the campaign's windows, e.g. --years)")
        elif starts is not None and starts != [w.start for w in given]:
            problems.append(f"windows starting {starts} stored, {[w.start for w in given]} given")
        else:
            times = {TIME_WINDOWS_ATTR: [[w.start, w.end] for w in given]}
    elif len(given) > 1:
        problems.append(f"no time dimension stored, {len(given)} windows given")
    chunk = status.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", [None] * (t0 + 1))[t0]
    if shape[t0:t0 + 1] != [int(n_samples)]:
        problems.append(f"{shape[t0] if len(shape) > t0 else '?'} sample rows stored, {n_samples} samples given "
                        "(a cube that took --append needs its copy)")
    if chunk != spec.chunk_size:
        problems.append(f"chunks of {chunk} samples stored, chunk_size={spec.chunk_size} given")
    scales = spec.scales
    try:
        stored_scales = [float(v) for v in np.asarray(zarr.open_array(path.zarr_store(read_only=True), path="scale",
                                                                       mode="r")[...])]
    except DECODE_ERRORS + STORE_ERRORS + (KeyError,) as exc:
        problems.append(f"the scale coordinate cannot be read ({exc})")
    else:
        if sorted(stored_scales) != sorted(scales):
            problems.append(f"scales {stored_scales} stored, {list(scales)} given")
        else:
            scales = tuple(stored_scales)
    feature = _meta_shape(path, "feature")
    if feature is not None and feature != [int(embed_dim)]:
        problems.append(f"{feature[0]} features stored, the model gives {embed_dim}")
    if problems:
        raise CubeDamagedError(f"cube {path.url!r}: {why}, and its arrays are not those of the campaign given: "
                               + "; ".join(problems) + "; repair it with the campaign that wrote it")
    return (spec.replace(scales=scales) if scales != spec.scales else spec), times


def _stored_starts(path: StoreLocation) -> list[str] | None:
    """The window starts the ``time`` coordinate holds (ISO dates), or None where it cannot be read."""
    try:
        days = np.asarray(zarr.open_array(path.zarr_store(read_only=True), path="time", mode="r")[...])
    except DECODE_ERRORS + STORE_ERRORS + (KeyError,):
        return None
    return [str(d) for d in days.astype("int64").astype("datetime64[D]")]


def _meta_shape(path: StoreLocation, name: str) -> list[int] | None:
    meta, _ = array_meta_problem(path, name)
    return None if meta is None else [int(v) for v in meta["shape"]]
