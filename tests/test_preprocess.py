"""Preprocessing: crop, statistics, normalisation, resampling (vs skimage) and the inverse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import map_coordinates, zoom
from skimage.transform import resize

from pgps_data.raw.preprocess import (
    compute_intensity_stats,
    crop_to_nonzero,
    foreground_intensity_sample,
    foreground_intensity_samples,
    nonzero_mask,
    normalise,
    preprocess_case,
    restore_to_source,
    samples_per_case,
    target_spacing,
    use_mask_for_norm,
)
from pgps_data.raw.resample import (
    compute_new_shape,
    resample_label_to_shape,
    resample_to_shape,
    separate_axis,
)
from pgps_data.raw.resample_axis import axis_operator
from pgps_data.raw.resample_labels import resize_foreground, resize_segmentation

RNG = np.random.default_rng(7)
FIXTURES = Path(__file__).parent / "fixtures" / "nnunet"


def _sphere(shape, centre, radius, spacing=(1, 1, 1)):
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    d2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return d2 <= radius**2


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_crop_bbox_and_filled_holes():
    image = np.zeros((2, 10, 12, 14), np.float32)
    image[0, 2:7, 3:9, 4:12] = 5.0
    image[0, 4, 5, 6] = 0.0  # a hole: filled, so it stays inside
    image[1, 8, 10, 1] = -3.0  # channel 1 widens the box
    label = np.zeros((10, 12, 14), np.uint8)
    label[3, 4, 5] = 1
    img_c, lab_c, bbox = crop_to_nonzero(image, label)
    assert bbox == [[2, 9], [3, 11], [1, 12]]
    assert img_c.shape == (2, 7, 8, 11) and lab_c.shape == (7, 8, 11)
    assert lab_c[1, 1, 4] == 1
    empty = np.zeros((1, 3, 4, 5))
    assert crop_to_nonzero(empty)[2] == [[0, 3], [0, 4], [0, 5]]


def test_foreground_sample_matches_nnunet_draw():
    channel = RNG.normal(size=(6, 7, 8)).astype(np.float32)
    label = (RNG.random((6, 7, 8)) > 0.7).astype(np.uint8)
    got = foreground_intensity_sample(channel, label, 50, seed=1234)
    want = np.random.RandomState(1234).choice(channel[label > 0], 50, replace=True)
    np.testing.assert_array_equal(got, want)
    multi = foreground_intensity_samples(np.stack([channel, channel * 2]), label, 50)
    np.testing.assert_array_equal(multi[0], want)  # shared generator: channel 0 first
    assert not np.array_equal(multi[1], want * 2)
    assert foreground_intensity_sample(channel, np.zeros_like(label), 5).size == 0
    assert samples_per_case(4) == 25_000_000


def test_intensity_stats_and_ct_normalisation_numbers():
    samples = [np.arange(0, 100, dtype=np.float32), np.arange(100, 200, dtype=np.float32)]
    st = compute_intensity_stats(samples)
    assert st["mean"] == pytest.approx(99.5)
    assert st["std"] == pytest.approx(np.std(np.arange(200)))
    assert st["percentile_00_5"] == pytest.approx(0.995)
    assert st["percentile_99_5"] == pytest.approx(198.005)
    assert st["min"] == 0 and st["max"] == 199 and st["median"] == pytest.approx(99.5)
    json.dumps(st)
    image = np.array([-1000.0, 0.0, 50.0, 5000.0], np.float32).reshape(1, 1, 1, 4)
    out = normalise(image, ["CT"], {"0": st})
    expected = (np.clip([-1000, 0, 50, 5000], 0.995, 198.005) - 99.5) / st["std"]
    np.testing.assert_allclose(out.ravel(), expected, rtol=1e-5)
    assert out.dtype == np.float32


def test_zscore_per_case_and_with_mask():
    image = RNG.normal(5.0, 3.0, size=(1, 8, 9, 10)).astype(np.float32)
    out = normalise(image, ["MR"], None)
    assert abs(float(out.mean())) < 1e-5 and float(out.std()) == pytest.approx(1.0, abs=1e-5)
    mask = np.zeros((8, 9, 10), bool)
    mask[2:6] = True
    image[0, ~mask] = 0.0
    masked = normalise(image, ["T2"], None, mask=mask)
    assert float(masked[0][mask].mean()) == pytest.approx(0.0, abs=1e-5)
    assert np.all(masked[0][~mask] == 0)
    assert use_mask_for_norm([0.5, 0.6, 0.9]) and not use_mask_for_norm([0.8, 0.9])


def test_target_spacing_median_and_anisotropic_rule():
    assert target_spacing([(1, 1, 1), (2, 1, 1), (3, 0.5, 0.5)]) == (2.0, 1.0, 1.0)
    spacings = [(z, 1.0, 1.0) for z in (5.0, 6.0, 10.0, 10.0, 10.0)]
    shapes = [(20, 256, 256)] * 5
    assert target_spacing(spacings, shapes)[0] == pytest.approx(
        np.percentile([5, 6, 10, 10, 10], 10)
    )
    assert target_spacing(spacings)[0] == 10.0  # without shapes: the median only


def test_new_shape_and_anisotropy_rule():
    assert compute_new_shape((60, 300, 300), (2.0, 0.8, 0.8), (1.0, 1.0, 1.0)) == (120, 240, 240)
    assert separate_axis((5.0, 1.0, 1.0), (1.0, 1.0, 1.0)) == 0
    assert separate_axis((1.0, 1.0, 1.0), (1.0, 4.0, 1.0)) == 1  # target decides second
    assert separate_axis((0.24, 1.25, 1.25), (1, 1, 1)) is None  # two coarse axes
    assert separate_axis((2.0, 1.0, 1.0), (1.0, 1.0, 1.0)) is None


def test_resampling_matches_skimage_cubic():
    """Separable float32 cubic ≈ skimage.resize(order=3, mode='edge') in float64.

    Differences are float32 rounding only: |error| < 1e-5 of the data range.
    """
    x = RNG.normal(size=(14, 23, 19)) * 100
    for new in [(21, 17, 30), (7, 40, 19)]:
        ref = resize(x, new, 3, mode="edge", anti_aliasing=False)
        got = resample_to_shape(x[None], new, (1, 1, 1), (1, 1, 1), order=3)[0]
        assert got.dtype == np.float32 and got.shape == new
        assert np.abs(got - ref).max() < 1e-5 * np.ptp(x)


def test_anisotropic_uses_nearest_out_of_plane():
    x = RNG.normal(size=(5, 12, 12))
    got = resample_to_shape(x[None], (10, 8, 8), (4.0, 1.0, 1.0), (2.0, 1.5, 1.5))[0]
    assert got.shape == (10, 8, 8)
    # nnU-Net: per-slice cubic in plane, then order 0 along z
    inplane = np.stack([resize(s, (8, 8), 3, mode="edge", anti_aliasing=False) for s in x])
    coords = np.mgrid[:10, :8, :8].astype(float)
    coords[0] = 5 / 10 * (coords[0] + 0.5) - 0.5
    ref = map_coordinates(inplane, coords, order=0, mode="nearest")
    assert np.abs(got - ref).max() < 1e-4
    for z in range(10):  # every output slice is a copy of one in-plane slice
        assert any(np.allclose(got[z], inplane[k], atol=1e-4) for k in range(5))


def _argmax_reference(lab, new_shape):
    """batchgenerators 0.25.5's resize_segmentation(order=1) written out with skimage."""
    values = np.unique(lab)
    scores = np.stack([resize((lab == v).astype(float), new_shape, 1, mode="edge",
                              anti_aliasing=False) for v in values])
    nearest = resize(lab.astype(float), new_shape, 0, mode="edge", anti_aliasing=False)
    top = scores == scores.max(axis=0)
    ref = values[top.argmax(axis=0)]  # the smallest label with the top score
    for i, v in enumerate(values):  # a tie goes to the nearest neighbour when it is tied
        ref[(top.sum(axis=0) > 1) & top[i] & (nearest == v)] = v
    return ref


def test_label_resampling_is_nnunets_argmax_and_keeps_small_structures():
    lab = np.zeros((20, 30, 30), np.uint8)
    lab[_sphere(lab.shape, (10, 15, 15), 8)] = 1
    lab[_sphere(lab.shape, (10, 15, 15), 3)] = 2
    lab[4, 4, 4:6] = 3  # a two-voxel structure
    lab[10, 5:25, 15] = 4  # a line through organ, lesion and background: 3 labels meet
    for target in [(0.7, 0.7, 0.7), (2.0, 2.0, 2.0), (1.3, 0.8, 0.55)]:
        new = compute_new_shape(lab.shape, (1.0, 1.0, 1.0), target)
        got = resample_label_to_shape(lab, new, (1.0, 1.0, 1.0), target)
        assert got.dtype == np.uint8 and got.shape == new
        np.testing.assert_array_equal(got, _argmax_reference(lab, new))
    fine = compute_new_shape(lab.shape, (1.0, 1.0, 1.0), (0.7, 0.7, 0.7))
    got = resample_label_to_shape(lab, fine, (1.0, 1.0, 1.0), (0.7, 0.7, 0.7))
    assert set(np.unique(got)) == {0, 1, 2, 3, 4}
    assert (got == 3).sum() >= 2
    near = resample_label_to_shape(lab, fine, (1.0, 1.0, 1.0), (0.7, 0.7, 0.7), mode="nearest")
    assert set(np.unique(near)) == {0, 1, 2, 3, 4}


def test_label_resampling_matches_nnunet_fixture():
    """Voxel for voxel what nnU-Net 2.8.1 made of oblique phantoms (-1 outside included).

    tests/fixtures/nnunet/label_resampling.npz is written by
    tools/make_nnunet_label_fixture.py in the nnU-Net venv: crop_to_nonzero, then
    resample_data_or_seg_to_shape with the plans' segmentation settings.
    """
    data = np.load(FIXTURES / "label_resampling.npz")
    names = sorted({k.split("/")[0] for k in data.files if "/" in k})
    assert len(names) == 5
    axes = set()
    for name in names:
        image = data[f"{name}/nonzero"][None].astype(np.float32)
        spacing, target = data[f"{name}/spacing"].tolist(), data[f"{name}/target"].tolist()
        _, lab, props = preprocess_case(image, data[f"{name}/label"], spacing, target,
                                        ["noNorm"], None, label_values=[0, 1, 2, 3])
        want = data[f"{name}/seg"]
        assert props["bbox"] == data[f"{name}/bbox"].tolist()
        np.testing.assert_array_equal(lab, np.where(want < 0, 0, want), err_msg=name)
        axes.add(props["anisotropic_axis"])
        if props["anisotropic_axis"] is None:  # the whole map, -1 included
            region = tuple(slice(a, b) for a, b in props["bbox"])
            seg = data[f"{name}/label"][region].astype(np.int16)
            seg[(seg == 0) & ~nonzero_mask(image)[region]] = -1
            np.testing.assert_array_equal(resize_segmentation(seg, want.shape), want)
    assert axes == {None, 0, 2}


def test_foreground_fast_path_equals_the_full_argmax():
    rng = np.random.default_rng(16)
    for _ in range(40):
        shape = tuple(rng.integers(2, 12, 3))
        new = tuple(rng.integers(1, 25, 3))
        coarse = rng.integers(-1, 4, size=tuple(max(1, n // 3) for n in shape))
        seg = coarse[np.ix_(*[np.minimum(np.arange(n) // 3, c - 1)
                              for n, c in zip(shape, coarse.shape)])].astype(np.int16)
        full = resize_segmentation(seg, new)
        np.testing.assert_array_equal(resize_foreground(seg, new), np.where(full > 0, full, 0))


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_axis_operator_matches_scipy_zoom_and_map_coordinates(order):
    x = RNG.normal(size=(3, 17, 5))
    for n_out in (1, 6, 17 * 2, 40):
        want = zoom(x, (1, n_out / 17, 1), order=order, mode="nearest", grid_mode=True)
        got = axis_operator(17, n_out, order).apply(x.astype(np.float32), 1)
        assert got.dtype == np.float32
        assert np.abs(got - want).max() < 1e-6 * np.ptp(x)
        coords = 17 / n_out * (np.arange(n_out) + 0.5) - 0.5
        want = np.stack([map_coordinates(x[0, :, j], coords[None], order=order, mode="nearest")
                         for j in range(5)], axis=1)
        got = axis_operator(17, n_out, order, "map").apply(x[0].astype(np.float32), 0)
        assert np.abs(got - want).max() < 1e-6 * np.ptp(x)


def _case():
    shape = (24, 48, 44)
    image = np.zeros((2, *shape), np.float32)
    body = _sphere(shape, (12, 24, 22), 15)
    image[0][body] = RNG.normal(40, 10, size=body.sum())
    image[1][body] = RNG.normal(300, 50, size=body.sum())
    label = np.zeros(shape, np.uint8)
    label[_sphere(shape, (12, 24, 22), 10)] = 1
    return image, label


def test_preprocess_case_props_and_round_trip():
    image, label = _case()
    stats = {"0": compute_intensity_stats([image[0][label > 0]])}
    spacing, target = (2.0, 0.9, 0.9), (1.5, 1.2, 1.2)
    out, lab, props = preprocess_case(
        image, label, spacing, target, ["CT", "MR"], stats, label_values=[0, 1]
    )
    json.dumps(props)
    assert props["bbox"] == [[0, 24], [9, 40], [7, 38]]
    assert props["shape_after_crop"] == [24, 31, 31]
    assert list(out.shape[1:]) == props["shape_after_resample"] == [32, 23, 23]
    assert out.dtype == np.float32 and lab.dtype == np.uint8 and lab.shape == out.shape[1:]
    assert props["anisotropic_axis"] is None
    back = restore_to_source(lab, props)
    assert back.shape == label.shape and back.dtype == np.uint8
    assert _dice(back == 1, label == 1) > 0.95
    probs = np.stack([lab == 0, lab == 1]).astype(np.float32)
    pback = restore_to_source(probs, props, order=1)
    assert pback.shape == (2, *label.shape)
    assert np.all(pback[0, :, :, :7] == 1) and np.all(pback[1, :, :, :7] == 0)
    same = preprocess_case(image, label, spacing, spacing, ["CT", "MR"], stats, [0, 1])
    np.testing.assert_array_equal(restore_to_source(same[1], same[2]), label)  # exact
    np.testing.assert_allclose(pback.sum(0), 1.0, atol=1e-5)
    assert _dice(pback.argmax(0) == 1, label == 1) > 0.95
    again = preprocess_case(image, label, spacing, target, ["CT", "MR"], stats, [0, 1])
    np.testing.assert_array_equal(again[0], out)  # deterministic
    np.testing.assert_array_equal(again[1], lab)


def test_anisotropic_round_trip_and_test_case():
    image, label = _case()
    spacing, target = (4.0, 0.8, 0.8), (4.0, 1.0, 1.0)
    out, lab, props = preprocess_case(image, label, spacing, target, ["MR", "MR"], None)
    assert props["anisotropic_axis"] == 0
    back = restore_to_source(lab, props, order=0)
    assert _dice(back == 1, label == 1) > 0.95 and back.shape == label.shape
    out_t, lab_t, props_t = preprocess_case(image, None, spacing, target, ["MR", "MR"], None)
    assert lab_t is None and props_t == props
    np.testing.assert_array_equal(out_t, out)
