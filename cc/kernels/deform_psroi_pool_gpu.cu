// CUDA instantiation of the deformable (PS-)RoI pooling launchers (deform_psroi_pool_launch.h)
// for float16, bfloat16, float32 and float64 features with float32 or float64 rois. No
// TensorFlow headers (see deform_psroi_pool_gpu.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cc/kernels/cuda_exec.cuh"
#include "cc/kernels/deform_psroi_pool_gpu.h"
#include "cc/kernels/deform_psroi_pool_launch.h"

namespace tf_dcn {

int DeformPSRoIPoolGpuCheckBatchIndices(bool rois_double, int64_t num_rois, int64_t batch,
                                        const GpuLaunch& launch, const void* rois, void* scratch,
                                        RoiBatchCheck* host) {
  return rois_double ? pool_gpu::CheckBatchIndices<CudaExec, double>(num_rois, batch, launch, rois,
                                                                      scratch, host)
                     : pool_gpu::CheckBatchIndices<CudaExec, float>(num_rois, batch, launch, rois,
                                                                     scratch, host);
}

int DeformPSRoIPoolGpuWorkspaceBytes(ElementType type, bool /*rois_double*/,
                                     const DeformPSRoIPoolDims& d, const GpuLaunch& launch,
                                     bool backward, int64_t* bytes) {
  return WithElementType<__half, __nv_bfloat16>(type, [&](auto tag) {
    return pool_gpu::WorkspaceBytes<CudaExec, decltype(tag)>(d, launch, backward, bytes);
  });
}

int DeformPSRoIPoolGpuForward(ElementType type, bool rois_double, const DeformPSRoIPoolDims& d,
                              const GpuLaunch& launch, const void* features, const void* rois,
                              const void* offsets, void* output, void* workspace,
                              int64_t workspace_bytes) {
  return WithElementType<__half, __nv_bfloat16>(type, [&](auto tag) {
    using T = decltype(tag);
    return rois_double ? pool_gpu::Forward<CudaExec, T, double>(d, launch, features, rois, offsets,
                                                                output, workspace, workspace_bytes)
                       : pool_gpu::Forward<CudaExec, T, float>(d, launch, features, rois, offsets,
                                                               output, workspace, workspace_bytes);
  });
}

int DeformPSRoIPoolGpuBackward(ElementType type, bool rois_double, const DeformPSRoIPoolDims& d,
                               const GpuLaunch& launch, const void* features, const void* rois,
                               const void* offsets, const void* grad_output, void* grad_features,
                               void* grad_offsets, void* workspace, int64_t workspace_bytes) {
  return WithElementType<__half, __nv_bfloat16>(type, [&](auto tag) {
    using T = decltype(tag);
    return rois_double
               ? pool_gpu::Backward<CudaExec, T, double>(d, launch, features, rois, offsets,
                                                         grad_output, grad_features, grad_offsets,
                                                         workspace, workspace_bytes)
               : pool_gpu::Backward<CudaExec, T, float>(d, launch, features, rois, offsets,
                                                        grad_output, grad_features, grad_offsets,
                                                        workspace, workspace_bytes);
  });
}

}  // namespace tf_dcn
