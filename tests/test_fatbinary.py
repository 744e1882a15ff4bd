"""tools/fatbinary.py, the fat-binary writer that stands in for NVIDIA's `fatbinary` when clang
compiles the CUDA library from the CUDA 12 pip wheels (which ship no fatbinary).

Checked against NVIDIA's own tool where the CUDA toolkit is installed (CI has it): for cubins the
output is byte for byte what `fatbinary --compress=false` writes; for PTX the entry header is the
same apart from the payload size (NVIDIA's tool strips comments and indentation from the PTX text,
ours stores it unchanged). The cubins come from the CUDA 12.5 ptxas of `make cuda12-root`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("fatbinary", REPO / "tools" / "fatbinary.py")
fatbinary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fatbinary)

PTXAS = REPO / "build" / "cuda12" / "root" / "bin" / "ptxas"
NVIDIA_FATBINARY = next((Path(p) for p in (shutil.which("fatbinary") or "",
                                           "/usr/local/cuda/bin/fatbinary")
                         if p and Path(p).is_file() and "build/cuda12" not in p), None)


def _ptx(arch: int) -> bytes:
    return (f"//\n// a test kernel\n//\n\n.version 8.5\n.target sm_{arch}\n.address_size 64\n\n"
            ".visible .entry noop()\n{\n\tret;\n}\n").encode()


@pytest.fixture(scope="module")
def cubins(tmp_path_factory) -> dict[int, Path]:
    """sm_75 and sm_90 cubins of a trivial kernel, by CUDA 12.5's ptxas."""
    if not PTXAS.exists():
        if os.environ.get("TF_DCN_REQUIRE_CUDA_TOOLS") == "1":
            pytest.fail(f"{PTXAS} missing: `make cuda12-root` did not run")
        pytest.skip("no CUDA 12 ptxas (make cuda12-root)")
    out = tmp_path_factory.mktemp("cubins")
    result = {}
    for arch in (75, 90):
        (out / f"k{arch}.ptx").write_bytes(_ptx(arch))
        subprocess.run([str(PTXAS), "-m64", "-O3", "--gpu-name", f"sm_{arch}", "--output-file",
                        str(out / f"k{arch}.cubin"), str(out / f"k{arch}.ptx")], check=True)
        result[arch] = out / f"k{arch}.cubin"
    return result


def _nvidia_fatbinary_or_skip() -> Path:
    if NVIDIA_FATBINARY is None:
        if os.environ.get("TF_DCN_REQUIRE_CUDA_TOOLS") == "1":
            pytest.fail("TF_DCN_REQUIRE_CUDA_TOOLS=1 but NVIDIA's fatbinary is not installed")
        pytest.skip("NVIDIA's fatbinary (CUDA toolkit) not installed")
    return NVIDIA_FATBINARY


def test_round_trip_and_header_fields(cubins):
    images = [("elf", 75, cubins[75].read_bytes()), ("elf", 90, cubins[90].read_bytes()),
              ("ptx", 90, _ptx(90))]
    data = fatbinary.encode(images)
    magic, version, header_size, size = struct.unpack_from("<IHHQ", data)
    assert (magic, version, header_size, size) == (0xBA55ED50, 1, 16, len(data) - 16)
    decoded = fatbinary.decode(data)
    assert [(i.kind, i.arch) for i in decoded] == [(k, a) for k, a, _ in images]
    assert decoded[0].payload == images[0][2] and decoded[1].payload == images[1][2]
    assert decoded[2].payload == _ptx(90) and decoded[2].version == (8, 5)
    assert len(data) % 8 == 0


def test_cubins_are_bundled_exactly_like_nvidias_fatbinary(cubins, tmp_path):
    tool = _nvidia_fatbinary_or_skip()
    ours, theirs = tmp_path / "ours.fatbin", tmp_path / "theirs.fatbin"
    # clang's command line.
    assert fatbinary.main(["-64", "--create", str(ours),
                           f"--image=profile=sm_75,file={cubins[75]}",
                           f"--image=profile=sm_90,file={cubins[90]}"]) == 0
    subprocess.run([str(tool), "-64", "--compress=false", "--create", str(theirs),
                    f"--image3=kind=elf,sm=75,file={cubins[75]}",
                    f"--image3=kind=elf,sm=90,file={cubins[90]}"], check=True)
    assert ours.read_bytes() == theirs.read_bytes()


def test_ptx_entry_header_matches_nvidias_fatbinary(tmp_path):
    tool = _nvidia_fatbinary_or_skip()
    ptx = tmp_path / "k.ptx"
    ptx.write_bytes(_ptx(90))
    ours, theirs = tmp_path / "ours.fatbin", tmp_path / "theirs.fatbin"
    fatbinary.main(["-64", "--create", str(ours), f"--image=profile=compute_90,file={ptx}"])
    subprocess.run([str(tool), "-64", "--compress=false", "--create", str(theirs),
                    f"--image3=kind=ptx,sm=90,file={ptx}"], check=True)
    a, b = ours.read_bytes(), theirs.read_bytes()
    header_a, header_b = bytearray(a[16:96]), bytearray(b[16:96])
    header_a[8:16] = header_b[8:16] = bytes(8)  # the padded payload size differs (see above)
    assert header_a == header_b
    (theirs_image,) = fatbinary.decode(b)
    assert theirs_image.kind == "ptx" and theirs_image.version == (8, 5)
    assert b"ret;" in theirs_image.payload and b"a test kernel" not in theirs_image.payload


def test_bad_input_is_refused(tmp_path):
    bad = tmp_path / "not.cubin"
    bad.write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="not an ELF cubin"):
        fatbinary.main(["--create", str(tmp_path / "o"), f"--image=profile=sm_75,file={bad}"])
    with pytest.raises(SystemExit):
        fatbinary.main(["--create", str(tmp_path / "o"), "--image=profile=gfx90a,file=x"])
    with pytest.raises(ValueError, match="without a .version"):
        fatbinary.encode([("ptx", 90, b".target sm_90\n")])
    with pytest.raises(ValueError, match="not a fat binary"):
        fatbinary.decode(b"\0" * 32)
