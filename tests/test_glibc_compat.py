"""tools/glibc_compat.py: pins glibc references to versions at or below a floor (the CUDA library
relies on it to stay manylinux_2_27; test_wheel.py checks the built libraries themselves)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("glibc_compat", REPO / "tools" / "glibc_compat.py")
glibc_compat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(glibc_compat)


def test_plan_renames_picks_the_newest_version_at_or_below_the_floor():
    table = {
        "dlopen": [((2, 2, 5), "GLIBC_2.2.5", False), ((2, 34), "GLIBC_2.34", True)],
        "dlmopen": [((2, 3, 4), "GLIBC_2.3.4", False), ((2, 34), "GLIBC_2.34", True)],
        "memcpy": [((2, 2, 5), "GLIBC_2.2.5", False), ((2, 14), "GLIBC_2.14", True)],
        "newfunc": [((2, 38), "GLIBC_2.38", True)],
    }
    renames, impossible = glibc_compat.plan_renames(
        {"dlopen", "dlmopen", "memcpy", "newfunc", "not_in_libc"}, table, (2, 27))
    assert renames == {"dlopen": "dlopen@GLIBC_2.2.5", "dlmopen": "dlmopen@GLIBC_2.3.4"}
    assert impossible == ["newfunc@GLIBC_2.38"]


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_rewritten_object_links_to_the_old_versions_and_runs(tmp_path):
    source = tmp_path / "uses_dl.c"
    source.write_text(
        "#include <dlfcn.h>\n#include <pthread.h>\n"
        "static void* id(void* p) { return p; }\n"
        "int probe(void) { pthread_t t; pthread_create(&t, 0, id, 0); pthread_join(t, 0);\n"
        "  return dlopen(\"libm.so.6\", RTLD_NOW) != 0; }\n")
    obj = tmp_path / "uses_dl.o"
    subprocess.run(["cc", "-fPIC", "-c", str(source), "-o", str(obj)], check=True)
    libc = subprocess.run(["cc", "-print-file-name=libc.so.6"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert glibc_compat.main(["--floor", "2.27", "--libc", libc, str(obj), str(obj)]) == 0

    library = tmp_path / "libprobe.so"
    subprocess.run(["cc", "-shared", str(obj), "-o", str(library)], check=True)
    dump = subprocess.run(["objdump", "-T", str(library)], capture_output=True, text=True,
                          check=True).stdout
    versions = {line.split()[-1]: line.split()[-2] for line in dump.splitlines()
                if line.split()[-1:] in (["dlopen"], ["pthread_create"], ["pthread_join"])}
    assert len(versions) == 3, dump
    for name, version in versions.items():
        number = tuple(int(p) for p in version.strip("()").split("_")[1].split("."))
        assert number <= (2, 27), (name, version)

    main = tmp_path / "main.c"
    main.write_text(
        "#include <dlfcn.h>\n#include <stdio.h>\n"
        "int main(int argc, char** argv) { void* h = dlopen(argv[1], RTLD_NOW);\n"
        "  if (!h) { puts(dlerror()); return 2; }\n"
        "  int (*probe)(void) = (int (*)(void))dlsym(h, \"probe\"); return probe() == 1 ? 0 : 1; }\n")
    subprocess.run(["cc", str(main), "-o", str(tmp_path / "main"), "-ldl"], check=True)
    subprocess.run([str(tmp_path / "main"), str(library)], check=True)
