# tf-dcn build. Everything runs inside a local virtualenv (.venv) made from requirements.txt;
# compiler and linker flags come from tf.sysconfig, never from hard-coded paths.
#
#   make build   venv + CPU op library (tf_dcn/_tf_dcn_ops.so), the CUDA op library
#                (tf_dcn/_tf_dcn_ops_cuda.so) when nvcc is found (CUDA=0 skips it), and the host
#                emulation of the GPU launchers used by the tests
#   make gpu     venv + CUDA op library; fails without nvcc
#   make test    build + the whole pytest suite
#   make demo    build + python -m tf_dcn.demo
#   make rfcn    build + python -m tf_dcn.examples.rfcn (the R-FCN detection example)
#   make wheel   manylinux wheel in dist/ (build_pip_pkg.sh; DIST=dir elsewhere, CUDA=0 without the
#                CUDA library)
#   make bench   CPU benchmarks (bench/); make bench-gpu: GPU benchmark (needs a GPU)
#   make bazel   the CPU op library built with Bazel instead (build/bazel/_tf_dcn_ops.so)

PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.requirements-installed
BUILD       := build
OPS_LIB     := tf_dcn/_tf_dcn_ops.so
CUDA_LIB    := tf_dcn/_tf_dcn_ops_cuda.so
BUILD_INFO  := tf_dcn/_build_info.py
DIST        ?= dist
# The newest glibc the libraries may need: TensorFlow 2.21's own wheels are manylinux_2_27.
GLIBC_FLOOR := 2.27
EMU_LIB     := $(BUILD)/emulation/libtfdcn_emulation.so

# Every C++ source of the CPU op library (the Bazel BUILD file is checked against this list).
# The kernels built for wider instruction sets come last, narrowest first (avx2, then avx512):
# where several objects emit the same inline function the linker keeps the first copy, so no
# instruction of a wider set runs outside that set's path (tests/test_cpu_isa.py checks both).
OPS_SRCS := \
	cc/ops/deform_conv2d_ops.cc \
	cc/kernels/deform_conv2d_op.cc \
	cc/kernels/deform_conv2d_cpu.cc \
	cc/kernels/cpu_dispatch.cc \
	cc/kernels/cpu_kernels_generic.cc \
	cc/ops/deform_psroi_pool_ops.cc \
	cc/kernels/deform_psroi_pool_op.cc \
	cc/kernels/deform_psroi_pool_cpu.cc \
	cc/kernels/cpu_kernels_avx2.cc \
	cc/kernels/cpu_kernels_avx512.cc
# The wider-ISA objects: the tail of OPS_SRCS, kept at the end of every link line.
ISA_SRCS := $(filter %_avx2.cc %_avx512.cc,$(OPS_SRCS))
HEADERS := $(wildcard cc/kernels/*.h)
OBJS := $(patsubst %.cc,$(BUILD)/%.o,$(OPS_SRCS))

CXX      ?= g++
CXXFLAGS ?= -O3 -DNDEBUG
# -fopenmp-simd honours `#pragma omp simd` (vectorised reductions in a fixed order) without
# linking any OpenMP runtime. cc/BUILD uses the same flags (tests/test_bazel.py compares outputs).
SIMD     := -fopenmp-simd
WARN     := -Wall -Wno-deprecated-declarations -Wno-interference-size -Wno-sign-compare -Wno-unused-function

.PHONY: all venv build gpu test demo rfcn wheel bench bench-gpu bazel clean distclean print-sources print-isa-flags
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

ifneq ($(filter-out venv clean distclean print-sources print-isa-flags,$(or $(MAKECMDGOALS),all)),)
-include $(BUILD)/tf_flags.mk
endif

# Extra instruction sets, only for the translation units that are dispatched at run time.
AVX2_FLAGS   := -mavx2 -mfma -mf16c
AVX512_FLAGS := $(AVX2_FLAGS) -mavx512f -mavx512bw -mavx512dq -mavx512vl
$(BUILD)/cc/kernels/%_avx2.o: ISA_FLAGS := $(AVX2_FLAGS)
$(BUILD)/cc/kernels/%_avx512.o: ISA_FLAGS := $(AVX512_FLAGS)

$(BUILD)/%.o: %.cc $(HEADERS) $(BUILD)/tf_flags.mk
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $(SIMD) $(ISA_FLAGS) $(WARN) -fPIC -I. $(TF_CFLAGS) -c $< -o $@

# The TensorFlow version the libraries were compiled against, read by `import tf_dcn` (which
# refuses another minor version with a clear error) and by setup.py (the extras' pins).
$(BUILD_INFO): $(STAMP)
	$(PY) -c "import tensorflow as tf; print('\"\"\"Written by make build: what the op libraries ' \
'were compiled against.\"\"\"\n\nTENSORFLOW_VERSION = ' + repr(tf.__version__))" 2>/dev/null > $@.tmp
	@mv $@.tmp $@

# Linked to a temporary name and renamed, so a process that has the old library mapped keeps it.
$(OPS_LIB): $(OBJS)
	$(CXX) -shared $(OBJS) -o $@.tmp $(TF_LFLAGS) -Wl,-z,defs -Wl,-O1
	mv -f $@.tmp $@

# ---- CUDA op library ------------------------------------------------------------------------
# The .cu launchers include no TensorFlow headers (nvcc); the op shims are compiled again by g++
# with TF_DCN_WITH_CUDA, which adds the DEVICE_GPU registrations and the GPU functors
# (cc/kernels/gpu/). The CUDA 13 runtime is linked statically and hidden, before TensorFlow's
# libraries (see docs/gpu-build.md), so the library depends only on libtensorflow_framework. Its
# glibc references (in the .cu objects and a private copy of libcudart_static.a) are pinned to
# versions no newer than GLIBC_FLOOR (tools/glibc_compat.py), so the wheel stays manylinux_2_27.
GLIBC_COMPAT = $(PY) tools/glibc_compat.py --floor $(GLIBC_FLOOR) --libc "$$($(CXX) -print-file-name=libc.so.6)"
NVCC       ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA       ?= $(if $(NVCC),1,0)
CUDA_HOME  ?= $(if $(NVCC),$(shell $(NVCC) --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^\#\$$ TOP=//p'))
CUDA_HOME  := $(CUDA_HOME)
CUDART_STATIC := $(firstword $(wildcard $(CUDA_HOME)/lib64/libcudart_static.a \
	$(CUDA_HOME)/lib/libcudart_static.a $(CUDA_HOME)/targets/x86_64-linux/lib/libcudart_static.a))
CUDA_ARCHS := 75 80 86 89 90
NVCC_FLAGS ?= -O3 -DNDEBUG
NVCC_ALL_FLAGS = $(NVCC_FLAGS) -std=c++17 -Xcompiler -fPIC -I. --threads 0 \
	$(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
	-gencode arch=compute_90,code=compute_90
CU_SRCS      := $(sort $(wildcard cc/kernels/*.cu))
GPU_SHIMS    := cc/kernels/deform_conv2d_op.cc cc/kernels/deform_psroi_pool_op.cc
GPU_FUNCTORS := $(sort $(wildcard cc/kernels/gpu/*.cc))
# The CPU objects in OPS_SRCS order with the shims swapped for their GPU builds; the GPU functors
# and the .cu objects go before the wider-ISA objects, which must stay last.
CUDA_OBJS := $(foreach s,$(filter-out $(ISA_SRCS),$(OPS_SRCS)),\
	$(if $(filter $(s),$(GPU_SHIMS)),$(BUILD)/cuda/$(s:.cc=.o),$(BUILD)/$(s:.cc=.o))) \
	$(patsubst %.cc,$(BUILD)/cuda/%.o,$(GPU_FUNCTORS)) \
	$(patsubst %.cu,$(BUILD)/cuda/%.cu.o,$(CU_SRCS)) \
	$(patsubst %.cc,$(BUILD)/%.o,$(ISA_SRCS))

$(BUILD)/cuda/%.cu.o: %.cu $(HEADERS) $(wildcard cc/kernels/*.cuh) tools/glibc_compat.py | $(STAMP)
	@test -n "$(NVCC)" || { echo "nvcc not found: install the CUDA 13 toolkit or build with CUDA=0"; exit 1; }
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_ALL_FLAGS) -c $< -o $@
	$(GLIBC_COMPAT) $@ $@

$(BUILD)/cuda/%.o: %.cc $(HEADERS) $(wildcard cc/kernels/gpu/*.h) $(BUILD)/tf_flags.mk
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $(SIMD) $(WARN) -fPIC -I. $(TF_CFLAGS) -DGOOGLE_CUDA=1 -DTF_DCN_WITH_CUDA=1 -c $< -o $@

CUDART_COMPAT := $(BUILD)/cuda/libcudart_static_glibc$(GLIBC_FLOOR).a
$(CUDART_COMPAT): $(CUDART_STATIC) tools/glibc_compat.py | $(STAMP)
	@test -n "$(CUDART_STATIC)" || { echo "libcudart_static.a not found under CUDA_HOME=$(CUDA_HOME)"; exit 1; }
	@mkdir -p $(dir $@)
	$(GLIBC_COMPAT) $(CUDART_STATIC) $@

$(CUDA_LIB): $(CUDA_OBJS) $(CUDART_COMPAT)
	$(CXX) -shared $(CUDA_OBJS) $(CUDART_COMPAT) -ldl -lpthread -lrt -Wl,--exclude-libs,ALL \
		-o $@.tmp $(TF_LFLAGS) -Wl,-z,defs -Wl,-O1
	mv -f $@.tmp $@

gpu: $(STAMP) $(CUDA_LIB)

# ---- Host emulation of the GPU launchers (tests/gpu/capi.cc run on the CPU; no TensorFlow) ------
$(EMU_LIB): tests/gpu/capi.cc tests/gpu/capi.h tests/gpu/host_gemm.h $(HEADERS) $(BUILD)/tf_flags.mk
	@mkdir -p $(dir $@)
	$(CXX) -O2 -std=c++17 $(WARN) -fPIC -shared -DTF_DCN_CAPI_EMULATION -I. $(TF_CFLAGS) $< -o $@.tmp
	mv -f $@.tmp $@

build: $(STAMP) $(BUILD_INFO) $(OPS_LIB) $(EMU_LIB) $(if $(filter 1,$(CUDA)),$(CUDA_LIB))

test: build
	$(PY) -m pytest -q tests

demo: build
	$(PY) -m tf_dcn.demo

rfcn: build
	$(PY) -m tf_dcn.examples.rfcn

# The script cds into a staging folder: hand it absolute paths.
wheel: build
	PYTHON=$(abspath $(PY)) CUDA=$(CUDA) bash build_pip_pkg.sh $(abspath $(DIST))

bench: build
	$(PY) bench/bench_conv_cpu.py
	$(PY) bench/bench_pool_cpu.py

# Needs a CUDA build of TensorFlow in the venv and a GPU (prints a note and exits 0 otherwise).
bench-gpu: build
	$(PY) bench/bench_conv_gpu.py

bazel: $(STAMP)
	bash tools/bazel_build.sh

print-sources:
	@echo $(OPS_SRCS)

print-isa-flags:
	@echo "avx2: $(AVX2_FLAGS)"
	@echo "avx512: $(AVX512_FLAGS)"

clean:
	rm -rf $(BUILD) $(OPS_LIB) $(CUDA_LIB) $(BUILD_INFO) dist *.egg-info

distclean: clean
	rm -rf $(VENV)
