"""The batched intensity transforms against batchgeneratorsv2 0.3.6, the oracle nnU-Net 2.8.1 runs.

Each bgv2 transform is called per sample through its parameter-free path (``_apply_to_image`` with
the parameter dict its ``get_parameters`` would return), built from the SAME injected values the
batched function gets; the results must agree within 1e-4. Noise: bgv2 draws its N(0, 1) field
from torch's global generator, so the test seeds that with ``torch.manual_seed(s)`` and gives
pgps the seed s -- the two fields are then the same numbers (exact equality is asserted).
Batches have C = 2 with a different channel selection per sample, so every test also checks that
the rows not selected stay bit-identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgps_train.augment import intensity as I
from pgps_train.augment.params import draw_intensity, stack_draws

bgv2 = pytest.importorskip("batchgeneratorsv2")
from batchgeneratorsv2.transforms.intensity.brightness import (  # noqa: E402
    MultiplicativeBrightnessTransform,
)
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform  # noqa: E402
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform  # noqa: E402
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform  # noqa: E402
from batchgeneratorsv2.transforms.noise.gaussian_blur import (  # noqa: E402
    GaussianBlurTransform,
    _compute_kernel_size,
)
from batchgeneratorsv2.transforms.spatial.low_resolution import (  # noqa: E402
    SimulateLowResolutionTransform,
)
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform  # noqa: E402
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform  # noqa: E402

TOL = 1e-4
SHAPE = (9, 20, 17)      # odd and even axes, all different
# (B=3, C=2): sample 0 channel 0 only, sample 1 both, sample 2 channel 1 only
APPLY = torch.tensor([[True, False], [True, True], [False, True]])


def phantom(b: int = 3, c: int = 2, shape=SHAPE, seed: int = 0) -> torch.Tensor:
    """A z-scored-looking image: a smooth ramp per channel plus noise (non-constant statistics)."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-1.5, 2.0, shape[-1]).expand(b, c, *shape)
    return (ramp + torch.randn(b, c, *shape, generator=g)).contiguous()


def idx(row: torch.Tensor) -> torch.Tensor:
    return torch.where(row)[0]


def check_rows(out: torch.Tensor, img: torch.Tensor, ref_of_sample) -> float:
    """max |out - bgv2| over all samples; unselected channels are required bit-identical."""
    worst = 0.0
    for b in range(img.shape[0]):
        ref = ref_of_sample(b, img[b].clone())
        worst = max(worst, float((ref - out[b]).abs().max()))
    return worst


def untouched(out: torch.Tensor, img: torch.Tensor, apply: torch.Tensor) -> bool:
    keep = ~apply.reshape(-1)
    return torch.equal(out.reshape(-1, *out.shape[2:])[keep], img.reshape(-1, *img.shape[2:])[keep])


def test_noise_equals_bgv2_under_the_same_seed() -> None:
    img = phantom()
    apply = torch.tensor([True, False, True])
    std = torch.tensor([0.07, 0.05, 0.013])
    seeds = [11, 12, 2**62 + 5]
    out = I.gaussian_noise(img.clone(), apply, std, seeds=seeds)
    t = GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels=True)

    def ref(b, x):
        if not apply[b]:
            return x
        torch.manual_seed(seeds[b])
        return t._apply_to_image(x, apply_mask=torch.ones(2, dtype=torch.bool),
                                 apply_idx=torch.arange(2), num_apply=2, sigmas=float(std[b]))
    assert check_rows(out, img, ref) == 0.0
    assert torch.equal(out[1], img[1])
    assert not torch.equal(out[0], img[0])


def test_noise_depends_on_the_own_seed_only_and_injection_is_the_same_math() -> None:
    img = phantom(b=4)
    std = torch.full((4,), 0.08)
    a = I.gaussian_noise(img.clone(), torch.tensor([True, True, False, False]), std, seeds=[5, 6, 7, 8])
    b = I.gaussian_noise(img.clone(), torch.tensor([False, True, True, True]), std, seeds=[9, 6, 7, 8])
    assert torch.equal(a[1], b[1])                      # sample 1: same seed, other batch mates
    assert not torch.equal(a[1] - img[1], b[2] - img[2])  # another seed, another field
    field = torch.randn(4, 2, *SHAPE, generator=torch.Generator().manual_seed(6))
    c = I.gaussian_noise(img.clone(), torch.tensor([True, False, True, False]), std, noise=field)
    torch.testing.assert_close(c[0], img[0] + 0.08 * field[0], rtol=0, atol=1e-6)
    assert torch.equal(c[1], img[1])
    with pytest.raises(ValueError, match="exactly one"):
        I.gaussian_noise(img, std > 0, std)


@pytest.mark.parametrize("sigmas", [
    [[0.52, 0.52, 0.52], [0.55, 0.51, 0.5]],     # 3 taps on every axis
    [[0.98, 0.99, 1.0], [0.95, 0.97, 0.92]],     # 7 taps on every axis
    [[0.52, 0.75, 0.98], [0.98, 0.5, 0.75]],     # 3, 5 and 7 taps mixed over axes and rows
])
def test_blur_matches_bgv2_per_axis_and_kernel_length(sigmas) -> None:
    img = phantom()
    sig = torch.tensor([sigmas, sigmas[::-1], sigmas], dtype=torch.float32)
    out = I.gaussian_blur(img.clone(), APPLY, sig)
    t = GaussianBlurTransform(blur_sigma=(0.5, 1.0), synchronize_channels=False,
                              synchronize_axes=False, p_per_channel=0.5, benchmark=False)

    def ref(b, x):
        s = [[float(v) for v in sig[b, c]] for c in idx(APPLY[b])]
        return t._apply_to_image(x, apply_to_channel=APPLY[b], sigmas=s)
    assert check_rows(out, img, ref) <= TOL
    assert untouched(out, img, APPLY)
    assert not torch.equal(out[0, 0], img[0, 0])


def test_blur_on_axes_shorter_than_the_kernel_reflects_again() -> None:
    """PGPS's first stages (2×4×4) are shorter than a 7-tap kernel's padding of 3, where bgv2
    (and F.pad's reflect) refuse: the padding reflects again, so a constant stays constant,
    and the blur has no preferred side."""
    flat = torch.full((1, 1, 2, 4, 9), 0.7)
    sig = torch.full((1, 1, 3), 1.0)  # 7 taps on every axis
    on = torch.ones(1, 1, dtype=torch.bool)
    out = I.gaussian_blur(flat.clone(), on, sig)
    assert torch.allclose(out, flat, atol=1e-6)
    img = torch.zeros(1, 1, 2, 4, 9)
    img[0, 0, 1, 2, 4] = 1.0
    out = I.gaussian_blur(img.clone(), on, sig)
    assert out[0, 0, 0].sum() > 0 and out[0, 0, 1, 2, 4] < 1.0
    # reflection has no preferred side: blurring the mirrored image mirrors the blur
    mirrored = I.gaussian_blur(img.flip(2, 3).contiguous(), on, sig)
    assert torch.allclose(mirrored, out.flip(2, 3), atol=1e-6)
    # the two-voxel axis reflects 1 0 1 0 1 0 | 0 1 | 1 0 ...: both slices hold mass
    assert torch.equal(I._reflect_index(2, 3, torch.device("cpu")),
                       torch.tensor([1, 0, 1, 0, 1, 0, 1, 0]))


def test_blur_kernel_lengths_are_bgv2s() -> None:
    sig = torch.tensor([0.5, 0.58, 0.5834, 0.7, 0.9, 0.9167, 0.95, 1.0, 0.25, 1.9])
    want = [_compute_kernel_size(float(s), truncate=6) for s in sig]
    assert I._kernel_lengths(sig).tolist() == want
    assert {3, 5, 7} <= set(want)


def test_brightness_and_contrast_match_bgv2() -> None:
    img = phantom()
    fac = torch.tensor([[0.8, 1.2], [1.24, 0.76], [1.0, 0.9]])
    out = I.brightness(img.clone(), APPLY, fac)
    t = MultiplicativeBrightnessTransform(BGContrast((0.75, 1.25)), synchronize_channels=False)
    assert check_rows(out, img, lambda b, x: t._apply_to_image(
        x, apply_to_channel=idx(APPLY[b]), multipliers=fac[b][idx(APPLY[b])])) <= TOL
    assert untouched(out, img, APPLY)

    out = I.contrast(img.clone(), APPLY, fac)
    t = ContrastTransform(BGContrast((0.75, 1.25)), preserve_range=True, synchronize_channels=False)
    assert check_rows(out, img, lambda b, x: t._apply_to_image(
        x, apply_to_channel=idx(APPLY[b]), multipliers=fac[b][idx(APPLY[b])])) <= TOL
    assert untouched(out, img, APPLY)
    # a factor > 1 hits the clamp: the range is preserved exactly
    assert torch.equal(out[1, 0].max(), img[1, 0].max()) and torch.equal(out[1, 0].min(), img[1, 0].min())


@pytest.mark.parametrize("invert", [True, False])
def test_gamma_matches_bgv2(invert: bool) -> None:
    img = phantom()
    g = torch.tensor([[0.7, 1.5], [0.85, 1.3], [1.0, 0.75]])
    out = I.gamma(img.clone(), APPLY, g, invert=invert)
    t = GammaTransform(BGContrast((0.7, 1.5)), p_invert_image=float(invert),
                       synchronize_channels=False, p_per_channel=1, p_retain_stats=1)

    def ref(b, x):
        k = idx(APPLY[b])
        return t._apply_to_image(x, apply_to_channel=k, retain_stats=torch.ones(len(k), dtype=torch.bool),
                                 invert_image=torch.full((len(k),), invert), gamma=g[b][k])
    assert check_rows(out, img, ref) <= TOL
    assert untouched(out, img, APPLY)
    # retain stats: mean and std are those of the input
    torch.testing.assert_close(out[0, 0].mean(), img[0, 0].mean(), rtol=0, atol=1e-5)
    torch.testing.assert_close(out[0, 0].std(), img[0, 0].std(), rtol=1e-5, atol=0)


def test_gamma_of_flat_channels_is_bgv2s_eps_clamp() -> None:
    """A constant channel stays as it is; a channel whose range (2e-8) is under the 1e-7 clamp
    follows bgv2's eps exactly (compared relative to its tiny scale)."""
    img = torch.full((1, 2, 4, 5, 6), 3.0)
    img[0, 1] = torch.linspace(-1e-8, 1e-8, 120).reshape(4, 5, 6)
    g = torch.tensor([[0.8, 0.8]])
    out = I.gamma(img.clone(), torch.ones(1, 2, dtype=torch.bool), g, invert=True)
    assert torch.equal(out[0, 0], img[0, 0])
    t = GammaTransform(BGContrast((0.7, 1.5)), p_invert_image=1, synchronize_channels=False,
                       p_per_channel=1, p_retain_stats=1)
    ref = t._apply_to_image(img[0].clone(), apply_to_channel=torch.arange(2),
                            retain_stats=torch.ones(2, dtype=torch.bool),
                            invert_image=torch.ones(2, dtype=torch.bool), gamma=g[0])
    torch.testing.assert_close(out[0], ref, rtol=1e-4, atol=1e-12)
    assert torch.isfinite(out).all() and not torch.equal(out[0, 1], img[0, 1])


@pytest.mark.parametrize("dummy_2d", [False, True])
def test_low_resolution_matches_bgv2(dummy_2d: bool) -> None:
    img = phantom()
    # 0.5 exactly: 9 * 0.5 = 4.5 and 17 * 0.5 = 8.5 are banker's-rounding ties (-> 4 and 8)
    s = torch.tensor([[0.5, 0.93], [0.61, 0.77], [1.0, 0.5]])
    scales = s[:, :, None].expand(3, 2, 3).contiguous()
    ignore = (0,) if dummy_2d else ()
    out = I.low_resolution(img.clone(), APPLY, scales, ignore_axes=ignore)
    t = SimulateLowResolutionTransform(scale=(0.5, 1), synchronize_channels=False, synchronize_axes=True,
                                       ignore_axes=ignore or None, allowed_channels=None, p_per_channel=0.5)

    def ref(b, x):
        k = idx(APPLY[b])
        sc = scales[b][k].clone()
        sc[:, list(ignore)] = 1          # what bgv2's get_parameters does with ignore_axes
        return t._apply_to_image(x, apply_to_channel=k, scales=sc)
    assert check_rows(out, img, ref) <= TOL
    assert untouched(out, img, APPLY)
    assert not torch.equal(out[0, 0], img[0, 0])
    if dummy_2d:  # axis 0 untouched: each z slice is the 2D low-res of its own slice
        one = I.low_resolution(img[:1, :1, 3:4].clone(), torch.ones(1, 1, dtype=torch.bool),
                               scales[:1, :1], ignore_axes=(0,))
        torch.testing.assert_close(out[0, 0, 3], one[0, 0, 0], rtol=0, atol=1e-6)


def test_low_resolution_taps_are_interpolates() -> None:
    """The two-tap table equals nearest-exact down then linear up on a 1D signal (n/2 - 1 <= m <= n)."""
    for n in (8, 17, 32, 40):
        x = torch.randn(n)
        for m in range(max(1, n // 2 - 1), n + 1):
            j0, j1, w0, w1 = I._lowres_taps(n, m)
            want = torch.nn.functional.interpolate(
                torch.nn.functional.interpolate(x[None, None], size=m, mode="nearest-exact"),
                size=n, mode="linear", align_corners=False)[0, 0]
            torch.testing.assert_close(w0 * x[j0] + w1 * x[j1], want, rtol=0, atol=1e-6)


def test_mask_and_remove_outside_match_nnunet() -> None:
    img = phantom()
    g = torch.Generator().manual_seed(1)
    label = torch.randint(0, 3, (3, 1, *SHAPE), generator=g, dtype=torch.uint8)
    label[torch.rand(label.shape, generator=g) < 0.2] = 255
    out = I.mask_outside(img.clone(), label, channels=[1])
    t = MaskImageTransform(apply_to_channels=[1], channel_idx_in_seg=0, set_outside_to=0)
    seg = label.to(torch.int16)
    seg[seg == 255] = -1
    for b in range(3):
        ref = t.apply({"image": img[b].clone(), "segmentation": seg[b].clone()})["image"]
        assert torch.equal(out[b], ref)
    assert torch.equal(out[:, 0], img[:, 0]) and (out[:, 1][label[:, 0] == 255] == 0).all()

    removed = I.remove_outside(label.clone())
    r = RemoveLabelTansform(-1, 0)
    for b in range(3):
        want = r._apply_to_segmentation(seg[b].clone())
        assert torch.equal(removed[b].to(torch.int16), want)
    assert int(removed.max()) == 2


def test_nothing_selected_is_the_identity() -> None:
    img = phantom()
    none = torch.zeros(3, 2, dtype=torch.bool)
    x = img.clone()
    I.gaussian_noise(x, torch.zeros(3, dtype=torch.bool), torch.full((3,), 0.1), seeds=[1, 2, 3])
    I.gaussian_blur(x, none, torch.full((3, 2, 3), 0.9))
    I.brightness(x, none, torch.full((3, 2), 1.2))
    I.contrast(x, none, torch.full((3, 2), 0.8))
    I.low_resolution(x, none, torch.full((3, 2, 3), 0.5))
    I.gamma(x, none, torch.full((3, 2), 1.4), invert=True)
    I.gamma(x, none, torch.full((3, 2), 0.7), invert=False)
    assert torch.equal(x, img)


def test_the_chain_is_the_sequence_of_its_transforms() -> None:
    """apply_all = the seven transforms in nnU-Net's order with the drawn parameters."""
    img = phantom(b=16)
    draws = [draw_intensity(np.random.default_rng([4, 0, s]), 2, False) for s in range(16)]
    p = stack_draws(draws)
    assert p.noise.any() and p.blur.any() and p.lowres.any() and p.gamma.any()
    out = I.apply_all(img.clone(), p)
    x = img.clone()
    I.gaussian_noise(x, p.noise, p.noise_std, seeds=p.noise_seed)
    I.gaussian_blur(x, p.blur, p.blur_sigmas)
    I.brightness(x, p.brightness, p.brightness_factor)
    I.contrast(x, p.contrast, p.contrast_factor)
    I.low_resolution(x, p.lowres, p.lowres_scales)
    I.gamma(x, p.gamma_invert, p.gamma_invert_value, invert=True)
    I.gamma(x, p.gamma, p.gamma_value, invert=False)
    assert torch.equal(out, x)
    fired = (p.noise[:, None] | p.blur | p.brightness | p.contrast | p.lowres
             | p.gamma_invert | p.gamma)
    assert untouched(out, img, fired) and not torch.equal(out, img)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="contiguous float32"):
        I.brightness(phantom().double(), APPLY, torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"apply must be \(B, C\)"):
        I.contrast(phantom(), APPLY[:2], torch.ones(3, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu() -> None:
    img = phantom(b=8, shape=(16, 32, 24))
    draws = [draw_intensity(np.random.default_rng([9, 1, s]), 2, s % 2 == 1) for s in range(8)]
    p_cpu, p_gpu = stack_draws(draws, "cpu"), stack_draws(draws, "cuda")
    field = torch.randn(img.shape, generator=torch.Generator().manual_seed(3))
    outs = []
    for dev, p in (("cpu", p_cpu), ("cuda", p_gpu)):
        x = img.clone().to(dev)
        noise = p.noise | True   # every sample, injected field: CPU and CUDA streams differ
        I.gaussian_noise(x, noise, torch.full((8,), 0.05, device=dev), noise=field.to(dev))
        I.gaussian_blur(x, p.blur | True, p.blur_sigmas.clamp(min=0.5))
        I.brightness(x, p.brightness, p.brightness_factor)
        I.contrast(x, p.contrast | True, p.contrast_factor.clamp(max=1.2) + 0.05)
        I.low_resolution(x, p.lowres | True, p.lowres_scales.clamp(max=0.8))
        I.gamma(x, p.gamma_invert | True, p.gamma_invert_value + 0.1, invert=True)
        I.gamma(x, p.gamma, p.gamma_value, invert=False)
        outs.append(x.cpu())
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=TOL)
    # the seeded path runs on CUDA too, and a sample's field depends on its seed only
    x = I.gaussian_noise(torch.zeros(2, 1, 8, 8, 8, device="cuda"), torch.tensor([True, True]),
                         torch.ones(2), seeds=[7, 7])
    assert torch.equal(x[0], x[1]) and 0.8 < float(x.std()) < 1.2



def test_a_contiguous_selection_is_processed_in_place_with_the_same_bits(monkeypatch) -> None:
    """A selection that is one run of rows (here rows 1-3 of 6) is transformed in place
    through a view; forcing the gathered copy instead must give every bit the same."""
    img = phantom()
    run = torch.tensor([[False, True], [True, True], [False, False]])
    g = torch.Generator().manual_seed(3)
    factor = torch.rand(3, 2, generator=g) + 0.5
    sigmas = torch.rand(3, 2, 3, generator=g) * 0.5 + 0.5
    scales = torch.rand(3, 2, 3, generator=g) * 0.5 + 0.5
    calls = {
        "contrast": lambda x: I.contrast(x, run, factor),
        "gamma": lambda x: I.gamma(x, run, factor, invert=False),
        "gamma_invert": lambda x: I.gamma(x, run, factor, invert=True),
        "blur": lambda x: I.gaussian_blur(x, run, sigmas),
        "lowres": lambda x: I.low_resolution(x, run, scales),
    }
    views = []
    real_take = I._take
    monkeypatch.setattr(I, "_take", lambda f, r: views.append(real_take(f, r)[1]) or real_take(f, r))
    fast = {name: call(img.clone()) for name, call in calls.items()}
    assert views == [True] * len(calls)  # the view path ran for each
    monkeypatch.setattr(I, "_take", lambda f, r: (f[r], False))
    for name, call in calls.items():
        slow = call(img.clone())
        assert torch.equal(fast[name], slow), name
        assert untouched(fast[name], img, run), name
        assert not torch.equal(fast[name], img), name
