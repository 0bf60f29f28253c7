"""The package layout: subpackages in data-flow order, no upward import, no circle.

Every module's imports are read with :mod:`ast` (function-level imports included, since a
lazy import is still a dependency) and checked against the layer order of ``LAYOUT.md``::

    errors, specs -> geo -> sampling -> providers -> embed -> store -> cluster -> campaign
    -> plan -> explore -> api, cli

The emulator sits beside ``providers``, in the same layer (it answers what providers ask,
within the limits of ``providers.limits``), and is imported only on demand, inside
functions, by ``providers.backends`` and the CLI.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "rsembed_dask"
ROOT = "rsembed_dask"

#: Layer of each top-level module or subpackage (lower never imports higher).
LAYERS = {
    "errors": 0, "_validate": 0, "_counters": 0, "specs": 0,
    "geo": 1,
    "sampling": 2,
    "emulator": 4,
    "providers": 4,
    "embed": 5,
    "store": 6,
    "cluster": 7,
    "campaign": 8,
    "plan": 9,
    "explore": 10,
    "api": 11, "cli": 11,
    "": 12,  # the facade, rsembed_dask/__init__.py
}
#: Who may import the emulator (inside a function only).
EMULATOR_USERS = ("providers.backends", "cli.")


@dataclass(frozen=True)
class Edge:
    importer: str   # dotted, without the "rsembed_dask." prefix ("" for the facade)
    target: str     # the module (or package) imported
    names: tuple[str, ...]
    line: int
    lazy: bool      # inside a function


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join(parts), is_pkg


def _modules() -> dict[str, tuple[Path, bool]]:
    return {_module_name(p)[0]: (p, _module_name(p)[1]) for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _is_module(name: str) -> bool:
    return name in MODULES


def _strip(dotted: str) -> str | None:
    if dotted == ROOT:
        return ""
    if dotted.startswith(ROOT + "."):
        return dotted[len(ROOT) + 1:]
    return None


def _edges(name: str, path: Path, is_pkg: bool) -> list[Edge]:
    tree = ast.parse(path.read_text(), str(path))
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node

    def lazy(node: ast.AST) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return True
        return False

    package = [ROOT] + ([p for p in name.split(".") if p])
    if not is_pkg:
        package = package[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _strip(alias.name)
                if target is not None:
                    out.append(Edge(name, target, (), node.lineno, lazy(node)))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                dotted = ".".join(base + ([node.module] if node.module else []))
            else:
                dotted = node.module or ""
            base_mod = _strip(dotted)
            if base_mod is None:
                continue
            plain = []
            for alias in node.names:
                sub = f"{base_mod}.{alias.name}" if base_mod else alias.name
                if _is_module(sub):  # "from . import module"
                    out.append(Edge(name, sub, (), node.lineno, lazy(node)))
                else:
                    plain.append(alias.name)
            if plain or not node.names:
                out.append(Edge(name, base_mod, tuple(plain), node.lineno, lazy(node)))
    return out


EDGES = [e for name, (path, is_pkg) in MODULES.items() for e in _edges(name, path, is_pkg)]


def _unit(module: str) -> str:
    """The top-level module or subpackage a module belongs to ("" for the facade)."""
    return module.split(".")[0]


def _where(e: Edge) -> str:
    return f"rsembed_dask/{e.importer.replace('.', '/') or '__init__'}.py:{e.line}"


def test_every_unit_has_a_layer():
    assert {_unit(m) for m in MODULES} <= set(LAYERS), \
        f"modules outside the layer table: {sorted({_unit(m) for m in MODULES} - set(LAYERS))}"


def test_no_upward_import():
    bad = [f"{_where(e)}: {e.importer or ROOT} (layer {LAYERS[_unit(e.importer)]}) imports "
           f"{e.target or ROOT} (layer {LAYERS[_unit(e.target)]})"
           for e in EDGES if LAYERS[_unit(e.target)] > LAYERS[_unit(e.importer)]]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def _cycles(edges: list[Edge]) -> list[list[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for e in edges:
        if e.target != e.importer:
            graph[e.importer].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    cycles = _cycles(EDGES)
    assert not cycles, "import circles (lazy imports included):\n" + "\n".join(
        " <-> ".join(c or ROOT for c in cyc) for cyc in cycles)


def test_the_cycle_finder_finds_cycles():
    a, b = sorted(m for m in MODULES if m)[:2]
    assert _cycles([Edge(a, b, (), 1, False), Edge(b, a, (), 1, True)]) == [sorted([a, b])]


def _private(dotted: str) -> bool:
    return any(p.startswith("_") and not p.startswith("__") for p in dotted.split("."))


def test_no_private_name_across_subpackages():
    """A ``_name`` (function, constant or module) stays inside its subpackage."""
    bad = []
    for e in EDGES:
        if _unit(e.importer) == _unit(e.target):
            continue
        names = [n for n in e.names if n.startswith("_")]
        # A private module of the root package (rsembed_dask._validate) is the whole
        # package's; one of a subpackage (store._x) is that subpackage's.
        inner = e.target.split(".")[1:]
        if _private(".".join(inner)):
            names.append(e.target)
        if names:
            bad.append(f"{_where(e)}: {e.importer} imports {names} from {e.target}")
    assert not bad, "private names used across subpackages:\n" + "\n".join(bad)


def test_emulator_is_imported_only_on_demand():
    bad = [f"{_where(e)}: {e.importer} imports {e.target}" + ("" if e.lazy else " at module level")
           for e in EDGES if _unit(e.target) == "emulator" and _unit(e.importer) != "emulator"
           and not (e.lazy and e.importer.startswith(EMULATOR_USERS))]
    assert not bad, "the emulator must be imported inside functions of providers.backends or cli:\n" + \
        "\n".join(bad)


SUBPACKAGES = sorted(m for m, (_, is_pkg) in MODULES.items() if is_pkg and m and "." not in m)


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackage_exports_its_public_names(name):
    mod = importlib.import_module(f"{ROOT}.{name}")
    exported = getattr(mod, "__all__", None)
    assert exported, f"rsembed_dask.{name} has no __all__"
    missing = [n for n in exported if not hasattr(mod, n)]
    assert not missing, f"rsembed_dask.{name}.__all__ names missing attributes: {missing}"
    submodules = {m.split(".")[1] for m in MODULES if m.startswith(name + ".")}
    shadowing = sorted(set(exported) & submodules)
    assert not shadowing, f"rsembed_dask.{name} exports names equal to its submodules: {shadowing}"


def test_headline_api_is_exported():
    import rsembed_dask

    headline = {"get_embedding", "get_embeddings_batch", "run_campaign", "open_cube", "tile_aoi",
                "estimate_campaign", "GEEProvider", "LocalRasterProvider", "local_cluster",
                "SpecError", "RsEmbedError", "CampaignSpec", "ModelSpec", "TemporalSpec"}
    assert headline <= set(rsembed_dask.__all__)
    assert all(hasattr(rsembed_dask, n) for n in rsembed_dask.__all__)


def _unannotated(fn) -> list[str]:
    sig = inspect.signature(fn)
    bad = [p.name for p in sig.parameters.values()
           if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty]
    if sig.return_annotation is inspect.Signature.empty and fn.__name__ != "__init__":
        bad.append("return")
    return bad


def test_public_api_is_annotated():
    """Every function, method and property exported by rsembed_dask or a subpackage (the emulator,
    test infrastructure, aside) annotates its parameters and return (mypy checks them in CI)."""
    missing = {}
    for name in ["", "specs", "errors"] + [p for p in SUBPACKAGES if p != "emulator"]:
        mod = importlib.import_module(f"{ROOT}.{name}" if name else ROOT)
        for export in mod.__all__:
            obj = getattr(mod, export)
            members = [(export, obj)] if inspect.isfunction(obj) else []
            if inspect.isclass(obj) and not issubclass(obj, BaseException):
                for k, v in vars(obj).items():
                    f = v.__func__ if isinstance(v, (classmethod, staticmethod)) else \
                        v.fget if isinstance(v, property) else v
                    if (not k.startswith("_") or k == "__init__") and inspect.isfunction(f) \
                            and f.__module__.startswith(ROOT):
                        members.append((f"{export}.{k}", f))
            for qual, fn in members:
                bad = _unannotated(fn)
                if bad:
                    missing[f"{fn.__module__}:{qual}"] = bad
    assert not missing, "public API without annotations:\n" + "\n".join(f"{k} {v}" for k, v in sorted(missing.items()))
