"""One rank of a 2-process ``pgps-train`` run that records, as it leaves the process group,
how many DistributedDataParallel wrappers are still alive (test_train_ddp).

A wrapper alive there frees the gloo group later, outside it, and can deadlock the exit
(pgps_train.distributed.joined). ``raise`` makes every rank fail after its second step
(the traceback path); ``finish`` runs to the end.

Usage, in torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...):
``python -m tests.ddp_exit REPORT_DIR raise|finish PGPS_TRAIN_ARGS...``; the count goes to
REPORT_DIR/alive{RANK}.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import torch


class Planted(Exception):
    """The failure ``raise`` plants after a step."""


def _alive() -> int:
    ddp = torch.nn.parallel.DistributedDataParallel
    return sum(1 for o in gc.get_objects() if isinstance(o, ddp))


def main(report_dir: str, mode: str, *train_args: str) -> int:
    from pgps_train import runlog
    from pgps_train.cli.train import main as train_main

    destroy = torch.distributed.destroy_process_group

    def recording_destroy(*args: object, **kwargs: object) -> None:
        (Path(report_dir) / f"alive{os.environ['RANK']}").write_text(str(_alive()))
        destroy(*args, **kwargs)

    torch.distributed.destroy_process_group = recording_destroy
    if mode == "raise":
        step = runlog.RunLog.step

        def failing_step(self: runlog.RunLog, at: int, *args: object, **kwargs: object) -> None:
            step(self, at, *args, **kwargs)
            if at >= 2:
                raise Planted(f"planted after step {at}")

        runlog.RunLog.step = failing_step
    try:
        return train_main(list(train_args))
    except Planted:
        return 3


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
