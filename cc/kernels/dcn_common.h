// Per-element helpers shared by the CPU kernels (g++) and the CUDA kernels (nvcc).
//
// This header includes no TensorFlow headers: it is plain C++ usable from host and device code.
// Everything that decides *where* a bilinear sample reads and *with which weights* lives here
// once, so the CPU and GPU kernels cannot drift apart.
#ifndef TF_DCN_CC_KERNELS_DCN_COMMON_H_
#define TF_DCN_CC_KERNELS_DCN_COMMON_H_

#include <cstdint>

#if defined(__CUDACC__)
#define TF_DCN_HD __host__ __device__ __forceinline__
#else
#define TF_DCN_HD inline
#endif

namespace tf_dcn {

// ---------------------------------------------------------------------------------------------
// Deformable convolution sampling (semantics.md section 1, torchvision's border rule).
// ---------------------------------------------------------------------------------------------

enum SampleKind : int {
  kSampleOutside = 0,  // outside (-1, H) x (-1, W): value 0, gradient 0.
  kSampleInside = 1,   // at least partly inside: corners/weights below are valid.
  kSampleNaN = 2,      // non-finite position (NaN offsets): value NaN, never indexes memory.
};

// The four corners of a bilinear sample, ordered (y0,x0), (y0,x1), (y1,x0), (y1,x1).
// `pixel[q]` is the flat pixel index y*W + x of corner q, or -1 when that corner lies outside
// [0, H-1] x [0, W-1] (it then reads 0). `weight[q]` is its bilinear weight (0 for outside corners).
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
  if (y0_in && x0_in) { s.pixel[0] = y0 * width + x0; s.weight[0] = hy * hx; }
  if (y0_in && x1_in) { s.pixel[1] = y0 * width + x1; s.weight[1] = hy * s.lx; }
  if (y1_in && x0_in) { s.pixel[2] = y1 * width + x0; s.weight[2] = s.ly * hx; }
  if (y1_in && x1_in) { s.pixel[3] = y1 * width + x1; s.weight[3] = s.ly * s.lx; }
  return s;
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

// Quiet NaN without <limits> (usable on the device): 0/0 is NaN in IEEE arithmetic.
template <typename A>
TF_DCN_HD A QuietNaN() {
  volatile A zero = A(0);
  return zero / zero;
}

}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_DCN_COMMON_H_
