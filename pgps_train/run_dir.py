"""The run folder (``--out``): what pgps-train may write into, and one writer at a time.

A run folder holds pgps-train's own files (config.json, model.json, checkpoints, logs).
So that a run never replaces what it did not write, and never another run's files by
accident:

- a new or empty folder starts a run;
- a folder that already holds a run (its config.json is a pgps-train configuration: a
  file merely *named* config.json is not enough) is continued with ``--resume`` or started
  again with ``--overwrite``, which first removes the previous run's own files
  (:data:`RUN_OUTPUTS`: its checkpoints must not be resumed by the new run) and nothing
  else; without either it is refused;
- a folder that holds anything else is refused, even with ``--overwrite``;
- two pgps-train processes never write one folder at once: the run holds the folder's
  exclusive lock (``<out>/.pgps.lock``, the same flock as a conversion's, released by the
  kernel when its holder dies) for the whole run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pgps_data.errors import PGPSInputError
from pgps_data.store.lock import LOCK_NAME, store_lock

__all__ = ["RUN_OUTPUTS", "check_run_folder", "clear_run", "is_run_folder", "run_lock"]

#: What pgps-train writes into a run folder (files, and the folders tensorboard/ validation/).
RUN_OUTPUTS = ("config.json", "model.json", "checkpoint_latest.pt", "checkpoint_final.pt",
               "curriculum.json", "store_identity.json", "summary.json", "log.csv",
               "steps.csv", "tensorboard", "validation")
_RUN_FOLDERS = ("tensorboard", "validation")
# keys every pgps-train config.json has had (TrainConfig's first fields)
_CONFIG_KEYS = ("store", "out", "mode", "net", "rules", "seed")


def is_run_folder(out: str | os.PathLike) -> bool:
    """Whether ``out`` holds a pgps-train run: a config.json that is a run configuration."""
    try:
        doc = json.loads((Path(out) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and all(key in doc for key in _CONFIG_KEYS)


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
    if not is_run_folder(out):
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


def clear_run(out: str | os.PathLike) -> None:
    """Remove the previous run's own outputs from the run folder ``out`` (``--overwrite``).

    Only the names in :data:`RUN_OUTPUTS` are removed, and only from a folder
    :func:`is_run_folder` recognises; anything else in it stays. config.json goes last, so
    a crash midway leaves a folder that is still recognised as a run.
    """
    out = Path(out)
    if not is_run_folder(out):
        return
    for name in [n for n in RUN_OUTPUTS if n != "config.json"] + ["config.json"]:
        path = out / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif name in _RUN_FOLDERS and path.is_dir():
            shutil.rmtree(path)


def run_lock(out: str | os.PathLike):  # noqa: ANN201
    """The run folder's exclusive lock for a ``with`` block (one line if it is held)."""
    return store_lock(out, activity="training run")
