// Host-side CUDA runtime services for the TensorFlow shims, which include no CUDA headers: error
// strings and the driver check (gpu_runtime.cu), and the runtime's presence
// (gpu/cuda_runtime_forward.cc).
#ifndef TF_DCN_CC_KERNELS_GPU_RUNTIME_H_
#define TF_DCN_CC_KERNELS_GPU_RUNTIME_H_

#include <cstdint>

namespace tf_dcn {

// The oldest driver the library runs on, as cudaDriverGetVersion reports it: CUDA 12.0 (r525).
// The library is built with CUDA 12.5 and uses TensorFlow's CUDA 12 runtime, which runs on any
// CUDA 12 driver (CUDA's minor-version compatibility; the kernels are shipped as SASS for every
// supported GPU, so no PTX needs a newer driver's JIT).
constexpr int kMinCudaDriverVersion = 12000;

// Text of a launcher error code (gpu_launch.h): ours, or cudaGetErrorString's, with advice for a
// driver that is too old.
const char* GpuErrorString(int code);

// 0 when the installed driver can run this library (kMinCudaDriverVersion or newer), else
// cudaErrorInsufficientDriver (35), cudaErrorNoDevice (100) without any driver, kGpuNoCudaRuntime,
// or the error of the query. Cached after the first call.
int GpuDriverStatus();

// cudaDriverGetVersion() of the installed driver (e.g. 12040 for CUDA 12.4), or 0 without one.
int GpuDriverVersion();

// kGpuOk when a CUDA 12 runtime was found in the process and the library's kernels are
// registered with it, else kGpuNoCudaRuntime (gpu/cuda_runtime_forward.cc).
int CudaRuntimeStatus();

}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_GPU_RUNTIME_H_
