// See gpu_runtime.h.
#include <cuda_runtime.h>

#include "cc/kernels/gpu_launch.h"
#include "cc/kernels/gpu_runtime.h"

namespace tf_dcn {

const char* GpuErrorString(int code) {
  switch (code) {
    case kGpuOk:
      return "no error";
    case kGpuGemmFailed:
      return "the BLAS matrix product (cuBLAS through TensorFlow's stream executor) failed";
    case kGpuWorkspaceTooSmall:
      return "internal error: the temporary workspace is smaller than the launcher requires";
    case kGpuNoGemm:
      return "internal error: no matrix-product routine was supplied to the launcher";
    case kGpuNoCudaRuntime:
      return "no CUDA 12 runtime in this process: tf-dcn's CUDA library uses TensorFlow's own "
             "(the GPU build of TensorFlow 2.21 with its nvidia-cuda-runtime-cu12 package, e.g. "
             "`pip install tensorflow[and-cuda]==2.21.*`), or set TF_DCN_OPS=cpu";
    case kCudaErrorInsufficientDriver:
      return "the NVIDIA driver is too old: tf-dcn's CUDA library runs on TensorFlow's CUDA 12 "
             "runtime and needs a driver that supports CUDA 12.0 or newer (r525 or newer; the "
             "same driver TensorFlow 2.21 itself needs), or set TF_DCN_OPS=cpu";
    case cudaErrorNoKernelImageForDevice:
      return "no kernel image for this GPU: tf-dcn's CUDA library is built for sm_75 to sm_90 "
             "(plus compute_90 PTX); rebuild with `make gpu CUDA_ARCHS=...` for this GPU, or set "
             "TF_DCN_OPS=cpu";
    default:
      return cudaGetErrorString(static_cast<cudaError_t>(code));
  }
}

int GpuDriverVersion() {
  static const int version = [] {
    int driver = 0;
    return cudaDriverGetVersion(&driver) == cudaSuccess ? driver : 0;
  }();
  return version;
}

int GpuDriverStatus() {
  static const int status = [] {
    if (const int runtime = CudaRuntimeStatus()) return runtime;
    int driver = 0;
    const cudaError_t e = cudaDriverGetVersion(&driver);
    if (e != cudaSuccess) return static_cast<int>(e);
    if (driver == 0) return static_cast<int>(cudaErrorNoDevice);  // no driver installed at all
    if (driver < kMinCudaDriverVersion) return kCudaErrorInsufficientDriver;
    return 0;
  }();
  return status;
}

}  // namespace tf_dcn
