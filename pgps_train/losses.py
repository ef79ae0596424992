"""The training objective: nnU-Net's loss and pseudo-Dice, for label values or regions.

Which one a dataset gets is :class:`pgps_data.labels.Labels`' rule (nnU-Net's
``has_regions``); :func:`objective_for` picks it, and the trainer only calls ``target``,
``loss`` and ``counts``. Both follow nnU-Net v2's ``nnUNetTrainer._build_loss`` and
``validation_step``, deep supervision included: the outputs weigh 1, 1/2, 1/4, ... (the
lowest resolution 0), normalised to sum 1, each against the target downsampled by nearest
neighbour.

- **Softmax** (label values): soft Dice (batch Dice, background excluded, smooth 1e-5) +
  cross-entropy. The store's values become class indices first (background 0, the k-th
  foreground value k); ignore-label voxels are left out of both terms (the Dice's after the
  softmax, as nnU-Net masks them; cross-entropy's ignore_index). The pseudo-Dice compares argmaxes.
- **Regions**: one sigmoid output per region, nnU-Net's ``DC_and_BCE_loss`` with
  ``MemoryEfficientSoftDiceLoss`` (nnunetv2/training/loss/compound_losses.py, dice.py):
  batch Dice over every region channel (``do_bg=True``), smooth 1e-5, plus binary
  cross-entropy on the logits; with an ignore label both terms are masked by the annotated
  voxels (``use_ignore_label``). The pseudo-Dice thresholds each sigmoid at 0.5.
  nnU-Net returns -Dice; we return 1 - Dice, as MONAI's DiceLoss does on the softmax path,
  so both losses lie in the same range (the gradient is the same).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pgps_data.labels import Labels

Outputs = Sequence[torch.Tensor] | torch.Tensor
#: Local sums (one flat tensor) → the same with every rank's summed in (distributed)
Reduce = Callable[[torch.Tensor], torch.Tensor]


def objective_for(labels: Labels) -> SoftmaxObjective | RegionObjective:
    """The objective ``labels`` train with: regions (sigmoid) or label values (softmax)."""
    return RegionObjective(labels) if labels.has_regions else SoftmaxObjective(labels)


class SoftmaxObjective(nn.Module):
    """Label values: targets are class indices; Dice + CE; pseudo-Dice of the argmax."""

    def __init__(self, labels: Labels):
        super().__init__()
        self.labels = LabelMap(labels)
        self.num_classes, self.ignore_index = self.labels.num_classes, self.labels.ignore_index
        self.seg_loss = SegLoss(self.num_classes, self.ignore_index)

    def target(self, label: torch.Tensor) -> torch.Tensor:
        """(B, 1, Z, Y, X) store values → class indices (the ignore value → ignore_index)."""
        return self.labels(label)

    def loss(self, outputs: Outputs, target: torch.Tensor,
             reduce: Reduce | None = None) -> torch.Tensor:
        """The deep-supervised loss; ``reduce``: the global batch's (see SegLoss)."""
        return self.seg_loss(outputs, target, reduce)

    def counts(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(foreground classes, 3) true-positive, false-positive, false-negative counts."""
        return confusion_counts(logits, target, self.num_classes, self.ignore_index)


class RegionObjective(nn.Module):
    """Regions: targets stay label values (made into region channels per output, so each
    deep-supervision head sees the nearest-downsampled values); Dice + BCE; pseudo-Dice of
    sigmoid > 0.5 per region."""

    def __init__(self, labels: Labels, smooth: float = 1e-5):
        super().__init__()
        self.register_buffer("lut", torch.from_numpy(labels.region_lut()), persistent=False)
        self.ignore = labels.ignore_label
        self.smooth = smooth

    def target(self, label: torch.Tensor) -> torch.Tensor:
        return label.long()

    def loss(self, outputs: Outputs, target: torch.Tensor,
             reduce: Reduce | None = None) -> torch.Tensor:
        """The deep-supervised loss; ``reduce``: the global batch's (see SegLoss)."""
        return deep_supervised_sums(
            outputs, target, lambda out, tgt: region_sums(out, *self.regions(tgt)),
            lambda *sums: region_combine(*sums, smooth=self.smooth), reduce)

    @torch.no_grad()
    def counts(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(regions, 3) true-positive, false-positive, false-negative voxel counts."""
        regions, mask = self.regions(target)
        pred = torch.sigmoid(logits) > 0.5
        truth = regions.bool()
        if mask is not None:
            pred, truth = pred & mask, truth & mask
        axes = (0, *range(2, logits.ndim))
        return torch.stack([(pred & truth).sum(axes), (pred & ~truth).sum(axes),
                            (~pred & truth).sum(axes)], dim=1)

    def regions(self, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 1, ...) values → (B, R, ...) float region targets and the (B, 1, ...) bool
        mask of annotated voxels (None without an ignore label)."""
        regions = self.lut[label[:, 0]].movedim(-1, 1).float()
        mask = None if self.ignore is None else label != self.ignore
        return regions, mask


def region_loss(logits: torch.Tensor, regions: torch.Tensor, mask: torch.Tensor | None,
                smooth: float = 1e-5) -> torch.Tensor:
    """nnU-Net's ``DC_and_BCE_loss`` for one output, + 1: BCE + 1 - batch soft Dice.

    ``logits`` and ``regions`` (B, R, ...), ``mask`` (B, 1, ...) bool or None. Dice per
    region r: (2 sum(p y m) + smooth) / (sum(y m) + sum(p m) + smooth), sums over the batch
    and the voxels, p = sigmoid(logits); the mean over regions. With a mask the BCE is its
    masked sum over all channels divided by the number of annotated voxels, exactly as
    nnU-Net writes it (so it weighs R times the plain mean that is taken without a mask).
    """
    return region_combine(*region_sums(logits, regions, mask), smooth=smooth)


def region_sums(logits: torch.Tensor, regions: torch.Tensor,
                mask: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """:func:`region_loss`'s sums over the batch and voxels: per region the intersection,
    the prediction and the target sums; the BCE sum and the voxels it is divided by."""
    probs = torch.sigmoid(logits)
    axes = (0, *range(2, logits.ndim))
    bce_map = F.binary_cross_entropy_with_logits(logits, regions, reduction="none")
    if mask is None:
        intersect = (probs * regions).sum(axes)
        sum_pred, sum_gt = probs.sum(axes), regions.sum(axes)
        bce_sum, count = bce_map.sum(), logits.new_tensor(float(logits.numel()))
    else:
        m = mask.to(probs.dtype)
        intersect = (probs * regions * m).sum(axes)
        sum_pred, sum_gt = (probs * m).sum(axes), (regions * m).sum(axes)
        bce_sum, count = (bce_map * m).sum(), m.sum()
    return intersect, sum_pred, sum_gt, bce_sum, count


def region_combine(intersect: torch.Tensor, sum_pred: torch.Tensor, sum_gt: torch.Tensor,
                   bce_sum: torch.Tensor, count: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """BCE + 1 - mean Dice from :func:`region_sums` (of one rank, or summed over ranks)."""
    dice = (2 * intersect + smooth) / (sum_gt + sum_pred + smooth).clamp_min(1e-8)
    return bce_sum / count.clamp_min(1e-8) + (1 - dice.mean())


class LabelMap(nn.Module):
    """Store label values (uint8) → class indices; the ignore value → ``ignore_index``
    (the LUT is :meth:`pgps_data.labels.Labels.class_lut`)."""

    def __init__(self, labels: Labels):
        super().__init__()
        self.num_classes = labels.num_outputs
        self.ignore_index = self.num_classes if labels.ignore_label is not None else -100
        self.register_buffer("lut", torch.from_numpy(labels.class_lut()), persistent=False)

    def forward(self, label: torch.Tensor) -> torch.Tensor:
        return self.lut[label.long()]


def deep_supervised_sums(outputs: Outputs, target: torch.Tensor,
                         sums: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]],
                         combine: Callable[..., torch.Tensor],
                         reduce: Reduce | None = None) -> torch.Tensor:
    """nnU-Net's deep-supervision sum of a loss made of sums over the batch and its voxels:
    each output (float32) against the target at its size (nearest-exact), weighted by
    :func:`deep_supervision_weights`, weight-0 outputs skipped.

    ``sums(output, target)`` gives each head's local sums, ``combine(*sums)`` its loss.
    ``reduce`` (None: one process) takes every head's sums as one flat tensor and returns
    it with the values summed over the data-parallel ranks (pgps_train.distributed.
    globalise), so the loss is the global batch's: one collective per step, all heads."""
    heads = [(w, sums(out, tgt)) for w, out, tgt in _heads(outputs, target)]
    if reduce is not None:
        parts = [s for _, ss in heads for s in ss]
        flat = reduce(torch.cat([s.reshape(-1) for s in parts]))
        pieces = iter(flat.split([s.numel() for s in parts]))
        heads = [(w, tuple(next(pieces).reshape(s.shape) for s in ss)) for w, ss in heads]
    total = None
    for w, ss in heads:
        term = w * combine(*ss)
        total = term if total is None else total + term
    return total


def _heads(outputs: Outputs, target: torch.Tensor):  # noqa: ANN202
    """(weight, float32 output, target at its size) per output of non-zero weight."""
    outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    for w, out in zip(deep_supervision_weights(len(outputs)), outputs):
        if w == 0:
            continue
        tgt = target if out.shape[2:] == target.shape[2:] else _downsample(target, out)
        yield w, out.float(), tgt


def deep_supervision_weights(n: int) -> list[float]:
    """nnU-Net's weights: 1/2**i, the lowest resolution 0, normalised to sum 1."""
    if n == 1:
        return [1.0]
    w = [1 / 2**i for i in range(n)]
    w[-1] = 0.0
    total = sum(w)
    return [x / total for x in w]


class SegLoss(nn.Module):
    """Dice + CE over a list of outputs (deep supervision), targets as class indices
    (the softmax path: batch Dice, background excluded, smooth 1e-5 in numerator and
    denominator, as MONAI's ``DiceLoss(include_background=False, softmax=True,
    batch=True)``, which the tests check it equals).

    The loss is computed from sums over the batch and its voxels (per class the
    intersection, the prediction and the target sums; the cross-entropy sum and its voxel
    count), so with data-parallel ranks it is the global batch's: ``reduce`` sums them
    over the ranks (pgps_train.distributed.globalise) before they are combined. With an
    ignore label the ignored voxels leave both terms, the Dice's after the softmax as
    nnU-Net's ``MemoryEfficientSoftDiceLoss`` masks them (MONAI's ``MaskedDiceLoss`` masks
    the logits before its softmax, so an ignored voxel still added 1/C per class to the
    prediction sum).
    """

    def __init__(self, num_classes: int, ignore_index: int = -100, smooth: float = 1e-5):
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.smooth = smooth

    def forward(self, outputs: Sequence[torch.Tensor] | torch.Tensor,
                target: torch.Tensor, reduce: Reduce | None = None) -> torch.Tensor:
        """``target`` (B, 1, Z, Y, X) long class indices at the outputs' resolution."""
        return deep_supervised_sums(outputs, target, self.sums, self.combine, reduce)

    def sums(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per foreground class: intersection, prediction and target sums; CE sum, count."""
        ce_sum = F.cross_entropy(logits, target[:, 0], ignore_index=self.ignore_index,
                                 reduction="sum")
        probs = torch.softmax(logits, 1)[:, 1:]
        if self.ignore_index >= 0:
            mask = target != self.ignore_index
            classes = torch.where(mask, target, 0)[:, 0]
            count = mask.sum().to(logits.dtype)
        else:
            mask, classes = None, target[:, 0]
            count = logits.new_tensor(float(classes.numel()))
        onehot = F.one_hot(classes, self.num_classes).movedim(-1, 1)[:, 1:].to(probs.dtype)
        if mask is not None:
            m = mask.to(probs.dtype)
            probs, onehot = probs * m, onehot * m
        axes = (0, *range(2, logits.ndim))
        return (probs * onehot).sum(axes), probs.sum(axes), onehot.sum(axes), ce_sum, count

    def combine(self, intersect: torch.Tensor, sum_pred: torch.Tensor, sum_gt: torch.Tensor,
                ce_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """CE (the mean over the counted voxels) + 1 - mean Dice over the foreground."""
        dice = (2 * intersect + self.smooth) / (sum_gt + sum_pred + self.smooth)
        return ce_sum / count.clamp_min(1) + (1 - dice.mean())


def nearest_exact(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="nearest-exact")`` in ``x``'s dtype: output voxel i
    takes input floor((i + 0.5)·n/m). Where every axis shrinks by a whole factor k (the
    usual halvings) that is input k·i + k//2, a strided slice: no float copy of a label."""
    spatial = tuple(x.shape[2:])
    size = tuple(int(m) for m in size)
    if all(m > 0 and n % m == 0 for n, m in zip(spatial, size)):
        index = [slice(None), slice(None)]
        index += [slice((n // m) // 2, None, n // m) for n, m in zip(spatial, size)]
        return x[tuple(index)].contiguous()
    return F.interpolate(x.float(), size=size, mode="nearest-exact").to(x.dtype)


def _downsample(target: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The target of a lower-resolution head, as nnU-Net's DownsampleSegForDSTransform
    makes it: ``nearest-exact`` (output voxel i takes input floor((i + 0.5) * n / m)).

    Plain ``nearest`` takes floor(i * n / m): half a voxel off at every halving, so a
    coarse head was scored against a target shifted towards the origin."""
    return nearest_exact(target, like.shape[2:]).long()


@torch.no_grad()
def confusion_counts(logits: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = -100) -> torch.Tensor:
    """(num_classes - 1, 3) true-positive, false-positive, false-negative voxel counts.

    Summed over validation batches these give nnU-Net's pseudo-Dice per class.
    """
    pred = logits.argmax(1)
    tgt = target[:, 0]
    valid = tgt != ignore_index
    out = torch.zeros(num_classes - 1, 3, dtype=torch.long, device=logits.device)
    for k in range(1, num_classes):
        p, t = (pred == k) & valid, (tgt == k) & valid
        out[k - 1, 0] = (p & t).sum()
        out[k - 1, 1] = (p & ~t).sum()
        out[k - 1, 2] = (~p & t).sum()
    return out


@torch.no_grad()
def downsample_targets(label: torch.Tensor,
                       scales: Sequence[Sequence[float] | float]) -> list[torch.Tensor]:
    """nnU-Net's deep-supervision targets (bgv2 DownsampleSegForDSTransform), batched.

    ``label`` (B, K, *F); one tensor per entry of ``scales`` (full resolution first in
    nnU-Net's lists): the label itself where every factor is 1, else ``nearest-exact`` to
    ``round(n·s)`` per axis (Python's round, half to even, as bgv2), in ``label``'s dtype.
    The training loss takes each head's size instead (:func:`_downsample`, the same
    interpolation; the network's lattice makes the two sizes equal); this list form is
    nnU-Net's, for comparisons with its pipeline (tools/bench_augment.py).
    """
    spatial = tuple(label.shape[2:])
    out: list[torch.Tensor] = []
    for s in scales:
        factors = tuple(s) if isinstance(s, (tuple, list)) else (s,) * len(spatial)
        if len(factors) != len(spatial):
            raise ValueError(f"downsample_targets: scale {s} for {len(spatial)} axes")
        if all(f == 1 for f in factors):
            out.append(label)
            continue
        out.append(nearest_exact(label, [round(n * f) for n, f in zip(spatial, factors)]))
    return out
