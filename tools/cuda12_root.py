#!/usr/bin/env python3
"""Assembles a CUDA 12 installation for clang's ``--cuda-path`` from NVIDIA's pip wheels.

``make gpu`` installs the pinned wheels of requirements-cuda12.txt (``nvidia-cuda-runtime-cu12``:
the runtime headers, TensorFlow 2.21's own runtime; ``nvidia-cuda-nvcc-cu12``: ``ptxas``,
libdevice and the ``crt/`` headers; ``nvidia-cuda-cccl-cu12``: CUB and Thrust) into WHEELS, and
this script lays them out the way clang expects a CUDA toolkit::

    ROOT/include/        the three include/ trees, merged (symbolic links)
    ROOT/bin/ptxas       the wheel's ptxas
    ROOT/bin/fatbinary   tools/fatbinary.py (the wheels have no fatbinary)
    ROOT/nvvm/libdevice  the wheel's libdevice.10.bc

plus ``include/curand_mtgp32_kernel.h``, an empty header: clang's CUDA wrapper header includes
it, and the device code never uses cuRAND. Usage::

    python tools/cuda12_root.py WHEELS ROOT     assemble ROOT from the wheels in WHEELS
    python tools/cuda12_root.py --check ROOT    only check a CUDA installation (e.g. CUDA_PATH)

Both print the CUDA version found in ``include/cuda.h`` and fail if it is not 12.x.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("cuda_runtime", "cuda_nvcc", "cuda_cccl")


def cuda_version(include: Path) -> tuple[int, int]:
    """(major, minor) of the CUDA_VERSION macro in include/cuda.h."""
    match = re.search(r"#define\s+CUDA_VERSION\s+(\d+)", (include / "cuda.h").read_text())
    if match is None:
        raise SystemExit(f"{include / 'cuda.h'}: no CUDA_VERSION")
    value = int(match.group(1))
    return value // 1000, value % 1000 // 10


def assemble(wheels: Path, root: Path) -> tuple[int, int]:
    nvidia = wheels / "nvidia"
    missing = [p for p in PACKAGES if not (nvidia / p / "include").is_dir()]
    if missing:
        raise SystemExit(f"{nvidia}: missing {missing} (pip install -r requirements-cuda12.txt "
                         f"--target {wheels})")
    if root.exists():
        shutil.rmtree(root)
    include = root / "include"
    include.mkdir(parents=True)
    for package in PACKAGES:
        for entry in sorted((nvidia / package / "include").iterdir()):
            if entry.name == "__init__.py" or (include / entry.name).exists():
                continue
            (include / entry.name).symlink_to(entry.resolve())
    (include / "curand_mtgp32_kernel.h").write_text(
        "// Empty: clang's CUDA wrapper includes this cuRAND header; tf-dcn uses no cuRAND.\n")
    (root / "bin").mkdir()
    (root / "bin" / "ptxas").symlink_to((nvidia / "cuda_nvcc" / "bin" / "ptxas").resolve())
    fatbinary = root / "bin" / "fatbinary"
    fatbinary.write_text("#!/bin/sh\n"
                         f"exec {shlex.quote(sys.executable)} "
                         f"{shlex.quote(str(REPO / 'tools' / 'fatbinary.py'))} \"$@\"\n")
    fatbinary.chmod(0o755)
    (root / "nvvm").mkdir()
    (root / "nvvm" / "libdevice").symlink_to(
        (nvidia / "cuda_nvcc" / "nvvm" / "libdevice").resolve())
    # clang looks for a lib64 directory when it validates the installation.
    (root / "lib64").mkdir()
    return check(root)


def check(root: Path) -> tuple[int, int]:
    """The CUDA version of the installation at `root`; exits unless it is CUDA 12."""
    if not (root / "include" / "cuda.h").is_file():
        raise SystemExit(f"{root}: no include/cuda.h (not a CUDA installation)")
    version = cuda_version(root / "include")
    if version[0] != 12:
        raise SystemExit(f"{root}: CUDA {version[0]}.{version[1]}; tf-dcn's CUDA library must be "
                         "built with CUDA 12 (TensorFlow 2.21's runtime)")
    return version


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "--check":
        major, minor = check(Path(argv[1]).resolve())
        print(f"CUDA {major}.{minor} installation at {argv[1]}")
        return 0
    major, minor = assemble(Path(argv[0]).resolve(), Path(argv[1]).resolve())
    print(f"CUDA {major}.{minor} installation assembled in {os.path.relpath(argv[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
