"""The Makefile and the Bazel BUILD file build the op library from the same C++ sources.

The Makefile's OPS_SRCS (``make -s print-sources``) is the list; cc/BUILD must name the same
files, and every .cc under cc/ must be in both. cc/BUILD is read without Bazel, by running it as
Python with stand-ins for the Bazel functions it calls (BUILD files are Starlark, a subset of
Python); where ``bazel`` is on PATH, ``bazel query`` cross-checks that reading.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILD_FILE = REPO / "cc" / "BUILD"
BAZEL_LIBRARY = "_tf_dcn_ops.so"
AVX2_COPTS = ("-mavx2", "-mfma", "-mf16c")


def _is_cpu_source(path: Path) -> bool:
    """A .cc under cc/ that belongs in the CPU op library: not CUDA, not a test or GPU-only file."""
    rel = path.relative_to(REPO)
    return not (
        path.name.endswith((".cu.cc", ".cu"))
        or any(part in ("gpu", "tests", "test") for part in rel.parts[:-1])
    )


def makefile_sources() -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(
        ["make", "-s", "--no-print-directory", "print-sources"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    return out.split()


class _Rule:
    def __init__(self, kind: str, attrs: dict):
        self.kind = kind
        self.name = attrs["name"]
        self.srcs = list(attrs.get("srcs", []))
        self.deps = list(attrs.get("deps", []))
        self.copts = list(attrs.get("copts", []))


def read_build_file(path: Path | None = None) -> dict[str, _Rule]:
    """The rules of a BUILD file (cc/BUILD), evaluated with stand-ins for Bazel's functions."""
    path = path or BUILD_FILE
    rules: dict[str, _Rule] = {}
    package_dir = path.parent

    def rule(kind):
        def record(**attrs):
            assert attrs["name"] not in rules, f"{path}: two rules named {attrs['name']!r}"
            rules[attrs["name"]] = _Rule(kind, attrs)

        return record

    def glob(include, exclude=(), **_):
        found = set()
        for pattern in include:
            found.update(p for p in package_dir.glob(pattern) if p.is_file())
        for pattern in exclude:
            found.difference_update(package_dir.glob(pattern))
        return sorted(str(p.relative_to(package_dir)) for p in found)

    def ignore(*_, **__):
        return None

    namespace = {
        "cc_library": rule("cc_library"),
        "cc_binary": rule("cc_binary"),
        "cc_test": rule("cc_test"),
        "load": ignore,  # e.g. load("@rules_cc//cc:defs.bzl", "cc_library"): names stay the stubs
        "config_setting": ignore,
        "exports_files": ignore,
        "filegroup": ignore,
        "package": ignore,
        "glob": glob,
        "select": lambda *_, **__: [],  # only copts use select(); its branches don't matter here
    }
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # noqa: S102
    return rules


def bazel_sources(rules: dict[str, _Rule], target: str = BAZEL_LIBRARY) -> list[str]:
    """Source files (repository-relative) of `target` and its dependencies in the same package."""
    package = BUILD_FILE.parent.relative_to(REPO).as_posix()
    seen, order, stack = set(), [], [target]
    while stack:
        name = stack.pop(0)
        if name in seen:
            continue
        seen.add(name)
        assert name in rules, f"cc/BUILD: no rule {name!r}"
        for src in rules[name].srcs:
            assert not src.startswith((":", "//", "@")), (
                f"cc/BUILD: {name} has a label {src!r} in srcs; list source files directly so "
                "that this test can compare them with the Makefile"
            )
            order.append(f"{package}/{src}")
        stack.extend(d[1:] for d in rules[name].deps if d.startswith(":"))
    return order


def _duplicates(items: list[str]) -> list[str]:
    return sorted({item for item in items if items.count(item) > 1})


def _diff(a_name: str, a: list[str], b_name: str, b: list[str]) -> str:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    return (
        f"\n  only in {a_name}: {only_a or '-'}\n  only in {b_name}: {only_b or '-'}\n"
        "Keep the Makefile's OPS_SRCS and cc/BUILD's source lists (OPS_SRCS, KERNELS_SRCS, "
        "KERNELS_AVX2_SRCS, KERNELS_AVX512_SRCS) in step."
    )


def test_makefile_and_bazel_build_the_same_sources():
    make_srcs = makefile_sources()
    bazel_srcs = bazel_sources(read_build_file())
    assert not _duplicates(make_srcs), f"listed twice in OPS_SRCS: {_duplicates(make_srcs)}"
    assert not _duplicates(bazel_srcs), f"listed twice in cc/BUILD: {_duplicates(bazel_srcs)}"
    assert sorted(make_srcs) == sorted(bazel_srcs), _diff(
        "the Makefile's OPS_SRCS", make_srcs, "cc/BUILD (//cc:_tf_dcn_ops.so)", bazel_srcs
    )


def test_every_cc_file_is_built():
    on_disk = sorted(
        p.relative_to(REPO).as_posix() for p in (REPO / "cc").rglob("*.cc") if _is_cpu_source(p)
    )
    assert on_disk, "no .cc files under cc/"
    make_srcs = makefile_sources()
    bazel_srcs = bazel_sources(read_build_file())
    missing_make = sorted(set(on_disk) - set(make_srcs))
    missing_bazel = sorted(set(on_disk) - set(bazel_srcs))
    assert not missing_make and not missing_bazel, (
        f"C++ sources under cc/ that are not built:\n  not in the Makefile's OPS_SRCS: "
        f"{missing_make or '-'}\n  not in cc/BUILD: {missing_bazel or '-'}\n"
        "(CUDA files, *.cu.cc, and directories named gpu/ or tests/ are exempt)"
    )


def _make_isa_flags() -> dict[str, set[str]]:
    """The Makefile's -m flags per wider instruction set (make print-isa-flags)."""
    out = subprocess.run(["make", "-s", "--no-print-directory", "print-isa-flags"], cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=60).stdout
    flags = {}
    for line in out.splitlines():
        isa, _, values = line.partition(":")
        flags[isa.strip()] = set(values.split())
    return flags


def test_isa_sources_get_their_flags_and_come_last_narrowest_first():
    """The Makefile gives *_avx2.cc its AVX2_FLAGS and *_avx512.cc its AVX512_FLAGS; cc/BUILD must
    give each rule exactly the -m flags of the sources it builds, and none to the others."""
    isa_flags = _make_isa_flags()
    assert set(isa_flags) == {"avx2", "avx512"}, isa_flags
    assert set(AVX2_COPTS) == isa_flags["avx2"] < isa_flags["avx512"], isa_flags
    rules = read_build_file()
    reachable = set(bazel_sources(rules))
    for rule in rules.values():
        srcs = [f"cc/{s}" for s in rule.srcs]
        m_flags = {f for f in rule.copts if f.startswith("-m")}
        isas = {s.rsplit("_", 1)[1][:-3] if s.endswith(("_avx2.cc", "_avx512.cc")) else "generic"
                for s in srcs}
        assert len(isas) <= 1, f"cc/BUILD: {rule.name} mixes instruction sets: {srcs}"
        isa = isas.pop() if isas else "generic"
        assert m_flags == isa_flags.get(isa, set()), (
            f"cc/BUILD: {rule.name} builds {isa} sources with {sorted(m_flags)}")
    make_srcs = makefile_sources()
    tail = [s for s in make_srcs if s.endswith(("_avx2.cc", "_avx512.cc"))]
    assert [s.rsplit("_", 1)[1] for s in tail] == ["avx2.cc", "avx512.cc"], tail
    assert make_srcs[-len(tail):] == tail, (
        "the Makefile must link the wider-ISA objects after every other object, avx2 before "
        "avx512 (OPS_SRCS order)"
    )
    assert set(tail) <= reachable


def test_bazel_query_agrees_with_the_parsed_build_file():
    """With Bazel available, its own reading of cc/BUILD gives the same sources."""
    bazel = shutil.which("bazel")
    if not bazel:
        pytest.skip("bazel is not on PATH (the parse-based checks above still ran)")
    # deps() loads @local_config_tf, which needs this Python's TensorFlow (as in .bazelrc).
    proc = subprocess.run(
        [bazel, "query", "--noshow_progress", f"--repo_env=PYTHON_BIN_PATH={sys.executable}",
         f"kind('source file', deps(//cc:{BAZEL_LIBRARY}) intersect //cc:*)"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    queried = sorted(label.replace("//cc:", "cc/", 1) for label in labels if label.endswith(".cc"))
    parsed = sorted(bazel_sources(read_build_file()))
    assert queried == parsed, _diff("bazel query", queried, "the parsed cc/BUILD", parsed)
