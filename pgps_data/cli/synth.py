"""``pgps-synth OUT_DIR``: write a seeded CT-like phantom dataset (MSD or nnU-Net raw layout).

Runnable as ``python -m pgps_data.cli.synth``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pgps_data.errors import PGPSInputError
from pgps_data.synthetic.dataset import FILE_ENDINGS, PRESETS, SPLITS_FILE, write_synthetic_dataset
from pgps_data.synthetic.phantom import DEFAULT_LESIONS


def main(argv: list[str] | None = None) -> int:
    """The ``pgps-synth`` console script: write a phantom dataset and say what was written."""
    p = argparse.ArgumentParser(prog="pgps-synth", description="Write a seeded CT-like phantom "
                                "dataset (organ + rare lesions), MSD or nnU-Net v2 raw layout.")
    p.add_argument("out_dir", type=Path, help="new or empty directory, or an earlier output")
    p.add_argument("--cases", type=int, default=8, help="training cases (default 8)")
    p.add_argument("--test-cases", type=int, default=2, help="unlabelled test cases (default 2)")
    p.add_argument("--size", type=int, nargs=3, default=(64, 128, 128), metavar=("Z", "Y", "X"),
                   help="approximate voxel shape at the median spacing (default 64 128 128)")
    p.add_argument("--channels", type=int, choices=(1, 2), default=1, help="1: CT; 2: CT + MR")
    p.add_argument("--organ-fraction", type=float, default=0.03,
                   help="organ voxels / all voxels (default 0.03)")
    p.add_argument("--lesions", type=int, default=3, help="lesions per case (default 3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--layout", choices=("msd", "nnunet"), default="msd", help="default msd")
    p.add_argument("--file-ending", choices=FILE_ENDINGS, default=".nii.gz",
                   help="nnunet layout only; .nrrd/.mha are written with SimpleITK")
    p.add_argument("--ignore", action="store_true",
                   help="add an 'ignore' label on a few slabs away from the lesions "
                        "(value 3; 4 with --regions)")
    p.add_argument("--regions", action="store_true",
                   help="nnunet layout only: BraTS-like nested regions "
                        "(whole ⊃ core ⊃ enhancing)")
    p.add_argument("--held-out", type=int, default=0, metavar="N",
                   help=f"hold the last N labelled cases out of training: {SPLITS_FILE} with "
                        "one fold (pgps-train --splits FILE --fold 0)")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="lesion: pgps-compare's lesion benchmark (40 cases of 40x80x80, 24 "
                        "held out, lesions <= 0.05 %% of the voxels, varied size and contrast); "
                        "flags given explicitly override it")
    first, _ = p.parse_known_args(argv)
    preset = dict(PRESETS.get(first.preset) or {})
    lesion_spec = preset.pop("lesion_spec", DEFAULT_LESIONS)
    p.set_defaults(**preset)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    from tqdm import tqdm
    try:
        with tqdm(total=max(0, a.cases) + max(0, a.test_cases), unit="case", delay=2.0,
                  file=sys.stderr, leave=False) as bar:
            out = write_synthetic_dataset(
                a.out_dir, cases=a.cases, test_cases=a.test_cases, size=tuple(a.size),
                channels=a.channels, organ_fraction=a.organ_fraction, lesions=a.lesions,
                seed=a.seed, layout=a.layout, file_ending=a.file_ending, ignore=a.ignore,
                regions=a.regions, lesion_spec=lesion_spec, held_out=a.held_out,
                progress=lambda _id: bar.update(1))
    except PGPSInputError as e:
        print(f"pgps-synth: error: {e}", file=sys.stderr)
        return 2
    n_files = sum(1 for f in out.rglob("*") if f.is_file())
    print(f"wrote {a.cases} training + {a.test_cases} test cases ({a.layout} layout, "
          f"{a.channels} channel(s), {a.file_ending}) to {out}: {n_files} files, "
          f"{time.perf_counter() - t0:.1f} s")
    if a.held_out:
        print(f"held out of training: the last {a.held_out} labelled cases "
              f"({out / SPLITS_FILE}, fold 0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
