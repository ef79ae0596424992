"""The streaming loader: a torchdata.nodes graph feeding curriculum-sized batches.

    CropRequests (steps → per-case requests, ring offsets)
      → ParallelMapper(CropReader, method="process", in_order=True)
      → StageBatcher (one step per batch; never mixes patch sizes)
      → PinMemory (CUDA only) → Prefetcher → torchdata Loader

    from pgps_data import open_store, Curriculum, make_loader
    loader = make_loader(open_store("Task.zarr"), cur, workers=8, seed=0, cases=None)
    for batch in loader: ...     # image, label, step, stage, patch_size, case_ids, forced_fg
    state = loader.state_dict(); loader.load_state_dict(state)

The request stream is a pure function of (seed, step), so the loader's state is just the
next step: resuming replays nothing and reproduces the uninterrupted stream exactly. The
workers are started once and live across stage changes. A watchdog turns a dead worker
(SIGKILL, OOM killer) into an error within about a second instead of torchdata's hang.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torchdata.nodes import BaseNode, Loader, ParallelMapper, PinMemory, Prefetcher

from pgps_data.errors import PGPSInputError
from pgps_data.loader.ring import ALIGN, SharedRing, request_layout
from pgps_data.loader.sampling import CropRequest, Sampler
from pgps_data.loader.watchdog import LoaderWorkerError, WorkerWatchdog, worker_failure_line
from pgps_data.loader.worker import CropReader, arm_parent_watch
from pgps_data.schedule.curriculum import Curriculum
from pgps_data.store.store import Store

STATE_VERSION = 1
BUNDLE_BYTES = 8 << 20  # requests travel to a worker together up to this many bytes of crops
BUNDLE_MAX = 64


def make_loader(
    store: Store,
    curriculum: Curriculum,
    *,
    workers: int = 4,
    seed: int = 0,
    cases: Sequence[str] | None = None,
    rank: int = 0,
    p: float = 0.5,
    oversampling: str = "auto",
    margin: Sequence[int] = (0, 0, 0),
    label_pad: int = 0,
    prefetch: int = 2,
    pin_memory: bool | None = None,
    repeatable: bool = False,
) -> PGPSLoader:
    """A loader of curriculum-sized batches over ``cases`` (None = all training cases).

    ``oversampling``: "auto" (the mode's published rule), "slot", "case_grouping" or
    "probabilistic" (each crop forced with probability ``p``). ``margin`` reads a larger
    box for later spatial augmentation (the batch then carries ``read_size`` too).
    ``pin_memory`` defaults to CUDA availability. ``repeatable`` makes every ``iter()``
    start again at step 0 (validation).
    """
    case_ids = list(store.case_ids if cases is None else cases)
    bad = sorted(set(case_ids) - set(store.case_ids))
    if bad:
        hint = " (test cases are never used for training)" if set(bad) & set(store.test_ids) else ""
        raise PGPSInputError(f"{store.path}: no complete training case(s) {bad[:5]}{hint}")
    sampler = Sampler(case_ids, curriculum, seed=seed, rank=rank, p=p,
                      oversampling=oversampling, margin=margin)
    return PGPSLoader(store, sampler, workers=workers, label_pad=label_pad, prefetch=prefetch,
                      pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                      repeatable=repeatable)


def make_validation_loader(
    store: Store,
    curriculum: Curriculum,
    cases: Sequence[str],
    *,
    batches: int = 10,
    workers: int = 2,
    seed: int = 1,
) -> PGPSLoader:
    """The same ``batches`` batches at the final patch on every pass (pseudo-Dice)."""
    val = Curriculum.from_steps(
        patch=curriculum.final_patch, steps=(1, 1, 1), epochs=1,
        iterations_per_epoch=batches, batch=curriculum.final_batch, mode="constant",
    )
    return make_loader(store, val, workers=workers, seed=seed, cases=cases, repeatable=True)


class PGPSLoader:
    """Iterable over batches; one long-lived worker pool; exact resume by step."""

    def __init__(self, store: Store, sampler: Sampler, *, workers: int, label_pad: int,
                 prefetch: int, pin_memory: bool, repeatable: bool):
        self.store = store
        self.sampler = sampler
        self.curriculum = sampler.curriculum
        self.workers = int(workers)
        self.label_pad = label_pad
        self.prefetch = prefetch
        self.pin_memory = pin_memory
        self.repeatable = repeatable
        self.channels = store.channels
        self._next_step = 0
        self._it: Iterator[dict[str, Any]] | None = None
        self._ring: SharedRing | None = None
        self._watchdog: WorkerWatchdog | None = None
        self._threaded: list[BaseNode] = []

    def __len__(self) -> int:
        return self.curriculum.total_iterations

    def __iter__(self) -> PGPSLoader:
        if self.repeatable:
            self.close()
            self._next_step = 0
        return self

    def __next__(self) -> dict[str, Any]:
        if self._next_step >= self.curriculum.total_iterations:
            self.close()
            raise StopIteration
        if self._it is None:
            self._start()
        try:
            batch = next(self._it)  # type: ignore[arg-type]
        except StopIteration:
            self.close()
            raise
        except BaseException as exc:
            failure = self._watchdog.failure if self._watchdog else None
            self.close()
            if failure:
                raise LoaderWorkerError(failure) from None
            line = worker_failure_line(exc) if isinstance(exc, Exception) else None
            if line is not None:  # a worker's exception: its one line, not torchdata's text
                raise LoaderWorkerError(line) from None
            raise exc
        self._next_step = batch["step"] + 1
        return batch

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands, plus what it belongs to (seed, curriculum, cases)."""
        return {"version": STATE_VERSION, "next_step": self._next_step, **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at ``state``'s step; refused for another seed, curriculum or case list."""
        mine = self._identity()
        for key in ("seed", "rank", "curriculum", "cases", "oversampling"):
            if state.get(key) != mine[key]:
                raise PGPSInputError(
                    f"loader state: its {key} ({str(state.get(key))[:40]}) differs from this "
                    f"loader's ({str(mine[key])[:40]}); a state only resumes the stream it came from"
                )
        self.close()
        self._next_step = int(state["next_step"])

    def _identity(self) -> dict[str, Any]:
        s = self.sampler
        return {
            "seed": s.seed,
            "rank": s.rank,
            "curriculum": self.curriculum.fingerprint(),
            "cases": hashlib.sha256(json.dumps(s.case_ids).encode()).hexdigest()[:16],
            "oversampling": f"{s.oversampling}:{s.p}:{list(s.margin)}",
        }

    # -- the graph ----------------------------------------------------------------------
    def _start(self) -> None:
        # Workers are forked from torchdata's threads while the request thread runs; a
        # module imported lazily at that moment would leave its import lock held in the
        # child forever. Drawing one step here first does every such import up front.
        self.sampler.requests(min(self._next_step, self.curriculum.total_iterations - 1))
        step_bytes = max_step_bytes(self.sampler, self.channels)
        # A bundle is filled in the ring before it is sent, so the ring must always hold
        # one whole bundle (plus the tail wasted when it wraps) besides the steps in flight.
        self._ring = SharedRing(3 * step_bytes + 2 * BUNDLE_BYTES + ALIGN * BUNDLE_MAX)
        requests = CropRequests(self.sampler, self._ring, self.channels, self._next_step)
        reader = CropReader(str(self.store.path), self._ring.name, self.label_pad)
        arm_parent_watch()  # workers are forked by torchdata's threads from here on
        mapper = ParallelMapper(requests, reader, num_workers=self.workers, in_order=True,
                                method="process", multiprocessing_context="fork")
        self._watchdog = WorkerWatchdog(mapper)
        node: BaseNode = StageBatcher(mapper, self._ring, self.channels, self._watchdog)
        self._threaded = []
        if self.pin_memory:
            node = PinMemory(node)
            self._threaded.append(node)
        node = Prefetcher(node, prefetch_factor=self.prefetch)
        self._threaded.insert(0, node)
        self._it = iter(Loader(node))
        self._watchdog.start()

    def close(self) -> None:
        """Stop the threads and workers, then free the ring (also at the end of the stream).

        The order matters: the prefetch thread may be copying out of the ring, so it is
        stopped (and joined) before the ring's memory is unmapped.
        """
        if self._watchdog is not None:
            self._watchdog.halt()
        for node in self._threaded:  # Prefetcher / PinMemory threads, outermost first
            inner = getattr(node, "_it", None)
            if inner is not None and hasattr(inner, "_shutdown"):
                inner._shutdown()
        self._threaded = []
        if self._watchdog is not None:
            self._watchdog.stop_workers()
            self._watchdog = None
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self._it = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


class CropRequests(BaseNode[list]):
    """Source node: bundles of requests, step after step, each with its region of the ring.

    Small requests (the early stages' small crops) are bundled up to ``BUNDLE_BYTES`` of
    crops, so a worker's round trip through torchdata's queues (~0.1 ms) is paid once per
    bundle instead of once per case and step.
    """

    def __init__(self, sampler: Sampler, ring: SharedRing | None, channels: int, start: int):
        super().__init__()
        self.sampler = sampler
        self.ring = ring
        self.channels = channels
        self.start = start
        self._step = start
        self._pending: list[CropRequest] = []

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._step = self.start if initial_state is None else int(initial_state["step"])
        self._pending = []

    def next(self) -> list[CropRequest]:
        bundle: list[CropRequest] = []
        size = 0
        while len(bundle) < BUNDLE_MAX:
            if not self._pending:
                if self._step >= self.sampler.curriculum.total_iterations:
                    break
                self._pending = self.sampler.requests(self._step)
                self._step += 1
            img, lab = request_layout(len(self._pending[0].slots), self.channels,
                                      self._pending[0].read_shape)
            if bundle and size + img + lab > BUNDLE_BYTES:
                break
            req = self._pending.pop(0)
            if self.ring is not None:
                req = replace(req, ring_offset=self.ring.allocate(img + lab))
            bundle.append(req)
            size += img + lab
        if not bundle:
            raise StopIteration
        return bundle

    def get_state(self) -> dict[str, Any]:
        return {"step": self._step - (1 if self._pending else 0)}


class StageBatcher(BaseNode[dict]):
    """Collates the requests of one step into one batch that owns its memory."""

    def __init__(self, source: BaseNode, ring: SharedRing | None, channels: int,
                 watchdog: WorkerWatchdog | None = None):
        super().__init__()
        self.source = source
        self.ring = ring
        self.channels = channels
        self.watchdog = watchdog
        self._buffer: deque[dict[str, Any]] = deque()

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._buffer.clear()
        self.source.reset(None if initial_state is None else initial_state.get("source"))

    def next(self) -> dict[str, Any]:
        first = self._pull()
        parts = [first]
        while len(parts) < first["request"].parts:
            parts.append(self._pull())
        return self._collate(parts)

    def _pull(self) -> dict[str, Any]:
        """The next request's result, unpacking the workers' bundles in order."""
        if not self._buffer:
            try:
                self._buffer.extend(self.source.next())
            except StopIteration:
                if self.watchdog is not None and self.watchdog.failure:
                    raise LoaderWorkerError(self.watchdog.failure) from None
                raise
        return self._buffer.popleft()

    def _collate(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        req0: CropRequest = parts[0]["request"]
        b, shape, c = req0.batch, req0.read_shape, parts[0]["channels"]
        image = np.empty((b, c, *shape), np.float32)
        label = np.empty((b, 1, *shape), np.uint8)
        case_ids: list[str] = [""] * b
        forced = np.zeros(b, bool)
        picked = np.full(b, -1, np.int64)
        origins = np.zeros((b, 3), np.int64)
        for part in parts:
            req: CropRequest = part["request"]
            n = len(req.slots)
            if "image" in part:
                src_img, src_lab = part["image"], part["label"]
            else:
                img_bytes, _ = request_layout(n, c, shape)
                src_img = self.ring.view(req.ring_offset, np.dtype(np.float32), (n, c, *shape))
                src_lab = self.ring.view(req.ring_offset + img_bytes, np.dtype(np.uint8),
                                         (n, *shape))
            slots = list(req.slots)
            if slots == list(range(slots[0], slots[0] + n)):
                image[slots[0]:slots[0] + n] = src_img
                label[slots[0]:slots[0] + n, 0] = src_lab
            else:
                image[slots] = src_img
                label[slots, 0] = src_lab
            if req.ring_offset >= 0 and self.ring is not None:
                self.ring.release(req.ring_offset)
            for j, slot in enumerate(slots):
                case_ids[slot] = req.case_id
                forced[slot] = req.forced[j]
                picked[slot] = part["picked"][j]
                origins[slot] = part["origins"][j]
        batch = {
            "image": torch.from_numpy(image),
            "label": torch.from_numpy(label),
            "step": req0.step,
            "stage": req0.stage,
            "patch_size": tuple(req0.patch),
            "case_ids": case_ids,
            "forced_fg": torch.from_numpy(forced),
            "forced_class": torch.from_numpy(picked),
            "origins": torch.from_numpy(origins),
        }
        if any(req0.margin):
            batch["read_size"] = tuple(shape)
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"source": self.source.state_dict()}


def max_step_bytes(sampler: Sampler, channels: int) -> int:
    """The largest step payload of the schedule (sizes the ring)."""
    cur = sampler.curriculum
    sizes = [(s.batch, s.patch) for s in cur.stages]
    sizes += [(cur.final_batch, p) for p in getattr(cur, "patch_sizes", [])]
    best = 0
    for b, patch in sizes:
        shape = tuple(int(p) + 2 * m for p, m in zip(patch, sampler.margin))
        img, lab = request_layout(int(b), channels, shape)
        best = max(best, img + lab)
    return best


__all__ = ["make_loader", "make_validation_loader", "PGPSLoader", "LoaderWorkerError",
           "CropRequests", "StageBatcher"]
