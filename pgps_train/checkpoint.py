"""Atomic checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint holds everything an exact resume needs: model, optimizer and grad-scaler
state, every random generator's state (stored as tensors, never pickled objects), the
loader's position and the step. It is written to a temporary file and renamed into place,
so a kill at any moment leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "checkpoint_latest.pt"
FINAL = "checkpoint_final.pt"


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch generator states as tensors and plain lists."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], torch.tensor(py[1], dtype=torch.int64), -1 if py[2] is None else py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in internal.tolist()),
                     None if gauss == -1 else gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves the old checkpoint, no debris
        raise


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely: tensors and plain containers only."""
    return torch.load(path, map_location=device, weights_only=True)
