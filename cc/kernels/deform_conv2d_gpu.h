// Entry points of the deformable-convolution CUDA launchers (deform_conv2d_gpu.cu), callable
// from code that includes no CUDA and no TensorFlow headers: the TF shim
// (deform_conv2d_gpu_functor.cc) and the framework-free C API of tests/gpu. All pointers are
// device memory; `workspace` is device memory of at least the queried size. Each function
// enqueues its work on launch.stream and returns 0 or an error code (GpuErrorString).
#ifndef TF_DCN_CC_KERNELS_DEFORM_CONV2D_GPU_H_
#define TF_DCN_CC_KERNELS_DEFORM_CONV2D_GPU_H_

#include <cstdint>

#include "cc/kernels/deform_conv2d_geometry.h"
#include "cc/kernels/gpu_launch.h"
#include "cc/kernels/kernel_args.h"

namespace tf_dcn {

int DeformConv2DGpuWorkspaceBytes(ElementType type, const DeformConv2DDims& d,
                                  const GpuLaunch& launch, bool backward, int64_t* bytes);
int DeformConv2DGpuForward(ElementType type, const DeformConv2DDims& d, const GpuLaunch& launch,
                           const DeformConv2DForwardArgs& args, void* workspace,
                           int64_t workspace_bytes);
int DeformConv2DGpuBackward(ElementType type, const DeformConv2DDims& d, const GpuLaunch& launch,
                            const DeformConv2DBackwardArgs& args, void* workspace,
                            int64_t workspace_bytes);

}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_DEFORM_CONV2D_GPU_H_
