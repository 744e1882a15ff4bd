// CPU kernels built with AVX-512 F/BW/DQ/VL on top of AVX2 + FMA + F16C (see the Makefile), run
// only on CPUs that support them (SelectCpuIsa). Eigen's matrix product uses its AVX-512 kernels
// here. Eigen is renamed and the object is linked last, as for cpu_kernels_avx2.cc.
#define Eigen TfDcnAvx512Eigen
#define TF_DCN_CPU_ISA avx512
#include "cc/kernels/cpu_kernels_isa.h"
