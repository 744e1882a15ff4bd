// Entry points of the TF-free CPU kernels, compiled once per instruction set (ISA):
// `generic` (the x86-64 baseline TensorFlow itself requires) and `avx2` (AVX2 + FMA + F16C).
// The op shims pick one at run time (see SelectCpuIsa). No TensorFlow or Eigen headers here.
#ifndef TF_DCN_CC_KERNELS_CPU_DISPATCH_H_
#define TF_DCN_CC_KERNELS_CPU_DISPATCH_H_

#include <cstdint>
#include <functional>
#include <string>

#include "cc/kernels/deform_conv2d_geometry.h"
#include "cc/kernels/kernel_args.h"

namespace tf_dcn {

// Runs fn(begin, end) over [0, total) on the op's intra-op thread pool; `cost` is the estimated
// cost of one unit (as for TensorFlow's ThreadPool::ParallelFor).
struct CpuParallel {
  std::function<void(int64_t total, int64_t cost, const std::function<void(int64_t, int64_t)>& fn)>
      parallel_for;
  int num_threads = 1;
};

#define TF_DCN_DECLARE_CPU_ISA(isa)                                                          \
  namespace isa {                                                                            \
  void DeformConv2DForward(ElementType type, const DeformConv2DDims& d,                      \
                           const CpuParallel& parallel, const DeformConv2DForwardArgs& a);   \
  void DeformConv2DBackward(ElementType type, const DeformConv2DDims& d,                     \
                            const CpuParallel& parallel, const DeformConv2DBackwardArgs& a); \
  }
TF_DCN_DECLARE_CPU_ISA(generic)
TF_DCN_DECLARE_CPU_ISA(avx2)
#undef TF_DCN_DECLARE_CPU_ISA

enum class CpuIsa { kGeneric, kAvx2 };

// The instruction set to run: TF_DCN_CPU_ISA=generic|avx2 forces one (avx2 on a CPU without it
// is an error, reported through `error`); otherwise AVX2 when the CPU and OS support AVX2, FMA
// and F16C. Returns false and sets `error` on a bad setting.
bool SelectCpuIsa(CpuIsa* isa, std::string* error);

}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_CPU_DISPATCH_H_
