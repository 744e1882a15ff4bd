// CPU kernels built with AVX2 + FMA + F16C (see the Makefile), run only on CPUs that support them
// (SelectCpuIsa).
//
// Eigen is renamed for this translation unit so that none of its template instantiations (which
// carry AVX2 code here) share a symbol with the other builds. The ISA objects are linked after the
// baseline ones and in the order avx2, avx512, so any other inline function that several builds
// emit resolves to the narrowest copy.
#define Eigen TfDcnAvx2Eigen
#define TF_DCN_CPU_ISA avx2
#include "cc/kernels/cpu_kernels_isa.h"
