"""nnU-Net 2.8.1's spatial augmentation (batchgeneratorsv2 0.3.6), batched over samples.

nnU-Net warps one sample at a time on the CPU (``SpatialTransform`` as configured in
``get_training_transforms``). Here the same geometry runs once over the *warp group*, the
samples of a batch whose rotation or scaling fired, with one batched grid, so the cost does
not grow with a Python loop over samples. The image channels and one score channel per
label value present are stacked and resampled together, a few channels per ``grid_sample``
call (the coordinate and weight work is shared by the channels, and each channel's result
is bit-identical to a call of its own). The unwarped samples never come here: the loader
reads their final patch at nnU-Net's integer centre (:func:`centre_crop` is that rule).

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
  (ordered first, where −1 sorts in bgv2), and stays ``outside`` in the output. Scores are
  ``grid_sample`` of indicator × 1000 cast to float16 (the float16 spacing collapses near
  ties into exact ties, as bgv2 relies on); the running argmax keeps the first label on a
  tie and then ``seg_tiebreak='nearest'`` gives a tied voxel to its nearest-neighbour label
  when that label holds the top score.
* dummy 2D (nnU-Net: ``max(patch)/patch[0] > 3``): each axis-0 slice of a sample gets the
  same 2D warp of that sample (bgv2's Convert3DTo2D + 2D SpatialTransform), done as 2D
  ``grid_sample`` over (W, C·Z, Y, X) with one grid per sample.

Everything runs in float32 (grids included: a float16 grid is ~0.1 voxel off at 257
voxels) under ``torch.no_grad()``, with the same results on CPU torch and CUDA. Three CPU
shortcuts change only the cost: labels are scored only at output points whose input cell
mixes labels (:func:`_cell_labels`), a lone sample's points are split over the threads
(:func:`_sample`), and the score stack's buffer is reused (:func:`_scratch`). On an
accelerator they would cost a host sync or buy nothing, so there everything is scored.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["affine_matrices", "warp", "centre_crop"]

_SCORE = 1000.0  # bgv2's scale_factor: indicator × 1000, scores compared in float16
_CHUNK_CHANNELS = 8  # channels resampled per grid_sample call (image and scores stacked) ...
_CHUNK_BYTES = 256 << 20  # ... and at most this much float32 input per call (≥ 1 channel)
_PACK_BELOW = 0.5  # CPU: score labels only at mixed-cell points when under this fraction
_SCRATCH = threading.local()  # CPU: the reused input buffer of the score stack


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


def _reaches_outside(grid: torch.Tensor, box: Sequence[int]) -> bool:
    """Whether a bilinear kernel of ``grid`` reads past the box (pixel < 0 or > N−1).

    bgv2 adds the padding label to the argmax only then (``_may_reach_outside``); adding it
    when it is not needed changes nothing (its score is ~0 everywhere), so the exact
    per-axis bound here and bgv2's min-over-axes bound decide the same labels.
    """
    bound = torch.tensor([1.0 - 1.0 / n for n in reversed(box)], device=grid.device)
    return bool((grid.abs().amax(dim=tuple(range(grid.ndim - 1))) > bound).any())


def _label_order(label: torch.Tensor, grid: torch.Tensor, box: Sequence[int],
                 outside: int) -> list[int]:
    """The labels scored, in bgv2's order: ``outside`` first (−1 sorts first in bgv2, which
    matters for first-wins ties) when present or reached, then the values present, ascending."""
    counts = torch.bincount(label.reshape(-1), minlength=256).tolist()
    present = [v for v in range(256) if counts[v] and v != outside]
    order = [outside] if (counts[outside] or _reaches_outside(grid, box)) else []
    return order + present


def _chunks(count: int, channel_bytes: int) -> list[range]:
    """Consecutive channel groups of at most ``_CHUNK_CHANNELS`` channels and (unless one
    channel alone is larger) ``_CHUNK_BYTES`` of float32 input per ``grid_sample`` call."""
    size = max(1, min(_CHUNK_CHANNELS, _CHUNK_BYTES // max(1, channel_bytes)))
    return [range(s, min(s + size, count)) for s in range(0, count, size)]


def _scratch(shape: tuple, device: torch.device) -> torch.Tensor:
    """A float32 work buffer. On the CPU one per thread, kept and reused (the largest chunk
    seen, ≤ ``_CHUNK_BYTES`` unless one channel is larger): a fresh buffer this size comes
    from mmap, and faulting its pages in costs about as much as filling it."""
    if device.type != "cpu":
        return torch.empty(shape, dtype=torch.float32, device=device)
    n = math.prod(shape)
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.numel() < n:
        _SCRATCH.buf = None  # free the old buffer before allocating the larger one
        buf = _SCRATCH.buf = torch.empty(n, dtype=torch.float32)
    return buf[:n].view(shape)


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


def _cell_labels(label: torch.Tensor, grid: torch.Tensor, outside: int) -> torch.Tensor:
    """(W, K, P) int16: per output point the label of its bilinear cell (2^d input voxels,
    ``outside`` beyond the box) where all corners agree, else −1.

    Where they agree bgv2's answer is that label (its score ≈ 1000, every other ≈ 0: no tie
    for the tie-break to settle). The cell is found from the grid in float32 here, which
    may differ from ``grid_sample``'s own arithmetic where a coordinate lies within float
    error of a voxel centre — but then the corners on the far side of that centre weigh
    ~1e-5, so the heavy corners are shared by both cells and the answer is the same.
    """
    (w, k), box, d = label.shape[:2], label.shape[2:], grid.shape[-1]
    value = F.pad(label, (1, 1) * d, value=outside)
    same = None
    for axis in range(2, 2 + d):  # separably: a cell is uniform if its two halves are and agree
        n = value.shape[axis] - 1
        lo = value.narrow(axis, 0, n)
        agree = lo == value.narrow(axis, 1, n)
        if same is not None:
            agree &= same.narrow(axis, 0, n) & same.narrow(axis, 1, n)
        same, value = agree, lo
    index = None  # flat cell index per point; grid axis a is box axis d − 1 − a
    for a, n in enumerate(reversed(box)):
        x = grid[..., a].reshape(w, -1) * (n / 2)  # pixel coordinate − (n − 1)/2
        x = x.add_((n - 1) / 2 + 1).floor_().clamp_(0, n).to(torch.int64)
        x *= math.prod(m + 1 for m in box[d - a:])
        index = x if index is None else index.add_(x)
    index = index[:, None].expand(w, k, -1)
    cells = value.reshape(w, k, -1).gather(2, index).to(torch.int16)
    return cells.masked_fill_(~same.reshape(w, k, -1).gather(2, index), -1)


def _pack(mixed: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The grid points where ``mixed`` (W, P), packed per sample to the left of a
    (W, 1[, 1], M, d) grid (M: the largest count; padding points at 0), with their
    (sample, point) and (sample, slot) coordinates."""
    w, d = grid.shape[0], grid.shape[-1]
    counts = mixed.sum(1)
    rows, cols = mixed.nonzero(as_tuple=True)
    slots = torch.arange(len(rows), device=grid.device) - (counts.cumsum(0) - counts)[rows]
    packed = grid.new_zeros((w, int(counts.max()), d))
    packed[rows, slots] = grid.reshape(w, -1, d)[rows, cols]
    return packed.view(w, *[1] * (d - 1), -1, d), rows, cols, slots


def _resample(image: torch.Tensor, label: torch.Tensor, grid: torch.Tensor,
              outside: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and label path of :func:`warp` on (W, C, *box) float32 and (W, K, *box) uint8.

    Channels: the image's, then one score per (label value, label channel) for every value
    present in the whole group, plus ``outside`` when a kernel leaves the box (a value absent
    from a sample scores 0 there and cannot win: the scores sum to 1000). Each group of
    :func:`_chunks` is stacked into one input and resampled bilinearly, and its score
    channels once more with ``mode='nearest'``: an indicator read there is hit exactly where
    bgv2's nearest-neighbour sample of the padded labels is that label (the same voxel is
    read; beyond the box only ``outside``'s (indicator − 1) reads 0). Memory: one chunk of
    input (≤ ``_CHUNK_BYTES``) and O(W·K·patch) for the running argmax, whatever the labels.

    On the CPU, unless over ``_PACK_BELOW`` of any sample's points are mixed, the labels are
    scored only at points whose cell is mixed (the others take their cell's label,
    :func:`_cell_labels`), packed into a smaller grid (a point's ``grid_sample`` arithmetic
    does not depend on where it sits, so the scores are the same bits), and the image has a
    call of its own on the full grid.

    A score is bgv2's: indicator × 1000 resampled, then float16; the ``outside`` label is 1
    beyond the box too, so (indicator − 1) × 1000 is sampled with zeros padding and 1000
    added back, as bgv2 does, so the sums round alike. bgv2 answers a channel with exactly
    two labels by "score of the second > 500" instead of comparing two scores; the two
    agree unless the two float32 sums round to different float16 steps (not seen in the
    parity tests, where every voxel matches).
    """
    w, c, k = image.shape[0], image.shape[1], label.shape[1]
    box, patch = tuple(image.shape[2:]), tuple(grid.shape[1:-1])
    order = _label_order(label, grid, box, outside)
    cells = None
    if len(order) > 1 and label.device.type == "cpu" and _PACK_BELOW > 0:
        cells = _cell_labels(label, grid, outside)
        mixed = cells.amin(1) < 0
        if mixed.sum(1).max() > _PACK_BELOW * mixed.shape[1]:
            cells = None  # mostly mixed: score everywhere, the image in the same calls
    if len(order) == 1 or cells is not None:
        img = _sample(image, grid)
        if len(order) == 1:  # one label everywhere: nothing to score
            return img, torch.full((w, k, *patch), order[0], dtype=torch.uint8,
                                   device=label.device)
        lab = cells.to(torch.uint8)
        if not mixed.any():
            return img, lab.view(w, k, *patch)
        grid, rows, cols, slots = _pack(mixed, grid)
    # The running argmax as one float32 maximum of key = float16 score × 4096 + 255 − rank:
    # exact where a score can win (the top one is ≥ 1000/8, where float16 steps are ≥ 1/16),
    # so the top score wins and a tie goes to the first label in ``order`` (bgv2's '>').
    shape = (w, k, *grid.shape[1:-1])
    best = torch.full(shape, -math.inf, dtype=torch.float32, device=label.device)
    nn_key = torch.zeros_like(best)  # the nearest neighbour's label's key
    rank = {v: r for r, v in enumerate(order)}

    def fold(value: int, chs: slice, score: torch.Tensor, nn_read: torch.Tensor) -> None:
        if value == outside:
            score.add_(_SCORE)
        key = score.to(torch.float16).to(torch.float32).mul_(4096.0).add_(255 - rank[value])
        hit = nn_read.mul_(1e-3)  # exactly 0 or 1 (−1 for outside): float32 rounds 1000 × 1e-3
        if value == outside:
            hit.add_(1.0)  # 1 where the nearest neighbour is this label
        nn_key[:, chs].addcmul_(hit, key)  # one label hits per point, the others add 0
        torch.maximum(best[:, chs], key, out=best[:, chs])

    channels = [(None, ch) for ch in range(c) if cells is None]
    channels += [(v, ch) for v in order for ch in range(k)]
    groups = _chunks(len(channels), 4 * w * math.prod(box))
    stack_buf = _scratch((w, len(groups[0]), *box), image.device)
    if cells is None:
        img = image.new_empty((w, c, *patch))
    for group in groups:
        part = [channels[i] for i in group]
        stack = stack_buf[:, :len(part)]
        for j, (value, ch) in enumerate(part):
            if value is None:
                stack[:, j].copy_(image[:, ch])
                continue
            torch.eq(label[:, ch], value, out=stack[:, j])
            if value == outside:
                stack[:, j].sub_(1.0)
            stack[:, j].mul_(_SCORE)
        out = _sample(stack, grid)
        first = sum(value is None for value, _ in part)  # image channels lead the first group
        reads = _sample(stack[:, first:], grid, "nearest")
        for j in range(first):
            img[:, part[j][1]].copy_(out[:, j])
        for value, run in itertools.groupby(range(first, len(part)), key=lambda j: part[j][0]):
            run = list(run)  # one value over consecutive label channels
            chs, js = slice(part[run[0]][1], part[run[-1]][1] + 1), slice(run[0], run[-1] + 1)
            fold(value, chs, out[:, js], reads[:, js.start - first:js.stop - first])
        del out, reads
    del stack_buf
    # seg_tiebreak='nearest': where the nearest neighbour's label holds the top score it wins
    top, nn_top = best.mul(1 / 256).floor_(), nn_key.mul(1 / 256).floor_()
    code = torch.where(nn_top == top, nn_key.sub_(nn_top, alpha=256), best.sub_(top, alpha=256))
    by_code = torch.zeros(256, dtype=torch.uint8)  # 255 − rank → value
    by_code[255 - torch.arange(len(order))] = torch.tensor(order, dtype=torch.uint8)
    scored = by_code.to(label.device).index_select(0, code.view(-1).to(torch.int32))
    scored = scored.view(shape)
    if cells is None:
        return img, scored
    lab[rows, :, cols] = scored.reshape(w, k, -1)[rows, :, slots]
    return img, lab.view(w, k, *patch)


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
        grid = _grid(matrices[:, 1:, 1:], box[1:], patch[1:])
        img, lab = _resample(image.reshape(w, c * z, *box[1:]),
                             label.reshape(w, k * z, *box[1:]), grid, outside)
        return img.reshape(w, c, *patch), lab.reshape(w, k, *patch)
    return _resample(image, label, _grid(matrices, box, patch), outside)


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
