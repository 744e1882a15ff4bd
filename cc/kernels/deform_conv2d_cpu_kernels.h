// CPU kernels of the deformable convolution, free of TensorFlow headers. This file is included
// by one translation unit per instruction set (deform_conv2d_cpu_generic.cc,
// deform_conv2d_cpu_avx2.cc), each defining TF_DCN_CPU_ISA, the namespace of its entry points.
//
// Both passes work on tiles of output pixels. For each tile the bilinear samples are gathered into
// a column buffer col[group][pixel][tap][channel] (channels contiguous, as NHWC makes them), which
// then meets the kernel in one Eigen matrix product per convolution group. Tiles are distributed
// over TensorFlow's intra-op thread pool; each tile owns its output rows, so the forward pass has
// no shared writes.
//
// The backward pass partitions output pixels into blocks fixed by (batch size, thread count). A
// block owns a private float accumulator for the input gradient and for the kernel gradient; they
// are summed in block order at the end, so the results are bitwise reproducible for a given thread
// count and instruction set, and no atomics are used.
//
// Temporary memory (float32, float64 for double):
//   forward:  threads * tile * K*C            (column tile) + Cout*tile for half types
//   backward: B * (H*W*C + K*C/groups*Cout) + threads * 2 * tile * K*C, with B <= 2 * threads,
// independent of the batch size. The tile is chosen so that one column tile is about 1 MiB.
#ifndef TF_DCN_CPU_ISA
#error "define TF_DCN_CPU_ISA before including deform_conv2d_cpu_kernels.h"
#endif

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "Eigen/Core"
#include "cc/kernels/cpu_dispatch.h"
#include "cc/kernels/dcn_common.h"
#include "cc/kernels/deform_conv2d_geometry.h"

namespace tf_dcn {
namespace TF_DCN_CPU_ISA {
namespace {

template <typename A>
using RowMatrix = Eigen::Matrix<A, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename A>
using MatrixMap = Eigen::Map<RowMatrix<A>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <typename A>
using ConstMatrixMap = Eigen::Map<const RowMatrix<A>, Eigen::Unaligned, Eigen::OuterStride<>>;

constexpr int64_t kColumnTileBytes = 1 << 20;

// Number of output pixels per tile: about kColumnTileBytes of column buffer, at least 8 pixels.
int64_t PixelsPerTile(const DeformConv2DDims& d, int64_t elem_bytes) {
  const int64_t per_pixel = std::max<int64_t>(1, d.taps() * d.in_c * elem_bytes);
  return std::clamp<int64_t>(kColumnTileBytes / per_pixel, 8, 1024);
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
  const int64_t cg = d.in_c_per_group();
  while (begin < end) {
    const int64_t grp = begin / cg;
    const int64_t seg_end = std::min(end, (grp + 1) * cg);
    fn(grp, begin, seg_end);
    begin = seg_end;
  }
}

// Gathers the (masked) bilinear samples of `count` output pixels starting at global pixel p0.
// `zeros` holds C zeros of type T: outside corners read from it, so the channel loop is branch
// free.
template <typename T, typename A>
void GatherColumns(const DeformConv2DDims& d, const T* input, const T* offsets, const T* mask,
                   const T* zeros, int64_t p0, int64_t count, A* col) {
  const int64_t K = d.taps(), DG = d.deformable_groups, Cdg = d.in_c_per_dgroup(), C = d.in_c;
  for (int64_t pp = 0; pp < count; ++pp) {
    const int64_t p = p0 + pp;
    const PixelIndex px = Locate(d, p);
    const T* image = input + px.n * d.in_h * d.in_w * C;
    const T* off = offsets + p * 2 * DG * K;
    const T* msk = mask ? mask + p * DG * K : nullptr;
    for (int64_t gk = 0; gk < DG * K; ++gk) {
      const int64_t g = gk / K, k = gk - g * K;
      const ConvSample<A> s = SampleConvTap<A>(d, px.ho, px.wo, k, off + 2 * gk);
      const A m = msk ? A(msk[gk]) : A(1);
      const T* src[4];
      A w[4];
      for (int q = 0; q < 4; ++q) {
        src[q] = s.pixel[q] >= 0 ? image + s.pixel[q] * C : zeros;
        w[q] = m * s.weight[q];
      }
      ForEachGroupSegment(d, g * Cdg, (g + 1) * Cdg, [&](int64_t grp, int64_t c0, int64_t c1) {
        A* dst = col + ColumnIndex(count, K, d.in_c_per_group(), grp, pp, k, c0);
        if (s.kind == kSampleInside) {
          for (int64_t c = c0; c < c1; ++c) {
            dst[c - c0] = w[0] * A(src[0][c]) + w[1] * A(src[1][c]) + w[2] * A(src[2][c]) +
                          w[3] * A(src[3][c]);
          }
        } else {
          std::fill(dst, dst + (c1 - c0), s.kind == kSampleNaN ? QuietNaN<A>() : A(0));
        }
      });
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

template <typename T>
void Forward(const DeformConv2DDims& d, const CpuParallel& parallel, const T* input,
             const T* offsets, const T* mask, const T* kernel, const T* bias, T* output) {
  using A = typename AccumulatorType<T>::type;
  const int64_t total = d.out_pixels();
  if (total == 0 || d.out_c == 0) return;
  const int64_t K = d.taps(), Cg = d.in_c_per_group(), Coutg = d.out_c_per_group();
  const int64_t Cout = d.out_c, KCg = K * Cg;
  const int64_t tile = PixelsPerTile(d, sizeof(A));
  const int64_t num_tiles = (total + tile - 1) / tile;

  std::vector<A> kernel_storage;
  const A* W = KernelInAccType<T, A>(d, kernel, &kernel_storage);
  const std::vector<T> zeros(d.in_c, T(0));

  const int64_t cost = tile * (K * d.in_c * 12 + 2 * KCg * Cout);
  parallel.parallel_for(num_tiles, cost, [&](int64_t first, int64_t last) {
    std::vector<A> col(d.groups * tile * KCg);
    std::vector<A> out_tile(std::is_same_v<T, A> ? 0 : tile * Cout);
    for (int64_t t = first; t < last; ++t) {
      const int64_t p0 = t * tile, count = std::min(tile, total - p0);
      GatherColumns<T, A>(d, input, offsets, mask, zeros.data(), p0, count, col.data());
      A* out;
      if constexpr (std::is_same_v<T, A>) {
        out = output + p0 * Cout;
      } else {
        out = out_tile.data();
      }
      for (int64_t pp = 0; pp < count; ++pp) {
        for (int64_t o = 0; o < Cout; ++o) out[pp * Cout + o] = bias ? A(bias[o]) : A(0);
      }
      for (int64_t grp = 0; grp < d.groups; ++grp) {
        ConstMatrixMap<A> cols(col.data() + grp * count * KCg, count, KCg,
                               Eigen::OuterStride<>(KCg));
        ConstMatrixMap<A> weights(W + grp * Coutg, KCg, Coutg, Eigen::OuterStride<>(Cout));
        MatrixMap<A> result(out + grp * Coutg, count, Coutg, Eigen::OuterStride<>(Cout));
        result.noalias() += cols * weights;
      }
      if constexpr (!std::is_same_v<T, A>) {
        T* dst = output + p0 * Cout;
        for (int64_t e = 0; e < count * Cout; ++e) dst[e] = T(out_tile[e]);
      }
    }
  });
}

// The backward pass, step by step (the file comment describes the partition and its memory):
//   BiasGradient    ordered sum of grad_output over all pixels, per output channel;
//   PlanBlocks      how the output pixels are split into blocks with private partial sums;
//   RunBlock        one block: its pixels tile by tile, each through TileGemms and ScatterTile;
//   TileGemms       dcol = grad_out * kernel^T and d kernel += col^T * grad_out, per group;
//   ScatterTile     every sample of the tile: ScatterSample sends its column gradient to the
//                   input gradient and forms its offset and mask gradients;
//   ReducePartials  the blocks' partial input and kernel gradients, summed in block order.
template <typename T>
class BackwardPass {
 public:
  using A = typename AccumulatorType<T>::type;

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
        image_size_(d.in_h * d.in_w * d.in_c),
        taps_(d.taps()),
        in_c_per_group_(d.in_c_per_group()),
        in_c_per_dgroup_(d.in_c_per_dgroup()),
        out_c_per_group_(d.out_c_per_group()),
        kernel_rows_(d.taps() * d.in_c_per_group()),
        kernel_size_(d.taps() * d.in_c_per_group() * d.out_c),
        pixels_per_image_(d.out_h * d.out_w),
        out_pixels_(d.batch * d.out_h * d.out_w) {}

  void Run() {
    if (grad_bias_) BiasGradient();
    if (out_pixels_ == 0 || image_size_ == 0) {
      std::fill(grad_input_, grad_input_ + d_.batch * image_size_, T(0));
      std::fill(grad_kernel_, grad_kernel_ + kernel_size_, T(0));
      return;
    }
    PlanBlocks();
    kernel_acc_ = KernelInAccType<T, A>(d_, kernel_, &kernel_storage_);
    zeros_.assign(d_.in_c, T(0));
    input_partials_.resize(blocks_ * image_size_);
    kernel_partials_.resize(blocks_ * kernel_size_);
    const int64_t block_cost =
        (out_pixels_ / blocks_ + 1) * (taps_ * d_.in_c * 30 + 4 * kernel_rows_ * d_.out_c);
    parallel_.parallel_for(blocks_, block_cost, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) RunBlock(b);
    });
    ReducePartials();
  }

 private:
  // Per-block working memory: one tile of columns and column gradients, grad_output of the tile
  // in the accumulation type (half types only) and a sink for outside corners (weight 0).
  struct Scratch {
    std::vector<A> col, dcol, gout_tile, sink;
  };

  // Bias gradient: a plain ordered sum over pixels, parallel over output channels.
  void BiasGradient() {
    const int64_t cout = d_.out_c;
    parallel_.parallel_for(cout, out_pixels_ * 2, [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) {
        A sum = 0;
        for (int64_t p = 0; p < out_pixels_; ++p) sum += A(grad_output_[p * cout + o]);
        grad_bias_[o] = T(sum);
      }
    });
  }

  // With at least as many images as threads, a block takes whole images (splits = 1);
  // otherwise each image is split into `splits` pixel ranges whose input-gradient partials are
  // summed afterwards in a fixed order.
  void PlanBlocks() {
    const int64_t threads = std::max(1, parallel_.num_threads);
    tile_ = PixelsPerTile(d_, sizeof(A));
    splits_ = 1;
    if (d_.batch < threads) {
      const int64_t tiles_per_image = (pixels_per_image_ + tile_ - 1) / tile_;
      splits_ = std::clamp<int64_t>((threads + d_.batch - 1) / d_.batch, 1,
                                    std::max<int64_t>(1, tiles_per_image));
    }
    blocks_ = splits_ == 1 ? std::min(d_.batch, threads) : d_.batch * splits_;
  }

  // Block b: whole images written straight to grad_input (splits = 1), or one pixel range of an
  // image into the block's partial input gradient; its kernel gradient goes to its partial.
  void RunBlock(int64_t b) {
    A* din = input_partials_.data() + b * image_size_;
    A* dker = kernel_partials_.data() + b * kernel_size_;
    std::fill(dker, dker + kernel_size_, A(0));
    Scratch scratch;
    scratch.col.resize(d_.groups * tile_ * kernel_rows_);
    scratch.dcol.resize(d_.groups * tile_ * kernel_rows_);
    scratch.gout_tile.resize(std::is_same_v<T, A> ? 0 : tile_ * d_.out_c);
    scratch.sink.resize(d_.in_c);
    if (splits_ == 1) {
      const int64_t n0 = d_.batch * b / blocks_, n1 = d_.batch * (b + 1) / blocks_;
      for (int64_t n = n0; n < n1; ++n) {
        std::fill(din, din + image_size_, A(0));
        ProcessPixels(n * pixels_per_image_, (n + 1) * pixels_per_image_, din, dker, &scratch);
        T* dst = grad_input_ + n * image_size_;
        for (int64_t e = 0; e < image_size_; ++e) dst[e] = T(din[e]);
      }
    } else {
      const int64_t n = b / splits_, s = b - n * splits_;
      std::fill(din, din + image_size_, A(0));
      ProcessPixels(n * pixels_per_image_ + pixels_per_image_ * s / splits_,
                    n * pixels_per_image_ + pixels_per_image_ * (s + 1) / splits_, din, dker,
                    &scratch);
    }
  }

  // Output pixels [p_begin, p_end), all in one image, into din (that image's input gradient)
  // and dker, one tile at a time.
  void ProcessPixels(int64_t p_begin, int64_t p_end, A* din, A* dker, Scratch* scratch) {
    for (int64_t p0 = p_begin; p0 < p_end; p0 += tile_) {
      const int64_t count = std::min(tile_, p_end - p0);
      GatherColumns<T, A>(d_, input_, offsets_, mask_, zeros_.data(), p0, count,
                          scratch->col.data());
      TileGemms(p0, count, dker, scratch);
      ScatterTile(p0, count, din, scratch);
    }
  }

  // dcol = grad_out * kernel^T (the column gradient) and dker += col^T * grad_out, per group.
  void TileGemms(int64_t p0, int64_t count, A* dker, Scratch* scratch) {
    const int64_t cout = d_.out_c, rows = kernel_rows_, coutg = out_c_per_group_;
    const A* gout;
    if constexpr (std::is_same_v<T, A>) {
      gout = grad_output_ + p0 * cout;
    } else {
      for (int64_t e = 0; e < count * cout; ++e) {
        scratch->gout_tile[e] = A(grad_output_[p0 * cout + e]);
      }
      gout = scratch->gout_tile.data();
    }
    for (int64_t grp = 0; grp < d_.groups; ++grp) {
      ConstMatrixMap<A> g(gout + grp * coutg, count, coutg, Eigen::OuterStride<>(cout));
      ConstMatrixMap<A> w(kernel_acc_ + grp * coutg, rows, coutg, Eigen::OuterStride<>(cout));
      ConstMatrixMap<A> cols(scratch->col.data() + grp * count * rows, count, rows,
                             Eigen::OuterStride<>(rows));
      MatrixMap<A> dcols(scratch->dcol.data() + grp * count * rows, count, rows,
                         Eigen::OuterStride<>(rows));
      MatrixMap<A> dk(dker + grp * coutg, rows, coutg, Eigen::OuterStride<>(cout));
      dcols.noalias() = g * w.transpose();
      dk.noalias() += cols.transpose() * g;
    }
  }

  // Every (pixel, deformable group, tap) sample of the tile.
  void ScatterTile(int64_t p0, int64_t count, A* din, Scratch* scratch) {
    const int64_t samples_per_pixel = d_.deformable_groups * taps_;
    for (int64_t pp = 0; pp < count; ++pp) {
      const int64_t p = p0 + pp;
      const PixelIndex px = Locate(d_, p);
      const T* image = input_ + px.n * image_size_;
      const T* off = offsets_ + p * 2 * samples_per_pixel;
      const T* msk = mask_ ? mask_ + p * samples_per_pixel : nullptr;
      T* doff = grad_offsets_ + p * 2 * samples_per_pixel;
      T* dmsk = grad_mask_ ? grad_mask_ + p * samples_per_pixel : nullptr;
      for (int64_t gk = 0; gk < samples_per_pixel; ++gk) {
        ScatterSample(px, pp, count, gk, image, off, msk, doff, dmsk, din, scratch);
      }
    }
  }

  // Sample gk = g*taps + k of tile pixel pp: adds mask * weight_q * dcol to the input gradient at
  // its four corners, and writes d offsets = mask * (d value / d position) . dcol and d mask =
  // value . dcol. Both derivatives are linear in the corner values, so the channel loop only
  // accumulates the four dot products sum_c dcol[c] * corner_q[c] (vectorised, in a fixed
  // order) and the helpers are applied to the sums.
  void ScatterSample(const PixelIndex& px, int64_t pp, int64_t count, int64_t gk, const T* image,
                     const T* off, const T* msk, T* doff, T* dmsk, A* din, Scratch* scratch) const {
    const int64_t c = d_.in_c, cdg = in_c_per_dgroup_;
    const int64_t g = gk / taps_, k = gk - g * taps_;
    const ConvSample<A> s = SampleConvTap<A>(d_, px.ho, px.wo, k, off + 2 * gk);
    const A m = msk ? A(msk[gk]) : A(1);
    if (s.kind != kSampleInside) {
      const A fill = s.kind == kSampleNaN ? QuietNaN<A>() : A(0);
      doff[2 * gk] = T(fill);
      doff[2 * gk + 1] = T(fill);
      if (dmsk) dmsk[gk] = T(fill);
      return;
    }
    const T* src[4];
    A* dst[4];
    for (int q = 0; q < 4; ++q) {
      src[q] = s.pixel[q] >= 0 ? image + s.pixel[q] * c : zeros_.data();
      dst[q] = s.pixel[q] >= 0 ? din + s.pixel[q] * c : scratch->sink.data();
    }
    A sums[4] = {0, 0, 0, 0};
    const A w[4] = {m * s.weight[0], m * s.weight[1], m * s.weight[2], m * s.weight[3]};
    ForEachGroupSegment(d_, g * cdg, (g + 1) * cdg, [&](int64_t grp, int64_t c0, int64_t c1) {
      const A* dc =
          scratch->dcol.data() + ColumnIndex(count, taps_, in_c_per_group_, grp, pp, k, c0);
      AccumulateSegment(dc, src, dst, w, c0, c1 - c0, sums);
    });
    const A gm = ConvSampleValue(s, sums);
    const A gy = ConvSampleDy(s, sums);
    const A gx = ConvSampleDx(s, sums);
    doff[2 * gk] = T(m * gy);
    doff[2 * gk + 1] = T(m * gx);
    if (dmsk) dmsk[gk] = T(gm);
  }

  // Channels [c0, c0 + width) of one sample: sums[q] += dcol . corner_q, dst_q += w_q * dcol.
  static void AccumulateSegment(const A* dc, const T* const (&src)[4], A* const (&dst)[4],
                                const A (&w)[4], int64_t c0, int64_t width, A (&sums)[4]) {
    const T *s0 = src[0] + c0, *s1 = src[1] + c0, *s2 = src[2] + c0, *s3 = src[3] + c0;
    A *d0 = dst[0] + c0, *d1 = dst[1] + c0, *d2 = dst[2] + c0, *d3 = dst[3] + c0;
    const A w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
    A a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t e = 0; e < width; ++e) {
      const A gc = dc[e];
      a0 += gc * A(s0[e]);
      a1 += gc * A(s1[e]);
      a2 += gc * A(s2[e]);
      a3 += gc * A(s3[e]);
      d0[e] += w0 * gc;
      d1[e] += w1 * gc;
      d2[e] += w2 * gc;
      d3[e] += w3 * gc;
    }
    sums[0] += a0;
    sums[1] += a1;
    sums[2] += a2;
    sums[3] += a3;
  }

  // The partials summed in block order: the input gradient only when images were split (whole
  // images were written by their block), the kernel gradient always.
  void ReducePartials() {
    if (splits_ > 1) {
      const int64_t splits = splits_, image_size = image_size_;
      parallel_.parallel_for(d_.batch * image_size, splits * 2, [&](int64_t e0, int64_t e1) {
        for (int64_t e = e0; e < e1; ++e) {
          const int64_t n = e / image_size, r = e - n * image_size;
          A sum = 0;
          for (int64_t s = 0; s < splits; ++s) {
            sum += input_partials_[(n * splits + s) * image_size + r];
          }
          grad_input_[e] = T(sum);
        }
      });
    }
    parallel_.parallel_for(kernel_size_, blocks_ * 2, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) {
        A sum = 0;
        for (int64_t b = 0; b < blocks_; ++b) sum += kernel_partials_[b * kernel_size_ + e];
        grad_kernel_[e] = T(sum);
      }
    });
  }

  const DeformConv2DDims& d_;
  const CpuParallel& parallel_;
  const T *input_, *offsets_, *mask_, *kernel_, *grad_output_;
  T *grad_input_, *grad_offsets_, *grad_mask_, *grad_kernel_, *grad_bias_;
  const int64_t image_size_;       // H * W * C: one image of the input (gradient)
  const int64_t taps_;             // kernel_h * kernel_w
  const int64_t in_c_per_group_;   // input channels per convolution group
  const int64_t in_c_per_dgroup_;  // input channels per deformable group
  const int64_t out_c_per_group_;  // output channels per convolution group
  const int64_t kernel_rows_;      // taps * C/groups: rows of one group's kernel matrix
  const int64_t kernel_size_;      // kernel_rows * Cout elements
  const int64_t pixels_per_image_;
  const int64_t out_pixels_;
  int64_t tile_ = 0, splits_ = 1, blocks_ = 1;  // PlanBlocks
  std::vector<A> kernel_storage_;
  const A* kernel_acc_ = nullptr;   // the kernel in the accumulation type
  std::vector<T> zeros_;            // C zeros: what outside corners read
  std::vector<A> input_partials_;   // blocks * image_size
  std::vector<A> kernel_partials_;  // blocks * kernel_size
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
