"""mkdocs hook: the four notebooks as pages, with their outputs.

``notebooks/*.ipynb`` are committed without outputs. The test run
(``tests/e2e/test_notebooks.py``) executes them and keeps each executed copy in
``build/notebooks/``; ``make docs`` runs those tests first when a copy is missing. This hook
converts each executed notebook with nbconvert's Markdown exporter into
``notebooks/<name>.md`` (its figures beside it) at build time; nothing generated is written
into ``docs/``. A notebook with no executed copy is a build warning (an error in strict mode).
"""

from __future__ import annotations

import logging
from pathlib import Path

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.notebooks")

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "notebooks"
EXECUTED = REPO / "build" / "notebooks"
# Outputs that only make sense live in Jupyter (ipywidgets: the tqdm bar); their text is kept.
_LIVE_ONLY = "application/vnd.jupyter.widget-view+json"
_INJECTED = "# injected by tests/e2e/test_notebooks.py"


def _page(path: Path, name: str) -> tuple[str, dict[str, bytes]]:
    import nbformat
    from nbconvert import MarkdownExporter

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        # The values the test run injected into the parameters cell (temporary paths, ports).
        cell.source = cell.source.split(_INJECTED)[0].rstrip()
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if _LIVE_ONLY in data:
                continue
            kept.append(out)
        cell.outputs = kept
    nb.metadata.pop("widgets", None)
    body, resources = MarkdownExporter().from_notebook_node(nb, resources={"unique_key": name})
    header = (f"<!-- generated from notebooks/{name}.ipynb by docs/hooks/notebooks.py -->\n\n"
              f"!!! note\n    `notebooks/{name}.ipynb` in the repository; it runs offline on the emulator. "
              f"The outputs below come from the test run.\n\n")
    return header + body, resources.get("outputs", {})


def on_files(files, config):
    for path in sorted(SOURCE.glob("*.ipynb")):
        name = path.stem
        executed = EXECUTED / path.name
        if not executed.exists():
            log.warning("notebook %s has no executed copy in %s: run `make notebooks` (or the "
                        "notebook tests) first; rendered without outputs", path.name, EXECUTED)
            executed = path
        markdown, outputs = _page(executed, name)
        files.append(File.generated(config, f"notebooks/{name}.md", content=markdown))
        for fname, data in outputs.items():
            files.append(File.generated(config, f"notebooks/{fname}", content=data))
    return files
