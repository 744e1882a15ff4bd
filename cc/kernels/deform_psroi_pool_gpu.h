// Entry points of the deformable (PS-)RoI pooling CUDA launchers (deform_psroi_pool_gpu.cu),
// callable from code that includes no CUDA and no TensorFlow headers: the TF shim
// (gpu/deform_psroi_pool_gpu_functor.cc) and the framework-free C API of tests/gpu. All pointers
// are device memory; `workspace` is device memory of at least the queried size. `rois_double`
// says whether rois are float64 (else float32); the other tensors have element type `type`. The
// op checks the batch indices of rois with DeformPSRoIPoolGpuCheckBatchIndices; the kernels read
// no features for a RoI whose batch index is not an integer in [0, N) (its bins are NaN). Each
// function enqueues its work on launch.stream and returns 0 or an error code (GpuErrorString, or
// the one below).
#ifndef TF_DCN_CC_KERNELS_DEFORM_PSROI_POOL_GPU_H_
#define TF_DCN_CC_KERNELS_DEFORM_PSROI_POOL_GPU_H_

#include <cstdint>

#include "cc/kernels/deform_psroi_pool_geometry.h"
#include "cc/kernels/gpu_launch.h"
#include "cc/kernels/kernel_args.h"

namespace tf_dcn {

// The deterministic backward pass numbers every (bin, sample, corner) with an int64; with an
// absurd sample_per_part (about 2^30 and more) that count would overflow, and the launcher
// refuses with this code instead.
constexpr int kGpuPoolTooManySamples = -100;

// The result of DeformPSRoIPoolGpuCheckBatchIndices.
struct RoiBatchCheck {
  long long first_bad;  // the first RoI whose batch index is not an integer in [0, N); R if none
  double value;         // rois[first_bad, 0] (0 if none)
};

// Enqueues on launch.stream the check of every batch index rois[r, 0] (r < num_rois) against
// [0, batch), then a copy of the result into *host, which must be host memory the device can write
// (pinned). `scratch` is device memory of at least sizeof(RoiBatchCheck) bytes. *host is ready
// once the stream has passed this point: nothing here waits for it.
int DeformPSRoIPoolGpuCheckBatchIndices(bool rois_double, int64_t num_rois, int64_t batch,
                                        const GpuLaunch& launch, const void* rois, void* scratch,
                                        RoiBatchCheck* host);

int DeformPSRoIPoolGpuWorkspaceBytes(ElementType type, bool rois_double,
                                     const DeformPSRoIPoolDims& d, const GpuLaunch& launch,
                                     bool backward, int64_t* bytes);
// features [N, H, W, C], rois [R, 5], offsets [R, part, part, 2*num_classes] (x before y;
// ignored unless d.use_offsets) -> output [R, pooled, pooled, output_dim].
int DeformPSRoIPoolGpuForward(ElementType type, bool rois_double, const DeformPSRoIPoolDims& d,
                              const GpuLaunch& launch, const void* features, const void* rois,
                              const void* offsets, void* output, void* workspace,
                              int64_t workspace_bytes);
// grad_features (always written) and grad_offsets (written when d.use_offsets).
int DeformPSRoIPoolGpuBackward(ElementType type, bool rois_double, const DeformPSRoIPoolDims& d,
                               const GpuLaunch& launch, const void* features, const void* rois,
                               const void* offsets, const void* grad_output, void* grad_features,
                               void* grad_offsets, void* workspace, int64_t workspace_bytes);

}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_DEFORM_PSROI_POOL_GPU_H_
