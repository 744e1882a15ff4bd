"""Shared checks of the CPU instruction-set split (used by test_cpu_isa.py and test_bazel.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess


def cpu_has_avx2() -> bool:
    """True when this CPU reports AVX2, FMA and F16C (the AVX2 build can run)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return all(re.search(rf"\b{f}\b", flags) for f in ("avx2", "fma", "f16c"))


def avx_instructions_outside_avx2(library: str | os.PathLike) -> tuple[int, set[str]]:
    """(VEX instructions in the AVX2 build, functions outside it that contain VEX instructions).

    The AVX2 build is every function in a ``tf_dcn::avx2::`` namespace or in the renamed Eigen
    (``TfDcnAvx2Eigen``); a mnemonic starting with "v" (except verr/verw) is VEX-encoded, i.e.
    needs AVX. Note that this cannot see a wrong link order when the inline functions both builds
    emit happen to contain no AVX code; the link order is checked separately.
    """
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils, installed with gcc) is needed for this check"
    listing = subprocess.run([objdump, "-d", "--no-show-raw-insn", "-C", str(library)],
                             capture_output=True, text=True, check=True).stdout
    function, leaked, vex_in_avx2 = None, set(), 0
    for line in listing.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
            continue
        insn = re.match(r"^\s+[0-9a-f]+:\s+(\S+)", line)
        if function and insn and insn.group(1).startswith("v") and insn.group(1) not in (
                "verr", "verw"):
            if "avx2::" in function or "TfDcnAvx2Eigen" in function:
                vex_in_avx2 += 1
            else:
                leaked.add(function)
    return vex_in_avx2, leaked
