// The body of every cpu_kernels_<isa>.cc: both kernel families in namespace
// tf_dcn::TF_DCN_CPU_ISA, and that namespace's kKernels table (cpu_dispatch.h).
#ifndef TF_DCN_CPU_ISA
#error "define TF_DCN_CPU_ISA before including cpu_kernels_isa.h"
#endif

// GCC 12's own AVX/AVX-512 intrinsic headers, as Eigen's packet code inlines them, warn about
// their deliberately uninitialised `__Y = __Y` locals (-Wmaybe-uninitialized); silenced here so
// that the build log shows only warnings about this project's code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "cc/kernels/deform_conv2d_cpu_kernels.h"
#include "cc/kernels/deform_psroi_pool_cpu_kernels.h"

namespace tf_dcn {
namespace TF_DCN_CPU_ISA {

const CpuKernels kKernels = {DeformConv2DForward, DeformConv2DBackward, DeformPSRoIPoolForward,
                             DeformPSRoIPoolBackward};

}  // namespace TF_DCN_CPU_ISA
}  // namespace tf_dcn
