"""The loader benchmark's contenders other than ours: the memory-map limit, MONAI, TorchIO.

Each ``measure_*`` function returns ``{"mvox_per_s": median, "windows": [...], ...}`` in
million image voxels delivered per second, measured like ours (warm-up, then windows).

- ``measure_memmap``: the physical limit. ``processes`` forked processes each copy whole
  batches of the same crops (same patch, same batch size, random cases and origins) from
  the store's images saved as uncompressed .npy files, memory-mapped, with ``np.copyto``
  into a private preallocated batch array (no hand-off to a consumer: an upper bound). The
  windows are common wall-clock intervals; the voxels of every process are summed.
- ``measure_monai``: MONAI's fastest path (on a 2-core machine, 110-575 Mvox/s at patches
  32x64x64 to 80x160x160, against 36-202 for its DataLoader with 2 workers and 7-111 for
  PersistentDataset): CacheDataset holding
  every case in RAM (copy_cache=False; fg/bg indices precomputed by FgBgToIndicesd in the
  cache, else every crop scans its whole volume), RandCropByPosNegLabeld(pos=1, neg=1,
  num_samples=1), ThreadDataLoader(num_workers=0) with cases drawn with replacement. The
  arrays come straight from our store (same preprocessed data; no NIfTI decode). Its memory
  is the RSS growth while the cache fills.
- ``measure_torchio``: SubjectsDataset of the store's cases exported as .nii.gz, Queue with
  a LabelSampler (label_probabilities {0: 1, 1: 1}) and ``processes`` workers, SubjectsLoader.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from collections.abc import Sequence
from typing import Any

import benchlib as bl
import numpy as np


# ------------------------------------------------------------------------ memmap limit
def _memmap_worker(args: tuple) -> list[int]:
    paths, patch, batch, t_start, seconds, windows, seed = args
    mms = [np.load(p, mmap_mode="r") for p in paths]
    c = mms[0].shape[0]
    out = np.empty((batch, c, *patch), np.float32)
    rng = np.random.default_rng(seed)
    counts = [0] * windows
    t_stop = t_start + seconds * windows
    while True:
        for j in range(batch):
            mm = mms[int(rng.integers(len(mms)))]
            shape = mm.shape[1:]
            o = [int(rng.integers(max(s - p, 0) + 1)) for s, p in zip(shape, patch)]
            e = [min(p, s) for s, p in zip(shape, patch)]  # a smaller volume: copy what exists
            src = mm[:, o[0]:o[0] + e[0], o[1]:o[1] + e[1], o[2]:o[2] + e[2]]
            np.copyto(out[j, :, :e[0], :e[1], :e[2]], src)
        now = time.time()
        if now >= t_stop:
            return counts
        if now >= t_start:
            counts[int((now - t_start) // seconds)] += out.size


def measure_memmap(npy_paths: Sequence[str], patch: Sequence[int], batch: int, processes: int,
                   seconds: float, windows: int, warmup: float) -> dict[str, Any]:
    """Same crops copied out of memory-mapped .npy files by ``processes`` processes."""
    ctx = mp.get_context("fork")
    with ctx.Pool(processes) as pool:
        t_start = time.time() + warmup + 0.2
        jobs = [(list(npy_paths), tuple(patch), batch, t_start, seconds, windows, 1000 + k)
                for k in range(processes)]
        counts = pool.map(_memmap_worker, jobs)
    rates = [sum(c[w] for c in counts) / seconds / 1e6 for w in range(windows)]
    return {"mvox_per_s": round(statistics.median(rates), 2),
            "windows": [round(r, 2) for r in rates], "processes": processes}


# ------------------------------------------------------------------------------- MONAI
def monai_cache(store_path: str) -> tuple[Any, float]:
    """MONAI's CacheDataset over every training case of our store; (dataset, RSS growth MB)."""
    import gc

    from monai.data import CacheDataset
    from monai.transforms import FgBgToIndicesd

    from pgps_data.store.store import open_store

    gc.collect()
    before = bl.rss()
    store = open_store(store_path)
    data = [{"image": np.asarray(c.image[...], np.float32), "label": np.asarray(c.label[...])[None]}
            for c in store]
    ds = CacheDataset(data, transform=FgBgToIndicesd(keys="label"), cache_rate=1.0,
                      copy_cache=False, progress=False, num_workers=1)
    del data
    gc.collect()
    return ds, round((bl.rss() - before) / 1e6, 1)


def measure_monai(ds: Any, patch: Sequence[int], batch: int, seconds: float, windows: int,
                  warmup: float) -> dict[str, Any]:
    """RandCropByPosNegLabeld + ThreadDataLoader(num_workers=0) over a filled cache."""
    from monai.data import Dataset, ThreadDataLoader
    from monai.transforms import RandCropByPosNegLabeld
    from torch.utils.data import RandomSampler

    crop = RandCropByPosNegLabeld(keys=["image", "label"], label_key="label",
                                  spatial_size=tuple(patch), pos=1, neg=1, num_samples=1,
                                  fg_indices_key="label_fg_indices",
                                  bg_indices_key="label_bg_indices", allow_smaller=True)
    crops = Dataset(ds, transform=crop)  # the cached dicts, cropped on access
    sampler = RandomSampler(crops, replacement=True, num_samples=10**9)
    loader = ThreadDataLoader(crops, batch_size=batch, num_workers=0, sampler=sampler)
    it = iter(loader)
    rates = bl.rate_windows(lambda: next(it)["image"].numel(), seconds, windows, warmup)
    return {"mvox_per_s": round(statistics.median(rates), 2),
            "windows": [round(r, 2) for r in rates], "processes": 1}


# ----------------------------------------------------------------------------- TorchIO
def measure_torchio(files: Sequence[dict], patch: Sequence[int], batch: int, processes: int,
                    seconds: float, windows: int, warmup: float,
                    samples_per_volume: int = 8) -> dict[str, Any]:
    """TorchIO's Queue + LabelSampler over the cases as NIfTI files, ``processes`` workers."""
    import torchio as tio

    subjects = [tio.Subject(image=tio.ScalarImage(f["image"]), label=tio.LabelMap(f["label"]))
                for f in files]
    xyz = tuple(int(v) for v in patch[::-1])  # TorchIO's axes are the file's (i, j, k)
    sampler = tio.LabelSampler(patch_size=xyz, label_name="label",
                               label_probabilities={0: 1, 1: 1})
    queue = tio.Queue(tio.SubjectsDataset(subjects), max_length=max(2 * batch, 64),
                      samples_per_volume=samples_per_volume, sampler=sampler,
                      num_workers=processes, shuffle_subjects=True, shuffle_patches=True)
    loader = tio.SubjectsLoader(queue, batch_size=batch, num_workers=0)

    def batches():
        while True:  # one Queue epoch = len(subjects) * samples_per_volume patches
            yield from loader

    it = batches()
    rates = bl.rate_windows(lambda: next(it)["image"][tio.DATA].numel(), seconds, windows,
                            warmup)
    return {"mvox_per_s": round(statistics.median(rates), 2),
            "windows": [round(r, 2) for r in rates], "processes": processes,
            "samples_per_volume": samples_per_volume}
