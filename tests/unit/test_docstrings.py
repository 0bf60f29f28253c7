"""Every public name carries a NumPy-style docstring (the API reference is generated from them).

Public names: ``rsembed_dask.__all__`` and each subpackage's ``__all__``. The check lives in
``docs/hooks/public_api.py`` so that ``mkdocs build --strict`` (``make docs``) fails on the
same problems; this test runs it without building the site.
"""

import importlib.util
import inspect
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _check_module():
    spec = importlib.util.spec_from_file_location("public_api_hook", REPO / "docs" / "hooks" / "public_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _check_module()


def test_every_public_name_has_a_numpy_docstring():
    assert check.problems() == []


def test_the_check_covers_every_subpackage():
    import rsembed_dask

    subpackages = {p.name for p in (REPO / "rsembed_dask").iterdir() if (p / "__init__.py").exists()}
    assert {name.split(".")[1] for name in check.PACKAGES[1:]} == subpackages
    publics = list(check.public_objects())
    assert len(publics) > 100
    assert {"rsembed_dask.run_campaign", "rsembed_dask.open_cube"} <= {p for p, _, _ in publics}
    assert all(n in rsembed_dask.__all__ for n in ("run_campaign", "__version__"))


def test_pending_names_are_real_and_still_pending():
    """The allowance for functions of modules rewritten on other branches only shrinks: a
    name that gained its sections (or no longer exists) must leave ``PENDING_SECTIONS``."""
    defined = {d: obj for _, d, obj in check.public_objects()}
    for name in check.PENDING_SECTIONS:
        assert name in defined, f"{name} is no longer public: remove it from PENDING_SECTIONS"
        doc = inspect.getdoc(defined[name]) or ""
        assert not (check._section(doc, "Parameters") and check._section(doc, "Returns", "Yields")), \
            f"{name} has its sections now: remove it from PENDING_SECTIONS"


@pytest.mark.parametrize("doc, expected", [
    ("Summary.\n\n    Parameters\n    ----------\n    x : int\n", True),
    ("Summary. Parameters are those of f.\n", False),
])
def test_section_detection(doc, expected):
    assert check._section(doc, "Parameters") is expected


def test_a_missing_docstring_is_found():
    class Undocumented:
        pass

    def documented(x: int) -> int:
        """Double it."""
        return 2 * x

    assert check._own_doc(Undocumented) is None
    assert check._own_doc(documented) == "Double it."
