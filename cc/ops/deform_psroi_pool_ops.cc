// Op declarations of the deformable position-sensitive RoI pooling (R-FCN) and, with
// group_size = 1, the deformable RoI pooling. Device files only register kernels for these ops;
// see cc/kernels/deform_psroi_pool_op.cc.
#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"
#include "cc/kernels/element_types.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_dcn {
namespace {

using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

constexpr int64_t kMaxSizeAttr = std::numeric_limits<int32_t>::max();

// Fails, naming the argument, when a known dimension differs from `expected`.
absl::Status ExpectDim(InferenceContext* c, ShapeHandle shape, int axis, int64_t expected,
                       const char* arg, const char* meaning) {
  DimensionHandle dim = c->Dim(shape, axis);
  if (c->ValueKnown(dim) && c->Value(dim) != expected) {
    return absl::InvalidArgumentError(absl::StrCat(arg, ": expected ", meaning, " = ", expected,
                                                   " in dimension ", axis, ", got shape ",
                                                   c->DebugString(shape)));
  }
  return absl::OkStatus();
}

absl::Status DeformPSRoIPoolShape(InferenceContext* c) {
  ShapeHandle features, rois, offsets;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &features));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &rois));
  TF_RETURN_IF_ERROR(ExpectDim(c, rois, 1, 5, "rois", "(batch_index, x1, y1, x2, y2)"));

  int64_t output_dim, group_size, pooled_size, part_size, sample_per_part;
  bool use_offsets;
  TF_RETURN_IF_ERROR(c->GetAttr("output_dim", &output_dim));
  TF_RETURN_IF_ERROR(c->GetAttr("group_size", &group_size));
  TF_RETURN_IF_ERROR(c->GetAttr("pooled_size", &pooled_size));
  TF_RETURN_IF_ERROR(c->GetAttr("part_size", &part_size));
  TF_RETURN_IF_ERROR(c->GetAttr("sample_per_part", &sample_per_part));
  TF_RETURN_IF_ERROR(c->GetAttr("use_offsets", &use_offsets));
  const int64_t sizes[] = {output_dim, group_size, pooled_size, part_size, sample_per_part};
  const char* names[] = {"output_dim", "group_size", "pooled_size", "part_size", "sample_per_part"};
  for (int i = 0; i < 5; ++i) {
    if (sizes[i] < 1 || sizes[i] > kMaxSizeAttr) {
      return absl::InvalidArgumentError(
          absl::StrCat(names[i], ": expected a positive integer no larger than ", kMaxSizeAttr,
                       ", got ", sizes[i]));
    }
  }

  // C = output_dim * group_size^2 (compared by division: the product may overflow).
  DimensionHandle channels = c->Dim(features, 3);
  if (c->ValueKnown(channels)) {
    const int64_t gg = group_size * group_size;
    if (c->Value(channels) % gg != 0 || c->Value(channels) / gg != output_dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("features: expected C = output_dim * group_size^2 = ", output_dim, " * ",
                       group_size, "^2 channels, got shape ", c->DebugString(features)));
    }
  }

  DimensionHandle num_rois = c->Dim(rois, 0);
  if (use_offsets) {
    TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 4, &offsets));
    TF_RETURN_IF_ERROR(c->Merge(num_rois, c->Dim(offsets, 0), &num_rois));
    TF_RETURN_IF_ERROR(ExpectDim(c, offsets, 1, part_size, "offsets", "part_size"));
    TF_RETURN_IF_ERROR(ExpectDim(c, offsets, 2, part_size, "offsets", "part_size"));
    DimensionHandle last = c->Dim(offsets, 3);
    if (c->ValueKnown(last)) {
      const int64_t n = c->Value(last);
      if (n < 2 || n % 2 != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "offsets: expected a positive even last dimension 2*num_classes ((x, y) pairs), got "
            "shape ",
            c->DebugString(offsets)));
      }
      if (output_dim % (n / 2) != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "offsets: output_dim (", output_dim, ") is not divisible by num_classes = ", n / 2,
            " (the last dimension / 2), got shape ", c->DebugString(offsets)));
      }
    }
  }
  c->set_output(0, c->MakeShape({num_rois, c->MakeDim(pooled_size), c->MakeDim(pooled_size),
                                 c->MakeDim(output_dim)}));
  return absl::OkStatus();
}

}  // namespace

#define TF_DCN_DEFORM_PSROI_POOL_ATTRS       \
  Attr(TF_DCN_ELEMENT_TYPES_ATTR)            \
      .Attr(TF_DCN_ROI_TYPES_ATTR)           \
      .Attr("output_dim: int >= 1")          \
      .Attr("group_size: int >= 1")          \
      .Attr("pooled_size: int >= 1")         \
      .Attr("part_size: int >= 1")           \
      .Attr("sample_per_part: int >= 1 = 4") \
      .Attr("trans_std: float = 0.1")        \
      .Attr("spatial_scale: float = 1.0")    \
      .Attr("use_offsets: bool = false")

// features [N, H, W, output_dim*group_size^2]; rois [R, 5] = (batch_index, x1, y1, x2, y2) in
// input-image pixels; offsets [R, part_size, part_size, 2*num_classes] with (x, y) pairs (x
// first) when use_offsets (else ignored). output [R, pooled_size, pooled_size, output_dim].
REGISTER_OP("TfDcn>DeformablePSRoIPool")
    .Input("features: T")
    .Input("rois: Troi")
    .Input("offsets: T")
    .Output("output: T")
    .TF_DCN_DEFORM_PSROI_POOL_ATTRS.SetShapeFn(DeformPSRoIPoolShape);

// Gradients w.r.t. features and offsets (empty [0] without offsets); rois get none.
REGISTER_OP("TfDcn>DeformablePSRoIPoolGrad")
    .Input("features: T")
    .Input("rois: Troi")
    .Input("offsets: T")
    .Input("grad_output: T")
    .Output("grad_features: T")
    .Output("grad_offsets: T")
    .TF_DCN_DEFORM_PSROI_POOL_ATTRS.SetShapeFn([](InferenceContext* c) {
      ShapeHandle grad_output, features, offsets;
      TF_RETURN_IF_ERROR(DeformPSRoIPoolShape(c));
      TF_RETURN_IF_ERROR(c->Merge(c->output(0), c->input(3), &grad_output));
      bool use_offsets;
      int64_t output_dim, group_size, part_size;
      TF_RETURN_IF_ERROR(c->GetAttr("use_offsets", &use_offsets));
      TF_RETURN_IF_ERROR(c->GetAttr("output_dim", &output_dim));
      TF_RETURN_IF_ERROR(c->GetAttr("group_size", &group_size));
      TF_RETURN_IF_ERROR(c->GetAttr("part_size", &part_size));
      // Both < 2^31 (checked above): the channel count is known unless it overflows int64.
      const int64_t gg = group_size * group_size;
      DimensionHandle channels = output_dim <= std::numeric_limits<int64_t>::max() / gg
                                     ? c->MakeDim(output_dim * gg)
                                     : c->UnknownDim();
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &features));
      TF_RETURN_IF_ERROR(c->Merge(
          features, c->MakeShape({c->UnknownDim(), c->UnknownDim(), c->UnknownDim(), channels}),
          &features));
      c->set_output(0, features);
      if (use_offsets) {
        TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 4, &offsets));
        TF_RETURN_IF_ERROR(c->Merge(offsets,
                                    c->MakeShape({c->Dim(grad_output, 0), c->MakeDim(part_size),
                                                  c->MakeDim(part_size), c->UnknownDim()}),
                                    &offsets));
        c->set_output(1, offsets);
      } else {
        c->set_output(1, c->Vector(0));
      }
      return absl::OkStatus();
    });

}  // namespace tf_dcn
