"""mkdocs hook: the build fails on a public name without a NumPy-style docstring.

Public names are ``rsembed_dask.__all__`` and the ``__all__`` of each subpackage. Every
public class and function must carry its own docstring; a function that takes parameters
needs a ``Parameters`` section, and one that returns something a ``Returns`` (or
``Yields``) section. ``tests/unit/test_docstrings.py`` runs the same check, so a missing
docstring fails the test run as well as ``mkdocs build --strict`` (each problem is logged
as a warning, which strict mode turns into an error).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re

log = logging.getLogger("mkdocs.hooks.public_api")

PACKAGES = ("rsembed_dask", "rsembed_dask.geo", "rsembed_dask.sampling", "rsembed_dask.providers",
            "rsembed_dask.emulator", "rsembed_dask.embed", "rsembed_dask.store", "rsembed_dask.cluster",
            "rsembed_dask.campaign", "rsembed_dask.plan", "rsembed_dask.explore", "rsembed_dask.cli")

#: Functions of ``store`` and ``campaign`` whose modules were being rewritten on other branches
#: when this check was added: they have a docstring, but no Parameters/Returns sections yet.
#: Shrink this set; never grow it.
PENDING_SECTIONS = frozenset({
    "rsembed_dask.store.open.is_tiling_store", "rsembed_dask.store.layout.scale_name",
    "rsembed_dask.store.tiling.create_or_open_tiling", "rsembed_dask.store.verify.verify_cube",
    "rsembed_dask.store.info.format_store_info", "rsembed_dask.store.lock.read_lock",
    "rsembed_dask.store.lock.store_lock", "rsembed_dask.store.lock.one_writer",
    "rsembed_dask.store.size.tiling_store_size", "rsembed_dask.campaign.run.plan_campaign",
    "rsembed_dask.campaign.jobs.plan_samples", "rsembed_dask.campaign.jobs.plan_tiling",
    "rsembed_dask.campaign.tasks.fetch_unit", "rsembed_dask.campaign.tasks.embed_unit",
    "rsembed_dask.campaign.tasks.write_unit",
})


def _section(doc: str, *names: str) -> bool:
    return any(re.search(rf"^\s*{name}\n\s*-{{3,}}\s*$", doc, re.M) for name in names)


def _own_doc(obj) -> str | None:
    """The object's own docstring: None where there is none, or where it is the signature
    that ``dataclasses`` writes for a class without one."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    if not doc or not doc.strip():
        return None
    if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):
        return None
    return doc


def public_objects():
    """Yield ``(qualified public name, defining name, object)`` for each public class and function."""
    seen: set[int] = set()
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or id(obj) in seen:
                continue
            seen.add(id(obj))
            yield f"{package}.{name}", f"{obj.__module__}.{obj.__qualname__}", obj


def problems() -> list[str]:
    """One line per public name whose docstring is missing or lacks a section."""
    found = []
    for public, defined, obj in public_objects():
        doc = _own_doc(obj)
        if doc is None:
            found.append(f"{public} ({defined}) has no docstring")
            continue
        if not inspect.isfunction(obj) or defined in PENDING_SECTIONS:
            continue
        sig = inspect.signature(obj)
        params = [p for p in sig.parameters if p not in ("self", "cls")]
        if params and not _section(doc, "Parameters"):
            found.append(f"{public} ({defined}) takes {', '.join(params)} but its docstring has no "
                         f"Parameters section")
        returns = sig.return_annotation
        if returns not in (inspect.Signature.empty, None, "None") and not _section(doc, "Returns", "Yields"):
            found.append(f"{public} ({defined}) returns {returns} but its docstring has no Returns section")
    return found


def on_config(config):
    for line in problems():
        log.warning("public API: %s", line)
    return config
