# tf-dcn build. Everything runs inside a local virtualenv (.venv) made from requirements.txt;
# compiler and linker flags come from tf.sysconfig, never from hard-coded paths.
#
#   make build   venv + op library (tf_dcn/_tf_dcn_ops.so)
#   make test    build + the whole pytest suite
#   make demo    build + python -m tf_dcn.demo
#   make wheel   platform wheel in dist/ (build_pip_pkg.sh)
#   make bench   CPU benchmarks (bench/)
#   make bazel   the CPU op library built with Bazel instead (build/bazel/_tf_dcn_ops.so)

PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.requirements-installed
BUILD       := build
OPS_LIB     := tf_dcn/_tf_dcn_ops.so

# Every C++ source of the CPU op library (the Bazel BUILD file is checked against this list).
# The AVX2 kernels come last: where the baseline and AVX2 objects both emit an inline function,
# the linker keeps the first (baseline) copy, so no AVX2 instruction runs outside the AVX2 path.
OPS_SRCS := \
	cc/ops/deform_conv2d_ops.cc \
	cc/kernels/deform_conv2d_op.cc \
	cc/kernels/deform_conv2d_cpu.cc \
	cc/kernels/cpu_dispatch.cc \
	cc/kernels/deform_conv2d_cpu_generic.cc \
	cc/ops/deform_psroi_pool_ops.cc \
	cc/kernels/deform_psroi_pool_op.cc \
	cc/kernels/deform_psroi_pool_cpu.cc \
	cc/kernels/deform_conv2d_cpu_avx2.cc
HEADERS := $(wildcard cc/kernels/*.h)
OBJS := $(patsubst %.cc,$(BUILD)/%.o,$(OPS_SRCS))

CXX      ?= g++
CXXFLAGS ?= -O3 -DNDEBUG
# -fopenmp-simd honours `#pragma omp simd` (vectorised reductions in a fixed order) without
# linking any OpenMP runtime. cc/BUILD uses the same flags (tests/test_bazel.py compares outputs).
SIMD     := -fopenmp-simd
WARN     := -Wall -Wno-deprecated-declarations -Wno-interference-size -Wno-sign-compare -Wno-unused-function

.PHONY: all venv build test demo wheel bench bazel clean distclean print-sources
.DELETE_ON_ERROR:

all: build

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet -r requirements.txt
	@touch $@

venv: $(STAMP)

# TensorFlow's compile and link flags, read once from the venv's TensorFlow.
$(BUILD)/tf_flags.mk: $(STAMP)
	@mkdir -p $(BUILD)
	$(PY) -c "import tensorflow as tf; \
print('TF_CFLAGS := ' + ' '.join(tf.sysconfig.get_compile_flags())); \
print('TF_LFLAGS := ' + ' '.join(tf.sysconfig.get_link_flags()))" 2>/dev/null > $@.tmp
	@mv $@.tmp $@

ifneq ($(filter-out venv clean distclean print-sources,$(or $(MAKECMDGOALS),all)),)
-include $(BUILD)/tf_flags.mk
endif

# Extra instruction sets, only for the translation units that are dispatched at run time.
$(BUILD)/cc/kernels/%_avx2.o: ISA_FLAGS := -mavx2 -mfma -mf16c

$(BUILD)/%.o: %.cc $(HEADERS) $(BUILD)/tf_flags.mk
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $(SIMD) $(ISA_FLAGS) $(WARN) -fPIC -I. $(TF_CFLAGS) -c $< -o $@

# Linked to a temporary name and renamed, so a process that has the old library mapped keeps it.
$(OPS_LIB): $(OBJS)
	$(CXX) -shared $(OBJS) -o $@.tmp $(TF_LFLAGS) -Wl,-z,defs -Wl,-O1
	mv -f $@.tmp $@

build: $(STAMP) $(OPS_LIB)

test: build
	$(PY) -m pytest -q tests

demo: build
	$(PY) -m tf_dcn.demo

wheel: build
	PYTHON=$(PY) bash build_pip_pkg.sh

bench: build
	$(PY) bench/bench_conv_cpu.py
	$(PY) bench/bench_pool_cpu.py

bazel: $(STAMP)
	bash tools/bazel_build.sh

print-sources:
	@echo $(OPS_SRCS)

clean:
	rm -rf $(BUILD) $(OPS_LIB) dist *.egg-info

distclean: clean
	rm -rf $(VENV)
