"""Loader benchmark: our streaming loader against the memory-map limit, nnU-Net, MONAI, TorchIO.

    python tools/bench_loader.py [--cases 16] [--size 120 240 240] [--workers 2]
                                 [--seconds 10] [--windows 3] [--quick] [--json]
                                 [--work DIR] [--skip-peers] [--with-peers] [--with-nnunet]
                                 [--augment-only] [--augment-windows N]

Data: a synthetic MSD task (``--cases`` of about ``--size`` voxels at the target spacing),
converted once with the default codec and once with ``--codec none``, cached under
``--work`` (default: $TMPDIR/pgps-bench) so reruns reuse it. Schedule: nnU-Net's plan for
this data (patch 80x160x160, pools (4, 5, 5), batch 2), journal-2025 rules; for the
smallest, a middle and the final stage of the efficiency and the performance schedule
(performance stages use the real curriculum, entered by loading a state at the stage's
first step, so their case grouping is the real one), side by side in one run, with the
same number of processes (``--workers``) for every contender except MONAI's fastest path
(0 workers by construction), in million image voxels delivered per second (median of
``--windows`` windows of ``--seconds`` after warm-up; ours and the memory-map limit run
their windows interleaved, one window per contender per round):

- ours on the compressed and on the uncompressed store; goals vs the memory-map limit
  (tools/bench_peers.py) >= 0.3 and >= 0.5 at every stage;
- nnU-Net's own loader as its trainer ships it (tools/nnunet_peer.py, same raw dataset
  preprocessed by nnU-Net once, same patch, batch and process count): goal ours >= 3x;
- MONAI's CacheDataset + ThreadDataLoader: goal ours >= 1x using <= 1/10 of its memory
  (ours: workers' USS + the main process's USS growth since the loader started);
- TorchIO's Queue: goal ours >= 5x.
Also: read amplification per stage (bytes decoded or mapped ÷ bytes delivered, image and
label together, replayed in this process with the fast reader's counters), the stage
change (time of the first batch of a new stage ÷ the median batch of that stage, goal
<= 2), and the loader's memory after many batches on a ~1 GB and a ~10 GB store (the
uncompressed store's case folders hard-linked under new case ids, so the copies share
their page-cache pages; goal: flat). That table shows USS (psutil; note it includes the
file-backed pages of shards the fast reader keeps memory-mapped, which no other process
maps: reclaimable page cache, not heap) and "anon" (Pss_Anon of /proc/PID/smaps_rollup
summed: the group's anonymous memory, the interpreter's copy-on-write pages counted once).
Our loader's memory against MONAI's cache: workers' USS + the main process's USS growth
("ours MB", conservative: includes mapped shard pages), and the group's anonymous memory
growth since the loader started ("ours anon").
Augmentation boxes: at every stage of both schedules, ours (compressed store,
``--workers`` processes) with nnU-Net's default spatial augmentation decided per slot
(``make_loader(augment=AugmentSpec())``: unwarped slots read the final patch, the ~36 %
warped ones the whole initial box) next to the same stage without augmentation, windows
interleaved; both in Mvox/s of FINAL-size crops (batch x patch x channels per batch, the
warped slots counted at the final size they become on the device), their ratio, the
warped fraction seen, and the voxels read per final voxel that the geometry implies
((1 - q) + q * |I| / |F|, q the warped fraction). ``--augment-only`` runs just this table.
``--quick``: 4 cases of (24, 48, 48), a small plan, 1-s windows, peers other than the
memory-map limit only with ``--with-peers``, augmentation at the last stage of the
performance schedule only (CI smoke, < 60 s).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_peers as peers  # noqa: E402
import bench_report  # noqa: E402
import benchlib as bl  # noqa: E402

from pgps_data import Curriculum, make_loader, open_store  # noqa: E402
from pgps_data.labels import Labels  # noqa: E402
from pgps_data.loader.sampling import Sampler, plan_origins  # noqa: E402
from pgps_data.schedule.augment_geometry import AugmentSpec, geometry_of  # noqa: E402
from pgps_data.store.fastread import STATS  # noqa: E402

FULL_PLAN = {"patch": (80, 160, 160), "pools": (4, 5, 5), "batch": 2}
QUICK_PLAN = {"patch": (16, 32, 32), "pools": (2, 3, 3), "batch": 2}
LONG = 10**6  # iterations per epoch of the measuring curricula: a stage outlasts any window


def curriculum(plan: dict, mode: str, ipe: int = LONG) -> Curriculum:
    """The journal-2025 schedule of ``plan`` with one epoch per stage."""
    probe = Curriculum.from_pools(patch=plan["patch"], pools=plan["pools"], epochs=10**4,
                                  iterations_per_epoch=1, batch=plan["batch"], mode=mode)
    return Curriculum.from_pools(patch=plan["patch"], pools=plan["pools"],
                                 epochs=len(probe.stages), iterations_per_epoch=ipe,
                                 batch=plan["batch"], mode=mode)


def start_at(loader, step: int) -> None:
    """Enter the stream at ``step`` exactly as a resumed run would."""
    state = loader.state_dict()
    state["next_step"] = step
    loader.load_state_dict(state)


def _close(loader) -> None:
    """Stop the workers and collect the pipeline now (its threads end before the next)."""
    loader.close()
    del loader
    gc.collect()


def measure_ours(store_path: Path, cur: Curriculum, stage, workers: int, seconds: float,
                 windows: int, warmup: float, augment: AugmentSpec | None = None,
                 seen: list[int] | None = None) -> dict:
    """Our loader at ``stage``: rate, and its memory (main-process growth + workers).

    The rate counts the batch's final-size image voxels (``image`` is (B, C, *F) with or
    without ``augment``); ``seen`` (if given) gains [warped slots, slots] of every batch.
    """
    me = os.getpid()
    main_before = bl.memory([me])
    loader = make_loader(open_store(store_path), cur, workers=workers, seed=0, augment=augment)
    start_at(loader, stage.start_iter)
    it = iter(loader)

    def one() -> int:
        batch = next(it)
        if seen is not None:
            seen[0] += len(batch.get("warp_slots", ()))
            seen[1] += batch["image"].shape[0]
        return batch["image"].numel()

    try:
        rates = bl.rate_windows(one, seconds, windows, warmup)
        pids = loader.worker_pids()
        main, work, group = bl.memory([me]), bl.memory(pids), bl.memory([me, *pids])
    finally:
        _close(loader)
    own = work["uss_mb"] + max(0.0, main["uss_mb"] - main_before["uss_mb"])
    anon = group["anon_mb"] - main_before["anon_mb"]
    return {"mvox_per_s": round(statistics.median(rates), 2),
            "windows": [round(r, 2) for r in rates], "loader_mb": round(own, 1),
            "loader_anon_mb": round(anon, 1),
            "main_uss_mb": main["uss_mb"], "workers_uss_mb": work["uss_mb"]}


def amplification(store_path: Path, cur: Curriculum, stage, steps: int) -> float | None:
    """Bytes decoded or mapped ÷ bytes delivered (image float32 + label uint8) over ``steps``
    steps of ``stage``, replaying the loader's own requests and reads in this process (the
    same origins as a worker plans, read by the same ``Case.read_many``)."""
    store = open_store(store_path)
    sampler = Sampler(store.case_ids, cur, seed=0)
    classes = Labels.from_store(store).forced_classes()
    c = store.channels
    delivered = touched = 0
    for step in range(stage.start_iter, stage.start_iter + steps):
        for req in sampler.requests(step):
            case = store[req.case_id]
            annotated = case.annotated() if store.ignore_label is not None else None
            origins, _ = plan_origins(req, case.shape, case.class_locations(classes), annotated)
            starts = [tuple(o - m for o, m in zip(org, req.margin)) for org in origins]
            before = STATS["bytes_decoded"] + STATS["bytes_mapped"]
            case.read_many(starts, req.read_shape)
            touched += STATS["bytes_decoded"] + STATS["bytes_mapped"] - before
            delivered += len(req.slots) * int(np.prod(req.read_shape)) * (4 * c + 1)
    return round(touched / delivered, 2) if touched else None


def augment_rows(store_path: Path, plan: dict, workers: int, seconds: float, windows: int,
                 warmup: float, quick: bool) -> list[dict]:
    """Final-size Mvox/s with and without the augmentation boxes, stage by stage (module doc)."""
    spec = AugmentSpec()
    rows = []
    for mode in ("performance",) if quick else ("efficiency", "performance"):
        cur = curriculum(plan, mode)
        s = len(cur.stages)
        for k in [s - 1] if quick else range(s):
            st = cur.stages[k]
            g = geometry_of(st.patch)
            bl.log(f"augment {mode} stage {k}: patch {st.patch} box {g.initial} batch {st.batch}")
            win: dict[str, list[float]] = {"plain": [], "aug": []}
            seen = [0, 0]
            args = (cur, st, workers, seconds, 1, warmup)
            for _ in range(windows):  # interleaved: plain, augmented, plain, ...
                win["plain"] += measure_ours(store_path, *args)["windows"]
                win["aug"] += measure_ours(store_path, *args, augment=spec, seen=seen)["windows"]
            plain, aug = (round(statistics.median(win[k]), 2) for k in ("plain", "aug"))
            q = seen[0] / seen[1] if seen[1] else None
            box = float(np.prod(g.initial)) / float(np.prod(st.patch))
            rows.append({"mode": mode, "stage": k, "patch": "x".join(map(str, st.patch)),
                         "batch": st.batch, "box": "x".join(map(str, g.initial)),
                         "dummy_2d": g.dummy_2d, "plain": plain, "aug": aug,
                         "ratio": bl.ratio(aug, plain),
                         "warped": None if q is None else round(q, 3),
                         "read_per_final": None if q is None else round(1 - q + q * box, 2),
                         "box_ratio": round(box, 2), "windows": win})
    return rows


def print_augment(rows: list[dict], workers: int) -> None:
    bl.table(f"augmentation boxes ({workers} workers, compressed store): Mvox/s of final-size "
             "crops without and with nnU-Net's spatial draw per slot (warped slots read the "
             "initial box |I|, the others the final patch |F|)",
             [("mode", "mode", 11), ("stage", "st", 3), ("patch", "patch", 11),
              ("batch", "batch", 5), ("box", "box I", 11), ("plain", "plain", 8),
              ("aug", "augment", 8), ("ratio", "ratio", 6), ("warped", "warped", 6),
              ("box_ratio", "|I|/|F|", 7), ("read_per_final", "read/F", 6)], rows)


def stage_change(store_path: Path, plan: dict, workers: int, per_stage: int) -> list[dict]:
    """First batch of a new stage ÷ the median batch of that stage, across three boundaries
    of the performance schedule (the batch size and patch both change there)."""
    cur = curriculum(plan, "performance", ipe=per_stage)
    s = len(cur.stages)
    pre = 4
    rows = []
    for k in sorted({1, s // 2, s - 1}):
        stage = cur.stages[k]
        loader = make_loader(open_store(store_path), cur, workers=workers, seed=0)
        start_at(loader, stage.start_iter - pre)
        it = iter(loader)
        times = []
        try:
            for _ in range(pre + per_stage):
                t0 = time.perf_counter()
                b = next(it)
                times.append((b["stage"], time.perf_counter() - t0))
        finally:
            _close(loader)
        new = [dt for st, dt in times if st == k]
        steady = statistics.median(new[2:])
        rows.append({"boundary": f"{k - 1}->{k}", "patch": "x".join(map(str, stage.patch)),
                     "batch": stage.batch, "first_ms": round(new[0] * 1e3, 1),
                     "steady_ms": round(steady * 1e3, 1), "ratio": bl.ratio(new[0], steady)})
    return rows


def memory_flat(stores: list[tuple[str, Path]], cur: Curriculum, stage, workers: int,
                batches: int) -> list[dict]:
    """Loader memory (main + workers) at checkpoints over ``batches`` batches per store."""
    rows = []
    marks = sorted({batches // 4, batches // 2, batches})
    for name, path in stores:
        store = open_store(path)
        loader = make_loader(store, cur, workers=workers, seed=0)
        start_at(loader, stage.start_iter)
        it = iter(loader)
        row = {"store": name, "cases": len(store.case_ids),
               "store_gb": round(bl.apparent_bytes(path / "cases") / 1e9, 2)}
        try:
            for n in range(1, batches + 1):
                next(it)
                if n in marks:
                    pids = [os.getpid(), *loader.worker_pids()]
                    m = bl.memory(pids)
                    row[f"uss_{n}"], row[f"anon_{n}"] = m["uss_mb"], m["anon_mb"]
        finally:
            _close(loader)
        row["uss_growth_mb"] = round(row[f"uss_{marks[-1]}"] - row[f"uss_{marks[0]}"], 1)
        row["anon_growth_mb"] = round(row[f"anon_{marks[-1]}"] - row[f"anon_{marks[0]}"], 1)
        rows.append(row)
    return rows


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--size", nargs=3, type=int, default=[120, 240, 240], metavar=("Z", "Y", "X"))
    p.add_argument("--workers", type=int, default=2, help="processes for every contender")
    p.add_argument("--seconds", type=float, default=10.0, help="length of one timed window")
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny store, 1-s windows (CI smoke)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pgps-bench")
    p.add_argument("--skip-peers", action="store_true",
                   help="only ours and the memory-map limit")
    p.add_argument("--with-peers", action="store_true", help="MONAI and TorchIO in --quick")
    p.add_argument("--with-nnunet", action="store_true", help="nnU-Net in --quick")
    p.add_argument("--memory-batches", type=int, default=400)
    p.add_argument("--augment-only", action="store_true",
                   help="only the augmentation-boxes table (ours, compressed store)")
    p.add_argument("--augment-windows", type=int, default=None,
                   help="windows per side in that table (default: --windows)")
    a = p.parse_args(argv)
    if a.quick:
        a.cases, a.size, a.seconds, a.windows, a.memory_batches = 4, [24, 48, 48], 1.0, 1, 40
    if a.augment_windows is None:
        a.augment_windows = a.windows
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    plan = QUICK_PLAN if a.quick else FULL_PLAN
    warmup = min(2.0, a.seconds / 2)
    base = a.work.resolve() / f"c{a.cases}_{'x'.join(map(str, a.size))}"
    raw = bl.synth_raw(base / "raw" / "Task500_PGPSSynthetic", a.cases, a.size)
    cw = 1 if a.quick else a.workers  # building the cache, not a measurement: 1 is faster tiny
    comp = bl.cached_store(raw, base / "default.zarr", "default", cw)
    if a.augment_only:
        result = {"config": {**vars(a), "work": str(a.work), "plan": plan, "warmup": warmup},
                  "machine_before": bl.machine_load(),
                  "augment": augment_rows(comp, plan, a.workers, a.seconds, a.augment_windows,
                                          warmup, a.quick),
                  "machine_after": bl.machine_load()}
        if a.json:
            print(json.dumps(result, indent=1, default=str))
        else:
            print(f"{result['machine_before']} (start), {result['machine_after']} (end)")
            print_augment(result["augment"], a.workers)
        return 0
    none = bl.cached_store(raw, base / "none.zarr", "none", cw)
    with_peers = not a.skip_peers and (not a.quick or a.with_peers)
    files = bl.export_cases(none, base / "export", nifti=with_peers)
    nn = None
    if not a.skip_peers and (not a.quick or a.with_nnunet) and bl.nnunet_python():
        nn = bl.cached_nnunet(raw, base / "nnunet", a.workers)
    result: dict = {"config": {**vars(a), "work": str(a.work), "plan": plan, "warmup": warmup},
                    "machine_before": bl.machine_load(),
                    "stores": {n: round(bl.disk_bytes(s) / 1e6, 1) for n, s in
                               (("default", comp), ("none", none))},
                    "nnunet_plan": None if nn is None else
                    {"patch": nn["patch_size"], "batch": nn["batch_size"]}}
    result["codec"] = (open_store(comp).meta.get("layout") or {}).get("compressor")
    monai_ds = None
    if with_peers:
        monai_ds, result["monai_cache_mb"] = peers.monai_cache(str(none))
    rows = []
    for mode in ("efficiency", "performance"):
        cur = curriculum(plan, mode)
        s = len(cur.stages)
        for k in sorted({0, s - 1} if a.quick else {0, s // 2, s - 1}):
            st = cur.stages[k]
            bl.log(f"{mode} stage {k}: patch {st.patch} batch {st.batch}")
            row = {"mode": mode, "stage": k, "patch": "x".join(map(str, st.patch)),
                   "batch": st.batch}
            # Rounds of one window each, contenders interleaved (A B C A B C ...), so a
            # change of load on this shared machine hits all three alike.
            win: dict[str, list[float]] = {"c": [], "u": [], "mm": []}
            args = (cur, st, a.workers, a.seconds, 1, warmup)
            for _ in range(a.windows):
                oc, ou = measure_ours(comp, *args), measure_ours(none, *args)
                mm = peers.measure_memmap([f["npy"] for f in files], st.patch, st.batch,
                                          a.workers, a.seconds, 1, warmup)
                for key, res in (("c", oc), ("u", ou), ("mm", mm)):
                    win[key] += res["windows"]
            med = {k: round(statistics.median(v), 2) for k, v in win.items()}
            row.update(ours_c=med["c"], ours_u=med["u"], memmap=med["mm"],
                       ours_mb=oc["loader_mb"], ours_anon_mb=oc["loader_anon_mb"],
                       windows=win)
            if nn is not None:
                res = bl.nnunet_peer(["loader", "--preprocessed", nn["preprocessed_dir"],
                                      "--plans", nn["plans"], "--patch", *st.patch,
                                      "--batch", st.batch, "--processes", a.workers,
                                      "--seconds", a.seconds, "--windows", a.windows,
                                      "--warmup", warmup],
                                     timeout=a.seconds * a.windows + 300)
                row["nnunet"] = None if res is None else res["mvox_per_s"]
            if monai_ds is not None:
                row["monai"] = peers.measure_monai(monai_ds, st.patch, st.batch, a.seconds,
                                                   a.windows, warmup)["mvox_per_s"]
                row["monai_mb"] = result["monai_cache_mb"]
                row["torchio"] = peers.measure_torchio(files, st.patch, st.batch, a.workers,
                                                       a.seconds, a.windows,
                                                       warmup)["mvox_per_s"]
            steps = 3 if a.quick else 8
            row["amp_c"] = amplification(comp, cur, st, steps)
            row["amp_u"] = amplification(none, cur, st, steps)
            bench_report.add_ratios(row)
            rows.append(row)
    result["rows"] = rows
    del monai_ds
    result["augment"] = augment_rows(comp, plan, a.workers, a.seconds, a.augment_windows,
                                     warmup, a.quick)
    bl.log("stage change ...")
    result["stage_change"] = stage_change(comp, plan, a.workers, 8 if a.quick else 16)
    bl.log("memory on ~1 GB and ~10 GB stores ...")
    gb = 10**9 if not a.quick else 10**6
    s1, _ = bl.replicate_store(none, base / "rep_1.zarr", gb)
    s10, _ = bl.replicate_store(none, base / "rep_10.zarr", 10 * gb)
    eff = curriculum(plan, "efficiency")
    result["memory"] = memory_flat([("~1 GB" if not a.quick else "~1 MB", s1),
                                    ("~10 GB" if not a.quick else "~10 MB", s10)],
                                   eff, eff.stages[len(eff.stages) // 2], a.workers,
                                   a.memory_batches)
    result["machine_after"] = bl.machine_load()
    if a.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        bench_report.report(result)
        print_augment(result["augment"], a.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
