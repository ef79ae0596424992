"""Data-parallel training across processes: torchrun's environment, the process group and
the few collectives the trainer needs.

`torchrun --nproc-per-node N -m pgps_train.cli.train STORE ...` (or ``pgps-train`` under
torchrun) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`ranks_from_env` reads them and :func:`start` joins the group
(NCCL on CUDA, gloo on the CPU) with a bounded timeout (60 s unless ``--dist-timeout``):
a rank that dies or hangs ends the others' next collective with :class:`RankFailure`,
one line, instead of NCCL's 30-minute default wait.

The loss is the global batch's (pgps_train.losses): each rank computes its local sums
(Dice's tp / prediction / target sums, cross-entropy's sum and voxel count) and
:func:`globalise` replaces their values by the sums over all ranks while keeping the local
term's gradient, so every rank holds the same global loss and the gradients summed over
ranks are the gradient of that loss. DistributedDataParallel averages gradients, so the
trainer backpropagates ``world × loss``: the averaged gradient is then exactly the
single-process gradient of the same global batch (up to summation order).
"""

from __future__ import annotations

import gc
import os
import re
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from pgps_data.errors import PGPSInputError

if TYPE_CHECKING:  # torch is imported where it is used: the CLI's --help stays fast
    import torch

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 60.0

# What a collective raises when a peer is gone or silent (gloo: "Connection reset by peer",
# "Timed out waiting ...ms"; NCCL: "NCCL error", watchdog timeouts): plain RuntimeErrors,
# told apart from the trainer's own failures by their text.
_PEER_TROUBLE = re.compile(r"gloo|nccl|connection|timed out|timeout|peer|socket|"
                           r"process ?group|broken pipe", re.IGNORECASE)


class RankFailure(RuntimeError):
    """Another rank of the job died, hung, or stopped with an error: one line."""


class FollowerStop(Exception):  # noqa: N818 - not an error of this rank
    """Rank 0 refused the run (its line says why); a follower ends with the same status."""

    def __init__(self, status: int = 2):
        super().__init__("rank 0 refused the run")
        self.status = status


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: rank, world size, rank on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run folder and prints."""
        return self.rank == 0


SINGLE = Ranks()


def ranks_from_env(timeout_s: float = DEFAULT_TIMEOUT_S,
                   env: dict[str, str] | None = None) -> Ranks:
    """The ranks torchrun's environment names (a single process without it)."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return Ranks(timeout_s=timeout_s)
    try:
        world, rank = int(env["WORLD_SIZE"]), int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise PGPSInputError("torchrun environment: WORLD_SIZE, RANK and LOCAL_RANK must be "
                             f"integers (got {env.get('WORLD_SIZE')!r}, {env.get('RANK')!r}, "
                             f"{env.get('LOCAL_RANK')!r})") from None
    if not (world >= 1 and 0 <= rank < world and local >= 0):
        raise PGPSInputError(f"torchrun environment: RANK {rank} outside WORLD_SIZE {world}")
    if world > 1 and not env.get("MASTER_ADDR"):
        raise PGPSInputError("torchrun environment: WORLD_SIZE > 1 without MASTER_ADDR "
                             "(start with torchrun, which sets it)")
    if timeout_s <= 0:
        raise PGPSInputError(f"--dist-timeout {timeout_s:g}: must be positive seconds")
    return Ranks(rank, world, local, timeout_s)


def device_for(name: str, ranks: Ranks) -> str:
    """The device of this rank: ``cuda`` under torchrun means ``cuda:LOCAL_RANK``."""
    return f"cuda:{ranks.local_rank}" if ranks.distributed and name == "cuda" else name


def start(ranks: Ranks, device: str) -> None:
    """Join the process group (no-op for one process); a missing peer is one line."""
    import torch  # noqa: PLC0415

    if not ranks.distributed:
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    try:
        torch.distributed.init_process_group(
            backend, init_method="env://", rank=ranks.rank, world_size=ranks.world,
            timeout=timedelta(seconds=ranks.timeout_s))
    except (RuntimeError, ValueError) as exc:
        raise RankFailure(f"rank {ranks.rank} of {ranks.world}: could not join the job at "
                          f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} "
                          f"within {ranks.timeout_s:g} s ({_first_line(exc)})") from None


def stop(ranks: Ranks) -> None:
    """Leave the process group (after a failure too: it keeps exit from aborting).

    Unreachable DistributedDataParallel wrappers are collected first (they sit in
    reference cycles), while the group is still registered: see :func:`joined`.
    """
    import torch  # noqa: PLC0415

    if ranks.distributed and torch.distributed.is_initialized():
        gc.collect()
        torch.distributed.destroy_process_group()


@contextmanager
def joined(ranks: Ranks, device: str) -> Iterator[None]:
    """The process group for the block (no-op for one process), left safely after it.

    Why not just start/stop: a DDP wrapper's reducer holds the process group. If the
    reducer outlives :func:`stop`, it drops the group's last reference when it is freed,
    and gloo's destructor then joins its worker threads *holding the GIL*; a worker still
    finishing a backward-pass all-reduce needs the GIL to free the Python context torch
    stashed with that work, so both wait forever (torch 2.13; seen in CI as a rank that
    finished its steps and never exited). So the wrapper must die while the group is
    registered: the block's frames are cleared when it raises (a traceback would keep
    them, and the wrapper, alive past stop), and stop collects the wrapper's cycles.
    Code that builds the wrapper inside the block should keep it in a function that has
    returned (or ``del`` it) before the block ends.
    """
    start(ranks, device)
    try:
        yield
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        stop(ranks)


def is_peer_trouble(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective's failure (a peer gone or silent), not ours."""
    return isinstance(exc, RuntimeError) and not isinstance(exc, RankFailure) and bool(
        _PEER_TROUBLE.search(str(exc)))


@contextmanager
def collectives(ranks: Ranks, what: str) -> Iterator[None]:
    """Turn a failed collective inside the block into one :class:`RankFailure` line."""
    try:
        yield
    except RuntimeError as exc:
        if not ranks.distributed or not is_peer_trouble(exc):
            raise
        raise RankFailure(
            f"rank {ranks.rank} of {ranks.world}: another rank died or did not answer within "
            f"{ranks.timeout_s:g} s ({what}: {_first_line(exc)})") from None


def sum_across(ranks: Ranks, t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks (a new tensor, no gradient); ``t`` itself for one."""
    import torch  # noqa: PLC0415

    if not ranks.distributed:
        return t
    out = t.detach().clone()
    with collectives(ranks, "summing the loss terms"):
        torch.distributed.all_reduce(out)
    return out


def globalise(ranks: Ranks, local: torch.Tensor) -> torch.Tensor:
    """``local``'s sum over the ranks as its value, ``local``'s gradient as its gradient."""
    if not ranks.distributed:
        return local
    detached = local.detach()
    return local + (sum_across(ranks, detached) - detached)


def any_rank(ranks: Ranks, *flags: bool, device: torch.device | str = "cpu") -> list[bool]:
    """Each flag OR-ed over the ranks, so all stop on the same step (SIGTERM, max_seconds)."""
    import torch  # noqa: PLC0415

    if not ranks.distributed:
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=device)
    with collectives(ranks, "agreeing on a stop"):
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def from_main(ranks: Ranks, work: Callable[[], T], *, device: torch.device | str = "cpu") -> T:
    """``work()`` run on rank 0 only, its result (or its refusal) sent to every rank.

    Rank 0 raises what ``work`` raised; the others raise :class:`FollowerStop` (rank 0
    prints the line), so a refused run is one line, not one per rank.
    """
    import torch  # noqa: PLC0415

    if not ranks.distributed:
        return work()
    box: list[Any] = [None]
    error: BaseException | None = None
    if ranks.main:
        try:
            box[0] = ("ok", work())
        except BaseException as exc:  # noqa: BLE001 - sent on, then raised again below
            error = exc
            box[0] = ("refused", 2 if isinstance(exc, PGPSInputError) else 1)
    with collectives(ranks, "waiting for rank 0"):
        torch.distributed.broadcast_object_list(box, src=0, device=torch.device(device))
    if error is not None:
        raise error
    kind, value = box[0]
    if kind != "ok":
        raise FollowerStop(value)
    return value


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # gloo's "[/path/pair.cc:537] " prefix
    return text[:200]
