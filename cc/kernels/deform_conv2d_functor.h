// Device-templated functors of the deformable convolution, over raw pointers. The OpKernels in
// deform_conv2d_op.cc validate, allocate and call these; the CPU specialisations live in
// deform_conv2d_cpu.cc, the GPU ones forward to the CUDA launchers.
#ifndef TF_DCN_CC_KERNELS_DEFORM_CONV2D_FUNCTOR_H_
#define TF_DCN_CC_KERNELS_DEFORM_CONV2D_FUNCTOR_H_

#include "cc/kernels/deform_conv2d_geometry.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tf_dcn {

// output[N, Ho, Wo, Cout] from input[N, H, W, C], offsets[N, Ho, Wo, 2*DG*K], mask[N, Ho, Wo, DG*K]
// (nullptr when !use_mask), kernel[kh, kw, C/groups, Cout], bias[Cout] (nullptr when !use_bias).
template <typename Device, typename T>
struct DeformConv2DForward {
  absl::Status operator()(tensorflow::OpKernelContext* ctx, const DeformConv2DDims& d,
                          const T* input, const T* offsets, const T* mask, const T* kernel,
                          const T* bias, T* output);
};

// All five gradients at once. grad_mask / grad_bias are nullptr when unused.
template <typename Device, typename T>
struct DeformConv2DBackward {
  absl::Status operator()(tensorflow::OpKernelContext* ctx, const DeformConv2DDims& d,
                          const T* input, const T* offsets, const T* mask, const T* kernel,
                          const T* grad_output, T* grad_input, T* grad_offsets, T* grad_mask,
                          T* grad_kernel, T* grad_bias);
};

}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_DEFORM_CONV2D_FUNCTOR_H_
