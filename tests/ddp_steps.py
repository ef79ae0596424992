"""A few optimisation steps of the trainer's recipe, in one process or as one rank of a
gloo job (the DDP tests run it as a script): ``python -m tests.ddp_steps RANK WORLD PORT OUT``
(WORLD 1: one process, no process group). Every rank trains on its share of the same global
batches; rank 0 saves the weights and the losses to OUT."""

from __future__ import annotations

import os
import sys
from functools import partial

import torch

from pgps_data.loader.sampling import share
from pgps_train.distributed import Ranks, globalise, joined
from pgps_train.losses import SegLoss
from pgps_train.networks import build_network

STEPS, BATCH, PATCH = 3, 4, (8, 16, 16)


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The global batches: images, and labels of 3 classes with a blob per crop."""
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(STEPS):
        x = torch.randn(BATCH, 1, *PATCH, generator=g)
        y = (x > 0.8).long() + (x > 1.6).long()
        out.append((x, y))
    return out


def main(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    ranks = Ranks(rank, world, rank, timeout_s=30)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with joined(ranks, "cpu"):  # as the trainer: the DDP wrapper dies inside the block
        net, losses = _steps(ranks)
    if rank == 0:
        torch.save({"model": net.state_dict(), "losses": losses}, out)


def _steps(ranks: Ranks) -> tuple[torch.nn.Module, list[float]]:
    torch.manual_seed(0)
    net = build_network("unet", in_channels=1, num_classes=3, patch=PATCH, base_filters=8,
                        max_filters=32)
    world = ranks.world
    model = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True,
                          weight_decay=3e-5)
    objective = SegLoss(3)
    reduce = partial(globalise, ranks) if world > 1 else None
    losses = []
    for x, y in batches():
        rows = share(BATCH, ranks.rank, world)
        loss = objective(model(x[rows.start:rows.stop]), y[rows.start:rows.stop], reduce)
        opt.zero_grad(set_to_none=True)
        (loss * world).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
        opt.step()
        losses.append(float(loss.detach()))
    return net, losses


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
