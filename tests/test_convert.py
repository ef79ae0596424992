"""End-to-end tests of `pgps-convert` and `pgps-inspect` on tiny synthetic datasets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pgps_data.cli.convert import main as convert_main
from pgps_data.cli.inspect import main as inspect_main
from pgps_data.errors import PGPSInputError
from pgps_data.raw import readers
from pgps_data.raw.convert import convert
from pgps_data.raw.preprocess import restore_to_source
from pgps_data.store.foreground import index_count
from pgps_data.store.store import open_store
from pgps_data.synthetic.dataset import write_synthetic_dataset
from tests.conftest import TINY, assert_same_store

SMALL = {"cases": 3, "test_cases": 0, "size": (16, 32, 32), "seed": 5}


def _convert(raw: Path, out: Path, **kw) -> tuple[dict, list[str]]:  # noqa: ANN003
    lines: list[str] = []
    summary = convert(raw, out, quiet=True, log=lines.append, **{"workers": 1, **kw})
    assert summary["errors"] == [], summary["errors"]
    return summary, lines


def _inspect_json(store: Path, capsys: pytest.CaptureFixture) -> dict:
    assert inspect_main([str(store), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def nnunet_regions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nnU-Net layout, two channels (CT + MR, one file each), regions and an ignore label."""
    base = tmp_path_factory.mktemp("regions")
    raw = write_synthetic_dataset(base / "Dataset002_Regions", layout="nnunet", channels=2,
                                  ignore=True, regions=True, **SMALL)
    out = base / "regions.zarr"
    summary, lines = _convert(raw, out)
    assert summary["layout"] == "nnunet"
    assert "NNUNET layout" in lines[0]
    return out


@pytest.fixture(scope="module")
def no_lesion(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """One seed written as .nii.gz, .nrrd and .mha (nnU-Net layout), lesions=0; each converted."""
    base = tmp_path_factory.mktemp("endings")
    made = {}
    for ending in (".nii.gz", ".nrrd", ".mha"):
        name = ending.strip(".").replace(".", "")
        raw = write_synthetic_dataset(base / f"Dataset003_{name}", layout="nnunet",
                                      file_ending=ending, lesions=0, **SMALL)
        _convert(raw, base / f"{name}.zarr")
        made[ending] = (raw, base / f"{name}.zarr")
    return made


# ------------------------------------------------------------------- layouts and content


def test_msd_layout_detected_and_cases_listed(tiny_store: Path) -> None:
    log = (tiny_store.parent / "convert.log").read_text()
    assert log.startswith("Detected MSD layout")
    store = open_store(tiny_store)
    assert store.meta["source_layout"] == "msd"
    assert store.case_ids == [f"synth_{n:03d}" for n in range(TINY["cases"])]
    assert store.test_ids == ["synth_100"]
    assert store.labels == {"background": 0, "organ": 1, "lesion": 2}
    assert store.meta["complete"] is True
    for case in store:
        assert case.image.shape[0] == 1 and case.label.shape == case.shape
        assert case.meta["complete"] is True
        assert list(case.shape) == case.meta["preprocessing"]["shape_after_resample"]


def test_test_cases_are_kept_apart(tiny_store: Path) -> None:
    store = open_store(tiny_store)
    test = store["synth_100"]
    assert "synth_100" not in store.case_ids and [c.id for c in store] == store.case_ids
    assert test.is_test and test.label is None
    assert "label" not in test.group and test.meta["index_arrays"] == []
    assert not any(name.startswith("fg_") for name in test.group.array_keys())
    image, label = test.read((0, 0, 0), (8, 8, 8))
    assert image.shape == (1, 8, 8, 8) and label is None
    assert (tiny_store / "test" / "synth_100").is_dir()
    assert not (tiny_store / "cases" / "synth_100").exists()


def test_nnunet_two_channels_regions_and_ignore(nnunet_regions: Path) -> None:
    store = open_store(nnunet_regions)
    assert store.meta["source_layout"] == "nnunet"
    assert store.meta["channel_names"] == ["CT", "MR"]
    assert store.labels == {"background": 0, "whole": [1, 2, 3], "core": [2, 3],
                            "enhancing": [3], "ignore": 4}
    assert store.ignore_label == 4
    assert store.meta["regions_class_order"] == [1, 2, 3]
    assert store.label_values == [1, 2, 3]
    for case in store:
        image, label = case.image[...], case.label[...]
        assert image.shape == (2, *label.shape)
        assert np.std(image[1]) > 0.1  # the MR channel is really there, z-scored
        assert (label == 4).any()  # the ignore label survives resampling
        annotated = case.annotated()
        assert annotated.shape[1] == 3 and len(annotated) > 0
        assert not (label[tuple(annotated.T)] == 4).any()
        n_annotated = int((label != 4).sum())
        assert len(annotated) == index_count(n_annotated)
        assert case.meta["label_counts"]["4"] == int((label == 4).sum())
        assert "fg_4" not in case.meta["index_arrays"]


def test_annotated_absent_without_ignore_label(tiny_store: Path) -> None:
    case = open_store(tiny_store)["synth_000"]
    with pytest.raises(KeyError):
        case.annotated()


def test_itk_files_give_the_nifti_store(no_lesion: dict[str, tuple[Path, Path]]) -> None:
    _, nifti = no_lesion[".nii.gz"]
    for ending in (".nrrd", ".mha"):
        raw, store = no_lesion[ending]
        assert any(raw.glob(f"imagesTr/*{ending}"))
        assert_same_store(nifti, store, atol=1e-4)


# ------------------------------------------------------------------- foreground indices


def test_indices_lie_on_their_label_and_follow_the_count_rule(tiny_store: Path) -> None:
    store = open_store(tiny_store)
    sampled = 0
    for case in store:
        label = case.label[...]
        for v in store.label_values:
            idx = case.foreground(v)
            n = case.meta["label_counts"][str(v)]
            assert n == int((label == v).sum())  # the stored count is exact
            assert len(idx) == max(min(10000, n), math.ceil(0.01 * n))
            assert idx.shape[1] == 3 and (label[tuple(idx.T)] == v).all()
            assert len(np.unique(idx, axis=0)) == len(idx)  # drawn without replacement
            sampled += len(idx) < n
    assert sampled, "no case took the sampling branch (organ > 10000 voxels)"


def test_absent_label_gives_empty_indices_and_inspect_says_absent(
        no_lesion: dict[str, tuple[Path, Path]], capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, path = no_lesion[".nii.gz"]
    store = open_store(path)
    for case in store:
        assert case.meta["label_counts"]["2"] == 0
        assert case.foreground(2).shape == (0, 3)
        assert case.labels_present() == [1]
    desc = _inspect_json(path, capsys)
    assert all(c["foreground_voxels"]["2"] == 0 for c in desc["cases"])
    monkeypatch.setenv("COLUMNS", "200")
    assert inspect_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("absent") == len(store.case_ids)


# ------------------------------------------------------------------- determinism, parallel


def test_converting_twice_gives_identical_stores(tiny_raw: Path, tiny_store: Path,
                                                 tmp_path: Path) -> None:
    _convert(tiny_raw, tmp_path / "again.zarr")
    assert_same_store(tiny_store, tmp_path / "again.zarr")
    a, b = open_store(tiny_store).meta, open_store(tmp_path / "again.zarr").meta
    assert a["intensity_statistics"] == b["intensity_statistics"]
    assert a["target_spacing"] == b["target_spacing"]


def test_two_worker_processes_give_the_same_store(tiny_raw: Path, tiny_store: Path,
                                                  tmp_path: Path) -> None:
    _convert(tiny_raw, tmp_path / "par.zarr", workers=2)
    assert_same_store(tiny_store, tmp_path / "par.zarr")
    a, b = open_store(tiny_store).meta, open_store(tmp_path / "par.zarr").meta
    assert a["intensity_statistics"] == b["intensity_statistics"]
    assert a["foreground_fraction"] == b["foreground_fraction"]


# ------------------------------------------------------------------- inverse mapping


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd"])
def test_forward_then_inverse_restores_the_source_label(
        tiny_raw: Path, tiny_store: Path, no_lesion: dict[str, tuple[Path, Path]],
        tmp_path: Path, ending: str) -> None:
    root, path = (tiny_raw, tiny_store) if ending == ".nii.gz" else no_lesion[ending]
    store = open_store(path)
    for cid in store.case_ids[:2]:
        case = store[cid]
        source_path = root / case.meta["source_files"]["label"]
        source = readers.read_volume(source_path)
        restored = restore_to_source(case.label[...], case.meta["preprocessing"], order=1)
        out = tmp_path / f"{cid}{ending}"
        readers.write_volume(out, restored, case.meta["geometry"])
        back = readers.read_volume(out)
        assert back.data.shape == source.data.shape
        np.testing.assert_allclose(back.affine, source.affine, atol=1e-6, rtol=0)
        if ending == ".nii.gz":  # header geometry too, as nibabel itself reads it
            a, b = nib.load(str(out)), nib.load(str(source_path))
            np.testing.assert_allclose(a.affine, b.affine, atol=1e-6, rtol=0)
            assert a.header.get_qform(coded=True)[1] == b.header.get_qform(coded=True)[1]
            assert a.header.get_sform(coded=True)[1] == b.header.get_sform(coded=True)[1]
        got, want = np.asarray(back.data), np.asarray(source.data)
        assert (got == want).mean() > 0.99
        organ = 2 * ((got == 1) & (want == 1)).sum() / ((got == 1).sum() + (want == 1).sum())
        assert organ > 0.9


# ------------------------------------------------------------------- inspect and options


def test_inspect_json_and_table(tiny_store: Path, capsys: pytest.CaptureFixture,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    desc = _inspect_json(tiny_store, capsys)
    for key in ("cases", "training_cases", "test_cases", "target_spacing", "foreground_fraction",
                "chunk_shape", "shard_shape", "codec", "size_on_disk_bytes", "labels"):
        assert key in desc, key
    assert desc["training_cases"] == 4 and desc["test_cases"] == 1
    assert desc["codec"] == "default" and len(desc["chunk_shape"]) == 3
    assert desc["size_on_disk_bytes"] > 0
    assert set(desc["foreground_fraction"]) == {"1", "2"}
    assert 0 < desc["foreground_fraction"]["2"] < desc["foreground_fraction"]["1"] < 1
    store = open_store(tiny_store)
    rows = {c["case_id"]: c for c in desc["cases"]}
    assert set(rows) == set(store.case_ids + store.test_ids)
    for cid in store.case_ids:
        assert rows[cid]["shape"] == list(store[cid].shape)
        n = store[cid].meta["label_counts"]["1"]
        assert rows[cid]["foreground_fraction"]["1"] == pytest.approx(n / np.prod(store[cid].shape))
        assert len(rows[cid]["source_spacing"]) == 3
    monkeypatch.setenv("COLUMNS", "200")
    assert inspect_main([str(tiny_store)]) == 0
    table = capsys.readouterr().out
    for text in ("MSD".lower(), "synth_000", "synth_100", "test", "organ", "lesion",
                 "32×32×32"):
        assert text in table, text


def test_inspect_refuses_a_non_store(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert inspect_main([str(tmp_path / "nothing.zarr")]) == 2
    err = capsys.readouterr().err
    assert "nothing.zarr" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_codec_none_and_spacing_are_honoured(tiny_raw: Path, tiny_store: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "raw_codec.zarr"
    rc = convert_main([str(tiny_raw), str(out), "--workers", "1", "--quiet", "--codec", "none",
                       "--spacing", "3.0", "1.5", "1.5"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "5 case(s) converted" in printed.out
    store, ref = open_store(out), open_store(tiny_store)
    assert store.spacing == (3.0, 1.5, 1.5)
    assert store.meta["layout"]["codec"] == "none"
    assert store.meta["layout"]["compressor"] == "none"
    for cid in store.case_ids:
        case, full = store[cid], ref[cid]
        assert case.meta["preprocessing"]["spacing_target"] == [3.0, 1.5, 1.5]
        src = case.meta["preprocessing"]["shape_after_crop"]
        spacing = case.meta["preprocessing"]["spacing_source"]
        want = [round(n * s / t) for n, s, t in zip(src, spacing, (3.0, 1.5, 1.5))]
        assert list(case.shape) == want
        assert np.prod(case.shape) < np.prod(full.shape) / 2
        meta = json.loads((out / "cases" / cid / "image" / "zarr.json").read_text())
        assert not any(c["name"] in ("blosc", "zstd", "gzip") for c in _codecs(meta))
        meta = json.loads((tiny_store / "cases" / cid / "image" / "zarr.json").read_text())
        assert any(c["name"] == "blosc" for c in _codecs(meta))  # the default compresses
    assert _inspect_json(out, capsys)["codec"] == "none"


def _codecs(meta: dict) -> list[dict]:
    found = []
    for c in meta.get("codecs", []):
        found.append(c)
        found += _codecs(c.get("configuration", {}))
    return found


def test_default_store_is_read_by_the_fast_path(tiny_store: Path) -> None:
    store = open_store(tiny_store)
    case = store["synth_001"]
    assert case.uses_fast_path
    image, label = case.read((2, 3, 4), (8, 16, 16))
    np.testing.assert_array_equal(image, case.image[:, 2:10, 3:19, 4:20])
    np.testing.assert_array_equal(label, case.label[2:10, 3:19, 4:20])
    assert store["synth_100"].uses_fast_path


def test_statistics_pass_keeps_nnunets_exact_sample() -> None:
    """The statistics pass ships (value, count) histograms instead of nnU-Net's raw draw:
    the same multiset (same RandomState stream across channels) and the same statistics."""
    from pgps_data.raw.cases import foreground_histograms
    from pgps_data.raw.convert import stats_from_histograms
    from pgps_data.raw.preprocess import compute_intensity_stats, foreground_intensity_samples

    rng = np.random.default_rng(0)
    images = [np.rint(rng.normal(40, 30, (2, 6, 20, 20))).astype(np.float32) for _ in range(3)]
    labels = [(rng.random((6, 20, 20)) < f).astype(np.uint8) for f in (0.3, 0.05, 0.0)]
    hists, raw = [], []
    for image, label in zip(images, labels):
        drawn = foreground_intensity_samples(image, label, 50_000)
        hist = foreground_histograms(image, label, 50_000, [1])
        values, counts = np.unique(drawn[1], return_counts=True)
        np.testing.assert_array_equal(hist[1][0], values)  # channel 1: after channel 0's draw
        np.testing.assert_array_equal(hist[1][1], counts)
        hists.append(hist[1])
        raw.append(drawn[1])
    got, want = stats_from_histograms(hists), compute_intensity_stats(raw)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-6), key
    with pytest.raises(PGPSInputError, match="no foreground"):
        stats_from_histograms([hists[2]])
