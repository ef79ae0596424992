"""pgps-predict never overwrites its inputs or a file it did not write (issue 7, item 2).

Each test reproduces one probe: OUT_DIR = INPUT_DIR, OUT_DIR inside it, a foreign file
at an output's name, a rerun, a kill or a full disk while writing, two runs at once. The
model is a seeded 1x1 convolution (``pgps_train.networks`` is replaced), so a run takes
well under a second per case.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import signal
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from pgps_data.errors import PGPSInputError
from pgps_data.raw.readers import read_volume
from pgps_data.synthetic.dataset import write_synthetic_dataset
from pgps_train.checkpoint import save_checkpoint
from pgps_train.cli import predict as cli_predict

MANIFEST = ".pgps-predict.json"
SIZE = (12, 24, 24)
CONFIG = {
    "network": {"in_channels": 1, "num_classes": 3}, "patch": [8, 16, 16], "num_classes": 3,
    "labels": {"background": 0, "organ": 1, "lesion": 2}, "label_values": [1, 2],
    "ignore_label": None, "regions_class_order": None, "channel_names": ["CT"],
    "modalities": ["CT"], "target_spacing": [1.5, 1.0, 1.0], "use_mask_for_norm": False,
    "intensity_statistics": {"0": {"mean": -200.0, "std": 400.0, "percentile_00_5": -1000.0,
                                   "percentile_99_5": 600.0}},
    "file_ending": ".nii.gz",
}


def _conv(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Conv3d(1, 3, 1)


@pytest.fixture(autouse=True)
def fake_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    """pgps_train.networks with a build_network that makes a 1x1 convolution."""
    module = types.ModuleType("pgps_train.networks")
    module.build_network = lambda *, in_channels, num_classes: _conv(0)
    monkeypatch.setitem(sys.modules, "pgps_train.networks", module)


def _model(tmp_path: Path, seed: int = 1, name: str = "model") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps(CONFIG))
    save_checkpoint(folder / "checkpoint_final.pt", {"model": _conv(seed).state_dict()})
    return folder


def _images(tmp_path: Path, cases: int = 1) -> Path:
    raw = write_synthetic_dataset(tmp_path / "raw", cases=cases, test_cases=0, size=SIZE)
    return raw / "imagesTr"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _outputs(folder: Path) -> dict[str, bytes]:
    """The files of OUT_DIR but the manifest (which a run updates even when it stops)."""
    return {k: v for k, v in _snapshot(folder).items() if k != MANIFEST}


def _predict(model: Path, inp: Path, out: Path, *extra: str) -> int:
    return cli_predict.main([str(model), str(inp), str(out), "--quiet", *extra])


def _one_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("pgps-predict: error: ") and "Traceback" not in err[0]
    return err[0]


def _manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST).read_text())


# ------------------------------------------------------------------ OUT_DIR vs INPUT_DIR


@pytest.mark.parametrize("how", ["same", "symlink", "dotdot"])
def test_out_equal_to_input_is_refused_and_inputs_stay_byte_identical(
        tmp_path: Path, capsys: pytest.CaptureFixture, how: str):
    inp = _images(tmp_path, cases=2)
    before = _snapshot(inp)
    out = {"same": inp, "dotdot": inp / ".." / inp.name}.get(how, tmp_path / "link")
    if how == "symlink":
        out.symlink_to(inp)
    assert _predict(_model(tmp_path), inp, out, "--overwrite") == 2
    assert "is the input folder" in _one_error(capsys)
    assert _snapshot(inp) == before  # no file replaced, none added (no manifest either)


@pytest.mark.parametrize("how", ["plain", "through-symlink"])
def test_out_inside_input_is_refused_and_not_created(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture, how: str):
    inp = _images(tmp_path)
    before = _snapshot(inp)
    base = inp
    if how == "through-symlink":
        base = tmp_path / "alias"
        base.symlink_to(inp)
    assert _predict(_model(tmp_path), inp, base / "pred") == 2
    assert "lies inside the input folder" in _one_error(capsys)
    assert not (inp / "pred").exists() and _snapshot(inp) == before


def test_input_inside_out_is_allowed_and_untouched(tmp_path: Path):
    """INPUT_DIR inside OUT_DIR is fine: outputs go to OUT_DIR's top level only."""
    inp = _images(tmp_path)
    out = inp.parent  # raw/, which holds imagesTr/ and labelsTr/
    labels_before = _snapshot(out / "labelsTr")
    before = _snapshot(inp)
    assert _predict(_model(tmp_path), inp, out) == 0
    assert (out / "synth_000.nii.gz").is_file()
    assert _snapshot(inp) == before and _snapshot(out / "labelsTr") == labels_before


def test_an_input_symlinked_into_out_is_never_replaced(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture):
    """An input file whose real file sits at an output's name survives even --overwrite."""
    inp = _images(tmp_path)
    out = tmp_path / "pred"
    out.mkdir()
    real = out / "synth_000.nii.gz"
    os.replace(inp / "synth_000.nii.gz", real)
    (inp / "synth_000.nii.gz").symlink_to(real)
    data = real.read_bytes()
    assert _predict(_model(tmp_path), inp, out, "--overwrite") == 2
    assert "is one of the input files" in _one_error(capsys)
    assert real.read_bytes() == data


# ------------------------------------------------------------------ files pgps did not write


@pytest.mark.parametrize("name", ["synth_000.nii.gz", "synth_000.npz", "labels.json"])
def test_foreign_file_at_an_output_name_survives_unless_overwrite(
        tmp_path: Path, capsys: pytest.CaptureFixture, name: str):
    inp, model, out = _images(tmp_path), _model(tmp_path), tmp_path / "pred"
    out.mkdir()
    (out / name).write_bytes(b"the user's own file")
    assert _predict(model, inp, out, "--save-probabilities") == 2
    line = _one_error(capsys)
    assert str(out / name) in line and "--overwrite" in line
    assert _snapshot(out) == {name: b"the user's own file"}  # nothing else written either
    assert _predict(model, inp, out, "--save-probabilities", "--overwrite") == 0
    assert (out / name).read_bytes() != b"the user's own file"
    assert name in _manifest(out)["files"]
    shape = read_volume(inp / "synth_000.nii.gz").data.shape
    assert read_volume(out / "synth_000.nii.gz").data.shape == shape


def test_output_edited_by_the_user_is_not_replaced_on_rerun(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture):
    """A label map corrected by hand and saved in place is the user's now."""
    inp, model, out = _images(tmp_path), _model(tmp_path), tmp_path / "pred"
    assert _predict(model, inp, out) == 0
    path = out / "synth_000.nii.gz"
    vol = read_volume(path)
    img = sitk.ReadImage(str(path))
    edited = sitk.GetImageFromArray(np.zeros_like(vol.data))
    edited.CopyInformation(img)
    sitk.WriteImage(edited, str(path))
    data = path.read_bytes()
    capsys.readouterr()
    assert _predict(model, inp, out) == 2
    assert "synth_000.nii.gz: exists and was not written by pgps-predict" in _one_error(capsys)
    assert path.read_bytes() == data


def test_rerun_replaces_its_own_outputs(tmp_path: Path):
    inp, out = _images(tmp_path), tmp_path / "pred"
    assert _predict(_model(tmp_path, seed=1), inp, out, "--save-probabilities") == 0
    first = _snapshot(out)
    other = _model(tmp_path, seed=5, name="other")
    assert _predict(other, inp, out, "--save-probabilities") == 0
    second = _snapshot(out)
    assert set(first) == set(second)
    assert first["synth_000.npz"] != second["synth_000.npz"]  # replaced: another model
    files = _manifest(out)["files"]
    assert files["synth_000.npz"]["model_dir"] == str(other.resolve())
    assert files["synth_000.npz"]["sha256"] == hashlib.sha256(second["synth_000.npz"]).hexdigest()


def test_manifest_lists_exactly_what_was_written(tmp_path: Path):
    inp, model, out = _images(tmp_path, cases=2), _model(tmp_path), tmp_path / "pred"
    assert _predict(model, inp, out, "--save-probabilities") == 0
    doc = _manifest(out)
    written = {p.name for p in out.iterdir() if p.name != MANIFEST}
    assert written == {"labels.json", "synth_000.nii.gz", "synth_000.npz", "synth_000.json",
                       "synth_001.nii.gz", "synth_001.npz", "synth_001.json"}
    assert set(doc["files"]) == written
    for name, entry in doc["files"].items():
        data = (out / name).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["model_dir"] == str(model.resolve()) and entry["written"]
    assert doc["files"]["synth_001.npz"]["case_id"] == "synth_001"
    assert doc["model_dir"] == str(model.resolve()) and doc["tool"] == "pgps-predict"


def test_detached_header_input_gives_one_output_file(tmp_path: Path):
    """An .mhd input (header + data file) gives one .mha: every output is one atomic file."""
    src = read_volume(_images(tmp_path) / "synth_000.nii.gz")
    inp = tmp_path / "mhd"
    inp.mkdir()
    img = sitk.GetImageFromArray(src.data.astype(np.float32))
    img.SetSpacing(tuple(float(s) for s in src.spacing[::-1]))
    sitk.WriteImage(img, str(inp / "case.mhd"))
    out = tmp_path / "pred"
    assert _predict(_model(tmp_path), inp, out) == 0
    assert {p.name for p in out.iterdir()} == {"case.mha", "labels.json", MANIFEST}
    assert read_volume(out / "case.mha").data.shape == src.data.shape


def test_case_named_like_pgps_files_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture):
    inp = _images(tmp_path)
    os.replace(inp / "synth_000.nii.gz", inp / "labels.nii.gz")
    out = tmp_path / "pred"
    assert _predict(_model(tmp_path), inp, out, "--save-probabilities") == 1
    assert "case 'labels' would write labels.json" in _one_error(capsys)
    assert json.loads((out / "labels.json").read_text())["labels"]["organ"] == 1


# ------------------------------------------------------------------ kills, full disk, two runs


def _with_old_outputs(tmp_path: Path) -> tuple[Path, Path, Path, dict[str, bytes]]:
    inp, model, out = _images(tmp_path, cases=2), _model(tmp_path), tmp_path / "pred"
    assert _predict(model, inp, out) == 0
    return inp, model, out, _outputs(out)


def test_ctrl_c_while_writing_leaves_no_half_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture):
    inp, model, out, before = _with_old_outputs(tmp_path)

    def half_then_interrupt(path, *_args, **_kw) -> None:  # noqa: ANN001
        Path(path).write_bytes(b"\x1f\x8b half a NIfTI")
        raise KeyboardInterrupt

    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(cli_predict, "write_volume", half_then_interrupt)
        assert _predict(_model(tmp_path, seed=9, name="other"), inp, out) == 130
    assert "interrupted" in _one_error(capsys)
    assert _outputs(out) == before  # the old label maps, whole; no temporary file
    assert _manifest(out)["files"].keys() == {p.name for p in out.iterdir()} - {MANIFEST}
    assert _predict(model, inp, out) == 0  # and the folder is still pgps's own


def test_sigterm_is_an_interrupt_not_a_kill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture):
    inp, model, out, before = _with_old_outputs(tmp_path)
    from pgps_train import inference

    def terminate(*_args, **_kw):  # noqa: ANN002, ANN003, ANN202
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
            pytest.fail("pgps-predict runs without a SIGTERM handler: a kill loses its cleanup")
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("SIGTERM did not interrupt")

    monkeypatch.setattr(inference, "predict_case", terminate)
    capsys.readouterr()
    previous = signal.getsignal(signal.SIGTERM)
    assert _predict(model, inp, out) == 143
    assert "terminated" in _one_error(capsys)
    assert signal.getsignal(signal.SIGTERM) == previous  # restored
    assert _outputs(out) == before


def test_full_disk_is_one_line_and_keeps_old_outputs(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture):
    inp, model, out, before = _with_old_outputs(tmp_path)

    def no_space(path, *_args, **_kw) -> None:  # noqa: ANN001
        Path(path).write_bytes(b"\x1f\x8b partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli_predict, "write_volume", no_space)
    capsys.readouterr()
    assert _predict(model, inp, out) == 1
    line = _one_error(capsys)  # one line for the whole run, not one per case
    assert "no space left" in line and "2 case(s) not predicted" in line
    assert _outputs(out) == before


def test_two_runs_into_one_folder_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture):
    inp, model, out = _images(tmp_path), _model(tmp_path), tmp_path / "pred"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running pgps-predict holds
        assert _predict(model, inp, out) == 2
        assert "another pgps-predict is writing into this folder" in _one_error(capsys)
        assert list(out.iterdir()) == []
    finally:
        os.close(fd)
    assert _predict(model, inp, out) == 0


def test_stale_temporary_file_of_a_killed_run_is_removed(tmp_path: Path):
    inp, model, out, _ = _with_old_outputs(tmp_path)
    (out / ".pgps-tmp-999999-synth_000.nii.gz").write_bytes(b"half")  # a SIGKILLed run's
    assert _predict(model, inp, out) == 0
    assert not (out / ".pgps-tmp-999999-synth_000.nii.gz").exists()


def test_damaged_manifest_is_refused_without_overwrite(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture):
    inp, model, out, before = _with_old_outputs(tmp_path)
    (out / MANIFEST).write_text("{ not json")
    capsys.readouterr()
    assert _predict(model, inp, out) == 2
    assert "damaged pgps-predict manifest" in _one_error(capsys)
    assert _predict(model, inp, out, "--overwrite") == 0
    assert set(_manifest(out)["files"]) == set(before)


# ------------------------------------------------------------------ checkpoint, stdout


def test_checkpoint_goes_through_load_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture):
    """pgps-predict reads weights only via checkpoint.load_checkpoint (its checksum check)."""
    from pgps_train import inference

    model = _model(tmp_path)
    ckpt = model / "checkpoint_final.pt"

    def damaged(path, *_args, **_kw):  # noqa: ANN001, ANN202
        raise PGPSInputError(f"{path}: sha256 differs from the recorded one (damaged)")

    monkeypatch.setattr(inference, "load_checkpoint", damaged)
    assert _predict(model, _images(tmp_path), tmp_path / "pred") == 2
    assert _one_error(capsys) == f"pgps-predict: error: {ckpt}: sha256 differs from the " \
        "recorded one (damaged)"
    assert not (tmp_path / "pred").exists()


def test_truncated_checkpoint_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture):
    model = _model(tmp_path)
    ckpt = model / "checkpoint_final.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    assert _predict(model, _images(tmp_path), tmp_path / "pred") == 2
    assert _one_error(capsys).startswith(f"pgps-predict: error: {ckpt}: ")


def test_checkpoint_with_other_weights_than_recorded_is_refused(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture):
    """Weights changed after the write (its sha256 no longer matches): one line, exit 2."""
    model = _model(tmp_path)
    ckpt = model / "checkpoint_final.pt"
    state = torch.load(ckpt, weights_only=True)
    state["model"]["weight"] += 1.0  # still a valid file, other predictions
    torch.save(state, ckpt)
    assert _predict(model, _images(tmp_path), tmp_path / "pred") == 2
    assert _one_error(capsys).startswith(f"pgps-predict: error: {ckpt}: ")
    assert not (tmp_path / "pred").exists()


def test_unverified_checkpoint_warns_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture):
    """A checkpoint without a recorded sha256 (older pgps) loads, with one warning line."""
    model = _model(tmp_path)
    ckpt = model / "checkpoint_final.pt"
    torch.save({"model": _conv(1).state_dict()}, ckpt)  # no digest recorded
    assert _predict(model, _images(tmp_path), tmp_path / "pred") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pgps-predict: warning: {ckpt}: ")


class _ClosedPipe:
    """A stdout whose reader went away: every write raises BrokenPipeError."""

    encoding = "utf-8"

    def write(self, _text: str) -> int:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no file descriptor")


def test_closed_stdout_does_not_end_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    inp, out = _images(tmp_path, cases=2), tmp_path / "pred"
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert _predict(_model(tmp_path), inp, out) == 0
    assert {"synth_000.nii.gz", "synth_001.nii.gz"} <= {p.name for p in out.iterdir()}
