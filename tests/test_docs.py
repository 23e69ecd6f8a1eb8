"""The project stands on its own (docs/decisions.md §16): its docs cite only what it contains.

- No tracked file cites the team's documents outside the repository; decisions are cited as
  ``docs/decisions.md §N``.
- Every ``docs/decisions.md §N`` cited anywhere is a section of docs/decisions.md.
- Every file path the pages in docs/ name exists, so the reading order they give is true.
- The README's architecture section names every module of image/ and none it does not have.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DECISIONS = REPO / "docs" / "decisions.md"
# Spelled in pieces so this file does not match itself.
WORDS = ("ARCHI" + "TECTURE", "FIND" + "INGS", "CONVEN" + "TIONS", "sha" + "red/")
OUTSIDE = re.compile("|".join(rf"\b{re.escape(word)}" for word in WORDS))
CITATION = re.compile(r"docs/decisions\.md\s+§(\d+)(?:\s+and\s+§(\d+))?")
PATH = re.compile(r"`((?:appliance|image|tools|tests|recipes|docs)/[\w./@-]+)`")


def _tracked_text_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    files = []
    for name in filter(None, out.split("\0")):
        path = REPO / name
        if not path.is_file():
            continue  # deleted in the working tree
        try:
            files.append((path, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue  # binary (model files, images)
    return [p for p, _ in files]


def _sections() -> set[int]:
    return {int(n) for n in re.findall(r"^## (\d+)\. ", DECISIONS.read_text(), re.M)}


def test_no_tracked_file_cites_documents_outside_the_repository() -> None:
    hits = []
    for path in _tracked_text_files():
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
    assert not hits, "cite docs/decisions.md §N instead:\n" + "\n".join(hits)


def test_every_cited_decision_exists() -> None:
    sections = _sections()
    assert set(range(1, 20)) <= sections, "decisions 1-19 keep their numbers"
    missing = []
    for path in _tracked_text_files():
        for match in CITATION.finditer(path.read_text(encoding="utf-8")):
            for number in filter(None, match.groups()):
                if int(number) not in sections:
                    missing.append(f"{path.relative_to(REPO)}: §{number}")
    assert not missing, "cited decisions that docs/decisions.md does not have: " + ", ".join(
        missing
    )


def test_paths_named_in_docs_exist() -> None:
    missing = []
    for page in sorted((REPO / "docs").glob("*.md")):
        for match in PATH.finditer(page.read_text(encoding="utf-8")):
            name = match.group(1).rstrip(".")
            if not (REPO / name).exists():
                missing.append(f"{page.name}: {name}")
    assert not missing, "docs name files that do not exist: " + ", ".join(missing)


def test_the_checks_catch_what_they_are_for() -> None:
    assert OUTSIDE.search("see " + "ARCHI" + "TECTURE Decision 4")
    assert OUTSIDE.search("../" + "sha" + "red/notes.md")
    assert not OUTSIDE.search("docs/decisions.md §4; /usr/share/doc")
    assert CITATION.findall("docs/decisions.md §8 and §14") == [("8", "14")]
    assert PATH.findall("read `image/build/pipeline.py` first") == ["image/build/pipeline.py"]


def _image_block() -> str:
    """The README architecture block's rows for image/ (up to the next top-level folder)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("\nimage/ ")
    end = re.search(r"\n[a-z]\S*/ ", text[start + 1 :])
    assert end is not None, "README: the architecture block lists a folder after image/"
    return text[start : start + 1 + end.start()]


def test_readme_architecture_names_every_image_module_and_no_other() -> None:
    block = _image_block()
    image = REPO / "image"
    unnamed = [
        str(path.relative_to(REPO))
        for path in sorted(image.rglob("*.py"))
        if path.name != "__init__.py"
        and "pyinstaller_hooks" not in path.parts
        and not re.search(rf"(?<![\w/]){re.escape(path.name)}", block)
    ]
    unnamed += [
        f"image/{d.name}/"
        for d in sorted(image.iterdir())
        if d.is_dir() and (d / "__init__.py").exists() and f"{d.name}/" not in block
    ]
    assert not unnamed, "README architecture section does not name: " + ", ".join(unnamed)
    named = set(re.findall(r"(?<![\w/.])([a-z_]+\.py)\b", block))
    existing = {path.name for path in image.rglob("*.py")}
    assert named <= existing, f"README names modules image/ does not have: {named - existing}"
