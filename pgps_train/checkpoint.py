"""Atomic, self-verifying checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint holds everything an exact resume needs: model, optimizer and grad-scaler
state, every random generator's state (stored as tensors, never pickled objects), the
loader's position and the step. It is written to a temporary file and renamed into place,
so a kill at any moment leaves either the old or the new checkpoint, never half of one.

Every checkpoint also carries ``"sha256"``: a digest of its own content (every key, every
tensor's dtype, shape and bytes, every scalar), computed before the write and stored in the
same file, so the digest is exactly as atomic as the checkpoint. :func:`load_checkpoint`
recomputes it: a file damaged on disk or in a copy (flipped bytes that still unpickle into
different weights) is refused in one line instead of predicting other labels. The file
still loads with a plain ``torch.load(path, weights_only=True)``; the digest is one more
string key. A checkpoint without the key (written before pgps recorded it) loads with a
one-line warning: it cannot be verified, but refusing it would strand older runs.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgps_data.errors import PGPSInputError

LATEST = "checkpoint_latest.pt"
FINAL = "checkpoint_final.pt"
DIGEST_KEY = "sha256"


class CheckpointWriteError(PGPSInputError):
    """A checkpoint could not be written (disk full, quota, permissions); the old one is kept."""


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint without a recorded sha256 (written by an older pgps) was loaded."""


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
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# -- the digest ------------------------------------------------------------------------------
def payload_digest(payload: Any) -> str:
    """sha256 (hex) of a checkpoint's canonical content, the ``"sha256"`` key left out.

    Dicts are walked in a fixed key order, lists and tuples in order; each value is hashed
    with a type tag, so ``1``, ``1.0``, ``"1"`` and ``[1]`` all differ. Tensors contribute
    dtype, shape and their raw bytes (bfloat16 too), floats their exact ``float.hex()``.
    The same content gives the same digest on any device and after a save/load round trip.
    """
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != DIGEST_KEY}
          if isinstance(payload, dict) else payload)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:  # noqa: C901 - one branch per type, read top to bottom
    def tag(kind: bytes, data: bytes = b"") -> None:
        h.update(kind + struct.pack("<Q", len(data)) + data)

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        tag(b"T", f"{t.dtype}:{tuple(t.shape)}".encode())
        flat = t.reshape(-1)
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy() if t.dtype != torch.bool
                     else flat.to(torch.uint8).numpy())
    elif isinstance(obj, dict):
        tag(b"D", str(len(obj)).encode())
        # keys may mix types (optimizer state uses ints): order by type, then by value
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, list | tuple):
        tag(b"L" if isinstance(obj, list) else b"U", str(len(obj)).encode())
        for item in obj:
            _feed(h, item)
    elif obj is None:
        tag(b"N")
    elif isinstance(obj, bool):
        tag(b"B", b"1" if obj else b"0")
    elif isinstance(obj, int):
        tag(b"I", str(obj).encode())
    elif isinstance(obj, float):
        tag(b"F", obj.hex().encode())
    elif isinstance(obj, str):
        tag(b"S", obj.encode("utf-8", "surrogatepass"))
    elif isinstance(obj, bytes | bytearray):
        tag(b"Y", bytes(obj))
    elif isinstance(obj, torch.dtype | torch.device | torch.Size):
        tag(b"O", f"{type(obj).__name__}:{obj}".encode())
    else:
        raise TypeError(f"checkpoint payload holds a {type(obj).__name__}; only tensors, "
                        "containers and scalars load with weights_only=True")


# -- write and read --------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` plus its sha256 atomically (temporary file, fsync, rename).

    A failure to write (disk full, quota, read-only or vanished folder) leaves the previous
    checkpoint untouched and no temporary file, and raises :class:`CheckpointWriteError`
    (one line naming the file); an interrupt during the write does the same cleanup and
    propagates.
    """
    path = Path(path)
    record = {**payload, DIGEST_KEY: payload_digest(payload)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # a failed write leaves the old checkpoint, no debris
        cause = _os_error(exc)
        if cause is not None:
            kept = " (the previous checkpoint is intact)" if path.exists() else ""
            raise CheckpointWriteError(
                f"{path}: cannot write the checkpoint: {cause.strerror or cause}{kept}; free "
                "space or fix the folder's permissions, then continue with --resume") from exc
        raise


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind a failed write: ``exc`` itself, or one it was raised while
    handling (on a full disk torch's zip writer raises a RuntimeError from its __exit__
    while the write's OSError is being handled)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", *,
                    log: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Load and verify a checkpoint: tensors and plain containers only, sha256 checked.

    A missing, unreadable or damaged file (torch.load fails, or the content differs from
    its recorded sha256) raises one :class:`PGPSInputError` line naming the file. A
    checkpoint without a recorded sha256 loads unverified; the one-line warning goes to
    ``log`` when given, else to :func:`warnings.warn` (UnverifiedCheckpointWarning).
    Loaded on the CPU (where the digest is computed), then moved to ``device``.
    """
    path = Path(path)
    if not path.is_file():
        raise PGPSInputError(f"{path}: no checkpoint there (train with pgps-train first)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip damaged, unpickling refused, truncated, unreadable
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise PGPSInputError(
            f"{path}: damaged or not a pgps checkpoint, torch.load failed "
            f"({type(exc).__name__}: {first}); restore the file from a copy or train again"
        ) from None
    if not isinstance(ckpt, dict):
        raise PGPSInputError(f"{path}: not a pgps checkpoint (holds a {type(ckpt).__name__}, "
                             "not a dict)")
    recorded = ckpt.get(DIGEST_KEY)
    if recorded is None:
        msg = (f"{path}: no sha256 recorded (written by an older pgps); loaded without "
               "verification")
        if log is not None:
            log(msg)
        else:
            warnings.warn(msg, UnverifiedCheckpointWarning, stacklevel=2)
    else:
        try:
            actual = payload_digest(ckpt)
        except TypeError as exc:
            raise PGPSInputError(f"{path}: not a pgps checkpoint ({exc})") from None
        if actual != recorded:
            raise PGPSInputError(
                f"{path}: checkpoint is damaged: its content does not match the sha256 "
                f"recorded when it was written ({str(recorded)[:12]}… ≠ {actual[:12]}…); "
                "restore the file from a copy or train again")
    return _to_device(ckpt, torch.device(device))


def _to_device(obj: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj
