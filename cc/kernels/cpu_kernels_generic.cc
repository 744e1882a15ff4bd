// CPU kernels for the x86-64 baseline (whatever TensorFlow requires): the convolution and the
// pooling, with the entry-point table generic::kKernels (cpu_dispatch.h).
#define TF_DCN_CPU_ISA generic
#include "cc/kernels/cpu_kernels_isa.h"
