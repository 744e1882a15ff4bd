// DEVICE_GPU specialisations of the deformable (PS-)RoI pooling functors: workspace from the op's
// allocator, the op's stream, then the CUDA launchers (deform_psroi_pool_gpu.cu). No matrix
// products. Compiled only into the CUDA op library (TF_DCN_WITH_CUDA).
#include <type_traits>

#include "cc/kernels/deform_psroi_pool_functor.h"
#include "cc/kernels/deform_psroi_pool_gpu.h"
#include "cc/kernels/element_types.h"
#include "cc/kernels/gpu/gpu_op_util.h"
#include "cc/kernels/op_util.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tf_dcn {
namespace {

// Queries the workspace, allocates it and runs `launch_fn(launch, workspace, bytes)`.
template <typename LaunchFn>
absl::Status RunPoolLauncher(tensorflow::OpKernelContext* ctx, ElementType type, bool rois_double,
                             const DeformPSRoIPoolDims& d, bool backward, const char* op_name,
                             LaunchFn launch_fn) {
  GpuLaunch launch;
  TF_RETURN_IF_ERROR(MakeGpuLaunch(ctx, /*gemm=*/nullptr, &launch));
  int64_t bytes = 0;
  int code = DeformPSRoIPoolGpuWorkspaceBytes(type, rois_double, d, launch, backward, &bytes);
  if (code == 0) {
    tensorflow::Tensor storage;
    void* workspace = nullptr;
    TF_RETURN_IF_ERROR(AllocateWorkspace(ctx, bytes, &storage, &workspace));
    code = launch_fn(launch, workspace, bytes);
  }
  if (code == kGpuPoolTooManySamples) {
    return absl::UnimplementedError(absl::StrCat(
        op_name, " on the GPU: sample_per_part = ", d.sample_per_part,
        " is too large for the deterministic gradient (disable op determinism or use the CPU)"));
  }
  return GpuCodeToStatus(code, op_name);
}

}  // namespace

template <typename T, typename TR>
struct DeformPSRoIPoolForward<GpuDevice, T, TR> {
  absl::Status operator()(tensorflow::OpKernelContext* ctx, const DeformPSRoIPoolDims& d,
                          const T* features, const TR* rois, const T* offsets, T* output) {
    constexpr bool kRoisDouble = std::is_same_v<TR, double>;
    return RunPoolLauncher(
        ctx, ElementTypeOf<T>(), kRoisDouble, d, false, "TfDcn>DeformablePSRoIPool",
        [&](const GpuLaunch& launch, void* workspace, int64_t bytes) {
          return DeformPSRoIPoolGpuForward(ElementTypeOf<T>(), kRoisDouble, d, launch, features,
                                           rois, offsets, output, workspace, bytes);
        });
  }
};

template <typename T, typename TR>
struct DeformPSRoIPoolBackward<GpuDevice, T, TR> {
  absl::Status operator()(tensorflow::OpKernelContext* ctx, const DeformPSRoIPoolDims& d,
                          const T* features, const TR* rois, const T* offsets, const T* grad_output,
                          T* grad_features, T* grad_offsets) {
    constexpr bool kRoisDouble = std::is_same_v<TR, double>;
    return RunPoolLauncher(
        ctx, ElementTypeOf<T>(), kRoisDouble, d, true, "TfDcn>DeformablePSRoIPoolGrad",
        [&](const GpuLaunch& launch, void* workspace, int64_t bytes) {
          return DeformPSRoIPoolGpuBackward(ElementTypeOf<T>(), kRoisDouble, d, launch, features,
                                            rois, offsets, grad_output, grad_features, grad_offsets,
                                            workspace, bytes);
        });
  }
};

#define TF_DCN_INSTANTIATE_GPU(T, TR)                       \
  template struct DeformPSRoIPoolForward<GpuDevice, T, TR>; \
  template struct DeformPSRoIPoolBackward<GpuDevice, T, TR>;
#define TF_DCN_INSTANTIATE_GPU_ALL_ROIS(T) TF_DCN_CALL_ROI_TYPES(TF_DCN_INSTANTIATE_GPU, T)
TF_DCN_CALL_ELEMENT_TYPES(TF_DCN_INSTANTIATE_GPU_ALL_ROIS)
#undef TF_DCN_INSTANTIATE_GPU_ALL_ROIS
#undef TF_DCN_INSTANTIATE_GPU

}  // namespace tf_dcn
