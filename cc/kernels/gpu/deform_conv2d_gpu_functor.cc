// DEVICE_GPU specialisations of the deformable-convolution functors: workspace from the op's
// allocator, the op's stream, TensorFlow's BLAS, then the CUDA launchers (deform_conv2d_gpu.cu).
// Compiled only into the CUDA op library (TF_DCN_WITH_CUDA).
#include "cc/kernels/deform_conv2d_functor.h"
#include "cc/kernels/deform_conv2d_gpu.h"
#include "cc/kernels/element_types.h"
#include "cc/kernels/gpu/gpu_op_util.h"
#include "cc/kernels/op_util.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tf_dcn {
namespace {

// Queries the workspace, allocates it and runs `launch_fn(launch, workspace, bytes)`.
template <typename LaunchFn>
absl::Status RunConvLauncher(tensorflow::OpKernelContext* ctx, ElementType type,
                             const DeformConv2DDims& d, bool backward, const char* op_name,
                             LaunchFn launch_fn) {
  TfBlasGemm gemm;
  GpuLaunch launch;
  TF_RETURN_IF_ERROR(MakeGpuLaunch(ctx, &gemm, &launch));
  int64_t bytes = 0;
  TF_RETURN_IF_ERROR(
      GpuCodeToStatus(DeformConv2DGpuWorkspaceBytes(type, d, launch, backward, &bytes), op_name));
  tensorflow::Tensor storage;
  void* workspace = nullptr;
  TF_RETURN_IF_ERROR(AllocateWorkspace(ctx, bytes, &storage, &workspace));
  const int code = launch_fn(launch, workspace, bytes);
  if (code == kGpuGemmFailed && !gemm.status.ok()) {
    return absl::InternalError(
        absl::StrCat(op_name, " on the GPU: matrix product failed: ", gemm.status.message()));
  }
  return GpuCodeToStatus(code, op_name);
}

}  // namespace

template <typename T>
struct DeformConv2DForward<GpuDevice, T> {
  absl::Status operator()(tensorflow::OpKernelContext* ctx, const DeformConv2DDims& d,
                          const T* input, const T* offsets, const T* mask, const T* kernel,
                          const T* bias, T* output) {
    const DeformConv2DForwardArgs args{input, offsets, mask, kernel, bias, output};
    return RunConvLauncher(ctx, ElementTypeOf<T>(), d, false, "TfDcn>DeformableConv2D",
                           [&](const GpuLaunch& launch, void* workspace, int64_t bytes) {
                             return DeformConv2DGpuForward(ElementTypeOf<T>(), d, launch, args,
                                                           workspace, bytes);
                           });
  }
};

template <typename T>
struct DeformConv2DBackward<GpuDevice, T> {
  absl::Status operator()(tensorflow::OpKernelContext* ctx, const DeformConv2DDims& d,
                          const T* input, const T* offsets, const T* mask, const T* kernel,
                          const T* grad_output, T* grad_input, T* grad_offsets, T* grad_mask,
                          T* grad_kernel, T* grad_bias) {
    const DeformConv2DBackwardArgs args{input,       offsets,    mask,         kernel,
                                        grad_output, grad_input, grad_offsets, grad_mask,
                                        grad_kernel, grad_bias};
    return RunConvLauncher(ctx, ElementTypeOf<T>(), d, true, "TfDcn>DeformableConv2DGrad",
                           [&](const GpuLaunch& launch, void* workspace, int64_t bytes) {
                             return DeformConv2DGpuBackward(ElementTypeOf<T>(), d, launch, args,
                                                            workspace, bytes);
                           });
  }
};

#define TF_DCN_INSTANTIATE_GPU(T)                    \
  template struct DeformConv2DForward<GpuDevice, T>; \
  template struct DeformConv2DBackward<GpuDevice, T>;
TF_DCN_CALL_ELEMENT_TYPES(TF_DCN_INSTANTIATE_GPU)
#undef TF_DCN_INSTANTIATE_GPU

}  // namespace tf_dcn
