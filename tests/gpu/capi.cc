// See capi.h. One source, two builds: TF_DCN_CAPI_EMULATION selects the host executor (g++),
// otherwise the CUDA entry points of cc/kernels/*.cu are called (clang-19, tests/gpu/run.sh).
#include "tests/gpu/capi.h"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>

#include "cc/kernels/deform_conv2d_geometry.h"
#include "cc/kernels/deform_psroi_pool_geometry.h"
#include "cc/kernels/gpu_launch.h"
#include "cc/kernels/kernel_args.h"

#if defined(TF_DCN_CAPI_EMULATION)
#include "Eigen/Core"
#include "cc/kernels/deform_conv2d_launch.h"
#include "cc/kernels/deform_psroi_pool_launch.h"
#include "cc/kernels/host_exec.h"
#include "tests/gpu/host_gemm.h"
#else
#include "cc/kernels/deform_conv2d_gpu.h"
#include "cc/kernels/deform_psroi_pool_gpu.h"
#include "cc/kernels/gpu_runtime.h"
#include "tests/gpu/cublas_gemm.h"
#endif

namespace {

using tf_dcn::DeformConv2DDims;
using tf_dcn::DeformPSRoIPoolDims;
using tf_dcn::ElementType;
using tf_dcn::GpuLaunch;

// Name and offset of every field of the dims structs, for the ctypes mirror's layout check.
struct FieldOffset {
  const char* name;
  int64_t offset;
};
#define TF_DCN_FIELD(Struct, field) \
  FieldOffset { #field, static_cast<int64_t>(offsetof(Struct, field)) }
constexpr FieldOffset kConvDimsFields[] = {
    TF_DCN_FIELD(DeformConv2DDims, batch),
    TF_DCN_FIELD(DeformConv2DDims, in_h),
    TF_DCN_FIELD(DeformConv2DDims, in_w),
    TF_DCN_FIELD(DeformConv2DDims, in_c),
    TF_DCN_FIELD(DeformConv2DDims, out_h),
    TF_DCN_FIELD(DeformConv2DDims, out_w),
    TF_DCN_FIELD(DeformConv2DDims, out_c),
    TF_DCN_FIELD(DeformConv2DDims, kernel_h),
    TF_DCN_FIELD(DeformConv2DDims, kernel_w),
    TF_DCN_FIELD(DeformConv2DDims, stride_h),
    TF_DCN_FIELD(DeformConv2DDims, stride_w),
    TF_DCN_FIELD(DeformConv2DDims, dilation_h),
    TF_DCN_FIELD(DeformConv2DDims, dilation_w),
    TF_DCN_FIELD(DeformConv2DDims, pad_top),
    TF_DCN_FIELD(DeformConv2DDims, pad_left),
    TF_DCN_FIELD(DeformConv2DDims, groups),
    TF_DCN_FIELD(DeformConv2DDims, deformable_groups),
    TF_DCN_FIELD(DeformConv2DDims, use_mask),
    TF_DCN_FIELD(DeformConv2DDims, use_bias),
};
constexpr FieldOffset kPoolDimsFields[] = {
    TF_DCN_FIELD(DeformPSRoIPoolDims, batch),
    TF_DCN_FIELD(DeformPSRoIPoolDims, height),
    TF_DCN_FIELD(DeformPSRoIPoolDims, width),
    TF_DCN_FIELD(DeformPSRoIPoolDims, channels),
    TF_DCN_FIELD(DeformPSRoIPoolDims, num_rois),
    TF_DCN_FIELD(DeformPSRoIPoolDims, output_dim),
    TF_DCN_FIELD(DeformPSRoIPoolDims, group_size),
    TF_DCN_FIELD(DeformPSRoIPoolDims, pooled_size),
    TF_DCN_FIELD(DeformPSRoIPoolDims, part_size),
    TF_DCN_FIELD(DeformPSRoIPoolDims, sample_per_part),
    TF_DCN_FIELD(DeformPSRoIPoolDims, num_classes),
    TF_DCN_FIELD(DeformPSRoIPoolDims, spatial_scale),
    TF_DCN_FIELD(DeformPSRoIPoolDims, trans_std),
    TF_DCN_FIELD(DeformPSRoIPoolDims, use_offsets),
};
#undef TF_DCN_FIELD

template <size_t N>
int64_t OffsetOf(const FieldOffset (&fields)[N], const char* name) {
  for (const FieldOffset& f : fields) {
    if (std::strcmp(f.name, name) == 0) return f.offset;
  }
  return -1;
}

GpuLaunch MakeLaunch(int deterministic, void* stream) {
  GpuLaunch launch;
  launch.stream = stream;
  launch.deterministic = deterministic != 0;
#if defined(TF_DCN_CAPI_EMULATION)
  launch.gemm = tf_dcn::HostGemm;
  // Small chunks make the tests run the multi-chunk paths on small shapes.
  if (const char* chunk = std::getenv("TF_DCN_EMULATION_MAX_CHUNK")) {
    launch.max_chunk = std::strtoll(chunk, nullptr, 10);
  }
#else
  launch.gemm = tf_dcn::CublasGemm;
  launch.gemm_context = stream;  // CublasGemm enqueues on this cudaStream_t
#endif
  return launch;
}

#if defined(TF_DCN_CAPI_EMULATION)
using Exec = tf_dcn::HostExec;
template <typename Fn>
int WithType(int type, Fn fn) {
  return tf_dcn::WithElementType<Eigen::half, Eigen::bfloat16>(static_cast<ElementType>(type), fn);
}
// fn(T(), TR()) for the element type and the rois type.
template <typename Fn>
int WithTypes(int type, int rois_double, Fn fn) {
  return WithType(type,
                  [&](auto tag) { return rois_double ? fn(tag, double()) : fn(tag, float()); });
}
#endif

}  // namespace

extern "C" {

const char* tfdcn_error_string(int code) {
#if defined(TF_DCN_CAPI_EMULATION)
  return code == 0 ? "no error" : "launcher error (see tf_dcn::GpuErrorCode)";
#else
  return tf_dcn::GpuErrorString(code);
#endif
}

int tfdcn_on_device(void) {
#if defined(TF_DCN_CAPI_EMULATION)
  return 0;
#else
  return 1;
#endif
}

int64_t tfdcn_conv_dims_size(void) { return sizeof(DeformConv2DDims); }
int64_t tfdcn_conv_dims_field_count(void) { return std::size(kConvDimsFields); }
int64_t tfdcn_conv_dims_field_offset(const char* name) { return OffsetOf(kConvDimsFields, name); }
int64_t tfdcn_pool_dims_size(void) { return sizeof(DeformPSRoIPoolDims); }
int64_t tfdcn_pool_dims_field_count(void) { return std::size(kPoolDimsFields); }
int64_t tfdcn_pool_dims_field_offset(const char* name) { return OffsetOf(kPoolDimsFields, name); }

int tfdcn_conv_workspace_bytes(int type, const TfDcnConvDims* dims, int deterministic, int backward,
                               int64_t* bytes) {
  const GpuLaunch launch = MakeLaunch(deterministic, nullptr);
#if defined(TF_DCN_CAPI_EMULATION)
  return WithType(type, [&](auto tag) {
    return tf_dcn::conv_gpu::WorkspaceBytes<Exec, decltype(tag)>(*dims, launch, backward != 0,
                                                                 bytes);
  });
#else
  return tf_dcn::DeformConv2DGpuWorkspaceBytes(static_cast<ElementType>(type), *dims, launch,
                                               backward != 0, bytes);
#endif
}

int tfdcn_conv_forward(int type, const TfDcnConvDims* dims, int deterministic, void* stream,
                       const void* input, const void* offsets, const void* mask, const void* kernel,
                       const void* bias, void* output, void* workspace, int64_t workspace_bytes) {
  const GpuLaunch launch = MakeLaunch(deterministic, stream);
  const tf_dcn::DeformConv2DForwardArgs args{input, offsets, mask, kernel, bias, output};
#if defined(TF_DCN_CAPI_EMULATION)
  return WithType(type, [&](auto tag) {
    return tf_dcn::conv_gpu::Forward<Exec, decltype(tag)>(static_cast<ElementType>(type), *dims,
                                                          launch, args, workspace, workspace_bytes);
  });
#else
  return tf_dcn::DeformConv2DGpuForward(static_cast<ElementType>(type), *dims, launch, args,
                                        workspace, workspace_bytes);
#endif
}

int tfdcn_conv_backward(int type, const TfDcnConvDims* dims, int deterministic, void* stream,
                        const void* input, const void* offsets, const void* mask,
                        const void* kernel, const void* grad_output, void* grad_input,
                        void* grad_offsets, void* grad_mask, void* grad_kernel, void* grad_bias,
                        void* workspace, int64_t workspace_bytes) {
  const GpuLaunch launch = MakeLaunch(deterministic, stream);
  const tf_dcn::DeformConv2DBackwardArgs args{input,       offsets,    mask,         kernel,
                                              grad_output, grad_input, grad_offsets, grad_mask,
                                              grad_kernel, grad_bias};
#if defined(TF_DCN_CAPI_EMULATION)
  return WithType(type, [&](auto tag) {
    return tf_dcn::conv_gpu::Backward<Exec, decltype(tag)>(
        static_cast<ElementType>(type), *dims, launch, args, workspace, workspace_bytes);
  });
#else
  return tf_dcn::DeformConv2DGpuBackward(static_cast<ElementType>(type), *dims, launch, args,
                                         workspace, workspace_bytes);
#endif
}

int tfdcn_pool_workspace_bytes(int type, int rois_double, const TfDcnPoolDims* dims,
                               int deterministic, int backward, int64_t* bytes) {
  const GpuLaunch launch = MakeLaunch(deterministic, nullptr);
  const DeformPSRoIPoolDims& d = *dims;
#if defined(TF_DCN_CAPI_EMULATION)
  (void)rois_double;
  return WithType(type, [&](auto tag) {
    return tf_dcn::pool_gpu::WorkspaceBytes<Exec, decltype(tag)>(d, launch, backward != 0, bytes);
  });
#else
  return tf_dcn::DeformPSRoIPoolGpuWorkspaceBytes(static_cast<ElementType>(type), rois_double != 0,
                                                  d, launch, backward != 0, bytes);
#endif
}

int tfdcn_pool_forward(int type, int rois_double, const TfDcnPoolDims* dims, int deterministic,
                       void* stream, const void* features, const void* rois, const void* offsets,
                       void* output, void* workspace, int64_t workspace_bytes) {
  const GpuLaunch launch = MakeLaunch(deterministic, stream);
  const DeformPSRoIPoolDims& d = *dims;
#if defined(TF_DCN_CAPI_EMULATION)
  return WithTypes(type, rois_double, [&](auto tag, auto rois_tag) {
    return tf_dcn::pool_gpu::Forward<Exec, decltype(tag), decltype(rois_tag)>(
        d, launch, features, rois, offsets, output, workspace, workspace_bytes);
  });
#else
  return tf_dcn::DeformPSRoIPoolGpuForward(static_cast<ElementType>(type), rois_double != 0, d,
                                           launch, features, rois, offsets, output, workspace,
                                           workspace_bytes);
#endif
}

int tfdcn_pool_backward(int type, int rois_double, const TfDcnPoolDims* dims, int deterministic,
                        void* stream, const void* features, const void* rois, const void* offsets,
                        const void* grad_output, void* grad_features, void* grad_offsets,
                        void* workspace, int64_t workspace_bytes) {
  const GpuLaunch launch = MakeLaunch(deterministic, stream);
  const DeformPSRoIPoolDims& d = *dims;
#if defined(TF_DCN_CAPI_EMULATION)
  return WithTypes(type, rois_double, [&](auto tag, auto rois_tag) {
    return tf_dcn::pool_gpu::Backward<Exec, decltype(tag), decltype(rois_tag)>(
        d, launch, features, rois, offsets, grad_output, grad_features, grad_offsets, workspace,
        workspace_bytes);
  });
#else
  return tf_dcn::DeformPSRoIPoolGpuBackward(
      static_cast<ElementType>(type), rois_double != 0, d, launch, features, rois, offsets,
      grad_output, grad_features, grad_offsets, workspace, workspace_bytes);
#endif
}

int tfdcn_pool_check_batch_indices(int rois_double, int64_t num_rois, int64_t batch, void* stream,
                                   const void* rois, void* scratch, void* host_result) {
  const GpuLaunch launch = MakeLaunch(0, stream);
  auto* result = static_cast<tf_dcn::RoiBatchCheck*>(host_result);
#if defined(TF_DCN_CAPI_EMULATION)
  return rois_double ? tf_dcn::pool_gpu::CheckBatchIndices<Exec, double>(num_rois, batch, launch,
                                                                          rois, scratch, result)
                     : tf_dcn::pool_gpu::CheckBatchIndices<Exec, float>(num_rois, batch, launch,
                                                                         rois, scratch, result);
#else
  return tf_dcn::DeformPSRoIPoolGpuCheckBatchIndices(rois_double != 0, num_rois, batch, launch,
                                                     rois, scratch, result);
#endif
}

int tfdcn_driver_status(void) {
#if defined(TF_DCN_CAPI_EMULATION)
  return 0;
#else
  return tf_dcn::GpuDriverStatus();
#endif
}

}  // extern "C"
