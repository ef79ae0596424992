"""Shared fixtures: one tiny synthetic MSD dataset and its store, converted once per session.

The dataset is small enough to convert in a few seconds on two cores, yet its organ is
large enough (> 10 000 voxels in most cases) that the foreground indices take nnU-Net's
sampling branch, while the lesions keep every voxel.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pgps_data.raw.convert import convert
from pgps_data.synthetic.dataset import write_synthetic_dataset

TINY = {"cases": 4, "test_cases": 1, "size": (24, 48, 48), "organ_fraction": 0.2, "seed": 3}


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MSD-layout phantom dataset: 4 training cases and 1 test case (read-only use)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("raw") / "Task01_Tiny", **TINY)


@pytest.fixture(scope="session")
def tiny_store(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_raw`` converted in-process (workers=1) with default options (read-only use)."""
    out = tmp_path_factory.mktemp("store") / "tiny.zarr"
    lines: list[str] = []
    summary = convert(tiny_raw, out, workers=1, quiet=True, log=lines.append)
    assert summary["errors"] == [], summary["errors"]
    assert summary["converted"] == TINY["cases"] + TINY["test_cases"]
    (out.parent / "convert.log").write_text("\n".join(lines))
    return out


def assert_same_store(a: Path, b: Path, *, atol: float = 0.0, same_meta: bool = True) -> None:
    """Two stores hold the same cases with the same arrays, indices and case metadata."""
    import numpy as np

    from pgps_data.store.store import open_store

    sa, sb = open_store(a), open_store(b)
    assert sa.case_ids == sb.case_ids and sa.test_ids == sb.test_ids
    assert sa.case_ids, "no cases to compare"
    for cid in sa.case_ids + sa.test_ids:
        ca, cb = sa[cid], sb[cid]
        np.testing.assert_allclose(ca.image[...], cb.image[...], atol=atol, rtol=0)
        assert ca.meta["index_arrays"] == cb.meta["index_arrays"]
        if not ca.is_test:
            np.testing.assert_array_equal(ca.label[...], cb.label[...])
            for name in ca.meta["index_arrays"]:
                np.testing.assert_array_equal(ca.group[name][...], cb.group[name][...])
        if same_meta:
            assert ca.meta["label_counts"] == cb.meta["label_counts"]
            pa, pb = ca.meta["preprocessing"], cb.meta["preprocessing"]
            assert pa.keys() == pb.keys()
            for key in pa:  # spacings: NIfTI keeps float32, NRRD float64
                if key.startswith("spacing"):
                    np.testing.assert_allclose(pa[key], pb[key], rtol=1e-6)
                else:
                    assert pa[key] == pb[key], key


@pytest.fixture(autouse=True, scope="session")
def _python_ctrl_c() -> None:
    """Ctrl-C as a Python program gets it, even under a launcher that ignores SIGINT.

    A shell starts background jobs with SIGINT ignored, and Python then keeps it ignored;
    the Ctrl-C tests send SIGINT to this process and need Python's default handler.
    """
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
