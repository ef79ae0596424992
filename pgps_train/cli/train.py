"""`pgps-train STORE --out DIR [...]`: train one PGPS run from a pgps store.

Defaults follow the papers (1000 epochs × 250 iterations, batch 2, efficiency mode,
journal rules, unet). ``--preset tiny`` is a CPU-sized run (narrow network, few
iterations, every stage visited) used by the demo and the tests; flags given explicitly
override the preset. ``--resume`` takes every setting from the run's config.json; flags
given again must agree (pgps_train.run_config).

Exit status: 0 done, 2 a problem with the input (one line: file, problem, what to do),
1 a loader worker died, 128 + signal when stopped by SIGINT (130) or SIGTERM (143) after
writing a checkpoint and printing how to resume.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields
from typing import Any

from pgps_data.console import protect_output
from pgps_data.errors import PGPSInputError
from pgps_data.schedule.curriculum import MODES, RULES
from pgps_train.augment.choices import AUGMENTS, GEOMETRIES
from pgps_train.devices import DEVICE_METAVAR, device_arg
from pgps_train.planning import NETWORKS
from pgps_train.stops import run_or_explain

# The CPU-sized preset: one epoch per stage of the schedule (epochs 0 = auto), 15
# iterations each (240 for the demo's 16 stages), a 24×48×48-sized patch budget and a narrow
# network. Measured on the demo data (2 shared cores, one thread): constant mode reaches
# organ Dice 0.90 in about 95 s of compute.
TINY = {"epochs": 0, "iterations_per_epoch": 15, "batch": 2, "workers": 2, "eval_every": 60,
        "eval_batches": 4, "save_every": 10**9, "patch_budget": 24 * 48 * 48}
TINY_UNET = {"base_filters": 8, "max_filters": 32}
# The lesion benchmark's CPU run size (pgps-compare --preset lesion-cpu on pgps-synth
# --preset lesion): the tiny network and patch budget, 48 iterations per stage (768), a
# validation every 80 steps (the pseudo-Dice curve) and a checkpoint every 160 (a killed
# comparison resumes). Sized on the 2-core machine (2026-12-02): constant's lesion Dice
# over seeds 0-2 was 0.83 / 0.37 / 0.00 (the class is learnt late, at a step that varies
# by seed, which is the point); the three modes x 3 seeds took about 40 minutes with the
# evaluations (README, make compare).
LESION_CPU = {**TINY, "iterations_per_epoch": 48, "eval_every": 80, "eval_batches": 4,
              "save_every": 160}
PRESETS = {"tiny": TINY, "lesion-cpu": LESION_CPU}  # pgps-train's defaults are the papers'


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgps-train", description=__doc__.split("\n\n")[0])
    p.add_argument("store", help="a store made by pgps-convert")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, model)")
    p.add_argument("--mode", choices=MODES)
    p.add_argument("--net", choices=NETWORKS)
    p.add_argument("--rules", choices=RULES)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--patch", nargs=3, type=int, metavar=("Z", "Y", "X"))
    g.add_argument("--patch-budget", type=int, metavar="V",
                   help="plan the patch from the median case within V voxels (default 2**21)")
    g.add_argument("--nnunet-plans", metavar="FILE", help="take 3d_fullres's patch from FILE")
    p.add_argument("--augment", choices=AUGMENTS,
                   help="nnunet (default): nnU-Net 2.8.1's default training transforms, run "
                   "batched on the training device; none: the crops as read")
    p.add_argument("--augment-geometry", choices=GEOMETRIES,
                   help="stage (default): rotation range, dummy-2D rule and the enlarged read "
                   "box follow each stage's patch, as nnU-Net and the PGPS trainers do; final: "
                   "the final patch's dummy-2D decision and rotation range for every stage")
    p.add_argument("--mirror-axes", nargs="*", type=int, choices=(0, 1, 2), metavar="AXIS",
                   help="axes mirrored with p 0.5 each (default 0 1 2; leave out an axis whose "
                   "labels are lateralised; none given: no mirroring)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--iterations-per-epoch", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--eval-every", type=int, metavar="K")
    p.add_argument("--save-every", type=int, metavar="K")
    p.add_argument("--device", type=device_arg, metavar=DEVICE_METAVAR)
    p.add_argument("--fold", help="0-4 (nnU-Net's seeded 5-fold split) or 'all'")
    p.add_argument("--splits", metavar="splits_final.json")
    p.add_argument("--seed", type=int)
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="tiny: the demo's CPU run; lesion-cpu: the lesion benchmark's "
                   "(default: the papers' 1000 epochs x 250 iterations)")
    p.add_argument("--deterministic", action="store_true",
                   help="torch deterministic algorithms (exact resume on CPU)")
    p.add_argument("--no-final-eval", action="store_true",
                   help="skip predict + evaluate on the validation fold at the end")
    p.add_argument("--max-seconds", type=float, metavar="S",
                   help="stop after S seconds of training (checkpointed; --resume continues; "
                   "applies to this command only)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="train on a store whose conversion did not finish (its complete cases)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--dist-timeout", type=float, default=60.0, metavar="S",
                   help="under torchrun: seconds a rank waits for the others before the job "
                   "ends with one line (default 60; a dead or hung rank, never a 30-minute wait)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                   help="continue the run in --out with its recorded settings")
    again.add_argument("--overwrite", action="store_true",
                       help="start the run in --out again, replacing its files (a folder "
                       "that holds a run needs --resume or --overwrite)")
    return p


_SWITCHES = {"deterministic": "deterministic", "quiet": "quiet",
             "allow_incomplete": "allow_incomplete"}


def explicit_values(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig values the command line set explicitly (no defaults, no preset)."""
    from pgps_train.run_config import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items()
              if k in names and k not in _SWITCHES and v is not None}
    values.update({field: True for flag, field in _SWITCHES.items() if getattr(args, flag)})
    if args.no_final_eval:
        values["final_eval"] = False
    if values.get("fold") not in (None, "all"):
        values["fold"] = int(values["fold"])
    if values.get("patch") is not None:
        values["patch"] = list(values["patch"])
    if values.get("mirror_axes") is not None:
        values["mirror_axes"] = sorted(set(values["mirror_axes"]))
    return values


def config_from_args(args: argparse.Namespace) -> Any:
    """A TrainConfig for a new run: defaults ← preset ← explicit flags."""
    from pgps_train.networks import tiny_kwargs
    from pgps_train.run_config import TrainConfig

    values: dict[str, Any] = {}
    if args.preset in PRESETS:
        values.update(PRESETS[args.preset])
        net = args.net or "unet"
        values["net_kwargs"] = TINY_UNET if net == "unet" else tiny_kwargs(net)
    values.update(explicit_values(args))
    return TrainConfig(**values)


def resume_config(args: argparse.Namespace, saved: dict[str, Any]) -> Any:
    """A TrainConfig for ``--resume``: the run's config.json ← flags given again (agreeing)."""
    from pgps_train.run_config import TrainConfig, resumed_values

    names = {f.name for f in fields(TrainConfig)}
    if "augment" not in saved:  # a run from before augmentation: it resumes as it started
        saved = {**saved, "augment": "none"}
    return TrainConfig(**resumed_values(saved, explicit_values(args), names, args.out))


def main(argv: list[str] | None = None) -> int:
    protect_output()  # a closed stdout (a pipe whose reader left) must not end a long run
    args = build_parser().parse_args(argv)
    resume_cmd = shlex.join(["pgps-train", args.store, "--out", args.out, "--resume",
                             *(["--allow-incomplete"] if args.allow_incomplete else [])])
    try:  # under torchrun: this process's rank (pgps_train.distributed)
        from pgps_train.distributed import ranks_from_env

        ranks = ranks_from_env(args.dist_timeout)
    except PGPSInputError as exc:
        print(f"pgps-train: error: {exc}", file=sys.stderr)
        return 2
    if ranks.distributed:
        resume_cmd = f"torchrun --nproc-per-node N -m pgps_train.cli.train " \
                     f"{shlex.join(shlex.split(resume_cmd)[1:])}"

    def work() -> tuple[Any, Any]:
        from pgps_train.run_config import saved_config
        from pgps_train.trainer import train

        saved = saved_config(args.out) if args.resume else None
        cfg = config_from_args(args) if saved is None else resume_config(args, saved)
        return cfg, train(cfg, resume=args.resume, overwrite=args.overwrite, ranks=ranks)

    done, status = run_or_explain("pgps-train", work, again=f"resume with: {resume_cmd}",
                                  fix_then=f"continue with {resume_cmd}", where=args.out,
                                  rank=ranks.rank)
    if done is None:
        return status
    cfg, summary = done
    if not ranks.main:
        return 0  # rank 0 reports the run
    final = summary.get("final") or {}
    ran = summary.get("stopped_at_step", summary["iterations"])
    print(f"done: {ran} iterations in {summary['seconds_wall']:.1f} s "
          f"(data wait {100 * summary['wait_share']:.1f} %), run in {cfg.out}")
    if final.get("mean"):
        print("validation Dice: " + ", ".join(f"{k} {v:.4f}" for k, v in final["mean"].items()
                                              if v is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
