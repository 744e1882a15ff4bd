"""The ctypes mirrors of the C API's dims structs (tests/gpu/capi_ctypes.py) match the compiled
structs field by field, and the check catches a mirror that has drifted."""

from __future__ import annotations

import ctypes

import pytest

from tests import gpu_emulation
from tests.gpu import capi_ctypes

try:
    LIB = gpu_emulation.library()
except FileNotFoundError as exc:  # pragma: no cover - depends on the build
    pytest.skip(str(exc), allow_module_level=True)


def test_mirrors_match_the_library():
    capi_ctypes.check_layout(LIB)  # also done by gpu_emulation.library(); explicit here


@pytest.mark.parametrize("struct", [capi_ctypes.ConvDims, capi_ctypes.PoolDims])
def test_a_swapped_pair_of_fields_is_caught(monkeypatch, struct):
    fields = list(struct._fields_)
    fields[1], fields[2] = fields[2], fields[1]
    drifted = type(struct.__name__, (ctypes.Structure,), {"_fields_": fields})
    monkeypatch.setitem(capi_ctypes._STRUCTS, "conv" if struct is capi_ctypes.ConvDims else "pool",
                        drifted)
    with pytest.raises(AssertionError, match=fr"{fields[1][0]} at 8, library has 16"):
        capi_ctypes.check_layout(LIB)


def test_a_missing_field_is_caught(monkeypatch):
    drifted = type("ConvDims", (ctypes.Structure,), {"_fields_": capi_ctypes.ConvDims._fields_[:-1]})
    monkeypatch.setitem(capi_ctypes._STRUCTS, "conv", drifted)
    with pytest.raises(AssertionError, match="18 fields != 19"):
        capi_ctypes.check_layout(LIB)


def _conv_fields(**overrides):
    fields = {name: 1 for name, _ in capi_ctypes.ConvDims._fields_}
    fields.update(overrides)
    return fields


def test_fields_are_set_by_name_and_all_required():
    dims = capi_ctypes.ConvDims(**_conv_fields(batch=2, in_h=5, kernel_w=3, use_mask=True))
    assert (dims.batch, dims.in_h, dims.kernel_w, dims.use_mask, dims.groups) == (2, 5, 3, True, 1)
    with pytest.raises(TypeError, match=r"unknown fields \['kernel_size'\], missing \[\]"):
        capi_ctypes.ConvDims(**_conv_fields(kernel_size=3))
    fields = _conv_fields()
    del fields["pad_left"]
    with pytest.raises(TypeError, match=r"unknown fields \[\], missing \['pad_left'\]"):
        capi_ctypes.ConvDims(**fields)
