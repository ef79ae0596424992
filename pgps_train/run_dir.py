"""The run folder (``--out``): what pgps-train may write into, and one writer at a time.

A run folder holds pgps-train's own files (config.json, model.json, checkpoints, logs).
So that a run never replaces what it did not write, and never another run's files by
accident:

- a new or empty folder starts a run;
- a folder that already holds a run is continued with ``--resume`` or started again with
  ``--overwrite`` (its files are replaced, nothing else is deleted); without either it is
  refused;
- a folder that holds anything else (not a run) is refused, even with ``--overwrite``;
- two pgps-train processes never write one folder at once: the run holds the folder's
  exclusive lock (``<out>/.pgps.lock``, the same flock as a conversion's, released by the
  kernel when its holder dies) for the whole run.
"""

from __future__ import annotations

import os
from pathlib import Path

from pgps_data.errors import PGPSInputError
from pgps_data.store_lock import LOCK_NAME, store_lock

__all__ = ["RUN_FILES", "check_run_folder", "run_lock"]

#: Files only a pgps-train run folder holds; any one of them marks a run.
RUN_FILES = ("config.json", "model.json", "checkpoint_latest.pt", "checkpoint_final.pt")


def check_run_folder(out: str | os.PathLike, *, resume: bool, overwrite: bool) -> None:
    """Refuse ``out`` in one line unless this run may write there (see the module)."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise PGPSInputError(f"{out}: exists and is not a folder; choose another --out")
    entries = [name for name in os.listdir(out) if name != LOCK_NAME]
    if not entries:
        return
    if not any((out / name).is_file() for name in RUN_FILES):
        raise PGPSInputError(
            f"{out}: holds files that are not a pgps-train run ({', '.join(sorted(entries)[:3])}"
            f"{' ...' if len(entries) > 3 else ''}); choose a new or empty --out "
            "(nothing was written)"
        )
    if not (resume or overwrite):
        raise PGPSInputError(
            f"{out}: holds a pgps-train run already; add --resume to continue it, "
            "--overwrite to start it again, or choose another --out"
        )


def run_lock(out: str | os.PathLike):  # noqa: ANN201
    """The run folder's exclusive lock for a ``with`` block (one line if it is held)."""
    return store_lock(out, activity="training run")
