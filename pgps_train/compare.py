"""`pgps-compare RUN_DIR ...`: the modes side by side, from the runs' summary.json files.

One row per run: mode, wall time, share of the constant run's time, data-wait share,
seconds of device-side augmentation, iterations, and the final validation Dice per label (source geometry), so the PGPS claim
— baseline Dice in a fraction of the time — can be read off one table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pgps_data.errors import PGPSInputError


def load_runs(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """summary.json + config.json of each run (one line of error for a missing one)."""
    runs = []
    for d in map(Path, run_dirs):
        try:
            summary = json.loads((d / "summary.json").read_text())
            config = json.loads((d / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise PGPSInputError(f"{d}: not a finished pgps-train run ({exc})") from None
        runs.append({"dir": str(d), "summary": summary, "config": config})
    return runs


def comparison(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the comparison table (JSON-ready)."""
    base = next((r for r in runs if r["config"]["mode"] == "constant"), None)
    base_time = base["summary"]["seconds_wall"] if base else None
    rows = []
    for r in runs:
        s, final = r["summary"], (r["summary"].get("final") or {})
        rows.append({
            "run": r["dir"],
            "mode": r["config"]["mode"],
            "rules": r["config"]["rules"],
            "net": r["config"]["net"],
            "iterations": s["iterations"],
            "seconds": s["seconds_wall"],
            "share_of_constant": (s["seconds_wall"] / base_time) if base_time else None,
            "compute_share_planned": s.get("compute_share_vs_constant"),
            "wait_share": s["wait_share"],
            # timed apart from the data wait (older summaries lack them: None)
            "augment_s": s.get("seconds_augment"),
            "augment": r["config"].get("augment", "none"),
            "validation_s": s.get("seconds_validation"),
            "checkpoint_s": s.get("seconds_checkpoint"),
            "startup_s": _sum_or_none(s.get("seconds_loader_startup"),
                                      s.get("seconds_validation_startup")),
            "dice": final.get("mean", {}),
        })
    return rows


def print_comparison(rows: list[dict[str, Any]], title: str = "PGPS modes") -> None:
    from rich.console import Console
    from rich.table import Table

    labels = list(dict.fromkeys(k for r in rows for k in r["dice"]))  # label order
    table = Table(title=title)
    for col in ["mode", "wall time", "share of constant", "data wait", "augment", "validation",
                "checkpoints", "start-up", "iterations", *[f"{name} Dice" for name in labels]]:
        table.add_column(col, justify="left" if col == "mode" else "right")
    for r in rows:
        share = "-" if r["share_of_constant"] is None else f"{100 * r['share_of_constant']:.0f} %"
        dice = [("-" if r["dice"].get(k) is None else f"{r['dice'][k]:.3f}") for k in labels]
        secs = [("-" if r.get(k) is None else f"{r[k]:.1f} s")
                for k in ("augment_s", "validation_s", "checkpoint_s", "startup_s")]
        table.add_row(r["mode"], f"{r['seconds']:.0f} s", share,
                      f"{100 * r['wait_share']:.1f} %", *secs, str(r["iterations"]), *dice)
    Console(width=150).print(table)


def _sum_or_none(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None
