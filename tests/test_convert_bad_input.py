"""Bad inputs: one clear line each, the other cases still converted, nothing half-written.

One MSD dataset carries every kind of bad case next to good ones and is converted once
through the CLI's ``main`` (in-process, one worker, so a spy can see every file opened).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pgps_data.cli.convert import main as convert_main
from pgps_data.cli.inspect import main as inspect_main
from pgps_data.raw import cases as cases_module
from pgps_data.store.store import open_store
from pgps_data.synthetic.dataset import write_synthetic_dataset

GOOD = ["synth_000", "synth_001", "synth_002", "synth_003"]

# case id -> (what the error line must say, the file it must name)
BAD = {
    "bad_truncated": ("", "imagesTr/bad_truncated.nii.gz"),
    "bad_corrupt": ("", "imagesTr/bad_corrupt.nii.gz"),
    "bad_shape": ("differs from imagesTr/bad_shape.nii.gz", "labelsTr/bad_shape.nii.gz"),
    "bad_affine": ("differs from imagesTr/bad_affine", "labelsTr/bad_affine.nii.gz"),
    "bad_values": ("[7]", "labelsTr/bad_values.nii.gz"),
    "bad_nan": ("NaN", "imagesTr/bad_nan.nii.gz"),
    "bad_2d": ("2D", "imagesTr/bad_2d.nii.gz"),
    "bad_4d": ("3 channel", "imagesTr/bad_4d.nii.gz"),
    "bad_missing": ("missing", "imagesTr/bad_missing.nii.gz"),
    "dup": ("used by 2", "dup.nii.gz"),
    "outside_rel": ("outside", "../outside_rel.nii.gz"),
    "outside_abs": ("outside", "outside_abs.nii.gz"),
    "synth_001 (test)": ("also a training case", "imagesTs/synth_001.nii.gz"),
}


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write a (Z, Y, X[, C]) array as NIfTI (file axes i, j, k[, c])."""
    data = np.ascontiguousarray(data.transpose(2, 1, 0, *range(3, data.ndim)))
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _build(raw: Path) -> None:
    """Add one bad case per kind to the synthetic dataset ``raw`` (and one that lacks a label)."""
    meta = json.loads((raw / "dataset.json").read_text())
    tr, lb, ts = raw / "imagesTr", raw / "labelsTr", raw / "imagesTs"
    img0 = nib.load(str(tr / "synth_000.nii.gz"))
    lab0 = nib.load(str(lb / "synth_000.nii.gz"))
    image = np.asarray(img0.dataobj).transpose(2, 1, 0)  # (Z, Y, X)
    label = np.asarray(lab0.dataobj).transpose(2, 1, 0)
    aff = img0.affine

    def case(cid: str, img: Path | None = None, lab: Path | None = None) -> None:
        meta["training"].append({"image": f"./imagesTr/{cid}.nii.gz",
                                 "label": f"./labelsTr/{cid}.nii.gz"})
        if img is None:
            shutil.copy(tr / "synth_000.nii.gz", tr / f"{cid}.nii.gz")
        if lab is None:
            shutil.copy(lb / "synth_000.nii.gz", lb / f"{cid}.nii.gz")

    good_bytes = (tr / "synth_000.nii.gz").read_bytes()
    (tr / "bad_truncated.nii.gz").write_bytes(good_bytes[: len(good_bytes) // 2])
    case("bad_truncated", img=tr)
    rng = np.random.default_rng(0)
    (tr / "bad_corrupt.nii.gz").write_bytes(rng.integers(0, 256, 4000, np.uint8).tobytes())
    case("bad_corrupt", img=tr)
    _nifti(lb / "bad_shape.nii.gz", label[:-2], aff)
    case("bad_shape", lab=lb)
    shifted = aff.copy()
    shifted[:3, 3] += 5.0
    _nifti(lb / "bad_affine.nii.gz", label, shifted)
    case("bad_affine", lab=lb)
    wrong = label.copy()
    wrong[0, 0, 0] = 7
    _nifti(lb / "bad_values.nii.gz", wrong, aff)
    case("bad_values", lab=lb)
    nan = image.astype(np.float32)
    nan[3, 4, 5] = np.nan
    nan[4, 4, 5] = np.inf
    _nifti(tr / "bad_nan.nii.gz", nan, aff)
    case("bad_nan", img=tr)
    nib.save(nib.Nifti1Image(image[5].T.copy(), aff), str(tr / "bad_2d.nii.gz"))
    case("bad_2d", img=tr)
    _nifti(tr / "bad_4d.nii.gz", np.stack([image] * 3, -1).astype(np.float32), aff)
    case("bad_4d", img=tr)
    case("bad_missing", img=tr)  # listed, never written
    (tr / "sub").mkdir()
    shutil.copy(tr / "synth_000.nii.gz", tr / "dup.nii.gz")
    shutil.copy(tr / "synth_000.nii.gz", tr / "sub" / "dup.nii.gz")
    shutil.copy(lb / "synth_000.nii.gz", lb / "dup.nii.gz")
    meta["training"] += [{"image": "./imagesTr/dup.nii.gz", "label": "./labelsTr/dup.nii.gz"},
                         {"image": "./imagesTr/sub/dup.nii.gz", "label": "./labelsTr/dup.nii.gz"}]
    # outside the folder: a real (valid!) file next to it, and an absolute path
    shutil.copy(tr / "synth_000.nii.gz", raw.parent / "outside_rel.nii.gz")
    meta["training"] += [
        {"image": "../outside_rel.nii.gz", "label": "./labelsTr/synth_000.nii.gz"},
        {"image": str(raw.parent / "abs" / "outside_abs.nii.gz"),
         "label": "./labelsTr/synth_000.nii.gz"}]
    shutil.copy(ts / "synth_100.nii.gz", ts / "synth_001.nii.gz")
    meta["test"].append("./imagesTs/synth_001.nii.gz")
    # allowed: a case without any lesion voxel
    _nifti(lb / "no_lesion.nii.gz", np.where(label == 2, 1, label).astype(np.uint8), aff)
    case("no_lesion", lab=lb)
    (raw / "dataset.json").write_text(json.dumps(meta, indent=2))


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Convert the dataset with every bad case once, spying on every file the cases open."""
    base = tmp_path_factory.mktemp("bad")
    raw = write_synthetic_dataset(base / "Task09_Bad", cases=4, test_cases=1,
                                  size=(16, 32, 32), seed=1)
    _build(raw)
    out = base / "bad.zarr"
    opened: list[str] = []
    real_read = cases_module.read_volume

    def spy(path, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        opened.append(str(path))
        return real_read(path, *a, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(cases_module, "read_volume", spy)
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            rc = convert_main([str(raw), str(out), "--workers", "1", "--quiet"])
    finally:
        mp.undo()
    return {"raw": raw, "out": out, "rc": rc, "stdout": stdout.getvalue(),
            "stderr": stderr.getvalue(), "opened": opened}


def test_bad_cases_fail_and_the_cli_says_so(bad_run: dict) -> None:
    assert bad_run["rc"] == 1
    err = bad_run["stderr"]
    assert "Traceback" not in err and "Traceback" not in bad_run["stdout"]
    assert f"pgps-convert: {len(BAD)} case(s) failed:" in err
    lines = [line.strip() for line in err.splitlines()[1:]]
    assert len(lines) == len(BAD), lines  # one line per bad case, nothing else
    for cid, (what, file) in BAD.items():
        hits = [line for line in lines if file in line and what in line]
        assert len(hits) == 1, (cid, lines)
    assert "6 case(s) converted" in bad_run["stdout"]  # 4 good, no_lesion, 1 test case


def test_good_cases_are_converted_and_bad_ones_not_written(bad_run: dict) -> None:
    store = open_store(bad_run["out"])
    assert store.case_ids == sorted([*GOOD, "no_lesion"])
    assert store.test_ids == ["synth_100"]
    on_disk = {p.name for p in bad_run["out"].glob("*/*") if p.is_dir()}
    assert on_disk == {*GOOD, "no_lesion", "synth_100"}  # no half-written folder
    excluded = store.meta["excluded_cases"]
    assert len(excluded) == 8  # the ones found bad while reading (statistics pass)


def test_files_outside_the_dataset_are_never_opened(bad_run: dict) -> None:
    opened = [Path(p).resolve() for p in bad_run["opened"]]
    raw = bad_run["raw"].resolve()
    assert opened and all(raw in p.parents for p in opened)
    assert not any("outside" in p.name for p in opened)
    assert not any(p.name == "dup.nii.gz" for p in opened)
    assert (raw.parent / "outside_rel.nii.gz").is_file()  # it exists: refused, not missing


def test_absent_label_is_allowed_and_shown(bad_run: dict, capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    case = open_store(bad_run["out"])["no_lesion"]
    assert case.foreground(2).shape == (0, 3)
    assert case.meta["label_counts"]["2"] == 0 and len(case.foreground(1)) > 0
    monkeypatch.setenv("COLUMNS", "200")
    assert inspect_main([str(bad_run["out"])]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if "no_lesion" in line]
    assert len(row) == 1 and "absent" in row[0]


# ------------------------------------------------------------------- whole-run refusals


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("small") / "Task02_Small", cases=3,
                                   test_cases=0, size=(16, 32, 32), seed=2)


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    rc = convert_main([*argv, "--workers", "1", "--quiet"])
    got = capsys.readouterr()
    assert "Traceback" not in got.err
    return rc, got.out, got.err


def test_missing_dataset_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "raw" / "imagesTr").mkdir(parents=True)
    rc, _, err = _cli([str(tmp_path / "raw"), str(tmp_path / "o.zarr")], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and "dataset.json" in err and "missing" in err
    assert not (tmp_path / "o.zarr").exists()


def test_output_that_is_not_a_store_is_left_untouched(small_raw: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("do not delete")
    for extra in ([], ["--overwrite"]):
        rc, _, err = _cli([str(small_raw), str(out), *extra], capsys)
        assert rc == 2 and "not a pgps store" in err and str(out) in err
        assert err.count("\n") == 1
        assert sorted(os.listdir(out)) == ["thesis.txt"]
        assert (out / "thesis.txt").read_text() == "do not delete"
    afile = tmp_path / "file.zarr"
    afile.write_text("x")
    rc, _, err = _cli([str(small_raw), str(afile)], capsys)
    assert rc == 2 and afile.read_text() == "x"


def test_rerun_with_other_inputs_needs_overwrite(small_raw: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(small_raw, raw)
    out = tmp_path / "s.zarr"
    assert _cli([str(raw), str(out)], capsys)[0] == 0
    before = open_store(out).meta["target_spacing"]
    rc, _, err = _cli([str(raw), str(out), "--spacing", "3", "2", "2"], capsys)
    assert rc == 2 and "different inputs" in err and "--overwrite" in err
    # a changed case file is a different input too
    label = raw / "labelsTr" / "synth_001.nii.gz"
    data = gzip.decompress(label.read_bytes())
    label.write_bytes(gzip.compress(data, compresslevel=9))
    rc, _, err = _cli([str(raw), str(out)], capsys)
    assert rc == 2 and "different inputs" in err
    assert open_store(out).meta["target_spacing"] == before  # untouched
    rc, out_text, _ = _cli([str(raw), str(out), "--spacing", "3", "2", "2", "--overwrite"],
                           capsys)
    assert rc == 0 and "3 case(s) converted" in out_text
    assert open_store(out).spacing == (3.0, 2.0, 2.0)
    rc, out_text, _ = _cli([str(raw), str(out), "--spacing", "3", "2", "2"], capsys)
    assert rc == 0 and "0 case(s) converted, 3 already complete" in out_text


def test_an_unknown_codec_is_one_line_before_anything_is_read(small_raw: Path,
                                                               tmp_path: Path) -> None:
    """convert() (the Python API; the CLI's --codec choices are the same names) checks the
    codec with the store's own check (chunking.check_codec), before the dataset is read."""
    from pgps_data.errors import PGPSInputError
    from pgps_data.raw.convert import convert
    from pgps_data.store.chunking import CODECS

    logged: list[str] = []
    with pytest.raises(PGPSInputError) as exc:
        convert(small_raw, tmp_path / "c.zarr", codec="zstd", quiet=True, log=logged.append)
    assert str(exc.value) == f"unknown codec 'zstd' (use one of: {', '.join(CODECS)})"
    assert logged == [] and not (tmp_path / "c.zarr").exists()
