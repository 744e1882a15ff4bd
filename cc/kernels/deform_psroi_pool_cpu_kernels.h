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
// Backward (Backward, PoolBackwardChunks), without atomics and bitwise reproducible whatever the
// thread count, in chunks of RoIs sized to the workspace limit (32 MiB by default):
//   1. RoIs in parallel: every (bin, class) walks its samples once and sums their corner weights
//      and position-derivative coefficients per pixel (BuildBinCells); the cells are kept.
//   2. Owners in parallel (PoolOwners): each owns a disjoint part of the features gradient (one
//      position-sensitive group, or a block of channels when group_size = 1) and walks every
//      RoI, bin, class and cell of the chunk in order, visiting each cell's channels once for
//      both gradients: it adds into the features gradient in place (a float32 copy for half
//      types) and keeps its partial offsets-gradient sum of each (bin, class).
//   3. RoIs in parallel: each RoI adds its bins' partial sums, in a fixed order, into its offsets
//      gradient.
// No thread keeps a copy of the features gradient, and the owners depend only on the sizes.
// The per-bin sample counts of the forward pass are recomputed, so the forward op has no hidden
// outputs.
//
// Temporary memory: the chunk's cells (at most the workspace limit, or one RoI's worst case if
// larger), and N*H*W*C floats for half types.
//
// Included once per instruction set by cpu_kernels_<isa>.cc (through cpu_kernels_isa.h), which
// defines TF_DCN_CPU_ISA, the namespace of the entry points at the end of this file.
#ifndef TF_DCN_CPU_ISA
#error "define TF_DCN_CPU_ISA before including deform_psroi_pool_cpu_kernels.h"
#endif

#include <algorithm>
#include <initializer_list>
#include <memory>
#include <type_traits>
#include <vector>

#include "Eigen/Core"
#include "cc/kernels/cpu_dispatch.h"  // CpuParallel
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

// Sums of products over a channel run are kept in kDotLanes partial sums (lane j % kDotLanes),
// added pairwise at the end: a single running sum is one dependency chain the compiler may
// not reorder (no fast-math), while independent lanes vectorise. The order is fixed by the source,
// so it does not depend on the ISA build or the thread count.
constexpr int64_t kDotLanes = 16;

// Pairwise, halving the lanes each step (a short dependency chain).
template <typename A>
inline A SumLanes(A* lanes) {
  for (int64_t half = kDotLanes / 2; half > 0; half /= 2) {
    for (int64_t k = 0; k < half; ++k) lanes[k] += lanes[k + half];
  }
  return lanes[0];
}

// The backward of one cell: grad[pixel, channel0 + j*GG] += weight * gs[j] and returns
// e = sum_j gd[j] * f[pixel, channel0 + j*GG] (the cell's share of the offsets gradient). With unit
// stride the sum runs in kDotLanes lanes; strided runs (one channel per class, a few dozen at most)
// keep one running sum.
template <bool kUnitStride, typename T, typename A>
inline A BackwardCell(const PoolCell<A>& cell, const T* image, int64_t C, int64_t channel0,
                      int64_t GG, int64_t n, const A* gd, const A* gs, A* gimage) {
  const T* f = image + cell.pixel * C + channel0;
  A* dst = gimage + cell.pixel * C + channel0;
  const A w = cell.weight;
  A e = A(0);
  if constexpr (kUnitStride) {
    A lanes[kDotLanes] = {};
    int64_t j = 0;
    for (; j + kDotLanes <= n; j += kDotLanes) {
      // The gradient buffer aliases none of the inputs: no run-time overlap checks.
#pragma omp simd
      for (int64_t k = 0; k < kDotLanes; ++k) {
        lanes[k] += gd[j + k] * A(f[j + k]);
        dst[j + k] += w * gs[j + k];
      }
    }
    for (int64_t k = 0; j + k < n; ++k) {
      lanes[k] += gd[j + k] * A(f[j + k]);
      dst[j + k] += w * gs[j + k];
    }
    e = SumLanes(lanes);
  } else {
    for (int64_t j = 0; j < n; ++j) {
      e += gd[j] * A(f[j * GG]);
      dst[j * GG] += w * gs[j];
    }
  }
  if (cell.weight_poison) {
    const A zero = A(0);
    const int64_t stride = kUnitStride ? 1 : GG;
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

// Where the backward keeps one (bin, class) of a RoI: its cells in the chunk's cell store
// (cells [first, first + count)) and its kept-sample count, -1 for a NaN bin.
struct CachedBin {
  int64_t first;
  int32_t count;
  int32_t kept;
};

// Who owns which part of the features gradient in the backward. With position-sensitive groups
// (group_size > 1) the (bin, class) pairs of group g read only feature channels ctop*GG + g, so
// each group is one owner and computes the whole offsets-gradient sum of its pairs (one slot).
// With group_size = 1 every bin reads every channel of its class: the owners are blocks of
// channels, and each adds its share of a pair's offsets-gradient sum to a slot of its own. The
// owners and blocks depend only on the sizes, never on the thread count.
struct PoolOwners {
  bool by_group;
  int64_t count;  // owners
  int64_t block;  // channels per owner (group_size = 1)
  int64_t slots;  // partial offsets-gradient sums per (bin, class)
};

inline PoolOwners MakePoolOwners(const DeformPSRoIPoolDims& d) {
  constexpr int64_t kMaxBlocks = 16, kMinBlock = 64;
  if (d.group_cells() > 1) return {true, d.group_cells(), 0, 1};
  const int64_t wanted = (d.channels + kMaxBlocks - 1) / kMaxBlocks;
  const int64_t block = std::max(kMinBlock, (wanted + 15) / 16 * 16);
  const int64_t count = (d.channels + block - 1) / block;
  return {false, count, block, count};
}

// The backward of a chunk of RoIs [r0, r0 + rn): phase 1 sums every (bin, class)'s corners per
// pixel (BuildBinCells) into the chunk's store, RoIs in parallel; phase 2 runs the owners in
// parallel, each walking the chunk's RoIs, bins and classes in order, adding to its own part of
// the features gradient (gacc) and writing its partial offsets-gradient sums; phase 3 adds those
// into grad_offsets, RoIs in parallel, bins and classes in order.
template <typename T, typename TR, typename A>
class PoolBackwardChunks {
 public:
  PoolBackwardChunks(const DeformPSRoIPoolDims& d, const CpuParallel& parallel, const T* features,
                     const TR* rois, const T* offsets, const T* grad_output, A* gacc,
                     T* grad_offsets)
      : d_(d),
        parallel_(parallel),
        features_(features),
        rois_(rois),
        offsets_(offsets),
        grad_output_(grad_output),
        gacc_(gacc),
        grad_offsets_(grad_offsets),
        owners_(MakePoolOwners(d)),
        pairs_(d.bins() * d.num_classes),
        max_cells_(4 * d.samples_per_bin()) {
    // Worst case of one RoI: every kept sample with four distinct corners.
    const int64_t roi_bytes =
        pairs_ * (max_cells_ * int64_t(sizeof(PoolCell<A>)) + int64_t(sizeof(CachedBin)) +
                  owners_.slots * 2 * int64_t(sizeof(A))) +
        int64_t(sizeof(RoiInfo<A>));
    // With channel-block owners every owner reads the chunk's cells again: a chunk that stays
    // in the last-level cache is read from there.
    constexpr int64_t kCachedChunkBytes = int64_t(8) << 20;
    const int64_t budget = owners_.by_group ? parallel.workspace_bytes
                                            : std::min(parallel.workspace_bytes, kCachedChunkBytes);
    chunk_ = std::clamp<int64_t>(budget / std::max<int64_t>(1, roi_bytes), 1, d.num_rois);
    // Left uninitialised: phase 1 writes what the later phases read.
    cells_.reset(new PoolCell<A>[chunk_ * pairs_ * max_cells_]);
    bins_.resize(chunk_ * pairs_);
    roi_info_.resize(chunk_);
    partial_.resize(owners_.slots * chunk_ * pairs_ * 2);
  }

  void Run() {
    for (int64_t r0 = 0; r0 < d_.num_rois; r0 += chunk_) {
      const int64_t rn = std::min(chunk_, d_.num_rois - r0);
      const double samples = double(pairs_) * double(d_.samples_per_bin());
      ParallelShares(parallel_, rn, Cost({samples, 40.0}), [&](int64_t i0, int64_t i1) {
        BinCells<A> scratch;
        for (int64_t i = i0; i < i1; ++i) CacheRoi(r0, i, &scratch);
      });
      const double channels = owners_.by_group ? double(d_.output_dim) : double(owners_.block);
      ParallelShares(parallel_, owners_.count,
                     Cost({double(rn), samples, 2.0 + channels}),
                     [&](int64_t u0, int64_t u1) {
                       std::vector<A> gd(d_.channels_each_class()), gs(gd.size());
                       for (int64_t u = u0; u < u1; ++u) RunOwner(r0, rn, u, gd.data(), gs.data());
                     });
      if (!d_.use_offsets) continue;
      ParallelShares(parallel_, rn, Cost({double(pairs_), double(owners_.slots), 4.0}),
                     [&](int64_t i0, int64_t i1) {
                       for (int64_t i = i0; i < i1; ++i) FinishOffsets(r0, i);
                     });
    }
  }

 private:
  // Phase 1: the geometry and the cells of RoI r0 + i.
  void CacheRoi(int64_t r0, int64_t i, BinCells<A>* scratch) {
    const int64_t P = d_.pooled_size, K = d_.num_classes;
    roi_info_[i] = ResolveRoi<A, TR>(d_, rois_, r0 + i);
    const RoiInfo<A>& roi = roi_info_[i];
    const T* roi_off = RoiOffsets(d_, offsets_, r0 + i);
    // The RoI's cells are packed, one (bin, class) after the other, in its part of the store.
    int64_t next = i * pairs_ * max_cells_;
    for (int64_t ph = 0; ph < P; ++ph) {
      for (int64_t pw = 0; pw < P; ++pw) {
        for (int64_t cls = 0; cls < K; ++cls) {
          BuildBinCells(d_, roi.geom, MakeBinOrigin(d_, roi.geom, roi_off, ph, pw, cls), scratch);
          const int64_t pair = (i * P + ph) * P * K + pw * K + cls;
          CachedBin& bin = bins_[pair];
          bin.first = next;
          next += int64_t(scratch->cells.size());
          bin.count = int32_t(scratch->cells.size());
          bin.kept = scratch->nan ? -1 : int32_t(scratch->kept);
          std::copy(scratch->cells.begin(), scratch->cells.end(), cells_.get() + bin.first);
        }
      }
    }
  }

  // Phase 2: owner u's share of every (bin, class) of the chunk.
  void RunOwner(int64_t r0, int64_t rn, int64_t u, A* gd, A* gs) {
    const int64_t C = d_.channels, GG = d_.group_cells(), Ce = d_.channels_each_class();
    const int64_t P = d_.pooled_size, K = d_.num_classes, D = d_.output_dim;
    const int64_t slot = owners_.by_group ? 0 : u;
    for (int64_t i = 0; i < rn; ++i) {
      const int64_t r = r0 + i;
      const int64_t batch = roi_info_[i].batch;
      const T* image = features_ + batch * d_.plane_size();
      A* gimage = gacc_ + batch * d_.plane_size();
      for (int64_t ph = 0; ph < P; ++ph) {
        for (int64_t pw = 0; pw < P; ++pw) {
          const int64_t gidx = PoolGroupIndex(ph, d_.group_size, P) * d_.group_size +
                               PoolGroupIndex(pw, d_.group_size, P);
          if (owners_.by_group && gidx != u) continue;
          const T* gout = grad_output_ + ((r * P + ph) * P + pw) * D;
          for (int64_t cls = 0; cls < K; ++cls) {
            const int64_t pair = (i * P + ph) * P * K + pw * K + cls;
            const CachedBin& bin = bins_[pair];
            A* sums = partial_.data() + ((slot * chunk_) * pairs_ + pair) * 2;
            sums[0] = sums[1] = A(0);
            if (bin.kept <= 0) continue;  // NaN bins and bins without samples pass nothing
            // Output channels [j0, j1) of the class; feature channels (cls*Ce + j)*GG + gidx.
            int64_t j0 = 0, j1 = Ce;
            if (!owners_.by_group) {
              j0 = std::clamp<int64_t>(u * owners_.block - cls * Ce, 0, Ce);
              j1 = std::clamp<int64_t>((u + 1) * owners_.block - cls * Ce, 0, Ce);
              if (j0 >= j1) continue;
            }
            const A count = A(bin.kept);
            for (int64_t j = j0; j < j1; ++j) {
              gd[j - j0] = A(gout[cls * Ce + j]);
              gs[j - j0] = gd[j - j0] / count;
            }
            const int64_t channel0 = (cls * Ce + j0) * GG + gidx, n = j1 - j0;
            A gx = A(0), gy = A(0);
            const PoolCell<A>* cell = cells_.get() + bin.first;
            for (int32_t k = 0; k < bin.count; ++k, ++cell) {
              const A e = GG == 1
                              ? BackwardCell<true>(*cell, image, C, channel0, GG, n, gd, gs, gimage)
                              : BackwardCell<false>(*cell, image, C, channel0, GG, n, gd, gs, gimage);
              gx += cell->cx * e + (cell->cx_poison ? A(0) * e : A(0));
              gy += cell->cy * e + (cell->cy_poison ? A(0) * e : A(0));
            }
            sums[0] = gx;
            sums[1] = gy;
          }
        }
      }
    }
  }

  // Phase 3: grad_offsets of RoI r0 + i ([part, part, 2*num_classes]); several bins may add into
  // one part cell.
  void FinishOffsets(int64_t r0, int64_t i) {
    const int64_t P = d_.pooled_size, K = d_.num_classes;
    const int64_t cells = d_.part_size * d_.part_size * d_.offset_channels();
    const A trans_std = A(d_.trans_std);
    const RoiInfo<A>& roi = roi_info_[i];
    std::vector<A> doff(cells, A(0));
    for (int64_t ph = 0; ph < P; ++ph) {
      for (int64_t pw = 0; pw < P; ++pw) {
        const int64_t part =
            PoolPartIndex(ph, d_.part_size, P) * d_.part_size + PoolPartIndex(pw, d_.part_size, P);
        for (int64_t cls = 0; cls < K; ++cls) {
          const int64_t pair = (i * P + ph) * P * K + pw * K + cls;
          const CachedBin& bin = bins_[pair];
          A* dcell = doff.data() + part * d_.offset_channels() + 2 * cls;
          if (bin.kept < 0) {
            dcell[0] = dcell[1] = QuietNaN<A>();
            continue;
          }
          if (bin.kept == 0) continue;
          A gx = A(0), gy = A(0);
          for (int64_t slot = 0; slot < owners_.slots; ++slot) {
            const A* sums = partial_.data() + ((slot * chunk_) * pairs_ + pair) * 2;
            gx += sums[0];
            gy += sums[1];
          }
          const A count = A(bin.kept);
          dcell[0] += gx / count * trans_std * roi.geom.roi_w;
          dcell[1] += gy / count * trans_std * roi.geom.roi_h;
        }
      }
    }
    T* dst = grad_offsets_ + (r0 + i) * cells;
    for (int64_t e = 0; e < cells; ++e) dst[e] = T(doff[e]);
  }

  const DeformPSRoIPoolDims& d_;
  const CpuParallel& parallel_;
  const T* features_;
  const TR* rois_;
  const T* offsets_;
  const T* grad_output_;
  A* gacc_;
  T* grad_offsets_;
  const PoolOwners owners_;
  const int64_t pairs_;      // (bin, class) pairs per RoI
  const int64_t max_cells_;  // cells one (bin, class) can have
  int64_t chunk_;            // RoIs per chunk
  std::unique_ptr<PoolCell<A>[]> cells_;
  std::vector<CachedBin> bins_;
  std::vector<RoiInfo<A>> roi_info_;  // of the chunk's RoIs, from phase 1
  std::vector<A> partial_;
};

// Both gradients (see deform_psroi_pool_functor.h); grad_offsets only with offsets. Every element
// of the features gradient is summed in the same order (RoIs, bins, classes, cells) whatever the
// thread count, and each offsets-gradient sum over its slots in slot order, so the results are
// bitwise the same at every thread count. Temporary memory: the chunk store (at most the workspace
// limit, or one RoI's worst case when that is larger) and, for half types, a float copy of the
// features gradient.
template <typename T, typename TR>
void Backward(const DeformPSRoIPoolDims& d, const CpuParallel& parallel, const T* features,
              const TR* rois, const T* offsets, const T* grad_output, T* grad_features,
              T* grad_offsets) {
  using A = typename AccumulatorType<T>::type;
  const int64_t size = d.batch * d.plane_size();
  std::vector<A> storage(std::is_same_v<T, A> ? 0 : size);
  A* gacc;
  if constexpr (std::is_same_v<T, A>) {
    gacc = grad_features;
  } else {
    gacc = storage.data();
  }
  ParallelShares(parallel, size, 1, [&](int64_t e0, int64_t e1) {
    std::fill(gacc + e0, gacc + e1, A(0));
  });
  if (d.num_rois > 0) {
    PoolBackwardChunks<T, TR, A>(d, parallel, features, rois, offsets, grad_output, gacc,
                                 grad_offsets)
        .Run();
  }
  if constexpr (!std::is_same_v<T, A>) {
    ParallelShares(parallel, size, 1, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) grad_features[e] = T(gacc[e]);
    });
  }
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
