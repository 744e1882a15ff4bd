// Entry points of the TF-free CPU kernels, compiled once per instruction set (ISA):
//   generic  the x86-64 baseline TensorFlow itself requires;
//   avx2     AVX2 + FMA + F16C;
//   avx512   AVX-512 F/BW/DQ/VL on top of avx2 (the Skylake-server and Zen 4 level).
// Each is one translation unit, cpu_kernels_<isa>.cc, that includes the convolution and pooling
// kernel headers with TF_DCN_CPU_ISA set to its namespace. The op shims pick one at run time
// (SelectCpuIsa) and call it through a CpuKernels table. No TensorFlow or Eigen headers here.
#ifndef TF_DCN_CC_KERNELS_CPU_DISPATCH_H_
#define TF_DCN_CC_KERNELS_CPU_DISPATCH_H_

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>

#include "cc/kernels/deform_conv2d_geometry.h"
#include "cc/kernels/deform_psroi_pool_geometry.h"
#include "cc/kernels/kernel_args.h"

namespace tf_dcn {

// The CPU kernels' temporary memory limit: 32 MiB unless TF_DCN_CPU_WORKSPACE_BYTES sets it (an
// integer number of bytes, at least kMinCpuWorkspaceBytes; the tests set it low to run many chunks
// on small inputs).
constexpr int64_t kDefaultCpuWorkspaceBytes = int64_t(32) << 20;
constexpr int64_t kMinCpuWorkspaceBytes = int64_t(64) << 10;

// Runs fn(begin, end) over [0, total) on the op's intra-op thread pool; `cost` is the estimated
// cost of one unit (as for TensorFlow's ThreadPool::ParallelFor).
struct CpuParallel {
  std::function<void(int64_t total, int64_t cost, const std::function<void(int64_t, int64_t)>& fn)>
      parallel_for;
  int num_threads = 1;
  // The temporary memory the kernels may use (bytes), from ReadCpuWorkspaceLimit.
  int64_t workspace_bytes = kDefaultCpuWorkspaceBytes;
};

// Runs fn(begin, end) over [0, n) in at most num_threads equal, contiguous shares, one work unit
// each. The thread calling ParallelFor works on units too, so more units than threads would make
// more threads runnable than there are cores; a static split keeps one per thread. cost_per_item
// is the estimated cost of one item.
inline void ParallelShares(const CpuParallel& parallel, int64_t n, int64_t cost_per_item,
                           const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t units = std::min<int64_t>(n, std::max(1, parallel.num_threads));
  if (units == 1) {
    fn(0, n);
    return;
  }
  const int64_t per_unit = (n + units - 1) / units;
  parallel.parallel_for(units, cost_per_item * per_unit, [&](int64_t u0, int64_t u1) {
    fn(n * u0 / units, n * u1 / units);
  });
}

// The kernels of one instruction set. `type` is the element type of every floating-point tensor,
// `roi_type` (pooling) that of the boxes: kFloat or kDouble.
struct CpuKernels {
  void (*conv_forward)(ElementType type, const DeformConv2DDims& d, const CpuParallel& parallel,
                       const DeformConv2DForwardArgs& a);
  void (*conv_backward)(ElementType type, const DeformConv2DDims& d, const CpuParallel& parallel,
                        const DeformConv2DBackwardArgs& a);
  void (*pool_forward)(ElementType type, ElementType roi_type, const DeformPSRoIPoolDims& d,
                       const CpuParallel& parallel, const DeformPSRoIPoolForwardArgs& a);
  void (*pool_backward)(ElementType type, ElementType roi_type, const DeformPSRoIPoolDims& d,
                        const CpuParallel& parallel, const DeformPSRoIPoolBackwardArgs& a);
};

#define TF_DCN_DECLARE_CPU_ISA(isa) \
  namespace isa {                   \
  extern const CpuKernels kKernels; \
  }
TF_DCN_DECLARE_CPU_ISA(generic)
TF_DCN_DECLARE_CPU_ISA(avx2)
TF_DCN_DECLARE_CPU_ISA(avx512)
#undef TF_DCN_DECLARE_CPU_ISA

enum class CpuIsa { kGeneric, kAvx2, kAvx512 };

// The instruction set to run. TF_DCN_CPU_ISA=generic|avx2|avx512 forces one (an ISA this CPU
// lacks is an error, reported through `error`); unset or "auto" picks the widest the CPU and the
// OS support. Returns false and sets `error` on a bad setting.
bool SelectCpuIsa(CpuIsa* isa, std::string* error);

// The workspace limit TF_DCN_CPU_WORKSPACE_BYTES sets (kDefaultCpuWorkspaceBytes when unset or
// empty); false with *error naming the variable when it is not a whole number of bytes at least
// kMinCpuWorkspaceBytes.
bool ReadCpuWorkspaceLimit(int64_t* bytes, std::string* error);

// The kernel table of an instruction set.
const CpuKernels& CpuKernelsFor(CpuIsa isa);

}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_CPU_DISPATCH_H_
