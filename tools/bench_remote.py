"""Remote-store benchmark: the loader on a store read over HTTP against the same store local.

    python tools/bench_remote.py [--cases 16] [--size 120 240 240] [--workers 2]
                                 [--seconds 10] [--windows 3] [--latency-ms 0 5]
                                 [--quick] [--json] [--work DIR]

Data: bench_loader's synthetic task and compressed store (the same cache under ``--work``,
so ``make bench`` converts it once). The store folder is served read-only by a threaded
HTTP server on 127.0.0.1 that honours Range and cannot list (tools/range_server.py), once
as it is and once per ``--latency-ms`` with that delay before every answer (a network's
round trip; 0 = loopback only). For the smallest, a middle and the final stage of the
efficiency and the performance schedule (nnU-Net's plan for this data, journal-2025 rules,
``--workers`` loader processes for both), side by side, windows interleaved: million image
voxels delivered per second local and over HTTP, their ratio, and per batch the range
requests sent and the MiB fetched (what the batches report in ``fetched``; the per-worker
chunk cache, PGPS_REMOTE_CACHE_MB, is what keeps small crops from refetching). The HTTP
server runs in this process and shares the machine's cores with the workers, so on few
cores the ratio is a lower bound for a real server. ``--quick``: 4 cases of (24, 48, 48),
a small plan, 1-s windows, one window, no latency runs (CI smoke, < 60 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_loader as loader_bench  # noqa: E402
import benchlib as bl  # noqa: E402
from range_server import RangeServer  # noqa: E402

from pgps_data import make_loader, open_store  # noqa: E402


def measure(store: str | Path, cur, stage, workers: int, seconds: float,  # noqa: ANN001
            warmup: float) -> dict:
    """One window of the loader at ``stage``: Mvox/s, and requests and MiB per batch."""
    loader = make_loader(open_store(store), cur, workers=workers, seed=0)
    loader_bench.start_at(loader, stage.start_iter)
    it = iter(loader)
    fetched = [0, 0, 0]  # requests, bytes, batches (counted inside the window only)
    counting = [False]

    def one() -> int:
        batch = next(it)
        if counting[0]:
            fetched[0] += batch["fetched"][0]
            fetched[1] += batch["fetched"][1]
            fetched[2] += 1
        return batch["image"].numel()

    try:
        bl.rate_windows(one, 0.0, 0, warmup)  # warm-up only (starts workers, fills caches)
        counting[0] = True
        (rate,) = bl.rate_windows(one, seconds, 1, 0.0)
    finally:
        loader_bench._close(loader)
    n = max(fetched[2], 1)
    return {"mvox_per_s": rate, "requests_per_batch": fetched[0] / n,
            "mib_per_batch": fetched[1] / n / 2**20}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--size", type=int, nargs=3, default=[120, 240, 240])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--latency-ms", type=float, nargs="*", default=[5.0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pgps-bench")
    a = p.parse_args(argv)
    if a.quick:
        a.cases, a.size, a.seconds, a.windows, a.latency_ms = 4, [24, 48, 48], 1.0, 1, []
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    plan = loader_bench.QUICK_PLAN if a.quick else loader_bench.FULL_PLAN
    warmup = min(2.0, a.seconds / 2)
    base = a.work.resolve() / f"c{a.cases}_{'x'.join(map(str, a.size))}"
    raw = bl.synth_raw(base / "raw" / "Task500_PGPSSynthetic", a.cases, a.size)
    local = bl.cached_store(raw, base / "default.zarr", "default", 1 if a.quick else a.workers)
    servers = [("http", 0.0), *((f"http+{ms:g}ms", ms / 1000) for ms in a.latency_ms)]
    rows = []
    for mode in ("efficiency", "performance"):
        cur = loader_bench.curriculum(plan, mode)
        picks = sorted({0, len(cur.stages) // 2, len(cur.stages) - 1})
        for k in picks:
            stage = cur.stages[k]
            row: dict = {"mode": mode, "stage": k, "patch": "x".join(map(str, stage.patch)),
                         "batch": stage.batch}
            found: dict[str, list[dict]] = {"local": []}
            for _ in range(a.windows):  # interleaved: one window of each per round
                found["local"].append(measure(local, cur, stage, a.workers, a.seconds, warmup))
                for name, delay in servers:
                    with RangeServer(local.parent, delay=delay) as url:
                        found.setdefault(name, []).append(measure(
                            f"{url}/{local.name}", cur, stage, a.workers, a.seconds, warmup))
            row["local"] = round(statistics.median(m["mvox_per_s"] for m in found["local"]), 2)
            for name, _ in servers:
                got = found[name]
                rate = statistics.median(m["mvox_per_s"] for m in got)
                row[name] = round(rate, 2)
                row[f"r_{name}"] = round(rate / row["local"], 3) if row["local"] else None
                row[f"req_{name}"] = round(statistics.median(m["requests_per_batch"] for m in got), 1)
                row[f"mib_{name}"] = round(statistics.median(m["mib_per_batch"] for m in got), 2)
            rows.append(row)
            bl.log(f"{mode} stage {k}: {row}")
    result = {"config": {**vars(a), "work": str(a.work), "plan": plan},
              "machine": bl.machine_load(), "servers": [s for s, _ in servers], "rows": rows}
    if a.json:
        print(json.dumps(result, indent=1, default=str))
        return 0
    print(f"{result['machine']}; {a.workers} loader workers each; Mvox/s median of "
          f"{a.windows} windows of {a.seconds:g} s, interleaved")
    cols = [("mode", "mode", 11), ("stage", "stage", 5), ("patch", "patch", 11),
            ("batch", "batch", 5), ("local", "local", 7)]
    for name, _ in servers:
        cols += [(name, name, max(8, len(name))), (f"r_{name}", "ratio", 6),
                 (f"req_{name}", "req/b", 6), (f"mib_{name}", "MiB/b", 6)]
    bl.table("Loader over HTTP (127.0.0.1) vs local: Mvox/s, ratio, requests and MiB "
             "fetched per batch", cols, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
