"""pgps_data: raw datasets → zarr v3 store → curriculum-sized crops, up to a batch on the host.

    from pgps_data import convert, open_store, Curriculum, make_loader
    convert("Task01_Liver", "Task.zarr")            # MSD or nnU-Net raw → zarr v3 store
    store = open_store("Task.zarr")
    case = store[store.case_ids[0]]
    image, label = case.read(origin=(0, 0, 0), shape=(32, 64, 64))

Names are imported lazily so a worker process that only reads crops stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # raw → store
    "convert": "pgps_data.raw.convert",
    "write_synthetic_dataset": "pgps_data.synthetic.dataset",
    # labels: values, regions, ignore label, region order
    "Labels": "pgps_data.labels",
    # the store
    "open_store": "pgps_data.store.store",
    "Store": "pgps_data.store.store",
    "Case": "pgps_data.store.store",
    "fold_cases": "pgps_data.store.splits",
    # the schedule
    "Curriculum": "pgps_data.schedule.curriculum",
    "Stage": "pgps_data.schedule.curriculum",
    # the loader
    "make_loader": "pgps_data.loader.pipeline",
    "LoaderWorkerError": "pgps_data.loader.watchdog",
    # errors a user can cause
    "PGPSInputError": "pgps_data.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pgps_data' has no attribute {name!r}")
    return getattr(import_module(module), name)
