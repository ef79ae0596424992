"""Resampling gives the same bytes whatever BLAS kernel and thread count a process runs.

The bug (issue 7, item 14): the resampler's banded matrix products ran multi-threaded
BLAS in the main process (one worker) and single-threaded BLAS in spawned workers, and
OpenBLAS's Haswell kernel rounds differently with one thread and with several: one-worker
and two-worker stores differed by 1 ulp in 4-10 % of the voxels wherever
``OPENBLAS_CORETYPE=Haswell`` was set. Here the same volumes are resampled in this
process and in subprocesses with other kernels and thread counts, and every output must
hash the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve()


def _digests() -> dict[str, str]:
    """sha256 of every resampling path a conversion or an export takes (seeded inputs)."""
    from pgps_data.raw.preprocess import compute_intensity_stats, preprocess_case
    from pgps_data.raw.resample import compute_new_shape, resample_label_to_shape, resample_to_shape
    from pgps_data.synthetic.dataset import synthetic_case

    rng = np.random.default_rng(14)
    volume = (rng.normal(size=(1, 30, 60, 60)) * 100).astype(np.float32)
    label = (rng.random((30, 60, 60)) > 0.6).astype(np.uint8)
    label[8:20, 10:40, 15:45] = 2
    probs = rng.random((2, 30, 60, 60)).astype(np.float32)
    case = synthetic_case(3, size=(24, 48, 48), organ_fraction=0.2, seed=3)
    stats = {"0": compute_intensity_stats([case.image[0][case.label > 0]])}
    image, lab, _ = preprocess_case(case.image, case.label, case.spacing, (1.9, 0.8, 0.8),
                                    ["CT"], stats, label_values=[0, 1, 2])
    outputs = {
        "cubic": resample_to_shape(volume, (41, 50, 77), (1.5, 0.8, 0.8), (1.1, 0.95, 0.62)),
        "cubic_anisotropic": resample_to_shape(volume, (40, 48, 48), (4.0, 0.8, 0.8),
                                               (3.0, 1.0, 1.0)),
        "cubic_order_z3": resample_to_shape(volume, (40, 48, 48), (4.0, 0.8, 0.8),
                                            (3.0, 1.0, 1.0), order=3, order_z=3),
        "linear_probabilities": resample_to_shape(probs, (23, 71, 52), (1, 1, 1), (1, 1, 1),
                                                  order=1),
        "label": resample_label_to_shape(
            label, compute_new_shape(label.shape, (1.5, 0.8, 0.8), (1.1, 0.95, 0.62)),
            (1.5, 0.8, 0.8), (1.1, 0.95, 0.62)),
        "case_image": image,
        "case_label": lab,
    }
    return {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
            for k, v in outputs.items()}


@lru_cache(maxsize=1)
def _here() -> dict[str, str]:
    return _digests()


def _has_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


_X86 = platform.machine().lower() in ("x86_64", "amd64")
_THREADS_1 = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
VARIANTS = {
    "haswell": ({"OPENBLAS_CORETYPE": "Haswell"}, _X86 and _has_avx2()),
    "haswell_1_thread": ({"OPENBLAS_CORETYPE": "Haswell", **_THREADS_1}, _X86 and _has_avx2()),
    "haswell_2_threads": ({"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_NUM_THREADS": "2"},
                          _X86 and _has_avx2()),
    "prescott": ({"OPENBLAS_CORETYPE": "Prescott"}, _X86),
    "1_thread": (_THREADS_1, True),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_resampling_is_byte_identical_across_blas_kernels_and_threads(variant: str) -> None:
    env_update, possible = VARIANTS[variant]
    if not possible:
        pytest.skip(f"OpenBLAS kernel of {variant} cannot run on this CPU")
    env = {**os.environ, **env_update}
    root = str(HERE.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), root) if p)
    code = ("import json, runpy, sys; "
            f"print(json.dumps(runpy.run_path({str(HERE)!r})['_digests']()))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    there = json.loads(proc.stdout.strip().splitlines()[-1])
    here = _here()
    differ = sorted(k for k in here if here[k] != there[k])
    assert not differ, f"{variant}: bytes differ from this process for {differ}"
