// CPU kernels of the deformable convolution, free of TensorFlow headers. This file is included
// by one translation unit per instruction set (cpu_kernels_<isa>.cc through cpu_kernels_isa.h),
// each defining TF_DCN_CPU_ISA, the namespace of its entry points.
//
// The bilinear samples of a block of output pixels are gathered into a column buffer
// col[group][pixel][tap][channel] (channels contiguous, as NHWC makes them), which then meets the
// kernel in matrix products. Work is spread over TensorFlow's intra-op pool in at most one unit
// per thread (ParallelShares); every output element has exactly one writer, no atomics are used,
// and the results are bitwise reproducible for a given thread count and instruction set.
//
// Forward, in one of two ways:
//   cached tiles  when one output pixel's columns take at most 4 KiB (few channels): every unit
//                 gathers tiles of up to 512 KiB of columns, in its own cache, and multiplies
//                 each at once (ForwardInCachedTiles);
//   chunks        otherwise, chunk by chunk (about 8-16 MiB of columns, PlanChunks): GatherTiles,
//                 then output = bias + col * kernel in row/column blocks (ForEachProductBlock,
//                 cpu_parallel_product.h).
// Either way, with at most kMaxPanelProductColumns output channels per group, the products
// (ColumnProduct) use register panels of the kernel packed once per call (ForwardKernel,
// cpu_panel_product.h); wider ones use Eigen.
//
// Backward (BackwardPass), in one of two modes chosen from the sizes (Prepare):
//   image mode   when the units' private buffers fit the workspace limit (32 MiB): units own
//                whole images (or, with fewer images than units, pixel ranges of an image with a
//                private float image each, summed in range order) and run them tile by tile in
//                their cache: RunTile (columns, dcol = grad_output * kernel^T, the unit's
//                kernel-gradient partial, sample gradients) then ScatterRange into the image;
//   chunk mode   otherwise (large images with few of them, many threads): chunk by chunk,
//                TilePipeline (RunTile per tile, into chunk-sized buffers), the kernel gradient
//                (unit partials, or ChunkKernelGradient: blocks of col^T * grad_output), and
//                ScatterInputGradient, whose units own ranges of input pixels (cut where the
//                corner hits balance) and add the corners that fall in them.
// Either way each input-gradient element receives its terms in pixel, tap, corner order.
//
// Temporary memory: at most about the workspace limit (TF_DCN_CPU_WORKSPACE_BYTES overrides it):
// chunk buffers (columns, their gradient and the sample corners), unit tiles and partials. It
// does not grow with the batch, the image size or the thread count: float32/float64 accumulate
// the input gradient in place. Half types add float32 copies of the kernel gradient and of the
// input gradient of the images being worked on (one per unit, or those one chunk touches).
#ifndef TF_DCN_CPU_ISA
#error "define TF_DCN_CPU_ISA before including deform_conv2d_cpu_kernels.h"
#endif

#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "Eigen/Core"
#include "cc/kernels/cpu_dispatch.h"
#include "cc/kernels/cpu_panel_product.h"
#include "cc/kernels/cpu_parallel_product.h"
#include "cc/kernels/dcn_common.h"
#include "cc/kernels/deform_conv2d_geometry.h"

namespace tf_dcn {
namespace TF_DCN_CPU_ISA {
namespace {

// Pixels per chunk and per gather/sample tile (the work unit of those steps).
struct ChunkPlan {
  int64_t tile;   // output pixels per tile
  int64_t chunk;  // output pixels per chunk, a multiple of tile
};

// bytes_per_pixel: what one output pixel of a chunk takes in the pass's buffers.
inline ChunkPlan PlanChunks(int64_t bytes_per_pixel, const CpuParallel& parallel) {
  const int threads = parallel.num_threads;
  const int64_t budget =
      std::min<int64_t>(parallel.workspace_bytes / 2,
                        std::clamp<int64_t>(int64_t(threads) * (4 << 20), 8 << 20, 16 << 20));
  const int64_t chunk = std::max<int64_t>(4, budget / std::max<int64_t>(1, bytes_per_pixel));
  // About eight tiles per thread and chunk, for the balance of the gather and sample steps.
  const int64_t tile = std::clamp<int64_t>(chunk / (8 * int64_t(std::max(1, threads))), 4, 256);
  return {tile, std::max(tile, chunk / tile * tile)};
}

// Location of one output pixel.
struct PixelIndex {
  int64_t n, ho, wo;
};
inline PixelIndex Locate(const DeformConv2DDims& d, int64_t p) {
  const int64_t per_image = d.out_h * d.out_w;
  PixelIndex r;
  r.n = p / per_image;
  const int64_t rem = p - r.n * per_image;
  r.ho = rem / d.out_w;
  r.wo = rem - r.ho * d.out_w;
  return r;
}

// Calls fn(group, c_begin, c_end) for the pieces of the channel range [begin, end) that fall in
// one convolution group each (a deformable group may span several convolution groups).
template <typename Fn>
inline void ForEachGroupSegment(const DeformConv2DDims& d, int64_t begin, int64_t end, Fn fn) {
  if (d.groups == 1) {
    fn(int64_t(0), begin, end);
    return;
  }
  const int64_t cg = d.in_c_per_group();
  while (begin < end) {
    const int64_t grp = begin / cg;
    const int64_t seg_end = std::min(end, (grp + 1) * cg);
    fn(grp, begin, seg_end);
    begin = seg_end;
  }
}

// Calls fn(gk, g, k, sample) for the samples of output pixel (ho, wo) in order gk = g*taps + k,
// k = i*kernel_w + j (no division per sample).
template <typename A, typename T, typename Fn>
inline void ForEachPixelSample(const DeformConv2DDims& d, const PixelIndex& px, const T* off,
                               Fn fn) {
  int64_t gk = 0;
  for (int64_t g = 0; g < d.deformable_groups; ++g) {
    int64_t k = 0;
    for (int64_t i = 0; i < d.kernel_h; ++i) {
      for (int64_t j = 0; j < d.kernel_w; ++j, ++k, ++gk) {
        fn(gk, g, k, SampleConvTapAt<A>(d, px.ho, px.wo, i, j, off + 2 * gk));
      }
    }
  }
}

// v if keep, else +0: a select in integer bits, which GCC vectorises (with the default
// -ftrapping-math it does not if-convert `keep ? v : 0` after the comparisons that give keep).
template <typename A>
inline A KeepOrZero(bool keep, A v) {
  using Bits = std::conditional_t<sizeof(A) == 4, uint32_t, uint64_t>;
  static_assert(sizeof(A) == sizeof(Bits), "float or double");
  Bits bits;
  std::memcpy(&bits, &v, sizeof(A));
  bits &= Bits(0) - Bits(keep);
  std::memcpy(&v, &bits, sizeof(A));
  return v;
}

// The samples of one output pixel, prepared in one vectorised loop over its taps: for each tap
// whose four corners all lie inside the image (most taps), the flat index of its top-left corner
// and its masked bilinear weights, with the same operations as MakeConvSample and the gather (so
// the same results). Taps at the borders, outside or NaN are flagged for SampleConvTapAt. Used
// when the image's pixel indices and grid positions fit (Fits); measured 8% faster on S4.
template <typename A>
class PixelTaps {
 public:
  static bool Fits(const DeformConv2DDims& d) {
    return d.in_h * d.in_w < (int64_t(1) << 30) && d.in_h < (1 << 23) && d.in_w < (1 << 23);
  }

  explicit PixelTaps(const DeformConv2DDims& d)
      : n_(d.deformable_groups * d.taps()), grid_y_(n_), grid_x_(n_), mask_(n_, A(1)),
        corner_(n_), inside_(n_) {
    for (auto& w : weight_) w.resize(n_);
    for (int64_t gk = 0; gk < n_; ++gk) {
      const int64_t k = gk % d.taps();
      grid_y_[gk] = A((k / d.kernel_w) * d.dilation_h);
      grid_x_[gk] = A((k % d.kernel_w) * d.dilation_w);
    }
  }

  // off: the pixel's offsets [DG*K, 2] (dy, dx); msk: its mask [DG*K] or nullptr.
  template <typename T>
  void Prepare(const DeformConv2DDims& d, const PixelIndex& px, const T* off, const T* msk) {
    // Integers below 2^23: every sum of them here is exact, as in SampleConvTapAt.
    const A y_base = A(px.ho * d.stride_h - d.pad_top), x_base = A(px.wo * d.stride_w - d.pad_left);
    const A y_end = A(d.in_h - 1), x_end = A(d.in_w - 1);  // both corners inside: [0, size - 1)
    const int32_t width = int32_t(d.in_w);
    const A* gy = grid_y_.data();
    const A* gx = grid_x_.data();
    A *w0 = weight_[0].data(), *w1 = weight_[1].data(), *w2 = weight_[2].data(),
      *w3 = weight_[3].data();
    int32_t* corner = corner_.data();
    int32_t* inside = inside_.data();
    A* m = mask_.data();  // stays all ones without a mask: no condition in the loop below
    if (msk) {
      for (int64_t gk = 0; gk < n_; ++gk) m[gk] = A(msk[gk]);
    }
#pragma omp simd
    for (int64_t gk = 0; gk < n_; ++gk) {
      const A y = (y_base + gy[gk]) + A(off[2 * gk]);
      const A x = (x_base + gx[gk]) + A(off[2 * gk + 1]);
      const bool in = (y >= A(0)) & (y < y_end) & (x >= A(0)) & (x < x_end);
      // Non-finite or far positions are replaced before any conversion to an integer.
      const A ys = KeepOrZero(in, y), xs = KeepOrZero(in, x);
      const int32_t y0 = int32_t(ys), x0 = int32_t(xs);
      const A ly = ys - A(y0), lx = xs - A(x0);
      const A hy = A(1) - ly, hx = A(1) - lx;
      w0[gk] = m[gk] * (hy * hx);
      w1[gk] = m[gk] * (hy * lx);
      w2[gk] = m[gk] * (ly * hx);
      w3[gk] = m[gk] * (ly * lx);
      corner[gk] = y0 * width + x0;
      inside[gk] = in;
    }
  }

  bool inside(int64_t gk) const { return inside_[gk] != 0; }
  int64_t corner(int64_t gk) const { return corner_[gk]; }
  A weight(int q, int64_t gk) const { return weight_[q][gk]; }

 private:
  int64_t n_;
  std::vector<A> grid_y_, grid_x_, mask_;
  std::vector<int32_t> corner_, inside_;
  std::vector<A> weight_[4];
};

// The sum of the lanes of a vector of kBytes bytes, added pairwise: lane i + lane i + half, down
// to one lane (each step on a vector of half the width, so GCC keeps it in registers).
template <typename A, int kBytes>
struct LaneSum {
  typedef A Vector __attribute__((vector_size(kBytes)));
  static A Of(const Vector& v) {
    if constexpr (kBytes == int(sizeof(A))) {
      return v[0];
    } else {
      typename LaneSum<A, kBytes / 2>::Vector low, high;
      std::memcpy(&low, &v, kBytes / 2);
      std::memcpy(&high, reinterpret_cast<const char*>(&v) + kBytes / 2, kBytes / 2);
      return LaneSum<A, kBytes / 2>::Of(low + high);
    }
  }
};

// dst[e] = w0*src0[c0+e] + w1*src1[c0+e] + w2*src2[c0+e] + w3*src3[c0+e] for e < width: one
// sample's channels. For float and double in whole vectors of the build's width (the loop
// below the vectors, and for half types the whole loop, computes the same expression).
template <typename T, typename A>
inline void BlendCorners(const T* const (&src)[4], const A (&w)[4], int64_t c0, int64_t width,
                         A* dst) {
  const T *s0 = src[0] + c0, *s1 = src[1] + c0, *s2 = src[2] + c0, *s3 = src[3] + c0;
  const A w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
  int64_t e = 0;
  if constexpr (std::is_same_v<T, A>) {
    using V = typename SimdVector<A>::type;
    constexpr int kLanes = SimdVector<A>::kLanes;
    for (; e + kLanes <= width; e += kLanes) {
      V v0, v1, v2, v3;
      std::memcpy(&v0, s0 + e, sizeof(V));
      std::memcpy(&v1, s1 + e, sizeof(V));
      std::memcpy(&v2, s2 + e, sizeof(V));
      std::memcpy(&v3, s3 + e, sizeof(V));
      const V r = w0 * v0 + w1 * v1 + w2 * v2 + w3 * v3;
      std::memcpy(dst + e, &r, sizeof(V));
    }
  }
  // The column buffer never aliases the input: no run-time overlap checks.
#pragma omp simd
  for (int64_t i = e; i < width; ++i) {
    dst[i] = w0 * A(s0[i]) + w1 * A(s1[i]) + w2 * A(s2[i]) + w3 * A(s3[i]);
  }
}

// Gathers the (masked) bilinear samples of `count` output pixels starting at global pixel p0
// into rows row0.. of a column buffer of col_pixels rows per group. `zeros` holds C zeros of
// type T: outside corners read from it, so the channel loop is branch free.
template <typename T, typename A>
void GatherColumns(const DeformConv2DDims& d, const T* input, const T* offsets, const T* mask,
                   const T* zeros, int64_t p0, int64_t count, A* col, int64_t col_pixels,
                   int64_t row0) {
  const int64_t K = d.taps(), DG = d.deformable_groups, Cdg = d.in_c_per_dgroup(), C = d.in_c;
  const int64_t row_step = d.in_w * C;
  const bool fast = PixelTaps<A>::Fits(d);
  PixelTaps<A> taps(d);
  for (int64_t pp = 0; pp < count; ++pp) {
    const int64_t p = p0 + pp;
    const PixelIndex px = Locate(d, p);
    const T* image = input + px.n * d.in_h * d.in_w * C;
    const T* off = offsets + p * 2 * DG * K;
    const T* msk = mask ? mask + p * DG * K : nullptr;
    if (fast) taps.Prepare(d, px, off, msk);
    int64_t gk = 0;
    for (int64_t g = 0; g < DG; ++g) {
      int64_t k = 0;
      for (int64_t i = 0; i < d.kernel_h; ++i) {
        for (int64_t j = 0; j < d.kernel_w; ++j, ++k, ++gk) {
          int kind = kSampleInside;
          const T* src[4];
          A w[4];
          if (fast && taps.inside(gk)) {
            src[0] = image + taps.corner(gk) * C;
            src[1] = src[0] + C;
            src[2] = src[0] + row_step;
            src[3] = src[2] + C;
            for (int q = 0; q < 4; ++q) w[q] = taps.weight(q, gk);
          } else {
            const ConvSample<A> s = SampleConvTapAt<A>(d, px.ho, px.wo, i, j, off + 2 * gk);
            const A m = msk ? A(msk[gk]) : A(1);
            kind = s.kind;
            for (int q = 0; q < 4; ++q) {
              src[q] = s.pixel[q] >= 0 ? image + s.pixel[q] * C : zeros;
              w[q] = m * s.weight[q];
            }
          }
          ForEachGroupSegment(d, g * Cdg, (g + 1) * Cdg, [&](int64_t grp, int64_t c0,
                                                             int64_t c1) {
            A* dst = col + ColumnIndex(col_pixels, K, d.in_c_per_group(), grp, row0 + pp, k, c0);
            if (kind == kSampleInside) {
              BlendCorners<T, A>(src, w, c0, c1 - c0, dst);
            } else {
              std::fill(dst, dst + (c1 - c0), kind == kSampleNaN ? QuietNaN<A>() : A(0));
            }
          });
        }
      }
    }
  }
}


// Kernel as a [K*C/groups, Cout] row-major matrix in the accumulation type.
template <typename T, typename A>
const A* KernelInAccType(const DeformConv2DDims& d, const T* kernel, std::vector<A>* storage) {
  if constexpr (std::is_same_v<T, A>) {
    return kernel;
  } else {
    const int64_t size = d.taps() * d.in_c_per_group() * d.out_c;
    storage->resize(size);
    for (int64_t e = 0; e < size; ++e) (*storage)[e] = A(kernel[e]);
    return storage->data();
  }
}

// The columns of chunk pixels [p0, p0 + count) into col (count rows per group), tile by tile.
template <typename T, typename A>
void GatherTiles(const DeformConv2DDims& d, const CpuParallel& parallel, const ChunkPlan& plan,
                 const T* input, const T* offsets, const T* mask, const T* zeros, int64_t p0,
                 int64_t count, A* col) {
  const int64_t tiles = (count + plan.tile - 1) / plan.tile;
  const int64_t cost = plan.tile * d.deformable_groups * d.taps() * (40 + 8 * d.in_c_per_dgroup());
  ParallelShares(parallel, tiles, cost, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t first = t * plan.tile, n = std::min(plan.tile, count - first);
      GatherColumns<T, A>(d, input, offsets, mask, zeros, p0 + first, n, col, count, first);
    }
  });
}

// The kernel as the forward pass's products read it: W, [K*C/groups, Cout] row-major in the
// accumulation type, and, when a group has at most kMaxPanelProductColumns output channels, each
// group's columns and bias packed once as register panels (cpu_panel_product.h), which its
// products then use instead of Eigen.
template <typename T, typename A>
class ForwardKernel {
  std::vector<A> storage_;  // W for half types; declared (so constructed) before W

 public:
  ForwardKernel(const DeformConv2DDims& d, const T* kernel, const T* bias)
      : W(KernelInAccType<T, A>(d, kernel, &storage_)) {
    // A panel product covers all of a group's output channels: ForEachProductBlock cuts column
    // blocks only from 2 * kMinBlockCols columns up.
    static_assert(kMaxPanelProductColumns < 2 * kMinBlockCols, "panel products are never cut");
    const int64_t coutg = d.out_c_per_group(), rows = d.taps() * d.in_c_per_group();
    if (coutg > kMaxPanelProductColumns) return;
    for (int64_t grp = 0; grp < d.groups; ++grp) {
      const int64_t o0 = grp * coutg;
      panels.emplace_back(W + o0, rows, coutg, d.out_c, bias ? bias + o0 : nullptr);
    }
  }

  const A* const W;
  std::vector<PackedPanels<A>> panels;  // one per group, or none
};

// bias + col * W for rows [r0, r1) of a column buffer of `count` rows per group and output
// channels [c0, c1) of group grp, into out_rows (the output row of the buffer's first pixel).
template <typename T, typename A>
void ColumnProduct(const DeformConv2DDims& d, const A* col, int64_t count,
                   const ForwardKernel<T, A>& kernel, const T* bias, int64_t grp, int64_t r0,
                   int64_t r1, int64_t c0, int64_t c1, T* out_rows) {
  const int64_t K = d.taps(), Cg = d.in_c_per_group(), KCg = K * Cg, Cout = d.out_c;
  const int64_t rows = r1 - r0, cols = c1 - c0, o0 = grp * d.out_c_per_group() + c0;
  const A* lhs_data = col + ColumnIndex(count, K, Cg, grp, r0, 0, grp * Cg);
  if (!kernel.panels.empty()) {  // then c0 = 0 and c1 = Cout/groups (ForwardKernel)
    PanelProduct<T, A>(lhs_data, KCg, rows, kernel.panels[grp], out_rows + r0 * Cout + o0, Cout);
    return;
  }
  ConstMatrixMap<A> lhs(lhs_data, rows, KCg, Eigen::OuterStride<>(KCg));
  ConstMatrixMap<A> rhs(kernel.W + o0, KCg, cols, Eigen::OuterStride<>(Cout));
  std::vector<A> storage(std::is_same_v<T, A> ? 0 : rows * cols);
  A* out;
  int64_t stride;
  if constexpr (std::is_same_v<T, A>) {
    out = out_rows + r0 * Cout + o0;
    stride = Cout;
  } else {
    out = storage.data();
    stride = cols;
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) out[r * stride + c] = bias ? A(bias[o0 + c]) : A(0);
  }
  MatrixMap<A> result(out, rows, cols, Eigen::OuterStride<>(stride));
  result.noalias() += lhs * rhs;
  if constexpr (!std::is_same_v<T, A>) {
    for (int64_t r = 0; r < rows; ++r) {
      T* dst = out_rows + (r0 + r) * Cout + o0;
      for (int64_t c = 0; c < cols; ++c) dst[c] = T(out[r * cols + c]);
    }
  }
}

// Columns of one tile small enough for a core's own (L2) cache: with few channels per pixel the
// forward pass gathers and multiplies tile by tile in each thread, so the columns never go
// through memory or the shared cache as chunk-sized buffers do (S1 and S4 of
// bench/bench_conv_cpu.py, measured 15-20% faster on Zen 4 with 1 MiB of L2 per core).
constexpr int64_t kCachedTileBytes = int64_t(512) << 10;
constexpr int64_t kMinCachedTileRows = 128;  // shorter products run below the GEMM's speed

template <typename T, typename A>
void ForwardInCachedTiles(const DeformConv2DDims& d, const CpuParallel& parallel, const T* input,
                          const T* offsets, const T* mask, const ForwardKernel<T, A>& kernel,
                          const T* bias, int64_t tile, T* output) {
  const int64_t total = d.out_pixels(), col_row = d.taps() * d.in_c;
  const std::vector<T> zeros(d.in_c, T(0));
  const int64_t tiles = (total + tile - 1) / tile;
  const int64_t cost =
      tile * (d.deformable_groups * d.taps() * (40 + 8 * d.in_c_per_dgroup()) + 2 * col_row *
                                                                                  d.out_c_per_group());
  ParallelShares(parallel, tiles, cost, [&](int64_t t0, int64_t t1) {
    std::unique_ptr<A[]> col(new A[tile * col_row]);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p0 = t * tile, n = std::min(tile, total - p0);
      GatherColumns<T, A>(d, input, offsets, mask, zeros.data(), p0, n, col.get(), n, 0);
      for (int64_t grp = 0; grp < d.groups; ++grp) {
        ColumnProduct<T, A>(d, col.get(), n, kernel, bias, grp, 0, n, 0, d.out_c_per_group(),
                            output + p0 * d.out_c);
      }
    }
  });
}

template <typename T>
void Forward(const DeformConv2DDims& d, const CpuParallel& parallel, const T* input,
             const T* offsets, const T* mask, const T* kernel, const T* bias, T* output) {
  using A = typename AccumulatorType<T>::type;
  const int64_t total = d.out_pixels();
  if (total == 0 || d.out_c == 0) return;
  const int64_t K = d.taps(), Coutg = d.out_c_per_group(), KCg = K * d.in_c_per_group();
  const ForwardKernel<T, A> packed(d, kernel, bias);

  const int64_t cached_rows = kCachedTileBytes / (K * d.in_c * int64_t(sizeof(A)));
  if (cached_rows >= kMinCachedTileRows) {
    // Tiles of equal size, at least two per thread where the pixels allow.
    const int64_t threads = std::max(1, parallel.num_threads);
    const int64_t tile = std::clamp<int64_t>(total / (2 * threads), 16, cached_rows);
    ForwardInCachedTiles<T, A>(d, parallel, input, offsets, mask, packed, bias, tile, output);
    return;
  }

  const ChunkPlan plan = PlanChunks(K * d.in_c * int64_t(sizeof(A)), parallel);
  const std::vector<T> zeros(d.in_c, T(0));
  std::vector<A> col(std::min(plan.chunk, total) * K * d.in_c);
  for (int64_t p0 = 0; p0 < total; p0 += plan.chunk) {
    const int64_t count = std::min(plan.chunk, total - p0);
    GatherTiles<T, A>(d, parallel, plan, input, offsets, mask, zeros.data(), p0, count,
                      col.data());
    // Output rows [r0, r1) of the chunk, channels [c0, c1) of group grp.
    ForEachProductBlock(parallel, d.groups, count, Coutg, KCg,
                        [&](int64_t grp, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
                          ColumnProduct<T, A>(d, col.data(), count, packed, bias, grp, r0, r1,
                                              c0, c1, output + p0 * d.out_c);
                        });
  }
}

// Where one sample's four corners send its column gradient: pixel indices of the corners in
// their image (-1 for a corner outside the image or a sample that passes no gradient) and their
// weights mask * bilinear weight.
template <typename A>
struct TapCorners {
  int64_t pixel[4];
  A weight[4];
};

// Buffers of a block of output pixels (a chunk, or one work unit's tile), uninitialised: every
// element is written before it is read.
template <typename A>
struct BackwardWorkspace {
  std::unique_ptr<A[]> col, dcol, gout;  // gout: half types only
  std::unique_ptr<TapCorners<A>[]> corners;
  void Allocate(int64_t pixels, int64_t col_row, int64_t samples_per_pixel, int64_t gout_row) {
    col.reset(new A[pixels * col_row]);
    dcol.reset(new A[pixels * col_row]);
    corners.reset(new TapCorners<A>[pixels * samples_per_pixel]);
    if (gout_row > 0) gout.reset(new A[pixels * gout_row]);
  }
};

// A range of input pixels [begin, end) of one image: what one scatter work unit owns.
struct PixelRange {
  int64_t image, begin, end;
};

// The backward pass, step by step (the file comment describes the chunks and their memory).
template <typename T>
class BackwardPass {
 public:
  using A = typename AccumulatorType<T>::type;
  using Workspace = BackwardWorkspace<A>;

  BackwardPass(const DeformConv2DDims& d, const CpuParallel& parallel, const T* input,
               const T* offsets, const T* mask, const T* kernel, const T* grad_output,
               T* grad_input, T* grad_offsets, T* grad_mask, T* grad_kernel, T* grad_bias)
      : d_(d),
        parallel_(parallel),
        input_(input),
        offsets_(offsets),
        mask_(mask),
        kernel_(kernel),
        grad_output_(grad_output),
        grad_input_(grad_input),
        grad_offsets_(grad_offsets),
        grad_mask_(grad_mask),
        grad_kernel_(grad_kernel),
        grad_bias_(grad_bias),
        image_pixels_(d.in_h * d.in_w),
        image_size_(d.in_h * d.in_w * d.in_c),
        taps_(d.taps()),
        samples_per_pixel_(d.deformable_groups * d.taps()),
        in_c_per_group_(d.in_c_per_group()),
        in_c_per_dgroup_(d.in_c_per_dgroup()),
        out_c_per_group_(d.out_c_per_group()),
        kernel_rows_(d.taps() * d.in_c_per_group()),
        kernel_size_(d.taps() * d.in_c_per_group() * d.out_c),
        pixels_per_image_(d.out_h * d.out_w),
        out_pixels_(d.batch * d.out_h * d.out_w),
        units_(std::max(1, parallel.num_threads)) {}

  void Run() {
    if (grad_bias_) BiasGradient();
    if (out_pixels_ == 0 || image_size_ == 0) {
      std::fill(grad_input_, grad_input_ + d_.batch * image_size_, T(0));
      std::fill(grad_kernel_, grad_kernel_ + kernel_size_, T(0));
      return;
    }
    Prepare();
    if (image_mode_) {
      RunImages();
    } else {
      for (int64_t p0 = 0; p0 < out_pixels_; p0 += plan_.chunk) {
        const int64_t count = std::min(plan_.chunk, out_pixels_ - p0);
        TilePipeline(p0, count);
        if (!kernel_partials_per_unit_) ChunkKernelGradient(p0, count);  // else in RunTile
        ScatterInputGradient(p0, count);
      }
    }
    FinishKernelGradient();
  }

 private:
  // Bias gradient: a plain ordered sum over pixels, parallel over output channels.
  void BiasGradient() {
    const int64_t cout = d_.out_c;
    ParallelShares(parallel_, cout, out_pixels_ * 2, [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) {
        A sum = 0;
        for (int64_t p = 0; p < out_pixels_; ++p) sum += A(grad_output_[p * cout + o]);
        grad_bias_[o] = T(sum);
      }
    });
  }

  // The mode, the chunk plan and the buffers; zeroes what is accumulated in place.
  //
  // Image mode, when there are at least as many images as work units (one per thread) and the
  // units' private buffers fit the workspace limit: each unit owns whole images and runs them tile
  // by tile (columns, products, sample gradients, scatter) in its cache, straight into the input
  // gradient; its kernel gradient goes to a private partial. Otherwise chunk mode (the file
  // comment); there the kernel gradient goes to one partial per unit when those fit in half
  // the limit, else to a product over each chunk's columns. Partials are summed in unit order.
  void Prepare() {
    constexpr bool kHalf = !std::is_same_v<T, A>;
    const int64_t workspace = parallel_.workspace_bytes;
    const int64_t col_row = taps_ * d_.in_c, gout_row = kHalf ? d_.out_c : 0;
    const int64_t bytes_per_pixel = int64_t(sizeof(A)) * (2 * col_row + gout_row) +
                                    samples_per_pixel_ * int64_t(sizeof(TapCorners<A>));
    plan_ = PlanChunks(bytes_per_pixel, parallel_);
    // Pipeline tiles: one column tile (about 1 MiB) stays in the core's cache through the tile's
    // gather, products and sample gradients.
    tile_ = std::clamp<int64_t>((1 << 20) / std::max<int64_t>(1, col_row * int64_t(sizeof(A))), 4,
                                std::max<int64_t>(4, plan_.chunk / units_));
    const int64_t partial_bytes = kernel_size_ * int64_t(sizeof(A));
    const int64_t unit_bytes = partial_bytes + tile_ * bytes_per_pixel;
    // Image mode splits each image into `splits_` pixel ranges when there are fewer images than
    // units; each range then accumulates into a private float image, summed afterwards.
    const int64_t tiles_per_image = (pixels_per_image_ + tile_ - 1) / tile_;
    splits_ = d_.batch >= units_ ? 1
                                 : std::min((units_ + d_.batch - 1) / d_.batch, tiles_per_image);
    const int64_t private_images = splits_ > 1 ? d_.batch * splits_ : (kHalf ? units_ : 0);
    image_mode_ = units_ * unit_bytes + private_images * image_size_ * int64_t(sizeof(A)) <=
                  workspace;
    kernel_partials_per_unit_ =
        units_ > 1 && (image_mode_ || units_ * partial_bytes <= workspace / 2);
    zeros_.assign(d_.in_c, T(0));
    kernel_acc_ = KernelInAccType<T, A>(d_, kernel_, &kernel_storage_);
    kernel_grad_.assign(kernel_partials_per_unit_ ? units_ * kernel_size_ : (kHalf ? kernel_size_ : 0),
                        A(0));
    if (!kernel_partials_per_unit_ && !kHalf) {
      std::fill(grad_kernel_, grad_kernel_ + kernel_size_, T(0));
    }
    if (image_mode_) {
      unit_ws_.resize(units_);
      for (Workspace& ws : unit_ws_) ws.Allocate(tile_, col_row, samples_per_pixel_, gout_row);
      // Private float images: one per pixel range when images are split, otherwise one per unit
      // for half types (slot = unit).
      slots_ = std::max<int64_t>(1, private_images);
    } else {
      const int64_t chunk = std::min(plan_.chunk, out_pixels_);
      chunk_ws_.Allocate(chunk, col_row, samples_per_pixel_, gout_row);
      // Half types: the images one chunk can touch; image n accumulates in slot n % slots_.
      slots_ = std::min(d_.batch, (chunk + pixels_per_image_ - 2) / pixels_per_image_ + 1);
    }
    if (kHalf || (image_mode_ && splits_ > 1)) {
      input_acc_.assign(slots_ * image_size_, A(0));
    } else {
      ParallelShares(parallel_, d_.batch * image_pixels_, d_.in_c, [&](int64_t e0, int64_t e1) {
        std::fill(grad_input_ + e0 * d_.in_c, grad_input_ + e1 * d_.in_c, T(0));
      });
    }
  }

  // Image mode: the work items are (image, pixel range) pairs, splits_ per image; unit u runs
  // items [items*u/units, items*(u+1)/units), tile by tile.
  void RunImages() {
    const int64_t items = d_.batch * splits_;
    const int64_t cost = pixels_per_image_ / splits_ * samples_per_pixel_ *
                         (60 + 16 * in_c_per_dgroup_ + 4 * d_.out_c * (in_c_per_group_ + 1));
    parallel_.parallel_for(units_, cost * (items / units_ + 1), [&](int64_t u0, int64_t u1) {
      for (int64_t u = u0; u < u1; ++u) {
        Workspace& ws = unit_ws_[u];
        for (int64_t item = items * u / units_; item < items * (u + 1) / units_; ++item) {
          const int64_t n = item / splits_, part = item - n * splits_;
          A* acc;
          if (splits_ > 1) {
            acc = input_acc_.data() + item * image_size_;
          } else if constexpr (std::is_same_v<T, A>) {
            acc = grad_input_ + n * image_size_;
          } else {
            acc = input_acc_.data() + u * image_size_;
          }
          const PixelRange image{n, 0, image_pixels_};
          const int64_t first = n * pixels_per_image_ + pixels_per_image_ * part / splits_;
          const int64_t end = n * pixels_per_image_ + pixels_per_image_ * (part + 1) / splits_;
          for (int64_t p0 = first; p0 < end; p0 += tile_) {
            const int64_t count = std::min(tile_, end - p0);
            RunTile(ws, p0, count, 0, count, u);
            ScatterRange(ws, p0, count, image, acc, splits_ == 1);
          }
        }
      }
    });
    if (splits_ == 1) return;
    // The pixel ranges' private images, summed in range order.
    const int64_t splits = splits_, image_size = image_size_;
    ParallelShares(parallel_, d_.batch * image_size, splits * 2, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t n = e / image_size, r = e - n * image_size;
        A sum = 0;
        for (int64_t s = 0; s < splits; ++s) sum += input_acc_[(n * splits + s) * image_size + r];
        grad_input_[e] = T(sum);
      }
    });
  }

  // Where image n's input gradient accumulates.
  A* InputAccumulator(int64_t n) {
    if constexpr (std::is_same_v<T, A>) {
      return grad_input_ + n * image_size_;
    } else {
      return input_acc_.data() + (n % slots_) * image_size_;
    }
  }

  // The kernel gradient of work unit u (a partial) or the one shared accumulator.
  A* KernelAccumulator(int64_t u) {
    if (kernel_partials_per_unit_) return kernel_grad_.data() + u * kernel_size_;
    if constexpr (std::is_same_v<T, A>) {
      return grad_kernel_;
    } else {
      return kernel_grad_.data();
    }
  }

  // Every tile of the chunk, one share of tiles per work unit: columns, column gradient, the
  // unit's kernel-gradient partial (if used), sample gradients and TapCorners.
  void TilePipeline(int64_t p0, int64_t count) {
    const int64_t tiles = (count + tile_ - 1) / tile_;
    const int64_t units = std::min(units_, tiles);
    const int64_t cost = (tiles / units + 1) * tile_ * samples_per_pixel_ *
                         (60 + 12 * in_c_per_dgroup_ + 4 * d_.out_c * (in_c_per_group_ + 1));
    parallel_.parallel_for(units, cost, [&](int64_t u0, int64_t u1) {
      for (int64_t u = u0; u < u1; ++u) {
        for (int64_t t = tiles * u / units; t < tiles * (u + 1) / units; ++t) {
          const int64_t first = t * tile_, n = std::min(tile_, count - first);
          RunTile(chunk_ws_, p0, count, first, n, u);
        }
      }
    });
  }

  // Chunk pixels [first, first + n) of the chunk of `count` pixels starting at p0.
  void RunTile(Workspace& ws, int64_t p0, int64_t count, int64_t first, int64_t n, int64_t unit) {
    const int64_t cout = d_.out_c, rows = kernel_rows_, coutg = out_c_per_group_;
    GatherColumns<T, A>(d_, input_, offsets_, mask_, zeros_.data(), p0 + first, n, ws.col.get(),
                        count, first);
    const A* gout;
    if constexpr (std::is_same_v<T, A>) {
      gout = grad_output_ + (p0 + first) * cout;
    } else {
      const T* src = grad_output_ + (p0 + first) * cout;
      A* dst = ws.gout.get() + first * cout;
      for (int64_t e = 0; e < n * cout; ++e) dst[e] = A(src[e]);
      gout = dst;
    }
    for (int64_t grp = 0; grp < d_.groups; ++grp) {
      const int64_t at = ColumnIndex(count, taps_, in_c_per_group_, grp, first, 0,
                                     grp * in_c_per_group_);
      ConstMatrixMap<A> g(gout + grp * coutg, n, coutg, Eigen::OuterStride<>(cout));
      ConstMatrixMap<A> w(kernel_acc_ + grp * coutg, rows, coutg, Eigen::OuterStride<>(cout));
      MatrixMap<A> dcols(ws.dcol.get() + at, n, rows, Eigen::OuterStride<>(rows));
      dcols.noalias() = g * w.transpose();
      if (image_mode_ || kernel_partials_per_unit_) {  // else ChunkKernelGradient
        ConstMatrixMap<A> cols(ws.col.get() + at, n, rows, Eigen::OuterStride<>(rows));
        MatrixMap<A> dk(KernelAccumulator(unit) + grp * coutg, rows, coutg,
                        Eigen::OuterStride<>(cout));
        dk.noalias() += cols.transpose() * g;
      }
    }
    for (int64_t pp = first; pp < first + n; ++pp) SampleGradients(ws, p0, count, pp);
  }

  // d kernel += col^T * grad_out over the chunk's pixels, in blocks of the kernel gradient.
  void ChunkKernelGradient(int64_t p0, int64_t count) {
    const int64_t cout = d_.out_c, rows = kernel_rows_, coutg = out_c_per_group_;
    const A* gout;
    if constexpr (std::is_same_v<T, A>) {
      gout = grad_output_ + p0 * cout;
    } else {
      gout = chunk_ws_.gout.get();
    }
    A* dker = KernelAccumulator(0);
    ForEachProductBlock(parallel_, d_.groups, rows, coutg, count, [&](int64_t grp, int64_t r0,
                                                                     int64_t r1, int64_t c0,
                                                                     int64_t c1) {
      ConstMatrixMap<A> cols(chunk_ws_.col.get() + ColumnIndex(count, taps_, in_c_per_group_, grp, 0, 0,
                                                      grp * in_c_per_group_) + r0,
                             count, r1 - r0, Eigen::OuterStride<>(rows));
      ConstMatrixMap<A> g(gout + grp * coutg + c0, count, c1 - c0, Eigen::OuterStride<>(cout));
      MatrixMap<A> dk(dker + r0 * cout + grp * coutg + c0, r1 - r0, c1 - c0,
                      Eigen::OuterStride<>(cout));
      dk.noalias() += cols.transpose() * g;
    });
  }

  // The kernel gradient: partials summed in unit order, or the accumulator converted.
  void FinishKernelGradient() {
    if (!kernel_partials_per_unit_) {
      if constexpr (!std::is_same_v<T, A>) {
        for (int64_t e = 0; e < kernel_size_; ++e) grad_kernel_[e] = T(kernel_grad_[e]);
      }
      return;
    }
    SumCopiesInOrder(parallel_, kernel_grad_.data(), units_, kernel_size_, grad_kernel_);
  }

  // Offsets and mask gradients of the samples of chunk pixel pp, and their TapCorners.
  void SampleGradients(Workspace& ws, int64_t p0, int64_t count, int64_t pp) {
    const int64_t p = p0 + pp;
    const PixelIndex px = Locate(d_, p);
    const T* image = input_ + px.n * image_size_;
    const T* off = offsets_ + p * 2 * samples_per_pixel_;
    const T* msk = mask_ ? mask_ + p * samples_per_pixel_ : nullptr;
    T* doff = grad_offsets_ + p * 2 * samples_per_pixel_;
    T* dmsk = grad_mask_ ? grad_mask_ + p * samples_per_pixel_ : nullptr;
    ForEachPixelSample<A>(d_, px, off, [&](int64_t gk, int64_t g, int64_t k,
                                           const ConvSample<A>& s) {
      SampleGradient(ws, s, pp, count, gk, g, k, image, msk, doff, dmsk,
                     &ws.corners[pp * samples_per_pixel_ + gk]);
    });
  }

  // Sample gk = g*taps + k of chunk pixel pp: d offsets = mask * (d value / d position) . dcol
  // and d mask = value . dcol. Both are linear in the corner values, so the channel loop only
  // forms the four dot products sum_c dcol[c] * corner_q[c] (vectorised, in a fixed order) and
  // the helpers are applied to the sums.
  void SampleGradient(const Workspace& ws, const ConvSample<A>& s, int64_t pp, int64_t count, int64_t gk, int64_t g,
                      int64_t k, const T* image, const T* msk, T* doff, T* dmsk,
                      TapCorners<A>* corners) const {
    const int64_t c = d_.in_c, cdg = in_c_per_dgroup_;
    const A m = msk ? A(msk[gk]) : A(1);
    for (int q = 0; q < 4; ++q) {
      const bool used = s.kind == kSampleInside && s.pixel[q] >= 0;
      corners->pixel[q] = used ? s.pixel[q] : -1;
      corners->weight[q] = used ? m * s.weight[q] : A(0);
    }
    if (s.kind != kSampleInside) {
      const A fill = s.kind == kSampleNaN ? QuietNaN<A>() : A(0);
      doff[2 * gk] = T(fill);
      doff[2 * gk + 1] = T(fill);
      if (dmsk) dmsk[gk] = T(fill);
      return;
    }
    const T* src[4];
    for (int q = 0; q < 4; ++q) src[q] = s.pixel[q] >= 0 ? image + s.pixel[q] * c : zeros_.data();
    A sums[4] = {0, 0, 0, 0};
    ForEachGroupSegment(d_, g * cdg, (g + 1) * cdg, [&](int64_t grp, int64_t c0, int64_t c1) {
      const A* dc = ws.dcol.get() + ColumnIndex(count, taps_, in_c_per_group_, grp, pp, k, c0);
      CornerDots(dc, src, c0, c1 - c0, sums);
    });
    doff[2 * gk] = T(m * ConvSampleDy(s, sums));
    doff[2 * gk + 1] = T(m * ConvSampleDx(s, sums));
    if (dmsk) dmsk[gk] = T(ConvSampleValue(s, sums));
  }

  // sums[q] += dcol . corner_q over channels [c0, c0 + width). For float and double: one
  // vector of partial sums per corner over whole vectors of channels, its lanes added in a fixed
  // tree, then the remaining channels in order. (An `omp simd reduction` there made GCC add the
  // lanes one by one from memory: 64 scalar additions per sample with AVX-512.)
  static void CornerDots(const A* dc, const T* const (&src)[4], int64_t c0, int64_t width,
                         A (&sums)[4]) {
    const T *s0 = src[0] + c0, *s1 = src[1] + c0, *s2 = src[2] + c0, *s3 = src[3] + c0;
    A a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    if constexpr (std::is_same_v<T, A>) {
      using V = typename SimdVector<A>::type;
      constexpr int kLanes = SimdVector<A>::kLanes;
      int64_t e = 0;
      if (width >= kLanes) {
        V v0{}, v1{}, v2{}, v3{};
        for (; e + kLanes <= width; e += kLanes) {
          V gc, x0, x1, x2, x3;
          std::memcpy(&gc, dc + e, sizeof(V));
          std::memcpy(&x0, s0 + e, sizeof(V));
          std::memcpy(&x1, s1 + e, sizeof(V));
          std::memcpy(&x2, s2 + e, sizeof(V));
          std::memcpy(&x3, s3 + e, sizeof(V));
          v0 += gc * x0;
          v1 += gc * x1;
          v2 += gc * x2;
          v3 += gc * x3;
        }
        using Sum = LaneSum<A, int(sizeof(V))>;
        a0 = Sum::Of(v0);
        a1 = Sum::Of(v1);
        a2 = Sum::Of(v2);
        a3 = Sum::Of(v3);
      }
      for (; e < width; ++e) {
        const A gc = dc[e];
        a0 += gc * s0[e];
        a1 += gc * s1[e];
        a2 += gc * s2[e];
        a3 += gc * s3[e];
      }
    } else {
#pragma omp simd reduction(+ : a0, a1, a2, a3)
      for (int64_t i = 0; i < width; ++i) {
        const A gc = dc[i];
        a0 += gc * A(s0[i]);
        a1 += gc * A(s1[i]);
        a2 += gc * A(s2[i]);
        a3 += gc * A(s3[i]);
      }
    }
    sums[0] += a0;
    sums[1] += a1;
    sums[2] += a2;
    sums[3] += a3;
  }

  // The chunk's column gradient into the input gradient. Work unit = a range of input pixels of
  // one image: it walks every sample of that image's chunk pixels and adds the corners that fall
  // in its range, so each element has one writer and receives its terms in pixel, tap, corner
  // order whatever the ranges and the thread count. The ranges cover every image of the chunk and
  // are cut where the corner hits (counted per block of about a row of pixels) balance.
  void ScatterInputGradient(int64_t p0, int64_t count) {
    const int64_t n0 = p0 / pixels_per_image_, n1 = (p0 + count - 1) / pixels_per_image_;
    const int64_t images = n1 - n0 + 1;
    int shift = 0;
    while ((int64_t(2) << shift) <= d_.in_w) ++shift;
    const int64_t blocks = ((image_pixels_ - 1) >> shift) + 1;
    hits_.assign(images * blocks, 0);
    int64_t total = 0;
    for (int64_t pp = 0; pp < count; ++pp) {
      int64_t* image_hits = hits_.data() + ((p0 + pp) / pixels_per_image_ - n0) * blocks;
      const TapCorners<A>* corners = &chunk_ws_.corners[pp * samples_per_pixel_];
      for (int64_t gk = 0; gk < samples_per_pixel_; ++gk) {
        for (int q = 0; q < 4; ++q) {
          const int64_t pixel = corners[gk].pixel[q];
          if (pixel >= 0) ++image_hits[pixel >> shift];
          total += pixel >= 0;
        }
      }
    }
    ranges_.clear();
    for (int64_t n = n0; n <= n1; ++n) {
      const int64_t* image_hits = hits_.data() + (n - n0) * blocks;
      int64_t image_total = 0;
      for (int64_t b = 0; b < blocks; ++b) image_total += image_hits[b];
      const int64_t pieces = std::clamp<int64_t>(
          total > 0 ? (2 * units_ * image_total + total - 1) / total : 1, 1, blocks);
      int64_t begin = 0, seen = 0, b = 0;
      for (int64_t r = 1; r <= pieces; ++r) {
        const int64_t goal = image_total * r / pieces;
        while (b < blocks && (seen < goal || r == pieces)) seen += image_hits[b++];
        const int64_t end = r == pieces ? image_pixels_ : std::min(image_pixels_, b << shift);
        if (end > begin) ranges_.push_back({n, begin, end});
        begin = std::max(begin, end);
      }
    }
    const int64_t cost = (total / int64_t(ranges_.size()) + 1) * (4 + 2 * in_c_per_dgroup_) +
                         count * samples_per_pixel_;
    ParallelShares(parallel_, int64_t(ranges_.size()), cost, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        ScatterRange(chunk_ws_, p0, count, ranges_[r], InputAccumulator(ranges_[r].image));
      }
    });
  }

  // Adds the corners of image `range.image`'s samples among chunk pixels [p0, p0 + count) (in
  // ws) that fall in the range to acc, that image's input-gradient accumulator; for half types,
  // converts the range into grad_input once the image is complete.
  void ScatterRange(const Workspace& ws, int64_t p0, int64_t count, const PixelRange& range,
                    A* acc, bool convert = true) {
    const int64_t n = range.image, c = d_.in_c, cdg = in_c_per_dgroup_;
    const int64_t first = std::max(p0, n * pixels_per_image_) - p0;
    const int64_t last = std::min(p0 + count, (n + 1) * pixels_per_image_) - p0;
    for (int64_t pp = first; pp < last; ++pp) {
      const TapCorners<A>* corners = &ws.corners[pp * samples_per_pixel_];
      for (int64_t gk = 0; gk < samples_per_pixel_; ++gk) {
        const TapCorners<A>& t = corners[gk];
        const int64_t g = gk / taps_, k = gk - g * taps_;
        for (int q = 0; q < 4; ++q) {
          const int64_t pixel = t.pixel[q];
          if (pixel < range.begin || pixel >= range.end) continue;  // also pixel = -1
          const A w = t.weight[q];
          ForEachGroupSegment(d_, g * cdg, (g + 1) * cdg, [&](int64_t grp, int64_t c0, int64_t c1) {
            const A* dc = ws.dcol.get() + ColumnIndex(count, taps_, in_c_per_group_, grp, pp, k, c0);
            A* dst = acc + pixel * c + c0;
#pragma omp simd
            for (int64_t e = 0; e < c1 - c0; ++e) dst[e] += w * dc[e];
          });
        }
      }
    }
    if constexpr (!std::is_same_v<T, A>) {
      // Not yet when image n continues in the next chunk (or is summed from split ranges).
      if (!convert || (n + 1) * pixels_per_image_ > p0 + count) return;
      T* dst = grad_input_ + n * image_size_;
      for (int64_t e = range.begin * c; e < range.end * c; ++e) {
        dst[e] = T(acc[e]);
        acc[e] = A(0);  // the slot is reused by image n + slots_
      }
    }
  }

  const DeformConv2DDims& d_;
  const CpuParallel& parallel_;
  const T *input_, *offsets_, *mask_, *kernel_, *grad_output_;
  T *grad_input_, *grad_offsets_, *grad_mask_, *grad_kernel_, *grad_bias_;
  const int64_t image_pixels_;       // H * W
  const int64_t image_size_;         // H * W * C: one image of the input (gradient)
  const int64_t taps_;               // kernel_h * kernel_w
  const int64_t samples_per_pixel_;  // deformable_groups * taps
  const int64_t in_c_per_group_;     // input channels per convolution group
  const int64_t in_c_per_dgroup_;    // input channels per deformable group
  const int64_t out_c_per_group_;    // output channels per convolution group
  const int64_t kernel_rows_;        // taps * C/groups: rows of one group's kernel matrix
  const int64_t kernel_size_;        // kernel_rows * Cout elements
  const int64_t pixels_per_image_;
  const int64_t out_pixels_;
  const int64_t units_;  // work units of the tile pipeline: one per thread
  ChunkPlan plan_{};
  int64_t tile_ = 1;
  bool image_mode_ = false;
  int64_t splits_ = 1;  // image mode: pixel ranges per image
  bool kernel_partials_per_unit_ = false;
  std::vector<A> kernel_storage_;
  const A* kernel_acc_ = nullptr;  // the kernel in the accumulation type
  std::vector<T> zeros_;           // C zeros: what outside corners read
  Workspace chunk_ws_;               // chunk mode
  std::vector<Workspace> unit_ws_;   // image mode: one tile each
  std::vector<PixelRange> ranges_;
  std::vector<int64_t> hits_;  // corner hits per block of input pixels (scatter balance)
  // Kernel-gradient partials (units * kernel_size) or, for half types, the float32 accumulator.
  std::vector<A> kernel_grad_;
  // Float input-gradient accumulators, slots_ images: half types, and split images.
  std::vector<A> input_acc_;
  int64_t slots_ = 1;
};

template <typename T>
void Backward(const DeformConv2DDims& d, const CpuParallel& parallel, const T* input,
              const T* offsets, const T* mask, const T* kernel, const T* grad_output, T* grad_input,
              T* grad_offsets, T* grad_mask, T* grad_kernel, T* grad_bias) {
  BackwardPass<T>(d, parallel, input, offsets, mask, kernel, grad_output, grad_input, grad_offsets,
                  grad_mask, grad_kernel, grad_bias)
      .Run();
}

// Calls fn(T()) with the element type named by `type` (Eigen's 16-bit types on the CPU).
template <typename Fn>
void WithCpuElementType(ElementType type, Fn fn) {
  WithElementType<Eigen::half, Eigen::bfloat16>(type, fn);
}

}  // namespace

void DeformConv2DForward(ElementType type, const DeformConv2DDims& d, const CpuParallel& parallel,
                         const DeformConv2DForwardArgs& a) {
  auto run = [&](auto tag) {
    using T = decltype(tag);
    Forward<T>(d, parallel, static_cast<const T*>(a.input), static_cast<const T*>(a.offsets),
               static_cast<const T*>(a.mask), static_cast<const T*>(a.kernel),
               static_cast<const T*>(a.bias), static_cast<T*>(a.output));
  };
  WithCpuElementType(type, run);
}

void DeformConv2DBackward(ElementType type, const DeformConv2DDims& d, const CpuParallel& parallel,
                          const DeformConv2DBackwardArgs& a) {
  auto run = [&](auto tag) {
    using T = decltype(tag);
    Backward<T>(d, parallel, static_cast<const T*>(a.input), static_cast<const T*>(a.offsets),
                static_cast<const T*>(a.mask), static_cast<const T*>(a.kernel),
                static_cast<const T*>(a.grad_output), static_cast<T*>(a.grad_input),
                static_cast<T*>(a.grad_offsets), static_cast<T*>(a.grad_mask),
                static_cast<T*>(a.grad_kernel), static_cast<T*>(a.grad_bias));
  };
  WithCpuElementType(type, run);
}

}  // namespace TF_DCN_CPU_ISA
}  // namespace tf_dcn
