"""Conversion tasks that die, for the dask-cluster tests: module level, so that the
cluster's worker processes import them by name (``tests.cluster_tasks``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DIES = "dies.txt"  # beside the store: the case id whose task kills its worker mid-write
DIED = "died.txt"  # beside the store: one line per worker that died


def dying_convert_case(spec, case, store_path: Path, plan: dict[str, Any]) -> dict[str, Any]:  # noqa: ANN001
    """``convert_case``, except that the case named in ``DIES`` kills its worker process
    (``os._exit``, no cleanup: as kill -9 or the OOM killer would) after writing its image
    array and before its label: a half-written case folder holding the case's lock. With
    ``DIES`` reading ``<id> once`` it dies only the first time."""
    import pgps_data.store.write as write_mod
    from pgps_data.raw.cases import convert_case

    spec_file = Path(store_path).parent / DIES
    target, _, how = spec_file.read_text().strip().partition(" ")
    died = Path(store_path).parent / DIED
    if case.case_id == target and not (how == "once" and died.exists()):
        real = write_mod.write_array

        def write_then_die(group, name, data, **kw):  # noqa: ANN001, ANN003, ANN202
            if name == "label":
                with open(died, "a") as fh:
                    fh.write(f"{case.case_id} {os.getpid()}\n")
                os._exit(1)
            return real(group, name, data, **kw)

        write_mod.write_array = write_then_die
        try:
            return convert_case(spec, case, store_path, plan)
        finally:
            write_mod.write_array = real
    return convert_case(spec, case, store_path, plan)
