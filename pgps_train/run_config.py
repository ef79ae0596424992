"""What a run is (:class:`TrainConfig`), recorded so that ``--resume`` continues that run
and no other.

A run folder holds ``config.json`` (the TrainConfig it was started with) and
``store_identity.json`` (the store's creation id and per-case content checksums, also kept
in every checkpoint). On ``--resume``:

- flags not given again come from config.json, so ``pgps-train STORE --out DIR --resume``
  rebuilds the same network, schedule and stream (without it, the defaults gave a network
  of another size and a size-mismatch traceback);
- a flag given again must agree with config.json, or it is refused in one line naming the
  flag and both values: a different ``--net``, ``--patch``, ``--seed`` ... would make
  another run. :data:`HARMLESS` flags may differ (they change neither the batches nor the
  weights); of those, :data:`PER_INVOCATION` ones apply only to the command that gives
  them (``--max-seconds``, ``--quiet``, ``--allow-incomplete``, ``--device``);
- the store must be the one the run trained on: a store re-converted under the same path
  (another creation id) or holding other content under the same case ids (another
  checksum) is refused in one line. The store's path itself may change (a moved store).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgps_data.errors import PGPSInputError, read_json
from pgps_data.store.atomic_write import write_atomic

if TYPE_CHECKING:
    import torch

    from pgps_data.labels import Labels

CONFIG = "config.json"
STORE_IDENTITY = "store_identity.json"

HARMLESS = frozenset({"workers", "device", "save_every", "final_eval", "quiet", "max_seconds",
                      "allow_incomplete"})
# not read back: the device is chosen as for a new run (a GPU run may resume on a CPU)
PER_INVOCATION = frozenset({"quiet", "max_seconds", "allow_incomplete", "device"})
NOT_COMPARED = frozenset({"store", "out"})  # the store is compared by identity, not path
INFORMATIONAL = frozenset({"preset"})  # its values are in config.json; only a flag is checked
PATHS = frozenset({"splits", "nnunet_plans"})

_FLAGS = {"final_eval": "--no-final-eval", "net_kwargs": "--net/--preset's network widths"}


def _default_device() -> str:
    import torch  # noqa: PLC0415 (the CLI builds a TrainConfig before it needs torch)

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as config.json in the run folder."""

    store: str
    out: str
    mode: str = "efficiency"
    net: str = "unet"
    rules: str = "journal-2025"
    patch: list[int] | None = None  # None: planned from the store (see resolve_patch)
    patch_budget: int = 2**21
    nnunet_plans: str | None = None
    epochs: int = 1000  # 0: one epoch per stage of the rule set (the tiny preset)
    iterations_per_epoch: int = 250
    batch: int = 2
    workers: int = 4
    eval_every: int = 250
    eval_batches: int = 10
    save_every: int = 1000
    device: str = _field(default_factory=_default_device)  # cuda where there is one
    fold: int | str = 0
    splits: str | None = None
    seed: int = 0
    net_kwargs: dict[str, Any] = _field(default_factory=dict)
    lr: float = 1e-2
    momentum: float = 0.99
    weight_decay: float = 3e-5
    grad_clip: float = 12.0
    deterministic: bool = False
    final_eval: bool = True
    quiet: bool = False
    max_seconds: float | None = None  # stop (with a checkpoint) once the loop ran this long
    allow_incomplete: bool = False  # train on a store whose conversion did not finish
    preset: str | None = None  # recorded so a resume can check a --preset given again
    augment: str = "nnunet"  # nnU-Net's default training transforms on the device, or "none"
    augment_geometry: str = "stage"  # rotation range / dummy 2D / read box per stage or final
    mirror_axes: list[int] = _field(default_factory=lambda: [0, 1, 2])


def flag_name(field: str) -> str:
    """The pgps-train flag that sets TrainConfig ``field``."""
    return _FLAGS.get(field, "--" + field.replace("_", "-"))


def saved_config(out: str | os.PathLike) -> dict[str, Any] | None:
    """config.json of the run in ``out`` (None when there is none)."""
    path = Path(out) / CONFIG
    if not path.exists():
        return None
    doc = read_json(path, "a pgps-train run folder has one")
    if not isinstance(doc, dict) or "mode" not in doc:
        raise PGPSInputError(f"{path}: not a pgps-train run configuration (start a new run "
                             "with another --out)")
    return doc


def resumed_values(saved: dict[str, Any], given: dict[str, Any], fields: set[str],
                   out: str | os.PathLike) -> dict[str, Any]:
    """TrainConfig values for a resume: config.json's, overlaid by the flags given again.

    ``given`` holds only what the command line set explicitly; each must agree with
    ``saved`` unless it is harmless (then it wins). Per-invocation flags are never taken
    from ``saved``.
    """
    values = {k: v for k, v in saved.items() if k in fields and k not in PER_INVOCATION}
    for key, value in given.items():
        if key not in HARMLESS | NOT_COMPARED and key in saved:
            _refuse_if_different(key, saved[key], value, out)
        values[key] = value
    return values


def check_agrees(config: dict[str, Any], saved: dict[str, Any] | None,
                 out: str | os.PathLike) -> None:
    """Refuse (one line) a resume whose configuration differs from the run's config.json."""
    if saved is None:
        return
    for key in differences(config, saved):
        _refuse_if_different(key, saved[key], config[key], out)


def differences(config: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    """The TrainConfig fields in which ``config`` would train another run than ``saved``."""
    return [key for key, value in config.items()
            if key in saved and key not in HARMLESS | NOT_COMPARED | INFORMATIONAL
            and _norm(key, saved[key]) != _norm(key, value)]


def _refuse_if_different(key: str, saved: Any, given: Any, out: str | os.PathLike) -> None:
    if _norm(key, saved) == _norm(key, given):
        return
    raise PGPSInputError(
        f"{Path(out) / CONFIG}: {flag_name(key)} {_show(given)} differs from the run's "
        f"{_show(saved)}; --resume continues a run with the settings it was started with "
        f"(drop {flag_name(key)}, or start a new run with another --out)")


def _norm(key: str, value: Any) -> Any:
    if value is None:
        return None
    if key in PATHS:
        return str(Path(value).expanduser().resolve())
    if isinstance(value, list | tuple):
        return [_norm("", v) for v in value]
    if isinstance(value, dict):
        return {str(k): _norm("", v) for k, v in value.items()}
    if key == "fold" and str(value).isdigit():
        return int(value)
    return value


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(map(str, value))
    return "none" if value is None else str(value)


# -- the store's identity ----------------------------------------------------------------------
def store_identity(store: Any) -> dict[str, Any]:
    """The store's creation id and per-case checksums (``Store.identity``), as plain data."""
    ident = store.identity
    return {"creation_id": ident.get("creation_id"), "cases": dict(ident.get("cases", {}))}


def recorded_identity(out: str | os.PathLike,
                      ckpt: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The identity the run recorded: its checkpoint's, else store_identity.json's."""
    if ckpt is not None and isinstance(ckpt.get("store_identity"), dict):
        return ckpt["store_identity"]
    path = Path(out) / STORE_IDENTITY
    if not path.exists():
        return None  # a run from before identities were recorded: nothing to compare
    doc = read_json(path, "a pgps-train run folder has one")
    return doc if isinstance(doc, dict) else None


def check_store(store: Any, recorded: dict[str, Any] | None, out: str | os.PathLike) -> None:
    """Refuse (one line) to resume run ``out`` on a store other than the one it trained on."""
    if recorded is None:
        return
    now = store_identity(store)
    problem = None
    then_id, now_id = recorded.get("creation_id"), now["creation_id"]
    if then_id != now_id:
        problem = (f"it was converted again (creation id {str(now_id)[:12]}, the run's "
                   f"{str(then_id)[:12]})")
    else:
        then, cur = recorded.get("cases", {}), now["cases"]
        changed = sorted(c for c in set(then) & set(cur) if then[c] != cur[c])
        added, gone = sorted(set(cur) - set(then)), sorted(set(then) - set(cur))
        if changed:
            problem = (f"{len(changed)} case(s) hold other content under the same id "
                       f"({', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''})")
        elif added or gone:
            problem = (f"its training cases changed ({len(added)} added, {len(gone)} "
                       "missing)")
    if problem:
        raise PGPSInputError(
            f"{store.path}: not the store run {out} was trained on: {problem}; resume with "
            "the original store, or start a new run with another --out")


# -- writing ----------------------------------------------------------------------------------
def write_json(path: Path, doc: Any) -> None:
    """Write ``doc`` as JSON atomically (a kill never leaves half a config.json)."""
    write_atomic(path, json.dumps(doc, indent=1).encode())


def write_run_record(out: Path, config: dict[str, Any], identity: dict[str, Any]) -> None:
    """config.json and store_identity.json of the run in ``out``."""
    write_json(out / CONFIG, config)
    write_json(out / STORE_IDENTITY, identity)


def write_model_json(out: Path, net: torch.nn.Module, store, patch,  # noqa: ANN001
                      labels: Labels) -> None:
    """What inference needs to rebuild the network and preprocess raw files like the store.

    The label keys are the store's (:meth:`Labels.to_dict`): with regions the network has
    one sigmoid output per region and pgps-predict paints them in ``regions_class_order``.
    """
    meta = store.meta
    model = {
        "network": net.config(),
        "patch": list(patch),
        "num_classes": labels.num_outputs,
        **labels.to_dict(),
        "channel_names": meta["channel_names"],
        "modalities": meta["modalities"],
        "target_spacing": meta["target_spacing"],
        "intensity_statistics": meta["intensity_statistics"],
        "use_mask_for_norm": bool(meta.get("plan", {}).get("use_mask_for_norm", False)),
        "file_ending": meta.get("file_ending", ".nii.gz"),
    }
    write_json(out / "model.json", model)
