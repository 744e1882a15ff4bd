// Matrix products spread over the op's thread pool, for the CPU kernels of one instruction set
// (included by deform_conv2d_cpu_kernels.h inside namespace tf_dcn::TF_DCN_CPU_ISA).
//
// A product C (m x n) = A (m x k) * B (k x n) is cut into row and column blocks; each block is one
// single-threaded Eigen product, so every element of C is computed by exactly one block and the
// result is bitwise reproducible for a given split. The split depends on the sizes and the thread
// count only: about one block per thread, rows first (each extra column block repacks the left
// operand, each extra row block the right one), columns only when the rows alone would make blocks
// thinner than kMinBlockRows.
#ifndef TF_DCN_CPU_ISA
#error "define TF_DCN_CPU_ISA before including cpu_parallel_product.h"
#endif
#ifndef TF_DCN_CC_KERNELS_CPU_PARALLEL_PRODUCT_H_
#define TF_DCN_CC_KERNELS_CPU_PARALLEL_PRODUCT_H_

#include <algorithm>
#include <cstdint>

#include "Eigen/Core"
#include "cc/kernels/cpu_dispatch.h"

namespace tf_dcn {
namespace TF_DCN_CPU_ISA {
namespace {

template <typename A>
using RowMatrix = Eigen::Matrix<A, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename A>
using MatrixMap = Eigen::Map<RowMatrix<A>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <typename A>
using ConstMatrixMap = Eigen::Map<const RowMatrix<A>, Eigen::Unaligned, Eigen::OuterStride<>>;

constexpr int64_t kMinBlockRows = 64;   // thinner row blocks pack the right operand too often
constexpr int64_t kMaxBlockRows = 512;  // taller ones are cut further (more, equal blocks)
constexpr int64_t kMinBlockCols = 64;
constexpr int64_t kColumnAlignment = 16;  // column block edges: whole 64-byte lines of float

// out[e] = T(copies[0][e] + copies[1][e] + ...) over `count` private copies of `size` elements
// (copies[k] at copies + k*size), summed in copy order: the fixed-order reduction of the kernels'
// private partial sums.
template <typename A, typename T>
void SumCopiesInOrder(const CpuParallel& parallel, const A* copies, int64_t count, int64_t size,
                      T* out) {
  ParallelShares(parallel, size, count * 2, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      A sum = 0;
      for (int64_t k = 0; k < count; ++k) sum += copies[k * size + e];
      out[e] = T(sum);
    }
  });
}

// Row and column block counts of each of `batch` independent m x n products.
struct ProductSplit {
  int64_t row_blocks, col_blocks;
};

inline ProductSplit SplitProduct(int64_t batch, int64_t m, int64_t n, int threads) {
  const int64_t per_product = std::max<int64_t>(1, (threads + batch - 1) / batch);
  int64_t col_blocks = 1;
  if (m < per_product * kMinBlockRows) {
    col_blocks = std::clamp<int64_t>((per_product * kMinBlockRows + m - 1) / std::max<int64_t>(1, m),
                                     1, std::max<int64_t>(1, n / kMinBlockCols));
  }
  int64_t row_blocks = (per_product + col_blocks - 1) / col_blocks;
  row_blocks *= std::max<int64_t>(1, (m + row_blocks * kMaxBlockRows - 1) / (row_blocks * kMaxBlockRows));
  return {std::clamp<int64_t>(row_blocks, 1, std::max<int64_t>(1, m)), col_blocks};
}

// Edge i of `blocks` blocks over [0, n); inner edges are rounded down to kColumnAlignment.
inline int64_t ColumnEdge(int64_t n, int64_t blocks, int64_t i) {
  if (i >= blocks) return n;
  return n * i / blocks / kColumnAlignment * kColumnAlignment;
}

// Calls fn(product, r0, r1, c0, c1) for every non-empty block of `batch` m x n products with
// inner size k, on the thread pool.
template <typename Fn>
void ForEachProductBlock(const CpuParallel& parallel, int64_t batch, int64_t m, int64_t n,
                         int64_t k, Fn fn) {
  if (batch == 0 || m == 0 || n == 0) return;
  const ProductSplit split = SplitProduct(batch, m, n, parallel.num_threads);
  const int64_t per_product = split.row_blocks * split.col_blocks;
  const int64_t cost = (m / split.row_blocks + 1) * (n / split.col_blocks + 1) * 2 * (k + 1);
  ParallelShares(parallel, batch * per_product, cost, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      const int64_t b = i / per_product, rem = i - b * per_product;
      const int64_t rb = rem / split.col_blocks, cb = rem - rb * split.col_blocks;
      const int64_t r0 = m * rb / split.row_blocks, r1 = m * (rb + 1) / split.row_blocks;
      const int64_t c0 = ColumnEdge(n, split.col_blocks, cb);
      const int64_t c1 = ColumnEdge(n, split.col_blocks, cb + 1);
      if (r0 < r1 && c0 < c1) fn(b, r0, r1, c0, c1);
    }
  });
}

}  // namespace
}  // namespace TF_DCN_CPU_ISA
}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_CPU_PARALLEL_PRODUCT_H_
