// Run-time choice of the CPU instruction set (see cpu_dispatch.h).
#include "cc/kernels/cpu_dispatch.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace tf_dcn {
namespace {

struct IsaName {
  CpuIsa isa;
  const char* name;
};
constexpr IsaName kIsaNames[] = {
    {CpuIsa::kGeneric, "generic"}, {CpuIsa::kAvx2, "avx2"}, {CpuIsa::kAvx512, "avx512"}};

// What the running CPU and OS support. libgcc's CPU model also checks, through XGETBV, that the OS
// saves the AVX (ymm) and AVX-512 (zmm, opmask) register state.
bool CpuSupports(CpuIsa isa) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  switch (isa) {
    case CpuIsa::kGeneric:
      return true;
    case CpuIsa::kAvx2:
      return avx2;
    case CpuIsa::kAvx512:
      return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  }
#endif
  return isa == CpuIsa::kGeneric;
}

const char* Requirement(CpuIsa isa) {
  return isa == CpuIsa::kAvx512 ? "AVX-512 F/BW/DQ/VL, AVX2, FMA and F16C" : "AVX2, FMA and F16C";
}

}  // namespace

bool SelectCpuIsa(CpuIsa* isa, std::string* error) {
  static const CpuIsa widest = CpuSupports(CpuIsa::kAvx512) ? CpuIsa::kAvx512
                               : CpuSupports(CpuIsa::kAvx2) ? CpuIsa::kAvx2
                                                            : CpuIsa::kGeneric;
  const char* forced = std::getenv("TF_DCN_CPU_ISA");
  if (forced == nullptr || forced[0] == '\0' || std::strcmp(forced, "auto") == 0) {
    *isa = widest;
    return true;
  }
  for (const IsaName& entry : kIsaNames) {
    if (std::strcmp(forced, entry.name) != 0) continue;
    if (!CpuSupports(entry.isa)) {
      *error = std::string("TF_DCN_CPU_ISA=") + entry.name + ", but this CPU does not support " +
               Requirement(entry.isa);
      return false;
    }
    *isa = entry.isa;
    return true;
  }
  *error = std::string("TF_DCN_CPU_ISA must be auto, generic, avx2 or avx512, got '") + forced +
           "'";
  return false;
}

bool ReadCpuWorkspaceLimit(int64_t* bytes, std::string* error) {
  const char* setting = std::getenv("TF_DCN_CPU_WORKSPACE_BYTES");
  if (setting == nullptr || setting[0] == '\0') {
    *bytes = kDefaultCpuWorkspaceBytes;
    return true;
  }
  errno = 0;
  char* end = nullptr;
  const long long value = std::strtoll(setting, &end, 10);
  if (errno != 0 || end == setting || *end != '\0' || value < kMinCpuWorkspaceBytes) {
    *error = std::string("TF_DCN_CPU_WORKSPACE_BYTES must be a whole number of bytes, at least ") +
             std::to_string(kMinCpuWorkspaceBytes) + ", got '" + setting + "'";
    return false;
  }
  *bytes = value;
  return true;
}

const CpuKernels& CpuKernelsFor(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512:
      return avx512::kKernels;
    case CpuIsa::kAvx2:
      return avx2::kKernels;
    case CpuIsa::kGeneric:
      break;
  }
  return generic::kKernels;
}

}  // namespace tf_dcn
