// The CUDA executor of the GPU launchers (see gpu_launch.h). Included only by .cu files; uses the
// CUDA runtime and CUB (header-only, shipped with the CUDA toolkit), never TensorFlow headers.
#ifndef TF_DCN_CC_KERNELS_CUDA_EXEC_CUH_
#define TF_DCN_CC_KERNELS_CUDA_EXEC_CUH_

#include <cuda_runtime.h>

#include <cstdint>
#include <cub/device/device_radix_sort.cuh>

#include "cc/kernels/gpu_launch.h"

namespace tf_dcn {

template <typename F>
__global__ void ForEachKernel(F f, int64_t n) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) f(i);
}

struct CudaExec {
  static constexpr int kThreads = 256;

  explicit CudaExec(const GpuLaunch& launch) : stream(static_cast<cudaStream_t>(launch.stream)) {}

  cudaStream_t stream;

  // Blocks for n elements: enough to fill the device (queried, not taken from Eigen/TF helpers,
  // whose cudaDeviceProp layout differs between CUDA versions), capped so a grid-stride loop covers the
  // rest.
  int Blocks(int64_t n, int* blocks) {
    if (max_blocks_ == 0) {
      int device = 0, sms = 0;
      cudaError_t e = cudaGetDevice(&device);
      if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
      if (e != cudaSuccess) return e;
      max_blocks_ = (sms > 0 ? sms : 1) * 16;
    }
    const int64_t want = (n + kThreads - 1) / kThreads;
    *blocks = static_cast<int>(want < max_blocks_ ? want : max_blocks_);
    return kGpuOk;
  }

  template <typename F>
  int ForEach(int64_t n, const F& f) {
    if (n <= 0) return kGpuOk;
    int blocks = 0;
    if (const int e = Blocks(n, &blocks)) return e;
    ForEachKernel<F><<<blocks, kThreads, 0, stream>>>(f, n);
    return cudaGetLastError();
  }
  int Zero(void* p, int64_t bytes) {
    if (bytes <= 0) return kGpuOk;
    return cudaMemsetAsync(p, 0, static_cast<size_t>(bytes), stream);
  }
  int CopyToHost(void* host, const void* device, int64_t bytes) {
    if (bytes <= 0) return kGpuOk;
    return cudaMemcpyAsync(host, device, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost,
                           stream);
  }
  int SortPairsTempBytes(int64_t n, int end_bit, int64_t* bytes) {
    size_t temp = 0;
    const cudaError_t e = cub::DeviceRadixSort::SortPairs(
        nullptr, temp, static_cast<const uint64_t*>(nullptr), static_cast<uint64_t*>(nullptr),
        static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr), n, 0, end_bit,
        stream);
    *bytes = static_cast<int64_t>(temp);
    return e;
  }
  int SortPairs(void* temp, int64_t temp_bytes, const uint64_t* keys_in, uint64_t* keys_out,
                const uint32_t* values_in, uint32_t* values_out, int64_t n, int end_bit) {
    if (n <= 0) return kGpuOk;
    size_t size = static_cast<size_t>(temp_bytes);
    return cub::DeviceRadixSort::SortPairs(temp, size, keys_in, keys_out, values_in, values_out, n,
                                           0, end_bit, stream);
  }

 private:
  int max_blocks_ = 0;
};

}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_CUDA_EXEC_CUH_
