// Deformable-convolution CPU kernels for the x86-64 baseline (whatever TensorFlow requires).
#define TF_DCN_CPU_ISA generic
#include "cc/kernels/deform_conv2d_cpu_kernels.h"
