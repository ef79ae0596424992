"""The training loss: nnU-Net's Dice + cross-entropy with deep supervision and ignore label.

nnU-Net trains with soft Dice (batch Dice, background excluded) + cross-entropy, weighting
the deep-supervision outputs 1, 1/2, 1/4, ... (the lowest resolution weighted 0) and
normalising the weights. The store's label values are mapped to class indices first
(background 0, the k-th foreground value k); voxels of the ignore label are left out of
both terms (MONAI's MaskedDiceLoss and cross-entropy's ignore_index).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiceLoss, MaskedDiceLoss
from torch import nn
from torch.nn import functional as F


class LabelMap(nn.Module):
    """Store label values (uint8) → class indices; the ignore value → ``ignore_index``."""

    def __init__(self, label_values: Sequence[int], ignore_label: int | None = None):
        super().__init__()
        self.num_classes = len(label_values) + 1
        self.ignore_index = self.num_classes if ignore_label is not None else -100
        lut = torch.zeros(256, dtype=torch.long)
        for k, v in enumerate(label_values, start=1):
            lut[int(v)] = k
        if ignore_label is not None:
            lut[int(ignore_label)] = self.ignore_index
        self.register_buffer("lut", lut, persistent=False)

    def forward(self, label: torch.Tensor) -> torch.Tensor:
        return self.lut[label.long()]


def deep_supervision_weights(n: int) -> list[float]:
    """nnU-Net's weights: 1/2**i, the lowest resolution 0, normalised to sum 1."""
    if n == 1:
        return [1.0]
    w = [1 / 2**i for i in range(n)]
    w[-1] = 0.0
    total = sum(w)
    return [x / total for x in w]


class SegLoss(nn.Module):
    """Dice + CE over a list of outputs (deep supervision), targets as class indices."""

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
        outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        total = outputs[0].new_zeros(())
        for w, out in zip(deep_supervision_weights(len(outputs)), outputs):
            if w == 0:
                continue
            tgt = target if out.shape[2:] == target.shape[2:] else _downsample(target, out)
            total = total + w * self._one(out.float(), tgt)
        return total

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


def _downsample(target: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour target for a lower-resolution head (as nnU-Net downsamples)."""
    return F.interpolate(target.float(), size=like.shape[2:], mode="nearest").long()


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
