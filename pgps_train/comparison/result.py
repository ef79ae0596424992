"""The result of a `pgps-compare` run: the contract every report piece reads, and its helpers.

`pgps-compare run` assembles one JSON-ready dict (runs plus statistics.py's outputs);
:func:`check_result` names the first key it lacks in one line, and the accessors read it
the same way everywhere (modes in the papers' order, a mode's runs by seed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path

from pgps_data.errors import PGPSInputError

REQUIRED = ("title", "store", "preset", "net", "budget", "device", "machine", "command",
            "classes", "lesion_classes", "runs", "statistics")
RUN_REQUIRED = ("mode", "seed", "dir", "seconds_train", "seconds_compute", "seconds_augment",
                "seconds_wait", "iterations", "voxels", "peak_memory_bytes", "dice",
                "lesion_f1", "nsd", "curve", "schedule", "foreground")
STATISTICS_REQUIRED = ("mode_table", "paired_tests", "seed_spread", "reach_times")
MODE_ORDER = ("constant", "efficiency", "performance", "random")
_HINT = "pgps-compare run writes every key of the result contract"


def check_result(result: object) -> None:
    """Raise a one-line PGPSInputError naming the first required key the result lacks."""
    _require(result, REQUIRED, "result")
    _require(result["statistics"], STATISTICS_REQUIRED, "result: statistics")
    if not isinstance(result["runs"], list) or not result["runs"]:
        raise PGPSInputError(f"result: 'runs' must be a non-empty list of run dicts ({_HINT})")
    for i, run in enumerate(result["runs"]):
        _require(run, RUN_REQUIRED, f"result: runs[{i}]")
    extra = [c for c in result["lesion_classes"] if c not in result["classes"]]
    if extra:
        raise PGPSInputError(f"result: lesion_classes {extra} are not among classes "
                             f"{list(result['classes'])} (every lesion class is a class)")


def _require(value: object, keys: Sequence[str], where: str) -> None:
    if not isinstance(value, Mapping):
        raise PGPSInputError(f"{where}: must be a dict, got {type(value).__name__} ({_HINT})")
    missing = next((k for k in keys if k not in value), None)
    if missing is not None:
        raise PGPSInputError(f"{where}: missing required key {missing!r} ({_HINT})")


def result_modes(result: Mapping) -> list[str]:
    present = set(run["mode"] for run in result["runs"])
    return [m for m in MODE_ORDER if m in present] + sorted(present - set(MODE_ORDER))


def mode_runs(result: Mapping, mode: str) -> list[Mapping]:
    return sorted((r for r in result["runs"] if r["mode"] == mode), key=lambda r: r["seed"])


def mean_of(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def dice_cell(result: Mapping, mode: str, cls: str) -> dict:
    """statistics.mode_table's cell (mean, std, per_seed); empty when the mode is absent."""
    return (result["statistics"]["mode_table"].get(mode) or {}).get(cls) or {}


def write_atomic(path: Path, data: bytes) -> Path:
    """``data`` to a temp file beside ``path``, renamed over it: all or nothing, one error line."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise PGPSInputError(f"{path}: cannot write the report: {exc.strerror or exc} (free "
                             f"space or choose another output folder)") from None
    finally:
        with suppress(OSError):  # an interrupted write leaves the old file and no debris
            tmp.unlink()
    return path
