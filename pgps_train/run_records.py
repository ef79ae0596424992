"""What a run records for `pgps-compare` beyond its timings: work, memory, delivered classes.

- **Voxels**: the input voxels the network processed in training, batch × patch voxels per
  step from the image tensor it was given (channels not multiplied), per stage.
- **Delivered foreground**: per stage, the fraction of the label voxels of each scored
  class (:meth:`pgps_data.labels.Labels.scored`: a value, or a region's values) among all
  label voxels the stage fed to the loss (after augmentation), the ignore label left out
  of both; the papers' class-balance mechanism, measured rather than planned. The counts
  are a histogram of the label values per step, accumulated on the training device and
  read on the host only when the summary is written, so counting never waits for the
  device. With regions a voxel counts for every region that holds its value, so the
  fractions of nested regions may sum past 1.
- **Peak memory**: on CUDA the largest ``torch.cuda.max_memory_allocated`` of the run's
  stages (the run log resets the peak per stage); on the CPU the process's peak resident
  set (``ru_maxrss``; it covers everything the process did before, too).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from pgps_data.labels import MAX_VALUE, Labels

BINS = MAX_VALUE + 1  # label maps are uint8


def value_counts_into(counts: torch.Tensor, label: torch.Tensor) -> None:
    """Add the histogram of ``label``'s values (0..255) to ``counts`` (BINS,) int64, on
    ``label``'s device, without a host synchronisation.

    On the CPU one ``torch.bincount``. On CUDA bincount sizes its result from
    ``label.max().item()``, a host sync per call; scattering ones into the fixed-size
    histogram instead queues like any other kernel (integer adds: exact in any order).
    """
    flat = label.reshape(-1)
    if flat.device.type == "cpu":
        counts += torch.bincount(flat, minlength=BINS)
    else:
        scatter_counts_into(counts, flat)


def scatter_counts_into(counts: torch.Tensor, flat: torch.Tensor) -> None:
    """The sync-free histogram (CUDA's path; exact and device-agnostic, so tested on CPU)."""
    ones = torch.ones((), dtype=counts.dtype, device=counts.device).expand(flat.numel())
    counts.index_add_(0, flat.to(torch.int32), ones)


class DeliveredCrops:
    """Per stage: the input voxels trained on, the histogram of the label values, and
    what the reads fetched from a remote store ([range requests, bytes])."""

    def __init__(self) -> None:
        self.voxels: dict[int, int] = {}
        self._counts: dict[int, torch.Tensor] = {}
        self.fetched: dict[int, list[int]] = {}

    def add(self, stage: int, image: torch.Tensor, label: torch.Tensor) -> None:
        """One step's (B, C, *patch) image and (B, 1, *patch) label values, as trained on."""
        self.voxels[stage] = self.voxels.get(stage, 0) + image.shape[0] * math.prod(image.shape[2:])
        counts = self._counts.get(stage)
        if counts is None:
            counts = self._counts[stage] = torch.zeros(BINS, dtype=torch.int64,
                                                       device=label.device)
        value_counts_into(counts, label)

    def add_fetched(self, stage: int, requests: int, nbytes: int) -> None:
        """One batch's remote fetches (its ``fetched``: range requests, bytes)."""
        if requests:
            got = self.fetched.setdefault(stage, [0, 0])
            got[0] += int(requests)
            got[1] += int(nbytes)

    def state_dict(self) -> dict[str, dict[int, Any]]:
        """Voxels, histograms and fetches per stage as plain containers, for a checkpoint."""
        return {"voxels": dict(self.voxels),
                "counts": {k: c.tolist() for k, c in self._counts.items()},
                "fetched": {k: list(v) for k, v in self.fetched.items()}}

    def load_state_dict(self, state: dict[str, dict], device: torch.device) -> None:
        """Continue the counts of :meth:`state_dict`, histograms on ``device``."""
        self.voxels = {int(k): int(v) for k, v in state["voxels"].items()}
        self._counts = {int(k): torch.tensor(v, dtype=torch.int64, device=device)
                        for k, v in state["counts"].items()}
        self.fetched = {int(k): [int(n) for n in v]  # absent from older checkpoints
                        for k, v in state.get("fetched", {}).items()}

    def summed(self, stages: int, sum_across: Callable[[torch.Tensor], torch.Tensor],
               device: torch.device | str) -> DeliveredCrops:
        """These counts summed over data-parallel ranks (``sum_across``: an all-reduce of
        one tensor; every rank calls it at the same step), stages 0..``stages``-1."""
        voxels = torch.tensor([self.voxels.get(k, 0) for k in range(stages)],
                              dtype=torch.int64, device=device)
        counts = torch.stack([self._counts[k].to(device) if k in self._counts else
                              torch.zeros(BINS, dtype=torch.int64, device=device)
                              for k in range(stages)])
        fetched = torch.tensor([self.fetched.get(k, [0, 0]) for k in range(stages)],
                               dtype=torch.int64, device=device).reshape(stages, 2)
        total = sum_across(torch.cat([voxels[:, None], fetched, counts], dim=1))
        out = DeliveredCrops()
        for k, row in enumerate(total):
            if int(row[0]) or bool(row[3:].any()):
                out.voxels[k] = int(row[0])
                out._counts[k] = row[3:].clone()
            if int(row[1]):
                out.fetched[k] = [int(row[1]), int(row[2])]
        return out

    def fractions(self, stage: int, labels: Labels) -> dict[str, float | None] | None:
        """Scored class name → its share of the stage's annotated label voxels (host sync)."""
        counts = self._counts.get(stage)
        if counts is None:
            return None
        host = counts.tolist()
        ignored = host[labels.ignore_label] if labels.ignore_label is not None else 0
        annotated = sum(host) - ignored
        return {name: (sum(host[v] for v in values) / annotated if annotated else None)
                for name, values in labels.scored().items()}


def peak_memory(cuda: bool, stage_peaks: Sequence[int]) -> dict[str, Any]:
    """``peak_memory_bytes`` and ``peak_memory_kind`` ("cuda_allocated" or "cpu_max_rss")."""
    if cuda:
        return {"peak_memory_bytes": int(max([*stage_peaks, torch.cuda.max_memory_allocated()])),
                "peak_memory_kind": "cuda_allocated"}
    try:
        import resource  # noqa: PLC0415 - POSIX only
    except ImportError:
        return {"peak_memory_bytes": None, "peak_memory_kind": "cpu_max_rss"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_memory_bytes": int(rss if sys.platform == "darwin" else rss * 1024),
            "peak_memory_kind": "cpu_max_rss"}  # macOS reports bytes, Linux kibibytes


def mean_dice(dice: Sequence[float]) -> float | None:
    """The mean pseudo-Dice over the foreground classes that have one (None if none has)."""
    defined = [d for d in dice if not math.isnan(d)]
    return round(sum(defined) / len(defined), 4) if defined else None
