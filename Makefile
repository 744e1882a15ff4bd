# tf-dcn build. Everything runs inside a local virtualenv (.venv) made from requirements.txt;
# compiler and linker flags come from tf.sysconfig, never from hard-coded paths.
#
#   make build   venv + CPU op library (tf_dcn/_tf_dcn_ops.so), the CUDA op library
#                (tf_dcn/_tf_dcn_ops_cuda.so) when clang-19 is found (CUDA=0 skips it), and the
#                host emulation of the GPU launchers used by the tests
#   make gpu     venv + CUDA op library (clang-19 and CUDA 12.5 pip wheels); fails without clang-19
#   make test    build + the whole pytest suite
#   make demo    build + python -m tf_dcn.demo
#   make rfcn    build + python -m tf_dcn.examples.rfcn (the R-FCN detection example)
#   make wheel   manylinux wheel in dist/ (build_pip_pkg.sh; DIST=dir elsewhere, CUDA=0 without the
#                CUDA library)
#   make bench   CPU benchmarks (bench/); make bench-gpu: GPU benchmark (needs a GPU)
#   make bazel   the CPU op library built with Bazel instead (build/bazel/_tf_dcn_ops.so)

# Compile on every core (JOBS=1 for a serial build).
JOBS ?= $(shell nproc 2>/dev/null || echo 1)
MAKEFLAGS += -j$(JOBS)

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

.PHONY: all venv build gpu cuda12-root tensorflow-gpu-site print-cuda-flags test demo rfcn wheel bench bench-gpu bazel clean distclean print-sources print-isa-flags
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

ifneq ($(filter-out venv clean distclean print-sources print-isa-flags print-cuda-flags,$(or $(MAKECMDGOALS),all)),)
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
# Built for TensorFlow 2.21's own CUDA 12 runtime, with no runtime of its own (docs/gpu-build.md):
# clang-19 compiles the .cu launchers (no TensorFlow headers) against a CUDA 12.5 installation
# assembled from NVIDIA's pinned pip wheels (requirements-cuda12.txt, tools/cuda12_root.py; the
# fat binary is written by tools/fatbinary.py). The op shims are compiled again by g++ with
# TF_DCN_WITH_CUDA, which adds the DEVICE_GPU registrations and the GPU functors (cc/kernels/gpu/).
# cc/kernels/gpu/cuda_runtime_forward.cc defines the runtime functions the .cu objects call as hidden
# forwarders to the CUDA 12 runtime TensorFlow loads, so the library depends only on
# libtensorflow_framework and loads in tensorflow-cpu too. The glibc references of the .cu objects
# are pinned to versions no newer than GLIBC_FLOOR (tools/glibc_compat.py), so the wheel stays
# manylinux_2_27.
#   make gpu CUDA_PATH=/usr/local/cuda-12.x   clang-19 with a local CUDA 12 toolkit instead
#   make gpu CUDA_COMPILER=nvcc NVCC=/usr/local/cuda-12.x/bin/nvcc   nvcc of a CUDA 12 toolkit
GLIBC_COMPAT = $(PY) tools/glibc_compat.py --floor $(GLIBC_FLOOR) --libc "$$($(CXX) -print-file-name=libc.so.6)"
CUDA_CLANG    ?= $(shell command -v clang-19 2>/dev/null)
CUDA_COMPILER ?= clang
CUDA          ?= $(if $(filter nvcc,$(CUDA_COMPILER)),1,$(if $(CUDA_CLANG),1,0))
CUDA12_WHEELS := $(BUILD)/cuda12/wheels
CUDA12_ROOT   := $(BUILD)/cuda12/root
CUDA12_STAMP  := $(CUDA12_ROOT)/.assembled
CUDA_PATH     ?=
CUDA_HOME_12  := $(or $(CUDA_PATH),$(CUDA12_ROOT))
CUDA_ARCHS    := 75 80 86 89 90
# SASS for every architecture, PTX only for the newest (JIT-compiled by drivers of newer GPUs).
CUDA_PTX_ARCH := 90
CLANG_CUDA_FLAGS = -x cuda --cuda-path=$(abspath $(CUDA_HOME_12)) -std=c++17 -O3 -DNDEBUG -fPIC -I. \
	-Wno-unknown-cuda-version $(foreach a,$(CUDA_ARCHS),--cuda-gpu-arch=sm_$(a)) \
	--no-cuda-include-ptx=all --cuda-include-ptx=sm_$(CUDA_PTX_ARCH)
NVCC          ?= nvcc
NVCC_FLAGS = -std=c++17 -O3 -DNDEBUG -Xcompiler -fPIC -I. \
	$(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
	-gencode arch=compute_$(CUDA_PTX_ARCH),code=compute_$(CUDA_PTX_ARCH)
CU_SRCS      := $(sort $(wildcard cc/kernels/*.cu))
GPU_SHIMS    := cc/kernels/deform_conv2d_op.cc cc/kernels/deform_psroi_pool_op.cc
GPU_FUNCTORS := $(sort $(wildcard cc/kernels/gpu/*.cc))
# The CPU objects in OPS_SRCS order with the shims swapped for their GPU builds; the GPU functors,
# the runtime forwarders and the .cu objects go before the wider-ISA objects, which must stay last.
CUDA_OBJS := $(foreach s,$(filter-out $(ISA_SRCS),$(OPS_SRCS)),\
	$(if $(filter $(s),$(GPU_SHIMS)),$(BUILD)/cuda/$(s:.cc=.o),$(BUILD)/$(s:.cc=.o))) \
	$(patsubst %.cc,$(BUILD)/cuda/%.o,$(GPU_FUNCTORS)) \
	$(patsubst %.cu,$(BUILD)/cuda/%.cu.o,$(CU_SRCS)) \
	$(patsubst %.cc,$(BUILD)/%.o,$(ISA_SRCS))

# The CUDA 12.5 installation clang compiles against (skipped when CUDA_PATH names a local one).
$(CUDA12_STAMP): requirements-cuda12.txt tools/cuda12_root.py tools/fatbinary.py | $(STAMP)
	rm -rf $(CUDA12_WHEELS)
	$(PY) -m pip install --quiet --no-deps --target $(CUDA12_WHEELS) -r requirements-cuda12.txt
	$(PY) tools/cuda12_root.py $(CUDA12_WHEELS) $(CUDA12_ROOT)
	@touch $@

cuda12-root: $(CUDA12_STAMP)

# Checks the compiler before the first .cu object: clang-19 (or nvcc) of CUDA 12, never CUDA 13.
$(BUILD)/cuda/compiler.ok: $(if $(CUDA_PATH),,$(CUDA12_STAMP)) tools/cuda12_root.py | $(STAMP)
	@mkdir -p $(dir $@)
ifeq ($(CUDA_COMPILER),nvcc)
	@$(NVCC) --version | grep -q 'release 12\.' || { echo "CUDA_COMPILER=nvcc needs the nvcc of a CUDA 12 toolkit; $(NVCC) is: $$($(NVCC) --version | grep release)"; exit 1; }
else
	@test -n "$(CUDA_CLANG)" || { echo "clang-19 not found: apt-get install clang-19, or build with CUDA=0"; exit 1; }
	@$(PY) tools/cuda12_root.py --check $(abspath $(CUDA_HOME_12))
endif
	@touch $@

$(BUILD)/cuda/%.cu.o: %.cu $(HEADERS) $(wildcard cc/kernels/*.cuh) tools/glibc_compat.py $(BUILD)/cuda/compiler.ok | $(STAMP)
	@mkdir -p $(dir $@)
ifeq ($(CUDA_COMPILER),nvcc)
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@
else
	$(CUDA_CLANG) $(CLANG_CUDA_FLAGS) -c $< -o $@
endif
	$(GLIBC_COMPAT) $@ $@

$(BUILD)/cuda/%.o: %.cc $(HEADERS) $(wildcard cc/kernels/gpu/*.h) $(BUILD)/tf_flags.mk
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $(SIMD) $(WARN) -fPIC -I. $(TF_CFLAGS) -DGOOGLE_CUDA=1 -DTF_DCN_WITH_CUDA=1 -c $< -o $@

# The runtime forwarders call dlopen/dlsym (GLIBC_2.34 on a new glibc): pinned like the .cu objects.
$(BUILD)/cuda/cc/kernels/gpu/cuda_runtime_forward.o: cc/kernels/gpu/cuda_runtime_forward.cc $(HEADERS) tools/glibc_compat.py | $(STAMP)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $(WARN) -std=c++17 -fPIC -I. -c $< -o $@
	$(GLIBC_COMPAT) $@ $@

$(CUDA_LIB): $(CUDA_OBJS)
	$(CXX) -shared $(CUDA_OBJS) -o $@.tmp $(TF_LFLAGS) -ldl -Wl,-z,defs -Wl,-O1
	mv -f $@.tmp $@

# The GPU build of TensorFlow (the `tensorflow` wheel, same version as the venv's tensorflow-cpu)
# and its CUDA 12 runtime package, unpacked beside the venv for the tests
# (tests/test_cuda_library.py, tests/test_gpu_harness.py), which run it with
# PYTHONPATH=$(TF_GPU_SITE). Not needed to build or use tf-dcn.
TF_VERSION  := $(shell sed -n 's/^tensorflow-cpu==//p' requirements.txt)
TF_GPU_SITE := $(BUILD)/tensorflow-gpu
$(TF_GPU_SITE)/.installed: requirements.txt requirements-cuda12.txt | $(STAMP)
	rm -rf $(TF_GPU_SITE)
	$(PY) -m pip install --quiet --no-deps --target $(TF_GPU_SITE) tensorflow==$(TF_VERSION) \
		$$(grep '^nvidia-cuda-runtime-cu12==' requirements-cuda12.txt)
	@touch $@

tensorflow-gpu-site: $(TF_GPU_SITE)/.installed

# The exact flags of the .cu compilation, for tests/gpu/run.sh (which builds the harness the same
# way). `make -s print-cuda-flags`.
print-cuda-flags:
	@echo "CUDA_CLANG=$(CUDA_CLANG)"
	@echo "CUDA_HOME_12=$(abspath $(CUDA_HOME_12))"
	@echo "CLANG_CUDA_FLAGS=$(filter-out $(foreach a,$(CUDA_ARCHS),--cuda-gpu-arch=sm_$(a)) --cuda-include-ptx=sm_$(CUDA_PTX_ARCH),$(CLANG_CUDA_FLAGS))"

gpu: $(STAMP) $(CUDA_LIB)

# ---- Host emulation of the GPU launchers (tests/gpu/capi.cc run on the CPU; no TensorFlow) ------
$(EMU_LIB): tests/gpu/capi.cc tests/gpu/capi.h tests/gpu/host_gemm.h $(HEADERS) $(BUILD)/tf_flags.mk
	@mkdir -p $(dir $@)
	$(CXX) -O2 -std=c++17 $(WARN) -fPIC -shared -DTF_DCN_CAPI_EMULATION -I. $(TF_CFLAGS) $< -o $@.tmp
	mv -f $@.tmp $@

build: $(STAMP) $(BUILD_INFO) $(OPS_LIB) $(EMU_LIB) $(if $(filter 1,$(CUDA)),$(CUDA_LIB))

test: build
	$(PY) -m pytest -q --durations=15 tests

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
