#!/usr/bin/env python3
"""A minimal NVIDIA fatbinary writer: bundles cubins (SASS) and PTX into one fat binary.

clang compiles CUDA by running ``ptxas`` for every GPU architecture and then NVIDIA's
``fatbinary`` tool to bundle the results; the pip wheels of the CUDA 12 toolkit ship ``ptxas`` but
not ``fatbinary``. This script takes its place (tools/cuda12_root.py installs it as
``bin/fatbinary`` of the CUDA path handed to clang), so the CUDA library builds from pip wheels
alone. It accepts the command line clang uses::

    fatbinary -64 --create OUT --image=profile=sm_75,file=A.cubin \
        --image=profile=compute_90,file=B.s

and writes an uncompressed fat binary in the container layout of CUDA 12 (the layout that
TensorFlow 2.21's own fat binaries and ``fatbinary --compress=false`` produce; see
docs/gpu-build.md). ``python tools/fatbinary.py --list FILE`` prints the entries of a fat binary,
which tests/test_cuda_library.py uses to check the images of the built library.

Layout (little endian). Container header, 16 bytes: magic 0xBA55ED50 (u32), version 1 (u16), header
size 16 (u16), size of all entries (u64). Each entry: kind (u16: 1 PTX, 2 cubin), entry version
0x0101 (u16), entry header size (u32: 64 for a cubin, 80 for PTX), payload size padded to 8 (u64),
compressed size (u32, 0), PTX option offset (u32: 0x40 for PTX, else 0), image version minor and
major (u16, u16: the PTX ISA version for PTX, 7.1 for a cubin), SM architecture (u32), name offset
and length (u32, u32: 0), flags (u64: 0x11, 64-bit host Linux), two zero u64 (the second is the
uncompressed size of a compressed image), and for PTX 16 more bytes (0x48, 0). The payload is the
cubin itself, or the PTX text with a terminating NUL, padded with NULs to 8 bytes.
"""

from __future__ import annotations

import argparse
import re
import struct
import sys
from typing import NamedTuple

MAGIC = 0xBA55ED50
KIND_PTX, KIND_CUBIN = 1, 2
ENTRY_VERSION = 0x0101
FLAGS_64BIT_LINUX = 0x11
CUBIN_IMAGE_VERSION = (7, 1)  # (minor, major), what CUDA 12's fatbinary records for a cubin
_PTX_VERSION = re.compile(rb"^\s*\.version\s+(\d+)\.(\d+)", re.MULTILINE)
_PROFILE = re.compile(r"^(sm|compute)_(\d+)[a-z]?$")


class Image(NamedTuple):
    """One entry of a fat binary: a cubin for `arch` (kind 'elf') or PTX for `arch` ('ptx')."""

    kind: str  # "elf" or "ptx"
    arch: int  # e.g. 90 for sm_90 / compute_90
    version: tuple[int, int]  # (major, minor): the PTX ISA version, or the entry's cubin version
    payload: bytes  # without padding


def _pad8(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 8)


def ptx_version(ptx: bytes) -> tuple[int, int]:
    """The `.version major.minor` directive of a PTX text."""
    match = _PTX_VERSION.search(ptx)
    if match is None:
        raise ValueError("PTX text without a .version directive")
    return int(match.group(1)), int(match.group(2))


def encode_entry(kind: str, arch: int, payload: bytes) -> bytes:
    """One entry (header + padded payload) of an uncompressed fat binary."""
    if kind == "ptx":
        major, minor = ptx_version(payload)
        body = _pad8(payload.rstrip(b"\0") + b"\0")
        header = struct.pack("<HHIQIIHHIIIQQQ", KIND_PTX, ENTRY_VERSION, 80, len(body), 0, 0x40,
                             minor, major, arch, 0, 0, FLAGS_64BIT_LINUX, 0, 0)
        header += struct.pack("<QQ", 0x48, 0)
    elif kind == "elf":
        if payload[:4] != b"\x7fELF":
            raise ValueError(f"sm_{arch}: the image is not an ELF cubin")
        body = _pad8(payload)
        minor, major = CUBIN_IMAGE_VERSION
        header = struct.pack("<HHIQIIHHIIIQQQ", KIND_CUBIN, ENTRY_VERSION, 64, len(body), 0, 0,
                             minor, major, arch, 0, 0, FLAGS_64BIT_LINUX, 0, 0)
    else:
        raise ValueError(f"unknown image kind {kind!r}")
    return header + body


def encode(images: list[tuple[str, int, bytes]]) -> bytes:
    """A fat binary holding (kind, arch, payload) images in the given order."""
    entries = b"".join(encode_entry(kind, arch, payload) for kind, arch, payload in images)
    return struct.pack("<IHHQ", MAGIC, 1, 16, len(entries)) + entries


def decode(data: bytes) -> list[Image]:
    """Every image of one or more concatenated fat binaries (uncompressed entries only: a
    compressed entry raises ValueError)."""
    images: list[Image] = []
    pos = 0
    while pos + 16 <= len(data):
        magic, version, header_size, size = struct.unpack_from("<IHHQ", data, pos)
        if magic != MAGIC:
            raise ValueError(f"offset {pos}: not a fat binary (magic {magic:#x})")
        if version != 1:
            raise ValueError(f"offset {pos}: fat binary container version {version}, expected 1")
        entry, end = pos + header_size, pos + header_size + size
        while entry < end:
            (kind, _, entry_header, payload_size, compressed, _, minor, major, arch, _, _, flags,
             _, _) = struct.unpack_from("<HHIQIIHHIIIQQQ", data, entry)
            if flags & 0x2000 or compressed:
                raise ValueError(f"sm_{arch}: compressed fat binary entry")
            payload = data[entry + entry_header:entry + entry_header + payload_size]
            if kind == KIND_PTX:
                images.append(Image("ptx", arch, (major, minor), payload.rstrip(b"\0")))
            elif kind == KIND_CUBIN:
                images.append(Image("elf", arch, (major, minor), payload))
            else:
                raise ValueError(f"offset {entry}: unknown entry kind {kind}")
            entry += entry_header + payload_size
        pos = (end + 7) // 8 * 8
    return images


def _parse_image(spec: str) -> tuple[str, int, str]:
    fields = dict(part.split("=", 1) for part in spec.split(",") if "=" in part)
    profile, path = fields.get("profile", ""), fields.get("file", "")
    match = _PROFILE.match(profile)
    if match is None or not path:
        raise SystemExit(f"fatbinary.py: cannot read --image={spec} (expected profile=sm_XX or "
                         "compute_XX and file=PATH)")
    return ("elf" if match.group(1) == "sm" else "ptx"), int(match.group(2)), path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-64", dest="bits64", action="store_true", help="64-bit (the only mode)")
    parser.add_argument("--create", metavar="OUT", help="write the fat binary here")
    parser.add_argument("--image", action="append", default=[], metavar="profile=..,file=..")
    parser.add_argument("--list", metavar="FILE", help="print the entries of a fat binary")
    args, unknown = parser.parse_known_args(argv)
    ignored = {"--cuda", "-c", "--compress-all", "--compress=false"}
    if [flag for flag in unknown if flag not in ignored]:
        parser.error(f"unsupported options {unknown}")
    if args.list:
        with open(args.list, "rb") as f:
            for image in decode(f.read()):
                print(f"{image.kind} sm_{image.arch} version {image.version[0]}.{image.version[1]}"
                      f" {len(image.payload)} bytes")
        return 0
    if not args.create or not args.image:
        parser.error("--create OUT and at least one --image are required")
    images = []
    for spec in args.image:
        kind, arch, path = _parse_image(spec)
        with open(path, "rb") as f:
            images.append((kind, arch, f.read()))
    with open(args.create, "wb") as f:
        f.write(encode(images))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
