"""One step's batch: the node that collates a step's crop requests, and the ring's size.

:class:`StageBatcher` turns the crops of one step (one or two requests per case: the plain
final patches and, with augmentation, the enlarged boxes of the warped samples) into one
batch that owns its memory; :func:`max_step_bytes` is the largest such payload of a
schedule, which sizes the shared-memory ring (pgps_data/loader/workers.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchdata.nodes import BaseNode

from pgps_data.loader.ring import request_layout
from pgps_data.loader.sampling import Sampler, share
from pgps_data.loader.workers import Crops, CropWorkers


class StageBatcher(BaseNode[dict]):
    """Collates the requests of one step into one batch that owns its memory.

    Like :class:`CropWorkers` it is not a resume point (``get_state`` is empty):
    :meth:`PGPSLoader.state_dict` is.
    """

    def __init__(self, source: CropWorkers):
        super().__init__()
        self.source = source

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self.source.reset(initial_state)

    def get_state(self) -> dict[str, Any]:
        return {}

    def next(self) -> dict[str, Any]:
        first = self.source.next()
        parts = [first]
        while len(parts) < first.request.parts:
            parts.append(self.source.next())
        return self._collate(parts)

    def _collate(self, parts: list[Crops]) -> dict[str, Any]:
        req0 = parts[0].request
        b, c, geometry = req0.batch, self.source.channels, req0.geometry
        shape = req0.read_shape if geometry is None else req0.patch
        image = np.empty((b, c, *shape), np.float32)
        label = np.empty((b, 1, *shape), np.uint8)
        case_ids: list[str] = [""] * b
        forced = np.zeros(b, bool)
        picked = np.full(b, -1, np.int64)
        origins = np.zeros((b, 3), np.int64)
        if geometry is not None:
            warp_slots = sorted(s for part in parts if part.request.warped
                                for s in part.request.slots)
            row = {s: k for k, s in enumerate(warp_slots)}
            w = len(warp_slots)
            w_image = np.empty((w, c, *geometry.initial), np.float32)
            w_label = np.empty((w, 1, *geometry.initial), np.uint8)
            angles = np.zeros((w, 3), np.float32)
            scales = np.ones((w, 3), np.float32)
        for part in parts:  # in request order: the order their ring regions are released
            req = part.request
            if req.warped:
                rows = tuple(row[s] for s in req.slots)
                self.source.copy_out(part, w_image, w_label, rows)
                angles[list(rows)] = [d.angles for d in req.spatial]
                scales[list(rows)] = [d.scales for d in req.spatial]
            else:
                self.source.copy_out(part, image, label)
            for j, slot in enumerate(req.slots):
                case_ids[slot] = req.case_id
                forced[slot] = req.forced[j]
                picked[slot] = part.picked[j]
                origins[slot] = part.origins[j]
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
            "slot_offset": req0.offset,  # global slot of row 0 (a data-parallel rank's share)
            # (requests, bytes) the step's reads fetched from a remote store; (0, 0) locally
            "fetched": (sum(p.fetched[0] for p in parts), sum(p.fetched[1] for p in parts)),
        }
        if any(req0.margin):
            batch["read_size"] = tuple(shape)
        if geometry is not None:
            image[warp_slots] = 0  # rows the augmenter fills from warp_image: defined values
            label[warp_slots] = 0
            centre = np.array(geometry.centre)
            batch.update({
                "origins": torch.from_numpy(origins + centre),  # of the final patch, as without
                "box_origins": torch.from_numpy(origins),  # of the initial box
                "warp_slots": torch.tensor(warp_slots, dtype=torch.int64),
                "warp_image": torch.from_numpy(w_image),
                "warp_label": torch.from_numpy(w_label),
                "warp_angles": torch.from_numpy(angles),
                "warp_scales": torch.from_numpy(scales),
                "dummy_2d": geometry.dummy_2d,
                "initial_size": tuple(geometry.initial),
            })
        return batch


def max_step_bytes(sampler: Sampler, channels: int) -> int:
    """The largest step payload of the schedule (sizes the ring).

    With augmentation: a step whose every slot is warped (every crop reads the initial
    box), each crop aligned alone (a case's crops come as up to two requests, each aligned).
    Sizing for that worst case keeps the ring's guarantee (two steps fit, whatever their
    split into requests, so dispatch never waits on itself); it costs |I|/|F| (~4.6 in 3D)
    times the memory of a step without augmentation, ~2.3x of what a typical step uses.
    Data-parallel: a rank's share of each step (its rows), not the global batch.
    """
    cur = sampler.curriculum
    sizes = [(s.batch, s.patch) for s in cur.stages]
    sizes += [(cur.final_batch, p) for p in cur.patch_sizes]
    best = 0
    for b_global, patch in sizes:
        b = len(share(int(b_global), sampler.rank, sampler.world))
        patch = tuple(int(p) for p in patch)
        if sampler.augment is None:
            shape = tuple(p + 2 * m for p, m in zip(patch, sampler.margin))
            best = max(best, sum(request_layout(int(b), channels, shape)))
        else:
            box = sampler.geometry(patch).initial
            best = max(best, int(b) * sum(request_layout(1, channels, box)))
    return best
