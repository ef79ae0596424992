"""pgps_train.augment.spatial against batchgeneratorsv2 0.3.6 as nnU-Net 2.8.1 configures it.

The oracle is bgv2's own ``SpatialTransform`` (and Convert3DTo2D/2DTo3D for dummy 2D) built
with nnU-Net's arguments from ``get_training_transforms``; only the draws are injected:
p_rotation / p_scaling are set to 1 or 0 to choose the case (nnU-Net's 0.2 only decides
*whether* a sample is warped, which the loader has already decided) and ``rotation`` /
``scaling`` are callables returning the injected angles and factor, so bgv2's own
``get_parameters`` builds its grid and ``apply`` consumes it. Labels: bgv2 gets int16 with
−1 outside the case, pgps uint8 with 255.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pgps_train import losses
from pgps_train.augment import spatial as sp
from pgps_train.augment.mirroring import mirror

OUT = 255
BOX3, PATCH3 = (35, 51, 42), (16, 32, 32)  # nnU-Net's box of 16x32x32: odd, odd, even margins
BOX2, PATCH2 = (8, 37, 37), (8, 32, 32)  # dummy 2D: 8x32x32 → 8x37x37


@functools.cache
def smooth_case(box, seed, channels=2, labels=4, border=True):
    """A smooth random image (C, *box) and an int16 label with ``labels`` blobs (−1 slabs
    where the case ends, as nnU-Net's loader pads). Cached: callers must not modify it."""
    g = torch.Generator().manual_seed(seed)
    small = [max(2, n // 6) for n in box]
    noise = torch.randn(1, channels, *small, generator=g)
    img = F.interpolate(noise, size=box, mode="trilinear")[0]
    score = F.interpolate(torch.rand(1, labels, *small, generator=g), size=box, mode="trilinear")[0]
    lab = score.argmax(0, keepdim=True).to(torch.int16)
    if border:
        lab[:, :, :, : box[2] // 5] = -1
        lab[:, :2] = -1
    return img, lab


def to_u8(lab):
    return torch.where(lab == -1, OUT, lab).to(torch.uint8)


def to_i16(lab):
    return torch.where(lab == OUT, -1, lab.to(torch.int16))


def oracle(img, seg, patch, angles, scale, rotate, do_scale, dummy):
    """bgv2's SpatialTransform exactly as nnU-Net 2.8.1 builds it, draws injected."""
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.pseudo2d import (
        Convert2DTo3DTransform,
        Convert3DTo2DTransform,
    )

    # 2D bgv2 draws two angles and uses the last one; pgps stores it at index 0
    rot = (lambda image, dim: angles[0]) if dummy else (lambda image, dim: angles[dim])
    t = SpatialTransform(patch[1:] if dummy else patch, patch_center_dist_from_border=0,
                         random_crop=False, p_elastic_deform=0, p_rotation=float(rotate),
                         rotation=rot, p_scaling=float(do_scale),
                         scaling=lambda image, dim: scale, p_synchronize_scaling_across_axes=1,
                         bg_style_seg_sampling=False, border_mode_seg="constant",
                         padding_value_seg=-1)
    d = {"image": img.clone(), "segmentation": seg.clone()}
    if dummy:
        d = Convert3DTo2DTransform()(**d)
    d = t.apply(d, **t.get_parameters(**d))
    if dummy:
        d = Convert2DTo3DTransform()(**d)
    return d["image"], d["segmentation"]


CASES = {  # name: (rotate, scale, angles of sample 0, factor of sample 0)
    "rotation": (True, False, (0.3, -0.2, 0.45), 1.0),
    "zoom_in": (False, True, (0.0, 0.0, 0.0), 0.72),
    "zoom_out": (False, True, (0.0, 0.0, 0.0), 1.38),  # past 1/0.85: leaves the box → outside
    "both": (True, True, (-0.4, 0.5, 0.2), 1.25),
    # exact half-voxel ties everywhere (pins the grid construction and the tie-break)
    "identity": (True, False, (0.0, 0.0, 0.0), 1.0),
    "rot90": (True, False, (np.pi / 2, 0.0, 0.0), 1.0),
}


def group_draws(name, w, dummy):
    rotate, do_scale, ang, sc = CASES[name]
    angles = torch.tensor([[a * (1 + 0.3 * i) for a in ang] for i in range(w)], dtype=torch.float32)
    scales = torch.tensor([[sc * (1 + 0.02 * i) if do_scale else 1.0] * 3 for i in range(w)])
    if name in ("identity", "rot90"):
        angles = torch.tensor([ang] * w, dtype=torch.float32)
    if dummy:
        angles[:, 1:] = 0
        scales[:, 0] = 1
    return rotate, do_scale, angles, scales


@pytest.mark.parametrize("dummy", [False, True], ids=["3d", "dummy2d"])
@pytest.mark.parametrize("name", list(CASES))
def test_warp_matches_bgv2(name, dummy):
    pytest.importorskip("batchgeneratorsv2")
    box, patch = (BOX2, PATCH2) if dummy else (BOX3, PATCH3)
    w = 3
    rotate, do_scale, angles, scales = group_draws(name, w, dummy)
    cases = [smooth_case(box, 10 + i, border=(i != 2)) for i in range(w)]  # sample 2: no −1 input
    image = torch.stack([c[0] for c in cases])
    label = torch.stack([to_u8(c[1]) for c in cases])
    matrices = sp.affine_matrices(angles, scales, dummy)
    out_img, out_lab = sp.warp(image, label, matrices, patch, dummy)
    assert out_img.shape == (w, 2, *patch) and out_lab.shape == (w, 1, *patch)
    assert out_img.dtype == torch.float32 and out_lab.dtype == torch.uint8
    for i, (img, lab) in enumerate(cases):
        ref_img, ref_lab = oracle(img, lab, patch, angles[i].double().tolist(),
                                  float(scales[i, 1]), rotate, do_scale, dummy)
        assert (ref_img - out_img[i]).abs().max().item() <= 1e-4  # unit-scale data: absolute
        assert (ref_lab == to_i16(out_lab[i])).float().mean().item() >= 0.999
        assert set(out_lab[i].unique().tolist()) <= set(to_u8(lab).unique().tolist()) | {OUT}
    if name == "zoom_out":  # the sample without −1 input gains outside voxels past its box
        assert (out_lab[2] == OUT).any()


def test_three_way_ties_resolve_as_bgv2():
    """Identity on a box one voxel larger on every axis samples every output voxel exactly
    between 8 input voxels; with random labels (−1 included) many voxels then tie between
    labels none of which is the nearest neighbour's, where bgv2's running argmax keeps the
    first label in its order (−1 first). Putting outside last, or letting later labels take
    ties, changes 3–7 % of the voxels here."""
    pytest.importorskip("batchgeneratorsv2")
    g = torch.Generator().manual_seed(4)
    box, patch = (17, 33, 33), (16, 32, 32)
    lab = torch.randint(-1, 4, (1, *box), generator=g).to(torch.int16)
    img = torch.rand(1, *box, generator=g)
    ref_img, ref_lab = oracle(img, lab, patch, (0.0, 0.0, 0.0), 1.0, True, False, False)
    eye = sp.affine_matrices(torch.zeros(1, 3), torch.ones(1, 3), False)
    out_img, out_lab = sp.warp(img[None], to_u8(lab)[None], eye, patch, False)
    assert (out_img[0] - ref_img).abs().max() <= 1e-4
    assert (to_i16(out_lab[0]) == ref_lab).float().mean() >= 0.999


def shortcut_cases():
    """(name, image, label, matrices, patch, dummy): smooth labels (few mixed cells: packed),
    noisy labels (mostly mixed: scored everywhere), two label channels, a lone big sample."""
    g = torch.Generator().manual_seed(8)
    for dummy in (False, True):
        box, patch = (BOX2, PATCH2) if dummy else (BOX3, PATCH3)
        for name in ("both", "zoom_out", "identity"):
            _, _, angles, scales = group_draws(name, 3, dummy)
            cases = [smooth_case(box, 30 + i, labels=3 + i) for i in range(3)]
            image = torch.stack([c[0] for c in cases])
            label = torch.stack([to_u8(c[1]) for c in cases])
            m = sp.affine_matrices(angles, scales, dummy)
            yield f"{name}-{dummy}", image, label, m, patch, dummy
            if name == "both":
                noisy = torch.randint(0, 4, label.shape, generator=g, dtype=torch.uint8)
                yield f"noisy-{dummy}", image, noisy, m, patch, dummy
                two = torch.cat([label, label.flip(-1)], 1)
                yield f"two-channels-{dummy}", image, two, m, patch, dummy
    img, lab = smooth_case((24, 40, 36), 40)
    m = sp.affine_matrices(torch.tensor([[0.4, -0.3, 0.2]]), torch.full((1, 3), 0.8), False)
    yield "lone", img[None], to_u8(lab)[None], m, (18, 30, 30), False


def one_map_per_label(label, grid, outside=OUT):
    """bgv2's label path written plainly: one ``grid_sample`` of indicator × 1000 per label
    value (``outside``: (indicator − 1) × 1000, plus 1000), float16 scores, first label in
    bgv2's order (outside, then ascending) on a tie, then the nearest-neighbour tie-break."""
    values = sorted(set(label.unique().tolist()) | {outside}, key=lambda v: (v != outside, v))
    x = label.float()
    scores = {}
    for v in values:
        ind = (x == v).float()
        src = (ind - 1) * 1000 if v == outside else ind * 1000
        score = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if v == outside:
            score = score + 1000
        scores[v] = score.half()
    stack = torch.stack([scores[v] for v in values])  # (L, W, K, *points)
    first = stack.float().argmax(0)  # argmax returns the first maximal index: bgv2's '>'
    padded_nn = F.grid_sample(torch.where(x == outside, -1.0, x), grid, mode="nearest",
                              padding_mode="zeros", align_corners=False)
    # zeros padding reads 0 beyond the box; bgv2's −1 padding: mark those by a second read
    inside = F.grid_sample(torch.ones_like(x), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)
    nn = torch.where(inside == 0, -1.0, padded_nn)
    nn_idx = torch.stack([torch.where(nn == (-1 if v == outside else v), 1, 0)
                          for v in values]).argmax(0)
    top = stack.gather(0, first[None])[0]
    nn_score = stack.gather(0, nn_idx[None])[0]
    pick = torch.where(nn_score == top, nn_idx, first)
    return torch.tensor(values, dtype=torch.uint8)[pick]


def test_label_paths_are_bit_identical():
    """The corner scorer, packed (CPU default), scored everywhere (the accelerator path) and
    with pixels derived from the grid, against one grid_sample per label: every bit."""
    from pgps_train.augment.label_resampling import resample_labels

    threads = torch.get_num_threads()
    names = []
    try:
        for name, image, label, m, patch, dummy in shortcut_cases():
            for n_threads in (2, 1):
                torch.set_num_threads(n_threads)
                _, fast = sp.warp(image, label, m, patch, dummy)
                if dummy:
                    plane = m[:, 1:, 1:]
                    grid = sp._grid(plane, image.shape[3:], patch[1:])
                    flat = label.reshape(label.shape[0], -1, *label.shape[-2:])
                else:
                    grid = sp._grid(m, image.shape[2:], patch)
                    flat = label
                ref = one_map_per_label(flat, grid).reshape(fast.shape)
                assert torch.equal(fast, ref), (name, n_threads)
                everywhere = resample_labels(flat, grid, OUT, pack=False).reshape(fast.shape)
                assert torch.equal(everywhere, ref), name
                derived = resample_labels(flat, grid, OUT, pack=True).reshape(fast.shape)
                assert torch.equal(derived, ref), name
            names.append(name)
    finally:
        torch.set_num_threads(threads)
    assert {"noisy-False", "noisy-True", "lone", "two-channels-True"} <= set(names)


def test_pixel_rows_are_the_grids_source_pixels():
    img, lab = smooth_case(BOX3, 9)
    m = sp.affine_matrices(torch.tensor([[0.3, 0.2, -0.5], [0.0, 0.1, 0.4]]),
                           torch.tensor([[1.3] * 3, [0.8] * 3]), False)
    grid = sp._grid(m, BOX3, PATCH3).reshape(2, -1, 3)
    rows = sp.pixel_rows(m, BOX3, PATCH3)
    for a, n in enumerate(BOX3):
        exact = ((grid[..., 2 - a] + 1) * n - 1) / 2
        assert (rows[a] - exact).abs().max() < 1e-3
        assert exact.min() < 0 or exact.max() > n - 1  # the zoom-out leaves the box


def test_centre_crop_is_bgv2s_unwarped_path():
    pytest.importorskip("batchgeneratorsv2")
    for box, patch, dummy in ((BOX3, PATCH3, False), (BOX2, PATCH2, True)):
        img, lab = smooth_case(box, 3)
        ref_img, ref_lab = oracle(img, lab, patch, (0.0, 0.0, 0.0), 1.0, False, False, dummy)
        assert torch.equal(sp.centre_crop(img[None], patch)[0], ref_img)
        assert torch.equal(sp.centre_crop(to_u8(lab)[None], patch)[0], to_u8(ref_lab))
    with pytest.raises(ValueError):
        sp.centre_crop(torch.zeros(1, 1, 8, 8, 8), (16, 8, 8))


def test_affine_matrices_match_bgv2():
    pytest.importorskip("batchgeneratorsv2")
    from batchgeneratorsv2.transforms.spatial.spatial import (
        create_affine_matrix_2d,
        create_affine_matrix_3d,
    )

    g = torch.Generator().manual_seed(0)
    angles = (torch.rand(5, 3, generator=g) - 0.5) * 2 * np.pi
    scales = 0.7 + 0.7 * torch.rand(5, 3, generator=g)
    m3 = sp.affine_matrices(angles, scales, False)
    m2 = sp.affine_matrices(angles, scales, True)
    for i in range(5):
        a, s = angles[i].double().tolist(), scales[i].double().tolist()
        assert np.allclose(m3[i].numpy(), create_affine_matrix_3d(a, s), atol=1e-12)
        assert np.allclose(m2[i, 1:, 1:].numpy(), create_affine_matrix_2d(a[0], s[1:]), atol=1e-12)
        assert np.array_equal(m2[i, 0].numpy(), [1, 0, 0])
        assert np.array_equal(m2[i, :, 0].numpy(), [1, 0, 0])


def gather(volume, matrix, patch):
    """Independent reference for a 90° warp: output o takes input round(A(o − c_o) + c_i)."""
    box = volume.shape[-3:]
    o = np.stack(np.meshgrid(*[np.arange(n) for n in patch], indexing="ij"), -1).astype(float)
    p = (o - (np.array(patch) - 1) / 2) @ np.asarray(matrix).T + (np.array(box) - 1) / 2
    q = np.rint(p).astype(int)
    assert np.abs(p - q).max() < 1e-6 and (q >= 0).all() and (q < np.array(box)).all()
    return volume[..., q[..., 0], q[..., 1], q[..., 2]]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_line_phantom_follows_its_image_through_warp_and_mirror(axis):
    """Axis order: asymmetric lines (label 1 along X, 2 along Z, 3 along Y, off centre) with
    the image carrying the label value; a 90° rotation in one plane must move both to the
    positions an independent numpy gather predicts, and mirroring must move them together."""
    box, patch = (34, 50, 42), (16, 32, 32)  # even margins: 90° maps voxel centres to centres
    lab = torch.zeros(1, 1, *box, dtype=torch.uint8)
    lab[0, 0, 12, 30, :] = 1
    lab[0, 0, :, 20, 15] = 2
    lab[0, 0, 14, :, 25] = 3
    img = torch.cat([lab.float(), -lab.float()], 1)
    angles = torch.zeros(1, 3)
    angles[0, axis] = np.pi / 2
    m = sp.affine_matrices(angles, torch.ones(1, 3), False)
    w_img, w_lab = sp.warp(img, lab, m, patch, False)
    expect = gather(lab[0, 0].numpy(), m[0].numpy(), patch)
    assert np.array_equal(w_lab[0, 0].numpy(), expect)
    assert len(np.unique(expect)) == 4  # all three lines stay in the patch
    assert np.allclose(w_img[0, 0].numpy(), expect, atol=1e-4)
    assert np.allclose(w_img[0, 1].numpy(), -expect.astype(np.float32), atol=1e-4)
    flips = torch.tensor([[axis == 0, axis != 0, True]])
    m_img, m_lab = mirror(w_img, w_lab, flips)
    dims = [d for d in range(3) if flips[0, d]]
    assert np.array_equal(m_lab[0, 0].numpy(), np.flip(expect, dims))
    assert torch.equal(m_img[0, 0].round().to(torch.uint8), m_lab[0, 0])


def test_dummy_2d_line_phantom_rotates_each_slice_in_its_plane():
    box, patch = (6, 38, 42), (6, 32, 32)  # even in-plane margins
    lab = torch.zeros(1, 1, *box, dtype=torch.uint8)
    lab[0, 0, 1, 25, :] = 1  # one slice only: the others must stay empty
    lab[0, 0, 4, :, 12] = 2
    angles = torch.tensor([[np.pi / 2, 0.0, 0.0]])
    m = sp.affine_matrices(angles, torch.ones(1, 3), True)
    w_img, w_lab = sp.warp(lab.float(), lab, m, patch, True)
    expect = gather(lab[0, 0].numpy(), m[0].numpy(), patch)
    assert np.array_equal(w_lab[0, 0].numpy(), expect) and len(np.unique(expect)) == 3
    assert set(np.unique(expect[1])) == {0, 1} and set(np.unique(expect[4])) == {0, 2}
    assert np.allclose(w_img[0, 0].numpy(), expect, atol=1e-4)


def test_identity_reproduces_the_centre_crop_up_to_half_a_voxel():
    """Identity samples (N−1)/2 + o − (F−1)/2: on an axis where N − F is even that is the
    crop start exactly; where it is odd it is half a voxel past floor(N/2) − F//2, so the
    image is the mean of the crop and the crop shifted by one on those axes, and the label
    one of the two neighbours' labels (bgv2's tie-break picks which)."""
    eye = sp.affine_matrices(torch.zeros(2, 3), torch.ones(2, 3), False)
    img, lab = smooth_case((36, 52, 42), 5)  # margins 20, 20, 10: all even
    w_img, w_lab = sp.warp(img[None].repeat(2, 1, 1, 1, 1), to_u8(lab)[None].repeat(2, 1, 1, 1, 1),
                           eye, PATCH3, False)
    assert (w_img[1] - sp.centre_crop(img[None], PATCH3)[0]).abs().max() <= 1e-5
    assert torch.equal(w_lab[1], sp.centre_crop(to_u8(lab)[None], PATCH3)[0])
    img, lab = smooth_case(BOX3, 6)  # margins 19, 19, 10: axes 0, 1 odd
    lab8 = to_u8(lab)
    w_img, w_lab = sp.warp(img[None], lab8[None], eye[:1], PATCH3, False)
    big = (PATCH3[0] + 1, PATCH3[1] + 1, PATCH3[2])
    crop_img = sp.centre_crop(img[None], big)[0]  # starts at floor(N/2) − F//2 on odd axes too
    crop_lab = sp.centre_crop(lab8[None], big)[0]
    assert crop_img.shape[1:] == big
    shifts = [(i, j) for i in (0, 1) for j in (0, 1)]
    mean = sum(crop_img[:, i:i + 16, j:j + 32] for i, j in shifts) / 4
    assert (w_img[0] - mean).abs().max() <= 1e-5
    assert (w_img[0] - crop_img[:, :16, :32]).abs().max() > 0.01  # the half-voxel shift is real
    candidates = torch.stack([crop_lab[:, i:i + 16, j:j + 32] for i, j in shifts])
    assert (candidates == w_lab[0][None]).any(0).all()


def test_label_values_stay_within_the_input_set():
    g = torch.Generator().manual_seed(1)
    img, lab = smooth_case(BOX3, 7, labels=3, border=False)
    lab8 = torch.tensor([0, 3, 7], dtype=torch.uint8)[lab.long()]
    w = 6
    angles = (torch.rand(w, 3, generator=g) - 0.5) * np.pi / 3
    scales = (0.7 + 0.7 * torch.rand(w, 1, generator=g)).repeat(1, 3)
    _, out = sp.warp(img[None].repeat(w, 1, 1, 1, 1), lab8[None].repeat(w, 1, 1, 1, 1),
                     sp.affine_matrices(angles, scales, False), PATCH3, False)
    assert set(out.unique().tolist()) == {0, 3, 7, OUT}  # 255 where a zoom-out leaves the box


def test_empty_group_and_bad_shapes():
    img, lab = sp.warp(torch.zeros(0, 2, *BOX3), torch.zeros(0, 1, *BOX3, dtype=torch.uint8),
                       torch.zeros(0, 3, 3), PATCH3, False)
    assert img.shape == (0, 2, *PATCH3) and lab.shape == (0, 1, *PATCH3)
    with pytest.raises(ValueError):  # dummy 2D must keep axis 0
        sp.warp(torch.zeros(1, 1, 9, 37, 37), torch.zeros(1, 1, 9, 37, 37, dtype=torch.uint8),
                torch.eye(3)[None], PATCH2, True)


def test_mirror_matches_bgv2():
    pytest.importorskip("batchgeneratorsv2")
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform

    flips = torch.tensor([[(k >> a) & 1 for a in range(3)] for k in range(8)], dtype=torch.bool)
    g = torch.Generator().manual_seed(2)
    image = torch.randn(8, 2, 6, 7, 9, generator=g)
    label = torch.randint(0, 5, (8, 1, 6, 7, 9), generator=g, dtype=torch.uint8)
    out_img, out_lab = mirror(image, label, flips)
    t = MirrorTransform(allowed_axes=(0, 1, 2))
    for b in range(8):
        axes = [a for a in range(3) if flips[b, a]]
        assert torch.equal(out_img[b], t._apply_to_image(image[b], axes=axes))
        assert torch.equal(out_lab[b], t._apply_to_segmentation(label[b], axes=axes))
    assert torch.equal(out_img[0], image[0]) and not torch.equal(out_img[7], image[7])


def test_mirror_groups_leave_inputs_alone():
    g = torch.Generator().manual_seed(5)
    image = torch.randn(7, 2, 4, 5, 6, generator=g)
    label = torch.randint(0, 9, (7, 1, 4, 5, 6), generator=g, dtype=torch.uint8)
    before = image.clone(), label.clone()
    none = torch.zeros(7, 3, dtype=torch.bool)
    assert mirror(image, label, none)[0] is image  # nothing flipped: nothing copied
    for rows in ([2], [0, 3, 6], list(range(7))):  # mostly unflipped, some, all
        flips = torch.zeros(7, 3, dtype=torch.bool)
        for r in rows:
            flips[r] = torch.tensor([r % 2 == 0, r % 3 == 0, True])
        out_img, out_lab = mirror(image, label, flips)
        for b in range(7):
            dims = [a + 1 for a in range(3) if flips[b, a]]
            assert torch.equal(out_img[b], image[b].flip(dims) if dims else image[b])
            assert torch.equal(out_lab[b], label[b].flip(dims) if dims else label[b])
    assert torch.equal(image, before[0]) and torch.equal(label, before[1])


def test_downsample_targets_match_bgv2():
    pytest.importorskip("batchgeneratorsv2")
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import (
        DownsampleSegForDSTransform,
    )

    scales = [[1, 1, 1], [1, 0.5, 0.5], [0.5, 0.25, 0.25], [0.25, 0.125, 0.125], 0.125]
    g = torch.Generator().manual_seed(3)
    label = torch.randint(0, 4, (3, 1, 20, 36, 30), generator=g, dtype=torch.uint8)
    out = losses.downsample_targets(label, scales)
    assert out[0] is label
    assert out[3].shape[2:] == (5, 4, 4) and out[4].shape[2:] == (2, 4, 4)  # round half to even
    t = DownsampleSegForDSTransform(ds_scales=scales)
    for b in range(3):
        ref = t._apply_to_segmentation(label[b])
        assert all(torch.equal(o[b], r) and o.dtype == r.dtype for o, r in zip(out, ref))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    dev = torch.device("cuda")
    for dummy in (False, True):
        box, patch = (BOX2, PATCH2) if dummy else (BOX3, PATCH3)
        _, _, angles, scales = group_draws("both", 3, dummy)
        cases = [smooth_case(box, 20 + i) for i in range(3)]
        image = torch.stack([c[0] for c in cases])
        label = torch.stack([to_u8(c[1]) for c in cases])
        cpu = sp.warp(image, label, sp.affine_matrices(angles, scales, dummy), patch, dummy)
        gpu = sp.warp(image.to(dev), label.to(dev),
                      sp.affine_matrices(angles.to(dev), scales.to(dev), dummy), patch, dummy)
        assert (gpu[0].cpu() - cpu[0]).abs().max() <= 1e-4
        assert (gpu[1].cpu() == cpu[1]).float().mean() >= 0.999
    flips = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    image = torch.randn(2, 1, 4, 5, 6)
    label = torch.randint(0, 3, (2, 1, 4, 5, 6), dtype=torch.uint8)
    cpu = mirror(image, label, flips)
    gpu = mirror(image.to(dev), label.to(dev), flips.to(dev))  # flips on the device
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])
    gpu = mirror(image.to(dev), label.to(dev), flips)  # flips on the host: grouped
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])
    on_gpu = losses.downsample_targets(label.to(dev), [1, 0.5])
    for c, g in zip(losses.downsample_targets(label, [1, 0.5]), on_gpu):
        assert torch.equal(g.cpu(), c)


def test_mirror_in_place_equals_the_copying_mirror():
    """The augmenter's in-place mirror writes the same bits into its own batch, for groups
    that are one run of samples (views) and scattered ones (index copies)."""
    g = torch.Generator().manual_seed(6)
    image = torch.randn(9, 2, 4, 5, 6, generator=g)
    label = torch.randint(0, 9, (9, 1, 4, 5, 6), generator=g, dtype=torch.uint8)
    patterns = [0, 3, 3, 3, 5, 0, 5, 7, 1]  # runs (1-3), scattered (4, 6), singles, unflipped
    flips = torch.tensor([[(k >> a) & 1 for a in range(3)] for k in patterns], dtype=torch.bool)
    ref_img, ref_lab = mirror(image, label, flips)
    img, lab = image.clone(), label.clone()
    out_img, out_lab = mirror(img, lab, flips, inplace=True)
    assert out_img is img and out_lab is lab
    assert torch.equal(img, ref_img) and torch.equal(lab, ref_lab)
    assert not torch.equal(img, image) and torch.equal(img[0], image[0])


def test_nearest_exact_slices_where_sizes_divide_and_interpolates_elsewhere():
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 250, (2, 1, 12, 20, 9), generator=g, dtype=torch.uint8)
    for size in [(6, 10, 9), (3, 5, 3), (12, 20, 9), (5, 7, 4), (6, 10, 4), (1, 1, 1)]:
        ref = F.interpolate(x.float(), size=size, mode="nearest-exact").to(torch.uint8)
        out = losses.nearest_exact(x, size)
        assert out.dtype == torch.uint8 and out.is_contiguous()
        assert torch.equal(out, ref), size
