// Small helpers shared by the OpKernel shims (TensorFlow side only).
#ifndef TF_DCN_CC_KERNELS_OP_UTIL_H_
#define TF_DCN_CC_KERNELS_OP_UTIL_H_

#include <functional>
#include <string>

#include "cc/kernels/cpu_dispatch.h"
#include "cc/kernels/kernel_args.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace tf_dcn {

// Data of an optional input (mask, bias, offsets), or nullptr when the op does not use it.
template <typename T>
const T* DataOrNull(const tensorflow::Tensor& t, bool used) {
  return used ? t.flat<T>().data() : nullptr;
}

// The ElementType of a TensorFlow element type (for the TF-free CPU kernels and GPU launchers).
template <typename T>
constexpr ElementType ElementTypeOf();
template <>
constexpr ElementType ElementTypeOf<Eigen::half>() {
  return ElementType::kHalf;
}
template <>
constexpr ElementType ElementTypeOf<Eigen::bfloat16>() {
  return ElementType::kBFloat16;
}
template <>
constexpr ElementType ElementTypeOf<float>() {
  return ElementType::kFloat;
}
template <>
constexpr ElementType ElementTypeOf<double>() {
  return ElementType::kDouble;
}

// What a CPU op needs to run the TF-free kernels: the kernels of the instruction set SelectCpuIsa
// picks (TF_DCN_CPU_ISA or the widest the CPU supports) and the op's intra-op thread pool with the
// workspace limit (TF_DCN_CPU_WORKSPACE_BYTES). A bad setting of either variable is an
// InvalidArgument error of the op, naming the variable.
inline absl::Status PrepareCpuKernels(tensorflow::OpKernelContext* ctx, const CpuKernels** kernels,
                                      CpuParallel* parallel) {
  CpuIsa isa;
  std::string error;
  if (!SelectCpuIsa(&isa, &error)) return absl::InvalidArgumentError(error);
  if (!ReadCpuWorkspaceLimit(&parallel->workspace_bytes, &error)) {
    return absl::InvalidArgumentError(error);
  }
  *kernels = &CpuKernelsFor(isa);
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  parallel->num_threads = workers->NumThreads();
  parallel->parallel_for = [workers](int64_t total, int64_t cost,
                                     const std::function<void(int64_t, int64_t)>& fn) {
    workers->ParallelFor(total, cost, fn);
  };
  return absl::OkStatus();
}

}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_OP_UTIL_H_
