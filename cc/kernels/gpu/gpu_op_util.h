// TensorFlow side of the GPU kernels (compiled by g++ with TF_DCN_WITH_CUDA, no CUDA headers):
// the op's stream, the determinism switch, TensorFlow's BLAS as the launchers' GemmFn, temporary
// workspace from the op's allocator, and launcher error codes as op errors.
#ifndef TF_DCN_CC_KERNELS_GPU_GPU_OP_UTIL_H_
#define TF_DCN_CC_KERNELS_GPU_GPU_OP_UTIL_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cc/kernels/gpu_launch.h"
#include "cc/kernels/gpu_runtime.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/tensor_float_32_utils.h"
#include "tensorflow/core/util/determinism.h"
#include "xla/stream_executor/blas.h"
#include "xla/stream_executor/stream.h"
#include "xla/stream_executor/stream_executor.h"

namespace tf_dcn {

// Tag type of the DEVICE_GPU specialisations (the launchers need no Eigen::GpuDevice).
struct GpuDevice {};

// Turns a launcher error code into an op error naming the op.
inline absl::Status GpuCodeToStatus(int code, const char* op_name) {
  if (code == 0) return absl::OkStatus();
  std::string text =
      absl::StrCat(op_name, " on the GPU: ", GpuErrorString(code), " (error ", code, ")");
  if (code == kCudaErrorInsufficientDriver) {
    const int driver = GpuDriverVersion();
    absl::StrAppend(&text, "; the installed driver supports CUDA ", driver / 1000, ".",
                    driver % 1000 / 10);
    return absl::FailedPreconditionError(text);
  }
  if (code == kGpuNoCudaRuntime) return absl::FailedPreconditionError(text);
  return absl::InternalError(text);
}

// TensorFlow's BLAS (cuBLAS underneath) as the launchers' GemmFn. `context` is this struct.
struct TfBlasGemm {
  stream_executor::Stream* stream = nullptr;
  stream_executor::blas::BlasSupport* blas = nullptr;
  stream_executor::EngineOptions options;
  absl::Status status;  // the first failure, for the op's error message

  static int Call(void* context, const GemmCall& g) {
    auto* self = static_cast<TfBlasGemm*>(context);
    namespace se = stream_executor;
    se::blas::DataType dtype;
    int64_t elem = 0;
    switch (g.type) {
      case ElementType::kHalf:
        dtype = se::blas::DataType::kHalf;
        elem = 2;
        break;
      case ElementType::kBFloat16:
        dtype = se::blas::DataType::kBF16;
        elem = 2;
        break;
      case ElementType::kFloat:
        dtype = se::blas::DataType::kFloat;
        elem = 4;
        break;
      default:
        dtype = se::blas::DataType::kDouble;
        elem = 8;
        break;
    }
    // alpha/beta are float for half, bfloat16 and float; double for double.
    float alpha_f = static_cast<float>(g.alpha), beta_f = static_cast<float>(g.beta);
    double alpha_d = g.alpha, beta_d = g.beta;
    const void* alpha = g.type == ElementType::kDouble ? static_cast<const void*>(&alpha_d)
                                                       : static_cast<const void*>(&alpha_f);
    const void* beta = g.type == ElementType::kDouble ? static_cast<const void*>(&beta_d)
                                                      : static_cast<const void*>(&beta_f);
    const int64_t a_rows = g.trans_a ? g.k : g.m, a_cols = g.trans_a ? g.m : g.k;
    const int64_t b_rows = g.trans_b ? g.n : g.k, b_cols = g.trans_b ? g.k : g.n;
    // Extents of the whole batched operands (bytes), for the DeviceAddress wrappers.
    const int64_t a_bytes = ((g.batch - 1) * g.stride_a + (a_cols - 1) * g.lda + a_rows) * elem;
    const int64_t b_bytes = ((g.batch - 1) * g.stride_b + (b_cols - 1) * g.ldb + b_rows) * elem;
    const int64_t c_bytes = ((g.batch - 1) * g.stride_c + (g.n - 1) * g.ldc + g.m) * elem;
    se::DeviceAddressBase a(const_cast<void*>(g.a), a_bytes);
    se::DeviceAddressBase b(const_cast<void*>(g.b), b_bytes);
    se::DeviceAddressBase c(g.c, c_bytes);
    const auto ta = g.trans_a ? se::blas::Transpose::kTranspose : se::blas::Transpose::kNoTranspose;
    const auto tb = g.trans_b ? se::blas::Transpose::kTranspose : se::blas::Transpose::kNoTranspose;
    absl::Status st;
    if (g.batch == 1) {
      st = self->blas->DoBlasGemm(self->stream, ta, tb, g.m, g.n, g.k, dtype, alpha, a,
                                  static_cast<int>(g.lda), b, static_cast<int>(g.ldb), beta, &c,
                                  static_cast<int>(g.ldc), self->options,
                                  se::blas::CallContext::kNone);
    } else {
      st = self->blas->DoBlasGemmStridedBatched(
          self->stream, ta, tb, g.m, g.n, g.k, dtype, alpha, a, static_cast<int>(g.lda), g.stride_a,
          b, static_cast<int>(g.ldb), g.stride_b, beta, &c, static_cast<int>(g.ldc), g.stride_c,
          static_cast<int>(g.batch), self->options, se::blas::CallContext::kNone);
    }
    if (!st.ok()) {
      if (self->status.ok()) self->status = st;
      return 1;
    }
    return 0;
  }
};

// Everything a launcher needs from the op context. `gemm` must outlive the launch call.
inline absl::Status MakeGpuLaunch(tensorflow::OpKernelContext* ctx, TfBlasGemm* gemm,
                                  GpuLaunch* launch) {
  if (const int driver = GpuDriverStatus()) return GpuCodeToStatus(driver, "tf-dcn");
  auto* device_context = ctx->op_device_context();
  if (device_context == nullptr || device_context->stream() == nullptr) {
    return absl::InternalError("tf-dcn: no GPU stream in the op context");
  }
  stream_executor::Stream* stream = device_context->stream();
  launch->stream = stream->platform_specific_handle().stream;
  launch->deterministic = tensorflow::OpDeterminismRequired();
  if (gemm != nullptr) {
    gemm->stream = stream;
    gemm->blas = stream->parent()->AsBlas();
    if (gemm->blas == nullptr) {
      return absl::InternalError("tf-dcn: TensorFlow's GPU device has no BLAS support");
    }
    gemm->options = stream_executor::EngineOptions(
        launch->deterministic, tensorflow::tensor_float_32_execution_enabled(), false);
    launch->gemm = &TfBlasGemm::Call;
    launch->gemm_context = gemm;
  }
  return absl::OkStatus();
}

// A device buffer of `bytes` bytes from the op's allocator (freed with `storage`).
inline absl::Status AllocateWorkspace(tensorflow::OpKernelContext* ctx, int64_t bytes,
                                      tensorflow::Tensor* storage, void** data) {
  *data = nullptr;
  if (bytes <= 0) return absl::OkStatus();
  TF_RETURN_IF_ERROR(
      ctx->allocate_temp(tensorflow::DT_UINT8, tensorflow::TensorShape({bytes}), storage));
  *data = storage->flat<uint8_t>().data();
  return absl::OkStatus();
}

}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_GPU_GPU_OP_UTIL_H_
