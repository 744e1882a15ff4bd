"""Offline stand-in for @rules_cc//cc:defs.bzl.

Bazel 4.2.3 (Debian's bazel-bootstrap) loads @rules_cc from its own BUILD files in
@bazel_tools and would download it. Debian's bazel-rules-cc package is too new for Bazel 4.2.3,
so WORKSPACE points @rules_cc at this directory, whose macros are Bazel's native C++ rules,
which is all rules_cc of that era did.
"""

cc_binary = native.cc_binary
cc_import = native.cc_import
cc_library = native.cc_library
cc_proto_library = native.cc_proto_library
cc_test = native.cc_test
cc_toolchain = native.cc_toolchain
cc_toolchain_suite = native.cc_toolchain_suite
fdo_prefetch_hints = native.fdo_prefetch_hints
fdo_profile = native.fdo_profile
objc_import = native.objc_import
objc_library = native.objc_library
