"""Every chunk carries a crc32c, and every reader refuses a chunk that fails it (issue 7.5).

A store converted from tiny synthetic data gets one bit flipped inside one chunk's payload
(an image shard, a label shard, a foreground index chunk); each read must then raise one
:class:`PGPSInputError` line naming the case, the array and the chunk, by the fast path
and by the zarr-python fallback (``PGPS_NO_FAST_READ=1``), with ``--codec none`` too; and
``pgps-inspect --verify`` must find it. A store written without checksums still reads.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from pgps_data.cli.inspect import main as inspect_main
from pgps_data.errors import PGPSInputError
from pgps_data.raw.convert import convert
from pgps_data.store.fastread import FastArray
from pgps_data.store.store import open_store

CASE = "synth_000"
MISSING = 2**64 - 1


@pytest.fixture(scope="module")
def none_store(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_raw`` converted with ``--codec none`` (read-only use: tests copy it)."""
    out = tmp_path_factory.mktemp("none") / "none.zarr"
    summary = convert(tiny_raw, out, workers=1, codec="none", quiet=True, log=lambda *_: None)
    assert summary["errors"] == []
    return out


def _copy(store: Path, tmp_path: Path) -> Path:
    dst = tmp_path / store.name
    shutil.copytree(store, dst)
    return dst


def _stored_chunk(array_dir: Path) -> tuple[Path, int, int, tuple[int, ...]]:
    """(file, payload offset, payload bytes, grid index) of the first chunk on disk."""
    meta = json.loads((array_dir / "zarr.json").read_text())
    first = meta["codecs"][0]
    files = sorted(f for f in (array_dir / "c").rglob("*") if f.is_file())
    assert files, array_dir
    for f in files:
        key = tuple(int(p) for p in f.relative_to(array_dir / "c").parts)
        if first["name"] != "sharding_indexed":
            return f, 0, f.stat().st_size - 4, key  # the crc32c is the last 4 bytes
        outer = meta["chunk_grid"]["configuration"]["chunk_shape"]
        per = [o // i for o, i in zip(outer, first["configuration"]["chunk_shape"])]
        n = math.prod(per)
        raw = f.read_bytes()
        index = np.frombuffer(raw[-(16 * n + 4) : -4], "<u8").reshape(n, 2)
        for flat, (offset, nbytes) in enumerate(index.tolist()):
            if offset != MISSING:
                local = np.unravel_index(flat, per)
                return f, offset, nbytes - 4, tuple(s * p + i for s, p, i in zip(key, per, local))
    raise AssertionError(f"no stored chunk in {array_dir}")


def _flip(store: Path, array: str, case: str = CASE) -> str:
    """Flip one bit in the middle of a chunk's payload; returns the expected message part."""
    path, offset, nbytes, key = _stored_chunk(store / "cases" / case / array)
    raw = bytearray(path.read_bytes())
    raw[offset + nbytes // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    label = key[1:] if array == "image" else key  # an image's channel axis is one chunk
    return f"cases/{case}/{array}: chunk ({', '.join(map(str, label))}) fails its crc32c checksum"


def _one_line(exc: pytest.ExceptionInfo, want: str) -> None:
    text = str(exc.value)
    assert "\n" not in text, text
    assert want in text, text
    assert "pgps-convert" in text, text  # says what to do


def _read(store: Path, array: str, case: str = CASE) -> None:
    """Read what ``array`` of ``case`` serves: the whole volume, or the index."""
    c = open_store(store)[case]
    if array.startswith("fg_"):
        c.foreground(int(array[3:]))
    else:
        c.read((0, 0, 0), c.shape)


@pytest.mark.parametrize("fallback", [False, True], ids=["fast", "zarr"])
@pytest.mark.parametrize("array", ["image", "label", "fg_1"])
@pytest.mark.parametrize("codec", ["default", "none"])
def test_a_flipped_bit_is_one_line_naming_case_array_chunk(
    tiny_store: Path, none_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    codec: str, array: str, fallback: bool,
) -> None:
    store = _copy(tiny_store if codec == "default" else none_store, tmp_path)
    if fallback:
        monkeypatch.setenv("PGPS_NO_FAST_READ", "1")
    _read(store, array)  # clean: reads
    want = _flip(store, array)
    with pytest.raises(PGPSInputError) as exc:
        _read(store, array)
    _one_line(exc, want)
    assert open_store(store)[CASE].uses_fast_path is not fallback


def test_every_array_of_the_store_carries_a_crc32c(tiny_store: Path, none_store: Path) -> None:
    for store in (tiny_store, none_store):
        assert open_store(store).meta["layout"]["checksum"] == "crc32c"
        for array in ("image", "label", "fg_1", "fg_2"):
            meta = json.loads((store / "cases" / CASE / array / "zarr.json").read_text())
            chain = meta["codecs"]
            if chain[0]["name"] == "sharding_indexed":
                chain = chain[0]["configuration"]["codecs"]  # inside the shard's inner chain
            assert chain[-1]["name"] == "crc32c", (store, array, chain)


def test_inspect_verify_finds_the_bad_chunk(
    tiny_store: Path, none_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for store in (tiny_store, none_store):
        copy = _copy(store, tmp_path / store.stem)
        assert inspect_main([str(copy), "--verify"]) == 0
        out = capsys.readouterr()
        assert "all good" in out.out and "bad:" not in out.out
        wants = [_flip(copy, "image"), _flip(copy, "label", "synth_001"), _flip(copy, "fg_2")]
        assert inspect_main([str(copy), "--verify"]) == 1
        out = capsys.readouterr().out
        bad = [line for line in out.splitlines() if line.startswith("bad: ")]
        assert len(bad) == 3, out
        for want in wants:
            assert sum(want in line for line in bad) == 1, (want, bad)
        assert "3 bad" in out
        assert inspect_main([str(copy), "--verify", "--json"]) == 1
        result = json.loads(capsys.readouterr().out)["verify"]
        assert not result["ok"] and len(result["bad"]) == 3 and result["chunks"] > 10


def test_inspect_verify_zarr_path_and_shard_index(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    store = _copy(tiny_store, tmp_path)
    shard = store / "cases" / CASE / "label" / "c" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-8] ^= 0x01  # inside the shard index, not a chunk
    shard.write_bytes(bytes(raw))
    assert inspect_main([str(store), "--verify"]) == 1
    out = capsys.readouterr().out
    assert f"cases/{CASE}/label: shard (0, 0, 0) index fails its crc32c checksum" in out
    monkeypatch.setenv("PGPS_NO_FAST_READ", "1")
    assert inspect_main([str(store), "--verify"]) == 1
    assert "crc32c" in capsys.readouterr().out


def test_a_store_without_checksums_still_reads_and_verifies(
    tiny_raw: Path, tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """Stores written before checksums (no crc32c codec) open and read; not verified."""
    import pgps_data.store.chunking as layout

    old = {name: layout.Layout(compressor=lay.compressor, checksum=False)
           for name, lay in layout.LAYOUTS.items()}
    monkeypatch.setattr(layout, "LAYOUTS", old)
    out = tmp_path / "old.zarr"
    assert convert(tiny_raw, out, workers=1, quiet=True, log=lambda *_: None)["errors"] == []
    meta = json.loads((out / "cases" / CASE / "image" / "zarr.json").read_text())
    assert "crc32c" not in json.dumps(meta["codecs"][0]["configuration"]["codecs"])
    new = open_store(tiny_store)
    for fallback in ("0", "1"):
        monkeypatch.setenv("PGPS_NO_FAST_READ", fallback)
        store = open_store(out)
        for cid in store.case_ids:
            case = store[cid]
            image, label = case.read((-2, 3, 1), (20, 30, 40))
            ref_image, ref_label = new[cid].read((-2, 3, 1), (20, 30, 40))
            np.testing.assert_array_equal(image, ref_image)
            np.testing.assert_array_equal(label, ref_label)
            np.testing.assert_array_equal(case.foreground(1), new[cid].foreground(1))
            assert case.uses_fast_path is (fallback == "0")
    monkeypatch.setenv("PGPS_NO_FAST_READ", "0")
    assert inspect_main([str(out), "--verify"]) == 0
    assert "carry no checksum" in capsys.readouterr().out


def test_verify_once_checks_a_chunk_before_first_use_and_always_checks_each_read(
    tmp_path: Path,
) -> None:
    """The fast reader's policies: "once" verifies a file's chunk the first time this
    process reads it (a rewritten file is verified anew); "always" on every read."""
    from pgps_data.store.chunking import write_array

    data = np.arange(2 * 16 * 16 * 16, dtype=np.float32).reshape(2, 16, 16, 16)
    g = zarr.open_group(tmp_path / "s.zarr", mode="w")
    for codec in ("default", "none"):
        arr = write_array(g, codec, data, kind="image", codec=codec)
        path, offset, nbytes, _ = _stored_chunk(tmp_path / "s.zarr" / codec)
        once = FastArray.open(arr, verify="once")
        always = FastArray.open(arr, verify="always")
        assert once.read((0, 0, 0), (16, 16, 16)).sum() == data.sum()
        with open(path, "r+b") as fh:  # flip a bit in place: the same file, still mapped
            fh.seek(offset + nbytes // 2)
            byte = fh.read(1)
            fh.seek(offset + nbytes // 2)
            fh.write(bytes([byte[0] ^ 0x04]))
        with pytest.raises(PGPSInputError, match="fails its crc32c"):
            always.read((0, 0, 0), (16, 16, 16))
        _fresh_files()  # as a new process (or after the map is dropped and the file changed)
        with pytest.raises(PGPSInputError, match="fails its crc32c"):
            FastArray.open(arr, verify="once").read((0, 0, 0), (16, 16, 16))


def _fresh_files() -> None:
    """Forget every map and verification, as a new process would start."""
    from pgps_data.store import mapped_files

    mapped_files.FILES.maps.clear()
    mapped_files.FILES.checked.clear()


def test_verify_finds_a_deleted_chunk_file_by_the_content_checksum(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A deleted shard reads as fill (no crc to fail): the case's content checksum sees it."""
    store = _copy(tiny_store, tmp_path)
    path, *_ = _stored_chunk(store / "cases" / CASE / "label")
    path.unlink()
    assert inspect_main([str(store), "--verify"]) == 1
    bad = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("bad: ")]
    assert len(bad) == 1 and f"cases/{CASE}: content differs from its recorded checksum" in bad[0]


def test_a_damaged_array_metadata_file_is_one_line(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = _copy(tiny_store, tmp_path)
    meta = store / "cases" / CASE / "image" / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:100])  # truncated
    with pytest.raises(PGPSInputError) as exc:
        open_store(store)[CASE]
    _one_line(exc, f"cases/{CASE}/image: array metadata (zarr.json) is unreadable")
    capsys.readouterr()
    assert inspect_main([str(store), "--verify"]) == 2  # the table cannot describe the case
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image: array metadata (zarr.json) is unreadable" in err[0], err
