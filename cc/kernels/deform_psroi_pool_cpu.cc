// CPU specialisations of the pooling functors: they hand the op's thread pool and raw pointers
// to the TF-free kernels (deform_psroi_pool_cpu_kernels.h) of the instruction set chosen at run
// time.
#define EIGEN_USE_THREADS

#include "cc/kernels/cpu_dispatch.h"
#include "cc/kernels/deform_psroi_pool_functor.h"
#include "cc/kernels/element_types.h"
#include "cc/kernels/op_util.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tf_dcn {

using CPUDevice = Eigen::ThreadPoolDevice;

template <typename T, typename TR>
struct DeformPSRoIPoolForward<CPUDevice, T, TR> {
  absl::Status operator()(tensorflow::OpKernelContext* ctx, const DeformPSRoIPoolDims& d,
                          const T* features, const TR* rois, const T* offsets, T* output) {
    const CpuKernels* kernels = nullptr;
    CpuParallel parallel;
    TF_RETURN_IF_ERROR(PrepareCpuKernels(ctx, &kernels, &parallel));
    const DeformPSRoIPoolForwardArgs args{features, rois, offsets, output};
    kernels->pool_forward(ElementTypeOf<T>(), ElementTypeOf<TR>(), d, parallel, args);
    return absl::OkStatus();
  }
};

template <typename T, typename TR>
struct DeformPSRoIPoolBackward<CPUDevice, T, TR> {
  absl::Status operator()(tensorflow::OpKernelContext* ctx, const DeformPSRoIPoolDims& d,
                          const T* features, const TR* rois, const T* offsets, const T* grad_output,
                          T* grad_features, T* grad_offsets) {
    const CpuKernels* kernels = nullptr;
    CpuParallel parallel;
    TF_RETURN_IF_ERROR(PrepareCpuKernels(ctx, &kernels, &parallel));
    const DeformPSRoIPoolBackwardArgs args{features, rois,         offsets,
                                           grad_output, grad_features, grad_offsets};
    kernels->pool_backward(ElementTypeOf<T>(), ElementTypeOf<TR>(), d, parallel, args);
    return absl::OkStatus();
  }
};

#define TF_DCN_INSTANTIATE_CPU(T, TR)                       \
  template struct DeformPSRoIPoolForward<CPUDevice, T, TR>; \
  template struct DeformPSRoIPoolBackward<CPUDevice, T, TR>;
#define TF_DCN_INSTANTIATE_CPU_ALL_ROIS(T) TF_DCN_CALL_ROI_TYPES(TF_DCN_INSTANTIATE_CPU, T)
TF_DCN_CALL_ELEMENT_TYPES(TF_DCN_INSTANTIATE_CPU_ALL_ROIS)
#undef TF_DCN_INSTANTIATE_CPU_ALL_ROIS
#undef TF_DCN_INSTANTIATE_CPU

}  // namespace tf_dcn
