"""``pgps-compare``: test the PGPS papers' claims on a store, or tabulate finished runs.

    pgps-compare run STORE --out DIR [--modes ...] [--seeds 0 1 2] [--net unet]
        [--preset tiny|lesion-cpu|paper] [--budget iterations|seconds] [--splits FILE] ...
    pgps-compare report RUN_DIR ...      (also: pgps-compare RUN_DIR ...)

``run`` trains every mode × seed alike (one after another; finished runs are skipped, a
killed one resumes), scores the fold's held-out cases, and writes report.html, report.md
and report.json with the claim table into DIR (``--budget seconds``: every mode's run
length planned to its seed's constant time, report in DIR/equal-seconds). ``report`` prints the table of finished
pgps-train runs. Runnable as ``python -m pgps_train.cli.compare``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from pgps_data.console import protect_output
from pgps_data.errors import PGPSInputError
from pgps_data.schedule.curriculum import MODES
from pgps_train.compare import comparison, load_runs, print_comparison
from pgps_train.stops import run_or_explain


def _run_parser() -> argparse.ArgumentParser:
    from pgps_train.devices import DEVICE_METAVAR, device_arg
    from pgps_train.planning import NETWORKS

    p = argparse.ArgumentParser(prog="pgps-compare run",
                                description="train modes × seeds alike and test the claims")
    p.add_argument("store", help="a store made by pgps-convert")
    p.add_argument("--out", required=True, help="comparison folder (runs/, report.*)")
    p.add_argument("--modes", nargs="+", choices=MODES,
                   default=["constant", "efficiency", "performance"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--net", choices=NETWORKS, default="unet")
    p.add_argument("--preset", choices=["tiny", "lesion-cpu", "paper"], default="tiny",
                   help="pgps-train's run size: tiny (the demo's), lesion-cpu (the lesion "
                   "benchmark on 2 CPU cores, ~33 min for 3 modes x 3 seeds), paper (the "
                   "papers' 1000 epochs x 250 iterations; a GPU's job)")
    p.add_argument("--budget", choices=["iterations", "seconds"], default="iterations",
                   help="iterations: every mode the same iterations; seconds: every mode's "
                   "run length planned so its whole schedule fits its seed's constant time "
                   "(the constant runs are shared; report in OUT/equal-seconds)")
    p.add_argument("--splits", metavar="splits_final.json",
                   help="the folds (nnU-Net's format; pgps-synth --held-out writes one)")
    p.add_argument("--device", type=device_arg, metavar=DEVICE_METAVAR, default="cpu")
    p.add_argument("--fold", default="0", help="the fold whose validation cases are held out")
    p.add_argument("--lesion-classes", nargs="*", metavar="NAME",
                   help="classes the lesion claims are tested on (default: by name)")
    p.add_argument("--train-args", default="", help="extra pgps-train flags, quoted")
    return p


def _report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgps-compare report",
                                description="tabulate finished pgps-train runs side by side")
    p.add_argument("runs", nargs="+", help="run folders made by pgps-train")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print("usage: pgps-compare {run,report} ...  (pgps-compare run -h, pgps-compare "
              "report -h)\n\n" + __doc__.strip())
        return 0
    try:
        if argv and argv[0] == "run":
            protect_output()  # a closed stdout must not end a long comparison
            return _run(_run_parser().parse_args(argv[1:]), argv)
        if argv and argv[0] == "report":
            argv = argv[1:]
        args = _report_parser().parse_args(argv)
        rows = comparison(load_runs(args.runs))
    except PGPSInputError as exc:
        print(f"pgps-compare: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print_comparison(rows)
    return 0


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from pgps_train.comparison.run import ComparePlan, compare

    plan = ComparePlan(store=args.store, out=args.out, modes=args.modes, seeds=args.seeds,
                       net=args.net, preset=None if args.preset == "paper" else args.preset,
                       device=args.device, fold=args.fold, budget=args.budget,
                       train_args=[*(["--splits", args.splits] if args.splits else []),
                                   *shlex.split(args.train_args)],
                       lesion_classes=args.lesion_classes,
                       command="pgps-compare " + " ".join(shlex.quote(a) for a in argv))
    paths, status = run_or_explain(
        "pgps-compare", lambda: compare(plan),
        again="rerun the same command to continue (finished runs are kept)",
        fix_then="rerun the same command", where=args.out)
    if paths is None:
        return status
    print(f"pgps-compare: report in {paths['html']} (and report.md, report.json)")
    verdicts = {True: "holds", False: "does not hold", None: "reported"}
    for claim in json.loads(paths["json"].read_text())["claims"]:  # a run ends with verdicts
        print(f"  {claim['claim']}: {claim['ours']} [{verdicts[claim['holds']]}; paper: "
              f"{claim['paper']}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
