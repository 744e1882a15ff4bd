// OpKernels of TfDcn>DeformablePSRoIPool and its gradient: attribute parsing, input validation and
// output allocation, shared by every device. The maths is in the device functors
// (deform_psroi_pool_cpu.cc; cc/kernels/gpu/deform_psroi_pool_gpu_functor.cc in the CUDA library).
//
// The batch indices of `rois` are validated here by reading the tensor on the host: on the GPU,
// `rois` stays in device memory (the kernels read it there) and a host copy of it is validated
// (ValidateRois), so the error messages are the same on every device.
#define EIGEN_USE_THREADS

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "cc/kernels/deform_psroi_pool_functor.h"
#include "cc/kernels/deform_psroi_pool_geometry.h"
#include "cc/kernels/element_types.h"
#include "cc/kernels/op_util.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#if TF_DCN_WITH_CUDA
#include <type_traits>

#include "cc/kernels/gpu/gpu_op_util.h"
#endif

namespace tf_dcn {

using CPUDevice = Eigen::ThreadPoolDevice;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

namespace {

constexpr int64_t kMaxSizeAttr = std::numeric_limits<int32_t>::max();

absl::Status CheckSizeAttr(const char* name, int64_t value) {
  if (value < 1 || value > kMaxSizeAttr) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": expected a positive integer no larger than ", kMaxSizeAttr, ", got ", value));
  }
  return absl::OkStatus();
}

absl::Status CheckScaleAttr(const char* name, float value) {
  if (!(std::isfinite(value) && value >= 0.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": expected a finite non-negative number, got ", value));
  }
  return absl::OkStatus();
}

// Attributes common to the forward and the gradient op, read once in the constructor.
struct DeformPSRoIPoolAttrs {
  int64_t output_dim = 0, group_size = 0, pooled_size = 0, part_size = 0, sample_per_part = 0;
  float trans_std = 0.0f, spatial_scale = 1.0f;
  bool use_offsets = false;

  absl::Status Init(OpKernelConstruction* ctx) {
    TF_RETURN_IF_ERROR(ctx->GetAttr("output_dim", &output_dim));
    TF_RETURN_IF_ERROR(ctx->GetAttr("group_size", &group_size));
    TF_RETURN_IF_ERROR(ctx->GetAttr("pooled_size", &pooled_size));
    TF_RETURN_IF_ERROR(ctx->GetAttr("part_size", &part_size));
    TF_RETURN_IF_ERROR(ctx->GetAttr("sample_per_part", &sample_per_part));
    TF_RETURN_IF_ERROR(ctx->GetAttr("trans_std", &trans_std));
    TF_RETURN_IF_ERROR(ctx->GetAttr("spatial_scale", &spatial_scale));
    TF_RETURN_IF_ERROR(ctx->GetAttr("use_offsets", &use_offsets));
    TF_RETURN_IF_ERROR(CheckSizeAttr("output_dim", output_dim));
    TF_RETURN_IF_ERROR(CheckSizeAttr("group_size", group_size));
    TF_RETURN_IF_ERROR(CheckSizeAttr("pooled_size", pooled_size));
    TF_RETURN_IF_ERROR(CheckSizeAttr("part_size", part_size));
    TF_RETURN_IF_ERROR(CheckSizeAttr("sample_per_part", sample_per_part));
    TF_RETURN_IF_ERROR(CheckScaleAttr("trans_std", trans_std));
    TF_RETURN_IF_ERROR(CheckScaleAttr("spatial_scale", spatial_scale));
    return absl::OkStatus();
  }
};

std::string ShapeString(const Tensor& t) { return t.shape().DebugString(); }

// Validates the shapes of every input of the forward op (and the gradient op) and fills the
// sizes. The values of the batch indices are checked by ValidateBatchIndices.
absl::Status ComputeDeformPSRoIPoolDims(const DeformPSRoIPoolAttrs& a, const Tensor& features,
                                        const Tensor& rois, const Tensor& offsets,
                                        DeformPSRoIPoolDims* d) {
  if (features.dims() != 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        "features: expected a 4-D tensor [N, H, W, C], got shape ", ShapeString(features)));
  }
  if (rois.dims() != 2 || rois.dim_size(1) != 5) {
    return absl::InvalidArgumentError(
        absl::StrCat("rois: expected a 2-D tensor [R, 5] of (batch_index, x1, y1, x2, y2), got "
                     "shape ",
                     ShapeString(rois)));
  }
  d->batch = features.dim_size(0);
  d->height = features.dim_size(1);
  d->width = features.dim_size(2);
  d->channels = features.dim_size(3);
  d->num_rois = rois.dim_size(0);
  d->output_dim = a.output_dim;
  d->group_size = a.group_size;
  d->pooled_size = a.pooled_size;
  d->part_size = a.part_size;
  d->sample_per_part = a.sample_per_part;
  d->spatial_scale = a.spatial_scale;
  d->trans_std = a.trans_std;
  d->use_offsets = a.use_offsets;
  d->num_classes = 1;

  // output_dim and group_size are below 2^31, so output_dim * group_size^2 < 2^93 may overflow:
  // compare by division instead.
  const int64_t gg = a.group_size * a.group_size;  // < 2^62
  if (d->channels % gg != 0 || d->channels / gg != a.output_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("features: expected C = output_dim * group_size^2 = ", a.output_dim, " * ",
                     a.group_size, "^2 channels, got shape ", ShapeString(features)));
  }
  if (a.use_offsets) {
    if (offsets.dims() != 4) {
      return absl::InvalidArgumentError(
          absl::StrCat("offsets: expected a 4-D tensor [R, part_size, part_size, 2*num_classes], "
                       "got shape ",
                       ShapeString(offsets)));
    }
    if (offsets.dim_size(0) != d->num_rois) {
      return absl::InvalidArgumentError(absl::StrCat(
          "offsets: expected ", d->num_rois, " RoIs in dimension 0 (the rows of rois), got shape ",
          ShapeString(offsets)));
    }
    if (offsets.dim_size(1) != a.part_size || offsets.dim_size(2) != a.part_size) {
      return absl::InvalidArgumentError(absl::StrCat("offsets: expected part_size = ", a.part_size,
                                                     " in dimensions 1 and 2, got shape ",
                                                     ShapeString(offsets)));
    }
    const int64_t last = offsets.dim_size(3);
    if (last < 2 || last % 2 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "offsets: expected a positive even last dimension 2*num_classes ((x, y) pairs), got "
          "shape ",
          ShapeString(offsets)));
    }
    d->num_classes = last / 2;
    if (a.output_dim % d->num_classes != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "offsets: output_dim (", a.output_dim, ") is not divisible by num_classes = ",
          d->num_classes, " (the last dimension / 2), got shape ", ShapeString(offsets)));
    }
  }
  return absl::OkStatus();
}

// Every batch index must be a finite integer in [0, N): checked before any kernel indexes
// features with it.
template <typename TR>
absl::Status ValidateBatchIndices(const Tensor& rois, int64_t batch) {
  const auto r = rois.matrix<TR>();
  for (int64_t i = 0; i < rois.dim_size(0); ++i) {
    const double v = static_cast<double>(r(i, 0));
    const auto where = [&] { return absl::StrCat("rois: batch index rois[", i, ", 0] = ", v); };
    if (!std::isfinite(v)) {
      return absl::InvalidArgumentError(absl::StrCat(
          where(), " is not finite; expected an integer in [0, ", batch, ") (N of features)"));
    }
    if (std::floor(v) != v) {
      return absl::InvalidArgumentError(absl::StrCat(
          where(), " is not an integer; expected an integer in [0, ", batch, ") (N of features)"));
    }
    if (v < 0.0 || v >= static_cast<double>(batch)) {
      return absl::InvalidArgumentError(absl::StrCat(where(), " is out of range; expected an ",
                                                     "integer in [0, ", batch,
                                                     ") (N of features)"));
    }
  }
  return absl::OkStatus();
}

// ValidateBatchIndices on the device's `rois`: on the GPU, of a host copy made on the op's stream.
template <typename Device, typename TR>
absl::Status ValidateRois(OpKernelContext* ctx, const Tensor& rois, int64_t batch,
                          const char* op_name) {
#if TF_DCN_WITH_CUDA
  if constexpr (std::is_same_v<Device, GpuDevice>) {
    if (rois.NumElements() == 0) return absl::OkStatus();
    auto* device_context = ctx->op_device_context();
    if (device_context == nullptr || device_context->stream() == nullptr) {
      return absl::InternalError("tf-dcn: no GPU stream in the op context");
    }
    ::tensorflow::AllocatorAttributes host_attr;
    host_attr.set_on_host(true);
    host_attr.set_gpu_compatible(true);
    Tensor host;
    TF_RETURN_IF_ERROR(ctx->allocate_temp(rois.dtype(), rois.shape(), &host, host_attr));
    TF_RETURN_IF_ERROR(GpuCodeToStatus(
        GpuCopyToHostSync(device_context->stream()->platform_specific_handle().stream, host.data(),
                          rois.data(), static_cast<int64_t>(rois.TotalBytes())),
        op_name));
    return ValidateBatchIndices<TR>(host, batch);
  } else {
    return ValidateBatchIndices<TR>(rois, batch);
  }
#else
  (void)ctx;
  (void)op_name;
  return ValidateBatchIndices<TR>(rois, batch);
#endif
}

absl::Status OutputShape(const DeformPSRoIPoolDims& d, TensorShape* shape) {
  return TensorShape::BuildTensorShape({d.num_rois, d.pooled_size, d.pooled_size, d.output_dim},
                                       shape);
}

// The validation shared by the forward and the gradient op: every input (inputs 0-2 are
// features, rois, offsets in both), the batch indices of rois on any device, the output shape.
template <typename Device, typename TR>
absl::Status PrepareDeformPSRoIPool(OpKernelContext* ctx, const DeformPSRoIPoolAttrs& attrs,
                                    const char* op_name, DeformPSRoIPoolDims* d,
                                    TensorShape* out_shape) {
  TF_RETURN_IF_ERROR(
      ComputeDeformPSRoIPoolDims(attrs, ctx->input(0), ctx->input(1), ctx->input(2), d));
  TF_RETURN_IF_ERROR((ValidateRois<Device, TR>(ctx, ctx->input(1), d->batch, op_name)));
  return OutputShape(*d, out_shape);
}

}  // namespace

template <typename Device, typename T, typename TR>
class DeformPSRoIPoolOp : public OpKernel {
 public:
  explicit DeformPSRoIPoolOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Init(ctx));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& features = ctx->input(0);
    const Tensor& rois = ctx->input(1);
    const Tensor& offsets = ctx->input(2);
    DeformPSRoIPoolDims d;
    TensorShape out_shape;
    OP_REQUIRES_OK(ctx, (PrepareDeformPSRoIPool<Device, TR>(
                            ctx, attrs_, "TfDcn>DeformablePSRoIPool", &d, &out_shape)));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &output));
    if (output->NumElements() == 0) return;
    OP_REQUIRES_OK(ctx, DeformPSRoIPoolForward<Device, T, TR>()(
                            ctx, d, features.flat<T>().data(), rois.flat<TR>().data(),
                            DataOrNull<T>(offsets, d.use_offsets), output->flat<T>().data()));
  }

 private:
  DeformPSRoIPoolAttrs attrs_;
};

template <typename Device, typename T, typename TR>
class DeformPSRoIPoolGradOp : public OpKernel {
 public:
  explicit DeformPSRoIPoolGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Init(ctx));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& features = ctx->input(0);
    const Tensor& rois = ctx->input(1);
    const Tensor& offsets = ctx->input(2);
    const Tensor& grad_output = ctx->input(3);
    DeformPSRoIPoolDims d;
    TensorShape out_shape;
    OP_REQUIRES_OK(ctx, (PrepareDeformPSRoIPool<Device, TR>(
                            ctx, attrs_, "TfDcn>DeformablePSRoIPoolGrad", &d, &out_shape)));
    OP_REQUIRES(ctx, grad_output.shape() == out_shape,
                absl::InvalidArgumentError(absl::StrCat(
                    "grad_output: expected shape ", out_shape.DebugString(),
                    " (the forward output), got ", grad_output.shape().DebugString())));
    Tensor *grad_features = nullptr, *grad_offsets = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, features.shape(), &grad_features));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, d.use_offsets ? offsets.shape() : TensorShape({0}),
                                             &grad_offsets));
    if (grad_features->NumElements() == 0 && grad_offsets->NumElements() == 0) return;
    OP_REQUIRES_OK(ctx, DeformPSRoIPoolBackward<Device, T, TR>()(
                            ctx, d, features.flat<T>().data(), rois.flat<TR>().data(),
                            DataOrNull<T>(offsets, d.use_offsets), grad_output.flat<T>().data(),
                            grad_features->flat<T>().data(),
                            d.use_offsets ? grad_offsets->flat<T>().data() : nullptr));
  }

 private:
  DeformPSRoIPoolAttrs attrs_;
};

#define TF_DCN_REGISTER_CPU(T, TR)                              \
  REGISTER_KERNEL_BUILDER(Name("TfDcn>DeformablePSRoIPool")     \
                              .Device(::tensorflow::DEVICE_CPU) \
                              .TypeConstraint<T>("T")           \
                              .TypeConstraint<TR>("Troi"),      \
                          DeformPSRoIPoolOp<CPUDevice, T, TR>); \
  REGISTER_KERNEL_BUILDER(Name("TfDcn>DeformablePSRoIPoolGrad") \
                              .Device(::tensorflow::DEVICE_CPU) \
                              .TypeConstraint<T>("T")           \
                              .TypeConstraint<TR>("Troi"),      \
                          DeformPSRoIPoolGradOp<CPUDevice, T, TR>);
#define TF_DCN_REGISTER_CPU_ALL_ROIS(T) TF_DCN_CALL_ROI_TYPES(TF_DCN_REGISTER_CPU, T)
TF_DCN_CALL_ELEMENT_TYPES(TF_DCN_REGISTER_CPU_ALL_ROIS)
#undef TF_DCN_REGISTER_CPU_ALL_ROIS
#undef TF_DCN_REGISTER_CPU

#if TF_DCN_WITH_CUDA
// Same kernels on the GPU (CUDA op library only); the functors are in cc/kernels/gpu/. Every
// input, rois included, is in device memory (ValidateRois copies rois to the host).
#define TF_DCN_REGISTER_GPU(T, TR)                              \
  REGISTER_KERNEL_BUILDER(Name("TfDcn>DeformablePSRoIPool")     \
                              .Device(::tensorflow::DEVICE_GPU) \
                              .TypeConstraint<T>("T")           \
                              .TypeConstraint<TR>("Troi"),      \
                          DeformPSRoIPoolOp<GpuDevice, T, TR>); \
  REGISTER_KERNEL_BUILDER(Name("TfDcn>DeformablePSRoIPoolGrad") \
                              .Device(::tensorflow::DEVICE_GPU) \
                              .TypeConstraint<T>("T")           \
                              .TypeConstraint<TR>("Troi"),      \
                          DeformPSRoIPoolGradOp<GpuDevice, T, TR>);
#define TF_DCN_REGISTER_GPU_ALL_ROIS(T) TF_DCN_CALL_ROI_TYPES(TF_DCN_REGISTER_GPU, T)
TF_DCN_CALL_ELEMENT_TYPES(TF_DCN_REGISTER_GPU_ALL_ROIS)
#undef TF_DCN_REGISTER_GPU_ALL_ROIS
#undef TF_DCN_REGISTER_GPU
#endif  // TF_DCN_WITH_CUDA

}  // namespace tf_dcn
