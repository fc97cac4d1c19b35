"""The repository's text speaks about the project, not about how it was made.

Code, docs and configuration (``*.py``, ``*.md``, ``*.toml``) must not cite issue numbers,
talk about other working sessions, or point at design notes that live outside the
repository; the links of README.md and docs/ lead to files in the repository; and the README
stays short enough to read in ten minutes. Each scanner is also run on a small tree with
known violations, so the checks are shown able to fail.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = (".py", ".md", ".toml")
SKIPPED_DIRS = {".venv", "venv", "build", "dist", ".git", "node_modules"}
README_MAX_LINES = 350

# What `grep -rniE` with the same alternatives finds (an issue number; "other", a space,
# "sessions"; "shared/" then DESIGN or FACTS), written so that this file does not match itself.
FORBIDDEN = re.compile(r"issue ?#?[0-9]|other\ssessions|shared/(DESIGN|FACTS)", re.IGNORECASE)


def text_files(root: Path) -> list[Path]:
    """The ``*.py``/``*.md``/``*.toml`` files of ``root`` that git tracks or would track
    (untracked but not ignored: new files count too); without git, a walk of the tree.
    Virtual environments and build output are skipped either way."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root, capture_output=True, check=True).stdout.decode().split("\0")
        paths = [root / name for name in listed if name]
    except (OSError, subprocess.CalledProcessError):
        paths = [path for path in root.rglob("*") if path.is_file()]
    return sorted(path for path in paths
                  if path.suffix in SUFFIXES and path.is_file()
                  and not SKIPPED_DIRS & set(path.relative_to(root).parts[:-1]))


def forbidden_lines(root: Path) -> list[str]:
    """``path:line: text`` for every line that matches FORBIDDEN."""
    found = []
    for path in text_files(root):
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if FORBIDDEN.search(line):
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    return found


def test_no_issue_numbers_sessions_or_outside_references() -> None:
    found = forbidden_lines(ROOT)
    assert not found, "text that cites issues, sessions or files outside the repository:\n" + \
        "\n".join(found)


def test_the_scan_covers_code_docs_and_config() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in text_files(ROOT)}
    assert {"README.md", "pyproject.toml", "tests/test_repository_text.py"} <= names
    assert any(name.startswith("runtime/") for name in names)


def test_the_scan_finds_a_violation(tmp_path: Path) -> None:
    # no git repository here: the scanner walks the tree
    (tmp_path / "notes.md").write_text("Fixed by " + "issue " + "14.\n", encoding="utf-8")
    (tmp_path / "clean.py").write_text("x = 1  # fine\n", encoding="utf-8")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "vendored.py").write_text("# " + "issue " + "3\n", encoding="utf-8")
    (tmp_path / "data.txt").write_text("issue " + "7\n", encoding="utf-8")  # not scanned
    assert forbidden_lines(tmp_path) == ["notes.md:1: Fixed by " + "issue " + "14."]


def test_each_forbidden_phrase_is_caught() -> None:
    caught = ["Issue" + " #12", "issue" + "3", "shared with 6 other" + " sessions",
              "see " + "shared/" + "DESIGN.md", "shared/" + "FACTS.md"]
    allowed = ["a known issue with numba", "sessions of ONNX Runtime", "shared/ memory"]
    assert all(FORBIDDEN.search(text) for text in caught)
    assert not any(FORBIDDEN.search(text) for text in allowed)


LINK = re.compile(r"\]\(([^)\s]+)\)")


def broken_links(root: Path) -> list[str]:
    """``file: target`` for every relative Markdown link of README.md and docs/ whose file
    is not in the repository (web links and in-page anchors are not followed)."""
    broken = []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            path = target.split("#", 1)[0]
            if not path or re.match(r"[a-z]+:", path):
                continue
            resolved = (page.parent / path).resolve()
            if not resolved.is_relative_to(root) or not resolved.exists():
                broken.append(f"{page.relative_to(root)}: {target}")
    return broken


def test_doc_links_stay_inside_the_repository() -> None:
    assert not broken_links(ROOT)


def test_a_link_outside_the_repository_is_reported(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("[ok](../README.md#top) [web](https://x.org)\n",
                                                encoding="utf-8")
    (tmp_path / "README.md").write_text(
        "[guide](docs/guide.md) [gone](docs/missing.md) [out](../notes/DESIGN.md)\n",
        encoding="utf-8")
    assert broken_links(tmp_path) == ["README.md: docs/missing.md",
                                      "README.md: ../notes/DESIGN.md"]


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it at most {README_MAX_LINES} and move "
        "detail into docs/")
