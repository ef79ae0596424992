"""nnU-Net peer: runs nnU-Net v2's own conversion, planning and training loader for our benchmarks.

Run it INSIDE the nnU-Net venv (built by ``bash tools/nnunet_venv.sh``)::

    .venv-nnunet/bin/python tools/nnunet_peer.py convert MSD_TASK_DIR --work DIR --np 2
    .venv-nnunet/bin/python tools/nnunet_peer.py loader --preprocessed DIR/nnUNet_preprocessed/Dataset501_X/nnUNetPlans_3d_fullres \
        --plans DIR/nnUNet_preprocessed/Dataset501_X/nnUNetPlans.json --patch 32 64 64 --batch 2 --processes 2 --seconds 5

Each subcommand prints exactly one JSON object on stdout; everything else goes to stderr.
This file never imports pgps (it lives in another venv) and pgps never imports nnU-Net.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DATASET_ID = 501  # nnU-Net reserves 001-010 for MSD tasks; 5xx is free for local datasets


def log(*args) -> None:
    print("[nnunet_peer]", *args, file=sys.stderr, flush=True)


def nnunet_env(work: Path) -> dict:
    """The three nnU-Net path variables, all under ``work``."""
    return {
        "nnUNet_raw": str(work / "nnUNet_raw"),
        "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
        "nnUNet_results": str(work / "nnUNet_results"),
    }


def _cli(name: str) -> str:
    """Path of an nnU-Net console script installed beside this interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise SystemExit(f"{path} not found: run this script with the nnU-Net venv's python "
                         f"(bash tools/nnunet_venv.sh builds .venv-nnunet)")
    return str(path)


def _stage_msd(src: Path, staging: Path, dataset_id: int) -> tuple[Path, str]:
    """A TaskNN_Name view of ``src`` that nnUNetv2_convert_MSD_dataset accepts.

    The dataset is named after dataset.json's "name" (letters and digits only; else the folder
    name), so the nnU-Net dataset is ``Dataset<id>_<Name>``. The converter needs a folder named
    ``Task<id>_<Name>`` (exactly one underscore), an
    ``imagesTs`` folder (may be empty) and ``training``/``test`` keys in dataset.json. We link
    the source folders into a staging folder instead of touching the source dataset.
    """
    if not (src / "imagesTr").is_dir() or not (src / "labelsTr").is_dir() or not (src / "dataset.json").is_file():
        raise SystemExit(f"{src}: not an MSD task folder (needs imagesTr/, labelsTr/ and dataset.json)")
    meta = json.loads((src / "dataset.json").read_text())
    raw_name = str(meta.get("name") or re.sub(r"^Task\d+_", "", src.name))
    name = re.sub(r"[^A-Za-z0-9]", "", raw_name) or "Dataset"
    task = staging / f"Task{dataset_id:03d}_{name}"
    if task.exists():
        shutil.rmtree(task)
    task.mkdir(parents=True)
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).symlink_to((src / sub).resolve(), target_is_directory=True)
    if (src / "imagesTs").is_dir():
        (task / "imagesTs").symlink_to((src / "imagesTs").resolve(), target_is_directory=True)
    else:
        (task / "imagesTs").mkdir()
    meta.setdefault("training", [])
    meta.setdefault("test", [])
    if "modality" not in meta and "channel_names" in meta:
        meta["modality"] = meta["channel_names"]
    (task / "dataset.json").write_text(json.dumps(meta, indent=1))
    return task, name


def _run_timed(cmd: list[str], env: dict) -> float:
    log("$", " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed with exit code {proc.returncode}")
    return seconds


def cmd_convert(args) -> dict:
    src = Path(args.msd_task_dir).resolve()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    paths = nnunet_env(work)
    for p in paths.values():
        Path(p).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **paths}

    task, name = _stage_msd(src, work / "msd_staging", args.dataset_id)
    dataset_name = f"Dataset{args.dataset_id:03d}_{name}"
    for root in paths.values():  # a rerun in the same work dir starts from scratch
        stale = Path(root) / dataset_name
        if stale.exists():
            log("removing previous", stale)
            shutil.rmtree(stale)
    n_cases = len([f for f in os.listdir(src / "imagesTr") if f.endswith(".nii.gz") and not f.startswith((".", "_"))])

    seconds_convert = _run_timed(
        [_cli("nnUNetv2_convert_MSD_dataset"), "-i", str(task), "-overwrite_id", str(args.dataset_id),
         "-np", str(args.np)], env)
    plan_cmd = [_cli("nnUNetv2_plan_and_preprocess"), "-d", str(args.dataset_id), "-c", "3d_fullres",
                "-np", str(args.np), "-npfp", str(args.np)]
    if not args.no_verify:
        plan_cmd.append("--verify_dataset_integrity")
    seconds_plan = _run_timed(plan_cmd, env)

    pre = Path(paths["nnUNet_preprocessed"]) / dataset_name
    plans_path = pre / "nnUNetPlans.json"
    plans = json.loads(plans_path.read_text())
    cfg = plans["configurations"]["3d_fullres"]
    data_dir = pre / cfg.get("data_identifier", "nnUNetPlans_3d_fullres")
    total = seconds_convert + seconds_plan
    return {
        "cases": n_cases,
        "seconds_convert": round(seconds_convert, 3),
        "seconds_plan_preprocess": round(seconds_plan, 3),
        "cases_per_min": round(n_cases / total * 60.0, 3),
        "cases_per_min_plan_preprocess": round(n_cases / seconds_plan * 60.0, 3),
        "verify_dataset_integrity": not args.no_verify,
        "np": args.np,
        "dataset_id": args.dataset_id,
        "dataset_name": dataset_name,
        "env": paths,
        "plans": str(plans_path),
        "fingerprint": str(pre / "dataset_fingerprint.json"),
        "preprocessed_dir": str(data_dir),
        "file_format": sorted({f.suffix for f in data_dir.iterdir()}),
        "patch_size": cfg["patch_size"],
        "batch_size": cfg["batch_size"],
        "spacing": cfg["spacing"],
        "pool_op_kernel_sizes": cfg.get("architecture", {}).get("arch_kwargs", {}).get("strides"),
        "transpose_forward": plans.get("transpose_forward"),
    }


def _build_loader(args):
    """nnUNetDataLoader as nnUNetTrainer.get_dataloaders builds it, minus augmentation."""
    # nnunetv2.paths reads these at import; our loader never uses them, but keep imports quiet.
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(var, str(Path(args.preprocessed).resolve().parent))
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = str(Path(args.preprocessed).resolve())
    plans_path = Path(args.plans).resolve()
    dataset_json = Path(args.dataset_json) if args.dataset_json else plans_path.parent / "dataset.json"
    plans = PlansManager(str(plans_path))
    label_manager = plans.get_label_manager(load_json(str(dataset_json)))
    dataset_class = infer_dataset_class(folder)
    # All cases (the trainer would use its fold's training split: ~80 % of them).
    dataset = dataset_class(folder, None, folder_with_segs_from_previous_stage=None)
    patch = tuple(args.patch)
    loader = nnUNetDataLoader(dataset, args.batch, patch, patch, label_manager,
                              oversample_foreground_percent=args.oversample,
                              sampling_probabilities=None, pad_sides=None, transforms=None,
                              probabilistic_oversampling=False)
    return loader, dataset_class.__name__, len(dataset.identifiers)


def _wrap(loader, processes: int):
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import (
        NonDetMultiThreadedAugmenter,
    )
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

    if processes <= 1:
        return SingleThreadedAugmenter(loader, None), "SingleThreadedAugmenter"
    # as nnUNetTrainer.get_dataloaders (pin_memory there is device.type == 'cuda'; we pass False)
    gen = NonDetMultiThreadedAugmenter(data_loader=loader, transform=None, num_processes=processes,
                                       num_cached=max(6, processes // 2), seeds=None, pin_memory=False,
                                       wait_time=0.002)
    return gen, "NonDetMultiThreadedAugmenter"


def cmd_loader(args) -> dict:
    import torch

    torch.set_num_threads(1)  # nnU-Net's run_training does this when training on a GPU
    torch.set_num_interop_threads(1)
    loader, dataset_class, n_cases = _build_loader(args)
    gen, augmenter = _wrap(loader, args.processes)
    try:
        t_end = time.perf_counter() + args.warmup
        warm = 0
        while warm < 2 or time.perf_counter() < t_end:
            batch = next(gen)
            warm += 1
        shape = list(batch["data"].shape)
        log(f"warm-up: {warm} batches, batch data shape {shape}, dtype {batch['data'].dtype}, "
            f"target {list(batch['target'].shape)} {batch['target'].dtype}")
        rates, batches, vox = [], 0, 0
        for w in range(args.windows):
            n, v = 0, 0
            t0 = time.perf_counter()
            while True:
                b = next(gen)
                n += 1
                v += b["data"].numel()
                dt = time.perf_counter() - t0
                if dt >= args.seconds:
                    break
            rates.append(v / dt / 1e6)
            batches += n
            vox += v
            log(f"window {w}: {n} batches in {dt:.2f} s -> {rates[-1]:.1f} Mvox/s")
    finally:
        if hasattr(gen, "_finish"):
            gen._finish()
    return {
        "mvox_per_s": round(statistics.median(rates), 3),
        "mvox_per_s_windows": [round(r, 3) for r in rates],
        "batches": batches,
        "patch": list(args.patch),
        "batch": args.batch,
        "processes": args.processes,
        "augmenter": augmenter,
        "dataset_class": dataset_class,
        "cases": n_cases,
        "oversample_foreground_percent": args.oversample,
        "window_seconds": args.seconds,
        "batch_data_shape": shape,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("convert", help="nnUNetv2_convert_MSD_dataset + nnUNetv2_plan_and_preprocess, timed")
    c.add_argument("msd_task_dir")
    c.add_argument("--work", required=True, help="nnUNet_raw/_preprocessed/_results are created under it")
    c.add_argument("--np", type=int, default=2, help="processes for conversion, -np and -npfp")
    c.add_argument("--dataset-id", type=int, default=DEFAULT_DATASET_ID)
    c.add_argument("--no-verify", action="store_true", help="omit --verify_dataset_integrity")

    lo = sub.add_parser("loader", help="nnU-Net's training loader without augmentation, timed")
    lo.add_argument("--preprocessed", required=True, help="the .../nnUNetPlans_3d_fullres folder")
    lo.add_argument("--plans", required=True, help="nnUNetPlans.json")
    lo.add_argument("--dataset-json", default=None, help="default: dataset.json beside the plans")
    lo.add_argument("--patch", type=int, nargs=3, required=True, metavar=("Z", "Y", "X"))
    lo.add_argument("--batch", type=int, required=True)
    lo.add_argument("--processes", type=int, default=2,
                    help="0 or 1: SingleThreadedAugmenter; >1: NonDetMultiThreadedAugmenter")
    lo.add_argument("--seconds", type=float, default=5.0, help="length of each timed window")
    lo.add_argument("--windows", type=int, default=3, help="timed windows; the median is reported")
    lo.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up (at least 2 batches)")
    lo.add_argument("--oversample", type=float, default=0.33, help="oversample_foreground_percent")

    args = ap.parse_args(argv)
    # nnU-Net (and its worker processes) print on stdout: point fd 1 at stderr while working and
    # keep the real stdout for the one JSON object.
    sys.stdout.flush()
    real_stdout = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    with contextlib.redirect_stdout(sys.stderr):
        result = cmd_convert(args) if args.cmd == "convert" else cmd_loader(args)
    real_stdout.write(json.dumps(result) + "\n")
    real_stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
