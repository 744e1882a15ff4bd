// What every GPU launcher shares, with no TensorFlow and no CUDA headers, so that it is compiled
// by clang-19 (the CUDA launchers), by g++ (the TensorFlow shims) and by the host emulation that
// runs the launchers' exact code on the CPU in the test suite (tests/test_gpu_emulation_*.py).
//
// A launcher is written once as a template over an *executor* `Exec`:
//   template <class F> int Exec::ForEach(int64_t n, const F& f)
//       calls f(i) for every i in [0, n) (in parallel on the GPU; in order on the host).
//       f is a copyable functor whose operator() is TF_DCN_HD.
//   int Exec::Zero(void* p, int64_t bytes)
//   int Exec::SortPairsTempBytes(int64_t n, int end_bit, int64_t* bytes)
//   int Exec::SortPairs(void* temp, int64_t temp_bytes, const uint64_t* keys_in,
//                       uint64_t* keys_out, const uint32_t* values_in, uint32_t* values_out,
//                       int64_t n, int end_bit)
//       stable ascending sort on the low end_bit bits of the keys (cub radix sort on the device,
//       std::stable_sort on the host).
//   int Exec::CopyToHost(void* host, const void* device, int64_t bytes)
//       enqueues a copy into host memory the device can write (pinned); asynchronous on the GPU.
// Every call returns 0 or an error code (below).
// Matrix products go through a caller-supplied GemmFn (TensorFlow's BLAS in the op, cuBLAS in
// tests/gpu, a plain loop in the emulation), so the .cu files need no BLAS library.
#ifndef TF_DCN_CC_KERNELS_GPU_LAUNCH_H_
#define TF_DCN_CC_KERNELS_GPU_LAUNCH_H_

#include <cstdint>

#include "cc/kernels/dcn_common.h"
#include "cc/kernels/kernel_args.h"

namespace tf_dcn {

// Error codes of the launchers: 0, a cudaError_t (> 0), or one of these (< 0).
enum GpuErrorCode : int {
  kGpuOk = 0,
  kGpuGemmFailed = -1,         // the GemmFn reported a failure
  kGpuWorkspaceTooSmall = -2,  // the caller passed less workspace than *WorkspaceBytes asked for
  kGpuNoGemm = -3,             // a matrix product was needed but no GemmFn was given
  kGpuNoCudaRuntime = -4,      // no CUDA 12 runtime in the process (gpu/cuda_runtime_forward.cc)
};
constexpr int kCudaErrorInsufficientDriver = 35;  // cudaErrorInsufficientDriver

// One (strided-batched) matrix product in BLAS's column-major convention:
//   C_b = alpha * op(A_b) * op(B_b) + beta * C_b,  b in [0, batch),  X_b = X + b * stride_x,
// op(A_b) is m x k, op(B_b) is k x n, C_b is m x n. A, B and C all have element type `type`;
// half types are multiplied with float32 accumulation. alpha and beta are 0 or 1.
struct GemmCall {
  ElementType type;
  bool trans_a, trans_b;
  int64_t m, n, k;
  const void* a;
  int64_t lda, stride_a;
  const void* b;
  int64_t ldb, stride_b;
  void* c;
  int64_t ldc, stride_c;
  int64_t batch;
  double alpha, beta;
};
// Enqueues the product on the launch's stream; returns 0 on success.
using GemmFn = int (*)(void* context, const GemmCall& call);

// How a launcher runs: the stream (cudaStream_t as void*, unused on the host), the matrix
// product, and whether the result must be bitwise reproducible (TensorFlow's
// enable_op_determinism): then no floating-point atomics are used.
struct GpuLaunch {
  void* stream = nullptr;
  GemmFn gemm = nullptr;
  void* gemm_context = nullptr;
  bool deterministic = false;
  // Upper bound on the output pixels (conv) processed per chunk; 0 = automatic. The tests lower
  // it to run the multi-chunk paths on small shapes.
  int64_t max_chunk = 0;
};

// Adds v to *p: an atomic add on the device, a plain add in the (sequential) host emulation.
template <typename A>
TF_DCN_HD void AtomicAddTo(A* p, A v) {
#if defined(__CUDA_ARCH__)
  atomicAdd(p, v);
#else
  *p += v;
#endif
}

// *p = min(*p, v): an atomic minimum on the device, a plain one in the host emulation.
TF_DCN_HD void AtomicMinTo(long long* p, long long v) {
#if defined(__CUDA_ARCH__)
  atomicMin(p, v);
#else
  if (v < *p) *p = v;
#endif
}

// Returns from the enclosing launcher with the first non-zero error code.
#define TF_DCN_GPU_TRY(expr)              \
  do {                                    \
    if (const int e_ = (expr)) return e_; \
  } while (0)

// out[e] = T(acc[e]): the final cast of a float32 accumulator to a half type.
template <typename T, typename A>
struct CastTo {
  const A* acc;
  T* out;
  TF_DCN_HD void operator()(int64_t e) const { out[e] = T(acc[e]); }
};

// Carves aligned pieces out of one workspace buffer. With base == nullptr it only measures.
class WorkspaceCarver {
 public:
  explicit WorkspaceCarver(void* base) : base_(static_cast<char*>(base)) {}
  template <typename U>
  U* Take(int64_t count) {
    const int64_t start = (used_ + kAlign - 1) / kAlign * kAlign;
    used_ = start + (count > 0 ? count : 0) * static_cast<int64_t>(sizeof(U));
    return base_ ? reinterpret_cast<U*>(base_ + start) : nullptr;
  }
  int64_t bytes() const { return used_; }

 private:
  static constexpr int64_t kAlign = 256;
  char* base_;
  int64_t used_ = 0;
};

// Number of bits needed for keys in [0, max_key].
inline int KeyBits(uint64_t max_key) {
  int bits = 1;
  while (bits < 64 && (max_key >> bits) != 0) ++bits;
  return bits;
}

}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_GPU_LAUNCH_H_
