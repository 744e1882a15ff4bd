// Run-time choice of the CPU instruction set (see cpu_dispatch.h).
#include "cc/kernels/cpu_dispatch.h"

#include <cstdlib>
#include <cstring>

namespace tf_dcn {
namespace {

bool CpuHasAvx2FmaF16c() {
#if defined(__x86_64__) || defined(__i386__)
  // libgcc's CPU model also checks that the OS saves the AVX state (XGETBV).
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

}  // namespace

bool SelectCpuIsa(CpuIsa* isa, std::string* error) {
  static const bool has_avx2 = CpuHasAvx2FmaF16c();
  const char* forced = std::getenv("TF_DCN_CPU_ISA");
  if (forced == nullptr || forced[0] == '\0' || std::strcmp(forced, "auto") == 0) {
    *isa = has_avx2 ? CpuIsa::kAvx2 : CpuIsa::kGeneric;
    return true;
  }
  if (std::strcmp(forced, "generic") == 0) {
    *isa = CpuIsa::kGeneric;
    return true;
  }
  if (std::strcmp(forced, "avx2") == 0) {
    if (!has_avx2) {
      *error = "TF_DCN_CPU_ISA=avx2, but this CPU does not support AVX2, FMA and F16C";
      return false;
    }
    *isa = CpuIsa::kAvx2;
    return true;
  }
  *error = std::string("TF_DCN_CPU_ISA must be auto, generic or avx2, got '") + forced + "'";
  return false;
}

}  // namespace tf_dcn
