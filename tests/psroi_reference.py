"""Slow, obvious float64 reference of deformable (PS-)RoI pooling (docs/semantics.md section 2).

Plain Python loops over RoIs, output channels, bins and samples, written from the pseudo-code,
NHWC. Used only by the tests. Box coordinates must be finite and batch indices valid (the
reference does not model the error paths).
"""

from __future__ import annotations

import math

import numpy as np


def c_round(x: float) -> float:
    """C's round(): halves away from zero (np.round would round halves to even)."""
    return float(math.floor(x + 0.5)) if x >= 0 else float(math.ceil(x - 0.5))


def _roi_geometry(roi, spatial_scale, pooled_size, sample_per_part):
    x_start = c_round(roi[1]) * spatial_scale - 0.5
    y_start = c_round(roi[2]) * spatial_scale - 0.5
    x_end = (c_round(roi[3]) + 1.0) * spatial_scale - 0.5
    y_end = (c_round(roi[4]) + 1.0) * spatial_scale - 0.5
    roi_w = max(x_end - x_start, 0.1)
    roi_h = max(y_end - y_start, 0.1)
    bin_w = roi_w / pooled_size
    bin_h = roi_h / pooled_size
    return dict(
        x_start=x_start,
        y_start=y_start,
        roi_w=roi_w,
        roi_h=roi_h,
        bin_w=bin_w,
        bin_h=bin_h,
        sub_w=bin_w / sample_per_part,
        sub_h=bin_h / sample_per_part,
    )


def _bin_samples(geo, offsets, n, ph, pw, cls, height, width, *, pooled_size, part_size,
                 sample_per_part, trans_std):
    """Clamped positions (h, w) of the kept samples of one bin."""
    part_h = (ph * part_size) // pooled_size
    part_w = (pw * part_size) // pooled_size
    if offsets is None:
        tx = ty = 0.0
    else:
        tx = float(offsets[n, part_h, part_w, 2 * cls]) * trans_std  # x first
        ty = float(offsets[n, part_h, part_w, 2 * cls + 1]) * trans_std
    w0 = pw * geo["bin_w"] + geo["x_start"] + tx * geo["roi_w"]
    h0 = ph * geo["bin_h"] + geo["y_start"] + ty * geo["roi_h"]
    kept = []
    for iy in range(sample_per_part):
        for ix in range(sample_per_part):
            w = w0 + ix * geo["sub_w"]
            h = h0 + iy * geo["sub_h"]
            if w < -0.5 or w > width - 0.5 or h < -0.5 or h > height - 0.5:
                continue
            w = min(max(w, 0.0), width - 1.0)
            h = min(max(h, 0.0), height - 1.0)
            kept.append((h, w))
    return kept, part_h, part_w


def _corners(h, w):
    """floor/ceil corners and fractions of a clamped position."""
    x0, x1 = math.floor(w), math.ceil(w)
    y0, y1 = math.floor(h), math.ceil(h)
    return y0, y1, x0, x1, w - x0, h - y0


def _bilinear(plane, h, w):
    y0, y1, x0, x1, dx, dy = _corners(h, w)
    return ((1 - dx) * (1 - dy) * plane[y0, x0] + (1 - dx) * dy * plane[y1, x0]
            + dx * (1 - dy) * plane[y0, x1] + dx * dy * plane[y1, x1])


def _setup(features, rois, offsets, pooled_size, part_size):
    features = np.asarray(features, np.float64)
    rois = np.asarray(rois, np.float64)
    offsets = None if offsets is None else np.asarray(offsets, np.float64)
    part_size = pooled_size if part_size is None else part_size
    return features, rois, offsets, part_size


def _bins(features, rois, offsets, *, output_dim, group_size, pooled_size, part_size,
          sample_per_part, trans_std, spatial_scale):
    """Every (RoI, output channel, bin) in order, with what both passes need: yields
    (n, b, ctop, cls, ph, pw, c, geo, kept, part_h, part_w); c is the pooled feature channel."""
    _, height, width, _ = features.shape
    per_class = output_dim // (1 if offsets is None else offsets.shape[-1] // 2)
    for n in range(rois.shape[0]):
        b = int(rois[n, 0])
        geo = _roi_geometry(rois[n], spatial_scale, pooled_size, sample_per_part)
        for ctop in range(output_dim):
            cls = ctop // per_class
            for ph in range(pooled_size):
                for pw in range(pooled_size):
                    gh = min(max((ph * group_size) // pooled_size, 0), group_size - 1)
                    gw = min(max((pw * group_size) // pooled_size, 0), group_size - 1)
                    c = (ctop * group_size + gh) * group_size + gw
                    kept, part_h, part_w = _bin_samples(
                        geo, offsets, n, ph, pw, cls, height, width, pooled_size=pooled_size,
                        part_size=part_size, sample_per_part=sample_per_part, trans_std=trans_std)
                    yield n, b, ctop, cls, ph, pw, c, geo, kept, part_h, part_w


def deform_psroi_pool_ref(features, rois, offsets=None, *, output_dim, group_size, pooled_size=None,
                          part_size=None, sample_per_part=4, trans_std=0.1, spatial_scale=1.0):
    """Forward pass; returns (output [R, P, P, output_dim], count [R, P, P, output_dim])."""
    pooled_size = group_size if pooled_size is None else pooled_size
    features, rois, offsets, part_size = _setup(features, rois, offsets, pooled_size, part_size)
    num_rois = rois.shape[0]
    out = np.zeros([num_rois, pooled_size, pooled_size, output_dim])
    count = np.zeros([num_rois, pooled_size, pooled_size, output_dim], np.int64)
    for n, b, ctop, _, ph, pw, c, _, kept, _, _ in _bins(
            features, rois, offsets, output_dim=output_dim, group_size=group_size,
            pooled_size=pooled_size, part_size=part_size, sample_per_part=sample_per_part,
            trans_std=trans_std, spatial_scale=spatial_scale):
        total = 0.0
        for h, w in kept:
            total += _bilinear(features[b, :, :, c], h, w)
        count[n, ph, pw, ctop] = len(kept)
        out[n, ph, pw, ctop] = total / len(kept) if kept else 0.0
    return out, count


def deform_psroi_pool_grad_ref(features, rois, offsets, grad_output, *, output_dim, group_size,
                               pooled_size=None, part_size=None, sample_per_part=4, trans_std=0.1,
                               spatial_scale=1.0):
    """Backward pass; returns (grad_features, grad_offsets or None)."""
    pooled_size = group_size if pooled_size is None else pooled_size
    features, rois, offsets, part_size = _setup(features, rois, offsets, pooled_size, part_size)
    grad_output = np.asarray(grad_output, np.float64)
    grad_features = np.zeros_like(features)
    grad_offsets = None if offsets is None else np.zeros_like(offsets)
    for n, b, ctop, cls, ph, pw, c, geo, kept, part_h, part_w in _bins(
            features, rois, offsets, output_dim=output_dim, group_size=group_size,
            pooled_size=pooled_size, part_size=part_size, sample_per_part=sample_per_part,
            trans_std=trans_std, spatial_scale=spatial_scale):
        if not kept:
            continue
        g = grad_output[n, ph, pw, ctop] / len(kept)
        plane = features[b, :, :, c]
        for h, w in kept:
            y0, y1, x0, x1, dx, dy = _corners(h, w)
            grad_features[b, y0, x0, c] += (1 - dx) * (1 - dy) * g
            grad_features[b, y1, x0, c] += (1 - dx) * dy * g
            grad_features[b, y0, x1, c] += dx * (1 - dy) * g
            grad_features[b, y1, x1, c] += dx * dy * g
            if offsets is None:
                continue
            u00, u01 = plane[y0, x0], plane[y1, x0]
            u10, u11 = plane[y0, x1], plane[y1, x1]
            diff_x = (u11 * dy + u10 * (1 - dy) - u01 * dy - u00 * (1 - dy))
            diff_y = (u11 * dx + u01 * (1 - dx) - u10 * dx - u00 * (1 - dx))
            grad_offsets[n, part_h, part_w, 2 * cls] += diff_x * trans_std * geo["roi_w"] * g
            grad_offsets[n, part_h, part_w, 2 * cls + 1] += diff_y * trans_std * geo["roi_h"] * g
    return grad_features, grad_offsets
