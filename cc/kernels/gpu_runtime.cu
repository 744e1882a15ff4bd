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
    case kCudaErrorInsufficientDriver:
      return "the NVIDIA driver is older than the CUDA 13 runtime of tf-dcn's CUDA library "
             "(a CUDA 13 capable driver, r580 or newer, is required; or set TF_DCN_OPS=cpu)";
    case cudaErrorNoKernelImageForDevice:
      return "no kernel image for this GPU: tf-dcn's CUDA library is built for sm_75 to sm_90 "
             "(plus compute_90 PTX); rebuild with `make gpu CUDA_ARCHS=...` for this GPU, or set "
             "TF_DCN_OPS=cpu";
    default:
      return cudaGetErrorString(static_cast<cudaError_t>(code));
  }
}

int GpuDriverStatus() {
  static const int status = [] {
    int driver = 0;
    const cudaError_t e = cudaDriverGetVersion(&driver);
    if (e != cudaSuccess) return static_cast<int>(e);
    if (driver < CUDART_VERSION) return kCudaErrorInsufficientDriver;
    return 0;
  }();
  return status;
}

int GpuCopyToHostSync(void* stream, void* host, const void* device, int64_t bytes) {
  if (bytes <= 0) return 0;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t e =
      cudaMemcpyAsync(host, device, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost, s);
  if (e == cudaSuccess) e = cudaStreamSynchronize(s);
  return static_cast<int>(e);
}

}  // namespace tf_dcn
