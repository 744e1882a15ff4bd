// Small helpers shared by the OpKernel shims (TensorFlow side only).
#ifndef TF_DCN_CC_KERNELS_OP_UTIL_H_
#define TF_DCN_CC_KERNELS_OP_UTIL_H_

#include "tensorflow/core/framework/tensor.h"

namespace tf_dcn {

// Data of an optional input (mask, bias, offsets), or nullptr when the op does not use it.
template <typename T>
const T* DataOrNull(const tensorflow::Tensor& t, bool used) {
  return used ? t.flat<T>().data() : nullptr;
}

}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_OP_UTIL_H_
