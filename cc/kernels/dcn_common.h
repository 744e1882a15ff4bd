// Per-element helpers shared by the CPU kernels (g++) and the CUDA kernels (clang-19).
//
// This header includes no TensorFlow headers: it is plain C++ usable from host and device code.
// Everything that decides *where* a bilinear sample reads and *with which weights* lives here
// once, so the CPU and GPU kernels cannot drift apart.
#ifndef TF_DCN_CC_KERNELS_DCN_COMMON_H_
#define TF_DCN_CC_KERNELS_DCN_COMMON_H_

#include <cstdint>

#include "cc/kernels/deform_conv2d_geometry.h"
#include "cc/kernels/deform_psroi_pool_geometry.h"

#if defined(__CUDACC__)
#define TF_DCN_HD __host__ __device__ __forceinline__
#else
#define TF_DCN_HD inline
#endif

namespace tf_dcn {

// Accumulation type of every kernel: float32 for half, bfloat16 and float32; float64 for float64.
template <typename T>
struct AccumulatorType {
  using type = float;
};
template <>
struct AccumulatorType<double> {
  using type = double;
};

// ---------------------------------------------------------------------------------------------
// Deformable convolution sampling (docs/semantics.md section 1, torchvision's border rule).
// ---------------------------------------------------------------------------------------------

enum SampleKind : int {
  kSampleOutside = 0,  // outside (-1, H) x (-1, W): value 0, gradient 0.
  kSampleInside = 1,   // at least partly inside: corners/weights below are valid.
  kSampleNaN = 2,      // non-finite position (NaN offsets): value NaN, never indexes memory.
};

// The four corners of a bilinear sample, ordered (y0,x0), (y0,x1), (y1,x0), (y1,x1).
// `pixel[q]` is the flat pixel index y*W + x of corner q, or -1 when that corner lies outside
// [0, H-1] x [0, W-1] (it then reads 0). `weight[q]` is its bilinear weight (0 for outside
// corners).
template <typename A>
struct ConvSample {
  int kind;
  int64_t pixel[4];
  A weight[4];
  A ly, lx;  // fractional parts py - floor(py), px - floor(px)
};

template <typename A>
TF_DCN_HD bool IsNaN(A v) {
  return !(v == v);
}

// Sets up the bilinear sample of a plane of size H x W at (py, px). Out-of-range positions are
// rejected by comparison *before* any conversion to an integer, so huge or infinite positions
// never overflow an index.
template <typename A>
TF_DCN_HD ConvSample<A> MakeConvSample(A py, A px, int64_t height, int64_t width) {
  ConvSample<A> s;
  s.ly = A(0);
  s.lx = A(0);
  for (int q = 0; q < 4; ++q) {
    s.pixel[q] = -1;
    s.weight[q] = A(0);
  }
  if (IsNaN(py) || IsNaN(px)) {
    s.kind = kSampleNaN;
    return s;
  }
  if (!(py > A(-1) && py < A(height) && px > A(-1) && px < A(width))) {
    s.kind = kSampleOutside;
    return s;
  }
  s.kind = kSampleInside;
  // py is in (-1, H): floor fits an int64 and lies in [-1, H-1].
  int64_t y0 = static_cast<int64_t>(py);
  if (A(y0) > py) --y0;  // floor for negatives
  int64_t x0 = static_cast<int64_t>(px);
  if (A(x0) > px) --x0;
  const int64_t y1 = y0 + 1, x1 = x0 + 1;
  s.ly = py - A(y0);
  s.lx = px - A(x0);
  const A hy = A(1) - s.ly, hx = A(1) - s.lx;
  const bool y0_in = y0 >= 0, y1_in = y1 <= height - 1;
  const bool x0_in = x0 >= 0, x1_in = x1 <= width - 1;
  if (y0_in && x0_in) {
    s.pixel[0] = y0 * width + x0;
    s.weight[0] = hy * hx;
  }
  if (y0_in && x1_in) {
    s.pixel[1] = y0 * width + x1;
    s.weight[1] = hy * s.lx;
  }
  if (y1_in && x0_in) {
    s.pixel[2] = y1 * width + x0;
    s.weight[2] = s.ly * hx;
  }
  if (y1_in && x1_in) {
    s.pixel[3] = y1 * width + x1;
    s.weight[3] = s.ly * s.lx;
  }
  return s;
}

// Where kernel tap (i, j) of output pixel (ho, wo) samples the input: its regular grid position
// (ho*stride_h - pad_top + i*dilation_h, wo*stride_w - pad_left + j*dilation_w) moved by the
// tap's offsets, tap_offsets[0] = dy and tap_offsets[1] = dx. The CPU kernels and the GPU
// launchers all sample through this function.
template <typename A, typename T>
TF_DCN_HD ConvSample<A> SampleConvTapAt(const DeformConv2DDims& d, int64_t ho, int64_t wo,
                                        int64_t i, int64_t j, const T* tap_offsets) {
  const A y = A(ho * d.stride_h - d.pad_top + i * d.dilation_h) + A(tap_offsets[0]);
  const A x = A(wo * d.stride_w - d.pad_left + j * d.dilation_w) + A(tap_offsets[1]);
  return MakeConvSample<A>(y, x, d.in_h, d.in_w);
}

// The same for tap k = i*kernel_w + j.
template <typename A, typename T>
TF_DCN_HD ConvSample<A> SampleConvTap(const DeformConv2DDims& d, int64_t ho, int64_t wo, int64_t k,
                                      const T* tap_offsets) {
  const int64_t i = k / d.kernel_w;
  return SampleConvTapAt<A, T>(d, ho, wo, i, k - i * d.kernel_w, tap_offsets);
}

// The column buffer of a block of `pixels` output pixels (a CPU tile or a GPU chunk) is
// col[grp][pp][k][c - grp*in_c_per_group]: for each convolution group a row-major
// [pixels, taps*in_c_per_group] matrix, the left operand of that group's GEMM with its kernel
// slice. Index of the entry of pixel pp, tap k and input channel c (of group grp):
TF_DCN_HD int64_t ColumnIndex(int64_t pixels, int64_t taps, int64_t in_c_per_group, int64_t grp,
                              int64_t pp, int64_t k, int64_t c) {
  return ((grp * pixels + pp) * taps + k) * in_c_per_group + (c - grp * in_c_per_group);
}

// Value and position derivatives of one channel of an inside sample, from its four corner
// values v[q] (0 for outside corners).
template <typename A>
TF_DCN_HD A ConvSampleValue(const ConvSample<A>& s, const A v[4]) {
  return s.weight[0] * v[0] + s.weight[1] * v[1] + s.weight[2] * v[2] + s.weight[3] * v[3];
}
template <typename A>
TF_DCN_HD A ConvSampleDy(const ConvSample<A>& s, const A v[4]) {
  return (A(1) - s.lx) * (v[2] - v[0]) + s.lx * (v[3] - v[1]);
}
template <typename A>
TF_DCN_HD A ConvSampleDx(const ConvSample<A>& s, const A v[4]) {
  return (A(1) - s.ly) * (v[1] - v[0]) + s.ly * (v[3] - v[2]);
}

// Element q in [0, 4) of a four-corner array, picked by comparisons: with a q known only at run
// time, device code then keeps the array in registers instead of local memory.
template <typename V>
TF_DCN_HD V CornerOf(const V (&values)[4], int q) {
  return q == 0 ? values[0] : (q == 1 ? values[1] : (q == 2 ? values[2] : values[3]));
}

// Quiet NaN without <limits> (usable on the device): 0/0 is NaN in IEEE arithmetic.
template <typename A>
TF_DCN_HD A QuietNaN() {
  volatile A zero = A(0);
  return zero / zero;
}

// ---------------------------------------------------------------------------------------------
// Deformable (PS-)RoI pooling sampling (docs/semantics.md section 2, MSRA's rule).
// ---------------------------------------------------------------------------------------------

// True for finite values (false for NaN and +-Inf): Inf - Inf and NaN - NaN are NaN.
template <typename A>
TF_DCN_HD bool IsFinite(A v) {
  return (v - v) == A(0);
}

// C's round(): halves go away from zero (np.round, which rounds halves to even, differs).
// Magnitudes >= 2^52 are already integers and, like NaN and +-Inf, come back unchanged, so no
// value outside int64's range is ever converted to an integer.
template <typename A>
TF_DCN_HD A RoundHalfAwayFromZero(A x) {
  const A big = A(4503599627370496.0);  // 2^52, exact in float and double
  if (!(x > -big && x < big)) return x;
  const A t = A(static_cast<int64_t>(x));  // truncation toward zero; exact since |x| < 2^52
  const A r = x - t;                       // the fractional part, exact
  if (r >= A(0.5)) return t + A(1);
  if (r <= A(-0.5)) return t - A(1);
  return t;
}

// Box of one RoI in feature-map coordinates, and its bin and sub-bin sizes. `finite` is false
// when a box coordinate is NaN or +-Inf (after conversion to the computation type A); the other
// fields are then 0 and the kernels treat every bin of that RoI as a NaN bin.
template <typename A>
struct PoolRoi {
  bool finite;
  A x_start, y_start;  // round(x1)*scale - 0.5, round(y1)*scale - 0.5
  A roi_w, roi_h;      // max(end - start, 0.1), end = (round(x2) + 1)*scale - 0.5
  A bin_w, bin_h;      // roi / pooled
  A sub_w, sub_h;      // bin / sample_per_part
};

// Rounds the box in its own type R (float or double), then computes in A.
template <typename A, typename R>
TF_DCN_HD PoolRoi<A> MakePoolRoi(R x1, R y1, R x2, R y2, A spatial_scale, int64_t pooled,
                                 int64_t sample_per_part) {
  PoolRoi<A> g;
  g.x_start = g.y_start = g.roi_w = g.roi_h = A(0);
  g.bin_w = g.bin_h = g.sub_w = g.sub_h = A(0);
  const A rx1 = A(RoundHalfAwayFromZero(x1)), ry1 = A(RoundHalfAwayFromZero(y1));
  const A rx2 = A(RoundHalfAwayFromZero(x2)), ry2 = A(RoundHalfAwayFromZero(y2));
  g.finite = IsFinite(rx1) && IsFinite(ry1) && IsFinite(rx2) && IsFinite(ry2);
  if (!g.finite) return g;
  g.x_start = rx1 * spatial_scale - A(0.5);
  g.y_start = ry1 * spatial_scale - A(0.5);
  const A x_end = (rx2 + A(1)) * spatial_scale - A(0.5);
  const A y_end = (ry2 + A(1)) * spatial_scale - A(0.5);
  // max(., 0.1) that keeps a NaN (from an overflowing box) visible.
  const A w = x_end - g.x_start, h = y_end - g.y_start;
  g.roi_w = w < A(0.1) ? A(0.1) : w;
  g.roi_h = h < A(0.1) ? A(0.1) : h;
  g.bin_w = g.roi_w / A(pooled);
  g.bin_h = g.roi_h / A(pooled);
  g.sub_w = g.bin_w / A(sample_per_part);
  g.sub_h = g.bin_h / A(sample_per_part);
  return g;
}

// floor(p * size / pooled) for a bin index p in [0, pooled): the part cell (size = part_size).
TF_DCN_HD int64_t PoolPartIndex(int64_t p, int64_t part_size, int64_t pooled) {
  return p * part_size / pooled;
}

// clamp(floor(p * group_size / pooled), 0, group_size - 1): the position-sensitive group cell.
TF_DCN_HD int64_t PoolGroupIndex(int64_t p, int64_t group_size, int64_t pooled) {
  const int64_t g = p * group_size / pooled;
  return g < 0 ? 0 : (g > group_size - 1 ? group_size - 1 : g);
}

// First sample position (h0, w0) of bin (ph, pw), shifted by (ty, tx) = offset * trans_std,
// a fraction of the whole RoI. Sample (iy, ix) is at (h0 + iy*sub_h, w0 + ix*sub_w).
template <typename A>
TF_DCN_HD void PoolBinStart(const PoolRoi<A>& g, int64_t ph, int64_t pw, A ty, A tx, A* h0, A* w0) {
  *w0 = A(pw) * g.bin_w + g.x_start + tx * g.roi_w;
  *h0 = A(ph) * g.bin_h + g.y_start + ty * g.roi_h;
}

enum PoolSampleKind : int {
  kPoolSkipped = 0,  // outside [-0.5, W-0.5] x [-0.5, H-0.5] (or an empty plane): not counted.
  kPoolKept = 1,     // clamped into [0, W-1] x [0, H-1]; corners/weights below are valid.
  kPoolNaN = 2,      // NaN position: its bin is NaN, never indexes memory.
};

// One pooling sample. Corners follow MSRA's names: q = 0: U00 = f[y0, x0], 1: U01 = f[y1, x0],
// 2: U10 = f[y0, x1], 3: U11 = f[y1, x1], with x0 = floor(w), x1 = ceil(w) (equal at integers)
// of the clamped position. `pixel[q]` is the flat pixel index y*W + x (always in the plane for a
// kept sample), `weight[q]` its bilinear weight.
template <typename A>
struct PoolSample {
  int kind;
  int64_t pixel[4];
  A weight[4];
  A dx, dy;        // w - x0, h - y0
  int64_t y0, x0;  // the first corner's row and column (0 unless kept)
};

// Classifies and sets up the sample at (h, w) of an H x W plane. The skip test is strict (a
// sample exactly at -0.5 or W-0.5 is kept) and happens by comparison before any conversion to an
// integer, so huge or infinite positions are simply skipped.
template <typename A>
TF_DCN_HD PoolSample<A> MakePoolSample(A h, A w, int64_t height, int64_t width) {
  PoolSample<A> s;
  s.dx = s.dy = A(0);
  s.y0 = s.x0 = 0;
  for (int q = 0; q < 4; ++q) {
    s.pixel[q] = 0;
    s.weight[q] = A(0);
  }
  if (IsNaN(h) || IsNaN(w)) {
    s.kind = kPoolNaN;
    return s;
  }
  if (height < 1 || width < 1 || w < A(-0.5) || w > A(width) - A(0.5) || h < A(-0.5) ||
      h > A(height) - A(0.5)) {
    s.kind = kPoolSkipped;
    return s;
  }
  s.kind = kPoolKept;
  const A w_max = A(width - 1), h_max = A(height - 1);
  w = w < A(0) ? A(0) : (w > w_max ? w_max : w);
  h = h < A(0) ? A(0) : (h > h_max ? h_max : h);
  // w, h are in [0, W-1] x [0, H-1]: truncation is floor and fits int64.
  int64_t x0 = static_cast<int64_t>(w), y0 = static_cast<int64_t>(h);
  if (x0 > width - 1) x0 = width - 1;
  if (y0 > height - 1) y0 = height - 1;
  int64_t x1 = A(x0) < w ? x0 + 1 : x0, y1 = A(y0) < h ? y0 + 1 : y0;
  if (x1 > width - 1) x1 = width - 1;
  if (y1 > height - 1) y1 = height - 1;
  s.dx = w - A(x0);
  s.dy = h - A(y0);
  s.y0 = y0;
  s.x0 = x0;
  const A hx = A(1) - s.dx, hy = A(1) - s.dy;
  s.pixel[0] = y0 * width + x0;
  s.pixel[1] = y1 * width + x0;
  s.pixel[2] = y0 * width + x1;
  s.pixel[3] = y1 * width + x1;
  s.weight[0] = hx * hy;
  s.weight[1] = hx * s.dy;
  s.weight[2] = s.dx * hy;
  s.weight[3] = s.dx * s.dy;
  return s;
}

// First sample position (h0, w0) of bin (ph, pw) of a finite RoI for offset class cls: the bin's
// start moved by offset * trans_std * roi size, the offset being the class's (x, y) pair of the
// bin's part cell in roi_offsets ([part_size, part_size, 2*num_classes], x first), or no move
// when roi_offsets is nullptr. The CPU kernels and the GPU launchers both place bins with it.
template <typename A, typename T>
TF_DCN_HD void PoolBinOrigin(const DeformPSRoIPoolDims& d, const PoolRoi<A>& roi,
                             const T* roi_offsets, int64_t ph, int64_t pw, int64_t cls, A* h0,
                             A* w0) {
  A tx = A(0), ty = A(0);
  if (roi_offsets != nullptr) {
    const int64_t part_h = PoolPartIndex(ph, d.part_size, d.pooled_size);
    const int64_t part_w = PoolPartIndex(pw, d.part_size, d.pooled_size);
    const T* o = roi_offsets + (part_h * d.part_size + part_w) * (2 * d.num_classes) + 2 * cls;
    tx = A(o[0]) * A(d.trans_std);  // x first
    ty = A(o[1]) * A(d.trans_std);
  }
  PoolBinStart(roi, ph, pw, ty, tx, h0, w0);
}

// Sample (iy, ix) of a bin whose first sample is at (h0, w0): sub-bin starts, row-major.
template <typename A>
TF_DCN_HD PoolSample<A> PoolBinSample(const PoolRoi<A>& roi, A h0, A w0, int64_t iy, int64_t ix,
                                      int64_t height, int64_t width) {
  const A h = h0 + A(iy) * roi.sub_h;
  return MakePoolSample<A>(h, w0 + A(ix) * roi.sub_w, height, width);
}

// Value and position derivatives of a kept sample from its corner values u = {U00, U01, U10, U11}.
// At an integer coordinate floor == ceil, the corners coincide and that derivative is 0.
template <typename A>
TF_DCN_HD A PoolSampleValue(const PoolSample<A>& s, const A u[4]) {
  return s.weight[0] * u[0] + s.weight[1] * u[1] + s.weight[2] * u[2] + s.weight[3] * u[3];
}
template <typename A>
TF_DCN_HD A PoolSampleDx(const PoolSample<A>& s, const A u[4]) {
  return u[3] * s.dy + u[2] * (A(1) - s.dy) - u[1] * s.dy - u[0] * (A(1) - s.dy);
}
template <typename A>
TF_DCN_HD A PoolSampleDy(const PoolSample<A>& s, const A u[4]) {
  return u[3] * s.dx + u[1] * (A(1) - s.dx) - u[2] * s.dx - u[0] * (A(1) - s.dx);
}

}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_DCN_COMMON_H_
