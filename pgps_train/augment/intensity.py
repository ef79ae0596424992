"""nnU-Net's default intensity augmentation, batched over (B, C, *F) on any torch device.

Each function is the batched equivalent of one batchgeneratorsv2 0.3.6 transform as nnU-Net 2.8.1
configures it, with the per-sample parameters given as tensors (drawn by :mod:`.params`) and an
``apply`` mask that selects the samples or (sample, channel) rows the transform touches. Rows that
are not selected are left bit-identical. The math follows bgv2 operation by operation (same
statistics, same clamps, same eps, same kernel lengths), so the results agree with bgv2 to float32
rounding; tests/test_augment_intensity.py pins that with injected parameters.

Conventions: float32 images, run under ``torch.no_grad()`` and outside autocast. Every function
writes into ``image`` (which must be contiguous, as the loader's batch is) and returns it; the
selected rows are gathered, processed together and written back, so no Python loop touches voxels
per sample (loops run over axes, kernel lengths or distinct low-res sizes only). On CUDA, the
boolean masks cost one host sync per transform (the row index is data dependent).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

GAMMA_EPS = 1e-7          # bgv2 GammaTransform: clamp of the range and of the std
BLUR_TRUNCATE = 6.0       # bgv2 blur_dimension's default: kernel length = nearest odd of 6 sigma + 0.5
OUTSIDE = 255             # uint8 label value outside the case (nnU-Net's -1)


def _check(image: torch.Tensor) -> None:
    if image.dtype != torch.float32 or not image.is_contiguous() or image.ndim < 3:
        raise ValueError("image must be a contiguous float32 tensor (B, C, *spatial), got "
                         f"{image.dtype} {tuple(image.shape)} contiguous={image.is_contiguous()}")


def _rows(image: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Flat (B*C) row indices selected by a (B, C) mask, on the image's device."""
    if tuple(apply.shape) != tuple(image.shape[:2]):
        raise ValueError(f"apply must be (B, C) = {tuple(image.shape[:2])}, got {tuple(apply.shape)}")
    return apply.reshape(-1).nonzero().squeeze(1).to(image.device)


def _take(flat: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The selected rows of ``flat``: on the CPU a view when they are one contiguous run (the
    common case at small batches: all rows, or one), else a gathered copy. Returns (rows,
    is_view); :func:`_put` writes a result back."""
    if flat.device.type == "cpu" and rows.numel():
        first, last = int(rows[0]), int(rows[-1])  # ascending: they come from nonzero()
        if last - first + 1 == rows.numel():
            return flat[first:last + 1], True
    return flat[rows], False


def _put(flat: torch.Tensor, rows: torch.Tensor, taken: torch.Tensor, is_view: bool,
         result: torch.Tensor) -> None:
    """Write ``result`` to the selected rows (nothing to do when it is the view itself)."""
    if is_view:
        if result.data_ptr() != taken.data_ptr() or result.stride() != taken.stride():
            taken.copy_(result)
    else:
        flat.index_copy_(0, rows, result)


def _per_row(values: torch.Tensor, rows: torch.Tensor, trailing: int) -> torch.Tensor:
    """Per-(b, c) values of the selected rows, shaped to broadcast over ``trailing`` dims."""
    v = values.reshape(-1, *values.shape[2:]).to(rows.device, torch.float32)[rows]
    return v.reshape(v.shape[0], *v.shape[1:], *([1] * trailing))


def _range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (min, max) of x (N, V); amin and amax apart are ~3x faster than aminmax on CPU."""
    return x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)


def _std(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Per-row unbiased std (torch's and bgv2's ``x.std()``) by the two-pass sum of squares;
    agrees with ``std`` to float32 rounding and is ~3x faster on CPU than its Welford kernel."""
    d = x - mean
    return d.mul_(d).sum(dim=1, keepdim=True).div_(x.shape[1] - 1).sqrt_()


def gaussian_noise(image: torch.Tensor, apply: torch.Tensor, std: torch.Tensor, *,
                   seeds: torch.Tensor | Sequence[int] | None = None,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """bgv2 GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels):
    sample b gets ``std[b] * N(0, 1)`` on every channel and voxel (the "variance" is used as the std).

    ``apply``, ``std``: (B,). The N(0, 1) field of sample b is either ``noise[b]`` (injected, any
    (B, C, *F) tensor) or ``torch.randn((C, *F))`` from a ``torch.Generator`` on the image's device
    seeded with ``seeds[b]`` -- created for the applied samples only, so a sample's noise depends on
    its own seed and never on the batch composition. (bgv2 draws the same field from the global
    generator: ``torch.manual_seed(s)`` there equals ``seeds[b] = s`` here, on the CPU.)
    """
    _check(image)
    if (seeds is None) == (noise is None):
        raise ValueError("give exactly one of seeds= or noise=")
    if tuple(apply.shape) != tuple(image.shape[:1]):
        raise ValueError(f"apply must be (B,) = {tuple(image.shape[:1])}, got {tuple(apply.shape)}")
    idx = apply.reshape(-1).nonzero().squeeze(1).cpu()
    if idx.numel() == 0:
        return image
    sel = idx.to(image.device)
    if noise is not None:
        field = noise.to(image.device, torch.float32)[sel]
    else:
        seeds = torch.as_tensor(seeds, dtype=torch.int64).cpu()
        field = torch.empty((idx.numel(), *image.shape[1:]), dtype=torch.float32, device=image.device)
        for j, b in enumerate(idx.tolist()):
            g = torch.Generator(device=image.device).manual_seed(int(seeds[b]))
            torch.randn(image.shape[1:], generator=g, out=field[j])
    s = std.to(image.device, torch.float32)[sel].reshape(-1, *([1] * (image.ndim - 1)))
    image.index_add_(0, sel, field * s)
    return image


def _kernel_lengths(sigmas: torch.Tensor) -> torch.Tensor:
    """bgv2 ``_compute_kernel_size``: the nearest odd integer to 6 sigma + 0.5 (round half to even,
    ties of an even result go up when n - round(n) >= 0), computed in float64 like Python."""
    n = sigmas.double() * BLUR_TRUNCATE + 0.5
    r = torch.round(n)                          # half to even, as Python's round
    odd = torch.remainder(r, 2) == 1
    return torch.where(odd, r, torch.where(n - r >= 0, r + 1, r - 1)).long()


def _gaussian_kernels(sigmas: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Normalised 1D Gaussians (N, 2P + 1) for sigmas (N,), each of its bgv2 length and zero-padded
    (centred) to the longest one: with reflect padding P the extra taps multiply zeros."""
    lengths = _kernel_lengths(sigmas)
    half = (lengths - 1) // 2
    p = int(half.max())
    t = torch.arange(-p, p + 1, dtype=torch.float32, device=sigmas.device)
    pdf = torch.exp(-0.5 * (t[None, :] / sigmas[:, None].float()).pow(2))
    pdf = torch.where(t[None, :].abs() <= half[:, None], pdf, torch.zeros_like(pdf))
    return pdf / pdf.sum(dim=1, keepdim=True), p


def _reflect_index(n: int, p: int, device: torch.device) -> torch.Tensor:
    """Indices of ``n`` voxels reflect-padded by ``p`` on both sides, reflecting again as often
    as needed (equal to ``F.pad(mode="reflect")`` where that works, p < n)."""
    i = torch.arange(-p, n + p, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = i.remainder(period)
    return torch.where(i >= n, period - i, i)


def _blur_axis(x: torch.Tensor, kernels: torch.Tensor, p: int, axis: int) -> torch.Tensor:
    """Rows x (N, *F) convolved along spatial ``axis`` with their own kernel (N, 2p + 1), reflect
    padding p: the correlation sum_t k[t] * x_pad[i + t] as 2p + 1 shifted multiply-adds, i.e. a
    grouped convolution written out. Elementwise, so it stays float32 on every device (cuDNN runs
    a float32 conv3d in TF32 by default: torch.backends.cudnn.allow_tf32)."""
    nd = x.ndim - 1
    n = x.shape[1 + axis]
    if not p:
        xp = x
    elif p < n:
        pad = [0, 0] * nd
        pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = p
        xp = F.pad(x[None], pad, mode="reflect")[0]
    else:  # an axis no longer than the padding (PGPS's tiniest stages; bgv2 refuses them)
        xp = x.index_select(1 + axis, _reflect_index(n, p, x.device))
    w = kernels.reshape(*kernels.shape, *([1] * nd))        # (N, taps, 1, ..., 1)
    out = xp.narrow(1 + axis, 0, n) * w[:, 0]
    for t in range(1, 2 * p + 1):
        out.addcmul_(xp.narrow(1 + axis, t, n), w[:, t])
    return out


def gaussian_blur(image: torch.Tensor, apply: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """bgv2 GaussianBlurTransform(blur_sigma=(0.5, 1), no synchronisation, p_per_channel=0.5):
    separable Gaussian blur of each selected (b, c) with its own sigma per axis (``sigmas``
    (B, C, n_spatial)), axes in order 0, 1, 2, reflect padding, bgv2's kernel lengths (3, 5 or 7
    taps for sigma in [0.5, 1]). All selected rows are blurred together: per axis one grouped
    convolution with the kernels zero-padded to the longest (:func:`_blur_axis`). bgv2's
    ``benchmark=True`` FFT path is the same convolution up to rounding; its direct path is the
    reference. bgv2 needs every axis longer than the padding (3 for 7 taps); shorter axes
    (PGPS's first stages, 2×4×4) are reflected again as often as needed instead."""
    _check(image)
    rows = _rows(image, apply)
    if rows.numel() == 0:
        return image
    spatial = image.shape[2:]
    flat = image.view(-1, *spatial)
    taken, is_view = _take(flat, rows)                # (N, *F)
    sig = _per_row(sigmas, rows, 0)                   # (N, n_spatial)
    sub = taken
    for axis in range(len(spatial)):
        kernels, p = _gaussian_kernels(sig[:, axis])
        sub = _blur_axis(sub, kernels, p, axis)       # a new tensor: taken is read, not written
    _put(flat, rows, taken, is_view, sub)
    return image


def brightness(image: torch.Tensor, apply: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """bgv2 MultiplicativeBrightnessTransform: each selected (b, c) is multiplied by factor[b, c]."""
    _check(image)
    keep = torch.ones((), dtype=torch.float32, device=image.device)
    f = torch.where(apply.to(image.device), factor.to(image.device, torch.float32), keep)
    image.mul_(f.reshape(*f.shape, *([1] * (image.ndim - 2))))
    return image


def _channel_rows(image: torch.Tensor,
                  apply: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (B*C, voxels) view of ``image`` and the indices of its selected (b, c) rows, or
    None when ``apply`` selects none (the per-channel statistics transforms start so)."""
    _check(image)
    rows = _rows(image, apply)
    if rows.numel() == 0:
        return None
    return image.view(image.shape[0] * image.shape[1], -1), rows


def contrast(image: torch.Tensor, apply: torch.Tensor, factor: torch.Tensor, *,
             preserve_range: bool = True) -> torch.Tensor:
    """bgv2 ContrastTransform: x -> (x - mean) * factor + mean per selected (b, c), the mean, min
    and max over the whole patch of that channel; ``preserve_range`` clamps back to [min, max]."""
    selected = _channel_rows(image, apply)
    if selected is None:
        return image
    flat, rows = selected
    sub, is_view = _take(flat, rows)
    m = _per_row(factor, rows, 1)
    mean = sub.mean(dim=1, keepdim=True)
    if preserve_range:
        lo, hi = _range(sub)
    out = sub.sub_(mean).mul_(m).add_(mean)  # in place: a view writes the image directly
    if preserve_range:
        torch.maximum(torch.minimum(out, hi, out=out), lo, out=out)
    _put(flat, rows, sub, is_view, out)
    return image


def gamma(image: torch.Tensor, apply: torch.Tensor, gamma: torch.Tensor, invert: bool, *,
          retain_stats: bool = True) -> torch.Tensor:
    """bgv2 GammaTransform(p_invert_image in {0, 1}, p_retain_stats=1) per selected (b, c):
    (invert) -> rescale to [0, 1] by min/max (range clamped at 1e-7) -> power gamma -> back to
    [min, max] -> restore the mean and (unbiased) std measured before (std clamped at 1e-7) ->
    (invert back). Statistics are over the whole patch of that channel."""
    selected = _channel_rows(image, apply)
    if selected is None:
        return image
    flat, rows = selected
    taken, is_view = _take(flat, rows)  # every step below is in place: a view is the image
    x = taken
    g = _per_row(gamma, rows, 1)
    if invert:
        x.neg_()
    if retain_stats:
        mean = x.mean(dim=1, keepdim=True)
        std = _std(x, mean)
    lo, hi = _range(x)
    rnge = hi - lo
    # x ** g as exp(g log x) on [0, 1] (log 0 = -inf -> 0): 3x faster than pow on CPU, within
    # 1e-7 of it (bgv2 uses pow_); gamma > 0 always (BGContrast(0.7, 1.5))
    x = x.sub_(lo).div_(rnge.clamp(min=GAMMA_EPS)).log_().mul_(g).exp_().mul_(rnge).add_(lo)
    if retain_stats:
        mean_here = x.mean(dim=1, keepdim=True)
        std_here = _std(x, mean_here)
        x = x.sub_(mean_here).mul_(std / std_here.clamp(min=GAMMA_EPS)).add_(mean)
    if invert:
        x.neg_()
    _put(flat, rows, taken, is_view, x)
    return image


@functools.lru_cache(maxsize=4096)
def _lowres_taps(n: int, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-axis linear map of bgv2's low-res, n -> m (nearest-exact) -> n (linear,
    align_corners=False), as two taps per output voxel: out[i] = w0[i] x[j0[i]] + w1[i] x[j1[i]].

    The indices and weights are read off torch's own ``interpolate`` on CPU probes (an arange for
    nearest-exact, one-hot rows for linear), so they are exactly the ones bgv2's calls use."""
    pick = F.interpolate(torch.arange(n, dtype=torch.float32)[None, None], size=m,
                         mode="nearest-exact")[0, 0].long()                     # (m,)
    up = F.interpolate(torch.eye(m, dtype=torch.float32)[:, None], size=n, mode="linear",
                       align_corners=False)[:, 0].T                              # (n, m): U[i, j]
    i0 = (up != 0).float().argmax(dim=1)                                         # first nonzero
    i1 = torch.clamp(i0 + 1, max=m - 1)
    w0 = up.gather(1, i0[:, None])[:, 0]
    w1 = torch.where(i1 != i0, up.gather(1, i1[:, None])[:, 0], torch.zeros(()))
    return pick[i0], pick[i1], w0, w1


def low_resolution(image: torch.Tensor, apply: torch.Tensor, scales: torch.Tensor,
                   ignore_axes: Sequence[int] = ()) -> torch.Tensor:
    """bgv2 SimulateLowResolutionTransform per selected (b, c): nearest-exact down to
    ``round(n * s)`` per axis (banker's rounding of the float32 scale times n, in float64 as bgv2's
    Python ``round``), then (tri)linear back up, align_corners=False. ``scales``: (B, C, n_spatial);
    ``ignore_axes`` get scale 1 (nnU-Net dummy 2D: axis 0).

    Exact batched form (notes §5.10): the operation is separable and, per axis, a fixed linear map
    with two taps per output voxel; it is applied to all selected rows at once by two gathers per
    axis, the taps coming from one small table per distinct target size."""
    _check(image)
    rows = _rows(image, apply)
    if rows.numel() == 0:
        return image
    spatial = tuple(image.shape[2:])
    nd = len(spatial)
    flat = image.view(-1, *spatial)
    taken, is_view = _take(flat, rows)
    x = taken
    s = scales.reshape(-1, nd).to(torch.float32).cpu()[rows.cpu()].double()
    for a in ignore_axes:
        s[:, a] = 1.0
    dev = image.device
    for axis, n in enumerate(spatial):
        sizes = torch.round(s[:, axis] * n).long()
        uniq, inverse = torch.unique(sizes, return_inverse=True)
        if uniq.numel() == 1 and int(uniq[0]) == n:
            continue                                  # n -> n -> n is the identity
        taps = [_lowres_taps(n, int(m)) for m in uniq.tolist()]
        j0, j1, w0, w1 = (torch.stack([t[k] for t in taps])[inverse].to(dev) for k in range(4))
        view = [x.shape[0]] + [1] * nd
        view[1 + axis] = n
        j0, j1, w0, w1 = (v.reshape(view).expand_as(x) for v in (j0, j1, w0, w1))
        x = torch.gather(x, 1 + axis, j0) * w0 + torch.gather(x, 1 + axis, j1) * w1
    _put(flat, rows, taken, is_view, x.contiguous() if not is_view else x)
    return image


def mask_outside(image: torch.Tensor, label: torch.Tensor, channels: Sequence[int],
                 outside: int = OUTSIDE) -> torch.Tensor:
    """nnU-Net's MaskImageTransform (use_mask_for_norm channels): those image channels are set to 0
    where the label (B, 1, *F) is ``outside`` (bgv2: seg < 0)."""
    _check(image)
    mask = label[:, 0] == outside
    for c in channels:
        image[:, c].masked_fill_(mask, 0.0)
    return image


def remove_outside(label: torch.Tensor, outside: int = OUTSIDE) -> torch.Tensor:
    """nnU-Net's RemoveLabelTansform(-1, 0): ``outside`` becomes background 0, in place.

    For uint8 labels with ``outside`` = 255 as uint8 arithmetic (x + 1 wraps 255 to 0, then
    max(·, 1) − 1 undoes the shift elsewhere): ~10× faster on the CPU than a boolean mask."""
    if label.dtype == torch.uint8 and outside == 255:
        return label.add_(1).clamp_(min=1).sub_(1)
    return label.masked_fill_(label == outside, 0)


def apply_all(image: torch.Tensor, p, *, dummy_2d: bool = False) -> torch.Tensor:
    """The seven image-only transforms in nnU-Net's order (noise, blur, brightness, contrast,
    low-res, gamma on the inverted image, gamma) with the parameters of a
    :class:`.params.IntensityBatch`. Mirroring, masking and label removal follow in the caller
    (they need the label). ``dummy_2d`` keeps axis 0 in low-res (nnU-Net's ``ignore_axes=(0,)``;
    draws of ``draw_intensity(..., dummy_2d=True)`` already hold scale 1 there)."""
    gaussian_noise(image, p.noise, p.noise_std, seeds=p.noise_seed)
    gaussian_blur(image, p.blur, p.blur_sigmas)
    brightness(image, p.brightness, p.brightness_factor)
    contrast(image, p.contrast, p.contrast_factor)
    low_resolution(image, p.lowres, p.lowres_scales, (0,) if dummy_2d else ())
    gamma(image, p.gamma_invert, p.gamma_invert_value, invert=True)
    gamma(image, p.gamma, p.gamma_value, invert=False)
    return image
