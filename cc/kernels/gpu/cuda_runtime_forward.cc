// The CUDA runtime functions used by tf-dcn's CUDA code, defined here as hidden forwarders to the
// CUDA 12 runtime already in the process, so that the CUDA op library carries no runtime of its own
// (see docs/gpu-build.md, "Which CUDA runtime the library uses").
//
// The compiled .cu objects call the usual runtime entry points (kernel registration by the
// module constructors, kernel launches, CUB's device queries, asynchronous copies). Each is defined
// below with hidden visibility, so the library's references bind to these definitions and nothing
// is exported. A definition looks the real function up, once, in the first of:
//   1. libtensorflow_framework.so.2, when it exports the runtime: the GPU build of TensorFlow 2.21
//      does (its cudart stubs load TensorFlow's own libcudart.so.12 on first use);
//   2. a libcudart.so.12 already loaded in the process (e.g. PyTorch's, in the GPU test harness);
//   3. $TF_DCN_CUDART, the path of a libcudart.so.12, else the one the dynamic loader finds.
// None of this happens when the library is loaded: the module constructors' registrations are
// recorded and replayed into the real runtime at the first call that needs a kernel, so the library
// loads in tensorflow-cpu and in a GPU TensorFlow on a machine without a GPU or driver. Without any
// runtime every call returns kGpuNoCudaRuntime (GpuErrorString has its message).
//
// Host C++ only (no CUDA headers): the types are declared here with the CUDA 12 ABI's layout.
#include <dlfcn.h>

#include <cstddef>
#include <cstdlib>
#include <vector>

#include "cc/kernels/gpu_launch.h"
#include "cc/kernels/gpu_runtime.h"

namespace {

struct Dim3 {  // dim3 / uint3: three unsigned ints, passed by value in registers
  unsigned x, y, z;
};

// Where the real runtime functions come from (see the file comment); nullptr when nowhere.
void* RuntimeLibrary() {
  static void* const library = []() -> void* {
    if (void* tf = dlopen("libtensorflow_framework.so.2", RTLD_NOW | RTLD_NOLOAD)) {
      if (dlsym(tf, "__cudaRegisterFatBinary") != nullptr) return tf;
    }
    if (void* loaded = dlopen("libcudart.so.12", RTLD_NOW | RTLD_NOLOAD)) return loaded;
    const char* path = std::getenv("TF_DCN_CUDART");
    return dlopen(path != nullptr && *path != '\0' ? path : "libcudart.so.12",
                  RTLD_NOW | RTLD_LOCAL);
  }();
  return library;
}

template <typename Fn>
Fn Real(const char* name) {
  void* library = RuntimeLibrary();
  return library == nullptr ? nullptr : reinterpret_cast<Fn>(dlsym(library, name));
}

// Looks a function up once per call site: `static const auto fn = TF_DCN_REAL(name);`.
#define TF_DCN_REAL(name) Real<decltype(&name)>(#name)

// What a module constructor registered, replayed into the real runtime by EnsureRegistered.
struct Kernel {
  const char* host_function;
  char* device_function;
  const char* device_name;
  int thread_limit;
};
struct Module {
  void* fatbin_wrapper;  // __fatBinC_Wrapper_t*, static in the object that registered it
  std::vector<Kernel> kernels;
  void** real_handle = nullptr;
};

std::vector<Module*>& Modules() {
  static auto* modules = new std::vector<Module*>();  // never freed: used until exit
  return *modules;
}

}  // namespace

#define TF_DCN_HIDDEN extern "C" __attribute__((visibility("hidden")))

TF_DCN_HIDDEN void** __cudaRegisterFatBinary(void* fatbin_wrapper) {
  Modules().push_back(new Module{fatbin_wrapper, {}, nullptr});
  return reinterpret_cast<void**>(Modules().back());
}

TF_DCN_HIDDEN void __cudaRegisterFatBinaryEnd(void** /*handle*/) {}

// The registrations are process-lifetime: at exit nothing is unregistered (the runtime may already
// be torn down by then; the driver releases the modules with the process).
TF_DCN_HIDDEN void __cudaUnregisterFatBinary(void** /*handle*/) {}

TF_DCN_HIDDEN void __cudaRegisterFunction(void** handle, const char* host_function,
                                          char* device_function, const char* device_name,
                                          int thread_limit, Dim3* /*tid*/, Dim3* /*bid*/,
                                          Dim3* /*block*/, Dim3* /*grid*/, int* /*warp_size*/) {
  reinterpret_cast<Module*>(handle)->kernels.push_back(
      {host_function, device_function, device_name, thread_limit});
}

namespace {

// Registers every recorded module with the real runtime, once. False without a runtime.
bool EnsureRegistered() {
  static const bool registered = [] {
    static const auto register_fatbin = TF_DCN_REAL(__cudaRegisterFatBinary);
    static const auto register_end = TF_DCN_REAL(__cudaRegisterFatBinaryEnd);
    static const auto register_function = TF_DCN_REAL(__cudaRegisterFunction);
    if (register_fatbin == nullptr || register_end == nullptr || register_function == nullptr) {
      return false;
    }
    for (Module* module : Modules()) {
      module->real_handle = register_fatbin(module->fatbin_wrapper);
      if (module->real_handle == nullptr) return false;
      for (const Kernel& k : module->kernels) {
        register_function(module->real_handle, k.host_function, k.device_function, k.device_name,
                          k.thread_limit, nullptr, nullptr, nullptr, nullptr, nullptr);
      }
      register_end(module->real_handle);
    }
    return true;
  }();
  return registered;
}

}  // namespace

// Forwards `name(args...)`, after registering the kernels when `needs_kernels`.
#define TF_DCN_FORWARD(needs_kernels, name, ...)                         \
  do {                                                                   \
    static const auto real = TF_DCN_REAL(name);                          \
    if (real == nullptr || ((needs_kernels) && !EnsureRegistered())) {   \
      return tf_dcn::kGpuNoCudaRuntime;                                     \
    }                                                                    \
    return real(__VA_ARGS__);                                            \
  } while (0)

TF_DCN_HIDDEN unsigned __cudaPushCallConfiguration(Dim3 grid, Dim3 block, size_t shared_bytes,
                                                   void* stream) {
  static const auto real = TF_DCN_REAL(__cudaPushCallConfiguration);
  if (real == nullptr || !EnsureRegistered()) return 1;  // nonzero: the launch is skipped
  return real(grid, block, shared_bytes, stream);
}

TF_DCN_HIDDEN int __cudaPopCallConfiguration(Dim3* grid, Dim3* block, size_t* shared_bytes,
                                             void* stream) {
  TF_DCN_FORWARD(false, __cudaPopCallConfiguration, grid, block, shared_bytes, stream);
}

TF_DCN_HIDDEN int cudaLaunchKernel(const void* function, Dim3 grid, Dim3 block, void** args,
                                   size_t shared_bytes, void* stream) {
  TF_DCN_FORWARD(true, cudaLaunchKernel, function, grid, block, args, shared_bytes, stream);
}

TF_DCN_HIDDEN int cudaFuncGetAttributes(void* attributes, const void* function) {
  TF_DCN_FORWARD(true, cudaFuncGetAttributes, attributes, function);
}

TF_DCN_HIDDEN int cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
    int* blocks, const void* function, int block_size, size_t shared_bytes, unsigned flags) {
  TF_DCN_FORWARD(true, cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags, blocks, function,
                 block_size, shared_bytes, flags);
}

TF_DCN_HIDDEN int cudaDeviceGetAttribute(int* value, int attribute, int device) {
  TF_DCN_FORWARD(false, cudaDeviceGetAttribute, value, attribute, device);
}

TF_DCN_HIDDEN int cudaGetDevice(int* device) { TF_DCN_FORWARD(false, cudaGetDevice, device); }

TF_DCN_HIDDEN int cudaSetDevice(int device) { TF_DCN_FORWARD(false, cudaSetDevice, device); }

TF_DCN_HIDDEN int cudaGetDeviceCount(int* count) {
  TF_DCN_FORWARD(false, cudaGetDeviceCount, count);
}

TF_DCN_HIDDEN int cudaDriverGetVersion(int* version) {
  TF_DCN_FORWARD(false, cudaDriverGetVersion, version);
}

TF_DCN_HIDDEN int cudaGetLastError() { TF_DCN_FORWARD(false, cudaGetLastError); }

TF_DCN_HIDDEN int cudaPeekAtLastError() { TF_DCN_FORWARD(false, cudaPeekAtLastError); }

TF_DCN_HIDDEN const char* cudaGetErrorString(int error) {
  static const auto real = TF_DCN_REAL(cudaGetErrorString);
  return real == nullptr ? "no CUDA runtime in this process" : real(error);
}

TF_DCN_HIDDEN int cudaMemcpyAsync(void* destination, const void* source, size_t bytes, int kind,
                                  void* stream) {
  TF_DCN_FORWARD(false, cudaMemcpyAsync, destination, source, bytes, kind, stream);
}

TF_DCN_HIDDEN int cudaMemsetAsync(void* destination, int value, size_t bytes, void* stream) {
  TF_DCN_FORWARD(false, cudaMemsetAsync, destination, value, bytes, stream);
}

namespace tf_dcn {

int CudaRuntimeStatus() {
  return RuntimeLibrary() != nullptr && EnsureRegistered() ? kGpuOk : kGpuNoCudaRuntime;
}

}  // namespace tf_dcn
