"""The docs pages as the tests read them: their fenced blocks, headings and links.

Tests that run a documented workflow take its block from the page with `block(page, marker)`, so the page and
the test cannot drift apart; tests/test_docs_blocks.py checks that every block is claimed by such a test.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS_DIR = REPO_ROOT / "docs"
FENCE = re.compile(r"^(?P<indent> *)```(?P<language>[\w-]*)[^\n]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)\)")
IMAGE = re.compile(r"!\[[^\]]*\]\((?P<target>[^)\s]+)\)")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root, e.g. "docs/serving.md" or "README.md"
    line: int  # 1-based line of the opening fence
    language: str  # "" for a plain block (a diagram)
    code: str  # the lines between the fences, their common indentation removed

    def __str__(self) -> str:
        first = self.code.strip().splitlines()[0] if self.code.strip() else ""
        return f"{self.page}:{self.line} ({self.language or 'plain'}) {first[:70]}"


def pages() -> list[str]:
    """Every page of the docs and the README, relative to the repository root."""
    return ["README.md", *sorted(f"docs/{path.name}" for path in DOCS_DIR.glob("*.md"))]


def text(page: str) -> str:
    return (REPO_ROOT / page).read_text(encoding="utf-8")


def blocks(page: str) -> list[Block]:
    """The fenced code blocks of a page, in order."""
    source = text(page)
    found = []
    for match in FENCE.finditer(source):
        indent = len(match["indent"])
        code = "".join(line[indent:] for line in match["code"].splitlines(keepends=True))
        found.append(Block(page, source.count("\n", 0, match.start()) + 1, match["language"], code))
    return found


def block(page: str, marker: str) -> str:
    """The code of the one block of `page` that contains `marker` (a failure if none or several do)."""
    matching = [found for found in blocks(page) if marker in found.code]
    assert len(matching) == 1, f"{page}: {len(matching)} blocks contain {marker!r}, expected one"
    return matching[0].code


def section(page: str, heading: str) -> str:
    """The text of `page` under the heading `heading` (any level), up to the next heading of its level."""
    source = text(page)
    match = re.search(rf"^(#+) {re.escape(heading)}\n", source, re.M)
    assert match, f"{page}: no heading {heading!r}"
    rest = source[match.end() :]
    end = re.search(rf"^#{{1,{len(match[1])}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def headings(page: str) -> list[str]:
    """The headings of a page, outside code blocks."""
    return re.findall(r"^#{1,6} (.+?)\s*$", FENCE.sub("", text(page)), re.M)


def links(page: str) -> list[str]:
    """Link targets of a page (not images), outside code blocks."""
    return [match["target"] for match in LINK.finditer(FENCE.sub("", text(page)))]


def images(page: str) -> list[str]:
    return [match["target"] for match in IMAGE.finditer(FENCE.sub("", text(page)))]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but '-' and '_' dropped, each space a '-'."""
    heading = re.sub(r"`|\*\*?", "", heading).strip().lower()
    return "".join(ch for ch in heading if ch in " -_" or unicodedata.category(ch)[0] in "LN").replace(" ", "-")


def mkdocs_anchor(heading: str) -> str:
    """The anchor MkDocs' toc extension gives a heading (its default slugify)."""
    heading = re.sub(r"`|\*\*?", "", heading)
    value = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def stand_in_venv(repo: Path, stand_ins: dict[str, str]) -> Path:
    """repo/.venv as a page's `.venv/bin/...` commands expect it: the running venv (its python, dvc, mlflow...),
    except the commands in `stand_ins` (name -> script), which play a person at a GUI or keep the shared venv
    as it is (pip)."""
    real, venv = Path(sys.prefix), repo / ".venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("pyvenv.cfg", "lib", "lib64", "include"):
        if (real / name).exists():
            (venv / name).symlink_to(real / name)
    for entry in (real / "bin").iterdir():
        if entry.name not in stand_ins:
            (venv / "bin" / entry.name).symlink_to(entry)
    for name, script in stand_ins.items():
        (venv / "bin" / name).write_text(script)
        (venv / "bin" / name).chmod(0o755)
    return venv


def labelme_stand_in(annotations_env: str) -> str:
    """A `labelme <folder> --labels <file>` that saves, for each photo of the folder, the annotation a person
    would: the JSON of the same stem from the folder named by the environment variable `annotations_env`."""
    return f"""#!/usr/bin/env bash
# Stands in for a person annotating in labelme's window (tests/docs_pages.py).
set -euo pipefail
if [ $# -ne 3 ] || [ "$2" != --labels ] || [ ! -f "$3" ]; then
  echo "labelme stand-in: expected <folder> --labels <labels file>, got: $*" >&2; exit 2
fi
for photo in "$1"/*.jpg "$1"/*.png; do
  [ -e "$photo" ] || continue
  stem=$(basename "${{photo%.*}}")
  cp "${annotations_env}/$stem.json" "$1/$stem.json"
done
"""


def nav_pages(nav) -> list[str]:
    """The pages of mkdocs.yml's nav, in order, however deep its sections nest."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return [page for item in nav for page in nav_pages(item)]
