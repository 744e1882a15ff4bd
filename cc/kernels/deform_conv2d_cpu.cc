// CPU specialisations of the deformable-convolution functors: they hand the op's thread pool and
// raw pointers to the TF-free kernels (deform_conv2d_cpu_kernels.h) of the instruction set chosen
// at run time.
#define EIGEN_USE_THREADS

#include "cc/kernels/cpu_dispatch.h"
#include "cc/kernels/deform_conv2d_functor.h"
#include "cc/kernels/element_types.h"
#include "cc/kernels/op_util.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tf_dcn {
using CPUDevice = Eigen::ThreadPoolDevice;

template <typename T>
struct DeformConv2DForward<CPUDevice, T> {
  absl::Status operator()(tensorflow::OpKernelContext* ctx, const DeformConv2DDims& d,
                          const T* input, const T* offsets, const T* mask, const T* kernel,
                          const T* bias, T* output) {
    const CpuKernels* kernels = nullptr;
    CpuParallel parallel;
    TF_RETURN_IF_ERROR(PrepareCpuKernels(ctx, &kernels, &parallel));
    const DeformConv2DForwardArgs args{input, offsets, mask, kernel, bias, output};
    kernels->conv_forward(ElementTypeOf<T>(), d, parallel, args);
    return absl::OkStatus();
  }
};

template <typename T>
struct DeformConv2DBackward<CPUDevice, T> {
  absl::Status operator()(tensorflow::OpKernelContext* ctx, const DeformConv2DDims& d,
                          const T* input, const T* offsets, const T* mask, const T* kernel,
                          const T* grad_output, T* grad_input, T* grad_offsets, T* grad_mask,
                          T* grad_kernel, T* grad_bias) {
    const CpuKernels* kernels = nullptr;
    CpuParallel parallel;
    TF_RETURN_IF_ERROR(PrepareCpuKernels(ctx, &kernels, &parallel));
    const DeformConv2DBackwardArgs args{input,       offsets,    mask,         kernel,
                                        grad_output, grad_input, grad_offsets, grad_mask,
                                        grad_kernel, grad_bias};
    kernels->conv_backward(ElementTypeOf<T>(), d, parallel, args);
    return absl::OkStatus();
  }
};

#define TF_DCN_INSTANTIATE_CPU(T)                    \
  template struct DeformConv2DForward<CPUDevice, T>; \
  template struct DeformConv2DBackward<CPUDevice, T>;
TF_DCN_CALL_ELEMENT_TYPES(TF_DCN_INSTANTIATE_CPU)
#undef TF_DCN_INSTANTIATE_CPU

}  // namespace tf_dcn
