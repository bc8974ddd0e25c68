"""Run the Python examples of the documentation, so that an example that stops working fails CI.

Every fenced block that opens with ```python in docs/**/*.md and README.md is executed. The
blocks of one page run in order in one namespace, so a later block may use the names of an
earlier one. Each page runs in a temporary working directory, with examples/ on sys.path so
that the tracker pages can import the example package `tracker`.

A block that needs network access or a long training run can opt out with an HTML comment on
the line right before its opening fence, which the rendered page does not show:

    <!-- skip: needs the UMT5 weights from the hub -->

The reason is required, and the test of the markers checks that every skipped block has one.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS_DIR = REPO_ROOT / "docs"

# An opening fence: indentation, three or more backticks or tildes, then the info string.
FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")
SKIP_MARKER = re.compile(r"^\s*<!--\s*skip:(?P<reason>.*?)-->\s*$")
PYTHON_LANGUAGES = {"python", "py", "python3"}


@dataclass(frozen=True)
class CodeBlock:
    """One fenced Python block of a Markdown page."""

    path: Path
    line: int  # 1-based line number of the opening fence
    source: str
    skip_reason: str | None


def extract_python_blocks(path: Path, text: str) -> list[CodeBlock]:
    """Return the fenced Python blocks of a Markdown text, in page order.

    Fences inside admonitions or lists may be indented; the indentation of the opening fence is
    removed from every line of the block. A block counts as Python when the first word of its
    info string is python, py or python3, so ```python title="x.py" also counts.

    Raises:
        ValueError: If a fence is never closed, or a skip marker has an empty reason.
    """
    lines = text.splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        match = FENCE_OPEN.match(lines[index])
        if match is None:
            index += 1
            continue

        fence = match["fence"]
        info_words = match["info"].strip().split()
        language = info_words[0].lower() if info_words else ""
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = index + 1
        while end < len(lines) and closing.match(lines[end]) is None:
            end += 1
        if end == len(lines):
            raise ValueError(
                f"{path}:{index + 1}: code fence {fence!r} is never closed. Add the closing fence."
            )

        if language in PYTHON_LANGUAGES:
            body = textwrap.dedent("\n".join(lines[index + 1 : end]))
            blocks.append(CodeBlock(path, index + 1, body, _skip_reason(path, lines, index)))
        index = end + 1
    return blocks


def _skip_reason(path: Path, lines: list[str], fence_index: int) -> str | None:
    previous = fence_index - 1
    if previous < 0:
        return None
    marker = SKIP_MARKER.match(lines[previous])
    if marker is None:
        return None
    reason = marker["reason"].strip()
    if not reason:
        raise ValueError(
            f"{path}:{fence_index}: skip marker without a reason. "
            "Write it as <!-- skip: why this block cannot run in CI -->."
        )
    return reason


def documentation_pages() -> list[Path]:
    """Return README.md and every Markdown page under docs/, sorted."""
    pages = sorted(DOCS_DIR.rglob("*.md"))
    readme = REPO_ROOT / "README.md"
    if readme.exists():
        pages.insert(0, readme)
    return pages


def _page_id(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


PAGES_WITH_CODE = [
    page
    for page in documentation_pages()
    if extract_python_blocks(page, page.read_text(encoding="utf-8"))
]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=_page_id)
def test_docs_page_python_blocks_run(page: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    # The tracker pages import the example package `tracker`, which lives in examples/.
    monkeypatch.syspath_prepend(str(REPO_ROOT / "examples"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    blocks = extract_python_blocks(page, page.read_text(encoding="utf-8"))

    namespace: dict[str, object] = {"__name__": f"docs_snippet_{page.stem}"}
    for block in blocks:
        if block.skip_reason is not None:
            continue
        location = f"{_page_id(page)}:{block.line}"
        code = compile(block.source, location, "exec")
        try:
            exec(code, namespace)
        except Exception as error:
            raise AssertionError(
                f"The Python block at {location} failed with {type(error).__name__}: {error}"
            ) from error


def test_docs_pages_found() -> None:
    pages = [_page_id(page) for page in documentation_pages()]

    assert "docs/index.md" in pages
    assert "docs/quickstart.md" in pages
    assert PAGES_WITH_CODE, "no documentation page contains a ```python block"


def test_extract_blocks_reads_fences_and_skip_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    text = textwrap.dedent(
        """\
        # Title

        ```python
        x = 1
        ```

        ```bash
        echo not python
        ```

        <!-- skip: needs network -->
        ```python
        download()
        ```

        !!! note
            ```py title="inside an admonition"
            y = x + 1
            ```

        ````python
        text = '''
        ```
        '''
        ````
        """
    )

    blocks = extract_python_blocks(page, text)

    assert [block.line for block in blocks] == [3, 12, 17, 21]
    assert blocks[0].source == "x = 1"
    assert blocks[0].skip_reason is None
    assert blocks[1].skip_reason == "needs network"
    assert blocks[2].source == "y = x + 1"
    assert blocks[3].source == "text = '''\n```\n'''"


def test_extract_blocks_rejects_empty_skip_reason(tmp_path: Path) -> None:
    text = "<!-- skip: -->\n```python\nx = 1\n```\n"

    with pytest.raises(ValueError, match="skip marker without a reason"):
        extract_python_blocks(tmp_path / "page.md", text)


def test_extract_blocks_rejects_unclosed_fence(tmp_path: Path) -> None:
    text = "```python\nx = 1\n"

    with pytest.raises(ValueError, match="never closed"):
        extract_python_blocks(tmp_path / "page.md", text)


def test_docs_skip_markers_are_rare() -> None:
    blocks = [
        block
        for page in documentation_pages()
        for block in extract_python_blocks(page, page.read_text(encoding="utf-8"))
    ]
    skipped = [f"{_page_id(block.path)}:{block.line}" for block in blocks if block.skip_reason]

    # Most examples must really run, because a page full of skipped blocks tests nothing.
    assert len(skipped) <= len(blocks) // 3, f"too many skipped blocks: {skipped}"
