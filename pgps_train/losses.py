"""The training objective: nnU-Net's loss and pseudo-Dice, for label values or regions.

Which one a dataset gets is :class:`pgps_data.labels.Labels`' rule (nnU-Net's
``has_regions``); :func:`objective_for` picks it, and the trainer only calls ``target``,
``loss`` and ``counts``. Both follow nnU-Net v2's ``nnUNetTrainer._build_loss`` and
``validation_step``, deep supervision included: the outputs weigh 1, 1/2, 1/4, ... (the
lowest resolution 0), normalised to sum 1, each against the target downsampled by nearest
neighbour.

- **Softmax** (label values): soft Dice (batch Dice, background excluded, smooth 1e-5) +
  cross-entropy. The store's values become class indices first (background 0, the k-th
  foreground value k); ignore-label voxels are left out of both terms (MONAI's
  MaskedDiceLoss and cross-entropy's ignore_index). The pseudo-Dice compares argmaxes.
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
from monai.losses import DiceLoss, MaskedDiceLoss
from torch import nn
from torch.nn import functional as F

from pgps_data.labels import Labels

Outputs = Sequence[torch.Tensor] | torch.Tensor


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

    def loss(self, outputs: Outputs, target: torch.Tensor) -> torch.Tensor:
        return self.seg_loss(outputs, target)

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

    def loss(self, outputs: Outputs, target: torch.Tensor) -> torch.Tensor:
        return deep_supervised(outputs, target, lambda out, tgt: region_loss(
            out, *self.regions(tgt), self.smooth))

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
    probs = torch.sigmoid(logits)
    axes = (0, *range(2, logits.ndim))
    if mask is None:
        intersect = (probs * regions).sum(axes)
        sum_pred, sum_gt = probs.sum(axes), regions.sum(axes)
        bce = F.binary_cross_entropy_with_logits(logits, regions)
    else:
        m = mask.to(probs.dtype)
        intersect = (probs * regions * m).sum(axes)
        sum_pred, sum_gt = (probs * m).sum(axes), (regions * m).sum(axes)
        bce_map = F.binary_cross_entropy_with_logits(logits, regions, reduction="none")
        bce = (bce_map * m).sum() / m.sum().clamp_min(1e-8)
    dice = (2 * intersect + smooth) / (sum_gt + sum_pred + smooth).clamp_min(1e-8)
    return bce + (1 - dice.mean())


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


def deep_supervised(outputs: Sequence[torch.Tensor] | torch.Tensor, target: torch.Tensor,
                    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """nnU-Net's deep-supervision sum: ``loss(output, target at its size)`` per output
    (float32), weighted by :func:`deep_supervision_weights`, weight-0 outputs skipped."""
    outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    total = outputs[0].new_zeros(())
    for w, out in zip(deep_supervision_weights(len(outputs)), outputs):
        if w == 0:
            continue
        tgt = target if out.shape[2:] == target.shape[2:] else _downsample(target, out)
        total = total + w * loss(out.float(), tgt)
    return total


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
    (the softmax path: MONAI's Dice, batch Dice, background excluded)."""

    def __init__(self, num_classes: int, ignore_index: int = -100, smooth: float = 1e-5):
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        kw = dict(include_background=False, softmax=True, batch=True,
                  smooth_nr=smooth, smooth_dr=smooth)
        self.dice = MaskedDiceLoss(**kw) if ignore_index >= 0 else DiceLoss(**kw)

    def forward(self, outputs: Sequence[torch.Tensor] | torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        """``target`` (B, 1, Z, Y, X) long class indices at the outputs' resolution."""
        return deep_supervised(outputs, target, self._one)

    def _one(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target[:, 0], ignore_index=self.ignore_index)
        if self.ignore_index >= 0:
            mask = (target != self.ignore_index)
            onehot = F.one_hot(torch.where(mask, target, 0)[:, 0], self.num_classes)
            onehot = onehot.permute(0, 4, 1, 2, 3).to(logits.dtype)
            dice = self.dice(logits, onehot, mask=mask.to(logits.dtype))
        else:
            onehot = F.one_hot(target[:, 0], self.num_classes).permute(0, 4, 1, 2, 3)
            dice = self.dice(logits, onehot.to(logits.dtype))
        return ce + dice


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
