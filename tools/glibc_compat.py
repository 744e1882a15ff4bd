#!/usr/bin/env python3
"""Pins the glibc references of objects or static archives to symbol versions no newer than a floor.

glibc 2.34 moved libdl, libpthread and librt into libc and gave their functions a new default
version, ``GLIBC_2.34``, while still exporting the old versions (``dlopen@GLIBC_2.2.5``, ...) as
aliases of the same code. An object linked on glibc >= 2.34 therefore needs glibc 2.34 to load,
although nothing in it needs a newer glibc. The CUDA runtime forwarders of ``_tf_dcn_ops_cuda.so``
(they call ``dlopen``/``dlsym``), and static CUDA runtimes in general, are such cases: they would
lift the wheel's floor to ``manylinux_2_34``, above TensorFlow 2.21's own ``manylinux_2_27``.

This script reads which symbols the input (an ``.o`` or an ``.a``) leaves undefined, looks each one up in the build
machine's ``libc.so.6``, and where the default version is newer than ``--floor`` renames the
reference to ``name@OLDVER`` (the newest version at or below the floor), which the linker reads
as a versioned reference, exactly like one written with ``.symver``. The result is written to
OUT (which may be the input itself; it is replaced only when complete). A symbol with no version at or below the floor is an
error: that library really does need a newer glibc.

Usage: glibc_compat.py --floor 2.27 --libc /lib/x86_64-linux-gnu/libc.so.6 IN OUT
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

_DYNSYM_LINE = re.compile(r"\s\(?(GLIBC_[0-9.]+)\)?\s+(\S+)$")


def version_tuple(version: str) -> tuple[int, ...]:
    """``"GLIBC_2.3.4"`` -> ``(2, 3, 4)``."""
    return tuple(int(part) for part in version.split("_", 1)[1].split("."))


def libc_versions(libc: str) -> dict[str, list[tuple[tuple[int, ...], str, bool]]]:
    """Every dynamic symbol of ``libc`` -> [(version tuple, version name, is default)]."""
    dump = subprocess.run(["objdump", "-T", libc], check=True, capture_output=True, text=True)
    table: dict[str, list[tuple[tuple[int, ...], str, bool]]] = {}
    for line in dump.stdout.splitlines():
        match = _DYNSYM_LINE.search(line)
        if not match or " *UND*" in line:
            continue
        version, name = match.groups()
        is_default = f"({version})" not in line  # objdump brackets the hidden (non-default) ones
        table.setdefault(name, []).append((version_tuple(version), version, is_default))
    return table


def undefined_symbols(archive: str) -> set[str]:
    """Names the object (or the archive's members) reference but do not define."""
    dump = subprocess.run(["nm", "-u", "--format=posix", archive], check=True,
                          capture_output=True, text=True)
    names = set()
    for line in dump.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1] in ("U", "w") and "@" not in fields[0]:
            names.add(fields[0])
    return names


def plan_renames(undefined: set[str], table, floor: tuple[int, ...]) -> tuple[dict[str, str], list[str]]:
    """(name -> name@VERSION for the references to pin, names that cannot meet the floor)."""
    renames: dict[str, str] = {}
    impossible: list[str] = []
    for name in sorted(undefined):
        versions = table.get(name)
        if not versions:
            continue  # not a libc symbol
        default = [v for v in versions if v[2]]
        if not default or default[0][0] <= floor:
            continue
        older = [v for v in versions if v[0] <= floor]
        if not older:
            impossible.append(f"{name}@{default[0][1]}")
            continue
        renames[name] = f"{name}@{max(older)[1]}"
    return renames, impossible


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--floor", required=True, help="newest glibc allowed, e.g. 2.27")
    parser.add_argument("--libc", required=True, help="the build machine's libc.so.6")
    parser.add_argument("archive", help="an object file or a static archive")
    parser.add_argument("output", help="where the pinned copy goes (may be the input)")
    args = parser.parse_args(argv)
    floor = tuple(int(part) for part in args.floor.split("."))

    renames, impossible = plan_renames(undefined_symbols(args.archive),
                                       libc_versions(args.libc), floor)
    if impossible:
        print(f"{args.archive} needs glibc symbols newer than {args.floor} with no older "
              f"version: {', '.join(impossible)}", file=sys.stderr)
        return 1
    tmp = f"{args.output}.tmp"
    with tempfile.NamedTemporaryFile("w", suffix=".map", delete=False) as mapping:
        mapping.writelines(f"{old} {new}\n" for old, new in renames.items())
    try:
        subprocess.run(["objcopy", f"--redefine-syms={mapping.name}", args.archive, tmp],
                       check=True)
    finally:
        os.unlink(mapping.name)
    os.replace(tmp, args.output)
    print(f"{args.output}: {len(renames)} glibc references pinned at or below {args.floor}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
