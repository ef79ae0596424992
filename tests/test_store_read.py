"""The store's read side: completeness, identity, missing arrays, and what inspect shows.

Issue 7, items 10 and 12 (store side) and 7 (``Store.identity``): a case whose array is
gone is not listed and the store is not complete; opening it is one line, not a
traceback; ``pgps-inspect`` prints "[conversion incomplete]" and the missing cases as
text (not as Rich markup).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pgps_data.cli.inspect import main as inspect_main
from pgps_data.errors import PGPSInputError
from pgps_data.store.store import open_store


@pytest.fixture
def store(tiny_store: Path, tmp_path: Path) -> Path:
    """A private copy of the session's tiny store, free to damage."""
    dst = tmp_path / "tiny.zarr"
    shutil.copytree(tiny_store, dst)
    return dst


def _edit_attrs(path: Path, **attrs: object) -> None:
    """Set attributes in the zarr.json of the group at ``path``."""
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"].update(attrs)
    (path / "zarr.json").write_text(json.dumps(meta))


def _one_line(exc: pytest.ExceptionInfo, *parts: str) -> None:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text, text
    for part in parts:
        assert part in text, (part, text)


def test_a_clean_store_is_complete(store: Path) -> None:
    s = open_store(store)
    assert s.complete is True and s.missing_cases == []
    assert s.case_ids == s.meta["training_cases"] == sorted(s.meta["training_cases"])


@pytest.mark.parametrize("array", ["label", "image", "fg_1"])
def test_a_case_with_a_missing_array_is_not_listed(store: Path, array: str) -> None:
    shutil.rmtree(store / "cases" / "synth_001" / array)
    s = open_store(store)  # no KeyError, no traceback
    assert "synth_001" not in s.case_ids and len(s.case_ids) == 3
    assert s.missing_cases == ["synth_001"]
    assert s.complete is False
    assert "synth_001" not in s.identity["cases"]
    with pytest.raises(PGPSInputError) as exc:
        s["synth_001"]
    _one_line(exc, "cases/synth_001", f"'{array}' is missing", "pgps-convert")
    assert isinstance(exc.value, KeyError)  # callers that catch KeyError still do
    assert str(exc.value).startswith(str(store))  # str(), not KeyError's quoted repr


def test_an_array_deleted_after_opening_is_one_line(store: Path) -> None:
    s = open_store(store)
    shutil.rmtree(store / "cases" / "synth_002" / "label")
    with pytest.raises(PGPSInputError) as exc:
        s["synth_002"]
    _one_line(exc, "cases/synth_002/label", "missing")
    case = s["synth_003"]  # opened, not yet read: then its image goes
    shutil.rmtree(store / "cases" / "synth_003" / "image")
    with pytest.raises(PGPSInputError) as exc:
        case.read((0, 0, 0), (8, 8, 8))
    _one_line(exc, "cases/synth_003/image", "missing")
    case = s["synth_000"]
    shutil.rmtree(store / "cases" / "synth_000" / "fg_1")
    with pytest.raises(PGPSInputError) as exc:
        case.foreground(1)
    _one_line(exc, "cases/synth_000/fg_1", "missing")


def test_an_unknown_case_is_one_line(store: Path) -> None:
    s = open_store(store)
    with pytest.raises(PGPSInputError) as exc:
        s["nope"]
    _one_line(exc, str(store), "no case 'nope'")
    _edit_attrs(store, training_cases=[*s.meta["training_cases"], "synth_009"])
    with pytest.raises(KeyError) as exc:
        open_store(store)["synth_009"]
    _one_line(exc, "'synth_009' was never completely written", "rerun pgps-convert")


def test_complete_needs_the_root_flag_and_every_listed_case(store: Path) -> None:
    _edit_attrs(store, complete=False)  # the conversion never reached finish_store
    s = open_store(store)
    assert s.complete is False and s.missing_cases == []
    _edit_attrs(store, complete=True)
    _edit_attrs(store / "cases" / "synth_002", complete=False)  # killed mid-case
    s = open_store(store)
    assert s.complete is False and s.missing_cases == ["synth_002"]
    assert "synth_002" not in s.case_ids


def test_identity_is_the_creation_id_and_each_case_checksum(store: Path) -> None:
    _edit_attrs(store, creation_id="0123abcd")
    _edit_attrs(store / "cases" / "synth_000", checksum="sha256:aa")
    _edit_attrs(store / "cases" / "synth_001", checksum="sha256:bb")
    ident = open_store(store).identity
    assert ident["creation_id"] == "0123abcd"
    assert ident["cases"]["synth_000"] == "sha256:aa"
    assert ident["cases"]["synth_001"] == "sha256:bb"
    assert sorted(ident["cases"]) == ["synth_000", "synth_001", "synth_002", "synth_003"]
    json.dumps(ident)  # plain data: a checkpoint can store it
    _edit_attrs(store, creation_id=None)
    meta = json.loads((store / "zarr.json").read_text())
    del meta["attributes"]["creation_id"]
    (store / "zarr.json").write_text(json.dumps(meta))
    assert open_store(store).identity["creation_id"] is None  # older stores: None


@pytest.mark.parametrize("damage", ["root-flag", "missing-case"])
def test_inspect_prints_conversion_incomplete_and_the_missing_cases(
    store: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # one table row per line
    if damage == "root-flag":
        _edit_attrs(store, complete=False)
    else:
        shutil.rmtree(store / "cases" / "synth_001" / "label")
    assert inspect_main([str(store)]) == 0
    out = capsys.readouterr().out
    assert "[conversion incomplete]" in out, out
    if damage == "missing-case":
        row = next(line for line in out.splitlines() if "missing cases" in line)
        assert "1: synth_001" in row, row
    assert inspect_main([str(store), "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["complete"] is False
    assert desc["missing_cases"] == ([] if damage == "root-flag" else ["synth_001"])


def test_missing_arrays_tells_a_writer_whether_a_case_is_whole(store: Path) -> None:
    from pgps_data.store.completeness import missing_arrays

    cases = store / "cases"
    assert missing_arrays(cases / "synth_000", labelled=True) == []
    shutil.rmtree(cases / "synth_000" / "fg_2")
    assert missing_arrays(cases / "synth_000", labelled=True) == ["fg_2"]
    _edit_attrs(cases / "synth_001", complete=False)
    assert missing_arrays(cases / "synth_001", labelled=True) is None
    assert missing_arrays(cases / "nope", labelled=True) is None


@pytest.mark.parametrize("flag", [1, "true", None])
def test_only_json_true_marks_a_case_or_the_store_complete(store: Path, flag: object) -> None:
    """One reader of the flag (completeness.is_complete) for the listing, the writer's
    skip test and Store.complete: a flag that is not JSON true (edited by hand) counts as
    unfinished everywhere, so the case is converted again and the store is not complete."""
    from pgps_data.store.completeness import is_complete, missing_arrays
    from pgps_data.store.write import case_is_complete

    _edit_attrs(store / "cases" / "synth_002", complete=flag)
    _edit_attrs(store, complete=flag)
    s = open_store(store)
    assert "synth_002" not in s.case_ids and s.missing_cases == ["synth_002"]
    assert s.complete is False
    assert missing_arrays(store / "cases" / "synth_002", labelled=True) is None
    assert case_is_complete(store, "synth_002", is_test=False) is False
    assert case_is_complete(store, "synth_001", is_test=False) is True
    assert is_complete({"complete": flag}) is False and is_complete({"complete": True}) is True
