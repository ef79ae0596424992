"""Ratios, goals and the printed tables of tools/bench_loader.py (one table per contender)."""

from __future__ import annotations

import benchlib as bl

GOALS = {
    "r_memmap_c": 0.3,  # ours (compressed store) / memory-map limit
    "r_memmap_u": 0.5,  # ours (uncompressed store) / memory-map limit
    "r_nnunet": 3.0,  # ours / nnU-Net as shipped
    "r_monai": 1.0,  # ours / MONAI CacheDataset + ThreadDataLoader
    "r_torchio": 5.0,  # ours / TorchIO Queue
}


def add_ratios(row: dict) -> None:
    """Ratios of ours (compressed store unless named) to each contender measured in ``row``."""
    row["r_memmap_c"] = bl.ratio(row["ours_c"], row["memmap"])
    row["r_memmap_u"] = bl.ratio(row["ours_u"], row["memmap"])
    for peer in ("nnunet", "monai", "torchio"):
        if peer in row:
            row[f"r_{peer}"] = bl.ratio(row["ours_c"], row[peer])
    if "monai_mb" in row:
        row["mem_share"] = bl.ratio(row["ours_mb"], row["monai_mb"])
        row["mem_share_anon"] = bl.ratio(row.get("ours_anon_mb"), row["monai_mb"])


def _ok(row: dict, key: str) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    return "yes" if v >= GOALS[key] else "NO"


STAGE = [("mode", "mode", 11), ("stage", "stage", 5), ("patch", "patch", 11),
         ("batch", "batch", 5)]


def report(r: dict) -> None:
    """Every table of one bench_loader run, with its configuration and machine load."""
    c = r["config"]
    print(f"loader benchmark: {c['cases']} synthetic cases of ~{tuple(c['size'])}, plan patch "
          f"{c['plan']['patch']} pools {c['plan']['pools']} batch {c['plan']['batch']}, "
          f"journal-2025; {c['workers']} processes per contender; Mvox/s = million image "
          f"voxels delivered per second, median of {c['windows']} x {c['seconds']} s windows")
    print(f"stores on disk: default codec ({r.get('codec', '?')}) {r['stores']['default']} MB, "
          f"none {r['stores']['none']} MB; {r['machine_before']} (start), "
          f"{r['machine_after']} (end)")
    rows = r["rows"]
    for row in rows:
        for key in GOALS:
            row[f"ok_{key}"] = _ok(row, key)
    bl.table("ours vs the memory-map limit (same crops copied from .npy memmaps; goals "
             ">= 0.3 compressed, >= 0.5 uncompressed)",
             STAGE + [("ours_c", "ours comp", 9), ("ours_u", "ours none", 9),
                      ("memmap", "memmap", 8), ("r_memmap_c", "ratio c", 7),
                      ("ok_r_memmap_c", "ok", 3), ("r_memmap_u", "ratio u", 7),
                      ("ok_r_memmap_u", "ok", 3)], rows)
    if any("nnunet" in row for row in rows):
        p = r.get("nnunet_plan") or {}
        bl.table(f"ours vs nnU-Net's loader as shipped (goal >= 3x; its plan for this data: "
                 f"patch {p.get('patch')} batch {p.get('batch')})",
                 STAGE + [("ours_c", "ours", 9), ("nnunet", "nnU-Net", 8),
                          ("r_nnunet", "ratio", 7), ("ok_r_nnunet", "ok", 3)], rows)
    if any("monai" in row for row in rows):
        bl.table("ours vs MONAI CacheDataset + RandCropByPosNegLabeld + ThreadDataLoader(0 "
                 "workers) (goal: >= 1x rate with <= 0.1x its memory; memory in MB)",
                 STAGE + [("ours_c", "ours", 9), ("monai", "MONAI", 8), ("r_monai", "ratio", 7),
                          ("ok_r_monai", "ok", 3), ("ours_mb", "ours MB", 8),
                          ("ours_anon_mb", "ours anon", 9), ("monai_mb", "MONAI MB", 8),
                          ("mem_share", "mem ratio", 9), ("mem_share_anon", "anon ratio", 10)],
                 rows)
        bl.table("ours vs TorchIO Queue + LabelSampler (goal >= 5x)",
                 STAGE + [("ours_c", "ours", 9), ("torchio", "TorchIO", 8),
                          ("r_torchio", "ratio", 7), ("ok_r_torchio", "ok", 3)], rows)
    bl.table("read amplification (bytes decoded or mapped / bytes delivered, image + label)",
             STAGE + [("amp_c", "comp", 6), ("amp_u", "none", 6)], rows)
    bl.table("stage change (first batch of a new stage / median batch of it; goal <= 2)",
             [("boundary", "stages", 7), ("patch", "patch", 11), ("batch", "batch", 5),
              ("first_ms", "first ms", 9), ("steady_ms", "steady ms", 9),
              ("ratio", "ratio", 6)], r["stage_change"])
    mem = r["memory"]
    if mem:
        marks = sorted(int(k[4:]) for k in mem[0] if k.startswith("uss_") and k[4:].isdigit())
        cols = [("store", "store", 7), ("cases", "cases", 5), ("store_gb", "GB", 6)]
        cols += [(f"uss_{n}", f"USS@{n}", 8) for n in marks]
        cols += [(f"anon_{n}", f"anon@{n}", 8) for n in marks]
        cols += [("uss_growth_mb", "USS +MB", 8), ("anon_growth_mb", "anon +MB", 8)]
        bl.table("loader memory, main + workers, MB after N batches (goal: flat)", cols, mem)
