"""Every document the repository's code and docs cite must be in the repository.

Scans the repository's text files (``git ls-files``: tracked files plus new files that git does
not ignore) for references that look like repository paths to markdown files (``*.md``) or to
files under ``docs/`` and checks that each one names an existing file, relative to the repository
root or to the citing file's directory. A bare ``semantics.md`` therefore only passes when such a
file really exists there. Citations of numbered sections (``docs/semantics.md section 2``) must
name a ``## 2.`` heading of that file. Nothing may point at notes outside the repository
(``shared/notes``, ``../shared``).
"""

from __future__ import annotations

import posixpath
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
THIS_FILE = Path(__file__).resolve().relative_to(REPO).as_posix()

SCANNED_SUFFIXES = (".py", ".h", ".cc", ".cu", ".cuh", ".md", ".sh", ".bzl", ".txt", ".toml")
SCANNED_NAMES = ("Makefile", "BUILD", "WORKSPACE")

# A path-like token: not preceded by a character that could continue a path or URL (so
# "https://host/x/README.md" and "$dir/README.md" are not taken for repository paths).
_START = r"(?<![\w./$}-])"
_MARKDOWN = re.compile(_START + r"((?:\.{1,2}/)?(?:[\w.-]+/)*[\w.-]*\w\.md)\b")
_DOCS_FILE = re.compile(_START + r"((?:\./)?docs/(?:[\w.-]+/)*[\w-][\w.-]*\.[A-Za-z0-9]+)\b")
_SECTION = re.compile(
    _START + r"((?:\.{1,2}/)?(?:[\w.-]+/)*[\w.-]*\w\.md)[`'\"]*,?\s+sections?\s+"
    r"(\d+(?:\s*(?:,|and)\s*\d+)*)"
)
FORBIDDEN = ("shared/notes", "../shared")


def _repository_files() -> list[str]:
    """Paths (relative, POSIX) of the files git tracks or would track, that exist on disk."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO, check=True, capture_output=True, text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"not a git checkout of the repository ({err})")
    return sorted({p for p in listing.split("\0") if p and (REPO / p).is_file()})


def _is_scanned(path: str) -> bool:
    name = posixpath.basename(path)
    return name in SCANNED_NAMES or name.endswith(SCANNED_SUFFIXES)


def referenced_paths(text: str) -> list[str]:
    """The markdown and docs/ paths a text refers to, in order, without duplicates."""
    found = [m.group(1) for pattern in (_MARKDOWN, _DOCS_FILE) for m in pattern.finditer(text)]
    return list(dict.fromkeys(found))


def resolve(reference: str, citing: str, files: set[str]) -> str | None:
    """The repository file ``reference`` (cited in file ``citing``) names, or None."""
    for base in ("", posixpath.dirname(citing)):
        candidate = posixpath.normpath(posixpath.join(base, reference))
        if candidate in files:
            return candidate
    return None


def problems(text: str, citing: str, files: set[str], read=None) -> list[str]:
    """What is wrong with the references of ``text`` (the contents of file ``citing``)."""
    found = []
    for marker in FORBIDDEN:
        if marker in text:
            found.append(f"{citing}: refers to {marker!r}, outside the repository")
    for reference in referenced_paths(text):
        if resolve(reference, citing, files) is None:
            found.append(f"{citing}: {reference!r} is not a file of the repository")
    for match in _SECTION.finditer(text):
        target = resolve(match.group(1), citing, files)
        if target is None or not target.endswith(".md"):
            continue  # reported above
        body = read(target) if read else (REPO / target).read_text(encoding="utf-8")
        for number in re.findall(r"\d+", match.group(2)):
            if not re.search(rf"^## {number}\.\s", body, re.MULTILINE):
                found.append(f"{citing}: {target} has no section '## {number}.' "
                             f"(cited as {match.group(0)!r})")
    return found


def test_cited_documents_exist_in_the_repository():
    files = _repository_files()
    file_set = set(files)
    errors = []
    for path in files:
        if path == THIS_FILE or not _is_scanned(path):
            continue
        try:
            text = (REPO / path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        errors += problems(text, path, file_set)
    assert not errors, "broken documentation references:\n" + "\n".join(errors)


def test_the_cited_documents_are_there():
    files = set(_repository_files())
    for doc in ("docs/semantics.md", "docs/gpu-build.md"):
        assert doc in files, doc
    semantics = (REPO / "docs/semantics.md").read_text(encoding="utf-8")
    assert "## 1. Deformable convolution" in semantics
    assert "## 2. Deformable (PS-)RoI pooling" in semantics


# The checker itself, on the kind of text it must accept and the kind it must reject (the old
# references to private notes that lived outside the repository).
_FAKE_FILES = {"README.md", "docs/semantics.md", "docs/gpu-build.md", "docs/picture.png",
               "tests/notes.md", "tests/x.py", "cc/kernels/dcn_common.h", "tf_dcn/composite.py"}
_FAKE_SEMANTICS = "# t\n\n## 1. Deformable convolution\n\n## 2. Deformable (PS-)RoI pooling\n"


def _check(text: str, citing: str) -> list[str]:
    return problems(text, citing, _FAKE_FILES, read=lambda path: _FAKE_SEMANTICS)


@pytest.mark.parametrize("text, citing", [
    ("// sampling (docs/semantics.md section 1, torchvision's border rule).",
     "cc/kernels/dcn_common.h"),
    ('"""the semantics (``docs/semantics.md`` sections 1 and 2) of the op"""',
     "tf_dcn/composite.py"),
    ("# libraries (see docs/gpu-build.md), so", "Makefile"),
    ("![sampling locations](docs/picture.png)", "README.md"),
    ('long_description=open("README.md").read()', "setup.py"),
    ('cp "$here/setup.py" "$here/README.md" "$staging/"', "build_pip_pkg.sh"),
    ("see https://github.com/owner/repo/blob/main/CONTRIBUTING.md", "README.md"),
    ("next to this file: notes.md", "tests/x.py"),
    ("docs/            pictures used by this README", "README.md"),
])
def test_checker_accepts_valid_references(text, citing):
    assert _check(text, citing) == []


@pytest.mark.parametrize("text, citing, expected", [
    ("// Deformable convolution sampling (semantics.md section 1, torchvision's border rule).",
     "cc/kernels/dcn_common.h", "'semantics.md' is not a file"),
    ('"""the semantics (``notes/semantics.md`` sections 1 and 2) of the custom-op"""',
     "tf_dcn/composite.py", "'notes/semantics.md' is not a file"),
    ("# libraries (see shared/notes/gpu-build.md), so", "Makefile", "outside the repository"),
    ("Eigen (nvcc 13 and TF's headers do not mix: shared/notes/gpu-build.md).",
     "tests/test_cuda_library.py", "outside the repository"),
    ("read ../shared/notes/semantics.md", "README.md", "outside the repository"),
    ("![plot](docs/missing_plot.png)", "README.md", "'docs/missing_plot.png' is not a file"),
    ("(docs/semantics.md section 3)", "tests/x.py", "no section '## 3.'"),
    ("(docs/semantics.md sections 1 and 4)", "tests/x.py", "no section '## 4.'"),
])
def test_checker_rejects_broken_references(text, citing, expected):
    found = _check(text, citing)
    assert found and any(expected in line for line in found), found
