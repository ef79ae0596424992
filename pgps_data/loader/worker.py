"""What a loader worker process does: turn a crop request into crops in the shared ring.

The map function :class:`CropReader` is created in the main process and runs in each
worker. On its first call in a process it opens the store (lazily: volumes never cross
process boundaries, only crops do), attaches to the shared ring and starts a thread that
ends the worker when its parent dies, so no worker outlives a killed main process.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from pgps_data.loader.ring import RingView, request_layout
from pgps_data.loader.sampling import CropRequest, forced_classes, plan_origins
from pgps_data.store.store import CASE_CACHE


class CropReader:
    """The ParallelMapper map function: ``[request, ...] -> [small result dict, ...]``.

    Crops go into the ring at ``request.ring_offset`` (images float32 (n, C, *shape), then
    labels uint8 (n, *shape)); only the origins and picked classes travel back through the
    queue. With ``ring_offset == -1`` the arrays are returned in the dict instead.
    """

    def __init__(self, store_path: str, ring_name: str | None, label_pad: int = 0):
        self.store_path = str(store_path)
        self.ring_name = ring_name
        self.label_pad = int(label_pad)
        self._pid: int | None = None
        self._owner_pid = os.getpid()  # the main process that built the pipeline

    def __call__(self, bundle: list[CropRequest]) -> list[dict[str, Any]]:
        if self._pid != os.getpid():
            self._start()
        return [self._guarded(request) for request in bundle]

    def _guarded(self, request: CropRequest) -> dict[str, Any]:
        try:
            return self._read(request)
        except Exception as exc:
            # One line (torchdata carries it to the main process inside a traceback text;
            # the loader takes this last line back out, see pipeline.worker_failure).
            reason = " ".join(str(exc).split())
            raise RuntimeError(
                f"loader worker (pid {os.getpid()}) failed on case {request.case_id!r}, "
                f"step {request.step}, patch {list(request.patch)}, slots {list(request.slots)}"
                f": {type(exc).__name__}: {reason}"
            ) from exc

    def _start(self) -> None:
        from pgps_data.store.store import open_store

        self._pid = os.getpid()
        self._store = open_store(self.store_path)
        self._ring = RingView(self.ring_name) if self.ring_name else None
        self._cases: OrderedDict[str, tuple[Any, dict, np.ndarray | None]] = OrderedDict()
        if self._pid != self._owner_pid:
            _watch_parent()

    def _case(self, case_id: str) -> tuple[Any, dict, np.ndarray | None]:
        entry = self._cases.get(case_id)
        if entry is not None:
            self._cases.move_to_end(case_id)
        else:
            case = self._store[case_id]
            labels = self._store.labels
            values = self._store.label_values
            locations = {}
            for cls in forced_classes(labels, values):
                parts = [case.foreground(v) for v in cls]
                locations[cls] = parts[0] if len(parts) == 1 else np.concatenate(parts)
            annotated = case.annotated() if self._store.ignore_label is not None else None
            entry = (case, locations, annotated)
            self._cases[case_id] = entry
            if len(self._cases) > CASE_CACHE:  # bounded, so memory stays flat on big stores
                self._cases.popitem(last=False)
        return entry

    def _read(self, request: CropRequest) -> dict[str, Any]:
        case, locations, annotated = self._case(request.case_id)
        origins, picked = plan_origins(request, case.shape, locations, annotated)
        shape = request.read_shape
        starts = [tuple(o - m for o, m in zip(org, request.margin)) for org in origins]
        n = len(starts)
        out_image = out_label = None
        if self._ring is not None and request.ring_offset >= 0:
            img_bytes, _ = request_layout(n, case.channels, shape)
            out_image = self._ring.view(
                request.ring_offset, np.dtype(np.float32), (n, case.channels, *shape)
            )
            out_label = self._ring.view(
                request.ring_offset + img_bytes, np.dtype(np.uint8), (n, *shape)
            )
        image, label = case.read_many(
            starts, shape, out_image=out_image, out_label=out_label, label_pad=self.label_pad
        )
        result: dict[str, Any] = {
            "request": request,
            "origins": origins,
            "picked": picked,
            "channels": case.channels,
        }
        if out_image is None:
            result["image"], result["label"] = image, label
        return result


_ARMED = False  # set while a loader starts its workers; forked children inherit it
_WATCHING = False


def arm_parent_watch(armed: bool = True) -> None:
    """Children forked from now on (the loader's workers) watch their parent from birth.

    A worker that never received a request would otherwise have no watcher, and torchdata's
    workers keep waiting on their queue forever when the main process is SIGKILLed.
    """
    global _ARMED
    _ARMED = armed


def _after_fork_in_child() -> None:
    global _WATCHING
    _WATCHING = False
    if _ARMED:
        _watch_parent()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _watch_parent(interval: float = 0.25) -> None:
    """End this worker as soon as its parent process is gone (e.g. killed with -9)."""
    global _WATCHING
    if _WATCHING:
        return
    _WATCHING = True
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="pgps-parent-watch", daemon=True).start()
