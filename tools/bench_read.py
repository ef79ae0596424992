"""Crop-read benchmark: the fast path and zarr-python against a memory-mapped .npy.

    python tools/bench_read.py [--size Z Y X] [--quick] [--json]
                               [--chunk Z Y X] [--shard Z Y X | --no-shard]
                               [--compressor lz4|zstd|blosclz|none] [--clevel N]
                               [--shuffle shuffle|noshuffle|bitshuffle] [--dtype float32|float16]
                               [--no-checksum]

Builds one CT-like volume (about half constant air, smooth organs, bone, noise, z-scored
the way nnU-Net normalises CT), writes it as zarr v3 with the default layout's codec and
with codec "none" (or with the layout given on the command line), and as a plain .npy.
Then, with a warm page cache, one process, side by side in one run:

- single random boxes (fully inside, median of many) for 32³, 64³, 96³, 128³, 80×192×160;
- groups of 64 boxes from the volume, clustered (like foreground-forced crops around one
  structure) and spread uniformly, for 32³ and 64³, each path writing into one
  preallocated (64, C, ...) array as the loader writes into its shared-memory ring
  (``np.copyto(out[i], mm[box])`` for the .npy; ``read_many(..., out=out)`` for ours).

Ratio = time of copying the same boxes out of the memory-mapped .npy (``np.array(mm[box])``)
÷ time of the path (1.0 = the memory-copy limit). Amplification = bytes decoded or copied
from mapped chunks ÷ bytes delivered. ``--quick`` runs a tiny volume in seconds (CI smoke).

Checksums: every chunk carries a crc32c. The fast path is timed, on the same boxes and
files, with each verification policy of :class:`FastArray` side by side, in rotating order
(whichever runs first after the .npy copy pays for the cold cache): ``fast ms`` is the
default policy (``once``: a chunk is verified the first time a process reads it; after the
warm-up read that is steady state), ``always ms`` verifies every chunk on every read,
``off ms`` verifies nothing. ``crc x`` = default ÷ off, the read cost of verification as
shipped (goal: <= 1.10 compressed, <= 1.5 uncompressed); ``always x`` = always ÷ off.
"first read": one whole-volume read by a process that has verified nothing yet (fresh
maps), the default policy ÷ off: what "once" pays, once per process and chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pgps_data.store.chunking import LAYOUTS, Layout, write_array  # noqa: E402
from pgps_data.store.fastread import DEFAULT_VERIFY, STATS, FastArray  # noqa: E402

SIZES = [(32, 32, 32), (64, 64, 64), (96, 96, 96), (128, 128, 128), (80, 192, 160)]
GROUP_SIZES = [(32, 32, 32), (64, 64, 64)]


def ct_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A z-scored CT-like (1, Z, Y, X) float32 volume, ~50 % constant (clipped) air."""
    rng = np.random.default_rng(seed)
    z, y, x = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    body = (y[None, :, None] / 0.8) ** 2 + (x[None, None, :] / 0.95) ** 2 < 1 - 0.1 * z[
        :, None, None
    ] ** 2
    coarse = rng.normal(0, 1, [max(2, n // 16) for n in shape]).astype(np.float32)
    smooth = ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse.shape)], order=1)[
        : shape[0], : shape[1], : shape[2]
    ]
    hu = np.where(body, 40 + 60 * smooth, -1000).astype(np.float32)
    hu[body & (smooth > 1.4)] = 700  # bone
    hu[body & (smooth < -1.6)] = -800  # lung
    hu += np.round(rng.normal(0, 15, shape)).astype(np.float32) * body
    lo, hi = -200.0, 800.0  # "foreground percentiles": air clips to one constant
    hu = np.clip(hu, lo, hi)
    fg = hu[body]
    return ((hu - fg.mean()) / fg.std()).astype(np.float32)[None]


_CLOCK = time.process_time


def _ms(fn, *args, **kwargs) -> float:
    """Milliseconds of one call (process CPU time by default: robust to other load)."""
    t = _CLOCK()
    fn(*args, **kwargs)
    return (_CLOCK() - t) * 1e3


def _copy_npy(mm: np.ndarray, slices: list, out: np.ndarray | None = None) -> None:
    for i, s in enumerate(slices):
        if out is None:
            np.array(mm[s])
        else:
            np.copyto(out[i], mm[s])


def _read_zarr(arr: zarr.Array, slices: list, out: np.ndarray | None = None) -> None:
    for i, s in enumerate(slices):
        if out is None:
            arr[s]
        else:
            out[i] = arr[s]


def _read_each(fast: FastArray, origins: np.ndarray, box: tuple, out: np.ndarray) -> None:
    for i, o in enumerate(origins):
        fast.read(o, box, out=out[i])


def _touched() -> int:
    return STATS["bytes_decoded"] + STATS["bytes_mapped"]


def _origins(rng, vol: tuple, box: tuple, n: int, clustered: bool) -> np.ndarray:
    hi = np.maximum(np.array(vol) - np.array(box), 0)
    if not clustered:
        return (rng.random((n, 3)) * (hi + 1)).astype(np.int64)
    centre = rng.random(3) * (hi + 1)
    jitter = rng.uniform(-1, 1, (n, 3)) * np.array(box) * 0.75
    return np.clip(centre + jitter, 0, hi).astype(np.int64)


def bench_layout(name, arr, mm, sizes, gsizes, n_single, n_groups, n_zarr, rng) -> tuple:
    """(rows, first-read row) for one zarr array against the .npy memmap ``mm``."""
    fast = FastArray.open(arr)
    assert fast is not None, "fast path refused the benchmark array"
    policy = fast.verify
    others = {v: FastArray.open(arr, verify=v) for v in ("always", "off") if v != policy}
    vol = arr.shape[1:]
    rows = []
    for f in (fast, *others.values()):
        f.read((0, 0, 0), vol)  # warm: page cache, indices, maps (and "once": every crc)
    first = _first_read(name, arr, vol, policy)
    for box in sizes:
        if any(b > v for b, v in zip(box, vol)):
            continue
        orgs = _origins(rng, vol, box, n_single, clustered=False)
        t_npy, t_fast, t_zarr, amp = [], [], [], []
        t_other: dict[str, list] = {v: [] for v in others}
        delivered = 4 * np.prod(box) * arr.shape[0]
        for i, o in enumerate(orgs):
            sl = [(slice(None), *(slice(a, a + b) for a, b in zip(o, box)))]
            t_npy.append(_ms(_copy_npy, mm, sl))
            for v in _rotate(["fast", *others], i):  # the same boxes, fair cache state
                if v == "fast":
                    before = _touched()
                    t_fast.append(_ms(fast.read, o, box, dtype=np.float32))
                    amp.append((_touched() - before) / delivered)
                else:
                    t_other[v].append(_ms(others[v].read, o, box, dtype=np.float32))
            if i < n_zarr:
                t_zarr.append(_ms(_read_zarr, arr, sl))
        row = _row(
            name,
            "single",
            box,
            np.median(t_npy),
            np.median(t_fast),
            np.median(amp),
            np.median(t_zarr),
        )
        rows.append(_verify_cols(row, policy, t_fast, t_other))
    for box in gsizes:
        if any(b > v for b, v in zip(box, vol)):
            continue
        out = np.ones((64, arr.shape[0], *box), np.float32)  # like the loader's shared ring
        for mode in ("clustered", "spread"):
            t_npy, t_fast, t_loop, t_zarr, amp = [], [], [], [], []
            t_other = {v: [] for v in others}
            for g in range(n_groups):
                orgs = _origins(rng, vol, box, 64, clustered=mode == "clustered")
                sls = [(slice(None), *(slice(a, a + b) for a, b in zip(o, box))) for o in orgs]
                t_npy.append(_ms(_copy_npy, mm, sls, out))
                for v in _rotate(["fast", *others], g):
                    if v == "fast":
                        before = _touched()
                        t_fast.append(_ms(fast.read_many, orgs, box, out=out))
                        amp.append((_touched() - before) / out.nbytes)
                    else:
                        t_other[v].append(_ms(others[v].read_many, orgs, box, out=out))
                t_loop.append(_ms(_read_each, fast, orgs, box, out))
                if g < max(1, n_zarr // 20):
                    t_zarr.append(_ms(_read_zarr, arr, sls, out))
            row = _row(
                name,
                f"64x {mode}",
                box,
                np.median(t_npy),
                np.median(t_fast),
                np.median(amp),
                np.median(t_zarr),
            )
            row["fast_loop_ms"] = round(float(np.median(t_loop)), 3)
            rows.append(_verify_cols(row, policy, t_fast, t_other))
    return rows, first


def _first_read(name: str, arr, vol: tuple, policy: str) -> dict:  # noqa: ANN001
    """The whole volume read by a reader that has not verified anything yet ("once" pays
    every crc here, once per process) against no verification: fresh maps both times."""
    from pgps_data.store.mapped_files import FILES

    t = {}
    for v in ("off", policy, "off", policy):  # twice each, the better kept
        FILES.maps.clear()
        FILES.checked.clear()
        reader = FastArray.open(arr, verify=v)
        t[v] = min(t.get(v, np.inf), _ms(reader.read, (0, 0, 0), vol))
    return {
        "layout": name,
        "case": "first read",
        "box": "x".join(map(str, vol)),
        "verify": policy,
        "off_ms": round(t["off"], 3),
        "first_ms": round(t[policy], 3),
        "first_cost": round(t[policy] / t["off"], 3),
    }


def _rotate(items: list, i: int) -> list:
    k = i % len(items)
    return items[k:] + items[:k]


def _verify_cols(row: dict, policy: str, t_fast: list, t_other: dict) -> dict:
    """Add the checksum columns: each policy's median and its ratio to no verification."""
    med = {v: float(np.median(t)) for v, t in t_other.items()}
    med[policy] = float(np.median(t_fast))
    row.update(
        verify=policy,
        off_ms=round(med["off"], 3),
        always_ms=round(med["always"], 3),
        crc_cost=round(med[policy] / med["off"], 3),
        always_cost=round(med["always"] / med["off"], 3),
    )
    return row


def _row(layout, case, box, npy, fast, amp, zarr_ms) -> dict:
    return {
        "layout": layout,
        "case": case,
        "box": "x".join(map(str, box)),
        "npy_ms": round(float(npy), 3),
        "fast_ms": round(float(fast), 3),
        "ratio": round(float(npy / fast), 3),
        "amplification": round(float(amp), 2),
        "zarr_ms": round(float(zarr_ms), 3),
        "zarr_ratio": round(float(npy / zarr_ms), 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", nargs=3, type=int, metavar=("Z", "Y", "X"))
    p.add_argument("--quick", action="store_true", help="tiny volume, few repeats (CI smoke)")
    p.add_argument("--json", action="store_true", help="print rows as JSON")
    p.add_argument("--chunk", nargs=3, type=int)
    p.add_argument("--shard", nargs=3, type=int)
    p.add_argument("--no-shard", action="store_true")
    p.add_argument("--compressor", choices=["lz4", "zstd", "blosclz", "none"])
    p.add_argument("--clevel", type=int)
    p.add_argument("--shuffle", choices=["shuffle", "noshuffle", "bitshuffle"])
    p.add_argument("--dtype", choices=["float32", "float16"])
    p.add_argument(
        "--no-checksum", action="store_true", help="write chunks without crc32c (old stores)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu: this process's CPU time, all threads (default; robust to other processes)",
    )
    a = p.parse_args(argv)
    global _CLOCK
    _CLOCK = time.process_time if a.clock == "cpu" else time.perf_counter
    size = tuple(a.size or ((48, 96, 96) if a.quick else (160, 320, 320)))
    n_single, n_groups, n_zarr = (
        (20, 2, 5) if a.quick else (int(os.environ.get("BENCH_N", 150)), 12, 40)
    )
    sizes = SIZES[:2] if a.quick else SIZES
    gsizes = GROUP_SIZES[:1] if a.quick else GROUP_SIZES
    custom = (
        any(v is not None for v in (a.chunk, a.shard, a.compressor, a.clevel, a.dtype, a.shuffle))
        or a.no_shard
        or a.no_checksum
    )
    layouts = dict(LAYOUTS)
    if custom:
        base = LAYOUTS["default"]
        layouts = {
            "custom": Layout(
                chunk=tuple(a.chunk or base.chunk),
                shard=None if a.no_shard else tuple(a.shard or base.shard),
                compressor=a.compressor or base.compressor,
                clevel=a.clevel if a.clevel is not None else base.clevel,
                shuffle=a.shuffle or base.shuffle,
                image_dtype=a.dtype or base.image_dtype,
                checksum=not a.no_checksum,
            )
        }
    vol = ct_volume(size, a.seed)
    rng = np.random.default_rng(a.seed + 1)
    rows, firsts = [], []
    with tempfile.TemporaryDirectory(prefix="bench_read_") as tmp:
        np.save(Path(tmp) / "vol.npy", vol)
        mm = np.load(Path(tmp) / "vol.npy", mmap_mode="r")
        np.array(mm)  # warm the page cache
        group = zarr.open_group(Path(tmp) / "b.zarr", mode="w")
        for name, lay in layouts.items():
            arr = write_array(group, name, vol, kind="image", layout=lay)
            disk = sum(
                f.stat().st_size for f in (Path(tmp) / "b.zarr" / name).rglob("*") if f.is_file()
            )
            print(
                f"# layout {name}: {lay} on disk {disk / 1e6:.1f} MB "
                f"(raw {vol.nbytes / 1e6:.1f} MB)",
                file=sys.stderr,
            )
            got, first = bench_layout(name, arr, mm, sizes, gsizes, n_single, n_groups, n_zarr, rng)
            rows += got
            firsts.append(first)
    if a.json:
        doc = {"volume": list(size), "verify": DEFAULT_VERIFY, "rows": rows, "first_read": firsts}
        print(json.dumps(doc, indent=1))
        return 0
    print(
        f"volume (1, {size[0]}, {size[1]}, {size[2]}) float32, warm cache, one process, "
        f"{a.clock} clock"
    )
    print(f"checksum verification by default: {DEFAULT_VERIFY}")
    hdr = (
        f"{'layout':8} {'case':14} {'box':>11} {'npy ms':>8} {'fast ms':>8} {'ratio':>6} "
        f"{'amp':>5} {'zarr ms':>8} {'zarr r':>7} {'off ms':>8} {'always ms':>9} "
        f"{'crc x':>6} {'always x':>8}"
    )
    print(hdr)
    for r in firsts:
        print(
            f"{r['layout']:8} {'first read':14} {r['box']:>11}  whole volume, nothing "
            f"verified yet: {r['verify']} {r['first_ms']:.3f} ms, off {r['off_ms']:.3f} ms, "
            f"x {r['first_cost']:.3f} (once per process)"
        )
    for r in rows:
        extra = f"  (64 separate fast reads {r['fast_loop_ms']} ms)" if "fast_loop_ms" in r else ""
        print(
            f"{r['layout']:8} {r['case']:14} {r['box']:>11} {r['npy_ms']:8.3f} "
            f"{r['fast_ms']:8.3f} {r['ratio']:6.3f} {r['amplification']:5.2f} "
            f"{r['zarr_ms']:8.2f} {r['zarr_ratio']:7.3f} "
            f"{r['off_ms']:8.3f} {r['always_ms']:9.3f} {r['crc_cost']:6.3f} "
            f"{r['always_cost']:8.3f}"
            f"{extra}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
