"""The sampling law of pgps_train.augment.params against nnU-Net 2.8.1's configuration.

10^4 draws (C = 2) from fixed keys; every frequency is checked against a two-sided binomial bound
of 5 standard deviations (fails on a wrong probability by more than about 2 points, passes by
chance with probability > 1 - 1e-6), every value against its range and, for BGContrast, its halves.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgps_train.augment import params as P
from pgps_train.augment.params import IntensityDraw, draw_intensity, stack_draws

N = 10_000
C = 2


def within(k: float, n: int, p: float) -> bool:
    """k successes of n trials agree with probability p (5 sigma)."""
    return abs(k - n * p) <= 5 * np.sqrt(n * p * (1 - p))


@pytest.fixture(scope="module")
def draws() -> list[IntensityDraw]:
    return [draw_intensity(np.random.default_rng([123, 7, slot]), C, False) for slot in range(N)]


@pytest.fixture(scope="module")
def batch(draws) -> P.IntensityBatch:
    return stack_draws(draws)


def fired(per_channel: torch.Tensor) -> torch.Tensor:
    """Sample-level fire flag of a per-channel transform with p_per_channel = 1."""
    assert torch.equal(per_channel[:, 0], per_channel[:, 1])  # p_per_channel 1: all or none
    return per_channel[:, 0]


def test_each_transform_fires_at_nnunets_probability(batch) -> None:
    assert within(int(batch.noise.sum()), N, 0.1)
    assert within(int(fired(batch.brightness).sum()), N, 0.15)
    assert within(int(fired(batch.contrast).sum()), N, 0.15)
    assert within(int(fired(batch.gamma_invert).sum()), N, 0.1)
    assert within(int(fired(batch.gamma).sum()), N, 0.3)
    # blur and low-res: a sample fires with p, then each channel with 0.5
    assert within(int(batch.blur.sum()), N * C, 0.2 * 0.5)
    assert within(int(batch.lowres.sum()), N * C, 0.25 * 0.5)
    # the transforms are independent: both gammas together at 0.1 * 0.3
    both = fired(batch.gamma_invert) & fired(batch.gamma)
    assert within(int(both.sum()), N, 0.03)


def test_per_channel_selection_is_half_of_the_fired_samples(draws) -> None:
    # a sample "fired" if any channel fired; given that, P(channel) = 0.5 / (1 - 0.25) = 2/3
    for field in ("blur", "lowres"):
        rows = np.array([getattr(d, field) for d in draws])
        hit = rows.any(axis=1)
        assert within(int(rows[hit].sum()), int(hit.sum()) * C, 2 / 3)
        # and the two channels are chosen independently: both at 1/3 of the fired samples
        assert within(int(rows[hit].all(axis=1).sum()), int(hit.sum()), 1 / 3)


def test_values_are_in_range_and_neutral_when_not_fired(batch) -> None:
    on, off = batch.noise, ~batch.noise
    assert float(batch.noise_std[on].min()) >= 0 and float(batch.noise_std[on].max()) <= 0.1
    assert float(batch.noise_std[on].mean()) == pytest.approx(0.05, abs=0.004)
    assert (batch.noise_std[off] == 0).all()
    s = batch.blur_sigmas[batch.blur]
    assert s.shape[1] == 3 and float(s.min()) >= 0.5 and float(s.max()) <= 1.0
    assert float(s.mean()) == pytest.approx(0.75, abs=0.01)
    assert (batch.blur_sigmas[~batch.blur] == 0).all()
    # blur: independent sigma per axis and per channel (synchronize_axes/channels False)
    assert (s[:, 0] != s[:, 1]).all()
    both = batch.blur.all(dim=1)
    assert (batch.blur_sigmas[both][:, 0] != batch.blur_sigmas[both][:, 1]).all()
    sc = batch.lowres_scales[batch.lowres]
    assert float(sc.min()) >= 0.5 and float(sc.max()) <= 1.0
    assert torch.equal(sc[:, 0], sc[:, 1]) and torch.equal(sc[:, 0], sc[:, 2])  # sync axes
    assert (batch.lowres_scales[~batch.lowres] == 1).all()
    for flag, value, lo, hi in ((batch.brightness, batch.brightness_factor, 0.75, 1.25),
                                (batch.contrast, batch.contrast_factor, 0.75, 1.25),
                                (batch.gamma_invert, batch.gamma_invert_value, 0.7, 1.5),
                                (batch.gamma, batch.gamma_value, 0.7, 1.5)):
        v = value[flag]
        assert float(v.min()) >= lo and float(v.max()) <= hi
        assert (value[~flag] == 1).all()
        # per channel, not synchronised
        rows = flag.all(dim=1)
        assert (value[rows][:, 0] != value[rows][:, 1]).all()


@pytest.mark.parametrize("field, lo, hi", [("brightness_factor", 0.75, 1.25),
                                           ("contrast_factor", 0.75, 1.25),
                                           ("gamma_value", 0.7, 1.5)])
def test_bgcontrast_halves(batch, field: str, lo: float, hi: float) -> None:
    flag = {"brightness_factor": batch.brightness, "contrast_factor": batch.contrast,
            "gamma_value": batch.gamma}[field]
    v = getattr(batch, field)[flag].double()
    low = v < 1
    assert within(int(low.sum()), v.numel(), 0.5)
    # uniform within each half: the means sit at the centres (5 sigma of U's std / sqrt(n))
    for part, a, b in ((v[low], lo, 1.0), (v[~low], 1.0, hi)):
        sd = (b - a) / np.sqrt(12) / np.sqrt(part.numel())
        assert abs(float(part.mean()) - (a + b) / 2) < 5 * sd


def test_mirror_half_per_axis_and_configurable_axes(batch) -> None:
    for a in range(3):
        assert within(int(batch.mirror[:, a].sum()), N, 0.5)
    assert within(int(batch.mirror.all(dim=1).sum()), N, 0.125)
    some = [draw_intensity(np.random.default_rng([1, 0, s]), 1, False, mirror_axes=(1, 2))
            for s in range(2000)]
    m = np.array([d.mirror for d in some])
    assert not m[:, 0].any() and within(int(m[:, 1].sum()), 2000, 0.5)
    with pytest.raises(ValueError, match="mirror_axes"):
        draw_intensity(np.random.default_rng(0), 1, False, mirror_axes=(0, 3))


def test_dummy_2d_keeps_axis_0_in_low_res() -> None:
    ds = [draw_intensity(np.random.default_rng([5, 0, s]), 1, True) for s in range(400)]
    sc = np.array([d.lowres_scales[0] for d in ds if d.lowres[0]])
    assert len(sc) > 20 and (sc[:, 0] == 1).all() and (sc[:, 1] < 1).all()
    assert np.array_equal(sc[:, 1], sc[:, 2])


def test_seeds_reproduce_and_slots_differ() -> None:
    a = draw_intensity(np.random.default_rng([3, 10, 42]), 2, False)
    b = draw_intensity(np.random.default_rng([3, 10, 42]), 2, False)
    assert a == b
    others = [draw_intensity(np.random.default_rng([3, 10, s]), 2, False) for s in range(41, 44)]
    assert others[1] == a and others[0] != a and others[2] != a
    assert len({d.noise_seed for d in others}) == 3
    assert draw_intensity(np.random.default_rng([3, 11, 42]), 2, False) != a


class Counting:
    """A Generator stand-in that records which draws are asked for, in order."""

    def __init__(self, seed: int) -> None:
        self.rng, self.calls = np.random.default_rng(seed), []

    def random(self, size=None):
        self.calls.append(("random", size))
        return self.rng.random(size)

    def uniform(self, low, high, size=None):
        self.calls.append(("uniform", low, high, size))
        return self.rng.uniform(low, high, size)

    def integers(self, low, high):
        self.calls.append(("integers", low, high))
        return self.rng.integers(low, high)


def test_the_draw_order_does_not_depend_on_the_outcomes() -> None:
    seqs = set()
    for s in range(200):
        r = Counting(s)
        draw_intensity(r, 3, False)
        seqs.add(tuple(r.calls))
    assert len(seqs) == 1


def test_the_documented_order() -> None:
    """Re-derive one draw by hand from the module docstring's order (C = 2)."""
    for seed in range(300):
        d = draw_intensity(np.random.default_rng(seed), 2, False)
        r = np.random.default_rng(seed)
        noise, std, nseed = r.random() < 0.1, r.uniform(0, 0.1), r.integers(0, P.SEED_HIGH)
        assert (d.noise, d.noise_std, d.noise_seed) == (noise, std if noise else 0.0, nseed)
        fire, ch, sig = r.random() < 0.2, r.random(2) < 0.5, r.uniform(0.5, 1, (2, 3))
        assert d.blur == tuple(bool(fire and c) for c in ch)
        assert d.blur_sigmas == tuple(tuple(sig[c]) if d.blur[c] else (0.0,) * 3 for c in range(2))
        for name, p, lo, hi in (("brightness", 0.15, 0.75, 1.25), ("contrast", 0.15, 0.75, 1.25)):
            fire, u = r.random() < p, r.random((2, 2))
            v = [lo + b * (1 - lo) if a < 0.5 else 1 + b * (hi - 1) for a, b in u]
            assert getattr(d, name) == (fire, fire)
            assert getattr(d, name + "_factor") == tuple(x if fire else 1.0 for x in v)
        fire, ch, sc = r.random() < 0.25, r.random(2) < 0.5, r.uniform(0.5, 1, 2)
        assert d.lowres == tuple(bool(fire and c) for c in ch)
        assert d.lowres_scales == tuple((sc[c],) * 3 if d.lowres[c] else (1.0,) * 3 for c in range(2))
        for name, p in (("gamma_invert", 0.1), ("gamma", 0.3)):
            fire, u = r.random() < p, r.random((2, 2))
            v = [0.7 + b * (1 - 0.7) if a < 0.5 else 1 + b * (1.5 - 1) for a, b in u]
            assert getattr(d, name) == (fire, fire)
            value = getattr(d, "gamma_invert_value" if name == "gamma_invert" else "gamma_value")
            assert value == tuple(x if fire else 1.0 for x in v)
        assert d.mirror == tuple(bool(x) for x in r.random(3) < 0.5)


def test_stack_draws_shapes_dtypes_and_devices(draws) -> None:
    b = stack_draws(draws[:5], "cpu")
    assert b.noise.shape == (5,) and b.noise.dtype == torch.bool
    assert b.noise_seed.dtype == torch.int64 and b.noise_seed.tolist() == [d.noise_seed for d in draws[:5]]
    assert b.blur_sigmas.shape == (5, C, 3) and b.blur_sigmas.dtype == torch.float32
    assert b.lowres_scales.shape == (5, C, 3) and b.gamma_value.shape == (5, C)
    assert b.mirror.shape == (5, 3) and b.mirror.dtype == torch.bool
    assert b.mirror.tolist() == [list(d.mirror) for d in draws[:5]]
    with pytest.raises(ValueError, match="same number of channels"):
        stack_draws([draws[0], draw_intensity(np.random.default_rng(0), 1, False)])
    if torch.cuda.is_available():
        g = stack_draws(draws[:5], "cuda")
        assert g.gamma.is_cuda and not g.noise_seed.is_cuda
