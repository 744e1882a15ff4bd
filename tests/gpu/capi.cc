// See capi.h. One source, two builds: TF_DCN_CAPI_EMULATION selects the host executor (g++),
// otherwise the CUDA entry points of cc/kernels/*.cu are called (nvcc, tests/gpu/run.sh).
#include "tests/gpu/capi.h"

#include <cstdint>
#include <cstdlib>

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
using tf_dcn::ElementType;
using tf_dcn::GpuLaunch;

DeformConv2DDims ConvDims(const int64_t* v) {
  DeformConv2DDims d;
  d.batch = v[0];
  d.in_h = v[1];
  d.in_w = v[2];
  d.in_c = v[3];
  d.out_h = v[4];
  d.out_w = v[5];
  d.out_c = v[6];
  d.kernel_h = v[7];
  d.kernel_w = v[8];
  d.stride_h = v[9];
  d.stride_w = v[10];
  d.dilation_h = v[11];
  d.dilation_w = v[12];
  d.pad_top = v[13];
  d.pad_left = v[14];
  d.groups = v[15];
  d.deformable_groups = v[16];
  d.use_mask = v[17] != 0;
  d.use_bias = v[18] != 0;
  return d;
}

tf_dcn::DeformPSRoIPoolDims PoolDims(const int64_t* v, double spatial_scale, double trans_std) {
  tf_dcn::DeformPSRoIPoolDims d;
  d.batch = v[0];
  d.height = v[1];
  d.width = v[2];
  d.channels = v[3];
  d.num_rois = v[4];
  d.output_dim = v[5];
  d.group_size = v[6];
  d.pooled_size = v[7];
  d.part_size = v[8];
  d.sample_per_part = v[9];
  d.num_classes = v[10];
  d.use_offsets = v[11] != 0;
  d.spatial_scale = static_cast<float>(spatial_scale);
  d.trans_std = static_cast<float>(trans_std);
  return d;
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
  return tf_dcn::WithGpuElementType<Eigen::half, Eigen::bfloat16>(static_cast<ElementType>(type),
                                                                  fn);
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

int tfdcn_conv_workspace_bytes(int type, const int64_t* dims, int deterministic, int backward,
                               int64_t* bytes) {
  const GpuLaunch launch = MakeLaunch(deterministic, nullptr);
#if defined(TF_DCN_CAPI_EMULATION)
  return WithType(type, [&](auto tag) {
    return tf_dcn::conv_gpu::WorkspaceBytes<Exec, decltype(tag)>(ConvDims(dims), launch,
                                                                 backward != 0, bytes);
  });
#else
  return tf_dcn::DeformConv2DGpuWorkspaceBytes(static_cast<ElementType>(type), ConvDims(dims),
                                               launch, backward != 0, bytes);
#endif
}

int tfdcn_conv_forward(int type, const int64_t* dims, int deterministic, void* stream,
                       const void* input, const void* offsets, const void* mask, const void* kernel,
                       const void* bias, void* output, void* workspace, int64_t workspace_bytes) {
  const GpuLaunch launch = MakeLaunch(deterministic, stream);
  const tf_dcn::DeformConv2DForwardArgs args{input, offsets, mask, kernel, bias, output};
#if defined(TF_DCN_CAPI_EMULATION)
  return WithType(type, [&](auto tag) {
    return tf_dcn::conv_gpu::Forward<Exec, decltype(tag)>(
        static_cast<ElementType>(type), ConvDims(dims), launch, args, workspace, workspace_bytes);
  });
#else
  return tf_dcn::DeformConv2DGpuForward(static_cast<ElementType>(type), ConvDims(dims), launch,
                                        args, workspace, workspace_bytes);
#endif
}

int tfdcn_conv_backward(int type, const int64_t* dims, int deterministic, void* stream,
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
        static_cast<ElementType>(type), ConvDims(dims), launch, args, workspace, workspace_bytes);
  });
#else
  return tf_dcn::DeformConv2DGpuBackward(static_cast<ElementType>(type), ConvDims(dims), launch,
                                         args, workspace, workspace_bytes);
#endif
}

int tfdcn_pool_workspace_bytes(int type, int rois_double, const int64_t* dims, int deterministic,
                               int backward, int64_t* bytes) {
  const GpuLaunch launch = MakeLaunch(deterministic, nullptr);
  const tf_dcn::DeformPSRoIPoolDims d = PoolDims(dims, 1.0, 0.0);
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

int tfdcn_pool_forward(int type, int rois_double, const int64_t* dims, double spatial_scale,
                       double trans_std, int deterministic, void* stream, const void* features,
                       const void* rois, const void* offsets, void* output, void* workspace,
                       int64_t workspace_bytes) {
  const GpuLaunch launch = MakeLaunch(deterministic, stream);
  const tf_dcn::DeformPSRoIPoolDims d = PoolDims(dims, spatial_scale, trans_std);
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

int tfdcn_pool_backward(int type, int rois_double, const int64_t* dims, double spatial_scale,
                        double trans_std, int deterministic, void* stream, const void* features,
                        const void* rois, const void* offsets, const void* grad_output,
                        void* grad_features, void* grad_offsets, void* workspace,
                        int64_t workspace_bytes) {
  const GpuLaunch launch = MakeLaunch(deterministic, stream);
  const tf_dcn::DeformPSRoIPoolDims d = PoolDims(dims, spatial_scale, trans_std);
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

}  // extern "C"
