// The emulation's matrix product: BLAS column-major semantics (gpu_launch.h GemmCall), computed
// with a plain loop in the accumulation type (float32 for half types, like cuBLAS's
// CUBLAS_COMPUTE_32F; float64 for double). Host pointers only.
#ifndef TF_DCN_TESTS_GPU_HOST_GEMM_H_
#define TF_DCN_TESTS_GPU_HOST_GEMM_H_

#include <cstdint>

#include "Eigen/Core"
#include "cc/kernels/dcn_common.h"
#include "cc/kernels/gpu_launch.h"

namespace tf_dcn {

template <typename T>
void HostGemmTyped(const GemmCall& g) {
  using A = typename AccumulatorType<T>::type;
  const T* a = static_cast<const T*>(g.a);
  const T* b = static_cast<const T*>(g.b);
  T* c = static_cast<T*>(g.c);
  for (int64_t batch = 0; batch < g.batch; ++batch) {
    const T* ab = a + batch * g.stride_a;
    const T* bb = b + batch * g.stride_b;
    T* cb = c + batch * g.stride_c;
    for (int64_t j = 0; j < g.n; ++j) {
      for (int64_t i = 0; i < g.m; ++i) {
        A sum = A(0);
        for (int64_t l = 0; l < g.k; ++l) {
          const T av = g.trans_a ? ab[l + i * g.lda] : ab[i + l * g.lda];
          const T bv = g.trans_b ? bb[j + l * g.ldb] : bb[l + j * g.ldb];
          sum += A(av) * A(bv);
        }
        T& out = cb[i + j * g.ldc];
        const A prior = g.beta != 0.0 ? A(g.beta) * A(out) : A(0);
        out = T(A(g.alpha) * sum + prior);
      }
    }
  }
}

inline int HostGemm(void*, const GemmCall& g) {
  switch (g.type) {
    case ElementType::kHalf:
      HostGemmTyped<Eigen::half>(g);
      break;
    case ElementType::kBFloat16:
      HostGemmTyped<Eigen::bfloat16>(g);
      break;
    case ElementType::kFloat:
      HostGemmTyped<float>(g);
      break;
    case ElementType::kDouble:
      HostGemmTyped<double>(g);
      break;
  }
  return 0;
}

}  // namespace tf_dcn

#endif  // TF_DCN_TESTS_GPU_HOST_GEMM_H_
