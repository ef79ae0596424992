"""`pgps-convert --scheduler ADDRESS` runs the cases on a dask.distributed cluster: the
same store as a local conversion, on a real multi-process cluster too, and a worker that
dies mid-case costs only its task (the scheduler reruns it, or a rerun of the command
finishes the store); nothing half-written is ever listed."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import dask
import pytest
from distributed import LocalCluster

import pgps_data.raw.convert as convert_mod
from pgps_data import open_store
from pgps_data.errors import PGPSInputError
from pgps_data.raw.convert import convert
from pgps_data.store.lock import case_lock
from tests.cluster_tasks import DIED, DIES, dying_convert_case
from tests.conftest import assert_same_store


def _quiet(*_a: object) -> None:
    pass


@pytest.fixture(autouse=True)
def _bounded():  # noqa: ANN202
    """A cluster that stops answering fails its test within 120 s instead of hanging CI."""
    def expire(*_a: object) -> None:
        raise TimeoutError("the dask cluster test ran past 120 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(120)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_distributed_scheduler_gives_the_local_store(tiny_raw: Path, tiny_store: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "dist.zarr"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:
        summary = convert(tiny_raw, out, scheduler=cluster.scheduler_address, quiet=True,
                          log=_quiet)
    assert summary["errors"] == [] and summary["converted"] == 5
    assert_same_store(tiny_store, out)


@pytest.fixture(scope="module")
def two_workers():  # noqa: ANN201
    """A LocalCluster of two single-threaded worker processes (each under a nanny, which
    restarts a worker that dies)."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=50) as cluster:
        yield cluster


def test_two_worker_processes_give_the_local_store(tiny_raw, tiny_store, tmp_path, two_workers):
    out = tmp_path / "two.zarr"
    summary = convert(tiny_raw, out, scheduler=two_workers.scheduler_address, quiet=True,
                      log=_quiet)
    assert summary["errors"] == [] and summary["converted"] == 5
    assert_same_store(tiny_store, out)
    assert open_store(out).identity["cases"] == open_store(tiny_store).identity["cases"]


def test_a_worker_killed_mid_case_costs_only_its_task(tiny_raw, tiny_store, tmp_path,
                                                      two_workers, monkeypatch):
    """The worker writing one case dies after its image array, holding the case's lock;
    the scheduler reruns the task elsewhere and the store is the local one."""
    case = open_store(tiny_store).case_ids[1]
    out = tmp_path / "killed.zarr"
    (tmp_path / DIES).write_text(f"{case} once\n")
    monkeypatch.setattr(convert_mod, "convert_case", dying_convert_case)
    summary = convert(tiny_raw, out, scheduler=two_workers.scheduler_address, quiet=True,
                      log=_quiet)
    assert (tmp_path / DIED).read_text().split()[0] == case  # it did die mid-case
    assert summary["errors"] == [] and summary["converted"] == 5
    assert_same_store(tiny_store, out)
    two_workers.wait_for_workers(2, timeout=60)  # the nanny restarted the dead one


def test_a_case_whose_workers_always_die_is_one_line_and_a_rerun_finishes(
        tiny_raw, tiny_store, tmp_path, monkeypatch):
    case = open_store(tiny_store).case_ids[2]
    out = tmp_path / "given-up.zarr"
    (tmp_path / DIES).write_text(f"{case} always\n")
    monkeypatch.setattr(convert_mod, "convert_case", dying_convert_case)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=50) as cluster:
        summary = convert(tiny_raw, out, scheduler=cluster.scheduler_address, quiet=True,
                          log=_quiet)
        # with no failure allowed, a case queued on the dying worker is given up too
        errors = summary["errors"]
        assert summary["converted"] + len(errors) == 5 and summary["converted"] >= 2
        assert any(e.startswith(f"case {case}: its task failed on the cluster (KilledWorker")
                   for e in errors)
        assert all("\n" not in e and "rerun the same command" in e for e in errors)
        store = open_store(out)
        assert case not in store.case_ids and not store.complete  # the half case is not served
        assert case in store.missing_cases
        # a result lost with its worker was recomputed before convert returned: nothing of
        # this conversion still runs, so what it reports is what the store holds
        complete = len(store.case_ids) + len(store.test_ids)
        assert summary["converted"] == complete
        time.sleep(2)  # a task left running would finish its case meanwhile
        after = open_store(out)
        assert len(after.case_ids) + len(after.test_ids) == complete
        monkeypatch.undo()
        again = convert(tiny_raw, out, scheduler=cluster.scheduler_address, quiet=True,
                        log=_quiet)
    assert again["errors"] == [] and again["converted"] == 5 - complete
    assert again["skipped"] == complete
    assert_same_store(tiny_store, out)


def test_two_writers_of_one_case_are_refused(tiny_store: Path, tmp_path: Path) -> None:
    """A task run twice at once (a worker the scheduler lost, still writing) cannot delete
    the case folder under the other copy: the second copy refuses in one line."""
    store = tmp_path / "s"
    store.mkdir()
    with case_lock(store, "case_01"):
        with pytest.raises(PGPSInputError, match=r"another conversion task \(case case_01\) "
                           r"is writing this folder \(lock held by .+:\d+\)"):
            with case_lock(store, "case_01"):
                pass
        with case_lock(store, "case_02"):  # other cases are not held up
            pass
    with case_lock(store, "case_01"):  # released with its holder
        pass
    assert sorted(p.name for p in store.iterdir()) == []


def test_an_unreachable_scheduler_is_one_line(tiny_raw: Path, tmp_path: Path,
                                              monkeypatch) -> None:
    import pgps_data.raw.parallel as parallel

    monkeypatch.setattr(parallel, "CONNECT_TIMEOUT_S", 2)
    with pytest.raises(PGPSInputError, match=r"tcp://127.0.0.1:9: cannot reach the dask "
                       "scheduler"):
        convert(tiny_raw, tmp_path / "x.zarr", scheduler="tcp://127.0.0.1:9", quiet=True,
                log=_quiet)
    assert not (tmp_path / "x.zarr").exists()
