"""Inference: sliding window, mirroring, the inverse map to the source grid, and pgps-predict.

Models here are tiny stand-ins (1x1 convolutions and voxel-wise "perfect" classifiers), so
every test checks our plumbing, not a network: the geometry of what is written, and that
preprocessing followed by restore_to_source lands each voxel back where it came from.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from pgps_data.errors import PGPSInputError
from pgps_data.raw.readers import read_volume
from pgps_data.store.store import open_store
from pgps_data.synthetic.dataset import synthetic_case, write_synthetic_dataset
from pgps_train.checkpoint import save_checkpoint
from pgps_train.cli import predict as cli_predict
from pgps_train.inference import (
    config_from_store,
    load_model,
    predict_case,
    predict_volume,
    preprocess_for_model,
    read_case_image,
)

CT_STATS = {"mean": -200.0, "std": 400.0, "percentile_00_5": -1000.0, "percentile_99_5": 600.0}
SIZE = (16, 32, 32)


def _config(channels: int, *, labels=None, label_values=(1, 2), modalities=None,
            target=(1.5, 1.0, 1.0), patch=(8, 16, 16), order=None) -> dict:
    labels = labels or {"background": 0, "organ": 1, "lesion": 2}
    regions = any(isinstance(v, list) for v in labels.values())
    return {
        "network": {"in_channels": channels, "num_classes": 2 if regions else 3},
        "patch": list(patch), "num_classes": 2 if regions else 3,
        "labels": labels, "label_values": list(label_values), "ignore_label": None,
        "regions_class_order": order, "channel_names": ["CT", "MR"][:channels],
        "modalities": modalities or ["CT", "MR"][:channels], "target_spacing": list(target),
        "intensity_statistics": {"0": CT_STATS}, "use_mask_for_norm": False,
        "file_ending": ".nii.gz",
    }


def _conv(channels: int, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Conv3d(channels, classes, 1)


def _model_dir(tmp_path: Path, config: dict, model: nn.Module) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps(config))
    save_checkpoint(folder / "checkpoint_final.pt", {"model": model.state_dict(), "epoch": 1})
    return folder


@pytest.fixture
def fake_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    """pgps_train.networks with a build_network that makes a seeded 1x1 convolution."""
    module = types.ModuleType("pgps_train.networks")
    module.build_network = lambda *, in_channels, num_classes: _conv(in_channels, num_classes, 1)
    monkeypatch.setitem(sys.modules, "pgps_train.networks", module)


class Levels(nn.Module):
    """Voxel-wise classifier: class k where channel 0 is nearest to ``levels[k]``."""

    def __init__(self, levels: list[float]):
        super().__init__()
        self.levels = torch.tensor(levels).view(1, -1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -(((x[:, :1] - self.levels) / 20.0) ** 2)


class Thresholds(nn.Module):
    """Voxel-wise region logits: region i is on where channel 0 exceeds ``cuts[i]``."""

    def __init__(self, cuts: list[float]):
        super().__init__()
        self.cuts = torch.tensor(cuts).view(1, -1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :1] - self.cuts) / 5.0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# ------------------------------------------------------------------------ predict_volume


def test_sliding_window_on_image_smaller_than_patch():
    model = _conv(2)
    image = np.random.default_rng(0).normal(size=(2, 5, 7, 9)).astype(np.float32)
    probs = predict_volume(model, image, (8, 16, 16))
    assert probs.shape == (3, 5, 7, 9) and probs.dtype == np.float32
    # a voxel-wise model: Gaussian blending of identical logits changes nothing
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(image)[None])[0], 0).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_mirroring_is_neutral_for_a_flip_equivariant_model():
    model = _conv(1)
    image = np.random.default_rng(1).normal(size=(1, 12, 20, 20)).astype(np.float32)
    plain = predict_volume(model, image, (8, 8, 8))
    mirrored = predict_volume(model, image, (8, 8, 8), mirror=True, batch_size=2)
    np.testing.assert_allclose(mirrored, plain, atol=1e-5)


def test_mirroring_averages_the_logits_of_all_flips():
    # a kernel along X only: averaging over flips = the X-symmetrised kernel, exactly
    torch.manual_seed(3)
    model = nn.Conv3d(1, 2, (1, 1, 3), padding=(0, 0, 1))
    sym = nn.Conv3d(1, 2, (1, 1, 3), padding=(0, 0, 1))
    with torch.no_grad():
        sym.weight.copy_((model.weight + model.weight.flip(-1)) / 2)
        sym.bias.copy_(model.bias)
    image = np.random.default_rng(2).normal(size=(1, 10, 12, 14)).astype(np.float32)
    mirrored = predict_volume(model, image, (8, 8, 8), mirror=True)
    np.testing.assert_allclose(mirrored, predict_volume(sym, image, (8, 8, 8)), atol=1e-5)
    assert np.abs(mirrored - predict_volume(model, image, (8, 8, 8))).max() > 1e-3


# ------------------------------------------------------------------ the inverse mapping


def _coded_case(tmp_path: Path, number: int = 0) -> tuple[Path, np.ndarray]:
    """A phantom whose intensity codes its label (100, 200, 300 = background, organ,
    lesion; 0 outside the field of view, so cropping happens); oblique, anisotropic."""
    case = synthetic_case(number, size=(20, 40, 40), organ_fraction=0.15, seed=5)
    image = np.where(case.images[0] != 0, 100.0 * (case.label + 1.0), 0.0).astype(np.float32)
    img = nib.Nifti1Image(image.transpose(2, 1, 0), case.affine)
    img.set_qform(case.affine, code=1)
    img.set_sform(case.affine, code=1)
    path = tmp_path / f"{case.case_id}.nii.gz"
    nib.save(img, path)
    return path, case.label


@pytest.mark.parametrize("regions", [False, True], ids=["softmax", "regions"])
def test_perfect_model_lands_back_on_the_source_label(tmp_path: Path, regions: bool):
    path, label = _coded_case(tmp_path)
    if regions:
        config = _config(1, labels={"background": 0, "organ_and_lesion": [1, 2], "lesion": 2},
                         modalities=["noNorm"], order=[1, 2])
        model: nn.Module = Thresholds([150.0, 250.0])
    else:
        config = _config(1, modalities=["noNorm"])
        model = Levels([100.0, 200.0, 300.0])
    vol = read_volume(path)
    _, props = preprocess_for_model(vol.data[None].astype(np.float32), vol.spacing, config)
    assert props["bbox"] != [[0, s] for s in label.shape]  # the crop is exercised
    assert props["shape_after_resample"] != list(label.shape)  # and the resampling
    pred, probs, geometry = predict_case(model, config, [path], return_probabilities=True)
    assert pred.shape == label.shape and pred.dtype == np.uint8
    assert geometry["shape"] == list(label.shape)
    assert _dice(pred >= 1, label >= 1) > 0.95  # organ incl. lesions
    assert _dice(pred == 2, label == 2) > 0.6  # small lesions: resampling blurs more
    assert (pred == label).mean() > 0.98
    outside = np.ones(label.shape, bool)
    outside[tuple(slice(a, b) for a, b in props["bbox"])] = False
    if regions:
        assert probs.shape == (2, *label.shape) and np.all(probs[:, outside] == 0)
    else:
        np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
        assert np.all(probs[0][outside] == 1)


def test_preprocessing_matches_the_store(tiny_raw: Path, tiny_store: Path):
    store = open_store(tiny_store)
    config = config_from_store(store.meta, network={}, patch=(8, 16, 16))
    case = store[store.case_ids[0]]
    paths = [tiny_raw / p for p in case.meta["source_files"]["image"]]
    image, ref = read_case_image(paths, store.channels)
    pre, props = preprocess_for_model(image, ref.spacing, config)
    assert props == case.meta["preprocessing"]
    np.testing.assert_allclose(pre, case.image[...].astype(np.float32), atol=1e-3)


def test_channel_count_is_checked(tmp_path: Path):
    raw = write_synthetic_dataset(tmp_path / "raw", cases=1, test_cases=0, size=SIZE, channels=2)
    path = raw / "imagesTr" / "synth_000.nii.gz"
    with pytest.raises(PGPSInputError, match=r"synth_000\.nii\.gz: has 2 channel\(s\), the model expects 1"):
        read_case_image([path], 1)


# ------------------------------------------------------------------------- pgps-predict


@pytest.mark.parametrize(
    ("channels", "layout", "ending"),
    [(1, "msd", ".nii.gz"), (2, "msd", ".nii.gz"), (2, "nnunet", ".nrrd")],
    ids=["nifti-1ch", "nifti-4d-2ch", "nrrd-2ch-files"],
)
def test_predictions_keep_the_input_geometry(tmp_path: Path, fake_networks: None,
                                            channels: int, layout: str, ending: str):
    raw = write_synthetic_dataset(tmp_path / "raw", cases=1, test_cases=0, size=SIZE,
                                  channels=channels, layout=layout, file_ending=ending)
    model_dir = _model_dir(tmp_path, _config(channels), _conv(channels, 3, 1))
    out = tmp_path / "pred"
    assert cli_predict.main([str(model_dir), str(raw / "imagesTr"), str(out), "--quiet"]) == 0
    reference = raw / "labelsTr" / f"synth_000{ending}"  # same geometry as the images
    written = out / f"synth_000{ending}"
    assert sorted(p.name for p in out.iterdir()) == sorted([".pgps-predict.json", "labels.json",
                                                            written.name])
    src, got = read_volume(reference), read_volume(written)
    assert got.data.shape == src.data.shape and got.data.dtype == np.uint8
    np.testing.assert_allclose(got.affine, src.affine, atol=1e-6)
    assert set(np.unique(got.data)) <= {0, 1, 2}
    if ending == ".nii.gz":
        a, b = nib.load(reference), nib.load(written)
        assert a.get_qform(coded=True)[1] == b.get_qform(coded=True)[1] == 1
        assert a.get_sform(coded=True)[1] == b.get_sform(coded=True)[1] == 1
        np.testing.assert_allclose(b.header.get_zooms()[:3], a.header.get_zooms()[:3], atol=1e-6)
    else:
        a, b = sitk.ReadImage(str(reference)), sitk.ReadImage(str(written))
        for getter in ("GetOrigin", "GetSpacing", "GetDirection"):
            np.testing.assert_allclose(getattr(b, getter)(), getattr(a, getter)(), atol=1e-6)
    # the label map is the argmax of a 1x1 conv: model and case must agree with the library
    model, config = load_model(model_dir)
    label, _, _ = predict_case(model, config, sorted((raw / "imagesTr").iterdir()))
    np.testing.assert_array_equal(got.data, label)


def test_save_probabilities_writes_plain_arrays(tmp_path: Path, fake_networks: None):
    raw = write_synthetic_dataset(tmp_path / "raw", cases=1, test_cases=0, size=SIZE)
    model_dir = _model_dir(tmp_path, _config(1), _conv(1, 3, 1))
    out = tmp_path / "pred"
    args = [str(model_dir), str(raw / "imagesTr"), str(out), "--save-probabilities", "--quiet"]
    assert cli_predict.main(args) == 0
    with np.load(out / "synth_000.npz", allow_pickle=False) as npz:
        probs = npz["probabilities"]
    label = read_volume(out / "synth_000.nii.gz").data
    assert probs.dtype == np.float16 and probs.shape == (3, *label.shape)
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=5e-3)
    meta = json.loads((out / "synth_000.json").read_text())
    assert meta["channels"] == [0, 1, 2] and meta["nonlinearity"] == "softmax"
    values = np.asarray(meta["channels"])[probs.argmax(0)]
    assert (values == label).mean() > 0.999  # float16 rounding may flip near-ties
    assert json.loads((out / "labels.json").read_text())["labels"]["organ"] == 1


def test_bad_input_file_is_one_line_and_others_continue(tmp_path: Path, fake_networks: None,
                                                        capsys: pytest.CaptureFixture):
    raw = write_synthetic_dataset(tmp_path / "raw", cases=1, test_cases=0, size=SIZE)
    (raw / "imagesTr" / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    model_dir = _model_dir(tmp_path, _config(1), _conv(1, 3, 1))
    out = tmp_path / "pred"
    assert cli_predict.main([str(model_dir), str(raw / "imagesTr"), str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pgps-predict: error: ")
    assert "broken.nii.gz" in err[0] and "Traceback" not in err[0]
    assert (out / "synth_000.nii.gz").is_file() and not (out / "broken.nii.gz").exists()


def test_bad_model_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture):
    (tmp_path / "model").mkdir()
    (tmp_path / "in").mkdir()
    assert cli_predict.main([str(tmp_path / "model"), str(tmp_path / "in"),
                             str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"pgps-predict: error: {tmp_path / 'model' / 'model.json'}: missing "
                   f"(is {tmp_path / 'model'} a pgps model directory?)"]


def test_checkpoint_is_loaded_without_pickle(tmp_path: Path):
    config = _config(1)
    model_dir = _model_dir(tmp_path, config, _conv(1, 3, 7))
    model, loaded = load_model(model_dir, builder=lambda **_: _conv(1, 3, 0))
    assert loaded == config
    torch.testing.assert_close(model.weight, _conv(1, 3, 7).weight)
    torch.save({"model": object()}, model_dir / "checkpoint_final.pt")  # needs pickle
    with pytest.raises(PGPSInputError, match=r"checkpoint_final\.pt: ") as info:
        load_model(model_dir, builder=lambda **_: _conv(1, 3, 0))
    assert "\n" not in str(info.value)


def test_input_files_are_grouped_into_cases(tmp_path: Path):
    for name in ["a_0000.nrrd", "a_0001.nrrd", "b.nii.gz", "c_0000.nii.gz", "notes.txt",
                 "._a_0000.nrrd"]:
        (tmp_path / name).write_bytes(b"")
    cases, problems = cli_predict.find_cases(tmp_path, 2)
    assert cases == {"a": [str(tmp_path / "a_0000.nrrd"), str(tmp_path / "a_0001.nrrd")],
                     "b": [str(tmp_path / "b.nii.gz")]}
    assert len(problems) == 1 and "c_XXXX: channel files [0] found, the model needs 0..1" in problems[0]
    one, _ = cli_predict.find_cases(tmp_path, 1)  # one channel: c_0000 predicts case c
    assert one["c"] == [str(tmp_path / "c_0000.nii.gz")] and "a" not in one
