"""Validation during training: nnU-Net's pseudo-Dice over fixed validation crops.

The crops come from the loader's validation stream (the same cases and positions every
pass); the per-class tp/fp/fn are summed over all crops before the Dice, as nnU-Net's
``on_validation_epoch_end`` does, so a class absent from one crop does not drag it down.
"""

from __future__ import annotations

import math
import time

import torch

from pgps_train.interrupts import loader_batches
from pgps_train.losses import RegionObjective, SoftmaxObjective
from pgps_train.runlog import Timers


@torch.no_grad()
def validate(net: torch.nn.Module, val_loader,  # noqa: ANN001
             objective: SoftmaxObjective | RegionObjective, device: torch.device,
             amp_dtype: torch.dtype, timers: Timers | None = None) -> list[float]:
    """nnU-Net's pseudo-Dice per foreground class (or region) over the validation crops.

    ``timers`` gets the wait for the first batch (the first pass starts the validation
    workers and reads the crops; later passes replay them)
    as ``validation_startup`` and the rest as ``validation``.
    """
    net.eval()
    counts = None
    t0, first = time.perf_counter(), True
    for batch in loader_batches(val_loader):
        if first and timers is not None:
            t1 = time.perf_counter()
            timers.add("validation_startup", t1 - t0)
            t0, first = t1, False
        x = batch["image"].to(device, non_blocking=True)
        y = objective.target(batch["label"].to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=amp_dtype, enabled=device.type == "cuda"):
            logits = net(x)
        c = objective.counts(logits.float(), y)
        counts = c if counts is None else counts + c
    if timers is not None:
        timers.add("validation", time.perf_counter() - t0)
    if counts is None:
        return []
    tp, fp, fn = counts.double().unbind(1)
    dice = 2 * tp / (2 * tp + fp + fn)
    return [float("nan") if math.isnan(d) else round(float(d), 4) for d in dice.tolist()]
