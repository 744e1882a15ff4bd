// OpKernels of TfDcn>DeformablePSRoIPool and its gradient: attribute parsing, input validation and
// output allocation, shared by every device. The maths is in the device functors
// (deform_psroi_pool_cpu.cc; cc/kernels/gpu/deform_psroi_pool_gpu_functor.cc in the CUDA library).
//
// The batch indices of `rois` are values, not shapes: on the CPU they are checked before the
// kernels run. On the GPU `rois` stays in device memory and the ops are AsyncOpKernels (like
// TensorFlow's crop_and_resize): a small kernel finds the first bad batch index and copies it into
// pinned host memory, the pooling kernels are enqueued behind it (they read no features for a bad
// index), and TensorFlow's EventMgr calls back once the stream has passed the copy; the callback
// sets the same InvalidArgumentError as the CPU. No stream synchronisation, no host copy of rois.
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
#include <utility>

#include "cc/kernels/deform_psroi_pool_gpu.h"
#include "cc/kernels/gpu/gpu_op_util.h"
#include "tensorflow/core/common_runtime/device/device_event_mgr.h"
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

// The error for batch index rois[i, 0] = v when it is not an integer in [0, N), else OK.
absl::Status CheckBatchIndex(int64_t i, double v, int64_t batch) {
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
    return absl::InvalidArgumentError(absl::StrCat(
        where(), " is out of range; expected an integer in [0, ", batch, ") (N of features)"));
  }
  return absl::OkStatus();
}

// Every batch index of host `rois` must be a finite integer in [0, N): checked before any kernel
// indexes features with it.
template <typename TR>
absl::Status ValidateBatchIndices(const Tensor& rois, int64_t batch) {
  const auto r = rois.matrix<TR>();
  for (int64_t i = 0; i < rois.dim_size(0); ++i) {
    TF_RETURN_IF_ERROR(CheckBatchIndex(i, static_cast<double>(r(i, 0)), batch));
  }
  return absl::OkStatus();
}

absl::Status OutputShape(const DeformPSRoIPoolDims& d, TensorShape* shape) {
  return TensorShape::BuildTensorShape({d.num_rois, d.pooled_size, d.pooled_size, d.output_dim},
                                       shape);
}

// The forward op after validation: allocates the output and runs the device's functor.
template <typename Device, typename T, typename TR>
struct ForwardPass {
  static constexpr const char* kName = "TfDcn>DeformablePSRoIPool";

  static absl::Status Run(OpKernelContext* ctx, const DeformPSRoIPoolDims& d,
                          const TensorShape& out_shape) {
    const Tensor& features = ctx->input(0);
    const Tensor& rois = ctx->input(1);
    const Tensor& offsets = ctx->input(2);
    Tensor* output = nullptr;
    TF_RETURN_IF_ERROR(ctx->allocate_output(0, out_shape, &output));
    if (output->NumElements() == 0) return absl::OkStatus();
    return DeformPSRoIPoolForward<Device, T, TR>()(
        ctx, d, features.flat<T>().data(), rois.flat<TR>().data(),
        DataOrNull<T>(offsets, d.use_offsets), output->flat<T>().data());
  }
};

// The gradient op after validation (input 3 is grad_output).
template <typename Device, typename T, typename TR>
struct BackwardPass {
  static constexpr const char* kName = "TfDcn>DeformablePSRoIPoolGrad";

  static absl::Status Run(OpKernelContext* ctx, const DeformPSRoIPoolDims& d,
                          const TensorShape& out_shape) {
    const Tensor& features = ctx->input(0);
    const Tensor& rois = ctx->input(1);
    const Tensor& offsets = ctx->input(2);
    const Tensor& grad_output = ctx->input(3);
    if (grad_output.shape() != out_shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          "grad_output: expected shape ", out_shape.DebugString(), " (the forward output), got ",
          grad_output.shape().DebugString()));
    }
    Tensor *grad_features = nullptr, *grad_offsets = nullptr;
    TF_RETURN_IF_ERROR(ctx->allocate_output(0, features.shape(), &grad_features));
    TF_RETURN_IF_ERROR(ctx->allocate_output(
        1, d.use_offsets ? offsets.shape() : TensorShape({0}), &grad_offsets));
    if (grad_features->NumElements() == 0 && grad_offsets->NumElements() == 0) {
      return absl::OkStatus();
    }
    return DeformPSRoIPoolBackward<Device, T, TR>()(
        ctx, d, features.flat<T>().data(), rois.flat<TR>().data(),
        DataOrNull<T>(offsets, d.use_offsets), grad_output.flat<T>().data(),
        grad_features->flat<T>().data(), d.use_offsets ? grad_offsets->flat<T>().data() : nullptr);
  }
};

// Shape validation shared by every device and both ops (inputs 0-2 are features, rois, offsets).
absl::Status PrepareDims(OpKernelContext* ctx, const DeformPSRoIPoolAttrs& attrs,
                         DeformPSRoIPoolDims* d, TensorShape* out_shape) {
  TF_RETURN_IF_ERROR(
      ComputeDeformPSRoIPoolDims(attrs, ctx->input(0), ctx->input(1), ctx->input(2), d));
  return OutputShape(*d, out_shape);
}

// The CPU op: validation (rois' batch indices included), then Pass::Run.
template <typename Pass, typename TR>
class PoolCpuOp : public OpKernel {
 public:
  explicit PoolCpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Init(ctx));
  }

  void Compute(OpKernelContext* ctx) override {
    DeformPSRoIPoolDims d;
    TensorShape out_shape;
    OP_REQUIRES_OK(ctx, PrepareDims(ctx, attrs_, &d, &out_shape));
    OP_REQUIRES_OK(ctx, ValidateBatchIndices<TR>(ctx->input(1), d.batch));
    OP_REQUIRES_OK(ctx, Pass::Run(ctx, d, out_shape));
  }

 private:
  DeformPSRoIPoolAttrs attrs_;
};

#if TF_DCN_WITH_CUDA
// The GPU op: shape validation, the batch-index check and Pass::Run enqueued on the op's stream,
// then the check's result read in an EventMgr callback (see the file comment).
template <typename Pass, typename TR>
class PoolGpuOp : public ::tensorflow::AsyncOpKernel {
 public:
  explicit PoolGpuOp(OpKernelConstruction* ctx) : AsyncOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Init(ctx));
  }

  void ComputeAsync(OpKernelContext* ctx, DoneCallback done) override {
    DeformPSRoIPoolDims d;
    TensorShape out_shape;
    OP_REQUIRES_OK_ASYNC(ctx, PrepareDims(ctx, attrs_, &d, &out_shape), done);
    if (d.num_rois == 0) {
      OP_REQUIRES_OK_ASYNC(ctx, Pass::Run(ctx, d, out_shape), done);
      done();
      return;
    }
    const auto* info = ctx->device()->tensorflow_accelerator_device_info();
    OP_REQUIRES_ASYNC(ctx, info != nullptr && info->event_mgr != nullptr,
                      absl::InternalError("tf-dcn: the GPU device has no EventMgr"), done);
    GpuLaunch launch;
    OP_REQUIRES_OK_ASYNC(ctx, MakeGpuLaunch(ctx, /*gemm=*/nullptr, &launch), done);
    // The check's result: device scratch, and pinned host memory the callback reads.
    ::tensorflow::AllocatorAttributes pinned;
    pinned.set_on_host(true);
    pinned.set_gpu_compatible(true);
    const int64_t bytes = static_cast<int64_t>(sizeof(RoiBatchCheck));
    Tensor scratch, host;
    OP_REQUIRES_OK_ASYNC(ctx,
                         ctx->allocate_temp(::tensorflow::DT_UINT8, TensorShape({bytes}), &scratch),
                         done);
    OP_REQUIRES_OK_ASYNC(
        ctx, ctx->allocate_temp(::tensorflow::DT_UINT8, TensorShape({bytes}), &host, pinned),
        done);
    auto* result = reinterpret_cast<RoiBatchCheck*>(host.flat<uint8_t>().data());
    OP_REQUIRES_OK_ASYNC(
        ctx,
        GpuCodeToStatus(DeformPSRoIPoolGpuCheckBatchIndices(
                            std::is_same_v<TR, double>, d.num_rois, d.batch, launch,
                            ctx->input(1).data(), scratch.flat<uint8_t>().data(), result),
                        Pass::kName),
        done);
    // From here the copy into `host` is in flight: every path ends in the callback, which keeps
    // `host` alive until the stream has passed the copy.
    const absl::Status run = Pass::Run(ctx, d, out_shape);
    const int64_t batch = d.batch, num_rois = d.num_rois;
    info->event_mgr->ThenExecute(
        ctx->op_device_context()->stream(),
        [ctx, host, result, batch, num_rois, run, done = std::move(done)]() {
          absl::Status status = absl::OkStatus();
          if (result->first_bad < num_rois) {
            status = CheckBatchIndex(result->first_bad, result->value, batch);
          }
          if (status.ok()) status = run;
          if (!status.ok()) ctx->SetStatus(status);
          done();
        });
  }

 private:
  DeformPSRoIPoolAttrs attrs_;
};
#endif  // TF_DCN_WITH_CUDA

}  // namespace

#define TF_DCN_REGISTER_CPU(T, TR)                              \
  REGISTER_KERNEL_BUILDER(Name("TfDcn>DeformablePSRoIPool")     \
                              .Device(::tensorflow::DEVICE_CPU) \
                              .TypeConstraint<T>("T")           \
                              .TypeConstraint<TR>("Troi"),      \
                          PoolCpuOp<ForwardPass<CPUDevice, T, TR>, TR>); \
  REGISTER_KERNEL_BUILDER(Name("TfDcn>DeformablePSRoIPoolGrad") \
                              .Device(::tensorflow::DEVICE_CPU) \
                              .TypeConstraint<T>("T")           \
                              .TypeConstraint<TR>("Troi"),      \
                          PoolCpuOp<BackwardPass<CPUDevice, T, TR>, TR>);
#define TF_DCN_REGISTER_CPU_ALL_ROIS(T) TF_DCN_CALL_ROI_TYPES(TF_DCN_REGISTER_CPU, T)
TF_DCN_CALL_ELEMENT_TYPES(TF_DCN_REGISTER_CPU_ALL_ROIS)
#undef TF_DCN_REGISTER_CPU_ALL_ROIS
#undef TF_DCN_REGISTER_CPU

#if TF_DCN_WITH_CUDA
// Same kernels on the GPU (CUDA op library only); the functors are in cc/kernels/gpu/. Every
// input, rois included, is in device memory (PoolGpuOp checks rois there).
#define TF_DCN_REGISTER_GPU(T, TR)                              \
  REGISTER_KERNEL_BUILDER(Name("TfDcn>DeformablePSRoIPool")     \
                              .Device(::tensorflow::DEVICE_GPU) \
                              .TypeConstraint<T>("T")           \
                              .TypeConstraint<TR>("Troi"),      \
                          PoolGpuOp<ForwardPass<GpuDevice, T, TR>, TR>); \
  REGISTER_KERNEL_BUILDER(Name("TfDcn>DeformablePSRoIPoolGrad") \
                              .Device(::tensorflow::DEVICE_GPU) \
                              .TypeConstraint<T>("T")           \
                              .TypeConstraint<TR>("Troi"),      \
                          PoolGpuOp<BackwardPass<GpuDevice, T, TR>, TR>);
#define TF_DCN_REGISTER_GPU_ALL_ROIS(T) TF_DCN_CALL_ROI_TYPES(TF_DCN_REGISTER_GPU, T)
TF_DCN_CALL_ELEMENT_TYPES(TF_DCN_REGISTER_GPU_ALL_ROIS)
#undef TF_DCN_REGISTER_GPU_ALL_ROIS
#undef TF_DCN_REGISTER_GPU
#endif  // TF_DCN_WITH_CUDA

}  // namespace tf_dcn
