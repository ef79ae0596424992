"""The fast crop reader against zarr-python, and the default layout it reads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import (
    BloscCodec,
    BytesCodec,
    Crc32cCodec,
    GzipCodec,
    ShardingCodec,
    ZstdCodec,
)

from pgps_data.errors import PGPSInputError
from pgps_data.store.chunking import LAYOUTS, Layout, layout_attrs, write_array
from pgps_data.store.fastread import STATS, FastArray, read_box_zarr

DTYPES = ["float32", "float16", "uint8", "int16", "int32"]


def reference(arr: zarr.Array | np.ndarray, origin, shape, pad) -> np.ndarray:
    """zarr-python reads the whole array (or pass that read); numpy pads it and cuts the box."""
    full = arr[...] if isinstance(arr, zarr.Array) else arr
    lead = full.ndim - len(shape)
    origin = [0] * lead + list(origin)
    shape = list(full.shape[:lead]) + list(shape)
    before = [max(0, -o) for o in origin]
    after = [max(0, o + s - n) for o, s, n in zip(origin, shape, full.shape)]
    padded = np.pad(full, list(zip(before, after)), constant_values=pad)
    return padded[tuple(slice(o + b, o + b + s) for o, b, s in zip(origin, before, shape))]


def make_data(shape, dtype, rng, zero_corner=True) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        data = rng.normal(0, 3, shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        data = rng.integers(max(info.min, -1000), min(info.max, 1000), shape).astype(dtype)
    if zero_corner:  # a region zarr skips as all-fill
        data[..., : shape[-3] // 2, : shape[-2] // 2, :] = 0
    return data


def boxes(shape, rng, n=25):
    """Boxes inside, crossing every border, fully outside, and larger than the array."""
    shape = np.array(shape)
    out = [
        ((0, 0, 0), tuple(shape)),
        ((-3, -4, -5), tuple(shape + 9)),
        ((-50, 0, 0), (5, 5, 5)),
        (tuple(shape), (4, 4, 4)),
        ((-2, -2, -2), (3, 3, 3)),
        (tuple(shape - 2), (6, 6, 6)),
    ]
    for _ in range(n):
        size = rng.integers(1, shape + 6)
        origin = rng.integers(-size - 2, shape + 2)
        out.append((tuple(origin), tuple(size)))
    return out


def layouts():
    """(name, create_array keyword arguments) for the layouts the fast path must read."""
    lz4 = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    return {
        "sharded-blosc": dict(chunks=(6, 8, 8), shards=(12, 16, 16), compressors=lz4),
        "sharded-none": dict(chunks=(6, 8, 8), shards=(12, 16, 16), compressors=None),
        "sharded-zstd-bigendian": dict(
            chunks=(6, 8, 8),
            shards=(12, 16, 16),
            compressors=ZstdCodec(level=3),
            serializer=BytesCodec(endian="big"),
        ),
        "unsharded-blosc": dict(chunks=(6, 8, 8), compressors=lz4),
        "unsharded-none": dict(chunks=(6, 8, 8), compressors=None),
        "sharded-blosc-crc32c": dict(
            chunks=(6, 8, 8), shards=(12, 16, 16), compressors=[lz4, Crc32cCodec()]
        ),
        "unsharded-crc32c": dict(chunks=(6, 8, 8), compressors=[Crc32cCodec()]),
        "unsharded-zstd-v2keys": dict(
            chunks=(6, 8, 8),
            compressors=ZstdCodec(level=1),
            chunk_key_encoding={"name": "v2", "separator": "."},
        ),
    }


def create(group, name, data, kw) -> zarr.Array:
    kw = dict(kw)
    lead = data.shape[:-3]
    kw["chunks"] = lead + kw["chunks"]
    if kw.get("shards"):
        kw["shards"] = lead + kw["shards"]
    arr = group.create_array(name, shape=data.shape, dtype=data.dtype, fill_value=0, **kw)
    arr[...] = data
    return arr


# images are float32/float16/int16 with 1-2 channels; labels uint8 and indices int32 are plain
CASES = [
    (d, lead) for d in DTYPES for lead in [(), (1,), (2,)] if not (lead and d in ("uint8", "int32"))
]


@pytest.mark.parametrize("layout", list(layouts()))
@pytest.mark.parametrize(("dtype", "lead"), CASES)
def test_read_matches_zarr(tmp_path, layout, dtype, lead):
    rng = np.random.default_rng([len(layout), DTYPES.index(dtype), len(lead)])
    data = make_data((*lead, 19, 21, 23), dtype, rng)
    arr = create(zarr.open_group(tmp_path / "s.zarr", mode="w"), "a", data, layouts()[layout])
    fast = FastArray.open(arr)
    assert fast is not None, layout
    full = arr[...]  # zarr-python's read: the reference
    np.testing.assert_array_equal(full, data)
    todo = boxes(data.shape[-3:], rng)
    for origin, size in todo:
        got = fast.read(origin, size, pad_value=7)
        np.testing.assert_array_equal(
            got, reference(full, origin, size, 7), err_msg=f"{origin} {size}"
        )
        assert got.dtype == np.dtype(dtype)
    origins = rng.integers(-6, 20, (13, 3))
    many = fast.read_many(origins, (7, 9, 5), pad_value=3)
    assert many.shape == (13, *lead, 7, 9, 5)
    for i, o in enumerate(origins):
        np.testing.assert_array_equal(many[i], reference(full, o, (7, 9, 5), 3))
    assert fast.reads == len(todo) + 1


def test_missing_chunks_read_as_fill_and_are_really_absent(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(size=(24, 16, 16)).astype("float32")
    data[:12] = 0  # chunks z < 12 are all fill
    g = zarr.open_group(tmp_path / "s.zarr", mode="w")
    sharded = create(g, "sh", data, dict(chunks=(6, 8, 8), shards=(12, 16, 16), compressors=None))
    plain = create(g, "pl", data, dict(chunks=(6, 8, 8), compressors=ZstdCodec(level=1)))
    # shard 0 (z 0..12) holds only fill: zarr wrote no file at all; shard 1 holds every chunk
    assert not (tmp_path / "s.zarr/sh/c/0/0/0").exists()
    assert (tmp_path / "s.zarr/sh/c/1/0/0").exists()
    assert not (tmp_path / "s.zarr/pl/c/0/0/0").exists()
    assert (tmp_path / "s.zarr/pl/c/2/0/0").exists()
    # a shard with some missing inner chunks: the index holds the all-ones sentinel
    data2 = data.copy()
    data2[12:18] = 0
    part = create(g, "pa", data2, dict(chunks=(6, 8, 8), shards=(12, 16, 16), compressors=None))
    raw = (tmp_path / "s.zarr/pa/c/1/0/0").read_bytes()
    index = np.frombuffer(raw[-(16 * 8 + 4) : -4], "<u8").reshape(8, 2)
    assert (index[:4] == 2**64 - 1).all() and (index[4:] != 2**64 - 1).all()
    for arr in (sharded, plain, part):
        fast = FastArray.open(arr)
        for origin, size in [
            ((0, 0, 0), (24, 16, 16)),
            ((-2, 3, 3), (20, 9, 9)),
            ((10, 0, 0), (9, 16, 16)),
        ]:
            np.testing.assert_array_equal(
                fast.read(origin, size, pad_value=5), reference(arr, origin, size, 5)
            )


def test_nonzero_fill_value_and_index_at_start(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.normal(size=(2, 20, 18, 17)).astype("float32")
    data[:, 5:15] = -1.5
    g = zarr.open_group(tmp_path / "s.zarr", mode="w")
    arr = g.create_array(
        "a",
        shape=data.shape,
        dtype="float32",
        fill_value=-1.5,
        serializer=ShardingCodec(
            chunk_shape=(2, 5, 6, 6),
            index_location="start",
            codecs=[BytesCodec(), ZstdCodec(level=2)],
        ),
        chunks=(2, 10, 12, 12),
        compressors=None,
    )
    arr[...] = data
    meta = json.loads((tmp_path / "s.zarr/a/zarr.json").read_text())
    assert meta["codecs"][0]["configuration"]["index_location"] == "start"
    fast = FastArray.open(arr)
    assert fast is not None and fast.fill_value == np.float32(-1.5)
    for origin, size in boxes(data.shape[1:], rng, 15):
        np.testing.assert_array_equal(fast.read(origin, size), reference(arr, origin, size, 0))


def test_dtype_conversion_and_out(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.normal(size=(1, 20, 20, 20)).astype("float16")
    arr = write_array(
        zarr.open_group(tmp_path / "s.zarr", mode="w"),
        "img",
        data,
        kind="image",
        layout=Layout(chunk=(8, 8, 8), shard=(16, 16, 16), image_dtype="float16"),
    )
    fast = FastArray.open(arr)
    got = fast.read((3, -2, 5), (10, 10, 10), dtype=np.float32)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(
        got, reference(arr, (3, -2, 5), (10, 10, 10), 0).astype(np.float32)
    )
    out = np.full((4, 1, 6, 6, 6), np.nan, np.float32)
    res = fast.read_many([(0, 0, 0), (14, 14, 14), (-3, 5, 2), (50, 50, 50)], (6, 6, 6), out=out)
    assert res is out and not np.isnan(out).any()
    np.testing.assert_array_equal(
        out[2], reference(arr, (-3, 5, 2), (6, 6, 6), 0).astype(np.float32)
    )
    with pytest.raises(ValueError):
        fast.read((0, 0, 0), (6, 6, 6), out=np.empty((6, 6, 6), np.float32))


def test_default_layout_uses_fast_path(tmp_path):
    rng = np.random.default_rng(4)
    image = rng.normal(size=(2, 40, 70, 50)).astype("float32")
    image[:, :, :30] = image.min()  # background: the auto fill value, its chunks skipped
    label = (rng.random((40, 70, 50)) > 0.97).astype(np.uint8)
    g = zarr.open_group(tmp_path / "s.zarr", mode="w")
    for codec in LAYOUTS:
        img = write_array(g, f"img_{codec}", image, kind="image", codec=codec)
        lab = write_array(g, f"lab_{codec}", label, kind="label", codec=codec)
        assert img.fill_value == image.min() and lab.fill_value == 0
        assert img.chunks == (2, 32, 32, 32)  # all channels in one chunk
        for arr in (img, lab):
            fast = FastArray.open(arr)
            assert fast is not None
            before = STATS["reads"]
            for origin, size in boxes(arr.shape[-3:], rng, 10):
                np.testing.assert_array_equal(
                    fast.read(origin, size), reference(arr, origin, size, 0)
                )
            assert fast.reads > 0 and STATS["reads"] == before + fast.reads
    files = [p.name for p in (tmp_path / "s.zarr/img_default").rglob("*")]
    assert "zarr.json" in files


def test_small_arrays_and_indices(tmp_path):
    g = zarr.open_group(tmp_path / "s.zarr", mode="w")
    tiny = np.arange(3 * 5 * 7, dtype=np.float32).reshape(1, 3, 5, 7)
    arr = write_array(g, "tiny", tiny, kind="image")
    assert arr.chunks == (1, 3, 5, 7)  # clipped to the array: one small chunk
    fast = FastArray.open(arr)
    np.testing.assert_array_equal(
        fast.read((-1, -1, -1), (5, 7, 9), pad_value=-1),
        reference(arr, (-1, -1, -1), (5, 7, 9), -1),
    )
    mid = np.ones((1, 40, 300, 20), np.float32)
    arr = write_array(g, "mid", mid, kind="image")
    assert arr.chunks == (1, 32, 32, 20) and arr.shards == (1, 64, 128, 20)
    idx = np.array([[1, 2, 3], [4, 5, 6]])
    a_idx = write_array(g, "fg_1", idx, kind="index")
    assert a_idx.dtype == np.int32 and np.array_equal(a_idx[...], idx)
    empty = write_array(g, "fg_2", np.zeros((0, 3), np.int64), kind="index")
    assert empty.shape == (0, 3) and empty[...].shape == (0, 3)
    with pytest.raises(PGPSInputError):
        write_array(g, "bad", np.full((4, 4, 4), 300), kind="label")
    with pytest.raises(PGPSInputError, match="unknown codec"):
        write_array(g, "x", tiny, kind="image", codec="gzip")
    attrs = layout_attrs("default")
    assert attrs["chunk"] == [32, 32, 32] and attrs["image_dtype"] == "float32"
    json.dumps(attrs)


def test_unsupported_arrays_fall_back(tmp_path):
    rng = np.random.default_rng(5)
    data = rng.normal(size=(10, 12, 14)).astype("float32")
    mem = zarr.create_array(
        zarr.storage.MemoryStore(), shape=data.shape, dtype="float32", chunks=(4, 4, 4)
    )
    mem[...] = data
    g = zarr.open_group(tmp_path / "s.zarr", mode="w")
    gz = g.create_array(
        "gz", shape=data.shape, dtype="float32", chunks=(4, 4, 4), compressors=GzipCodec()
    )
    gz[...] = data
    for arr in (mem, gz):
        assert FastArray.open(arr) is None
        before = STATS["reads"]
        for origin, size in [((-2, 3, 4), (6, 12, 20)), ((20, 0, 0), (2, 2, 2))]:
            ref = reference(arr, origin, size, 9)
            np.testing.assert_array_equal(read_box_zarr(arr, origin, size, 9), ref)
        assert STATS["reads"] == before  # the fallback never touched the fast path


def test_corrupt_shard_index_is_reported(tmp_path):
    data = np.ones((8, 8, 8), np.float32)
    g = zarr.open_group(tmp_path / "s.zarr", mode="w")
    arr = create(g, "a", data, dict(chunks=(4, 4, 4), shards=(8, 8, 8), compressors=None))
    path = Path(tmp_path / "s.zarr/a/c/0/0/0")
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(PGPSInputError, match="checksum"):
        FastArray.open(arr).read((0, 0, 0), (4, 4, 4))


def test_forked_process_reads(tmp_path):
    """Open files are per process: a forked child reopens them and reads correctly."""
    data = np.arange(16**3, dtype=np.float32).reshape(16, 16, 16)
    g = zarr.open_group(tmp_path / "s.zarr", mode="w")
    arr = create(
        g, "a", data, dict(chunks=(4, 4, 4), shards=(8, 8, 8), compressors=BloscCodec(cname="lz4"))
    )
    fast = FastArray.open(arr)
    fast.read((0, 0, 0), (16, 16, 16))
    pid = os.fork()
    if pid == 0:  # child: exit status says whether the read was right
        ok = np.array_equal(fast.read((3, 3, 3), (9, 9, 9)), data[3:12, 3:12, 3:12])
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
