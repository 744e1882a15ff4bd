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

template <typename T>
void Backward(const DeformConv2DDims& d, const CpuParallel& parallel, const T* input,
              const T* offsets, const T* mask, const T* kernel, const T* grad_output, T* grad_input,
              T* grad_offsets, T* grad_mask, T* grad_kernel, T* grad_bias) {
  using A = typename AccumulatorType<T>::type;
  const int64_t N = d.batch, C = d.in_c, HWC = d.in_h * d.in_w * C;
  const int64_t K = d.taps(), Cg = d.in_c_per_group(), Coutg = d.out_c_per_group();
  const int64_t Cout = d.out_c, KCg = K * Cg, DG = d.deformable_groups, Cdg = d.in_c_per_dgroup();
  const int64_t kernel_size = KCg * Cout;
  const int64_t per_image = d.out_h * d.out_w;
  const int64_t total = N * per_image;

  // Bias gradient: a plain ordered sum over pixels, parallel over output channels.
  if (grad_bias) {
    parallel.parallel_for(Cout, total * 2, [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) {
        A sum = 0;
        for (int64_t p = 0; p < total; ++p) sum += A(grad_output[p * Cout + o]);
        grad_bias[o] = T(sum);
      }
    });
  }
  if (total == 0 || HWC == 0) {
    std::fill(grad_input, grad_input + N * HWC, T(0));
    std::fill(grad_kernel, grad_kernel + kernel_size, T(0));
    return;
  }

  // Work partition. With at least as many images as threads, a block takes whole images
  // (S = 1); otherwise each image is split into S pixel ranges whose input-gradient partials are
  // summed afterwards in a fixed order.
  const int64_t threads = std::max(1, parallel.num_threads);
  const int64_t tile = PixelsPerTile(d, sizeof(A));
  int64_t splits = 1;
  if (N < threads) {
    const int64_t tiles_per_image = (per_image + tile - 1) / tile;
    splits = std::clamp<int64_t>((threads + N - 1) / N, 1, std::max<int64_t>(1, tiles_per_image));
  }
  const int64_t blocks = splits == 1 ? std::min(N, threads) : N * splits;

  std::vector<A> kernel_storage;
  const A* W = KernelInAccType<T, A>(d, kernel, &kernel_storage);
  const std::vector<T> zeros(C, T(0));
  std::vector<A> input_partials(blocks * HWC);
  std::vector<A> kernel_partials(blocks * kernel_size);

  auto run_block = [&](int64_t b) {
    A* din = input_partials.data() + b * HWC;
    A* dker = kernel_partials.data() + b * kernel_size;
    std::fill(dker, dker + kernel_size, A(0));
    std::vector<A> col(d.groups * tile * KCg), dcol(d.groups * tile * KCg);
    std::vector<A> gout_tile(std::is_same_v<T, A> ? 0 : tile * Cout);
    std::vector<A> dummy(C);  // sink for the gradient of outside corners (weight 0)

    // Processes output pixels [p_begin, p_end), all in one image, into din / dker.
    auto process = [&](int64_t p_begin, int64_t p_end) {
      for (int64_t p0 = p_begin; p0 < p_end; p0 += tile) {
        const int64_t count = std::min(tile, p_end - p0);
        GatherColumns<T, A>(d, input, offsets, mask, zeros.data(), p0, count, col.data());
        const A* gout;
        if constexpr (std::is_same_v<T, A>) {
          gout = grad_output + p0 * Cout;
        } else {
          for (int64_t e = 0; e < count * Cout; ++e) gout_tile[e] = A(grad_output[p0 * Cout + e]);
          gout = gout_tile.data();
        }
        for (int64_t grp = 0; grp < d.groups; ++grp) {
          ConstMatrixMap<A> g(gout + grp * Coutg, count, Coutg, Eigen::OuterStride<>(Cout));
          ConstMatrixMap<A> w(W + grp * Coutg, KCg, Coutg, Eigen::OuterStride<>(Cout));
          ConstMatrixMap<A> cols(col.data() + grp * count * KCg, count, KCg,
                                 Eigen::OuterStride<>(KCg));
          MatrixMap<A> dcols(dcol.data() + grp * count * KCg, count, KCg,
                             Eigen::OuterStride<>(KCg));
          MatrixMap<A> dk(dker + grp * Coutg, KCg, Coutg, Eigen::OuterStride<>(Cout));
          dcols.noalias() = g * w.transpose();
          dk.noalias() += cols.transpose() * g;
        }
        // Scatter the column gradient to input, offsets and mask.
        for (int64_t pp = 0; pp < count; ++pp) {
          const int64_t p = p0 + pp;
          const PixelIndex px = Locate(d, p);
          const T* image = input + px.n * HWC;
          const T* off = offsets + p * 2 * DG * K;
          const T* msk = mask ? mask + p * DG * K : nullptr;
          T* doff = grad_offsets + p * 2 * DG * K;
          T* dmsk = grad_mask ? grad_mask + p * DG * K : nullptr;
          for (int64_t gk = 0; gk < DG * K; ++gk) {
            const int64_t g = gk / K, k = gk - g * K;
            const ConvSample<A> s = SampleConvTap<A>(d, px.ho, px.wo, k, off + 2 * gk);
            const A m = msk ? A(msk[gk]) : A(1);
            if (s.kind != kSampleInside) {
              const A fill = s.kind == kSampleNaN ? QuietNaN<A>() : A(0);
              doff[2 * gk] = T(fill);
              doff[2 * gk + 1] = T(fill);
              if (dmsk) dmsk[gk] = T(fill);
              continue;
            }
            const T* src[4];
            A* dst[4];
            for (int q = 0; q < 4; ++q) {
              src[q] = s.pixel[q] >= 0 ? image + s.pixel[q] * C : zeros.data();
              dst[q] = s.pixel[q] >= 0 ? din + s.pixel[q] * C : dummy.data();
            }
            // Value and position derivatives are linear in the corner values, so the channel
            // loop only accumulates the four dot products sum_c g[c] * corner_q[c] (vectorised,
            // in a fixed order), and the helpers are applied to the sums.
            A sums[4] = {0, 0, 0, 0};
            const A w0 = m * s.weight[0], w1 = m * s.weight[1];
            const A w2 = m * s.weight[2], w3 = m * s.weight[3];
            ForEachGroupSegment(
                d, g * Cdg, (g + 1) * Cdg, [&](int64_t grp, int64_t c0, int64_t c1) {
                  // All pointers start at channel c0 of their row.
                  const A* dc =
                      dcol.data() + ColumnIndex(count, K, d.in_c_per_group(), grp, pp, k, c0);
                  const T *s0 = src[0] + c0, *s1 = src[1] + c0, *s2 = src[2] + c0,
                          *s3 = src[3] + c0;
                  A *d0 = dst[0] + c0, *d1 = dst[1] + c0, *d2 = dst[2] + c0, *d3 = dst[3] + c0;
                  const int64_t width = c1 - c0;
                  A a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
                  for (int64_t c = 0; c < width; ++c) {
                    const A gc = dc[c];
                    a0 += gc * A(s0[c]);
                    a1 += gc * A(s1[c]);
                    a2 += gc * A(s2[c]);
                    a3 += gc * A(s3[c]);
                    d0[c] += w0 * gc;
                    d1[c] += w1 * gc;
                    d2[c] += w2 * gc;
                    d3[c] += w3 * gc;
                  }
                  sums[0] += a0;
                  sums[1] += a1;
                  sums[2] += a2;
                  sums[3] += a3;
                });
            const A gm = ConvSampleValue(s, sums);
            const A gy = ConvSampleDy(s, sums);
            const A gx = ConvSampleDx(s, sums);
            doff[2 * gk] = T(m * gy);
            doff[2 * gk + 1] = T(m * gx);
            if (dmsk) dmsk[gk] = T(gm);
          }
        }
      }
    };

    if (splits == 1) {
      const int64_t n0 = N * b / blocks, n1 = N * (b + 1) / blocks;
      for (int64_t n = n0; n < n1; ++n) {
        std::fill(din, din + HWC, A(0));
        process(n * per_image, (n + 1) * per_image);
        T* dst = grad_input + n * HWC;
        for (int64_t e = 0; e < HWC; ++e) dst[e] = T(din[e]);
      }
    } else {
      const int64_t n = b / splits, s = b - n * splits;
      std::fill(din, din + HWC, A(0));
      process(n * per_image + per_image * s / splits, n * per_image + per_image * (s + 1) / splits);
    }
  };

  const int64_t block_cost = (total / blocks + 1) * (K * C * 30 + 4 * KCg * Cout);
  parallel.parallel_for(blocks, block_cost, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) run_block(b);
  });

  // Ordered reductions of the partials.
  if (splits > 1) {
    parallel.parallel_for(N * HWC, splits * 2, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t n = e / HWC, r = e - n * HWC;
        A sum = 0;
        for (int64_t s = 0; s < splits; ++s) sum += input_partials[(n * splits + s) * HWC + r];
        grad_input[e] = T(sum);
      }
    });
  }
  parallel.parallel_for(kernel_size, blocks * 2, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      A sum = 0;
      for (int64_t b = 0; b < blocks; ++b) sum += kernel_partials[b * kernel_size + e];
      grad_kernel[e] = T(sum);
    }
  });
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
