"""Opt-in: convert real scans (pyradiomics 3.0.1's test data: brain MR and lung CT, .nrrd).

Run with ``PGPS_REALDATA=1``. The source archive is fetched once with pip (the ordinary
client) into ``$PGPS_CACHE`` (default ``~/.cache/pgps``) and its ``data/`` folder unpacked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pgps_data.raw import readers
from pgps_data.raw.convert import convert
from pgps_data.raw.preprocess import restore_to_source
from pgps_data.store.describe import describe
from pgps_data.store.foreground import index_count
from pgps_data.store.store import open_store

pytestmark = pytest.mark.skipif(
    os.environ.get("PGPS_REALDATA") != "1",
    reason="real-data test: set PGPS_REALDATA=1 (downloads pyradiomics 3.0.1's sources, 34 MB)",
)

PACKAGE = "pyradiomics==3.0.1"
SETS = {"brain": ("MR", ["brain1", "brain2"]), "lung": ("CT", ["lung1", "lung2"])}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pyradiomics' ``data/`` folder (its .nrrd scans), from the cached source archive."""
    cache = Path(os.environ.get("PGPS_CACHE", Path.home() / ".cache" / "pgps"))
    cache.mkdir(parents=True, exist_ok=True)
    archives = sorted(cache.glob("pyradiomics-3.0.1.tar.gz"))
    if not archives:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                        "--no-build-isolation", "--no-binary", ":all:", PACKAGE, "-d",
                        str(cache)], check=True, capture_output=True, timeout=600)
        archives = sorted(cache.glob("pyradiomics-3.0.1.tar.gz"))
    assert archives, f"pip download {PACKAGE} left no source archive in {cache}"
    out = tmp_path_factory.mktemp("pyradiomics")
    with tarfile.open(archives[0]) as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and m.name.split("/")[-2:-1] == ["data"]
                   and m.name.endswith(".nrrd")]
        tar.extractall(out, members=members, filter="data")
    found = list(out.glob("*/data"))
    assert len(found) == 1
    return found[0]


def _nnunet_raw(data: Path, dest: Path, modality: str, names: list[str]) -> Path:
    """An nnU-Net v2 raw dataset of copies (our layout checks refuse symlinks outside)."""
    (dest / "imagesTr").mkdir(parents=True)
    (dest / "labelsTr").mkdir()
    for name in names:
        shutil.copy(data / f"{name}_image.nrrd", dest / "imagesTr" / f"{name}_0000.nrrd")
        shutil.copy(data / f"{name}_label.nrrd", dest / "labelsTr" / f"{name}.nrrd")
    (dest / "dataset.json").write_text(json.dumps({
        "name": f"pyradiomics_{modality}", "channel_names": {"0": modality},
        "labels": {"background": 0, "lesion": 1}, "numTraining": len(names),
        "file_ending": ".nrrd"}))
    return dest


@pytest.mark.parametrize("which", sorted(SETS))
def test_real_scans_convert(data_dir: Path, tmp_path: Path, which: str) -> None:
    modality, names = SETS[which]
    raw = _nnunet_raw(data_dir, tmp_path / f"Dataset900_{which}", modality, names)
    lines: list[str] = []
    summary = convert(raw, tmp_path / f"{which}.zarr", workers=2, quiet=True,
                      log=lines.append)
    assert summary["errors"] == [] and summary["converted"] == len(names), summary
    assert lines[0].startswith("Detected NNUNET layout")
    store = open_store(tmp_path / f"{which}.zarr")
    assert store.case_ids == sorted(names) and store.meta["complete"] is True
    assert store.meta["modalities"] == [modality]
    assert ("0" in store.meta["intensity_statistics"]) == (modality == "CT")
    desc = describe(store)
    assert desc["training_cases"] == len(names) and desc["foreground_fraction"]["1"] > 0
    for case in store:
        label = case.label[...]
        n = case.meta["label_counts"]["1"]
        assert n == int((label == 1).sum()) > 0
        idx = case.foreground(1)
        assert len(idx) == index_count(n) and (label[tuple(idx.T)] == 1).all()
        # a crop centred on the lesion: the fast read equals zarr's own slicing
        patch = np.minimum((16, 64, 64), case.shape)
        origin = np.clip(idx[len(idx) // 2] - patch // 2, 0, np.asarray(case.shape) - patch)
        image, crop = case.read(origin, patch)
        box = tuple(slice(o, o + p) for o, p in zip(origin, patch))
        np.testing.assert_array_equal(crop, label[box])
        np.testing.assert_array_equal(image, case.image[(slice(None), *box)])
        assert (crop == 1).any() and np.isfinite(image).all() and image.std() > 0
        # and back into the scan's own geometry
        source = readers.read_volume(raw / case.meta["source_files"]["label"])
        restored = restore_to_source(label, case.meta["preprocessing"], order=1)
        readers.write_volume(tmp_path / "back.nrrd", restored, case.meta["geometry"])
        back = readers.read_volume(tmp_path / "back.nrrd")
        np.testing.assert_allclose(back.affine, source.affine, atol=1e-6, rtol=0)
        got, want = back.data == 1, source.data == 1
        assert 2 * (got & want).sum() / (got.sum() + want.sum()) > 0.85
