// Deformable-convolution CPU kernels built with AVX2 + FMA + F16C (see the Makefile), run only on
// CPUs that support them (SelectCpuIsa).
//
// Eigen is renamed for this translation unit so that none of its template instantiations (which
// carry AVX2 code here) share a symbol with the baseline build; the object is linked last, so any
// other inline function that both builds emit resolves to the baseline copy.
#define Eigen TfDcnAvx2Eigen
#define TF_DCN_CPU_ISA avx2
#include "cc/kernels/deform_conv2d_cpu_kernels.h"
