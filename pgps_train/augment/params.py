"""The parameter law of nnU-Net's default intensity augmentation, one sample at a time.

nnU-Net 2.8.1 (``nnUNetTrainer.get_training_transforms``) wraps each batchgeneratorsv2 0.3.6 transform
in ``RandomTransform(p)`` and draws every parameter per sample (torch.rand for the wrappers and channel
masks, the global ``np.random`` for values). pgps draws the same distributions from one
``np.random.Generator`` that the caller creates per (seed, step, global slot), so a sample's
augmentation is a pure function of that key: identical on any device, under any batch composition,
and across a resume. The device side (:mod:`pgps_train.augment.intensity`) only applies the values.

What nnU-Net configures (probability of the wrapper / per channel, values):

====================  =====  ===========  ==========================================================
transform             p      p/channel    values
====================  =====  ===========  ==========================================================
Gaussian noise        0.10   1            one std U(0, 0.1) for all channels (synchronize_channels)
Gaussian blur         0.20   0.5          one sigma U(0.5, 1) per (channel, axis) (nothing synced)
brightness (mult.)    0.15   1            one factor BGContrast(0.75, 1.25) per channel
contrast              0.15   1            one factor BGContrast(0.75, 1.25) per channel
low resolution        0.25   0.5          one scale U(0.5, 1) per channel, all axes (sync axes);
                                          dummy 2D: axis 0 kept (ignore_axes=(0,))
gamma, inverted       0.10   1            one gamma BGContrast(0.7, 1.5) per channel, retain stats
gamma                 0.30   1            one gamma BGContrast(0.7, 1.5) per channel, retain stats
mirror                0.5 per configured axis (nnU-Net's MirrorTransform, 3D: axes 0, 1, 2)
====================  =====  ===========  ==========================================================

BGContrast(lo, hi): with probability 1/2 a value U(lo, 1), else U(1, hi) (as bgv2, for lo < 1 < hi).

The draw order is FIXED and does not depend on any outcome: every value below is consumed whether
its transform fires or not, so the k-th number of the stream always means the same thing
(C = channels, one ``rng.random`` double each unless stated):

 1. noise:       apply, std, then the noise seed (``rng.integers(0, 2**63 - 1)``)
 2. blur:        apply, C channel flags, C x 3 sigmas (channel-major, axes 0, 1, 2)
 3. brightness:  apply, then per channel (half, value)
 4. contrast:    apply, then per channel (half, value)
 5. low-res:     apply, C channel flags, C scales
 6. gamma inv.:  apply, then per channel (half, value)
 7. gamma:       apply, then per channel (half, value)
 8. mirror:      one flag per configured mirror axis, ascending

In the returned :class:`IntensityDraw` a transform (or channel) that does not fire carries the
neutral value (std 0, sigma 0, factor 1, scale 1, gamma 1), so the draw reads as what happens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

P_NOISE, P_BLUR, P_BRIGHTNESS, P_CONTRAST = 0.1, 0.2, 0.15, 0.15
P_LOWRES, P_GAMMA_INVERT, P_GAMMA = 0.25, 0.1, 0.3
P_BLUR_CHANNEL, P_LOWRES_CHANNEL, P_MIRROR = 0.5, 0.5, 0.5
NOISE_STD = (0.0, 0.1)
BLUR_SIGMA = (0.5, 1.0)
BRIGHTNESS = (0.75, 1.25)
CONTRAST = (0.75, 1.25)
LOWRES_SCALE = (0.5, 1.0)
GAMMA = (0.7, 1.5)
MIRROR_AXES = (0, 1, 2)
SEED_HIGH = 2**63 - 1  # noise seeds are int64 and accepted by torch.Generator.manual_seed


@dataclass(frozen=True)
class IntensityDraw:
    """One sample's intensity and mirror parameters (per-channel fields have one entry per channel)."""

    noise: bool
    noise_std: float
    noise_seed: int
    blur: tuple[bool, ...]                               # sample fires AND channel selected
    blur_sigmas: tuple[tuple[float, float, float], ...]  # per channel, per axis (0, 1, 2)
    brightness: tuple[bool, ...]
    brightness_factor: tuple[float, ...]
    contrast: tuple[bool, ...]
    contrast_factor: tuple[float, ...]
    lowres: tuple[bool, ...]
    lowres_scales: tuple[tuple[float, float, float], ...]  # per channel; axis 0 is 1 in dummy 2D
    gamma_invert: tuple[bool, ...]
    gamma_invert_value: tuple[float, ...]
    gamma: tuple[bool, ...]
    gamma_value: tuple[float, ...]
    mirror: tuple[bool, bool, bool]


@dataclass(frozen=True)
class IntensityBatch:
    """B draws stacked as the tensors the transforms of :mod:`.intensity` take.

    Everything lives on the requested device except ``noise_seed`` (int64, always on the CPU: the
    seeds only ever seed a ``torch.Generator`` on the host side).
    """

    noise: torch.Tensor               # bool (B,)
    noise_std: torch.Tensor           # float32 (B,)
    noise_seed: torch.Tensor          # int64 (B,), CPU
    blur: torch.Tensor                # bool (B, C)
    blur_sigmas: torch.Tensor         # float32 (B, C, 3)
    brightness: torch.Tensor          # bool (B, C)
    brightness_factor: torch.Tensor   # float32 (B, C)
    contrast: torch.Tensor
    contrast_factor: torch.Tensor
    lowres: torch.Tensor              # bool (B, C)
    lowres_scales: torch.Tensor       # float32 (B, C, 3)
    gamma_invert: torch.Tensor
    gamma_invert_value: torch.Tensor
    gamma: torch.Tensor
    gamma_value: torch.Tensor
    mirror: torch.Tensor              # bool (B, 3), on the host (mirroring groups by it, no sync)


def _uniform(u: float, lo: float, hi: float) -> float:
    """U(lo, hi) from a U(0, 1) double: the same IEEE arithmetic as ``Generator.uniform``."""
    return lo + (hi - lo) * u


def _bg_contrast(half: float, u: float, lo: float, hi: float) -> float:
    """bgv2's BGContrast: U(lo, 1) if half < 0.5 (bgv2: ``np.random.random() < 0.5``), else U(1, hi)."""
    return _uniform(u, lo, 1.0) if half < 0.5 else _uniform(u, 1.0, hi)


def draw_intensity(rng: np.random.Generator, channels: int, dummy_2d: bool,
                   mirror_axes: Sequence[int] = MIRROR_AXES) -> IntensityDraw:
    """One sample's draws of nnU-Net's default intensity pipeline plus mirroring (module docstring:
    the fixed order). ``dummy_2d`` keeps axis 0 in low-res (nnU-Net's ``ignore_axes=(0,)``);
    ``mirror_axes`` are the axes that may flip (nnU-Net 3D: all three).

    Three calls on ``rng``: ``random(2)`` (noise apply, std), ``integers`` (noise seed), then one
    ``random(K)`` block holding items 2 to 8 in order -- the same numbers as drawing them one by one
    (the arithmetic is done on Python floats: cheap for a handful of channels).
    """
    c = int(channels)
    if c < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    axes = tuple(mirror_axes)
    if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"mirror_axes must be distinct axes of (0, 1, 2), got {axes}")
    head = rng.random(2).tolist()
    noise = head[0] < P_NOISE
    noise_std = _uniform(head[1], *NOISE_STD) if noise else 0.0
    noise_seed = int(rng.integers(0, SEED_HIGH))
    u = iter(rng.random(6 + 14 * c + len(axes)).tolist())   # items 2..8, consumed in order

    def take(n: int) -> list[float]:
        return [next(u) for _ in range(n)]

    # 2. blur: apply, C channel flags, C x 3 sigmas
    fire = next(u) < P_BLUR
    blur = tuple(fire and f < P_BLUR_CHANNEL for f in take(c))
    sig = take(3 * c)
    blur_sigmas = tuple(tuple(_uniform(x, *BLUR_SIGMA) for x in sig[3 * k:3 * k + 3])
                        if blur[k] else (0.0, 0.0, 0.0) for k in range(c))

    def bg(p: float, lo: float, hi: float) -> tuple[tuple[bool, ...], tuple[float, ...]]:
        fire = next(u) < p
        pairs = take(2 * c)
        vals = tuple(_bg_contrast(pairs[2 * k], pairs[2 * k + 1], lo, hi) if fire else 1.0
                     for k in range(c))
        return (fire,) * c, vals

    brightness, brightness_factor = bg(P_BRIGHTNESS, *BRIGHTNESS)   # 3
    contrast, contrast_factor = bg(P_CONTRAST, *CONTRAST)           # 4
    # 5. low-res: apply, C channel flags, C scales (one per channel for all axes: sync axes)
    fire = next(u) < P_LOWRES
    lowres = tuple(fire and f < P_LOWRES_CHANNEL for f in take(c))
    scales = [_uniform(x, *LOWRES_SCALE) for x in take(c)]
    lowres_scales = tuple(((1.0 if dummy_2d else s), s, s) if lowres[k] else (1.0, 1.0, 1.0)
                          for k, s in enumerate(scales))
    gamma_invert, gamma_invert_value = bg(P_GAMMA_INVERT, *GAMMA)   # 6
    gamma, gamma_value = bg(P_GAMMA, *GAMMA)                        # 7
    mirror = [False, False, False]                                  # 8
    for a in sorted(axes):
        mirror[a] = next(u) < P_MIRROR
    if next(u, None) is not None:
        raise AssertionError("draw_intensity: the block length and the layout disagree")

    return IntensityDraw(noise, noise_std, noise_seed, blur, blur_sigmas,
                         brightness, brightness_factor, contrast, contrast_factor,
                         lowres, lowres_scales, gamma_invert, gamma_invert_value,
                         gamma, gamma_value, tuple(mirror))


def stack_draws(draws: Sequence[IntensityDraw], device: torch.device | str = "cpu") -> IntensityBatch:
    """Stack B draws (all with the same channel count) into an :class:`IntensityBatch` on
    ``device`` (the mirror flags stay on the host)."""
    if len(draws) == 0:
        raise ValueError("stack_draws needs at least one draw")
    if len({len(d.blur) for d in draws}) != 1:
        raise ValueError("all draws must have the same number of channels")

    def b(name: str) -> torch.Tensor:
        return torch.tensor([getattr(d, name) for d in draws], dtype=torch.bool, device=device)

    def f(name: str) -> torch.Tensor:
        return torch.tensor([getattr(d, name) for d in draws], dtype=torch.float32, device=device)

    return IntensityBatch(
        noise=b("noise"), noise_std=f("noise_std"),
        noise_seed=torch.tensor([d.noise_seed for d in draws], dtype=torch.int64),
        blur=b("blur"), blur_sigmas=f("blur_sigmas"),
        brightness=b("brightness"), brightness_factor=f("brightness_factor"),
        contrast=b("contrast"), contrast_factor=f("contrast_factor"),
        lowres=b("lowres"), lowres_scales=f("lowres_scales"),
        gamma_invert=b("gamma_invert"), gamma_invert_value=f("gamma_invert_value"),
        gamma=b("gamma"), gamma_value=f("gamma_value"),
        mirror=torch.tensor([d.mirror for d in draws], dtype=torch.bool))
