"""A tiny converted store shared by the sampler and loader tests, and the loader's workers."""

from __future__ import annotations

from pathlib import Path

from pgps_data.raw.convert import convert
from pgps_data.synthetic.dataset import write_synthetic_dataset


def build_store(root: Path, *, cases: int = 4, size=(24, 48, 48), seed: int = 3, **synth) -> Path:
    raw = write_synthetic_dataset(root / "raw", cases=cases, test_cases=1, size=size,
                                  seed=seed, **synth)
    out = root / "store.zarr"
    convert(raw, out, workers=1, quiet=True, log=lambda *a, **k: None)
    return out


def live_loader_workers() -> list[int]:
    """Pids of this process's loader workers still running (not zombies): children whose
    command line runs pgps_data.loader.worker."""
    import psutil

    out = []
    for child in psutil.Process().children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and any(
                    "pgps_data.loader.worker" in part for part in child.cmdline()):
                out.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return out
