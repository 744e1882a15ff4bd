// Device-templated functors of the deformable (PS-)RoI pooling, over raw pointers. The OpKernels in
// deform_psroi_pool_op.cc validate, allocate and call these; the CPU specialisations live in
// deform_psroi_pool_cpu.cc.
#ifndef TF_DCN_CC_KERNELS_DEFORM_PSROI_POOL_FUNCTOR_H_
#define TF_DCN_CC_KERNELS_DEFORM_PSROI_POOL_FUNCTOR_H_

#include "cc/kernels/deform_conv2d_functor.h"  // AccumulatorType
#include "cc/kernels/deform_psroi_pool_geometry.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tf_dcn {

// output[R, P, P, output_dim] from features[N, H, W, output_dim*G*G], rois[R, 5] (type TR:
// float or double; batch indices already validated) and offsets[R, part, part, 2*num_classes]
// (x before y; nullptr when !use_offsets).
template <typename Device, typename T, typename TR>
struct DeformPSRoIPoolForward {
  absl::Status operator()(tensorflow::OpKernelContext* ctx, const DeformPSRoIPoolDims& d,
                          const T* features, const TR* rois, const T* offsets, T* output);
};

// Gradients w.r.t. features (always written, zeros where nothing pools) and offsets (nullptr
// when !use_offsets). The sample counts of the forward pass are recomputed.
template <typename Device, typename T, typename TR>
struct DeformPSRoIPoolBackward {
  absl::Status operator()(tensorflow::OpKernelContext* ctx, const DeformPSRoIPoolDims& d,
                          const T* features, const TR* rois, const T* offsets, const T* grad_output,
                          T* grad_features, T* grad_offsets);
};

}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_DEFORM_PSROI_POOL_FUNCTOR_H_
