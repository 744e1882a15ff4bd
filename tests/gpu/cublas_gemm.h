// The GemmFn of the GPU test harness (tests/gpu/capi.cc built by tests/gpu/run.sh): gpu_launch.h's
// GemmCall (BLAS column-major, strided-batched) run by cuBLAS on the cudaStream_t passed as `context`.
//
// cuBLAS is loaded at run time with dlopen, so building needs no cuBLAS headers or library (the
// CUDA 12 pip wheels the harness is built with have none). Search order:
//   1. $TF_DCN_CUBLAS (a path; tests/gpu/run.sh points it at the copy in PyTorch's nvidia wheels),
//   2. a libcublas already loaded in the process (PyTorch's), libcublas.so.13 then .so.12,
//   3. dlopen of libcublas.so.13, libcublas.so.12, libcublas.so.
// TF_DCN_CUBLAS_VERBOSE=1 prints the library and version found. Failures are printed to stderr.
//
// Precision: float16/bfloat16 operands with float32 accumulation (CUBLAS_COMPUTE_32F, float
// alpha/beta); float32 with CUBLAS_COMPUTE_32F and the default math mode, i.e. true float32, no
// TF32 (TF32 needs CUBLAS_COMPUTE_32F_FAST_TF32 or CUBLAS_TF32_TENSOR_OP_MATH, neither used);
// float64 with CUBLAS_COMPUTE_64F.
#ifndef TF_DCN_TESTS_GPU_CUBLAS_GEMM_H_
#define TF_DCN_TESTS_GPU_CUBLAS_GEMM_H_

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "cc/kernels/gpu_launch.h"

namespace tf_dcn {
namespace cublas_dl {

// Enumerator values of the public cuBLAS / CUDA headers, declared here because no cuBLAS header
// is available at build time. Checked against cublas_api.h (cuBLAS 12.5.3: cublasStatus_t,
// cublasOperation_t, cublasGemmAlgo_t, cublasMath_t, cublasComputeType_t) and CUDA 13.0's
// library_types.h (cudaDataType). They are part of the stable C ABI.
enum : int {
  kStatusSuccess = 0,  // CUBLAS_STATUS_SUCCESS
  kOpN = 0,            // CUBLAS_OP_N
  kOpT = 1,            // CUBLAS_OP_T
  kGemmDefault = -1,   // CUBLAS_GEMM_DEFAULT
  kDefaultMath = 0,    // CUBLAS_DEFAULT_MATH
  kR32F = 0,           // CUDA_R_32F
  kR64F = 1,           // CUDA_R_64F
  kR16F = 2,           // CUDA_R_16F
  kR16BF = 14,         // CUDA_R_16BF
  kCompute32F = 68,    // CUBLAS_COMPUTE_32F (not _FAST_TF32 = 77)
  kCompute64F = 70,    // CUBLAS_COMPUTE_64F
};

// Enums are passed as int (their C ABI on every CUDA platform).
using Handle = void*;
using CreateFn = int (*)(Handle*);                  // cublasCreate_v2
using SetStreamFn = int (*)(Handle, cudaStream_t);  // cublasSetStream_v2
using SetMathModeFn = int (*)(Handle, int);         // cublasSetMathMode
using GetVersionFn = int (*)(Handle, int*);         // cublasGetVersion_v2
using GemmExFn = int (*)(Handle, int transa, int transb, int m, int n, int k, const void* alpha,
                         const void* a, int a_type, int lda, const void* b, int b_type, int ldb,
                         const void* beta, void* c, int c_type, int ldc, int compute_type,
                         int algo);  // cublasGemmEx
using GemmStridedBatchedExFn = int (*)(Handle, int transa, int transb, int m, int n, int k,
                                       const void* alpha, const void* a, int a_type, int lda,
                                       long long stride_a, const void* b, int b_type, int ldb,
                                       long long stride_b, const void* beta, void* c, int c_type,
                                       int ldc, long long stride_c, int batch, int compute_type,
                                       int algo);  // cublasGemmStridedBatchedEx

// Error codes of CublasGemm besides cuBLAS's own statuses (all > 0).
enum : int {
  kNoLibrary = 1001,  // libcublas could not be loaded
  kNoHandle = 1002,   // cudaGetDevice failed
  kTooLarge = 1003,   // a size does not fit cuBLAS's 32-bit int arguments
};

struct Library {
  void* dl = nullptr;
  CreateFn create = nullptr;
  SetStreamFn set_stream = nullptr;
  SetMathModeFn set_math_mode = nullptr;
  GetVersionFn get_version = nullptr;
  GemmExFn gemm = nullptr;
  GemmStridedBatchedExFn gemm_batched = nullptr;
  char name[512] = {0};
  bool ok() const { return create && set_stream && gemm && gemm_batched; }
};

inline bool Verbose() {
  const char* v = std::getenv("TF_DCN_CUBLAS_VERBOSE");
  return v && *v && *v != '0';
}

inline void* TryOpen(const char* name, int flags) {
  void* dl = dlopen(name, flags);
  if (!dl && !(flags & RTLD_NOLOAD)) {
    if (Verbose()) std::fprintf(stderr, "tf-dcn: dlopen(%s): %s\n", name, dlerror());
  }
  return dl;
}

inline void* OpenCublas() {
  if (const char* path = std::getenv("TF_DCN_CUBLAS")) {
    if (*path) {
      if (void* dl = TryOpen(path, RTLD_NOW | RTLD_LOCAL)) return dl;
      std::fprintf(stderr, "tf-dcn: TF_DCN_CUBLAS=%s could not be loaded: %s; searching on\n", path,
                   dlerror());
    }
  }
  static const char* const kNames[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so"};
  for (const char* name : kNames) {
    if (void* dl = TryOpen(name, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD)) return dl;
  }
  for (const char* name : kNames) {
    if (void* dl = TryOpen(name, RTLD_NOW | RTLD_LOCAL)) return dl;
  }
  return nullptr;
}

inline const Library& GetLibrary() {
  static const Library lib = [] {
    Library l;
    l.dl = OpenCublas();
    if (!l.dl) {
      std::fprintf(stderr,
                   "tf-dcn: libcublas not found (set TF_DCN_CUBLAS to its path, e.g. PyTorch's "
                   "site-packages/nvidia/.../lib/libcublas.so.*)\n");
      return l;
    }
    l.create = reinterpret_cast<CreateFn>(dlsym(l.dl, "cublasCreate_v2"));
    l.set_stream = reinterpret_cast<SetStreamFn>(dlsym(l.dl, "cublasSetStream_v2"));
    l.set_math_mode = reinterpret_cast<SetMathModeFn>(dlsym(l.dl, "cublasSetMathMode"));
    l.get_version = reinterpret_cast<GetVersionFn>(dlsym(l.dl, "cublasGetVersion_v2"));
    l.gemm = reinterpret_cast<GemmExFn>(dlsym(l.dl, "cublasGemmEx"));
    l.gemm_batched =
        reinterpret_cast<GemmStridedBatchedExFn>(dlsym(l.dl, "cublasGemmStridedBatchedEx"));
    Dl_info info;
    if (l.create && dladdr(reinterpret_cast<void*>(l.create), &info) && info.dli_fname) {
      std::snprintf(l.name, sizeof(l.name), "%s", info.dli_fname);
    }
    if (!l.ok()) {
      std::fprintf(stderr, "tf-dcn: %s lacks a required cuBLAS entry point\n", l.name);
    }
    return l;
  }();
  return lib;
}

// One handle per (thread, device), created on first use and kept for the process's lifetime.
inline int GetHandle(const Library& lib, Handle* out) {
  constexpr int kMaxDevices = 64;
  thread_local Handle handles[kMaxDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) {
    return kNoHandle;
  }
  if (!handles[device]) {
    Handle h = nullptr;
    const int status = lib.create(&h);
    if (status != kStatusSuccess) return status;
    if (lib.set_math_mode) lib.set_math_mode(h, kDefaultMath);  // explicit: no TF32
    if (Verbose() && lib.get_version) {
      int version = 0;
      lib.get_version(h, &version);
      std::fprintf(stderr, "tf-dcn: cuBLAS %d from %s (device %d)\n", version, lib.name, device);
    }
    handles[device] = h;
  }
  *out = handles[device];
  return kStatusSuccess;
}

inline bool FitsInt(int64_t v) { return v >= 0 && v <= INT_MAX; }
inline int Ld(int64_t ld) { return static_cast<int>(ld < 1 ? 1 : ld); }  // BLAS wants ld >= 1

inline int Report(int status, const GemmCall& g) {
  if (status != kStatusSuccess) {
    std::fprintf(stderr,
                 "tf-dcn: cuBLAS GEMM failed (status %d): type %d trans %d%d m %lld n %lld k %lld "
                 "batch %lld\n",
                 status, static_cast<int>(g.type), g.trans_a, g.trans_b,
                 static_cast<long long>(g.m), static_cast<long long>(g.n),
                 static_cast<long long>(g.k), static_cast<long long>(g.batch));
  }
  return status;
}

}  // namespace cublas_dl

// GemmFn: `context` is the cudaStream_t (GpuLaunch::gemm_context). Returns 0 on success.
inline int CublasGemm(void* context, const GemmCall& g) {
  using namespace cublas_dl;
  if (g.m == 0 || g.n == 0 || g.batch == 0) return kStatusSuccess;
  const Library& lib = GetLibrary();
  if (!lib.ok()) return kNoLibrary;
  if (!FitsInt(g.m) || !FitsInt(g.n) || !FitsInt(g.k) || !FitsInt(g.lda) || !FitsInt(g.ldb) ||
      !FitsInt(g.ldc) || !FitsInt(g.batch)) {
    return Report(kTooLarge, g);
  }
  Handle handle = nullptr;
  if (const int e = GetHandle(lib, &handle)) return Report(e, g);
  if (const int e = lib.set_stream(handle, static_cast<cudaStream_t>(context))) {
    return Report(e, g);
  }

  int data_type = kR32F, compute_type = kCompute32F;
  switch (g.type) {
    case ElementType::kHalf:
      data_type = kR16F;
      break;
    case ElementType::kBFloat16:
      data_type = kR16BF;
      break;
    case ElementType::kFloat:
      break;
    case ElementType::kDouble:
      data_type = kR64F;
      compute_type = kCompute64F;
      break;
  }
  // alpha/beta live on the host (the default pointer mode), typed like the compute type.
  const float alpha_f = static_cast<float>(g.alpha), beta_f = static_cast<float>(g.beta);
  const double alpha_d = g.alpha, beta_d = g.beta;
  const bool f64 = compute_type == kCompute64F;
  const void* alpha = f64 ? static_cast<const void*>(&alpha_d) : static_cast<const void*>(&alpha_f);
  const void* beta = f64 ? static_cast<const void*>(&beta_d) : static_cast<const void*>(&beta_f);
  const int op_a = g.trans_a ? kOpT : kOpN, op_b = g.trans_b ? kOpT : kOpN;
  const int m = static_cast<int>(g.m), n = static_cast<int>(g.n), k = static_cast<int>(g.k);

  int status;
  if (g.batch == 1) {
    status = lib.gemm(handle, op_a, op_b, m, n, k, alpha, g.a, data_type, Ld(g.lda), g.b, data_type,
                      Ld(g.ldb), beta, g.c, data_type, Ld(g.ldc), compute_type, kGemmDefault);
  } else {
    status =
        lib.gemm_batched(handle, op_a, op_b, m, n, k, alpha, g.a, data_type, Ld(g.lda), g.stride_a,
                         g.b, data_type, Ld(g.ldb), g.stride_b, beta, g.c, data_type, Ld(g.ldc),
                         g.stride_c, static_cast<int>(g.batch), compute_type, kGemmDefault);
  }
  return Report(status, g);
}

}  // namespace tf_dcn

#endif  // TF_DCN_TESTS_GPU_CUBLAS_GEMM_H_
