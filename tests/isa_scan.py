"""Shared checks of the CPU instruction-set split (used by test_cpu_isa.py and test_bazel.py).

The op library holds the CPU kernels three times: the x86-64 baseline (``generic``), ``avx2``
(AVX2 + FMA + F16C) and ``avx512`` (AVX-512 F/BW/DQ/VL on top). A function belongs to a build by
its name: ``tf_dcn::avx2::`` or the renamed Eigen ``TfDcnAvx2Eigen``, ``tf_dcn::avx512::`` or
``TfDcnAvx512Eigen``; everything else is baseline. An instruction's encoding tells what it needs:
a VEX prefix (first opcode byte 0xc4/0xc5 in 64-bit mode) needs AVX, an EVEX prefix (0x62) needs
AVX-512.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

ISAS = ("generic", "avx2", "avx512")
# CPU flags (/proc/cpuinfo) each build needs.
ISA_FLAGS = {
    "generic": (),
    "avx2": ("avx2", "fma", "f16c"),
    "avx512": ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl"),
}
# Prefixes that may come before a VEX/EVEX prefix: address size and segment overrides.
_LEGACY_PREFIXES = {"67", "2e", "3e", "26", "36", "64", "65"}


def cpu_supports(isa: str) -> bool:
    """True when this CPU reports every flag the build of `isa` needs."""
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return isa == "generic"
    return all(f in flags for f in ISA_FLAGS[isa])


def cpu_has_avx2() -> bool:
    """True when this CPU reports AVX2, FMA and F16C (the AVX2 build can run)."""
    return cpu_supports("avx2")


def function_isa(name: str) -> str:
    """The build a (demangled) function name belongs to."""
    if "avx512::" in name or "TfDcnAvx512Eigen" in name:
        return "avx512"
    if "avx2::" in name or "TfDcnAvx2Eigen" in name:
        return "avx2"
    return "generic"


def instruction_isa(raw_bytes: list[str]) -> str:
    """The narrowest build that may contain an instruction, from its encoding (hex bytes)."""
    i = 0
    while i < len(raw_bytes) and raw_bytes[i] in _LEGACY_PREFIXES:
        i += 1
    first = raw_bytes[i] if i < len(raw_bytes) else ""
    if first == "62":
        return "avx512"
    if first in ("c4", "c5"):
        return "avx2"
    return "generic"


def scan(library: str | os.PathLike) -> tuple[dict[str, int], dict[str, set[str]]]:
    """Instructions of each build that need it, and the functions that leak wider instructions.

    Returns (counts, leaks): counts[isa] = instructions in functions of build `isa` that need
    exactly `isa` (VEX in avx2, EVEX in avx512; 0 means that build is missing); leaks[isa] = the
    functions of a narrower build that contain an instruction of `isa`.
    """
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils, installed with gcc) is needed for this check"
    listing = subprocess.run([objdump, "-d", "-w", "-C", str(library)],
                             capture_output=True, text=True, check=True).stdout
    rank = {isa: i for i, isa in enumerate(ISAS)}
    counts = {isa: 0 for isa in ISAS}
    leaks: dict[str, set[str]] = {isa: set() for isa in ISAS}
    function, owner = None, "generic"
    for line in listing.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
            owner = function_isa(function)
            continue
        insn = re.match(r"^\s+[0-9a-f]+:\t((?:[0-9a-f]{2} )+)", line)
        if function is None or not insn:
            continue
        needs = instruction_isa(insn.group(1).split())
        if rank[needs] > rank[owner]:
            leaks[needs].add(function)
        elif needs == owner:
            counts[owner] += 1
    return counts, leaks


def avx_instructions_outside_avx2(library: str | os.PathLike) -> tuple[int, set[str]]:
    """(VEX instructions in the AVX2 build, functions outside the AVX builds with VEX or EVEX)."""
    counts, leaks = scan(library)
    return counts["avx2"], leaks["avx2"] | leaks["avx512"]
