"""Safety of ingest (issue 7, items 1 and 9): case ids never escape the store, datasets
built from symlinks convert, and every refusal is one line naming the entry or the file.

The end-to-end probes run :func:`pgps_data.raw.convert.convert` (one worker,
in-process) on small synthetic datasets; the rest only list folders with ``discover``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pgps_data.errors import PGPSInputError
from pgps_data.raw.cases import convert_case, fingerprint_case
from pgps_data.raw.convert import convert
from pgps_data.raw.layouts import CaseSpec, check_case_id, discover
from pgps_data.raw.readers import read_volume
from pgps_data.store.store import open_store
from pgps_data.synthetic.dataset import write_synthetic_dataset

SMALL = {"cases": 2, "test_cases": 1, "size": (16, 32, 32), "seed": 5}
TRAIN_IDS = ["synth_000", "synth_001"]


def _convert(raw: Path, out: Path) -> tuple[dict, list[str]]:
    lines: list[str] = []
    summary = convert(raw, out, workers=1, quiet=True, log=lines.append)
    return summary, lines


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


# ------------------------------------------------------------------ item 1: case ids


def test_check_case_id_accepts_safe_names_only() -> None:
    for ok in ("synth_000", "BraTS-GLI-00001-000", "case.1", "a"):
        assert check_case_id(ok) is None, ok
    for bad in ("", ".", "..", "../x", "/abs/path", "a/b", "a\\b", "a b", "caf\u00e9",
                "x\ny", "zarr.json", "ZARR.JSON", ".zattrs", "__meta", "a" * 256, None, 3):
        problem = check_case_id(bad)  # type: ignore[arg-type]
        assert isinstance(problem, str) and problem and "\n" not in problem, bad


@pytest.fixture(scope="module")
def dict_probe(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """nnU-Net ``dataset`` dict whose keys are an absolute path, ``../x`` and ``../../y``,
    each pointing at a valid case: converted once."""
    base = tmp_path_factory.mktemp("dictkeys")
    raw = write_synthetic_dataset(base / "Dataset001_Keys", layout="nnunet", **SMALL)
    victim = base / "victim"
    victim.mkdir()
    (victim / "sentinel.txt").write_text("the user's own file")
    meta = json.loads((raw / "dataset.json").read_text())
    entry = {"images": ["imagesTr/synth_000_0000.nii.gz"], "label": "labelsTr/synth_000.nii.gz"}
    meta["dataset"] = {
        cid: {"images": [f"imagesTr/{cid}_0000.nii.gz"], "label": f"labelsTr/{cid}.nii.gz"}
        for cid in TRAIN_IDS
    }
    meta["dataset"].update({str(victim): entry, "../x": entry, "../../y": entry})
    (raw / "dataset.json").write_text(json.dumps(meta))
    out = base / "keys.zarr"
    summary, lines = _convert(raw, out)
    return {"base": base, "raw": raw, "out": out, "victim": victim, "summary": summary,
            "lines": lines}


def test_absolute_dataset_key_never_touches_that_folder(dict_probe: dict) -> None:
    victim = dict_probe["victim"]
    assert sorted(os.listdir(victim)) == ["sentinel.txt"]  # nothing deleted, nothing written
    assert (victim / "sentinel.txt").read_text() == "the user's own file"
    hits = [e for e in dict_probe["summary"]["errors"] if f"dataset[{str(victim)!r}]" in e]
    assert len(hits) == 1 and "case id" in hits[0] and "dataset.json" in hits[0]


def test_dotdot_dataset_keys_are_refused_and_the_rest_converts(dict_probe: dict) -> None:
    out, base = dict_probe["out"], dict_probe["base"]
    assert not (out / "x").exists() and not (base / "y").exists()
    errors = dict_probe["summary"]["errors"]
    assert len(errors) == 3 and all("\n" not in e for e in errors)
    for key in ("../x", "../../y"):
        assert sum(f"dataset[{key!r}]" in e and "case refused" in e for e in errors) == 1
    store = open_store(out)
    assert store.case_ids == TRAIN_IDS and store.test_ids == ["synth_100"]
    assert sorted(p.name for p in (out / "cases").iterdir() if p.is_dir()) == TRAIN_IDS


def test_image_named_dotdot_does_not_delete_the_store(tmp_path: Path) -> None:
    raw = write_synthetic_dataset(tmp_path / "Dataset002_Dots", layout="nnunet", **SMALL)
    shutil.copy(raw / "imagesTr/synth_000_0000.nii.gz", raw / "imagesTr/.._0000.nii.gz")
    shutil.copy(raw / "labelsTr/synth_000.nii.gz", raw / "labelsTr/...nii.gz")
    shutil.copy(raw / "imagesTs/synth_100_0000.nii.gz", raw / "imagesTs/.._0000.nii.gz")
    out = tmp_path / "dots.zarr"
    summary, _ = _convert(raw, out)
    store = open_store(out)  # the store survived, with every good case
    assert store.case_ids == TRAIN_IDS and store.test_ids == ["synth_100"]
    assert summary["converted"] == 3
    errors = summary["errors"]
    assert len(errors) == 2, errors
    for folder in ("imagesTr", "imagesTs"):
        assert sum(f"{folder}/.._0000.nii.gz" in e and "'..'" in e for e in errors) == 1


def test_msd_ids_from_file_names_are_checked_training_and_test(tmp_path: Path) -> None:
    root = tmp_path / "Task01"
    for name in ("ok", "..", "bad name"):
        _touch(root / f"imagesTr/{name}.nii.gz")
        _touch(root / f"labelsTr/{name}.nii.gz")
    _touch(root / "imagesTs/..nii.gz")
    _touch(root / "imagesTs/t1.nii.gz")
    meta = {"name": "T", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "a"},
            "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"}
                         for n in ("ok", "..", "bad name")],
            "test": ["./imagesTs/..nii.gz", "./imagesTs/t1.nii.gz"]}
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = discover(root)
    assert [c.case_id for c in spec.training] == ["ok"]
    assert [c.case_id for c in spec.test] == ["t1"]
    text = "\n".join(spec.problems)
    assert "training[1]" in text and "'.'" in text
    assert "training[2]" in text and "'bad name'" in text
    assert "test[0]" in text
    assert len(spec.problems) == 3


def test_convert_case_refuses_an_unsafe_id_before_writing(tmp_path: Path) -> None:
    """Defence in depth: a CaseSpec built by hand with id '..' is refused by the writer
    task (its folder ``cases/..`` would be the store itself)."""
    raw = write_synthetic_dataset(tmp_path / "Dataset003_Api", layout="nnunet", **SMALL)
    out = tmp_path / "api.zarr"
    assert _convert(raw, out)[0]["errors"] == []
    spec, store = discover(raw), open_store(out)
    good = spec.training[0]
    res = convert_case(spec, CaseSpec("..", good.image_paths, good.label_path), out,
                       store.meta["plan"])
    assert "error" in res and "'..'" in res["error"] and "\n" not in res["error"]
    assert open_store(out).case_ids == TRAIN_IDS  # the store is still there, whole


# --------------------------------------------------------------- item 9: symlinks


def _link_tree(src: Path, dst: Path, *, folders: bool) -> None:
    """``dst``: src's dataset.json (a copy) and its case folders as symlinks (``folders``)
    or as real folders of symlinked files."""
    dst.mkdir(parents=True)
    shutil.copy(src / "dataset.json", dst / "dataset.json")
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        if folders:
            os.symlink(src / sub, dst / sub, target_is_directory=True)
            continue
        (dst / sub).mkdir()
        for name in os.listdir(src / sub):
            os.symlink(src / sub / name, dst / sub / name)


@pytest.mark.parametrize("layout,folders", [("msd", False), ("nnunet", False), ("nnunet", True)])
def test_dataset_built_from_symlinks_converts_fully(tmp_path: Path, layout: str,
                                                    folders: bool) -> None:
    src = write_synthetic_dataset(tmp_path / "elsewhere" / "src", layout=layout, **SMALL)
    raw = tmp_path / "nnUNet_raw" / "Dataset004_Links"
    _link_tree(src, raw, folders=folders)
    spec = discover(raw)
    assert spec.problems == []
    assert spec.symlinked_cases == 3
    assert [w for w in spec.warnings if "through symlinks" in w] == [
        f"{raw.resolve()}: 3 of 3 cases are read through symlinks (files or folders)"
    ]
    summary, _ = _convert(raw, tmp_path / "links.zarr")
    assert summary["errors"] == [] and summary["converted"] == 3
    case = open_store(tmp_path / "links.zarr")["synth_000"]
    assert case.meta["source_files"]["label"] == "labelsTr/synth_000.nii.gz"


def test_plain_dataset_counts_no_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "Task02"
    _touch(root / "imagesTr/a.nii.gz")
    _touch(root / "labelsTr/a.nii.gz")
    meta = {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "x"},
            "training": [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}]}
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = discover(root)
    assert spec.symlinked_cases == 0 and not any("symlink" in w for w in spec.warnings)


def test_dangling_symlinks_skip_their_case_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "Dataset005_Dangling"
    for cid in ("a", "b"):
        _touch(root / f"imagesTr/{cid}_0000.nii.gz")
    _touch(root / "labelsTr/a.nii.gz")
    os.symlink(tmp_path / "gone" / "b.nii.gz", root / "labelsTr/b.nii.gz")
    os.symlink(tmp_path / "no_such_folder", root / "imagesTs", target_is_directory=True)
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "x": 1},
            "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = discover(root)
    assert [c.case_id for c in spec.training] == ["a"]
    assert len(spec.problems) == 2 and all("\n" not in p for p in spec.problems)
    label_line, folder_line = sorted(spec.problems, key=lambda p: "imagesTs" in p)
    assert "labelsTr/b.nii.gz" in label_line and "dangling" in label_line
    assert str(tmp_path / "gone" / "b.nii.gz") in label_line and "case skipped" in label_line
    assert "imagesTs" in folder_line and "dangling" in folder_line


def test_reader_names_a_dangling_symlink(tmp_path: Path) -> None:
    """A link that went dangling after discovery is named as one, not as 'not found'."""
    link = tmp_path / "a_0000.nii.gz"
    os.symlink(tmp_path / "moved" / "a.nii.gz", link)
    with pytest.raises(PGPSInputError, match="dangling symlink") as err:
        read_volume(link)
    assert str(tmp_path / "moved" / "a.nii.gz") in str(err.value)


def test_textual_escapes_are_still_refused_with_symlinks_allowed(tmp_path: Path) -> None:
    root = tmp_path / "Task03"
    outside = tmp_path / "outside.nii.gz"
    _touch(outside)
    _touch(root / "labelsTr/a.nii.gz")
    os.symlink(outside, root / "imagesTr_link.nii.gz")
    meta = {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "x"},
            "training": [{"image": "../outside.nii.gz", "label": "labelsTr/a.nii.gz"},
                         {"image": str(outside), "label": "labelsTr/a.nii.gz"},
                         {"image": "labelsTr/../../outside.nii.gz", "label": "labelsTr/a.nii.gz"},
                         {"image": "imagesTr_link.nii.gz", "label": "labelsTr/a.nii.gz"}]}
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = discover(root)
    assert [c.case_id for c in spec.training] == ["imagesTr_link"]  # the symlink is followed
    assert len(spec.problems) == 3
    for n in range(3):
        assert sum(f"training[{n}]" in p and "points outside" in p for p in spec.problems) == 1


# ------------------------------------------------------- item 9: labels declared twice


def _nnunet_meta(root: Path, labels: dict, **extra: object) -> None:
    root.mkdir(parents=True, exist_ok=True)
    meta = {"channel_names": {"0": "CT"}, "labels": labels, "file_ending": ".nii.gz", **extra}
    (root / "dataset.json").write_text(json.dumps(meta))


def test_label_value_declared_twice_is_refused_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "Dataset006_Twice"
    _nnunet_meta(root, {"background": 0, "liver": 1, "tumour": 1})
    with pytest.raises(PGPSInputError) as err:
        discover(root)
    msg = str(err.value)
    assert "\n" not in msg and "dataset.json" in msg
    assert "label value 1" in msg and "'liver'" in msg and "'tumour'" in msg


def test_region_lists_may_overlap_but_plain_values_may_not(tmp_path: Path) -> None:
    root = tmp_path / "Dataset007_Regions"
    _nnunet_meta(root, {"background": 0, "whole": [1, 2], "core": [2], "enh": 2},
                 regions_class_order=[1, 2, 2])
    assert discover(root).labels["whole"] == [1, 2]
    _nnunet_meta(root, {"background": 0, "whole": [1, 2], "core": 2, "also": 2},
                 regions_class_order=[1, 2])
    with pytest.raises(PGPSInputError, match=r"label value 2 .*'core'.*'also'"):
        discover(root)


def test_msd_label_value_or_name_declared_twice(tmp_path: Path) -> None:
    root = tmp_path / "Task04_Twice"
    root.mkdir()
    head = '{"modality": {"0": "CT"}, "training": [], "labels": '
    cases = {
        '{"0": "background", "1": "a", "01": "b"}': ("label value 1", "'a'", "'b'"),
        '{"0": "background", "1": "a", "1": "b"}': ("label value 1", "'a'", "'b'"),
        '{"0": "background", "1": "organ", "2": "organ"}': ("'organ'", "1", "2"),
    }
    for labels, words in cases.items():
        (root / "dataset.json").write_text(head + labels + "}")
        with pytest.raises(PGPSInputError) as err:
            discover(root)
        assert "\n" not in str(err.value)
        assert all(w in str(err.value) for w in words), (labels, str(err.value))


def test_dataset_key_given_twice_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "Dataset008_Keys"
    _touch(root / "imagesTr/a_0000.nii.gz")
    _touch(root / "labelsTr/a.nii.gz")
    _touch(root / "imagesTr/b_0000.nii.gz")
    _touch(root / "labelsTr/b.nii.gz")
    entry_a = '{"images": ["imagesTr/a_0000.nii.gz"], "label": "labelsTr/a.nii.gz"}'
    entry_b = '{"images": ["imagesTr/b_0000.nii.gz"], "label": "labelsTr/b.nii.gz"}'
    (root / "dataset.json").write_text(
        '{"channel_names": {"0": "CT"}, "labels": {"background": 0, "x": 1}, '
        f'"file_ending": ".nii.gz", "dataset": {{"a": {entry_a}, "b": {entry_a}, "b": {entry_b}}}}}'
    )
    spec = discover(root)
    assert [c.case_id for c in spec.training] == ["a"]
    assert len(spec.problems) == 1 and "'b'" in spec.problems[0] and "twice" in spec.problems[0]


# --------------------------------------------- item 9: every case refused, reasons shown


def _undeclared_values(tmp_path: Path) -> Path:
    """Every label holds values 1 and 2; dataset.json declares only 1."""
    raw = write_synthetic_dataset(tmp_path / "Dataset009_AllBad", layout="nnunet", **SMALL)
    meta = json.loads((raw / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "organ": 1}
    (raw / "dataset.json").write_text(json.dumps(meta))
    return raw


def test_each_refused_case_has_its_own_one_line_reason(tmp_path: Path) -> None:
    raw = _undeclared_values(tmp_path)
    spec = discover(raw)
    reasons = [fingerprint_case(spec, c, 100)["error"] for c in spec.training]
    for cid, line in zip(TRAIN_IDS, reasons, strict=True):
        assert "\n" not in line and f"labelsTr/{cid}.nii.gz" in line
        assert "[2] are not in dataset.json" in line


def test_every_case_refused_prints_each_reason(tmp_path: Path) -> None:
    """End to end (needs convert.py's own fix too): the reasons, not a CT statistics line."""
    raw = _undeclared_values(tmp_path)
    lines: list[str] = []
    with pytest.raises(PGPSInputError) as err:
        convert(raw, tmp_path / "o.zarr", workers=1, quiet=True, log=lines.append)
    assert "no usable training case" in str(err.value)
    assert "foreground voxels" not in str(err.value)
    for cid in TRAIN_IDS:
        assert sum(f"labelsTr/{cid}.nii.gz" in line and "[2]" in line for line in lines) == 1
