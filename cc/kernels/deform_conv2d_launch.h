// The GPU algorithm of the deformable convolution, written once over an executor (gpu_launch.h):
// CudaExec runs it on the device (deform_conv2d_gpu.cu), HostExec runs the very same code on the
// CPU for the test suite. No TensorFlow and no CUDA headers.
//
// Output pixels are processed in chunks of chunk_pixels pixels (chosen so that the column buffers
// stay under kColumnBudgetBytes; the chunks run one after another on the stream):
//   forward   col[grp][p][k][c] = mask * bilinear(input)          (Im2Col, one thread per element)
//             out[p][o] = bias[o] + sum col * kernel                (one strided-batched GEMM)
//   backward  dcol = grad_out * kernel^T                            (GEMM)
//             d kernel += col^T * grad_out                          (GEMM, accumulated over chunks)
//             d offsets, d mask: one thread per sample, an ordered loop over its channels
//             d input: fast path = atomic adds of the four corner shares (ScatterInputGrad);
//                      deterministic path = each corner share becomes an entry keyed by the input
//                      pixel it lands on, entries are stably radix-sorted by key, and one thread
//                      per (pixel, channel) sums its entries in sorted order (GatherInputGrad):
//                      no floating-point atomics, bitwise reproducible.
//             d bias: per-block partial sums, then an ordered sum of the blocks.
// Half types keep col/dcol and the GEMM operands in their own type (the GEMM accumulates in
// float32); everything else accumulates in float32 (AccumulatorType).
#ifndef TF_DCN_CC_KERNELS_DEFORM_CONV2D_LAUNCH_H_
#define TF_DCN_CC_KERNELS_DEFORM_CONV2D_LAUNCH_H_

#include <cstdint>
#include <type_traits>

#include "cc/kernels/dcn_common.h"
#include "cc/kernels/deform_conv2d_geometry.h"
#include "cc/kernels/gpu_launch.h"
#include "cc/kernels/kernel_args.h"

namespace tf_dcn {
namespace conv_gpu {

constexpr int64_t kColumnBudgetBytes = int64_t(128) << 20;  // col (+ dcol) per chunk
constexpr int64_t kBiasRowsPerBlock = 256;

// The convolution's dimensions plus the sizes derived from them once per call, so that device
// threads do not recompute the divisions.
struct Shape {
  DeformConv2DDims dims;
  int64_t taps;             // kernel_h * kernel_w
  int64_t in_c_per_group;   // input channels per convolution group
  int64_t in_c_per_dgroup;  // input channels per deformable group
  int64_t out_c_per_group;  // output channels per convolution group
  int64_t out_pixels;       // batch * out_h * out_w

  explicit Shape(const DeformConv2DDims& d)
      : dims(d),
        taps(d.taps()),
        in_c_per_group(d.in_c_per_group()),
        in_c_per_dgroup(d.in_c_per_dgroup()),
        out_c_per_group(d.out_c_per_group()),
        out_pixels(d.out_pixels()) {}
};

// The bilinear sample of tap gk (= g*taps + k) of output pixel p (flat over batch, rows, columns).
template <typename A, typename T>
TF_DCN_HD ConvSample<A> SampleOf(const Shape& s, const T* offsets, int64_t p, int64_t gk) {
  const int64_t per_image = s.dims.out_h * s.dims.out_w;
  const int64_t rem = p % per_image;
  const int64_t ho = rem / s.dims.out_w, wo = rem - (rem / s.dims.out_w) * s.dims.out_w;
  const T* tap_offsets = offsets + p * 2 * s.dims.deformable_groups * s.taps + 2 * gk;
  return SampleConvTap<A>(s.dims, ho, wo, gk % s.taps, tap_offsets);
}

// Index in the column buffer of a chunk of `chunk_pixels` pixels (ColumnIndex, dcn_common.h).
TF_DCN_HD int64_t ColIndex(const Shape& s, int64_t chunk_pixels, int64_t pp, int64_t k, int64_t c) {
  const int64_t grp = c / s.in_c_per_group;
  return ColumnIndex(chunk_pixels, s.taps, s.in_c_per_group, grp, pp, k, c);
}

// Element i = (pp*DG*K + gk)*Cdg + c_in of a chunk's (pixel, tap, channel) grid, channels fastest
// (so that neighbouring threads read neighbouring NHWC channels).
struct ColElement {
  int64_t pp, gk, k, c;
};
TF_DCN_HD ColElement DecodeColElement(const Shape& s, int64_t i) {
  ColElement e;
  const int64_t c_in = i % s.in_c_per_dgroup;
  e.gk = (i / s.in_c_per_dgroup) % (s.dims.deformable_groups * s.taps);
  e.pp = i / (s.in_c_per_dgroup * s.dims.deformable_groups * s.taps);
  const int64_t g = e.gk / s.taps;
  e.k = e.gk - g * s.taps;
  e.c = g * s.in_c_per_dgroup + c_in;
  return e;
}

// col for pixels [p0, p0 + chunk_pixels), one thread per (pixel, tap, channel of the deformable
// group).
template <typename T>
struct Im2Col {
  using A = typename AccumulatorType<T>::type;
  Shape s;
  const T *input, *offsets, *mask;
  T* col;
  int64_t p0, chunk_pixels;

  TF_DCN_HD void operator()(int64_t i) const {
    const ColElement e = DecodeColElement(s, i);
    const int64_t pp = e.pp, gk = e.gk, k = e.k, c = e.c, p = p0 + pp;
    const ConvSample<A> smp = SampleOf<A>(s, offsets, p, gk);
    A v = A(0);
    if (smp.kind == kSampleNaN) {
      v = QuietNaN<A>();
    } else if (smp.kind == kSampleInside) {
      const T* image =
          input + (p / (s.dims.out_h * s.dims.out_w)) * s.dims.in_h * s.dims.in_w * s.dims.in_c + c;
      A u[4];
      for (int q = 0; q < 4; ++q)
        u[q] = smp.pixel[q] >= 0 ? A(image[smp.pixel[q] * s.dims.in_c]) : A(0);
      v = ConvSampleValue(smp, u);
      if (mask) v *= A(mask[p * s.dims.deformable_groups * s.taps + gk]);
    }
    col[ColIndex(s, chunk_pixels, pp, k, c)] = T(v);
  }
};

// out[e] = bias[e % out_c] for the chunk's output rows (the GEMM then adds with beta = 1).
template <typename T>
struct FillBias {
  const T* bias;
  T* out;
  int64_t out_c;
  TF_DCN_HD void operator()(int64_t e) const { out[e] = bias[e % out_c]; }
};

// d offsets and d mask of every sample of the chunk: one thread per (pixel, tap), an ordered loop
// over the channels of its deformable group (deterministic by construction).
template <typename T>
struct OffsetMaskGrad {
  using A = typename AccumulatorType<T>::type;
  Shape s;
  const T *input, *offsets, *mask, *dcol;
  T *grad_offsets, *grad_mask;
  int64_t p0, chunk_pixels;

  TF_DCN_HD void operator()(int64_t i) const {
    const int64_t gk = i % (s.dims.deformable_groups * s.taps),
                  pp = i / (s.dims.deformable_groups * s.taps);
    const int64_t p = p0 + pp, g = gk / s.taps, k = gk - g * s.taps;
    const ConvSample<A> smp = SampleOf<A>(s, offsets, p, gk);
    T* doff = grad_offsets + p * 2 * s.dims.deformable_groups * s.taps + 2 * gk;
    T* dmsk = grad_mask ? grad_mask + p * s.dims.deformable_groups * s.taps + gk : nullptr;
    if (smp.kind != kSampleInside) {
      const A fill = smp.kind == kSampleNaN ? QuietNaN<A>() : A(0);
      doff[0] = T(fill);
      doff[1] = T(fill);
      if (dmsk) *dmsk = T(fill);
      return;
    }
    const T* image =
        input + (p / (s.dims.out_h * s.dims.out_w)) * s.dims.in_h * s.dims.in_w * s.dims.in_c;
    A sums[4] = {A(0), A(0), A(0), A(0)};
    for (int64_t c = g * s.in_c_per_dgroup; c < (g + 1) * s.in_c_per_dgroup; ++c) {
      const A gc = A(dcol[ColIndex(s, chunk_pixels, pp, k, c)]);
      for (int q = 0; q < 4; ++q) {
        if (smp.pixel[q] >= 0) sums[q] += gc * A(image[smp.pixel[q] * s.dims.in_c + c]);
      }
    }
    const A m = mask ? A(mask[p * s.dims.deformable_groups * s.taps + gk]) : A(1);
    doff[0] = T(m * ConvSampleDy(smp, sums));
    doff[1] = T(m * ConvSampleDx(smp, sums));
    if (dmsk) *dmsk = T(ConvSampleValue(smp, sums));
  }
};

// Fast input gradient: one thread per (pixel, tap, channel) adds its four corner shares
// atomically into the float accumulator acc[N, H, W, C].
template <typename T>
struct ScatterInputGrad {
  using A = typename AccumulatorType<T>::type;
  Shape s;
  const T *offsets, *mask, *dcol;
  A* acc;
  int64_t p0, chunk_pixels;

  TF_DCN_HD void operator()(int64_t i) const {
    const ColElement e = DecodeColElement(s, i);
    const int64_t pp = e.pp, gk = e.gk, k = e.k, c = e.c, p = p0 + pp;
    const ConvSample<A> smp = SampleOf<A>(s, offsets, p, gk);
    if (smp.kind != kSampleInside) return;
    A gc = A(dcol[ColIndex(s, chunk_pixels, pp, k, c)]);
    if (mask) gc *= A(mask[p * s.dims.deformable_groups * s.taps + gk]);
    A* image =
        acc + (p / (s.dims.out_h * s.dims.out_w)) * s.dims.in_h * s.dims.in_w * s.dims.in_c + c;
    for (int q = 0; q < 4; ++q) {
      if (smp.pixel[q] >= 0) AtomicAddTo(image + smp.pixel[q] * s.dims.in_c, smp.weight[q] * gc);
    }
  }
};

// Deterministic input gradient, step 1: entry e = ((pp*DG + g)*K + k)*4 + q is the share of
// corner q of sample (pp, g, k). Its key is the (image pixel, deformable group) it lands on, or
// `sentinel` (sorted last, ignored) when that corner reads nothing.
template <typename T>
struct InputGradKeys {
  using A = typename AccumulatorType<T>::type;
  Shape s;
  const T* offsets;
  uint64_t* keys;
  uint32_t* values;
  int64_t p0;
  uint64_t sentinel;

  TF_DCN_HD void operator()(int64_t e) const {
    const int q = static_cast<int>(e % 4);
    const int64_t gk = (e / 4) % (s.dims.deformable_groups * s.taps),
                  pp = e / (4 * s.dims.deformable_groups * s.taps);
    const int64_t p = p0 + pp, g = gk / s.taps;
    const ConvSample<A> smp = SampleOf<A>(s, offsets, p, gk);
    uint64_t key = sentinel;
    const int64_t pixel = CornerOf(smp.pixel, q);
    if (smp.kind == kSampleInside && pixel >= 0) {
      const int64_t n = p / (s.dims.out_h * s.dims.out_w);
      key = static_cast<uint64_t>(
          (n * s.dims.in_h * s.dims.in_w + pixel) * s.dims.deformable_groups + g);
    }
    keys[e] = key;
    values[e] = static_cast<uint32_t>(e);
  }
};

// Deterministic input gradient, step 2: one thread per (sorted entry, channel of the group). The
// thread at the first entry of a run of equal keys sums the run in order and adds it to its
// pixel; every other thread returns. Each pixel belongs to one run, so no two threads write the
// same element, and the sum order is fixed by the stable sort.
template <typename T>
struct GatherInputGrad {
  using A = typename AccumulatorType<T>::type;
  Shape s;
  const T *offsets, *mask, *dcol;
  const uint64_t* keys;    // sorted
  const uint32_t* values;  // entry ids in key order
  A* acc;
  int64_t p0, chunk_pixels, entries;
  uint64_t sentinel;

  TF_DCN_HD void operator()(int64_t t) const {
    const int64_t c_in = t % s.in_c_per_dgroup, first = t / s.in_c_per_dgroup;
    const uint64_t key = keys[first];
    if (key == sentinel || (first > 0 && keys[first - 1] == key)) return;
    const int64_t g = static_cast<int64_t>(key % static_cast<uint64_t>(s.dims.deformable_groups));
    const int64_t c = g * s.in_c_per_dgroup + c_in;
    A sum = A(0);
    for (int64_t j = first; j < entries && keys[j] == key; ++j) {
      const int64_t e = values[j];
      const int q = static_cast<int>(e % 4);
      const int64_t gk = (e / 4) % (s.dims.deformable_groups * s.taps),
                    pp = e / (4 * s.dims.deformable_groups * s.taps);
      const int64_t p = p0 + pp, k = gk % s.taps;
      const ConvSample<A> smp = SampleOf<A>(s, offsets, p, gk);
      A share = CornerOf(smp.weight, q) * A(dcol[ColIndex(s, chunk_pixels, pp, k, c)]);
      if (mask) share *= A(mask[p * s.dims.deformable_groups * s.taps + gk]);
      sum += share;
    }
    const int64_t image_pixel =
        static_cast<int64_t>(key / static_cast<uint64_t>(s.dims.deformable_groups));
    acc[image_pixel * s.dims.in_c + c] += sum;
  }
};

// d bias, step 1: partial[b][o] = sum of grad_out rows [b*R, (b+1)*R) in order.
template <typename T>
struct BiasPartials {
  using A = typename AccumulatorType<T>::type;
  const T* grad_output;
  A* partial;
  int64_t total, out_c;
  TF_DCN_HD void operator()(int64_t i) const {
    const int64_t o = i % out_c, b = i / out_c;
    const int64_t end = (b + 1) * kBiasRowsPerBlock < total ? (b + 1) * kBiasRowsPerBlock : total;
    A sum = A(0);
    for (int64_t r = b * kBiasRowsPerBlock; r < end; ++r) sum += A(grad_output[r * out_c + o]);
    partial[i] = sum;
  }
};

// d bias, step 2: grad_bias[o] = sum over blocks in order.
template <typename T>
struct BiasReduce {
  using A = typename AccumulatorType<T>::type;
  const A* partial;
  T* grad_bias;
  int64_t blocks, out_c;
  TF_DCN_HD void operator()(int64_t o) const {
    A sum = A(0);
    for (int64_t b = 0; b < blocks; ++b) sum += partial[b * out_c + o];
    grad_bias[o] = T(sum);
  }
};

template <typename T, typename A>
struct AddInto {  // acc[e] += A(part[e])
  const T* part;
  A* acc;
  TF_DCN_HD void operator()(int64_t e) const { acc[e] += A(part[e]); }
};

// Output pixels per chunk: the column buffers (col, plus dcol when `backward`) within the budget,
// and the deterministic path's entry ids within uint32.
inline int64_t ChunkPixels(const Shape& s, int64_t elem_bytes, bool backward, int64_t max_chunk) {
  const int64_t per_pixel = s.taps * s.dims.in_c * elem_bytes * (backward ? 2 : 1);
  int64_t chunk_pixels = kColumnBudgetBytes / (per_pixel > 0 ? per_pixel : 1);
  const int64_t max_entries = int64_t(1) << 31;
  if (chunk_pixels * 4 * s.dims.deformable_groups * s.taps > max_entries)
    chunk_pixels = max_entries / (4 * s.dims.deformable_groups * s.taps);
  if (max_chunk > 0 && chunk_pixels > max_chunk) chunk_pixels = max_chunk;
  if (chunk_pixels < 1) chunk_pixels = 1;
  if (chunk_pixels > s.out_pixels) chunk_pixels = s.out_pixels;
  return chunk_pixels;
}

// Pieces of the workspace. Built twice: once with base == nullptr to measure, once to carve.
template <typename T>
struct Workspace {
  using A = typename AccumulatorType<T>::type;
  T *col = nullptr, *dcol = nullptr, *kernel_part = nullptr;
  A *input_acc = nullptr, *kernel_acc = nullptr, *bias_part = nullptr;
  uint64_t *keys_in = nullptr, *keys_out = nullptr;
  uint32_t *values_in = nullptr, *values_out = nullptr;
  void* sort_temp = nullptr;
  int64_t sort_temp_bytes = 0, bytes = 0, chunk_pixels = 0, bias_blocks = 0;
  int key_bits = 1;
  uint64_t sentinel = 0;

  template <typename Exec>
  int Layout(Exec& exec, const Shape& s, bool backward, const GpuLaunch& launch, void* base) {
    constexpr bool kHalfType = !std::is_same<T, A>::value;
    const bool deterministic = launch.deterministic;
    chunk_pixels = ChunkPixels(s, sizeof(T), backward, launch.max_chunk);
    WorkspaceCarver carve(base);
    col = carve.Take<T>(chunk_pixels * s.taps * s.dims.in_c);
    if (backward) {
      dcol = carve.Take<T>(chunk_pixels * s.taps * s.dims.in_c);
      const int64_t kernel_size = s.taps * s.in_c_per_group * s.dims.out_c;
      if (kHalfType) {
        input_acc = carve.Take<A>(s.dims.batch * s.dims.in_h * s.dims.in_w * s.dims.in_c);
        kernel_part = carve.Take<T>(kernel_size);
        kernel_acc = carve.Take<A>(kernel_size);
      }
      bias_blocks = (s.out_pixels + kBiasRowsPerBlock - 1) / kBiasRowsPerBlock;
      bias_part = carve.Take<A>(bias_blocks * s.dims.out_c);
      if (deterministic) {
        const int64_t entries = chunk_pixels * s.dims.deformable_groups * s.taps * 4;
        sentinel = static_cast<uint64_t>(s.dims.batch * s.dims.in_h * s.dims.in_w *
                                         s.dims.deformable_groups);
        key_bits = KeyBits(sentinel);
        keys_in = carve.Take<uint64_t>(entries);
        keys_out = carve.Take<uint64_t>(entries);
        values_in = carve.Take<uint32_t>(entries);
        values_out = carve.Take<uint32_t>(entries);
        if (const int e = exec.SortPairsTempBytes(entries, key_bits, &sort_temp_bytes)) return e;
        sort_temp = carve.Take<char>(sort_temp_bytes);
      }
    }
    bytes = carve.bytes();
    return kGpuOk;
  }
};

inline int RunGemm(const GpuLaunch& launch, const GemmCall& call) {
  if (!launch.gemm) return kGpuNoGemm;
  return launch.gemm(launch.gemm_context, call) == 0 ? kGpuOk : kGpuGemmFailed;
}

template <typename Exec, typename T>
int WorkspaceBytes(const DeformConv2DDims& d, const GpuLaunch& launch, bool backward,
                   int64_t* bytes) {
  Exec exec(launch);
  Workspace<T> ws;
  TF_DCN_GPU_TRY(ws.Layout(exec, Shape(d), backward, launch, nullptr));
  *bytes = ws.bytes;
  return kGpuOk;
}

// `type` is passed down because the GEMM needs it and half/bfloat16 share sizeof.
template <typename Exec, typename T>
int Forward(ElementType type, const DeformConv2DDims& d, const GpuLaunch& launch,
            const DeformConv2DForwardArgs& a, void* workspace, int64_t workspace_bytes) {
  const Shape s(d);
  if (s.out_pixels == 0 || s.dims.out_c == 0) return kGpuOk;
  Exec exec(launch);
  Workspace<T> ws;
  TF_DCN_GPU_TRY(ws.Layout(exec, s, false, launch, workspace));
  if (ws.bytes > workspace_bytes) return kGpuWorkspaceTooSmall;
  const T* input = static_cast<const T*>(a.input);
  const T* offsets = static_cast<const T*>(a.offsets);
  const T* mask = static_cast<const T*>(a.mask);
  const T* kernel = static_cast<const T*>(a.kernel);
  const T* bias = static_cast<const T*>(a.bias);
  T* output = static_cast<T*>(a.output);
  const int64_t kernel_rows = s.taps * s.in_c_per_group;
  for (int64_t p0 = 0; p0 < s.out_pixels; p0 += ws.chunk_pixels) {
    const int64_t chunk_pixels =
        s.out_pixels - p0 < ws.chunk_pixels ? s.out_pixels - p0 : ws.chunk_pixels;
    T* out = output + p0 * s.dims.out_c;
    TF_DCN_GPU_TRY(exec.ForEach(chunk_pixels * s.taps * s.dims.in_c,
                                Im2Col<T>{s, input, offsets, mask, ws.col, p0, chunk_pixels}));
    if (bias)
      TF_DCN_GPU_TRY(
          exec.ForEach(chunk_pixels * s.dims.out_c, FillBias<T>{bias, out, s.dims.out_c}));
    GemmCall g{type,
               false,
               false,
               s.out_c_per_group,
               chunk_pixels,
               kernel_rows,
               kernel,
               s.dims.out_c,
               s.out_c_per_group,
               ws.col,
               kernel_rows,
               chunk_pixels * kernel_rows,
               out,
               s.dims.out_c,
               s.out_c_per_group,
               s.dims.groups,
               1.0,
               bias ? 1.0 : 0.0};
    TF_DCN_GPU_TRY(RunGemm(launch, g));
  }
  return kGpuOk;
}

// The two matrix products of one backward chunk: dcol from grad_out, and the kernel gradient
// (accumulated into grad_kernel, or written to the workspace's kernel_part for half types).
template <typename T>
int ChunkKernelGemms(ElementType type, const Shape& s, const GpuLaunch& launch, const T* gout,
                     const T* kernel, T* grad_kernel, const Workspace<T>& ws,
                     int64_t chunk_pixels) {
  using A = typename AccumulatorType<T>::type;
  constexpr bool kHalfType = !std::is_same<T, A>::value;
  const int64_t kernel_rows = s.taps * s.in_c_per_group;
  // dcol^T (kernel_rows x chunk_pixels) = W_grp (kernel_rows x Coutg) * G^T (Coutg x chunk_pixels)
  GemmCall gd{type,          true,         false,
              kernel_rows,   chunk_pixels, s.out_c_per_group,
              kernel,        s.dims.out_c, s.out_c_per_group,
              gout,          s.dims.out_c, s.out_c_per_group,
              ws.dcol,       kernel_rows,  chunk_pixels * kernel_rows,
              s.dims.groups, 1.0,          0.0};
  TF_DCN_GPU_TRY(RunGemm(launch, gd));
  // dW^T (Coutg x kernel_rows) += G^T (Coutg x chunk_pixels) * col (chunk_pixels x kernel_rows)
  GemmCall gw{type,
              false,
              true,
              s.out_c_per_group,
              kernel_rows,
              chunk_pixels,
              gout,
              s.dims.out_c,
              s.out_c_per_group,
              ws.col,
              kernel_rows,
              chunk_pixels * kernel_rows,
              kHalfType ? static_cast<void*>(ws.kernel_part) : static_cast<void*>(grad_kernel),
              s.dims.out_c,
              s.out_c_per_group,
              s.dims.groups,
              1.0,
              kHalfType ? 0.0 : 1.0};
  TF_DCN_GPU_TRY(RunGemm(launch, gw));
  return kGpuOk;
}

template <typename Exec, typename T>
int Backward(ElementType type, const DeformConv2DDims& d, const GpuLaunch& launch,
             const DeformConv2DBackwardArgs& a, void* workspace, int64_t workspace_bytes) {
  using A = typename AccumulatorType<T>::type;
  constexpr bool kHalfType = !std::is_same<T, A>::value;
  const Shape s(d);
  Exec exec(launch);
  Workspace<T> ws;
  TF_DCN_GPU_TRY(ws.Layout(exec, s, true, launch, workspace));
  if (ws.bytes > workspace_bytes) return kGpuWorkspaceTooSmall;
  const T* input = static_cast<const T*>(a.input);
  const T* offsets = static_cast<const T*>(a.offsets);
  const T* mask = static_cast<const T*>(a.mask);
  const T* kernel = static_cast<const T*>(a.kernel);
  const T* grad_output = static_cast<const T*>(a.grad_output);
  T* grad_input = static_cast<T*>(a.grad_input);
  T* grad_kernel = static_cast<T*>(a.grad_kernel);
  T* grad_bias = static_cast<T*>(a.grad_bias);
  const int64_t input_size = s.dims.batch * s.dims.in_h * s.dims.in_w * s.dims.in_c,
                kernel_size = s.taps * s.in_c_per_group * s.dims.out_c;

  A* input_acc = kHalfType ? ws.input_acc : reinterpret_cast<A*>(grad_input);
  A* kernel_acc = kHalfType ? ws.kernel_acc : reinterpret_cast<A*>(grad_kernel);
  TF_DCN_GPU_TRY(exec.Zero(input_acc, input_size * int64_t(sizeof(A))));
  TF_DCN_GPU_TRY(exec.Zero(kernel_acc, kernel_size * int64_t(sizeof(A))));

  if (grad_bias) {
    if (s.out_pixels == 0) {
      TF_DCN_GPU_TRY(exec.Zero(grad_bias, s.dims.out_c * int64_t(sizeof(T))));
    } else {
      TF_DCN_GPU_TRY(
          exec.ForEach(ws.bias_blocks * s.dims.out_c,
                       BiasPartials<T>{grad_output, ws.bias_part, s.out_pixels, s.dims.out_c}));
      TF_DCN_GPU_TRY(exec.ForEach(
          s.dims.out_c, BiasReduce<T>{ws.bias_part, grad_bias, ws.bias_blocks, s.dims.out_c}));
    }
  }

  for (int64_t p0 = 0; p0 < s.out_pixels; p0 += ws.chunk_pixels) {
    const int64_t chunk_pixels =
        s.out_pixels - p0 < ws.chunk_pixels ? s.out_pixels - p0 : ws.chunk_pixels;
    const T* gout = grad_output + p0 * s.dims.out_c;
    const int64_t samples = chunk_pixels * s.dims.deformable_groups * s.taps,
                  elements = chunk_pixels * s.taps * s.dims.in_c;
    if (s.dims.out_c == 0) {  // no output channels: the column gradient is zero
      TF_DCN_GPU_TRY(exec.Zero(ws.dcol, elements * int64_t(sizeof(T))));
    } else {
      TF_DCN_GPU_TRY(
          exec.ForEach(elements, Im2Col<T>{s, input, offsets, mask, ws.col, p0, chunk_pixels}));
      TF_DCN_GPU_TRY(
          ChunkKernelGemms<T>(type, s, launch, gout, kernel, grad_kernel, ws, chunk_pixels));
    }
    if (kHalfType && s.dims.out_c > 0) {
      TF_DCN_GPU_TRY(exec.ForEach(kernel_size, AddInto<T, A>{ws.kernel_part, kernel_acc}));
    }
    TF_DCN_GPU_TRY(exec.ForEach(
        samples,
        OffsetMaskGrad<T>{s, input, offsets, mask, ws.dcol, static_cast<T*>(a.grad_offsets),
                          static_cast<T*>(a.grad_mask), p0, chunk_pixels}));
    if (!launch.deterministic) {
      TF_DCN_GPU_TRY(exec.ForEach(
          elements, ScatterInputGrad<T>{s, offsets, mask, ws.dcol, input_acc, p0, chunk_pixels}));
      continue;
    }
    const int64_t entries = samples * 4;
    TF_DCN_GPU_TRY(exec.ForEach(
        entries, InputGradKeys<T>{s, offsets, ws.keys_in, ws.values_in, p0, ws.sentinel}));
    TF_DCN_GPU_TRY(exec.SortPairs(ws.sort_temp, ws.sort_temp_bytes, ws.keys_in, ws.keys_out,
                                  ws.values_in, ws.values_out, entries, ws.key_bits));
    TF_DCN_GPU_TRY(
        exec.ForEach(entries * s.in_c_per_dgroup,
                     GatherInputGrad<T>{s, offsets, mask, ws.dcol, ws.keys_out, ws.values_out,
                                        input_acc, p0, chunk_pixels, entries, ws.sentinel}));
  }
  if (kHalfType) {
    TF_DCN_GPU_TRY(exec.ForEach(input_size, CastTo<T, A>{input_acc, grad_input}));
    TF_DCN_GPU_TRY(exec.ForEach(kernel_size, CastTo<T, A>{kernel_acc, grad_kernel}));
  }
  return kGpuOk;
}

}  // namespace conv_gpu
}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_DEFORM_CONV2D_LAUNCH_H_
