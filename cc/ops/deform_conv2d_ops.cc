// Op declarations of the deformable convolution (v1 and modulated v2). Device files only register
// kernels for these ops; see cc/kernels/deform_conv2d_op.cc.
#include <vector>

#include "cc/kernels/deform_conv2d_geometry.h"
#include "cc/kernels/element_types.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_dcn {
namespace {

using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// Output spatial dimension, or unknown when the input dimension is unknown.
absl::Status OutputDim(InferenceContext* c, DimensionHandle in, int64_t kernel, int64_t stride,
                       int64_t dilation, PaddingMode mode, int64_t before, int64_t after,
                       const char* axis, DimensionHandle* out) {
  if (!c->ValueKnown(in) || kernel < 0) {
    *out = c->UnknownDim();
    return absl::OkStatus();
  }
  AxisGeometry g;
  if (!ComputeAxisGeometry(c->Value(in), kernel, stride, dilation, mode, before, after, &g)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kernel: the dilated kernel (", dilation * (kernel - 1) + 1, ") is larger than the padded ",
        axis, " of inputs (", c->Value(in) + before + after, ")"));
  }
  *out = c->MakeDim(g.out_size);
  return absl::OkStatus();
}

absl::Status DeformConv2DShape(InferenceContext* c) {
  ShapeHandle input, offsets, mask, kernel, bias;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &input));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &offsets));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 4, &kernel));
  bool use_mask, use_bias;
  TF_RETURN_IF_ERROR(c->GetAttr("use_mask", &use_mask));
  TF_RETURN_IF_ERROR(c->GetAttr("use_bias", &use_bias));
  if (use_mask) TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 4, &mask));
  if (use_bias) TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 1, &bias));

  std::vector<int32_t> strides, dilations;
  std::vector<int64_t> explicit_paddings;
  std::string padding;
  int64_t groups, dgroups;
  TF_RETURN_IF_ERROR(c->GetAttr("strides", &strides));
  TF_RETURN_IF_ERROR(c->GetAttr("dilations", &dilations));
  TF_RETURN_IF_ERROR(c->GetAttr("padding", &padding));
  TF_RETURN_IF_ERROR(c->GetAttr("explicit_paddings", &explicit_paddings));
  TF_RETURN_IF_ERROR(c->GetAttr("groups", &groups));
  TF_RETURN_IF_ERROR(c->GetAttr("deformable_groups", &dgroups));
  if (strides.size() != 2 || strides[0] < 1 || strides[1] < 1) {
    return absl::InvalidArgumentError("strides: expected two positive integers");
  }
  if (dilations.size() != 2 || dilations[0] < 1 || dilations[1] < 1) {
    return absl::InvalidArgumentError("dilation_rate: expected two positive integers");
  }
  const PaddingMode mode = padding == "SAME"    ? PaddingMode::kSame
                           : padding == "VALID" ? PaddingMode::kValid
                                                : PaddingMode::kExplicit;
  if (mode == PaddingMode::kExplicit) {
    if (explicit_paddings.size() != 4) {
      return absl::InvalidArgumentError(
          "padding: EXPLICIT padding needs explicit_paddings = [top, bottom, left, right]");
    }
  } else {
    explicit_paddings.assign(4, 0);
  }

  // Batch must agree between inputs, offsets (and mask).
  DimensionHandle batch = c->Dim(input, 0);
  TF_RETURN_IF_ERROR(c->Merge(batch, c->Dim(offsets, 0), &batch));
  if (use_mask) TF_RETURN_IF_ERROR(c->Merge(batch, c->Dim(mask, 0), &batch));

  DimensionHandle kh_dim = c->Dim(kernel, 0), kw_dim = c->Dim(kernel, 1);
  const int64_t kh = c->ValueKnown(kh_dim) ? c->Value(kh_dim) : -1;
  const int64_t kw = c->ValueKnown(kw_dim) ? c->Value(kw_dim) : -1;

  DimensionHandle out_h, out_w;
  TF_RETURN_IF_ERROR(OutputDim(c, c->Dim(input, 1), kh, strides[0], dilations[0], mode,
                               explicit_paddings[0], explicit_paddings[1], "height", &out_h));
  TF_RETURN_IF_ERROR(OutputDim(c, c->Dim(input, 2), kw, strides[1], dilations[1], mode,
                               explicit_paddings[2], explicit_paddings[3], "width", &out_w));
  TF_RETURN_IF_ERROR(c->Merge(out_h, c->Dim(offsets, 1), &out_h));
  TF_RETURN_IF_ERROR(c->Merge(out_w, c->Dim(offsets, 2), &out_w));
  if (use_mask) {
    TF_RETURN_IF_ERROR(c->Merge(out_h, c->Dim(mask, 1), &out_h));
    TF_RETURN_IF_ERROR(c->Merge(out_w, c->Dim(mask, 2), &out_w));
  }
  if (kh >= 0 && kw >= 0) {
    DimensionHandle unused;
    TF_RETURN_IF_ERROR(c->WithValue(c->Dim(offsets, 3), 2 * dgroups * kh * kw, &unused));
    if (use_mask) TF_RETURN_IF_ERROR(c->WithValue(c->Dim(mask, 3), dgroups * kh * kw, &unused));
  }

  DimensionHandle in_c = c->Dim(input, 3);
  if (c->ValueKnown(in_c)) {
    if (c->Value(in_c) % groups != 0) {
      return absl::InvalidArgumentError(absl::StrCat("groups: input channels (", c->Value(in_c),
                                                     ") must be divisible by groups (", groups,
                                                     ")"));
    }
    if (c->Value(in_c) % dgroups != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("deformable_groups: input channels (", c->Value(in_c),
                       ") must be divisible by deformable_groups (", dgroups, ")"));
    }
    DimensionHandle unused;
    TF_RETURN_IF_ERROR(c->WithValue(c->Dim(kernel, 2), c->Value(in_c) / groups, &unused));
  }
  DimensionHandle out_c = c->Dim(kernel, 3);
  if (use_bias) TF_RETURN_IF_ERROR(c->Merge(out_c, c->Dim(bias, 0), &out_c));
  if (c->ValueKnown(out_c) && c->Value(out_c) % groups != 0) {
    return absl::InvalidArgumentError(absl::StrCat("groups: output channels (", c->Value(out_c),
                                                   ") must be divisible by groups (", groups, ")"));
  }
  c->set_output(0, c->MakeShape({batch, out_h, out_w, out_c}));
  return absl::OkStatus();
}

}  // namespace

#define TF_DCN_DEFORM_CONV2D_ATTRS                    \
  Attr(TF_DCN_ELEMENT_TYPES_ATTR)                     \
      .Attr("strides: list(int) = [1, 1]")            \
      .Attr("dilations: list(int) = [1, 1]")          \
      .Attr("padding: {'VALID', 'SAME', 'EXPLICIT'}") \
      .Attr("explicit_paddings: list(int) = []")      \
      .Attr("groups: int >= 1 = 1")                   \
      .Attr("deformable_groups: int >= 1 = 1")        \
      .Attr("use_mask: bool = false")                 \
      .Attr("use_bias: bool = false")

// inputs [N, H, W, C]; offsets [N, Ho, Wo, 2*DG*kh*kw] with (dy, dx) pairs, deformable group
// outermost and taps row-major; mask [N, Ho, Wo, DG*kh*kw] when use_mask (else ignored);
// kernel [kh, kw, C/groups, Cout]; bias [Cout] when use_bias (else ignored).
REGISTER_OP("TfDcn>DeformableConv2D")
    .Input("input: T")
    .Input("offsets: T")
    .Input("mask: T")
    .Input("kernel: T")
    .Input("bias: T")
    .Output("output: T")
    .TF_DCN_DEFORM_CONV2D_ATTRS.SetShapeFn(DeformConv2DShape);

// The fused backward pass: gradients of all five inputs (empty [0] for an unused mask or bias).
REGISTER_OP("TfDcn>DeformableConv2DGrad")
    .Input("input: T")
    .Input("offsets: T")
    .Input("mask: T")
    .Input("kernel: T")
    .Input("bias: T")
    .Input("grad_output: T")
    .Output("grad_input: T")
    .Output("grad_offsets: T")
    .Output("grad_mask: T")
    .Output("grad_kernel: T")
    .Output("grad_bias: T")
    .TF_DCN_DEFORM_CONV2D_ATTRS.SetShapeFn([](InferenceContext* c) {
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(DeformConv2DShape(c));
      TF_RETURN_IF_ERROR(c->Merge(c->output(0), c->input(5), &unused));
      bool use_mask, use_bias;
      TF_RETURN_IF_ERROR(c->GetAttr("use_mask", &use_mask));
      TF_RETURN_IF_ERROR(c->GetAttr("use_bias", &use_bias));
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(1));
      c->set_output(2, use_mask ? c->input(2) : c->Vector(0));
      c->set_output(3, c->input(3));
      c->set_output(4, use_bias ? c->input(4) : c->Vector(0));
      return absl::OkStatus();
    });

}  // namespace tf_dcn
