// CPU kernels of the deformable (PS-)RoI pooling (docs/semantics.md section 2), free of
// TensorFlow headers like the convolution's (deform_conv2d_cpu_kernels.h): raw pointers, the
// dims struct and the op's thread pool as a CpuParallel. deform_psroi_pool_cpu.cc hands them
// over from the OpKernel.
//
// Forward (Forward, PoolBin): the work units are the output bins (RoI, ph, pw), spread over the
// thread pool. A unit walks the samples of its bin once per offset class and pools every output
// channel of that class at each kept sample; each unit owns its output row, so there are no
// shared writes. Samples are generated on the fly and never stored, so memory does not grow with
// sample_per_part.
//
// Backward, without atomics and bitwise reproducible whatever the thread count:
//   * fused (FusedBackward, FusedRoiBackward, BinCells), when a few private float copies of the
//     features gradient fit the 32 MiB workspace: the RoIs are cut into ranges (their number set
//     by the sizes only), each range accumulating into its copy; every (bin, class) is walked
//     once, its kept samples' corner weights and position-derivative coefficients summed per
//     pixel, and each pixel's channels visited once for both gradients; the copies are summed in
//     range order. Each RoI owns its offsets gradient.
//   * otherwise two passes. Features (FeaturesGradient, ScatterChannelRange, ScatterBin): feature
//     channel c receives gradient only from output channel c / group_size^2, so the channels are
//     split into one contiguous range per thread and every range is written by one thread only,
//     visiting RoIs, bins and samples in a fixed order (every range walks all RoIs). Half types
//     accumulate in a float32 copy of the gradient (N*H*W*C floats), float32/float64 in place.
//     Offsets (OffsetsGradient, RoiOffsetsGradient, BinOffsetsGradient): the RoIs are
//     distributed over the pool and each one accumulates into a private buffer.
// The per-bin sample counts of the forward pass are recomputed, so the forward op has no hidden
// outputs.
//
// Temporary memory: the fused path's copies (at most 32 MiB); the two-pass path N*H*W*C floats
// for half types, otherwise O(C) per thread.
//
// Included once per instruction set by cpu_kernels_<isa>.cc (through cpu_kernels_isa.h), which
// defines TF_DCN_CPU_ISA, the namespace of the entry points at the end of this file.
#ifndef TF_DCN_CPU_ISA
#error "define TF_DCN_CPU_ISA before including deform_psroi_pool_cpu_kernels.h"
#endif

#include <algorithm>
#include <initializer_list>
#include <type_traits>
#include <vector>

#include "Eigen/Core"
#include "cc/kernels/cpu_dispatch.h"  // CpuParallel
#include "cc/kernels/cpu_parallel_product.h"  // SumCopiesInOrder
#include "cc/kernels/dcn_common.h"
#include "cc/kernels/deform_psroi_pool_geometry.h"

namespace tf_dcn {
namespace TF_DCN_CPU_ISA {
namespace {

// One RoI: its validated batch index and its box geometry.
template <typename A>
struct RoiInfo {
  int64_t batch;
  PoolRoi<A> geom;
};

template <typename A, typename TR>
RoiInfo<A> ResolveRoi(const DeformPSRoIPoolDims& d, const TR* rois, int64_t r) {
  const TR* box = rois + r * 5;
  RoiInfo<A> info;
  // The op shim checked that box[0] is an integer in [0, N).
  info.batch = static_cast<int64_t>(box[0]);
  info.geom = MakePoolRoi<A, TR>(box[1], box[2], box[3], box[4], A(d.spatial_scale), d.pooled_size,
                                 d.sample_per_part);
  return info;
}

// A bin of one RoI for one offset class: its first sample position, or nan_origin when the box
// is not finite.
template <typename A>
struct BinOrigin {
  A h0, w0;
  bool nan_origin;
};

// roi_offsets: offsets of this RoI ([part, part, 2*num_classes]) or nullptr without offsets.
template <typename A, typename T>
BinOrigin<A> MakeBinOrigin(const DeformPSRoIPoolDims& d, const PoolRoi<A>& g, const T* roi_offsets,
                           int64_t ph, int64_t pw, int64_t cls) {
  BinOrigin<A> b;
  b.h0 = b.w0 = A(0);
  b.nan_origin = !g.finite;
  if (b.nan_origin) return b;
  PoolBinOrigin(d, g, roi_offsets, ph, pw, cls, &b.h0, &b.w0);
  return b;
}

// Calls fn(sample) for every sample of the bin, kept, skipped or NaN, in row-major order. Nothing
// is stored, so the memory use does not depend on sample_per_part.
template <typename A, typename Fn>
inline void ForEachSample(const DeformPSRoIPoolDims& d, const PoolRoi<A>& g, const BinOrigin<A>& b,
                          Fn fn) {
  for (int64_t iy = 0; iy < d.sample_per_part; ++iy) {
    for (int64_t ix = 0; ix < d.sample_per_part; ++ix) {
      fn(PoolBinSample(g, b.h0, b.w0, iy, ix, d.height, d.width));
    }
  }
}

// Number of kept samples of a bin; -1 when the bin is NaN (non-finite box or a NaN position).
template <typename A>
int64_t CountBin(const DeformPSRoIPoolDims& d, const PoolRoi<A>& g, const BinOrigin<A>& b) {
  if (b.nan_origin) return -1;
  int64_t count = 0;
  bool nan = false;
  ForEachSample(d, g, b, [&](const PoolSample<A>& s) {
    count += s.kind == kPoolKept;
    nan = nan || s.kind == kPoolNaN;
  });
  return nan ? -1 : count;
}

// One pixel a bin reads, with its bilinear weight and its position-derivative coefficients
// summed over the bin's kept samples (the four corners of a sample are ordered as in
// MakePoolSample; d value / d x = sum_q cx_q * u_q and d value / d y = sum_q cy_q * u_q). Summing
// per pixel first visits each pixel's channels once per bin instead of once per corner hit: the
// samples of a bin are usually less than a pixel apart, so a 4x4-sample bin reads about 16
// distinct pixels instead of 64 corners.
//
// The *_poison flags keep what sample-by-sample sums do with a non-finite feature value: a term
// with a zero factor (a corner of weight 0, at integer positions and the borders) or terms of both
// signs give NaN there. The consumers add 0 * value for a poisoned sum, which is NaN exactly when
// the value is not finite and 0 otherwise.
template <typename A>
struct PoolCell {
  int64_t pixel;
  A weight, cx, cy;
  bool weight_poison, cx_poison, cy_poison;
};

// The cells of one (bin, class), with the bin's kept-sample count and NaN flag, and the scratch
// that builds them (reused from bin to bin).
template <typename A>
struct BinCells {
  int64_t kept = 0;
  bool nan = false;
  std::vector<PoolCell<A>> cells;
  std::vector<PoolSample<A>> samples;
  std::vector<int64_t> slot;     // grid cell -> index into cells, -1 when empty
  std::vector<uint8_t> signs;    // per cell: kPos/kNeg/kZero bits of cx (low) and cy (high)
};

constexpr uint8_t kCoefPos = 1, kCoefNeg = 2, kCoefZero = 4;

template <typename A>
inline uint8_t CoefSign(A c) {
  return c > A(0) ? kCoefPos : (c < A(0) ? kCoefNeg : kCoefZero);
}

inline bool SignsPoison(uint8_t bits) {
  return (bits & kCoefZero) != 0 || (bits & (kCoefPos | kCoefNeg)) == (kCoefPos | kCoefNeg);
}

// Walks the bin's samples once and sums its corners per pixel, over a dense grid of the pixels the
// samples span (or one cell per corner hit when that grid would be mostly empty).
template <typename A>
void BuildBinCells(const DeformPSRoIPoolDims& d, const PoolRoi<A>& g, const BinOrigin<A>& b,
                   BinCells<A>* out) {
  out->cells.clear();
  out->samples.clear();
  out->kept = 0;
  out->nan = b.nan_origin;
  if (out->nan) return;
  ForEachSample(d, g, b, [&](const PoolSample<A>& s) {
    out->nan = out->nan || s.kind == kPoolNaN;
    if (s.kind == kPoolKept) out->samples.push_back(s);
  });
  out->kept = int64_t(out->samples.size());
  if (out->nan || out->kept == 0) return;
  int64_t y_lo = d.height, y_hi = -1, x_lo = d.width, x_hi = -1;
  for (const PoolSample<A>& s : out->samples) {
    y_lo = std::min(y_lo, s.y0);
    y_hi = std::max(y_hi, s.y0 + int64_t(s.pixel[1] != s.pixel[0]));
    x_lo = std::min(x_lo, s.x0);
    x_hi = std::max(x_hi, s.x0 + int64_t(s.pixel[2] != s.pixel[0]));
  }
  const int64_t grid_w = x_hi - x_lo + 1, area = (y_hi - y_lo + 1) * grid_w;
  const bool merge = area <= 8 * out->kept;
  if (merge) out->slot.assign(area, -1);
  out->signs.clear();
  for (const PoolSample<A>& s : out->samples) {
    const A hx = A(1) - s.dx, hy = A(1) - s.dy;
    const A cx[4] = {-hy, -s.dy, hy, s.dy};
    const A cy[4] = {-hx, hx, -s.dx, s.dx};
    // Grid offsets of the corners (y0,x0), (y1,x0), (y0,x1), (y1,x1).
    const int64_t base = (s.y0 - y_lo) * grid_w + (s.x0 - x_lo);
    const int64_t down = s.pixel[1] != s.pixel[0] ? grid_w : 0;
    const int64_t right = s.pixel[2] != s.pixel[0] ? 1 : 0;
    const int64_t grid[4] = {base, base + down, base + right, base + down + right};
    for (int q = 0; q < 4; ++q) {
      int64_t index;
      if (merge) {
        int64_t& slot = out->slot[grid[q]];
        if (slot < 0) {
          slot = int64_t(out->cells.size());
          out->cells.push_back({s.pixel[q], A(0), A(0), A(0), false, false, false});
          out->signs.push_back(0);
        }
        index = slot;
      } else {
        index = int64_t(out->cells.size());
        out->cells.push_back({s.pixel[q], A(0), A(0), A(0), false, false, false});
        out->signs.push_back(0);
      }
      PoolCell<A>& cell = out->cells[index];
      cell.weight += s.weight[q];
      cell.weight_poison = cell.weight_poison || s.weight[q] == A(0);
      cell.cx += cx[q];
      cell.cy += cy[q];
      out->signs[index] |= uint8_t(CoefSign(cx[q]) | (CoefSign(cy[q]) << 3));
    }
  }
  for (size_t i = 0; i < out->cells.size(); ++i) {
    out->cells[i].cx_poison = SignsPoison(out->signs[i] & 7);
    out->cells[i].cy_poison = SignsPoison(uint8_t(out->signs[i] >> 3));
  }
}

// The fused backward of one cell: grad[pixel, channel0 + j*GG] += weight * gs[j] and returns
// e = sum_j gd[j] * f[pixel, channel0 + j*GG] (the cell's share of the offsets gradient).
template <bool kUnitStride, typename T, typename A>
inline A BackwardCell(const PoolCell<A>& cell, const T* image, int64_t C, int64_t channel0,
                      int64_t GG, int64_t n, const A* gd, const A* gs, A* gimage) {
  const int64_t stride = kUnitStride ? 1 : GG;
  const T* f = image + cell.pixel * C + channel0;
  A* dst = gimage + cell.pixel * C + channel0;
  const A w = cell.weight;
  A e = A(0);
  for (int64_t j = 0; j < n; ++j) {
    e += gd[j] * A(f[j * stride]);
    dst[j * stride] += w * gs[j];
  }
  if (cell.weight_poison) {
    const A zero = A(0);
    for (int64_t j = 0; j < n; ++j) dst[j * stride] += zero * gs[j];
  }
  return e;
}

// The channel loops below visit output channels j of one class, i.e. feature channels
// channel0 + j*GG. With group_size = 1 (deformable RoI pooling) they are contiguous: the
// kUnitStride instantiation lets the compiler vectorise them.

// acc[j] += sum_q weight[q] * f[pixel[q], channel0 + j*GG] for j in [0, n).
template <bool kUnitStride, typename T, typename A>
inline void AccumulateSample(const PoolSample<A>& s, const T* image, int64_t C, int64_t channel0,
                             int64_t GG, int64_t n, A* acc) {
  const int64_t stride = kUnitStride ? 1 : GG;
  const T* p0 = image + s.pixel[0] * C + channel0;
  const T* p1 = image + s.pixel[1] * C + channel0;
  const T* p2 = image + s.pixel[2] * C + channel0;
  const T* p3 = image + s.pixel[3] * C + channel0;
  const A w0 = s.weight[0], w1 = s.weight[1], w2 = s.weight[2], w3 = s.weight[3];
  for (int64_t j = 0; j < n; ++j) {
    const int64_t k = j * stride;
    acc[j] += w0 * A(p0[k]) + w1 * A(p1[k]) + w2 * A(p2[k]) + w3 * A(p3[k]);
  }
}

// grad[pixel[q], channel0 + j*GG] += g[j] * weight[q], corners in order q = 0..3.
template <bool kUnitStride, typename A>
inline void ScatterSample(const PoolSample<A>& s, const A* g, int64_t C, int64_t channel0,
                          int64_t GG, int64_t n, A* gimage) {
  const int64_t stride = kUnitStride ? 1 : GG;
  for (int q = 0; q < 4; ++q) {
    A* dst = gimage + s.pixel[q] * C + channel0;
    const A w = s.weight[q];
    for (int64_t j = 0; j < n; ++j) dst[j * stride] += g[j] * w;
  }
}

// dots[q] = sum_j g[j] * f[pixel[q], channel0 + j*GG]. By linearity, PoolSampleDx/Dy of these
// sums equal the g-weighted sums of the per-channel derivatives.
template <bool kUnitStride, typename T, typename A>
inline void CornerDots(const PoolSample<A>& s, const T* image, int64_t C, int64_t channel0,
                       int64_t GG, int64_t n, const A* g, A dots[4]) {
  const int64_t stride = kUnitStride ? 1 : GG;
  const T* p0 = image + s.pixel[0] * C + channel0;
  const T* p1 = image + s.pixel[1] * C + channel0;
  const T* p2 = image + s.pixel[2] * C + channel0;
  const T* p3 = image + s.pixel[3] * C + channel0;
  A d0 = A(0), d1 = A(0), d2 = A(0), d3 = A(0);
  for (int64_t j = 0; j < n; ++j) {
    const int64_t k = j * stride;
    d0 += g[j] * A(p0[k]);
    d1 += g[j] * A(p1[k]);
    d2 += g[j] * A(p2[k]);
    d3 += g[j] * A(p3[k]);
  }
  dots[0] = d0;
  dots[1] = d1;
  dots[2] = d2;
  dots[3] = d3;
}

// Cost estimate for ParallelFor: the product of the factors, saturated (absurd attribute values
// must not overflow it).
inline int64_t Cost(std::initializer_list<double> factors) {
  double c = 1.0;
  for (double f : factors) c *= f;
  return c < 1e15 ? static_cast<int64_t>(c) : static_cast<int64_t>(1e15);
}

template <typename T>
const T* RoiOffsets(const DeformPSRoIPoolDims& d, const T* offsets, int64_t r) {
  return d.use_offsets ? offsets + r * d.part_size * d.part_size * d.offset_channels() : nullptr;
}

// Output bin (r, ph, pw) of every class: out[cls*Ce + j] = mean of the kept samples of class
// cls's channels (0 when none is kept, NaN for a NaN bin). acc holds Ce accumulators.
template <typename T, typename TR, typename A>
void PoolBin(const DeformPSRoIPoolDims& d, const T* features, const TR* rois, const T* offsets,
             int64_t r, int64_t ph, int64_t pw, A* acc, T* out) {
  const int64_t C = d.channels, GG = d.group_cells(), Ce = d.channels_each_class();
  const int64_t P = d.pooled_size;
  const RoiInfo<A> roi = ResolveRoi<A, TR>(d, rois, r);
  const T* image = features + roi.batch * d.plane_size();
  const T* roi_off = RoiOffsets(d, offsets, r);
  const int64_t gidx =
      PoolGroupIndex(ph, d.group_size, P) * d.group_size + PoolGroupIndex(pw, d.group_size, P);
  for (int64_t cls = 0; cls < d.num_classes; ++cls) {
    T* out_cls = out + cls * Ce;
    const BinOrigin<A> origin = MakeBinOrigin(d, roi.geom, roi_off, ph, pw, cls);
    std::fill(acc, acc + Ce, A(0));
    // Channel of output ctop = cls*Ce + j is (ctop*G + gh)*G + gw = ctop*GG + gidx.
    const int64_t channel0 = cls * Ce * GG + gidx;
    int64_t kept = 0;
    bool nan = origin.nan_origin;
    if (!nan) {
      ForEachSample(d, roi.geom, origin, [&](const PoolSample<A>& s) {
        if (s.kind == kPoolNaN) nan = true;
        if (s.kind != kPoolKept || nan) return;
        ++kept;
        if (GG == 1) {
          AccumulateSample<true>(s, image, C, channel0, GG, Ce, acc);
        } else {
          AccumulateSample<false>(s, image, C, channel0, GG, Ce, acc);
        }
      });
    }
    if (nan || kept == 0) {
      std::fill(out_cls, out_cls + Ce, T(nan ? QuietNaN<A>() : A(0)));
      continue;
    }
    const A count = A(kept);
    for (int64_t j = 0; j < Ce; ++j) out_cls[j] = T(acc[j] / count);
  }
}

// output [R, P, P, output_dim] (see deform_psroi_pool_functor.h).
template <typename T, typename TR>
void Forward(const DeformPSRoIPoolDims& d, const CpuParallel& parallel, const T* features,
             const TR* rois, const T* offsets, T* output) {
  using A = typename AccumulatorType<T>::type;
  const int64_t units = d.num_rois * d.bins();
  if (units == 0) return;
  const int64_t Ce = d.channels_each_class(), P = d.pooled_size;
  const int64_t cost =
      Cost({double(d.num_classes), double(d.samples_per_bin()), 60.0 + 12.0 * double(Ce)});
  ParallelShares(parallel, units, cost, [&](int64_t first, int64_t last) {
    std::vector<A> acc(Ce);
    for (int64_t u = first; u < last; ++u) {
      const int64_t r = u / d.bins(), ph = (u / P) % P, pw = u % P;
      PoolBin<T, TR, A>(d, features, rois, offsets, r, ph, pw, acc.data(),
                        output + u * d.output_dim);
    }
  });
}

// Bin (r, ph, pw)'s share of the features gradient in feature channels [c0, c1): for each class
// with output channels there, grad/count is scattered to the four corners of every kept sample.
// g holds Ce values.
template <typename T, typename TR, typename A>
void ScatterBin(const DeformPSRoIPoolDims& d, const RoiInfo<A>& roi, const T* roi_off,
                const T* grad_output, int64_t r, int64_t ph, int64_t pw, int64_t c0, int64_t c1,
                A* g, A* gimage) {
  const int64_t C = d.channels, GG = d.group_cells(), D = d.output_dim;
  const int64_t Ce = d.channels_each_class(), P = d.pooled_size;
  const int64_t gidx =
      PoolGroupIndex(ph, d.group_size, P) * d.group_size + PoolGroupIndex(pw, d.group_size, P);
  // Output channels ctop whose feature channel ctop*GG + gidx is in [c0, c1).
  if (c1 - 1 < gidx) return;
  const int64_t lo = c0 <= gidx ? 0 : (c0 - gidx + GG - 1) / GG;
  const int64_t hi = std::min(D, (c1 - 1 - gidx) / GG + 1);
  if (lo >= hi) return;
  const T* gout = grad_output + ((r * P + ph) * P + pw) * D;
  for (int64_t cls = lo / Ce; cls * Ce < hi; ++cls) {
    const BinOrigin<A> origin = MakeBinOrigin(d, roi.geom, roi_off, ph, pw, cls);
    const int64_t kept = CountBin(d, roi.geom, origin);
    if (kept <= 0) continue;  // NaN bin or nothing kept
    const int64_t t0 = std::max(lo, cls * Ce), t1 = std::min(hi, (cls + 1) * Ce);
    const A count = A(kept);
    for (int64_t t = t0; t < t1; ++t) g[t - t0] = A(gout[t]) / count;
    const int64_t channel0 = t0 * GG + gidx;
    ForEachSample(d, roi.geom, origin, [&](const PoolSample<A>& s) {
      if (s.kind != kPoolKept) return;
      if (GG == 1) {
        ScatterSample<true>(s, g, C, channel0, GG, t1 - t0, gimage);
      } else {
        ScatterSample<false>(s, g, C, channel0, GG, t1 - t0, gimage);
      }
    });
  }
}

// Feature channels [c0, c1) of the features gradient (accumulated in gacc), from every bin of
// every RoI in a fixed order; converted into grad_features for half types.
template <typename T, typename TR, typename A>
void ScatterChannelRange(const DeformPSRoIPoolDims& d, const TR* rois, const T* offsets,
                         const T* grad_output, int64_t c0, int64_t c1, A* g, A* gacc,
                         T* grad_features) {
  const int64_t C = d.channels, P = d.pooled_size;
  const int64_t pixels = d.batch * d.height * d.width;
  for (int64_t p = 0; p < pixels; ++p) std::fill(gacc + p * C + c0, gacc + p * C + c1, A(0));
  for (int64_t r = 0; r < d.num_rois; ++r) {
    const RoiInfo<A> roi = ResolveRoi<A, TR>(d, rois, r);
    if (!roi.geom.finite) continue;  // NaN bins pass no gradient to the features
    A* gimage = gacc + roi.batch * d.plane_size();
    const T* roi_off = RoiOffsets(d, offsets, r);
    for (int64_t ph = 0; ph < P; ++ph) {
      for (int64_t pw = 0; pw < P; ++pw) {
        ScatterBin<T, TR, A>(d, roi, roi_off, grad_output, r, ph, pw, c0, c1, g, gimage);
      }
    }
  }
  if constexpr (!std::is_same_v<T, A>) {
    for (int64_t p = 0; p < pixels; ++p) {
      for (int64_t c = c0; c < c1; ++c) grad_features[p * C + c] = T(gacc[p * C + c]);
    }
  }
}

// grad_features [N, H, W, C]: one contiguous channel range per shard.
template <typename T, typename TR>
void FeaturesGradient(const DeformPSRoIPoolDims& d, const CpuParallel& parallel, const TR* rois,
                      const T* offsets, const T* grad_output, T* grad_features) {
  using A = typename AccumulatorType<T>::type;
  const int64_t C = d.channels, D = d.output_dim;
  const int64_t pixels = d.batch * d.height * d.width;
  if (pixels * C == 0) return;
  std::vector<A> storage(std::is_same_v<T, A> ? 0 : pixels * C);
  A* gacc;
  if constexpr (std::is_same_v<T, A>) {
    gacc = grad_features;
  } else {
    gacc = storage.data();
  }
  const int64_t threads = std::max(1, parallel.num_threads);
  const int64_t shards = std::min<int64_t>(C, threads);
  // Every shard walks every bin (twice) and scatters its share of the channels.
  const int64_t shard_cost =
      Cost({double(d.num_rois) * double(d.bins()) * double(d.samples_per_bin()),
            120.0 * double(d.num_classes) + 8.0 * double(D / shards + 1)}) +
      pixels;
  parallel.parallel_for(shards, shard_cost, [&](int64_t s0, int64_t s1) {
    std::vector<A> g(d.channels_each_class());
    for (int64_t shard = s0; shard < s1; ++shard) {
      const int64_t c0 = C * shard / shards, c1 = C * (shard + 1) / shards;
      ScatterChannelRange<T, TR, A>(d, rois, offsets, grad_output, c0, c1, g.data(), gacc,
                                    grad_features);
    }
  });
}

// The offsets gradient of one (bin, class): the g-weighted position derivatives summed over
// the kept samples (gx, gy), how many were kept, and whether the bin is NaN.
template <typename A>
struct BinOffsetsGrad {
  A gx, gy;
  int64_t kept;
  bool nan;
};

template <typename T, typename A>
BinOffsetsGrad<A> BinOffsetsGradient(const DeformPSRoIPoolDims& d, const PoolRoi<A>& geom,
                                     const BinOrigin<A>& origin, const T* image, int64_t channel0,
                                     const A* g) {
  const int64_t C = d.channels, GG = d.group_cells(), Ce = d.channels_each_class();
  BinOffsetsGrad<A> b{A(0), A(0), 0, origin.nan_origin};
  if (b.nan) return b;
  ForEachSample(d, geom, origin, [&](const PoolSample<A>& s) {
    if (s.kind == kPoolNaN) b.nan = true;
    if (s.kind != kPoolKept || b.nan) return;
    ++b.kept;
    A dots[4];
    if (GG == 1) {
      CornerDots<true>(s, image, C, channel0, GG, Ce, g, dots);
    } else {
      CornerDots<false>(s, image, C, channel0, GG, Ce, g, dots);
    }
    b.gx += PoolSampleDx(s, dots);
    b.gy += PoolSampleDy(s, dots);
  });
  return b;
}

// Calls fn(ph, pw, cls, gidx, gout, dcell) for every (bin, class) of RoI r, in order: gidx is
// the bin's position-sensitive group, gout the bin's grad_output row ([output_dim]) and dcell
// the class's (x, y) pair of the bin's part cell in doff ([part, part, 2*num_classes]).
template <typename A, typename T, typename Fn>
void ForEachRoiBinClass(const DeformPSRoIPoolDims& d, const T* grad_output, int64_t r, A* doff,
                        Fn fn) {
  const int64_t P = d.pooled_size;
  for (int64_t ph = 0; ph < P; ++ph) {
    for (int64_t pw = 0; pw < P; ++pw) {
      const int64_t gidx =
          PoolGroupIndex(ph, d.group_size, P) * d.group_size + PoolGroupIndex(pw, d.group_size, P);
      const int64_t part =
          PoolPartIndex(ph, d.part_size, P) * d.part_size + PoolPartIndex(pw, d.part_size, P);
      const T* gout = grad_output + ((r * P + ph) * P + pw) * d.output_dim;
      for (int64_t cls = 0; cls < d.num_classes; ++cls) {
        fn(ph, pw, cls, gidx, gout, doff + part * d.offset_channels() + 2 * cls);
      }
    }
  }
}

// RoI r's offsets gradient [part, part, 2*num_classes] into doff (cells values), from its bins;
// several bins may add into one part cell. g holds Ce values.
template <typename T, typename TR, typename A>
void RoiOffsetsGradient(const DeformPSRoIPoolDims& d, const T* features, const TR* rois,
                        const T* offsets, const T* grad_output, int64_t r, A* g, A* doff) {
  const int64_t GG = d.group_cells(), Ce = d.channels_each_class();
  const A trans_std = A(d.trans_std);
  const RoiInfo<A> roi = ResolveRoi<A, TR>(d, rois, r);
  const T* image = features + roi.batch * d.plane_size();
  const T* roi_off = RoiOffsets(d, offsets, r);
  ForEachRoiBinClass(d, grad_output, r, doff, [&](int64_t ph, int64_t pw, int64_t cls,
                                                  int64_t gidx, const T* gout, A* dcell) {
    const BinOrigin<A> origin = MakeBinOrigin(d, roi.geom, roi_off, ph, pw, cls);
    for (int64_t j = 0; j < Ce; ++j) g[j] = A(gout[cls * Ce + j]);
    const BinOffsetsGrad<A> b =
        BinOffsetsGradient<T, A>(d, roi.geom, origin, image, cls * Ce * GG + gidx, g);
    if (b.nan) {
      dcell[0] = dcell[1] = QuietNaN<A>();
      return;
    }
    if (b.kept == 0) return;
    const A count = A(b.kept);
    dcell[0] += b.gx / count * trans_std * roi.geom.roi_w;
    dcell[1] += b.gy / count * trans_std * roi.geom.roi_h;
  });
}

// grad_offsets [R, part, part, 2*num_classes]: each RoI owns its offsets.
template <typename T, typename TR>
void OffsetsGradient(const DeformPSRoIPoolDims& d, const CpuParallel& parallel, const T* features,
                     const TR* rois, const T* offsets, const T* grad_output, T* grad_offsets) {
  using A = typename AccumulatorType<T>::type;
  const int64_t cells = d.part_size * d.part_size * d.offset_channels();
  const int64_t roi_cost =
      Cost({double(d.bins()), double(d.num_classes), double(d.samples_per_bin()),
            60.0 + 24.0 * double(d.channels_each_class())});
  parallel.parallel_for(d.num_rois, roi_cost, [&](int64_t r0, int64_t r1) {
    std::vector<A> doff(cells), g(d.channels_each_class());
    for (int64_t r = r0; r < r1; ++r) {
      std::fill(doff.begin(), doff.end(), A(0));
      RoiOffsetsGradient<T, TR, A>(d, features, rois, offsets, grad_output, r, g.data(),
                                   doff.data());
      T* dst = grad_offsets + r * cells;
      for (int64_t e = 0; e < cells; ++e) dst[e] = T(doff[e]);
    }
  });
}

// The fused backward of RoI r: every (bin, class) is summed per pixel once (BinCells) and each
// cell's channels are visited once for both gradients, the features gradient going to gimage
// (the features gradient of RoI r's image in the calling unit's private accumulator) and the
// offsets gradient to doff ([part, part, 2*num_classes], owned by the RoI). gd and gs hold Ce
// values.
template <typename T, typename TR, typename A>
void FusedRoiBackward(const DeformPSRoIPoolDims& d, const T* features, const TR* rois,
                      const T* offsets, const T* grad_output, int64_t r, A* gacc, A* gd, A* gs,
                      A* doff, BinCells<A>* cells) {
  const int64_t C = d.channels, GG = d.group_cells(), Ce = d.channels_each_class();
  const A trans_std = A(d.trans_std);
  const RoiInfo<A> roi = ResolveRoi<A, TR>(d, rois, r);
  const T* image = features + roi.batch * d.plane_size();
  A* gimage = gacc + roi.batch * d.plane_size();
  const T* roi_off = RoiOffsets(d, offsets, r);
  ForEachRoiBinClass(d, grad_output, r, doff, [&](int64_t ph, int64_t pw, int64_t cls,
                                                  int64_t gidx, const T* gout, A* dcell) {
    BuildBinCells(d, roi.geom, MakeBinOrigin(d, roi.geom, roi_off, ph, pw, cls), cells);
    if (cells->nan) {  // no features gradient; a NaN offsets gradient
      dcell[0] = dcell[1] = QuietNaN<A>();
      return;
    }
    if (cells->kept == 0) return;
    const A count = A(cells->kept);
    for (int64_t j = 0; j < Ce; ++j) {
      gd[j] = A(gout[cls * Ce + j]);
      gs[j] = gd[j] / count;
    }
    const int64_t channel0 = cls * Ce * GG + gidx;
    A gx = A(0), gy = A(0);
    for (const PoolCell<A>& cell : cells->cells) {
      const A e = GG == 1
                      ? BackwardCell<true>(cell, image, C, channel0, GG, Ce, gd, gs, gimage)
                      : BackwardCell<false>(cell, image, C, channel0, GG, Ce, gd, gs, gimage);
      gx += cell.cx * e + (cell.cx_poison ? A(0) * e : A(0));
      gy += cell.cy * e + (cell.cy_poison ? A(0) * e : A(0));
    }
    dcell[0] += gx / count * trans_std * roi.geom.roi_w;
    dcell[1] += gy / count * trans_std * roi.geom.roi_h;
  });
}

// Both gradients in one walk over the RoIs. The RoIs are cut into `copies` equal ranges, each
// with a private float copy of the features gradient, summed in range order at the end; the
// number of copies depends only on the sizes (as many as fit the workspace limit, at most 16),
// so the results are the same whatever the thread count. Returns false (nothing done) when fewer
// copies fit than there are threads (up to 4) to keep busy: the two-pass backward below then
// runs instead.
template <typename T, typename TR>
bool FusedBackward(const DeformPSRoIPoolDims& d, const CpuParallel& parallel, const T* features,
                   const TR* rois, const T* offsets, const T* grad_output, T* grad_features,
                   T* grad_offsets) {
  using A = typename AccumulatorType<T>::type;
  constexpr int64_t kMaxCopies = 16;
  const int64_t workspace = parallel.workspace_bytes;
  const int64_t size = d.batch * d.plane_size();
  const int64_t copies = std::min<int64_t>(
      {kMaxCopies, d.num_rois, workspace / std::max<int64_t>(1, size * int64_t(sizeof(A)))});
  if (copies < std::min<int64_t>(4, std::max(1, parallel.num_threads)) || copies < 1) {
    return false;
  }
  std::vector<A> storage(copies * size, A(0));
  const int64_t cells = d.part_size * d.part_size * d.offset_channels();
  const int64_t roi_cost =
      Cost({double(d.bins()), double(d.num_classes), double(d.samples_per_bin()),
            60.0 + 10.0 * double(d.channels_each_class())});
  ParallelShares(parallel, copies, roi_cost * (d.num_rois / copies + 1), [&](int64_t k0, int64_t k1) {
    std::vector<A> gd(d.channels_each_class()), gs(d.channels_each_class()), doff(cells);
    BinCells<A> bin;
    for (int64_t k = k0; k < k1; ++k) {
      for (int64_t r = d.num_rois * k / copies; r < d.num_rois * (k + 1) / copies; ++r) {
        std::fill(doff.begin(), doff.end(), A(0));
        FusedRoiBackward<T, TR, A>(d, features, rois, offsets, grad_output, r,
                                   storage.data() + k * size, gd.data(), gs.data(), doff.data(),
                                   &bin);
        if (d.use_offsets) {
          T* dst = grad_offsets + r * cells;
          for (int64_t e = 0; e < cells; ++e) dst[e] = T(doff[e]);
        }
      }
    }
  });
  SumCopiesInOrder(parallel, storage.data(), copies, size, grad_features);
  return true;
}

// Both gradients (see deform_psroi_pool_functor.h); grad_offsets only with offsets.
template <typename T, typename TR>
void Backward(const DeformPSRoIPoolDims& d, const CpuParallel& parallel, const T* features,
              const TR* rois, const T* offsets, const T* grad_output, T* grad_features,
              T* grad_offsets) {
  if (d.num_rois > 0 && FusedBackward<T, TR>(d, parallel, features, rois, offsets, grad_output,
                                             grad_features, grad_offsets)) {
    return;
  }
  FeaturesGradient<T, TR>(d, parallel, rois, offsets, grad_output, grad_features);
  if (!d.use_offsets || d.num_rois == 0) return;
  OffsetsGradient<T, TR>(d, parallel, features, rois, offsets, grad_output, grad_offsets);
}

// Calls fn(T(), TR()) with the element type and the RoI type (float or double) named.
template <typename Fn>
void WithPoolTypes(ElementType type, ElementType roi_type, Fn fn) {
  WithElementType<Eigen::half, Eigen::bfloat16>(type, [&](auto t) {
    if (roi_type == ElementType::kDouble) {
      fn(t, double());
    } else {
      fn(t, float());
    }
  });
}

}  // namespace

void DeformPSRoIPoolForward(ElementType type, ElementType roi_type, const DeformPSRoIPoolDims& d,
                            const CpuParallel& parallel, const DeformPSRoIPoolForwardArgs& a) {
  WithPoolTypes(type, roi_type, [&](auto t, auto tr) {
    using T = decltype(t);
    using TR = decltype(tr);
    Forward<T, TR>(d, parallel, static_cast<const T*>(a.features), static_cast<const TR*>(a.rois),
                   static_cast<const T*>(a.offsets), static_cast<T*>(a.output));
  });
}

void DeformPSRoIPoolBackward(ElementType type, ElementType roi_type, const DeformPSRoIPoolDims& d,
                             const CpuParallel& parallel, const DeformPSRoIPoolBackwardArgs& a) {
  WithPoolTypes(type, roi_type, [&](auto t, auto tr) {
    using T = decltype(t);
    using TR = decltype(tr);
    Backward<T, TR>(d, parallel, static_cast<const T*>(a.features),
                    static_cast<const TR*>(a.rois), static_cast<const T*>(a.offsets),
                    static_cast<const T*>(a.grad_output), static_cast<T*>(a.grad_features),
                    static_cast<T*>(a.grad_offsets));
  });
}

}  // namespace TF_DCN_CPU_ISA
}  // namespace tf_dcn
