"""Conversion benchmark: ``pgps-convert`` against nnU-Net's plan_and_preprocess, side by side.

    python tools/bench_convert.py [--cases 16] [--size 120 240 240] [--workers 2]
                                  [--quick] [--with-nnunet] [--json] [--work DIR]

Generates one synthetic MSD task (training cases only; every case has its own spacing, so
both tools resample), then times, one after the other on the same machine:

- ours: ``pgps-convert RAW OUT --workers N`` as a subprocess into a fresh store
  (statistics pass + conversion pass, zarr v3 with the default codec);
- nnU-Net v2 (in .venv-nnunet, via tools/nnunet_peer.py): ``nnUNetv2_convert_MSD_dataset``
  then ``nnUNetv2_plan_and_preprocess -c 3d_fullres -np N -npfp N --verify_dataset_integrity``.

The ratio ours/nnU-Net is in cases per minute (goal >= 2x). It uses plan_and_preprocess
alone (the command the issue names); the row with nnU-Net's MSD conversion step added is
shown too. Store size is what each tool's output occupies on disk, in blocks allocated
(as ``du``; ours: the store; nnU-Net: its preprocessed dataset folder, whose training data
folder is shown too), printed on one comparison line. Without .venv-nnunet only our side
is printed.
``--quick``: 3 cases of (24, 48, 48), nnU-Net skipped unless ``--with-nnunet`` (CI smoke).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--size", nargs=3, type=int, default=[120, 240, 240], metavar=("Z", "Y", "X"))
    p.add_argument("--workers", type=int, default=2, help="processes for both tools")
    p.add_argument("--quick", action="store_true", help="3 tiny cases, nnU-Net skipped (CI)")
    p.add_argument("--with-nnunet", action="store_true", help="run nnU-Net in --quick too")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pgps-bench",
                   help="work folder; the raw dataset is cached there and shared with "
                        "bench_loader.py (default: $TMPDIR/pgps-bench)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.quick:
        a.cases, a.size = 3, [24, 48, 48]
    result = run(a)
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        report(result)
    return 0


def run(a: argparse.Namespace) -> dict:
    """Generate, convert with both tools, and collect the numbers."""
    base = a.work.resolve() / f"c{a.cases}_{'x'.join(map(str, a.size))}"
    if a.seed:
        base = base.with_name(f"{base.name}_s{a.seed}")
    raw = bl.synth_raw(base / "raw" / "Task500_PGPSSynthetic", a.cases, a.size, a.seed)
    load_before = bl.machine_load()
    out = base / "convert_ours.zarr"
    bl.log(f"pgps-convert, {a.workers} workers ...")
    seconds = bl.run_convert(raw, out, "default", a.workers)
    ours_bytes = bl.disk_bytes(out)
    rows = [{
        "tool": "pgps-convert (ours)",
        "seconds": round(seconds, 2),
        "cases_per_min": round(a.cases / seconds * 60, 2),
        "store_mb": round(ours_bytes / 1e6, 1),
    }]
    ours_rate = rows[0]["cases_per_min"]
    result = {
        "cases": a.cases, "size": a.size, "workers": a.workers,
        "raw_mb": round(bl.disk_bytes(raw) / 1e6, 1),
        "rows": rows, "ratio": None, "ratio_with_msd_conversion": None,
        "ratio_uses": "nnUNetv2_plan_and_preprocess alone (-np N -npfp N, integrity check)",
        "nnunet": None,
        "disk_bytes": {"ours": ours_bytes, "nnunet_preprocessed": None, "nnunet_data": None,
                       "ratio": None},
    }
    skip_reason = None
    if a.quick and not a.with_nnunet:
        skip_reason = "skipped in --quick (add --with-nnunet)"
    elif bl.nnunet_python() is None:
        skip_reason = ".venv-nnunet missing (bash tools/nnunet_venv.sh builds it)"
    if skip_reason is None:
        nn_work = base / "convert_nnunet"
        if nn_work.exists():
            shutil.rmtree(nn_work)
        bl.log(f"nnU-Net convert + plan_and_preprocess, -np {a.workers} ...")
        res = bl.nnunet_peer(["convert", raw, "--work", nn_work, "--np", a.workers])
        if res is None:
            skip_reason = "nnunet_peer.py convert failed (see stderr)"
        else:
            data_dir = Path(res["preprocessed_dir"])
            pre = data_dir.parent
            pre_bytes = bl.disk_bytes(pre)
            size_mb = round(pre_bytes / 1e6, 1)
            result["disk_bytes"].update({
                "nnunet_preprocessed": pre_bytes, "nnunet_data": bl.disk_bytes(data_dir),
                "ratio": bl.ratio(ours_bytes, pre_bytes)})
            plan_s, conv_s = res["seconds_plan_preprocess"], res["seconds_convert"]
            rows.append({"tool": "nnU-Net plan_and_preprocess", "seconds": round(plan_s, 2),
                         "cases_per_min": round(a.cases / plan_s * 60, 2), "store_mb": size_mb})
            total = plan_s + conv_s
            rows.append({"tool": "nnU-Net MSD convert + plan_and_preprocess",
                         "seconds": round(total, 2),
                         "cases_per_min": round(a.cases / total * 60, 2), "store_mb": size_mb})
            result["ratio"] = bl.ratio(ours_rate, rows[1]["cases_per_min"])
            result["ratio_with_msd_conversion"] = bl.ratio(ours_rate, rows[2]["cases_per_min"])
            result["nnunet"] = {k: res.get(k) for k in (
                "seconds_convert", "seconds_plan_preprocess", "patch_size", "batch_size",
                "spacing", "file_format", "verify_dataset_integrity")}
    result["nnunet_skipped"] = skip_reason
    result["machine"] = {"before": load_before, "after": bl.machine_load()}
    return result


def report(r: dict) -> None:
    """The table, the ratios and the machine load."""
    print(f"conversion of {r['cases']} synthetic cases of ~{tuple(r['size'])} voxels "
          f"(raw {r['raw_mb']} MB gzip NIfTI), {r['workers']} processes each; "
          f"{r['machine']['before']} before, {r['machine']['after']} after")
    bl.table("", [("tool", "tool", 42), ("seconds", "seconds", 8),
                  ("cases_per_min", "cases/min", 10), ("store_mb", "disk MB", 8)], r["rows"])
    print("\n" + size_line(r))
    if r["ratio"] is None:
        print(f"nnU-Net: {r['nnunet_skipped']}; no ratio")
        return
    print(f"ratio ours/nnU-Net in cases/min: {r['ratio']:.2f}x vs {r['ratio_uses']} "
          f"(goal >= 2x); {r['ratio_with_msd_conversion']:.2f}x with its MSD conversion step")


def size_line(r: dict) -> str:
    """Our store against nnU-Net's preprocessed folder, in bytes allocated on disk (du)."""
    d = r["disk_bytes"]
    ours = f"store size on disk (allocated blocks, as du): ours {d['ours'] / 1e6:.1f} MB"
    if d["nnunet_preprocessed"] is None:
        return f"{ours}; nnU-Net's preprocessed folder: not measured ({r['nnunet_skipped']})"
    return (f"{ours} vs nnU-Net's preprocessed folder {d['nnunet_preprocessed'] / 1e6:.1f} MB "
            f"(its training data {d['nnunet_data'] / 1e6:.1f} MB of it): ours/nnU-Net "
            f"{d['ratio']:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
