// Element types and raw-pointer argument bundles shared by the CPU kernels (g++), the CUDA
// launchers (clang-19) and the framework-free C APIs. Plain C++: no TensorFlow, Eigen or CUDA
// headers.
#ifndef TF_DCN_CC_KERNELS_KERNEL_ARGS_H_
#define TF_DCN_CC_KERNELS_KERNEL_ARGS_H_

namespace tf_dcn {

// Element type of every floating-point tensor of one op call. The TensorFlow side lists the same
// four types once, in TF_DCN_CALL_ELEMENT_TYPES (element_types.h).
enum class ElementType { kHalf, kBFloat16, kFloat, kDouble };

// Calls fn(T()) with the C++ type named by `type` and returns what fn returns. Half and BFloat16
// are the calling compiler's 16-bit types: Eigen's on the host (CPU kernels, host emulation),
// __half and __nv_bfloat16 in the CUDA launchers.
template <typename Half, typename BFloat16, typename Fn>
auto WithElementType(ElementType type, Fn fn) -> decltype(fn(float())) {
  switch (type) {
    case ElementType::kHalf:
      return fn(Half());
    case ElementType::kBFloat16:
      return fn(BFloat16());
    case ElementType::kFloat:
      return fn(float());
    case ElementType::kDouble:
      break;
  }
  return fn(double());
}

// Deformable convolution, NHWC (docs/semantics.md section 1). Pointers are host memory for the CPU
// kernels and device memory for the CUDA launchers.
struct DeformConv2DForwardArgs {
  const void* input;    // [N, H, W, C]
  const void* offsets;  // [N, Ho, Wo, 2*DG*kh*kw], dy before dx
  const void* mask;     // [N, Ho, Wo, DG*kh*kw]; nullptr without a mask (v1)
  const void* kernel;   // [kh, kw, C/groups, Cout]
  const void* bias;     // [Cout]; nullptr without a bias
  void* output;         // [N, Ho, Wo, Cout]
};

struct DeformConv2DBackwardArgs {
  const void* input;
  const void* offsets;
  const void* mask;
  const void* kernel;
  const void* grad_output;  // [N, Ho, Wo, Cout]
  void* grad_input;
  void* grad_offsets;
  void* grad_mask;  // nullptr without a mask
  void* grad_kernel;
  void* grad_bias;  // nullptr without a bias
};

// Deformable (PS-)RoI pooling, NHWC (docs/semantics.md section 2), for the CPU kernels.
struct DeformPSRoIPoolForwardArgs {
  const void* features;  // [N, H, W, C]
  const void* rois;      // [R, 5]: batch index, x1, y1, x2, y2 (in the RoI element type)
  const void* offsets;   // [R, part, part, 2*num_classes]; nullptr without offsets
  void* output;          // [R, pooled, pooled, output_dim]
};

struct DeformPSRoIPoolBackwardArgs {
  const void* features;
  const void* rois;
  const void* offsets;
  const void* grad_output;
  void* grad_features;
  void* grad_offsets;  // nullptr without offsets
};

}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_KERNEL_ARGS_H_
