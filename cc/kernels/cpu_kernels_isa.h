// The body of every cpu_kernels_<isa>.cc: both kernel families in namespace
// tf_dcn::TF_DCN_CPU_ISA, and that namespace's kKernels table (cpu_dispatch.h).
#ifndef TF_DCN_CPU_ISA
#error "define TF_DCN_CPU_ISA before including cpu_kernels_isa.h"
#endif

#include "cc/kernels/deform_conv2d_cpu_kernels.h"
#include "cc/kernels/deform_psroi_pool_cpu_kernels.h"

namespace tf_dcn {
namespace TF_DCN_CPU_ISA {

const CpuKernels kKernels = {DeformConv2DForward, DeformConv2DBackward, DeformPSRoIPoolForward,
                             DeformPSRoIPoolBackward};

}  // namespace TF_DCN_CPU_ISA
}  // namespace tf_dcn
