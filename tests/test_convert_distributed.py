"""`pgps-convert --scheduler ADDRESS` runs the cases on a dask.distributed cluster."""

from __future__ import annotations

from pathlib import Path

from distributed import LocalCluster

from pgps_data.raw.convert import convert
from tests.conftest import assert_same_store


def test_a_distributed_scheduler_gives_the_local_store(tiny_raw: Path, tiny_store: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "dist.zarr"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:
        summary = convert(tiny_raw, out, scheduler=cluster.scheduler_address, quiet=True,
                          log=lambda *a: None)
    assert summary["errors"] == [] and summary["converted"] == 5
    assert_same_store(tiny_store, out)
