"""Slow, obvious float64 NumPy reference of deformable convolution (docs/semantics.md section 1).

Written independently of the C++ kernels: per-sample Python loops, explicit corner checks.
"""

from __future__ import annotations

import math

import numpy as np


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME rule: (before, after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def bilinear(image: np.ndarray, y: float, x: float) -> np.ndarray:
    """torchvision's border rule on one [H, W, C] image at (y, x): zero unless -1 < y < H, -1 < x < W."""
    height, width, channels = image.shape
    if math.isnan(y) or math.isnan(x):
        return np.full(channels, np.nan)
    if not (-1 < y < height and -1 < x < width):
        return np.zeros(channels)
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0

    def corner(yy: int, xx: int) -> np.ndarray:
        if 0 <= yy < height and 0 <= xx < width:
            return image[yy, xx].astype(np.float64)
        return np.zeros(channels)

    return ((1 - ly) * (1 - lx) * corner(y0, x0) + (1 - ly) * lx * corner(y0, x0 + 1)
            + ly * (1 - lx) * corner(y0 + 1, x0) + ly * lx * corner(y0 + 1, x0 + 1))


def deform_conv2d(x, offsets, kernel, mask=None, bias=None, strides=(1, 1),
                  padding=((0, 0), (0, 0)), dilation=(1, 1), groups=1, deformable_groups=1):
    """NHWC reference. ``padding`` is ``((top, bottom), (left, right))`` or "same"/"valid"."""
    x = np.asarray(x, np.float64)
    offsets = np.asarray(offsets, np.float64)
    kernel = np.asarray(kernel, np.float64)
    n_batch, height, width, channels = x.shape
    kh, kw, cin_g, cout = kernel.shape
    sh, sw = strides
    dh, dw = dilation
    if padding == "same":
        padding = (same_padding(height, kh, sh, dh), same_padding(width, kw, sw, dw))
    elif padding == "valid":
        padding = ((0, 0), (0, 0))
    (top, bottom), (left, right) = padding
    out_h = (height + top + bottom - (dh * (kh - 1) + 1)) // sh + 1
    out_w = (width + left + right - (dw * (kw - 1) + 1)) // sw + 1
    assert offsets.shape == (n_batch, out_h, out_w, 2 * deformable_groups * kh * kw)
    taps = kh * kw
    per_dg = channels // deformable_groups
    col = np.zeros((n_batch, out_h, out_w, kh, kw, channels))
    for n in range(n_batch):
        for ho in range(out_h):
            for wo in range(out_w):
                for g in range(deformable_groups):
                    for i in range(kh):
                        for j in range(kw):
                            k = g * taps + i * kw + j
                            y = ho * sh - top + i * dh + offsets[n, ho, wo, 2 * k]
                            xx = wo * sw - left + j * dw + offsets[n, ho, wo, 2 * k + 1]
                            m = 1.0 if mask is None else float(mask[n, ho, wo, k])
                            chans = slice(g * per_dg, (g + 1) * per_dg)
                            col[n, ho, wo, i, j, chans] = m * bilinear(x[n, :, :, chans], y, xx)
    out = np.zeros((n_batch, out_h, out_w, cout))
    cout_g = cout // groups
    for grp in range(groups):
        cols = col[..., grp * cin_g:(grp + 1) * cin_g]
        weights = kernel[..., grp * cout_g:(grp + 1) * cout_g]
        out[..., grp * cout_g:(grp + 1) * cout_g] = np.einsum("nhwijc,ijco->nhwo", cols, weights)
    if bias is not None:
        out += np.asarray(bias, np.float64)
    return out


def shifted_conv2d(x, kernel, tap_shifts, padding, deformable_groups=1):
    """Convolution (stride 1, dilation 1, groups 1) where tap k of deformable group g reads the
    input shifted by the integer ``tap_shifts[g, k] = (dy, dx)``, zero outside. Built from array
    slicing, not from bilinear sampling."""
    x = np.asarray(x, np.float64)
    n_batch, height, width, channels = x.shape
    kh, kw, _, cout = kernel.shape
    (top, bottom), (left, right) = padding
    out_h, out_w = height + top + bottom - kh + 1, width + left + right - kw + 1
    margin = int(np.abs(tap_shifts).max()) + max(kh, kw) + max(top, bottom, left, right) + 1
    padded = np.zeros((n_batch, height + 2 * margin, width + 2 * margin, channels))
    padded[:, margin:margin + height, margin:margin + width] = x
    per_dg = channels // deformable_groups
    out = np.zeros((n_batch, out_h, out_w, cout))
    for g in range(deformable_groups):
        chans = slice(g * per_dg, (g + 1) * per_dg)
        for i in range(kh):
            for j in range(kw):
                dy, dx = tap_shifts[g, i * kw + j]
                y0 = margin - top + i + dy
                x0 = margin - left + j + dx
                patch = padded[:, y0:y0 + out_h, x0:x0 + out_w, chans]
                out += patch @ np.asarray(kernel[i, j, chans], np.float64)
    return out
