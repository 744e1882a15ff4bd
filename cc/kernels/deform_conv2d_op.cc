// OpKernels of TfDcn>DeformableConv2D and its gradient: attribute parsing, input validation and
// output allocation, shared by every device. The maths is in the device functors
// (deform_conv2d_cpu.cc; cc/kernels/gpu/deform_conv2d_gpu_functor.cc in the CUDA library).
#define EIGEN_USE_THREADS

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cc/kernels/deform_conv2d_functor.h"
#include "cc/kernels/deform_conv2d_geometry.h"
#include "cc/kernels/element_types.h"
#include "cc/kernels/op_util.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#if TF_DCN_WITH_CUDA
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

// Attributes common to the forward and the gradient op, read once in the constructor.
struct DeformConv2DAttrs {
  std::vector<int32_t> strides, dilations;
  std::vector<int64_t> explicit_paddings;
  PaddingMode padding = PaddingMode::kValid;
  int64_t groups = 1, deformable_groups = 1;
  bool use_mask = false, use_bias = false;

  absl::Status Init(OpKernelConstruction* ctx) {
    std::string padding_name;
    TF_RETURN_IF_ERROR(ctx->GetAttr("strides", &strides));
    TF_RETURN_IF_ERROR(ctx->GetAttr("dilations", &dilations));
    TF_RETURN_IF_ERROR(ctx->GetAttr("padding", &padding_name));
    TF_RETURN_IF_ERROR(ctx->GetAttr("explicit_paddings", &explicit_paddings));
    TF_RETURN_IF_ERROR(ctx->GetAttr("groups", &groups));
    TF_RETURN_IF_ERROR(ctx->GetAttr("deformable_groups", &deformable_groups));
    TF_RETURN_IF_ERROR(ctx->GetAttr("use_mask", &use_mask));
    TF_RETURN_IF_ERROR(ctx->GetAttr("use_bias", &use_bias));
    if (strides.size() != 2 || strides[0] < 1 || strides[1] < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "strides: expected two positive integers, got [", absl::StrJoin(strides, ", "), "]"));
    }
    if (dilations.size() != 2 || dilations[0] < 1 || dilations[1] < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("dilation_rate: expected two positive integers, got [",
                       absl::StrJoin(dilations, ", "), "]"));
    }
    padding = padding_name == "SAME"    ? PaddingMode::kSame
              : padding_name == "VALID" ? PaddingMode::kValid
                                        : PaddingMode::kExplicit;
    if (padding == PaddingMode::kExplicit) {
      if (explicit_paddings.size() != 4 ||
          *std::min_element(explicit_paddings.begin(), explicit_paddings.end()) < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("padding: expected four non-negative explicit paddings [top, bottom, "
                         "left, right], got [",
                         absl::StrJoin(explicit_paddings, ", "), "]"));
      }
    } else {
      explicit_paddings.assign(4, 0);
    }
    return absl::OkStatus();
  }
};

std::string ShapeString(const Tensor& t) { return t.shape().DebugString(); }

// Validates every input of the forward op (and the gradient op) and fills the sizes.
absl::Status ComputeDeformConv2DDims(const DeformConv2DAttrs& a, const Tensor& input,
                                     const Tensor& offsets, const Tensor& mask,
                                     const Tensor& kernel, const Tensor& bias,
                                     DeformConv2DDims* d) {
  if (input.dims() != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("inputs: expected a 4-D tensor [N, H, W, C], got shape ", ShapeString(input)));
  }
  if (offsets.dims() != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("offsets: expected a 4-D tensor [N, Ho, Wo, 2*DG*kh*kw], got shape ",
                     ShapeString(offsets)));
  }
  if (kernel.dims() != 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kernel: expected a 4-D tensor [kh, kw, C/groups, Cout], got shape ", ShapeString(kernel)));
  }
  if (a.use_mask && mask.dims() != 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        "mask: expected a 4-D tensor [N, Ho, Wo, DG*kh*kw], got shape ", ShapeString(mask)));
  }
  if (a.use_bias && bias.dims() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("bias: expected a 1-D tensor [Cout], got shape ", ShapeString(bias)));
  }
  d->batch = input.dim_size(0);
  d->in_h = input.dim_size(1);
  d->in_w = input.dim_size(2);
  d->in_c = input.dim_size(3);
  d->kernel_h = kernel.dim_size(0);
  d->kernel_w = kernel.dim_size(1);
  d->out_c = kernel.dim_size(3);
  d->stride_h = a.strides[0];
  d->stride_w = a.strides[1];
  d->dilation_h = a.dilations[0];
  d->dilation_w = a.dilations[1];
  d->groups = a.groups;
  d->deformable_groups = a.deformable_groups;
  d->use_mask = a.use_mask;
  d->use_bias = a.use_bias;

  if (offsets.dim_size(0) != d->batch) {
    return absl::InvalidArgumentError(absl::StrCat("offsets: batch size ", offsets.dim_size(0),
                                                   " differs from the batch size of inputs (",
                                                   d->batch, ")"));
  }
  if (a.use_mask && mask.dim_size(0) != d->batch) {
    return absl::InvalidArgumentError(absl::StrCat("mask: batch size ", mask.dim_size(0),
                                                   " differs from the batch size of inputs (",
                                                   d->batch, ")"));
  }
  if (d->in_c < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("inputs: expected at least one channel, got shape ", ShapeString(input)));
  }
  if (d->kernel_h < 1 || d->kernel_w < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("kernel: spatial size must be positive, got shape ", ShapeString(kernel)));
  }
  if (d->in_c % d->groups != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "groups: input channels (", d->in_c, ") are not divisible by groups (", d->groups, ")"));
  }
  if (d->in_c % d->deformable_groups != 0) {
    return absl::InvalidArgumentError(absl::StrCat("deformable_groups: input channels (", d->in_c,
                                                   ") are not divisible by deformable_groups (",
                                                   d->deformable_groups, ")"));
  }
  if (d->out_c % d->groups != 0) {
    return absl::InvalidArgumentError(absl::StrCat("groups: output channels of kernel (", d->out_c,
                                                   ") are not divisible by groups (", d->groups,
                                                   ")"));
  }
  if (kernel.dim_size(2) != d->in_c / d->groups) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kernel: expected ", d->in_c / d->groups, " input channels (C/groups = ", d->in_c, "/",
        d->groups, ") in dimension 2, got shape ", ShapeString(kernel)));
  }
  if (a.use_bias && bias.dim_size(0) != d->out_c) {
    return absl::InvalidArgumentError(absl::StrCat("bias: expected ", d->out_c,
                                                   " elements (the kernel's output channels), got "
                                                   "shape ",
                                                   ShapeString(bias)));
  }
  AxisGeometry gh, gw;
  if (!ComputeAxisGeometry(d->in_h, d->kernel_h, d->stride_h, d->dilation_h, a.padding,
                           a.explicit_paddings[0], a.explicit_paddings[1], &gh)) {
    return absl::InvalidArgumentError(
        absl::StrCat("kernel: the dilated kernel height (", d->dilation_h * (d->kernel_h - 1) + 1,
                     ") is larger than the padded height of inputs (",
                     d->in_h + a.explicit_paddings[0] + a.explicit_paddings[1], ")"));
  }
  if (!ComputeAxisGeometry(d->in_w, d->kernel_w, d->stride_w, d->dilation_w, a.padding,
                           a.explicit_paddings[2], a.explicit_paddings[3], &gw)) {
    return absl::InvalidArgumentError(
        absl::StrCat("kernel: the dilated kernel width (", d->dilation_w * (d->kernel_w - 1) + 1,
                     ") is larger than the padded width of inputs (",
                     d->in_w + a.explicit_paddings[2] + a.explicit_paddings[3], ")"));
  }
  d->out_h = gh.out_size;
  d->out_w = gw.out_size;
  d->pad_top = gh.pad_before;
  d->pad_left = gw.pad_before;

  const TensorShape want_offsets({d->batch, d->out_h, d->out_w, d->offset_channels()});
  if (offsets.shape() != want_offsets) {
    return absl::InvalidArgumentError(
        absl::StrCat("offsets: expected shape ", want_offsets.DebugString(),
                     " ([N, Ho, Wo, 2*deformable_groups*kh*kw]), got ", ShapeString(offsets)));
  }
  if (a.use_mask) {
    const TensorShape want_mask({d->batch, d->out_h, d->out_w, d->mask_channels()});
    if (mask.shape() != want_mask) {
      return absl::InvalidArgumentError(
          absl::StrCat("mask: expected shape ", want_mask.DebugString(),
                       " ([N, Ho, Wo, deformable_groups*kh*kw]), got ", ShapeString(mask)));
    }
  }
  return absl::OkStatus();
}

}  // namespace

template <typename Device, typename T>
class DeformConv2DOp : public OpKernel {
 public:
  explicit DeformConv2DOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Init(ctx));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    const Tensor& offsets = ctx->input(1);
    const Tensor& mask = ctx->input(2);
    const Tensor& kernel = ctx->input(3);
    const Tensor& bias = ctx->input(4);
    DeformConv2DDims d;
    OP_REQUIRES_OK(ctx, ComputeDeformConv2DDims(attrs_, input, offsets, mask, kernel, bias, &d));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(
        ctx, ctx->allocate_output(0, TensorShape({d.batch, d.out_h, d.out_w, d.out_c}), &output));
    if (output->NumElements() == 0) return;
    OP_REQUIRES_OK(ctx, DeformConv2DForward<Device, T>()(
                            ctx, d, input.flat<T>().data(), offsets.flat<T>().data(),
                            DataOrNull<T>(mask, d.use_mask), kernel.flat<T>().data(),
                            DataOrNull<T>(bias, d.use_bias), output->flat<T>().data()));
  }

 private:
  DeformConv2DAttrs attrs_;
};

template <typename Device, typename T>
class DeformConv2DGradOp : public OpKernel {
 public:
  explicit DeformConv2DGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Init(ctx));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    const Tensor& offsets = ctx->input(1);
    const Tensor& mask = ctx->input(2);
    const Tensor& kernel = ctx->input(3);
    const Tensor& bias = ctx->input(4);
    const Tensor& grad_output = ctx->input(5);
    DeformConv2DDims d;
    OP_REQUIRES_OK(ctx, ComputeDeformConv2DDims(attrs_, input, offsets, mask, kernel, bias, &d));
    const TensorShape out_shape({d.batch, d.out_h, d.out_w, d.out_c});
    OP_REQUIRES(ctx, grad_output.shape() == out_shape,
                absl::InvalidArgumentError(absl::StrCat(
                    "grad_output: expected shape ", out_shape.DebugString(),
                    " (the forward output), got ", grad_output.shape().DebugString())));
    Tensor *grad_input, *grad_offsets, *grad_mask, *grad_kernel, *grad_bias;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, input.shape(), &grad_input));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, offsets.shape(), &grad_offsets));
    OP_REQUIRES_OK(
        ctx, ctx->allocate_output(2, d.use_mask ? mask.shape() : TensorShape({0}), &grad_mask));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, kernel.shape(), &grad_kernel));
    OP_REQUIRES_OK(
        ctx, ctx->allocate_output(4, d.use_bias ? bias.shape() : TensorShape({0}), &grad_bias));
    OP_REQUIRES_OK(
        ctx,
        DeformConv2DBackward<Device, T>()(
            ctx, d, input.flat<T>().data(), offsets.flat<T>().data(),
            DataOrNull<T>(mask, d.use_mask), kernel.flat<T>().data(), grad_output.flat<T>().data(),
            grad_input->flat<T>().data(), grad_offsets->flat<T>().data(),
            d.use_mask ? grad_mask->flat<T>().data() : nullptr, grad_kernel->flat<T>().data(),
            d.use_bias ? grad_bias->flat<T>().data() : nullptr));
  }

 private:
  DeformConv2DAttrs attrs_;
};

#define TF_DCN_REGISTER_CPU(T)                                                                    \
  REGISTER_KERNEL_BUILDER(                                                                        \
      Name("TfDcn>DeformableConv2D").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),     \
      DeformConv2DOp<CPUDevice, T>);                                                              \
  REGISTER_KERNEL_BUILDER(                                                                        \
      Name("TfDcn>DeformableConv2DGrad").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
      DeformConv2DGradOp<CPUDevice, T>);
TF_DCN_CALL_ELEMENT_TYPES(TF_DCN_REGISTER_CPU)
#undef TF_DCN_REGISTER_CPU

#if TF_DCN_WITH_CUDA
// Same kernels on the GPU (CUDA op library only); the functors are in cc/kernels/gpu/.
#define TF_DCN_REGISTER_GPU(T)                                                                    \
  REGISTER_KERNEL_BUILDER(                                                                        \
      Name("TfDcn>DeformableConv2D").Device(::tensorflow::DEVICE_GPU).TypeConstraint<T>("T"),     \
      DeformConv2DOp<GpuDevice, T>);                                                              \
  REGISTER_KERNEL_BUILDER(                                                                        \
      Name("TfDcn>DeformableConv2DGrad").Device(::tensorflow::DEVICE_GPU).TypeConstraint<T>("T"), \
      DeformConv2DGradOp<GpuDevice, T>);
TF_DCN_CALL_ELEMENT_TYPES(TF_DCN_REGISTER_GPU)
#undef TF_DCN_REGISTER_GPU
#endif  // TF_DCN_WITH_CUDA

}  // namespace tf_dcn
