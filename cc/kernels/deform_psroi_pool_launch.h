// The GPU algorithm of the deformable (PS-)RoI pooling (docs/semantics.md section 2), written
// once over an executor (gpu_launch.h): CudaExec runs it on the device (deform_psroi_pool_gpu.cu),
// HostExec runs the very same code on the CPU for the test suite. No TensorFlow and no CUDA
// headers.
//
// A "unit" is one bin of one RoI for one offset class, u = ((r*P + ph)*P + pw)*K + cls; all of
// its output channels share the same samples.
//   forward    one thread per output element (r, ph, pw, ctop): walks the samples of its bin
//              (PoolForward), like the CPU kernel (NaN bin for a non-finite box or a NaN
//              position, 0 when no sample is kept).
//   backward   counts[u] = kept samples of unit u, or -1 for a NaN bin (BinCounts), then
//     d features, fast path: one thread per output element scatters grad/count times the
//              corner weights with atomic adds (ScatterFeatureGrad);
//     d features, deterministic path: every (unit, sample, corner) is an entry, numbered
//              E = ((u*S*S + iy*S + ix)*4 + q) in the CPU kernel's visiting order. Entries are
//              keyed by the (image pixel, offset class, group cell) they land on, stably
//              radix-sorted, and one thread per (run of equal keys, channel of the class)
//              adds the run to its feature element in sorted order (FeatureGradKeys,
//              GatherFeatureGrad). No floating-point atomics; every element's sum has the CPU
//              kernel's order. Entries are processed in chunks of at most kMaxEntriesPerChunk
//              (in E order, one after another), so memory does not grow with the problem.
//     d offsets: one thread per (RoI, part cell, class) loops over the bins of that part cell
//              in row-major order, their kept samples and the class's channels (OffsetGrad);
//              deterministic in both modes.
// Half types accumulate in float32 (AccumulatorType), the features gradient in a float32
// workspace buffer that is cast at the end.
#ifndef TF_DCN_CC_KERNELS_DEFORM_PSROI_POOL_LAUNCH_H_
#define TF_DCN_CC_KERNELS_DEFORM_PSROI_POOL_LAUNCH_H_

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cc/kernels/dcn_common.h"
#include "cc/kernels/deform_psroi_pool_geometry.h"
#include "cc/kernels/deform_psroi_pool_gpu.h"
#include "cc/kernels/gpu_launch.h"

namespace tf_dcn {
namespace pool_gpu {

// Entries of one deterministic features-gradient chunk (24 to 28 bytes each, plus the sort's
// temporary storage).
constexpr int64_t kMaxEntriesPerChunk = int64_t(1) << 21;
// Above this many entries in all, E would come close to int64's range (only reachable with an
// absurd sample_per_part): the deterministic path refuses with kGpuPoolTooManySamples.
constexpr int64_t kMaxTotalEntries = int64_t(1) << 62;

// The pooling's dimensions plus the sizes derived from them once per call (plain fields, usable
// on the device, so threads do not recompute the divisions).
struct Shape {
  DeformPSRoIPoolDims dims;
  int64_t group_cells;          // group_size^2
  int64_t samples_per_bin;      // sample_per_part^2
  int64_t channels_each_class;  // output channels per offset class
  int64_t offset_channels;      // 2 * num_classes
  int64_t pixels;               // batch * height * width
  int64_t units;                // num_rois * pooled_size^2 * num_classes

  explicit Shape(const DeformPSRoIPoolDims& d)
      : dims(d),
        group_cells(d.group_cells()),
        samples_per_bin(d.samples_per_bin()),
        channels_each_class(d.channels_each_class()),
        offset_channels(d.offset_channels()),
        pixels(d.batch * d.height * d.width),
        units(d.num_rois * d.bins() * d.num_classes) {}
};

// Position-sensitive group cell gidx = gh*G + gw of bin (ph, pw); output channel ctop reads
// feature channel ctop*GG + gidx.
TF_DCN_HD int64_t GroupCell(const Shape& s, int64_t ph, int64_t pw) {
  return PoolGroupIndex(ph, s.dims.group_size, s.dims.pooled_size) * s.dims.group_size +
         PoolGroupIndex(pw, s.dims.group_size, s.dims.pooled_size);
}

// Whether a batch index (rois[r, 0]) is an integer in [0, batch): the op's check, and the guard
// that keeps the kernels from reading features of an image that does not exist.
template <typename TR>
TF_DCN_HD bool ValidBatchIndex(TR value, int64_t batch) {
  const double v = static_cast<double>(value);
  return v >= 0.0 && v < static_cast<double>(batch) && ::floor(v) == v;
}

// One unit: the RoI's batch index and box, and the first sample position of the bin;
// nan_origin when the box is not finite or the batch index is invalid (the op reports that
// error; the bin then reads nothing).
template <typename A>
struct Bin {
  int64_t batch;
  PoolRoi<A> roi;
  A h0, w0;
  bool nan_origin;
};

// offsets: [R, part, part, 2*K] with x before y, or nullptr without offsets.
template <typename A, typename T, typename TR>
TF_DCN_HD Bin<A> MakeBin(const Shape& s, const TR* rois, const T* offsets, int64_t r, int64_t ph,
                         int64_t pw, int64_t cls) {
  const TR* box = rois + r * 5;
  Bin<A> b;
  const bool valid_batch = ValidBatchIndex(box[0], s.dims.batch);
  b.batch = valid_batch ? static_cast<int64_t>(box[0]) : 0;
  b.roi = MakePoolRoi<A, TR>(box[1], box[2], box[3], box[4], A(s.dims.spatial_scale),
                             s.dims.pooled_size, s.dims.sample_per_part);
  b.h0 = b.w0 = A(0);
  b.nan_origin = !b.roi.finite || !valid_batch;
  if (b.nan_origin) return b;
  const T* roi_offsets =
      offsets == nullptr ? nullptr
                         : offsets + r * s.dims.part_size * s.dims.part_size * s.offset_channels;
  PoolBinOrigin(s.dims, b.roi, roi_offsets, ph, pw, cls, &b.h0, &b.w0);
  return b;
}

// Sample (iy, ix) of a bin (PoolBinSample, like the CPU kernels).
template <typename A>
TF_DCN_HD PoolSample<A> SampleAt(const Shape& s, const Bin<A>& b, int64_t iy, int64_t ix) {
  return PoolBinSample(b.roi, b.h0, b.w0, iy, ix, s.dims.height, s.dims.width);
}

// Unit u -> (r, ph, pw, cls); bin = (r*P + ph)*P + pw indexes the output rows.
struct UnitIndex {
  int64_t r, ph, pw, cls, bin;
};
TF_DCN_HD UnitIndex DecodeUnit(const Shape& s, int64_t u) {
  UnitIndex x;
  x.cls = u % s.dims.num_classes;
  x.bin = u / s.dims.num_classes;
  x.pw = x.bin % s.dims.pooled_size;
  x.ph = (x.bin / s.dims.pooled_size) % s.dims.pooled_size;
  x.r = x.bin / (s.dims.pooled_size * s.dims.pooled_size);
  return x;
}

// One thread per output element i = ((r*P + ph)*P + pw)*D + ctop.
template <typename T, typename TR>
struct PoolForward {
  using A = typename AccumulatorType<T>::type;
  Shape s;
  const T* features;
  const TR* rois;
  const T* offsets;
  T* output;

  TF_DCN_HD void operator()(int64_t i) const {
    const int64_t ctop = i % s.dims.output_dim, bin = i / s.dims.output_dim;
    const int64_t pw = bin % s.dims.pooled_size,
                  ph = (bin / s.dims.pooled_size) % s.dims.pooled_size,
                  r = bin / (s.dims.pooled_size * s.dims.pooled_size);
    const Bin<A> b = MakeBin<A>(s, rois, offsets, r, ph, pw, ctop / s.channels_each_class);
    const T* plane = features + b.batch * s.dims.height * s.dims.width * s.dims.channels +
                     ctop * s.group_cells + GroupCell(s, ph, pw);
    A sum = A(0);
    int64_t kept = 0;
    bool nan = b.nan_origin;
    for (int64_t iy = 0; iy < s.dims.sample_per_part && !nan; ++iy) {
      for (int64_t ix = 0; ix < s.dims.sample_per_part; ++ix) {
        const PoolSample<A> smp = SampleAt(s, b, iy, ix);
        if (smp.kind == kPoolNaN) {
          nan = true;
          break;
        }
        if (smp.kind != kPoolKept) continue;
        ++kept;
        A u[4];
        for (int q = 0; q < 4; ++q) u[q] = A(plane[smp.pixel[q] * s.dims.channels]);
        sum += PoolSampleValue(smp, u);
      }
    }
    A v = A(0);
    if (nan) {
      v = QuietNaN<A>();
    } else if (kept > 0) {
      v = sum / A(kept);
    }
    output[i] = T(v);
  }
};

// counts[u] = kept samples of unit u, or -1 when the bin is NaN (non-finite box or a NaN sample
// position). Used by every backward pass.
template <typename T, typename TR>
struct BinCounts {
  using A = typename AccumulatorType<T>::type;
  Shape s;
  const TR* rois;
  const T* offsets;
  int64_t* counts;

  TF_DCN_HD void operator()(int64_t u) const {
    const UnitIndex x = DecodeUnit(s, u);
    const Bin<A> b = MakeBin<A>(s, rois, offsets, x.r, x.ph, x.pw, x.cls);
    int64_t kept = 0;
    bool nan = b.nan_origin;
    for (int64_t iy = 0; iy < s.dims.sample_per_part && !nan; ++iy) {
      for (int64_t ix = 0; ix < s.dims.sample_per_part; ++ix) {
        const int kind = SampleAt(s, b, iy, ix).kind;
        if (kind == kPoolNaN) {
          nan = true;
          break;
        }
        kept += kind == kPoolKept;
      }
    }
    counts[u] = nan ? -1 : kept;
  }
};

// Fast features gradient: one thread per output element adds grad/count * weight to the four
// corners of every kept sample of its bin, atomically, into acc [N, H, W, C].
template <typename T, typename TR>
struct ScatterFeatureGrad {
  using A = typename AccumulatorType<T>::type;
  Shape s;
  const TR* rois;
  const T* offsets;
  const T* grad_output;
  const int64_t* counts;
  A* acc;

  TF_DCN_HD void operator()(int64_t i) const {
    const int64_t ctop = i % s.dims.output_dim, bin = i / s.dims.output_dim,
                  cls = ctop / s.channels_each_class;
    const int64_t count = counts[bin * s.dims.num_classes + cls];
    if (count <= 0) return;  // NaN bin or nothing kept: no gradient to the features
    const int64_t pw = bin % s.dims.pooled_size,
                  ph = (bin / s.dims.pooled_size) % s.dims.pooled_size,
                  r = bin / (s.dims.pooled_size * s.dims.pooled_size);
    const Bin<A> b = MakeBin<A>(s, rois, offsets, r, ph, pw, cls);
    const A g = A(grad_output[i]) / A(count);
    A* plane = acc + b.batch * s.dims.height * s.dims.width * s.dims.channels +
               ctop * s.group_cells + GroupCell(s, ph, pw);
    for (int64_t iy = 0; iy < s.dims.sample_per_part; ++iy) {
      for (int64_t ix = 0; ix < s.dims.sample_per_part; ++ix) {
        const PoolSample<A> smp = SampleAt(s, b, iy, ix);
        if (smp.kind != kPoolKept) continue;
        for (int q = 0; q < 4; ++q)
          AtomicAddTo(plane + smp.pixel[q] * s.dims.channels, g * smp.weight[q]);
      }
    }
  }
};

// Deterministic features gradient, step 1, for entries E = e0 + e, e in [0, n): the key of
// entry E = (u*SS + iy*S + ix)*4 + q is ((b*H*W + pixel)*K + cls)*GG + gidx, the (image pixel,
// class, group cell) corner q of that sample lands on, or `sentinel` (sorted last, ignored) when
// the unit passes no gradient or the sample is not kept. weights[e] is the corner's weight.
template <typename T, typename TR>
struct FeatureGradKeys {
  using A = typename AccumulatorType<T>::type;
  Shape s;
  const TR* rois;
  const T* offsets;
  const int64_t* counts;
  uint64_t* keys;
  uint32_t* values;
  A* weights;
  int64_t e0;
  uint64_t sentinel;

  TF_DCN_HD void operator()(int64_t e) const {
    const int64_t E = e0 + e;
    const int q = static_cast<int>(E % 4);
    const int64_t sample = (E / 4) % s.samples_per_bin, u = E / (4 * s.samples_per_bin);
    uint64_t key = sentinel;
    A w = A(0);
    if (counts[u] > 0) {
      const UnitIndex x = DecodeUnit(s, u);
      const Bin<A> b = MakeBin<A>(s, rois, offsets, x.r, x.ph, x.pw, x.cls);
      const PoolSample<A> smp =
          SampleAt(s, b, sample / s.dims.sample_per_part, sample % s.dims.sample_per_part);
      if (smp.kind == kPoolKept) {
        const int64_t pixel = b.batch * s.dims.height * s.dims.width + CornerOf(smp.pixel, q);
        key = static_cast<uint64_t>((pixel * s.dims.num_classes + x.cls) * s.group_cells +
                                    GroupCell(s, x.ph, x.pw));
        w = CornerOf(smp.weight, q);
      }
    }
    keys[e] = key;
    values[e] = static_cast<uint32_t>(e);
    weights[e] = w;
  }
};

// Deterministic features gradient, step 2: one thread per (sorted entry, channel j of the
// class). The thread at the first entry of a run of equal keys adds the run, in order, to
// feature element (pixel, ((cls*Ce + j)*GG + gidx)); every other thread returns. Each feature
// element belongs to exactly one (key, j), so no two threads write the same element, and the
// order of its sum (chunks in turn, entries in E order within a chunk) is the CPU kernel's.
template <typename T>
struct GatherFeatureGrad {
  using A = typename AccumulatorType<T>::type;
  Shape s;
  const T* grad_output;
  const int64_t* counts;
  const uint64_t* keys;    // sorted
  const uint32_t* values;  // entry ids in key order
  const A* weights;        // by entry id
  A* acc;
  int64_t e0, n;
  uint64_t sentinel;

  TF_DCN_HD void operator()(int64_t t) const {
    const int64_t j = t % s.channels_each_class, first = t / s.channels_each_class;
    const uint64_t key = keys[first];
    if (key == sentinel || (first > 0 && keys[first - 1] == key)) return;
    const int64_t gidx = static_cast<int64_t>(key % static_cast<uint64_t>(s.group_cells));
    const uint64_t rest = key / static_cast<uint64_t>(s.group_cells);
    const int64_t cls = static_cast<int64_t>(rest % static_cast<uint64_t>(s.dims.num_classes));
    const int64_t pixel = static_cast<int64_t>(rest / static_cast<uint64_t>(s.dims.num_classes));
    const int64_t ctop = cls * s.channels_each_class + j;
    A* dst = acc + pixel * s.dims.channels + ctop * s.group_cells + gidx;
    A v = *dst;
    for (int64_t k = first; k < n && keys[k] == key; ++k) {
      const int64_t e = values[k];
      const int64_t u = (e0 + e) / (4 * s.samples_per_bin);
      const A g =
          A(grad_output[(u / s.dims.num_classes) * s.dims.output_dim + ctop]) / A(counts[u]);
      v += g * weights[e];
    }
    *dst = v;
  }
};

// Offsets gradient: one thread per (RoI, part cell, class) writes both components (x, y) of
// that cell's offsets: the sum over the bins of the cell (row-major), of trans_std * roi size /
// count times the sum over kept samples of the grad-weighted position derivatives. NaN when one
// of those bins is NaN, 0 when none keeps a sample.
template <typename T, typename TR>
struct OffsetGrad {
  using A = typename AccumulatorType<T>::type;
  Shape s;
  const T* features;
  const TR* rois;
  const T* offsets;
  const T* grad_output;
  const int64_t* counts;
  T* grad_offsets;

  // Bins p in [0, P) with floor(p*part/P) == cell: [ceil(cell*P/part), ceil((cell+1)*P/part)).
  TF_DCN_HD void BinRange(int64_t cell, int64_t* lo, int64_t* hi) const {
    *lo = (cell * s.dims.pooled_size + s.dims.part_size - 1) / s.dims.part_size;
    const int64_t h = ((cell + 1) * s.dims.pooled_size + s.dims.part_size - 1) / s.dims.part_size;
    *hi = h < s.dims.pooled_size ? h : s.dims.pooled_size;
  }

  TF_DCN_HD void operator()(int64_t i) const {
    const int64_t cls = i % s.dims.num_classes, cell = i / s.dims.num_classes;
    const int64_t part_w = cell % s.dims.part_size,
                  part_h = (cell / s.dims.part_size) % s.dims.part_size;
    const int64_t r = cell / (s.dims.part_size * s.dims.part_size);
    int64_t ph_lo, ph_hi, pw_lo, pw_hi;
    BinRange(part_h, &ph_lo, &ph_hi);
    BinRange(part_w, &pw_lo, &pw_hi);
    const A trans_std = A(s.dims.trans_std);
    A dx = A(0), dy = A(0);
    bool nan = false;
    for (int64_t ph = ph_lo; ph < ph_hi; ++ph) {
      for (int64_t pw = pw_lo; pw < pw_hi; ++pw) {
        const int64_t bin = (r * s.dims.pooled_size + ph) * s.dims.pooled_size + pw;
        const int64_t count = counts[bin * s.dims.num_classes + cls];
        if (count < 0) nan = true;
        if (count <= 0 || nan) continue;
        const Bin<A> b = MakeBin<A>(s, rois, offsets, r, ph, pw, cls);
        const T* image = features + b.batch * s.dims.height * s.dims.width * s.dims.channels;
        const int64_t channel0 = cls * s.channels_each_class * s.group_cells + GroupCell(s, ph, pw);
        const T* gout = grad_output + bin * s.dims.output_dim + cls * s.channels_each_class;
        A gx = A(0), gy = A(0);
        for (int64_t iy = 0; iy < s.dims.sample_per_part; ++iy) {
          for (int64_t ix = 0; ix < s.dims.sample_per_part; ++ix) {
            const PoolSample<A> smp = SampleAt(s, b, iy, ix);
            if (smp.kind != kPoolKept) continue;
            const T* p0 = image + smp.pixel[0] * s.dims.channels + channel0;
            const T* p1 = image + smp.pixel[1] * s.dims.channels + channel0;
            const T* p2 = image + smp.pixel[2] * s.dims.channels + channel0;
            const T* p3 = image + smp.pixel[3] * s.dims.channels + channel0;
            A dots[4] = {A(0), A(0), A(0), A(0)};
            for (int64_t j = 0; j < s.channels_each_class; ++j) {
              const A g = A(gout[j]);
              const int64_t k = j * s.group_cells;
              dots[0] += g * A(p0[k]);
              dots[1] += g * A(p1[k]);
              dots[2] += g * A(p2[k]);
              dots[3] += g * A(p3[k]);
            }
            gx += PoolSampleDx(smp, dots);
            gy += PoolSampleDy(smp, dots);
          }
        }
        const A c = A(count);
        dx += gx / c * trans_std * b.roi.roi_w;
        dy += gy / c * trans_std * b.roi.roi_h;
      }
    }
    if (nan) dx = dy = QuietNaN<A>();
    T* dst = grad_offsets + cell * s.offset_channels + 2 * cls;
    dst[0] = T(dx);
    dst[1] = T(dy);
  }
};

// The batch-index check (DeformPSRoIPoolGpuCheckBatchIndices): reset, one thread per RoI, then
// the value of the first bad one.
struct ResetBatchCheck {
  RoiBatchCheck* result;
  int64_t num_rois;
  TF_DCN_HD void operator()(int64_t) const {
    result->first_bad = num_rois;
    result->value = 0.0;
  }
};
template <typename TR>
struct FindBadBatchIndex {
  const TR* rois;
  int64_t batch;
  RoiBatchCheck* result;
  TF_DCN_HD void operator()(int64_t r) const {
    if (!ValidBatchIndex(rois[r * 5], batch)) AtomicMinTo(&result->first_bad, r);
  }
};
template <typename TR>
struct ReadBadBatchIndex {
  const TR* rois;
  int64_t num_rois;
  RoiBatchCheck* result;
  TF_DCN_HD void operator()(int64_t) const {
    if (result->first_bad < num_rois) {
      result->value = static_cast<double>(rois[result->first_bad * 5]);
    }
  }
};

template <typename Exec, typename TR>
int CheckBatchIndices(int64_t num_rois, int64_t batch, const GpuLaunch& launch, const void* rois_v,
                      void* scratch, RoiBatchCheck* host) {
  Exec exec(launch);
  const TR* rois = static_cast<const TR*>(rois_v);
  RoiBatchCheck* result = static_cast<RoiBatchCheck*>(scratch);
  TF_DCN_GPU_TRY(exec.ForEach(1, ResetBatchCheck{result, num_rois}));
  if (num_rois > 0) {
    TF_DCN_GPU_TRY(exec.ForEach(num_rois, FindBadBatchIndex<TR>{rois, batch, result}));
    TF_DCN_GPU_TRY(exec.ForEach(1, ReadBadBatchIndex<TR>{rois, num_rois, result}));
  }
  return exec.CopyToHost(host, result, static_cast<int64_t>(sizeof(RoiBatchCheck)));
}

// Pieces of the workspace. Built twice: once with base == nullptr to measure, once to carve.
// The forward pass needs none.
template <typename T>
struct Workspace {
  using A = typename AccumulatorType<T>::type;
  int64_t* counts = nullptr;
  A* acc = nullptr;  // half types only
  uint64_t *keys_in = nullptr, *keys_out = nullptr;
  uint32_t *values_in = nullptr, *values_out = nullptr;
  A* weights = nullptr;
  void* sort_temp = nullptr;
  int64_t sort_temp_bytes = 0, bytes = 0, total_entries = 0, chunk = 0;
  int key_bits = 1;
  uint64_t sentinel = 0;

  template <typename Exec>
  int Layout(Exec& exec, const Shape& s, bool backward, bool deterministic, void* base) {
    constexpr bool kHalfType = !std::is_same<T, A>::value;
    WorkspaceCarver carve(base);
    if (backward) {
      counts = carve.Take<int64_t>(s.units);
      if (kHalfType) acc = carve.Take<A>(s.pixels * s.dims.channels);
      if (deterministic && s.pixels * s.dims.channels > 0 && s.units > 0) {
        // units * SS * 4 without overflowing int64.
        if (s.samples_per_bin > kMaxTotalEntries / 4 / s.units) return kGpuPoolTooManySamples;
        total_entries = s.units * s.samples_per_bin * 4;
        chunk = total_entries < kMaxEntriesPerChunk ? total_entries : kMaxEntriesPerChunk;
        sentinel = static_cast<uint64_t>(s.pixels * s.dims.num_classes * s.group_cells);
        key_bits = KeyBits(sentinel);
        keys_in = carve.Take<uint64_t>(chunk);
        keys_out = carve.Take<uint64_t>(chunk);
        values_in = carve.Take<uint32_t>(chunk);
        values_out = carve.Take<uint32_t>(chunk);
        weights = carve.Take<A>(chunk);
        if (const int e = exec.SortPairsTempBytes(chunk, key_bits, &sort_temp_bytes)) return e;
        sort_temp = carve.Take<char>(sort_temp_bytes);
      }
    }
    bytes = carve.bytes();
    return kGpuOk;
  }
};

template <typename Exec, typename T>
int WorkspaceBytes(const DeformPSRoIPoolDims& d, const GpuLaunch& launch, bool backward,
                   int64_t* bytes) {
  Exec exec(launch);
  Workspace<T> ws;
  TF_DCN_GPU_TRY(ws.Layout(exec, Shape(d), backward, launch.deterministic, nullptr));
  *bytes = ws.bytes;
  return kGpuOk;
}

// features [N, H, W, C], rois [R, 5] (batch indices checked by the caller), offsets
// [R, part, part, 2*K] or nullptr, output [R, P, P, D]. All device pointers.
template <typename Exec, typename T, typename TR>
int Forward(const DeformPSRoIPoolDims& d, const GpuLaunch& launch, const void* features,
            const void* rois, const void* offsets, void* output, void* workspace,
            int64_t workspace_bytes) {
  const Shape s(d);
  Exec exec(launch);
  Workspace<T> ws;
  TF_DCN_GPU_TRY(ws.Layout(exec, s, false, false, workspace));
  if (ws.bytes > workspace_bytes) return kGpuWorkspaceTooSmall;
  const T* off = s.dims.use_offsets ? static_cast<const T*>(offsets) : nullptr;
  return exec.ForEach(d.output_size(), PoolForward<T, TR>{s, static_cast<const T*>(features),
                                                          static_cast<const TR*>(rois), off,
                                                          static_cast<T*>(output)});
}

// grad_features [N, H, W, C] is always written (zeros where nothing pools); grad_offsets
// [R, part, part, 2*K] when offsets are used (nullptr otherwise).
template <typename Exec, typename T, typename TR>
int Backward(const DeformPSRoIPoolDims& d, const GpuLaunch& launch, const void* features_v,
             const void* rois_v, const void* offsets_v, const void* grad_output_v,
             void* grad_features_v, void* grad_offsets_v, void* workspace,
             int64_t workspace_bytes) {
  using A = typename AccumulatorType<T>::type;
  constexpr bool kHalfType = !std::is_same<T, A>::value;
  const Shape s(d);
  Exec exec(launch);
  Workspace<T> ws;
  TF_DCN_GPU_TRY(ws.Layout(exec, s, true, launch.deterministic, workspace));
  if (ws.bytes > workspace_bytes) return kGpuWorkspaceTooSmall;
  const T* features = static_cast<const T*>(features_v);
  const TR* rois = static_cast<const TR*>(rois_v);
  const T* offsets = s.dims.use_offsets ? static_cast<const T*>(offsets_v) : nullptr;
  const T* grad_output = static_cast<const T*>(grad_output_v);
  T* grad_features = static_cast<T*>(grad_features_v);
  T* grad_offsets = s.dims.use_offsets ? static_cast<T*>(grad_offsets_v) : nullptr;
  const int64_t feature_size = s.pixels * s.dims.channels;

  A* acc = kHalfType ? ws.acc : reinterpret_cast<A*>(grad_features);
  TF_DCN_GPU_TRY(exec.Zero(acc, feature_size * int64_t(sizeof(A))));
  if (s.units > 0) {
    TF_DCN_GPU_TRY(exec.ForEach(s.units, BinCounts<T, TR>{s, rois, offsets, ws.counts}));
  }

  if (feature_size > 0 && s.units > 0) {
    if (!launch.deterministic) {
      TF_DCN_GPU_TRY(
          exec.ForEach(d.output_size(),
                       ScatterFeatureGrad<T, TR>{s, rois, offsets, grad_output, ws.counts, acc}));
    } else {
      for (int64_t e0 = 0; e0 < ws.total_entries; e0 += ws.chunk) {
        const int64_t n = ws.total_entries - e0 < ws.chunk ? ws.total_entries - e0 : ws.chunk;
        TF_DCN_GPU_TRY(
            exec.ForEach(n, FeatureGradKeys<T, TR>{s, rois, offsets, ws.counts, ws.keys_in,
                                                   ws.values_in, ws.weights, e0, ws.sentinel}));
        TF_DCN_GPU_TRY(exec.SortPairs(ws.sort_temp, ws.sort_temp_bytes, ws.keys_in, ws.keys_out,
                                      ws.values_in, ws.values_out, n, ws.key_bits));
        TF_DCN_GPU_TRY(
            exec.ForEach(n * s.channels_each_class,
                         GatherFeatureGrad<T>{s, grad_output, ws.counts, ws.keys_out, ws.values_out,
                                              ws.weights, acc, e0, n, ws.sentinel}));
      }
    }
  }
  if (kHalfType && feature_size > 0) {
    TF_DCN_GPU_TRY(exec.ForEach(feature_size, CastTo<T, A>{acc, grad_features}));
  }

  if (grad_offsets != nullptr && s.dims.num_rois > 0) {
    TF_DCN_GPU_TRY(exec.ForEach(
        s.dims.num_rois * s.dims.part_size * s.dims.part_size * s.dims.num_classes,
        OffsetGrad<T, TR>{s, features, rois, offsets, grad_output, ws.counts, grad_offsets}));
  }
  return kGpuOk;
}

}  // namespace pool_gpu
}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_DEFORM_PSROI_POOL_LAUNCH_H_
