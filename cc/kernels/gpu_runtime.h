// Host-side CUDA runtime services for the TensorFlow shims, which include no CUDA headers:
// error strings and the driver check. Implemented in gpu_runtime.cu.
#ifndef TF_DCN_CC_KERNELS_GPU_RUNTIME_H_
#define TF_DCN_CC_KERNELS_GPU_RUNTIME_H_

#include <cstdint>

namespace tf_dcn {

// Text of a launcher error code (gpu_launch.h): ours, or cudaGetErrorString's with advice for a
// driver older than the CUDA runtime linked into the library.
const char* GpuErrorString(int code);

// 0 when the installed driver can run this library's CUDA runtime, else
// cudaErrorInsufficientDriver (35) or the error of the query. Cheap; cached after the first call.
int GpuDriverStatus();

// Copies `bytes` from device to host memory on `stream` (a cudaStream_t) and waits for it.
// Returns 0 or a cudaError_t.
int GpuCopyToHostSync(void* stream, void* host, const void* device, int64_t bytes);

}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_GPU_RUNTIME_H_
