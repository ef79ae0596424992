"""nnU-Net 2.8.1's spatial augmentation (batchgeneratorsv2 0.3.6), batched over samples.

nnU-Net warps one sample at a time on the CPU (``SpatialTransform`` as configured in
``get_training_transforms``). Here the same geometry runs once over the *warp group*, the
samples of a batch whose rotation or scaling fired, with one batched grid, so the cost does
not grow with a Python loop over samples: the image channels in one ``grid_sample`` call,
the labels from the corners of each point (:mod:`.label_resampling`). The unwarped
samples never come here: the loader reads their final patch at nnU-Net's integer centre
(:func:`centre_crop` is that rule).

Conventions (all as bgv2 0.3.6 with ``random_crop=False``, ``align_corners=False``):

* axes are the tensor axes (Z, Y, X) = nnU-Net's (0, 1, 2); a matrix ``A`` acts on column
  vectors in that order, and output voxel ``o`` of patch ``F`` samples input position
  ``A·(o − (F−1)/2) + (N−1)/2`` of the box ``N`` (the geometric centres). That centre is
  half a voxel off :func:`centre_crop`'s ``floor(N/2) − F//2`` on every axis where N − F is
  odd — as in bgv2, whose unwarped path crops and whose warped path resamples.
* image: bilinear, zeros outside the box.
* labels: bgv2's one-hot linear interpolation with ``border_mode_seg='constant'`` and
  ``padding_value_seg=-1`` (nnU-Net's value for voxels outside the case). Our labels are
  uint8 and ``outside`` (255) plays −1 everywhere: it pads the box, competes as a label
  (ordered first, where −1 sorts in bgv2), and stays ``outside`` in the output; the
  scores, float16 ties and nearest-neighbour tie-break are bgv2's, computed from the
  corners of each point (:func:`~pgps_train.augment.label_resampling.resample_labels`).
* dummy 2D (nnU-Net: ``max(patch)/patch[0] > 3``): each axis-0 slice of a sample gets the
  same 2D warp of that sample (bgv2's Convert3DTo2D + 2D SpatialTransform), done as 2D
  ``grid_sample`` over (W, C·Z, Y, X) with one grid per sample.

Everything runs in float32 (grids included: a float16 grid is ~0.1 voxel off at 257
voxels) under ``torch.no_grad()``, with the same results on CPU torch and CUDA. Two CPU
shortcuts change only the cost: labels are scored only where a point's corners disagree,
and a lone sample's points are split over the threads (:func:`_sample`). On an
accelerator they would cost a host sync or buy nothing, so there everything is scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pgps_train.augment.label_resampling import resample_labels

__all__ = ["affine_matrices", "warp", "centre_crop"]

def _rotations(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bgv2's Rx, Ry, Rz (rotations in the planes of axes (1,2), (0,2), (0,1)), batched."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def mat(rows):
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    rx = mat([(one, zero, zero), (zero, c[:, 0], -s[:, 0]), (zero, s[:, 0], c[:, 0])])
    ry = mat([(c[:, 1], zero, s[:, 1]), (zero, one, zero), (-s[:, 1], zero, c[:, 1])])
    rz = mat([(c[:, 2], -s[:, 2], zero), (s[:, 2], c[:, 2], zero), (zero, zero, one)])
    return rx, ry, rz


@torch.no_grad()
def affine_matrices(angles: torch.Tensor, scales: torch.Tensor, dummy_2d: bool) -> torch.Tensor:
    """The (W, 3, 3) float64 matrices of bgv2's ``create_affine_matrix_3d`` / ``_2d``.

    3D: ``Rz(a2) · Ry(a1) · Rx(a0) · diag(s)`` from ``angles``/``scales`` (W, 3), radians.
    Dummy 2D: bgv2 sees a 2D sample and builds ``R(a) · diag(s1, s2)`` on axes (1, 2); the
    contract stores that angle at index 0, so this is ``Rx(a0) · diag(1, s1, s2)`` (the 2D
    matrix in the lower-right block; angles 1, 2 and scale 0 are ignored). Float64 because
    bgv2 builds them in numpy float64; :func:`warp` casts its grid to float32.
    """
    a = angles.to(torch.float64).reshape(-1, 3)
    s = scales.to(torch.float64).reshape(-1, 3)
    if dummy_2d:
        zero = torch.zeros_like(a[:, 0])
        a = torch.stack([a[:, 0], zero, zero], 1)
        s = torch.cat([torch.ones_like(s[:, :1]), s[:, 1:]], 1)
    rx, ry, rz = _rotations(a)
    return rz @ ry @ rx @ torch.diag_embed(s)


_BASE_GRIDS: dict[tuple, torch.Tensor] = {}  # (patch, device) → centred identity grid (P, d)


def _base_grid(patch: Sequence[int], device: torch.device) -> torch.Tensor:
    """bgv2's centred identity grid ``o − (F−1)/2`` (float32 linspace per axis), cached."""
    key = (tuple(patch), str(device))
    if key not in _BASE_GRIDS:
        if len(_BASE_GRIDS) > 16:
            _BASE_GRIDS.clear()
        axes = [torch.linspace((1 - n) / 2, (n - 1) / 2, n, device=device) for n in patch]
        grid = torch.stack(torch.meshgrid(axes, indexing="ij"), -1)
        _BASE_GRIDS[key] = grid.reshape(-1, len(patch))
    return _BASE_GRIDS[key]


def _grid(matrices: torch.Tensor, box: Sequence[int], patch: Sequence[int]) -> torch.Tensor:
    """The float32 ``grid_sample`` grid (W, *patch, d) of ``A·(o − (F−1)/2) + (N−1)/2``.

    Built the way bgv2 builds it, batched: the centred identity grid times ``Aᵀ`` in float32,
    divided by N/2 per axis (align_corners=False puts pixel p at (2p + 1)/N − 1, so the
    centre (N−1)/2 is 0), with the last dimension reversed (grid_sample reads (x, y, z) =
    tensor axes reversed; reversing the columns of ``Aᵀ`` leaves every dot product as it
    was). One batched matmul, the work of ``affine_grid``, but bit-identical to bgv2's grid
    on CPU, so even exact half-voxel ties (identity, 90°, scale 0.5) resolve as bgv2 does.
    """
    w, d = matrices.shape[0], len(box)
    dev = matrices.device
    at = matrices.transpose(1, 2).to(torch.float32).flip(-1)
    grid = torch.matmul(_base_grid(patch, dev), at)
    grid.div_(torch.tensor([n / 2 for n in reversed(box)], dtype=torch.float32, device=dev))
    return grid.reshape(w, *patch, d)


def pixel_rows(matrices: torch.Tensor, box: Sequence[int],
               patch: Sequence[int]) -> list[torch.Tensor]:
    """Per box axis, the (W, P) source pixel coordinates ``A·(o − (F−1)/2) + (N−1)/2`` of
    the patch points, built by broadcasting (the identity grid is an outer sum of one
    line per axis), so each axis is one contiguous row. Within float error of
    :func:`_grid`'s values, which is all the label path's cell search needs."""
    w, d = matrices.shape[0], len(box)
    dev = matrices.device
    m = matrices.to(torch.float32)
    lines = [torch.linspace((1 - n) / 2, (n - 1) / 2, n, device=dev) for n in patch]
    rows = []
    for a in range(d):
        acc = torch.full((w, *[1] * d), (box[a] - 1) / 2, device=dev)
        for b, line in enumerate(lines):
            shape = [1] * (d + 1)
            shape[1 + b] = len(line)
            acc = acc + m[:, a, b].view(w, *[1] * d) * line.view(shape)
        rows.append(acc.reshape(w, -1))
    return rows


def _sample(image: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``grid_sample`` (zeros padding, align_corners=False). CPU ``grid_sample`` runs one
    thread per sample, so a lone sample's points are split over the threads (its input
    expanded, not copied; each point's arithmetic is the same wherever it sits)."""
    lone = image.device.type == "cpu" and len(image) == 1 and image.shape[1] > 0
    parts = torch.get_num_threads() if lone else 1
    if parts == 1:
        return F.grid_sample(image, grid, mode=mode, padding_mode="zeros", align_corners=False)
    d, c = grid.shape[-1], image.shape[1]
    points = grid.reshape(-1, d)
    n, m = len(points), -(-len(points) // parts)
    points = F.pad(points, (0, 0, 0, m * parts - n)).view(parts, *[1] * (d - 1), m, d)
    out = F.grid_sample(image.expand(parts, *image.shape[1:]), points, mode=mode,
                        padding_mode="zeros", align_corners=False)
    out = out.reshape(parts, c, m).transpose(0, 1).reshape(c, -1)[:, :n]
    return out.reshape(1, c, *grid.shape[1:-1])


@torch.no_grad()
def warp(image: torch.Tensor, label: torch.Tensor, matrices: torch.Tensor,
         patch: Sequence[int], dummy_2d: bool,
         outside: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp the boxes of the warp group to the final patch, as nnU-Net's SpatialTransform.

    ``image`` (W, C, *I) float32, ``label`` (W, 1, *I) uint8 (``outside`` where the case
    ends), ``matrices`` (W, 3, 3) from :func:`affine_matrices`; returns (W, C, *F) float32
    and (W, 1, *F) uint8. In dummy 2D the box must keep the patch's axis 0 (I[0] = F[0], as
    nnU-Net's initial patch does) and only the lower-right 2×2 block of each matrix is used.
    """
    patch = tuple(int(p) for p in patch)
    w, c = image.shape[:2]
    box = tuple(image.shape[2:])
    if len(box) != 3 or len(patch) != 3 or tuple(label.shape[2:]) != box:
        raise ValueError(f"warp: image {tuple(image.shape)} and label {tuple(label.shape)} "
                         f"must be (W, C, Z, Y, X) boxes of one size; patch {patch}")
    if label.dtype != torch.uint8:
        raise TypeError(f"warp: label must be uint8, got {label.dtype}")
    k = label.shape[1]
    if w == 0:
        return (image.new_zeros((0, c, *patch)), label.new_zeros((0, k, *patch)))
    image = image.to(torch.float32)
    if dummy_2d:
        if box[0] != patch[0]:
            raise ValueError(f"warp: dummy 2D keeps axis 0, but box {box} vs patch {patch}")
        z = box[0]
        plane = matrices[:, 1:, 1:]
        grid = _grid(plane, box[1:], patch[1:])
        img = _sample(image.reshape(w, c * z, *box[1:]), grid)
        lab = resample_labels(label.reshape(w, k * z, *box[1:]), grid, outside,
                              pixels=pixel_rows(plane, box[1:], patch[1:]))
        return img.reshape(w, c, *patch), lab.reshape(w, k, *patch)
    grid = _grid(matrices, box, patch)
    return _sample(image, grid), resample_labels(label, grid, outside,
                                                 pixels=pixel_rows(matrices, box, patch))


def centre_crop(box: torch.Tensor, patch: Sequence[int]) -> torch.Tensor:
    """bgv2's unwarped path: the patch starting at ``floor(I/2) − F//2`` per axis (a view).

    This is what nnU-Net does for a sample whose rotation and scaling did not fire (and the
    loader reads exactly this patch for such slots). Needs I ≥ F on every axis.
    """
    box_shape = tuple(box.shape[2:])
    if len(box_shape) != len(patch) or any(n < p for n, p in zip(box_shape, patch)):
        raise ValueError(f"centre_crop: box {box_shape} smaller than patch {tuple(patch)}")
    index = [slice(None), slice(None)]
    index += [slice(n // 2 - p // 2, n // 2 - p // 2 + p) for n, p in zip(box_shape, patch)]
    return box[tuple(index)]
