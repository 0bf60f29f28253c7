"""The version is written in one place (``rsembed_dask.__version__``) and the changelog keeps its form."""

import re
import tomllib
from pathlib import Path

import rsembed_dask

REPO = Path(__file__).resolve().parents[2]


def test_version_is_written_once():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "rsembed_dask.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+(\S*)", rsembed_dask.__version__)


def test_changelog_has_an_unreleased_section_and_the_current_version():
    text = (REPO / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert headings[0] == "Unreleased"
    assert rsembed_dask.__version__ in headings
