"""Shared pieces of the benchmarks in tools/: cached datasets and stores, timing, memory, tables.

Used by ``bench_convert.py`` and ``bench_loader.py`` (the contenders other than our loader
live in ``bench_peers.py``). Everything expensive (the synthetic raw dataset, its stores,
the .npy / NIfTI exports, nnU-Net's preprocessed copy) is built once under a work folder and
reused by later runs, so a rerun measures instead of rebuilding.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
_T0 = time.perf_counter()
NNUNET_PEER = ROOT / "tools" / "nnunet_peer.py"


def log(*args: Any) -> None:
    """Progress goes to stderr: stdout holds the tables or the one JSON object."""
    print(f"# [{time.perf_counter() - _T0:6.1f} s]", *args, file=sys.stderr, flush=True)


def machine_load() -> str:
    """The 1/5/15-min load averages and the core count: ratios are only fair side by side."""
    a, b, c = os.getloadavg()
    return f"load {a:.2f} {b:.2f} {c:.2f} on {os.cpu_count()} cores"


def nnunet_python() -> Path | None:
    """The nnU-Net venv's python (built by tools/nnunet_venv.sh), or None if it is missing."""
    py = ROOT / ".venv-nnunet" / "bin" / "python"
    return py if py.exists() else None


def disk_bytes(path: Path) -> int:
    """Bytes a folder really occupies (allocated blocks; hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def apparent_bytes(path: Path) -> int:
    """Sum of file sizes, each hard link counted (what a reader of the store sees)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# ---------------------------------------------------------------------------- datasets
def synth_raw(folder: Path, cases: int, size: Sequence[int], seed: int = 0) -> Path:
    """A synthetic MSD task (training cases only) in ``folder``, generated once and cached.

    Our generator gives every case its own anisotropic spacing, so both converters resample.
    No test cases: nnU-Net's plan_and_preprocess handles training cases only.
    """
    from pgps_data.synthetic.dataset import write_synthetic_dataset

    marker = folder / ".bench_done"
    want = json.dumps({"cases": cases, "size": list(size), "seed": seed})
    if marker.exists() and marker.read_text() == want:
        return folder
    t0 = time.perf_counter()
    write_synthetic_dataset(folder, cases=cases, test_cases=0, size=tuple(size), seed=seed)
    marker.write_text(want)
    log(f"generated {cases} synthetic cases of ~{tuple(size)} in {time.perf_counter() - t0:.1f} s")
    return folder


def run_convert(raw: Path, out: Path, codec: str, workers: int) -> float:
    """Run ``pgps-convert RAW OUT`` as a subprocess into a fresh ``out``; wall seconds."""
    if out.exists():
        shutil.rmtree(out)
    exe = Path(sys.executable).parent / "pgps-convert"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pgps_data.cli.convert"]
    cmd += [str(raw), str(out), "--workers", str(workers), "--codec", codec]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pgps-convert failed ({proc.returncode}):\n{proc.stdout[-2000:]}")
    return dt


def cached_store(raw: Path, out: Path, codec: str, workers: int) -> Path:
    """``raw`` converted with ``codec`` once; a marker beside the store records success."""
    from pgps_data.raw.convert import convert

    marker = out.with_suffix(".done")
    if not (marker.exists() and out.exists()):
        if out.exists():
            shutil.rmtree(out)
        t0 = time.perf_counter()  # in-process: saves a second interpreter start (imports)
        summary = convert(raw, out, workers=workers, codec=codec, quiet=True,
                          log=lambda *_: None)
        if summary["errors"]:
            raise SystemExit(f"pgps-convert {raw} failed: {summary['errors'][:3]}")
        dt = time.perf_counter() - t0
        marker.write_text(f"{dt:.3f}")
        log(f"converted {raw.name} -> {out.name} (codec {codec}) in {dt:.1f} s")
    return out


def replicate_store(src: Path, dst: Path, target_bytes: int) -> tuple[Path, int]:
    """A store whose case list repeats ``src``'s cases (hard links) until it holds at least
    ``target_bytes`` of apparent data. Cheap: no data is written; page-cache pages are shared
    between copies, so this measures the loader's own memory, not the page cache."""
    per_copy = apparent_bytes(src / "cases")
    copies = max(1, -(-target_bytes // max(per_copy, 1)))
    marker = dst.with_suffix(".done")
    if marker.exists() and marker.read_text() == str(copies):
        return dst, copies
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.name != "cases":
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, dst / item.name)
    (dst / "cases").mkdir()
    shutil.copy2(src / "cases" / "zarr.json", dst / "cases" / "zarr.json")
    cases = sorted(p for p in (src / "cases").iterdir() if p.is_dir())
    for r in range(copies):
        for case in cases:
            shutil.copytree(case, dst / "cases" / f"{case.name}_r{r:03d}", copy_function=os.link)
    marker.write_text(str(copies))
    return dst, copies


def export_cases(store_path: Path, folder: Path, nifti: bool) -> list[dict[str, str]]:
    """The store's preprocessed cases as plain files (once): image .npy (C, Z, Y, X) float32
    for the memory-map limit, and optionally image/label .nii.gz for TorchIO."""
    from pgps_data.store.store import open_store

    folder.mkdir(parents=True, exist_ok=True)
    store = open_store(store_path)
    out = []
    for case in store:
        npy, img, lab = (folder / f"{case.id}{s}" for s in (".npy", "_image.nii.gz", "_label.nii.gz"))
        image = None
        if not npy.exists():
            image = np.ascontiguousarray(case.image[...], dtype=np.float32)
            np.save(npy, image)
        if nifti and not lab.exists():
            import nibabel as nib

            image = image if image is not None else np.load(npy)
            aff = np.diag([*store.spacing[::-1], 1.0])  # (i, j, k) = (X, Y, Z)
            nib.save(nib.Nifti1Image(image[0].T, aff), img)
            nib.save(nib.Nifti1Image(np.asarray(case.label[...]).T, aff), lab)
        out.append({"id": case.id, "npy": str(npy), "image": str(img), "label": str(lab)})
    return out


# ------------------------------------------------------------------------- nnU-Net peer
def nnunet_peer(args: Sequence[str], timeout: float = 3600) -> dict[str, Any] | None:
    """Run tools/nnunet_peer.py in .venv-nnunet; its JSON result, or None (logged) on failure."""
    py = nnunet_python()
    if py is None:
        return None
    cmd = [str(py), str(NNUNET_PEER), *map(str, args)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"nnunet_peer {args[0]} timed out after {timeout:.0f} s")
        return None
    if proc.returncode != 0:
        log(f"nnunet_peer {args[0]} failed ({proc.returncode}): {proc.stderr[-1500:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cached_nnunet(raw: Path, work: Path, np_: int) -> dict[str, Any] | None:
    """nnU-Net's conversion + plan_and_preprocess of ``raw`` under ``work``, run once."""
    cache = work / "nnunet_convert.json"
    if cache.exists():
        res = json.loads(cache.read_text())
        if Path(res["preprocessed_dir"]).is_dir():
            return res
    log("running nnU-Net's convert + plan_and_preprocess once (cached for later runs)")
    res = nnunet_peer(["convert", raw, "--work", work, "--np", np_])
    if res is not None:
        cache.write_text(json.dumps(res))
    return res


# ---------------------------------------------------------------------- timing, memory
def rate_windows(next_voxels: Callable[[], int], seconds: float, windows: int,
                 warmup: float) -> list[float]:
    """Million voxels per second in ``windows`` windows of ``seconds`` after ``warmup`` s.

    ``next_voxels`` produces one batch and returns its image voxels. Warm-up takes at
    least two batches (the first one starts the workers).
    """
    t_end, n = time.perf_counter() + warmup, 0
    while n < 2 or time.perf_counter() < t_end:
        next_voxels()
        n += 1
    rates = []
    for _ in range(windows):
        v, t0 = 0, time.perf_counter()
        while True:
            v += next_voxels()
            dt = time.perf_counter() - t0
            if dt >= seconds:
                break
        rates.append(v / dt / 1e6)
    return rates


def memory(pids: Sequence[int]) -> dict[str, float]:
    """USS, PSS and anonymous memory (MB) summed over ``pids`` (gone processes skipped).

    ``anon_mb`` sums Pss_Anon: anonymous pages shared copy-on-write after a fork count once
    over the group (USS leaves them out; Anonymous: would count them in every process)."""
    uss = pss = anon = 0.0
    for pid in pids:
        try:
            info = psutil.Process(pid).memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        uss += info.uss
        pss += getattr(info, "pss", 0)
        anon += _anonymous(pid)
    return {"uss_mb": round(uss / 1e6, 1), "pss_mb": round(pss / 1e6, 1),
            "anon_mb": round(anon / 1e6, 1)}


def _anonymous(pid: int) -> int:
    """Proportional anonymous bytes of one process (Pss_Anon of /proc/PID/smaps_rollup;
    Anonymous: on kernels without it; 0 where unavailable)."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("Pss_Anon", "Anonymous"):
                    fields[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return fields.get("Pss_Anon", fields.get("Anonymous", 0))


def rss(pid: int | None = None) -> int:
    """Resident bytes of a process (default: this one)."""
    return psutil.Process(pid or os.getpid()).memory_info().rss


# ------------------------------------------------------------------------------ output
def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded, or None when either side is missing."""
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 3)


def fmt(v: Any, width: int) -> str:
    """One right-aligned table cell; missing values print as '-'."""
    if v is None:
        s = "-"
    elif isinstance(v, float):
        s = f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    else:
        s = str(v)
    return s.rjust(width)


def table(title: str, columns: Sequence[tuple[str, str, int]], rows: Sequence[dict]) -> None:
    """Print rows (dicts) under ``title``; ``columns`` are (key, header, width)."""
    print(f"\n{title}" if title else "")
    print(" ".join(h.rjust(w) for _, h, w in columns))
    for r in rows:
        print(" ".join(fmt(r.get(k), w) for k, _, w in columns))
