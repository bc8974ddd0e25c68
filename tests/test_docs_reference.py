"""Check that the API reference covers every public name of ditblocks, each with an example."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import ditblocks

API_DOCS_DIR = Path(__file__).resolve().parents[1] / "docs" / "api"

# A mkdocstrings entry: three colons, then the dotted path of the documented object.
ENTRY = re.compile(r"^:::\s+(?P<path>[\w.]+)\s*$", re.MULTILINE)


def documented_paths() -> set[str]:
    """Return the dotted paths of every `::: path` entry under docs/api/."""
    paths = set()
    for page in API_DOCS_DIR.glob("*.md"):
        paths.update(match["path"] for match in ENTRY.finditer(page.read_text(encoding="utf-8")))
    return paths


def test_api_reference_lists_every_public_name() -> None:
    documented = documented_paths()
    missing = [name for name in ditblocks.__all__ if f"ditblocks.{name}" not in documented]

    assert not missing, (
        f"public names without an API reference entry: {missing}. Add `::: ditblocks.NAME` "
        "to a page under docs/api/ and a row to docs/api/index.md."
    )


def test_api_reference_entries_exist() -> None:
    unknown = []
    for path in sorted(documented_paths()):
        module_name, _, attribute = path.rpartition(".")
        module = __import__(module_name, fromlist=[attribute])
        if not hasattr(module, attribute):
            unknown.append(path)

    assert not unknown, f"API reference entries that name no object: {unknown}"


# Constants such as UMT5_SIZES have no docstring of their own, so their page shows the example.
PUBLIC_CALLABLES = sorted(name for name in ditblocks.__all__ if callable(getattr(ditblocks, name)))


@pytest.mark.parametrize("name", PUBLIC_CALLABLES)
def test_public_name_docstring_has_example(name: str) -> None:
    docstring = inspect.getdoc(getattr(ditblocks, name)) or ""

    assert "Examples:" in docstring, f"ditblocks.{name} has no Examples: section"
    assert ">>>" in docstring, f"the Examples: section of ditblocks.{name} has no doctest"
