"""The sums-based loss: equal to MONAI's Dice + cross-entropy, and the global batch's when
its sums are reduced over ranks (simulated here: two halves of one batch, each reduced
with the other's sums, give the whole batch's loss value and, summed, its gradient)."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceLoss
from torch.nn import functional as F

from pgps_data.labels import Labels
from pgps_train.losses import SegLoss, objective_for

S = 1e-5  # float32 throughout, as the trainer computes the loss


def _batch(seed: int, classes: int = 3, ignore: int | None = None):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, classes, 3, 5, 6, generator=g)
    target = torch.randint(0, classes, (4, 1, 3, 5, 6), generator=g)
    if ignore is not None:
        target[torch.rand(target.shape, generator=g) < 0.2] = ignore
    return logits, target


def test_softmax_loss_equals_monai_dice_plus_cross_entropy() -> None:
    logits, target = _batch(0)
    ours = SegLoss(3)(logits, target)
    onehot = F.one_hot(target[:, 0], 3).movedim(-1, 1).to(logits.dtype)
    monai = DiceLoss(include_background=False, softmax=True, batch=True, smooth_nr=S,
                     smooth_dr=S)(logits, onehot) + F.cross_entropy(logits, target[:, 0])
    assert float(ours) == pytest.approx(float(monai), rel=1e-6)


def test_ignored_voxels_leave_both_terms_after_the_softmax() -> None:
    logits, target = _batch(1, ignore=3)
    ours = SegLoss(3, ignore_index=3)(logits, target)
    mask = (target != 3).to(logits.dtype)
    probs = torch.softmax(logits, 1) * mask  # nnU-Net: mask the probabilities
    onehot = F.one_hot(torch.where(target != 3, target, 0)[:, 0], 3).movedim(-1, 1) * mask
    dice = DiceLoss(include_background=False, softmax=False, batch=True, smooth_nr=S,
                    smooth_dr=S)(probs, onehot)
    expected = dice + F.cross_entropy(logits, target[:, 0], ignore_index=3)
    assert float(ours) == pytest.approx(float(expected), rel=1e-6)
    # the ignored voxels' logits do not matter at all
    changed = torch.where(target == 3, logits + 5 * torch.randn_like(logits), logits)
    assert float(SegLoss(3, ignore_index=3)(changed, target)) == pytest.approx(float(ours),
                                                                                rel=1e-6)


def _two_ranks(loss_fn, logits: torch.Tensor, target: torch.Tensor):  # noqa: ANN001, ANN202
    """Rank r holds half r of the batch; its reduce adds the other half's sums (detached,
    as an all-reduce would): returns both ranks' losses and their summed gradient."""
    halves = [logits[:2].clone().requires_grad_(), logits[2:].clone().requires_grad_()]
    targets = [target[:2], target[2:]]
    captured: list[torch.Tensor] = [None, None]

    def capture(r):  # noqa: ANN001, ANN202
        def reduce(flat):  # noqa: ANN001, ANN202
            captured[r] = flat.detach()
            return flat
        return reduce

    for r in (0, 1):  # first pass: each rank's local sums
        loss_fn(halves[r], targets[r], capture(r))
    losses = []
    for r in (0, 1):
        other = captured[1 - r]
        losses.append(loss_fn(halves[r], targets[r], lambda flat, o=other: flat + o))
        losses[-1].backward()
    return losses, torch.cat([halves[0].grad, halves[1].grad])


@pytest.mark.parametrize("kind", ["softmax", "softmax-ignore", "regions"])
def test_reduced_sums_give_the_global_batch_loss_and_gradient(kind: str) -> None:
    if kind == "regions":
        labels = Labels({"background": 0, "whole": [1, 2], "core": [2], "ignore": 3},
                        regions_class_order=[1, 2])
        objective = objective_for(labels)
        logits, target = _batch(2, classes=2)
        target = torch.randint(0, 4, target.shape, generator=torch.Generator().manual_seed(5))
    else:
        ignore = 3 if kind == "softmax-ignore" else None
        objective = SegLoss(3, ignore_index=-100 if ignore is None else ignore)
        logits, target = _batch(3, ignore=ignore)

    def loss_fn(x, t, reduce=None):  # noqa: ANN001, ANN202
        heads = [x, x[:, :, 1::2, 1::2, 1::2]]  # deep supervision: two heads, one collective
        return (objective.loss if kind == "regions" else objective)(heads, t, reduce)

    whole = logits.clone().requires_grad_()
    expected = loss_fn(whole, target)
    expected.backward()
    losses, grad = _two_ranks(loss_fn, logits, target)
    for loss in losses:  # every rank holds the global loss
        assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    torch.testing.assert_close(grad, whole.grad, rtol=1e-4, atol=1e-7)
    # and a rank's own loss is not the global one (the test can fail)
    local = loss_fn(logits[:2], target[:2]).detach()
    assert abs(float(local) - float(expected)) > 1e-4
