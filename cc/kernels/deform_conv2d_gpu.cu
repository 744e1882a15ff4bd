// CUDA instantiation of the deformable-convolution launchers (deform_conv2d_launch.h) for
// float16, bfloat16, float32 and float64. No TensorFlow headers (see deform_conv2d_gpu.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cc/kernels/cuda_exec.cuh"
#include "cc/kernels/deform_conv2d_gpu.h"
#include "cc/kernels/deform_conv2d_launch.h"

namespace tf_dcn {

int DeformConv2DGpuWorkspaceBytes(ElementType type, const DeformConv2DDims& d,
                                  const GpuLaunch& launch, bool backward, int64_t* bytes) {
  return WithElementType<__half, __nv_bfloat16>(type, [&](auto tag) {
    return conv_gpu::WorkspaceBytes<CudaExec, decltype(tag)>(d, launch, backward, bytes);
  });
}

int DeformConv2DGpuForward(ElementType type, const DeformConv2DDims& d, const GpuLaunch& launch,
                           const DeformConv2DForwardArgs& args, void* workspace,
                           int64_t workspace_bytes) {
  return WithElementType<__half, __nv_bfloat16>(type, [&](auto tag) {
    return conv_gpu::Forward<CudaExec, decltype(tag)>(type, d, launch, args, workspace,
                                                      workspace_bytes);
  });
}

int DeformConv2DGpuBackward(ElementType type, const DeformConv2DDims& d, const GpuLaunch& launch,
                            const DeformConv2DBackwardArgs& args, void* workspace,
                            int64_t workspace_bytes) {
  return WithElementType<__half, __nv_bfloat16>(type, [&](auto tag) {
    return conv_gpu::Backward<CudaExec, decltype(tag)>(type, d, launch, args, workspace,
                                                       workspace_bytes);
  });
}

}  // namespace tf_dcn
