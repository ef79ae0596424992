"""pgps_data: raw datasets → zarr v3 store → curriculum-sized crops, up to a batch on the host.

    from pgps_data import open_store, Curriculum, make_loader
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
    "open_store": "pgps_data.store",
    "Store": "pgps_data.store",
    "Case": "pgps_data.store",
    "PGPSInputError": "pgps_data.errors",
    "Curriculum": "pgps_data.curriculum",
    "Stage": "pgps_data.curriculum",
    "make_loader": "pgps_data.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pgps_data' has no attribute {name!r}")
    return getattr(import_module(module), name)
