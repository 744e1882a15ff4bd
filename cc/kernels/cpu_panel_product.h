// Matrix products with few output columns, for the CPU kernels of one instruction set (included
// by deform_conv2d_cpu_kernels.h inside namespace tf_dcn::TF_DCN_CPU_ISA).
//
// out = bias + a * b where a (m x k) is row-major with any row stride (the forward pass's column
// buffer: output pixels by taps*channels) and b (k x n) has few columns (the kernel, n output
// channels). A general product (Eigen's) packs both operands into its own layouts first; with
// few columns the copy of a costs about as much as the multiplication, and the register panels
// of its kernel are partly empty (48 rows against 32 output channels). Here b alone is copied,
// into panels of kPanelWidth columns (zero-padded), and each tile of kPanelRows rows of a meets
// one panel in registers: per step of k, kPanelVectors vectors of the panel row are loaded once
// and every row's element of a is broadcast against them. Measured on the forward pass's shapes
// (455 x 288 times 288 x 32, AVX-512) 25% faster than Eigen including the copy of b.
//
// The vectors are GCC/Clang vector extensions of the width of this build's instruction set (16,
// 32 or 64 bytes), so the same code compiles to SSE2, AVX2 or AVX-512 without a wider
// instruction leaking into a narrower build. Each element of out is the ordered sum
// bias + a[r][0]*b[0][c] + a[r][1]*b[1][c] + ... (with FMA where the build has it): the result
// depends on neither the thread count nor how the rows are split.
#ifndef TF_DCN_CPU_ISA
#error "define TF_DCN_CPU_ISA before including cpu_panel_product.h"
#endif
#ifndef TF_DCN_CC_KERNELS_CPU_PANEL_PRODUCT_H_
#define TF_DCN_CC_KERNELS_CPU_PANEL_PRODUCT_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace tf_dcn {
namespace TF_DCN_CPU_ISA {
namespace {

// Per build: the vector width (kSimdBytes); the register tile, kPanelRows rows by kPanelVectors
// vectors of accumulators plus the panel row's vectors, within the build's vector registers (32
// with AVX-512, 16 otherwise); and kMaxPanelProductColumns, the most output columns of a product
// that uses PanelProduct. Measured on bench/bench_conv_cpu.py's forward passes against Eigen:
// with AVX-512 faster at 32 and 64 columns (S4, S1; about equal at 128 in a product alone); with
// AVX2 10% faster at 32 columns (S4) and 7% slower at 64 (S1, four panels); the baseline build
// faster at 32 (S4).
#if defined(__AVX512F__)
constexpr int kSimdBytes = 64;
constexpr int kPanelRows = 12;
constexpr int64_t kMaxPanelProductColumns = 64;
#elif defined(__AVX__)
constexpr int kSimdBytes = 32;
constexpr int kPanelRows = 6;
constexpr int64_t kMaxPanelProductColumns = 32;
#else
constexpr int kSimdBytes = 16;
constexpr int kPanelRows = 6;
constexpr int64_t kMaxPanelProductColumns = 32;
#endif
constexpr int kPanelVectors = 2;

// A vector of the build's width (also used by the convolution's per-channel loops).
template <typename A>
struct SimdVector {
  typedef A type __attribute__((vector_size(kSimdBytes)));
  static constexpr int kLanes = kSimdBytes / int(sizeof(A));
};

// Columns of one panel.
template <typename A>
constexpr int kPanelWidth = kPanelVectors * SimdVector<A>::kLanes;

// b (k x n, row stride ldb) and the bias (n values or none) as panels of kWidth columns in the
// accumulation type A, zero-padded: panel j holds columns [j*kWidth, (j+1)*kWidth) as k rows of
// kWidth, then its bias row.
template <typename A>
class PackedPanels {
 public:
  static constexpr int kWidth = kPanelWidth<A>;

  template <typename B, typename Bias>
  PackedPanels(const B* b, int64_t k, int64_t n, int64_t ldb, const Bias* bias)
      : k_(k), n_(n), panels_((n + kWidth - 1) / kWidth),
        data_(panels_ * (k + 1) * kWidth, A(0)) {
    for (int64_t j = 0; j < panels_; ++j) {
      const int64_t c0 = j * kWidth, width = std::min<int64_t>(kWidth, n - c0);
      A* dst = data_.data() + j * (k + 1) * kWidth;
      for (int64_t i = 0; i < k; ++i) {
        for (int64_t c = 0; c < width; ++c) dst[i * kWidth + c] = A(b[i * ldb + c0 + c]);
      }
      if (bias) {
        for (int64_t c = 0; c < width; ++c) dst[k * kWidth + c] = A(bias[c0 + c]);
      }
    }
  }

  int64_t k() const { return k_; }
  int64_t n() const { return n_; }
  int64_t panels() const { return panels_; }
  const A* panel(int64_t j) const { return data_.data() + j * (k_ + 1) * kWidth; }
  const A* bias(int64_t j) const { return panel(j) + k_ * kWidth; }

 private:
  int64_t k_, n_, panels_;
  std::vector<A> data_;
};

// tile[r][c] = bias[c] + sum_i a[r*lda + i] * panel[i][c] for the kPanelRows rows of a and the
// panel's kWidth columns, summed in order of i.
template <typename A>
inline void PanelTile(const A* a, int64_t lda, const A* panel, const A* bias, int64_t k,
                      A* tile) {
  using V = typename SimdVector<A>::type;
  constexpr int kLanes = SimdVector<A>::kLanes, kWidth = kPanelWidth<A>;
  V acc[kPanelRows][kPanelVectors];
  V init[kPanelVectors];
#pragma GCC unroll 4
  for (int v = 0; v < kPanelVectors; ++v) std::memcpy(&init[v], bias + v * kLanes, sizeof(V));
#pragma GCC unroll 16
  for (int r = 0; r < kPanelRows; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < kPanelVectors; ++v) acc[r][v] = init[v];
  }
  for (int64_t i = 0; i < k; ++i) {
    V w[kPanelVectors];
#pragma GCC unroll 4
    for (int v = 0; v < kPanelVectors; ++v) {
      std::memcpy(&w[v], panel + i * kWidth + v * kLanes, sizeof(V));
    }
#pragma GCC unroll 16
    for (int r = 0; r < kPanelRows; ++r) {
      const A s = a[r * lda + i];
#pragma GCC unroll 4
      for (int v = 0; v < kPanelVectors; ++v) acc[r][v] += s * w[v];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < kPanelRows; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < kPanelVectors; ++v) {
      std::memcpy(tile + r * kWidth + v * kLanes, &acc[r][v], sizeof(V));
    }
  }
}

// out[r*ldo + c] = T(bias[c] + sum_i a[r*lda + i] * b[i][c]) for r < m, c < b.n(): rows in
// tiles of kPanelRows (the last one read from a zero-padded copy), one panel at a time.
template <typename T, typename A>
void PanelProduct(const A* a, int64_t lda, int64_t m, const PackedPanels<A>& b, T* out,
                  int64_t ldo) {
  constexpr int kWidth = kPanelWidth<A>;
  const int64_t k = b.k(), full = m / kPanelRows * kPanelRows;
  std::vector<A> rest;
  if (full < m) {
    rest.assign(kPanelRows * k, A(0));
    for (int64_t r = full; r < m; ++r) {
      std::copy(a + r * lda, a + r * lda + k, &rest[(r - full) * k]);
    }
  }
  alignas(64) A tile[kPanelRows * kWidth];
  for (int64_t j = 0; j < b.panels(); ++j) {
    const int64_t c0 = j * kWidth, width = std::min<int64_t>(kWidth, b.n() - c0);
    for (int64_t r0 = 0; r0 < m; r0 += kPanelRows) {
      const bool last = r0 >= full;
      PanelTile(last ? rest.data() : a + r0 * lda, last ? k : lda, b.panel(j), b.bias(j), k,
                tile);
      const int64_t rows = std::min<int64_t>(kPanelRows, m - r0);
      for (int64_t r = 0; r < rows; ++r) {
        T* dst = out + (r0 + r) * ldo + c0;
        for (int64_t c = 0; c < width; ++c) dst[c] = T(tile[r * kWidth + c]);
      }
    }
  }
}

}  // namespace
}  // namespace TF_DCN_CPU_ISA
}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_CPU_PANEL_PRODUCT_H_
