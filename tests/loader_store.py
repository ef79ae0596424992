"""A tiny converted store shared by the sampler and loader tests (built once per session)."""

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
