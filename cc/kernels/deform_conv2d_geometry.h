// Sizes of a deformable convolution: shared by the shape function, the kernels' validation
// and the CUDA launchers. Plain C++, no TensorFlow headers.
#ifndef TF_DCN_CC_KERNELS_DEFORM_CONV2D_GEOMETRY_H_
#define TF_DCN_CC_KERNELS_DEFORM_CONV2D_GEOMETRY_H_

#include <cstdint>

namespace tf_dcn {

enum class PaddingMode { kValid, kSame, kExplicit };

// One spatial axis of a convolution window.
struct AxisGeometry {
  int64_t out_size = 0;    // number of output positions
  int64_t pad_before = 0;  // moves the sampling grid (top or left)
  int64_t pad_after = 0;   // enters only out_size (bottom or right)
};

// Computes the output size of one axis. Returns false when the (dilated) kernel is larger than
// the padded input. `explicit_before/after` are used only in kExplicit mode. TensorFlow's SAME
// rule: total = max((ceil(in/stride)-1)*stride + eff_k - in, 0), before = total/2.
inline bool ComputeAxisGeometry(int64_t in_size, int64_t kernel, int64_t stride, int64_t dilation,
                                PaddingMode mode, int64_t explicit_before, int64_t explicit_after,
                                AxisGeometry* g) {
  const int64_t eff_k = dilation * (kernel - 1) + 1;
  if (mode == PaddingMode::kSame) {
    g->out_size = (in_size + stride - 1) / stride;
    int64_t total = (g->out_size - 1) * stride + eff_k - in_size;
    if (total < 0) total = 0;
    g->pad_before = total / 2;
    g->pad_after = total - g->pad_before;
    return true;
  }
  g->pad_before = mode == PaddingMode::kExplicit ? explicit_before : 0;
  g->pad_after = mode == PaddingMode::kExplicit ? explicit_after : 0;
  const int64_t padded = in_size + g->pad_before + g->pad_after;
  if (padded < eff_k) return false;
  g->out_size = (padded - eff_k) / stride + 1;
  return true;
}

// Every size a deformable-convolution kernel needs, validated by the op shim.
struct DeformConv2DDims {
  int64_t batch, in_h, in_w, in_c;
  int64_t out_h, out_w, out_c;
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w;
  int64_t dilation_h, dilation_w;
  int64_t pad_top, pad_left;
  int64_t groups, deformable_groups;
  bool use_mask, use_bias;

  int64_t taps() const { return kernel_h * kernel_w; }
  int64_t in_c_per_group() const { return in_c / groups; }
  int64_t out_c_per_group() const { return out_c / groups; }
  int64_t in_c_per_dgroup() const { return in_c / deformable_groups; }
  int64_t out_pixels() const { return batch * out_h * out_w; }
  int64_t offset_channels() const { return 2 * deformable_groups * taps(); }
  int64_t mask_channels() const { return deformable_groups * taps(); }
};

}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_DEFORM_CONV2D_GEOMETRY_H_
