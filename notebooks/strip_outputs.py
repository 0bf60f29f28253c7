#!/usr/bin/env python
"""Strip outputs from notebooks in place, so they are committed clean.

Usage::

    python notebooks/strip_outputs.py                 # every notebooks/*.ipynb
    python notebooks/strip_outputs.py a.ipynb b.ipynb # just these
    python notebooks/strip_outputs.py --check         # exit 1 if any notebook has outputs

Removes every code cell's outputs and execution count, and the notebook-level
widget state that Jupyter and nbclient store (``metadata.widgets``). Cell sources,
tags and ids are kept. Needs only nbformat. ``tests/e2e/test_notebooks.py`` checks that
the committed notebooks are stripped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat


def strip(nb: nbformat.NotebookNode) -> bool:
    """Strip ``nb`` in place; True if anything was removed."""
    changed = False
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            cell.outputs = []
            changed = True
        if cell.get("execution_count") is not None:
            cell.execution_count = None
            changed = True
        for key in ("execution", "collapsed", "scrolled"):
            if key in cell.metadata:
                del cell.metadata[key]
                changed = True
    if "widgets" in nb.metadata:
        del nb.metadata["widgets"]
        changed = True
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path,
                        help="notebooks (default: every .ipynb beside this script)")
    parser.add_argument("--check", action="store_true", help="report, do not write; exit 1 if any has outputs")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(Path(__file__).resolve().parent.glob("*.ipynb"))
    dirty = []
    for path in paths:
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        if strip(nb):
            dirty.append(path)
            if not args.check:
                nbformat.write(nb, path)
    for path in dirty:
        print(f"{'has outputs' if args.check else 'stripped'}: {path}")
    return 1 if (args.check and dirty) else 0


if __name__ == "__main__":
    sys.exit(main())
