// The host executor of the GPU launchers (see gpu_launch.h): runs a launcher's functors one index
// after another on the CPU. It exists so that the test suite can run the exact launcher and
// per-element code of the CUDA kernels on machines without a GPU (tests/emulation/); it is not
// used by the op library.
#ifndef TF_DCN_CC_KERNELS_HOST_EXEC_H_
#define TF_DCN_CC_KERNELS_HOST_EXEC_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "cc/kernels/gpu_launch.h"

namespace tf_dcn {

struct HostExec {
  explicit HostExec(const GpuLaunch&) {}

  template <typename F>
  int ForEach(int64_t n, const F& f) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return kGpuOk;
  }
  int Zero(void* p, int64_t bytes) {
    if (bytes > 0) std::memset(p, 0, bytes);
    return kGpuOk;
  }
  int CopyToHost(void* host, const void* device, int64_t bytes) {
    if (bytes > 0) std::memcpy(host, device, bytes);
    return kGpuOk;
  }
  int SortPairsTempBytes(int64_t, int, int64_t* bytes) {
    *bytes = 0;
    return kGpuOk;
  }
  int SortPairs(void*, int64_t, const uint64_t* keys_in, uint64_t* keys_out,
                const uint32_t* values_in, uint32_t* values_out, int64_t n, int end_bit) {
    const uint64_t keep = end_bit >= 64 ? ~uint64_t(0) : ((uint64_t(1) << end_bit) - 1);
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
      return (keys_in[x] & keep) < (keys_in[y] & keep);
    });
    std::vector<uint64_t> keys(n);
    std::vector<uint32_t> values(n);
    for (int64_t i = 0; i < n; ++i) {
      keys[i] = keys_in[order[i]];
      values[i] = values_in[order[i]];
    }
    std::copy(keys.begin(), keys.end(), keys_out);
    std::copy(values.begin(), values.end(), values_out);
    return kGpuOk;
  }
};

}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_HOST_EXEC_H_
