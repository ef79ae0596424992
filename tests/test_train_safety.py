"""The trainer's safety (issue 7): verified checkpoints, resume that reloads the run,
graceful signals, refused bad stores, one-line errors and honest timing.

Runs are tiny (unet at tiny widths, patch 8×16×16, a few dozen steps, one thread); most
are in-process through ``pgps_train.cli.train.main``. The signal tests run ``pgps-train``
as a subprocess in its own session, so a signal can reach its loader workers too (as a
terminal's Ctrl-C or a scheduler's SIGTERM does).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import pgps_train.trainer as trainer_mod
from pgps_data.errors import PGPSInputError
from pgps_data.raw.convert import convert
from pgps_train import checkpoint as ckpt_mod
from pgps_train.checkpoint import (
    FINAL,
    LATEST,
    UnverifiedCheckpointWarning,
    load_checkpoint,
    save_checkpoint,
)
from pgps_train.cli.train import main as train_main
from pgps_train.networks import build_network, tiny_kwargs
from pgps_train.trainer import TrainConfig, train
from tests.loader_store import live_loader_workers
from tests.torch_threads import one_thread

PATCH = ["8", "16", "16"]
BASE = ["--preset", "tiny", "--fold", "all", "--patch", *PATCH, "--workers", "1",
        "--no-final-eval", "--deterministic", "--quiet"]


def cli(argv: list[str]) -> tuple[int, list[str], str]:
    """``pgps-train`` in-process: (exit status, stderr lines, stdout)."""
    err, out = io.StringIO(), io.StringIO()
    with one_thread(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = train_main(argv)
    return rc, err.getvalue().strip().splitlines(), out.getvalue()


def one_line(rc: int, lines: list[str], status: int = 2) -> str:
    assert rc == status and len(lines) == 1, (rc, lines)
    assert "Traceback" not in lines[0]
    return lines[0]


def steps_of(out: Path) -> list[int]:
    with open(out / "steps.csv", newline="") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh)]


def flip_bytes(path: Path, n: int = 64) -> None:
    """Flip ``n`` bytes in the middle of ``path`` (the probe of item 6)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def copy_store(store: Path, dest: Path) -> Path:
    shutil.copytree(store, dest)
    return dest


# -- item 6: checkpoints carry a sha256 and are verified on load ---------------------------------
def _weights_payload() -> dict[str, Any]:
    torch.manual_seed(0)
    net = build_network("unet", in_channels=1, num_classes=3, patch=(8, 16, 16),
                        spacing=(2.0, 1.0, 1.0), **tiny_kwargs("unet"))
    return {"model": net.state_dict(), "step": 7, "opt": [1.5, None, "x", (2, 3)]}


def test_flipped_checkpoint_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / LATEST
    save_checkpoint(path, _weights_payload())
    plain = torch.load(path, weights_only=True)  # the README's promise still holds
    assert set(plain) == {"model", "step", "opt", "sha256"} and len(plain["sha256"]) == 64
    good = load_checkpoint(path)
    assert good["step"] == 7 and good["opt"] == [1.5, None, "x", (2, 3)]

    flip_bytes(path)
    damaged = torch.load(path, weights_only=True)  # the probe: it still loads, other weights
    assert any(not torch.equal(damaged["model"][k], good["model"][k]) for k in good["model"])
    with pytest.raises(PGPSInputError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path)) and "sha256" in msg

    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])  # truncated
    with pytest.raises(PGPSInputError, match="torch.load failed") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_checkpoint_without_digest_loads_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"model": {"w": torch.ones(3)}, "step": 2}, path)  # as pgps wrote it before
    lines: list[str] = []
    assert load_checkpoint(path, log=lines.append)["step"] == 2
    assert len(lines) == 1 and "no sha256 recorded" in lines[0] and str(path) in lines[0]
    with pytest.warns(UnverifiedCheckpointWarning):
        load_checkpoint(path)


# -- item 7: --resume reloads the run, refuses other flags and another store ---------------------
PERF = [*BASE, "--mode", "performance", "--seed", "3", "--iterations-per-epoch", "2",
        "--eval-every", "7", "--rules", "miccai-2024"]


@pytest.fixture(scope="module")
def perf_runs(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """U: an uninterrupted performance run with non-default flags; S: the same run stopped
    after its first step (--max-seconds), for the resume tests to continue."""
    root = tmp_path_factory.mktemp("perf")
    rc, lines, _ = cli([str(tiny_store), *PERF, "--out", str(root / "U")])
    assert rc == 0, lines
    rc, lines, _ = cli([str(tiny_store), *PERF, "--out", str(root / "S"), "--max-seconds", "1e-9"])
    assert rc == 0, lines
    return {"U": root / "U", "S": root / "S", "root": root}


def test_resume_with_only_store_and_out_continues_the_same_run(
        tiny_store: Path, perf_runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "S"
    shutil.copytree(perf_runs["S"], run)
    assert steps_of(run) == [0] and torch.load(run / LATEST, weights_only=True)["step"] == 1
    # the README's command: no flag but --resume; the settings come from config.json
    rc, lines, _ = cli([str(tiny_store), "--out", str(run), "--resume"])
    assert rc == 0, lines
    assert (run / "steps.csv").read_text() == (perf_runs["U"] / "steps.csv").read_text()
    config = json.loads((run / "config.json").read_text())
    assert config["mode"] == "performance" and config["seed"] == 3
    assert config["rules"] == "miccai-2024" and config["patch"] == [8, 16, 16]
    final_u = torch.load(perf_runs["U"] / FINAL, weights_only=True)["model"]
    final_s = torch.load(run / FINAL, weights_only=True)["model"]
    assert all(torch.equal(final_u[k], final_s[k]) for k in final_u)


def test_resume_refuses_other_flags_in_one_line(tiny_store: Path,
                                               perf_runs: dict[str, Path]) -> None:
    run = perf_runs["S"]
    before = (run / LATEST).read_bytes()
    line = one_line(*cli([str(tiny_store), "--out", str(run), "--resume", "--net", "unetr"])[:2])
    assert "--net unetr differs from the run's unet" in line and "--out" in line
    line = one_line(*cli([str(tiny_store), "--out", str(run), "--resume", "--patch", "8", "32",
                          "32"])[:2])
    assert "--patch 8 32 32 differs from the run's 8 16 16" in line
    line = one_line(*cli([str(tiny_store), "--out", str(run), "--resume", "--mode",
                          "constant"])[:2])
    assert "--mode constant differs from the run's performance" in line
    assert (run / LATEST).read_bytes() == before  # nothing of the run was touched


def test_resume_from_a_flipped_checkpoint_exits_2(tiny_store: Path,
                                                  perf_runs: dict[str, Path],
                                                  tmp_path: Path) -> None:
    run = tmp_path / "S"
    shutil.copytree(perf_runs["S"], run)
    flip_bytes(run / LATEST)
    line = one_line(*cli([str(tiny_store), "--out", str(run), "--resume"])[:2])
    assert str(run / LATEST) in line and "damaged" in line


def test_resume_on_a_reconverted_store_is_refused(tiny_raw: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    assert convert(tiny_raw, store, workers=1, quiet=True, log=lambda *a: None)["errors"] == []
    run = tmp_path / "run"
    rc, lines, _ = cli([str(store), *BASE, "--mode", "constant", "--out", str(run),
                        "--max-seconds", "1e-9"])
    assert rc == 0, lines
    identity = json.loads((run / "store_identity.json").read_text())
    assert identity["creation_id"] and all(v.startswith("sha256:")
                                           for v in identity["cases"].values())
    # the same raw data, other settings, same path and case ids
    summary = convert(tiny_raw, store, spacing=(3.0, 1.5, 1.5), workers=1, overwrite=True,
                      quiet=True, log=lambda *a: None)
    assert summary["errors"] == []
    line = one_line(*cli([str(store), "--out", str(run), "--resume"])[:2])
    assert line.startswith(f"pgps-train: error: {store}: not the store run")
    assert "converted again" in line and "another --out" in line


# -- item 8: SIGINT / SIGTERM write a checkpoint and say how to resume ---------------------------
LONG = [*BASE, "--mode", "efficiency", "--iterations-per-epoch", "40",
        "--eval-every", "100000"]


def _popen(store: Path, out: Path, *extra: str, **kw: Any) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pgps_train.cli.train", str(store), *LONG,
                             "--out", str(out), *extra], env=env, start_new_session=True,
                            text=True, **kw)


def _wait_for_steps(proc: subprocess.Popen, out: Path, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if (out / "steps.csv").exists() and len(steps_of(out)) >= n:
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the run never got going")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_writes_a_checkpoint_and_says_how_to_resume(tiny_store: Path, tmp_path: Path,
                                                          sig: signal.Signals) -> None:
    out = tmp_path / "run"
    proc = _popen(tiny_store, out, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_steps(proc, out, 5)
    os.killpg(proc.pid, sig)  # the whole group, workers included (scheduler, terminal)
    _, err = proc.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert proc.returncode == 128 + sig, err
    assert len(lines) == 1, err  # no traceback, not from the main process nor a worker
    ckpt = load_checkpoint(out / LATEST)
    step = ckpt["step"]
    assert step >= 5 and ckpt["loader"]["next_step"] == step
    assert lines[0] == (f"pgps-train: interrupted at step {step} ({sig.name}); checkpoint "
                        f"written; resume with: pgps-train {tiny_store} --out {out} --resume")
    assert steps_of(out) == list(range(step))  # flushed up to the checkpoint, nothing beyond
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not (out / FINAL).exists()
    if sig == signal.SIGTERM:  # the printed command continues it; a closed stdout is harmless
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        resumed = subprocess.Popen([sys.executable, "-m", "pgps_train.cli.train",
                                    str(tiny_store), "--out", str(out), "--resume"], env=env,
                                   start_new_session=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        resumed.stdout.close()  # a reader that went away
        err = resumed.stderr.read()
        assert resumed.wait(timeout=240) == 0, err
        assert "PGPS schedule" in err  # progress and schedule on stderr, not stdout
        assert steps_of(out) == list(range(400))


class _Loader:
    """Wraps a loader; calls ``hook(batch)`` as each batch arrives, before its step runs."""

    def __init__(self, inner: Any, hook: Any):
        self.inner, self.hook = inner, hook

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.inner:
            self.hook(batch)
            yield batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _hooked(monkeypatch: pytest.MonkeyPatch, hook: Any) -> None:
    real = trainer_mod.make_loader
    monkeypatch.setattr(trainer_mod, "make_loader",
                        lambda *a, **k: _Loader(real(*a, **k), hook))


CONSTANT = [*BASE, "--mode", "constant", "--epochs", "1", "--iterations-per-epoch", "20",
            "--eval-every", "100000", "--save-every", "5"]


def test_second_ctrl_c_while_checkpointing_leaves_no_half_file(
        tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    _hooked(monkeypatch, lambda b: b["step"] == 7 and os.kill(os.getpid(), signal.SIGINT))
    real_save = torch.save

    def second_ctrl_c(obj: Any, fh: Any, *a: Any, **k: Any) -> None:
        if obj["step"] == 8:  # the checkpoint the first Ctrl-C asked for, half written
            fh.write(b"PK\x03\x04 half a checkpoint")
            os.kill(os.getpid(), signal.SIGINT)
        real_save(obj, fh, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", second_ctrl_c)
    rc, lines, _ = cli([str(tiny_store), *CONSTANT, "--out", str(out)])
    line = one_line(rc, lines, 130)
    assert "without a new checkpoint" in line and "--resume" in line
    assert load_checkpoint(out / LATEST)["step"] == 5  # the previous one, intact
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


# -- item 10: an incomplete store is refused unless --allow-incomplete ---------------------------
def test_incomplete_store_is_refused_unless_allowed(tiny_store: Path, tmp_path: Path) -> None:
    store = copy_store(tiny_store, tmp_path / "s.zarr")
    shutil.rmtree(store / "cases" / "synth_001" / "label")  # a case lost an array
    argv = [str(store), *CONSTANT, "--save-every", "1000", "--iterations-per-epoch", "3"]
    line = one_line(*cli([*argv, "--out", str(tmp_path / "a")])[:2])
    assert line.startswith(f"pgps-train: error: {store}: conversion incomplete")
    assert "1 training case(s) missing (synth_001)" in line and "pgps-convert" in line
    assert "--allow-incomplete" in line and not (tmp_path / "a" / "steps.csv").exists()
    rc, lines, _ = cli([*argv, "--out", str(tmp_path / "b"), "--allow-incomplete"])
    assert rc == 0, lines
    assert steps_of(tmp_path / "b") == [0, 1, 2]


# -- item 12: a full disk, a corrupt chunk, a dead worker: one line each -------------------------
@pytest.mark.parametrize("as_torch", [False, True], ids=["OSError", "torch-zip-RuntimeError"])
def test_disk_full_while_checkpointing_is_one_line(tiny_store: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   as_torch: bool) -> None:
    out = tmp_path / "run"
    real_save = torch.save

    def disk_full(obj: Any, fh: Any, *a: Any, **k: Any) -> None:
        if obj["step"] == 10:
            fh.write(b"PK\x03\x04 half")
            if not as_torch:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            # What a real full disk gives: torch's zip writer fails in its __exit__ with a
            # RuntimeError while the OSError from the write is being handled.
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . "
                                   "unexpected pos 250112 vs 250000") from None
        real_save(obj, fh, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", disk_full)
    line = one_line(*cli([str(tiny_store), *CONSTANT, "--out", str(out)])[:2])
    assert f"{out / LATEST}: cannot write the checkpoint: No space left on device" in line
    assert "previous checkpoint is intact" in line and "--resume" in line
    assert load_checkpoint(out / LATEST)["step"] == 5
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_corrupt_chunk_during_training_is_one_line(tiny_store: Path, tmp_path: Path) -> None:
    store = copy_store(tiny_store, tmp_path / "s.zarr")
    for shard in store.glob("cases/*/image/c/**/*"):
        if shard.is_file():  # flip a bit every ~1 kB of chunk payload (not the shard index)
            data = bytearray(shard.read_bytes())
            for i in range(64, len(data) - 4096, 997):
                data[i] ^= 0x10
            shard.write_bytes(bytes(data))
    line = one_line(*cli([str(store), *CONSTANT, "--out", str(tmp_path / "run")])[:2])
    assert line.startswith(f"pgps-train: error: {store}/cases/synth_")
    assert "crc32c" in line and "pgps-convert" in line


def test_worker_failures_become_one_line_either_way() -> None:
    from pgps_data.loader.watchdog import LoaderWorkerError
    from pgps_train.interrupts import WorkerDataError, loader_failure

    reason = "/s.zarr/cases/c1/image: chunk (0, 1, 0) fails its crc32c checksum (re-convert)"
    line = (f"loader worker (pid 7) failed on case 'c1', step 3, patch [8, 16, 16], slots "
            f"[0]: PGPSInputError: {reason}")
    torchdata_text = (f"Caught RuntimeError in _apply_udf.\nOriginal Traceback (most recent "
                      f"call last):\n  File x\npgps_data.errors.PGPSInputError: {reason}\n\n"
                      f"The above exception ...\nRuntimeError: {line}\n")
    for exc in (RuntimeError(torchdata_text), LoaderWorkerError(line)):
        err = loader_failure(exc)
        assert isinstance(err, WorkerDataError) and str(err) == reason
    other = loader_failure(LoaderWorkerError(line.replace("PGPSInputError", "MemoryError")))
    assert type(other) is LoaderWorkerError and str(other).startswith("loader worker (pid 7)")
    dead = loader_failure(LoaderWorkerError("a loader worker (pid 9) died from SIGKILL"))
    assert type(dead) is LoaderWorkerError and "SIGKILL" in str(dead)
    assert loader_failure(RuntimeError("unrelated")) is None


def test_dead_worker_is_one_line_with_a_checkpoint(tiny_store: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"

    def kill_a_worker(batch: dict[str, Any]) -> None:
        if batch["step"] == 2:
            victim = live_loader_workers()[0]
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 5  # not psutil.wait: reaping hides the death
            while victim in live_loader_workers() and time.monotonic() < deadline:
                time.sleep(0.01)

    _hooked(monkeypatch, kill_a_worker)
    # long enough that the workers still have requests to serve (they are bundled)
    line = one_line(*cli([str(tiny_store), *CONSTANT, "--iterations-per-epoch", "400",
                          "--out", str(out)])[:2], status=1)
    assert "died from SIGKILL" in line and "resume with: pgps-train" in line
    step = load_checkpoint(out / LATEST)["step"]
    assert f"checkpoint at step {step}" in line
    assert step >= 3 and steps_of(out) == list(range(step))
    assert not live_loader_workers()  # the loader's workers are gone


# -- item 15: validation, checkpoints and start-ups are timed apart from the data wait -----------
class _Slow:
    """A loader that sleeps ``first`` s before its first batch and ``each`` s before others."""

    def __init__(self, inner: Any, first: float, each: float):
        self.inner, self.first, self.each = inner, first, each

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for k, batch in enumerate(self.inner):
            time.sleep(self.first if k == 0 else self.each)
            yield batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_wait_excludes_validation_checkpoints_and_startup(tiny_store: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real_loader, real_val = trainer_mod.make_loader, trainer_mod.make_validation_loader
    real_save = trainer_mod.save_checkpoint
    monkeypatch.setattr(trainer_mod, "make_loader",
                        lambda *a, **k: _Slow(real_loader(*a, **k), 1.0, 0.0))
    monkeypatch.setattr(trainer_mod, "make_validation_loader",
                        lambda *a, **k: _Slow(real_val(*a, **k), 0.4, 0.2))

    def slow_save(*a: Any, **k: Any) -> None:
        time.sleep(0.4)
        real_save(*a, **k)

    monkeypatch.setattr(trainer_mod, "save_checkpoint", slow_save)
    out = tmp_path / "run"
    cfg = TrainConfig(store=str(tiny_store), out=str(out), mode="constant", patch=[8, 16, 16],
                      epochs=1, iterations_per_epoch=8, batch=2, workers=1, eval_every=4,
                      eval_batches=3, save_every=4, device="cpu", fold="all",
                      final_eval=False, quiet=True, net_kwargs=tiny_kwargs("unet"))
    with one_thread():
        s = train(cfg, log=lambda *a: None)
    # 2 validations (steps 4, 8) of 3 batches, checkpoints at 4 and 8 plus the final one
    assert s["seconds_loader_startup"] >= 1.0
    assert s["seconds_validation_startup"] >= 2 * 0.4
    assert s["seconds_validation"] >= 2 * 2 * 0.2
    assert s["seconds_checkpoint"] >= 3 * 0.4
    assert s["seconds_wait"] < 0.5  # before: ≥ 1.6 s of validation and checkpoints
    assert sum(st["seconds_wait"] for st in s["stages"]) == pytest.approx(s["seconds_wait"],
                                                                          abs=0.02)
    with open(out / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [3, 7]
    assert float(rows[0]["seconds_validation_startup"]) >= 0.4
    assert float(rows[1]["seconds_checkpoint"]) >= 0.4  # the checkpoint at step 4
    assert float(rows[1]["seconds_wait"]) < 0.5
