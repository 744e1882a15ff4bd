// The element types of tf-dcn's ops, listed once for the TensorFlow side: the op registrations'
// type attributes (cc/ops/) and the kernel registrations and template instantiations
// (cc/kernels/*_op.cc, *_cpu.cc, gpu/*.cc). The TF-free kernels name the same four types through
// ElementType (kernel_args.h). Adding a type: the two lists here, ElementType with
// WithElementType and ElementTypeOf (op_util.h), and FLOAT_DTYPES in tf_dcn/_arguments.py.
#ifndef TF_DCN_CC_KERNELS_ELEMENT_TYPES_H_
#define TF_DCN_CC_KERNELS_ELEMENT_TYPES_H_

#include "tensorflow/core/framework/register_types.h"

// Attribute T of every op: the feature/input tensors' type.
#define TF_DCN_ELEMENT_TYPES_ATTR "T: {half, bfloat16, float, double}"
// m(type) for each of them: TensorFlow's four floating-point types.
#define TF_DCN_CALL_ELEMENT_TYPES(m) TF_CALL_FLOAT_TYPES(m)

// Attribute Troi of the pooling ops: the type of `rois` (float64 boxes are kept as they are).
#define TF_DCN_ROI_TYPES_ATTR "Troi: {float, double} = DT_FLOAT"
// m(T, TR) for one element type T and each RoI type TR.
#define TF_DCN_CALL_ROI_TYPES(m, T) m(T, float) m(T, double)

#endif  // TF_DCN_CC_KERNELS_ELEMENT_TYPES_H_
