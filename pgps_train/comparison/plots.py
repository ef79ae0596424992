"""The four PNGs of a `pgps-compare` report: schedule, validation Dice over wall time,
foreground fraction per stage, final Dice per mode with the seed spread (matplotlib, Agg)."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from pathlib import Path

from pgps_train.comparison.result import (
    check_result,
    dice_cell,
    mean_of,
    mode_runs,
    result_modes,
    write_atomic,
)

COLOURS = {"constant": "#444444", "efficiency": "#1f77b4", "performance": "#d62728",
           "random": "#2ca02c"}
_LINES = ("-", "--", ":", "-.")


def plots(result: Mapping, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Draw the four PNGs into ``out_dir`` (each written atomically); name -> path.

    Each figure is a `matplotlib.figure.Figure` on its own Agg canvas, not pyplot: nothing
    enters pyplot's global figure list and the caller's backend is left as it was.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    check_result(result)
    out, modes = Path(out_dir), result_modes(result)
    extra = [m for m in modes if m not in COLOURS]
    colours = {**COLOURS, **{m: f"C{4 + i % 6}" for i, m in enumerate(extra)}}  # tab10's rest
    paths = {}
    for name, draw in (("schedule", _draw_schedule), ("dice_vs_time", _draw_dice_vs_time),
                       ("foreground", _draw_foreground), ("final_dice", _draw_final_dice)):
        fig = Figure(figsize=(9, 5), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        if not draw(fig, result, modes, colours):
            fig.clear()  # say so, rather than fail or leave empty axes that look like a bug
            fig.text(0.5, 0.5, f"{name.replace('_', ' ')}: no data", ha="center", fontsize=16)
        elif fig.axes[0].get_legend_handles_labels()[0]:  # the modes, on the first panel
            fig.axes[0].legend(fontsize=7)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        paths[name] = write_atomic(out / f"{name}.png", buf.getvalue())
    return paths


def _draw_schedule(fig, result, modes, colours) -> bool:
    """Patch voxels and batch size against iterations, per mode (from its lowest seed)."""
    (ax_v, ax_b), drawn = fig.subplots(2, 1, sharex=True), False
    for j, mode in enumerate(modes):  # modes often share a curriculum: tell them by the dash
        run = mode_runs(result, mode)[0]
        stages = sorted(run["schedule"], key=lambda s: s["iteration"])
        if stages:
            x = [s["iteration"] for s in stages] + [max(run["iterations"], stages[-1]["iteration"])]
            for ax, ys in ((ax_v, [math.prod(s["patch"]) for s in stages]),
                           (ax_b, [s["batch"] for s in stages])):
                ax.step(x, ys + ys[-1:], where="post", color=colours[mode], label=mode,
                        linestyle=_LINES[j % 4], linewidth=2)
            drawn = True
    ax_v.set(yscale="log", ylabel="patch voxels", title="curriculum")
    ax_b.set(yscale="log", ylabel="batch size", xlabel="iteration")
    return drawn


def _draw_dice_vs_time(fig, result, modes, colours) -> bool:
    """Validation pseudo-Dice against wall time, one line per run; constant's final dotted."""
    ax, drawn = fig.add_subplot(), False
    for mode in modes:
        for k, run in enumerate(mode_runs(result, mode)):
            points = [(t, v) for t, v in run["curve"] if v is not None]
            if points:
                ax.plot(*zip(*points), color=colours[mode], marker=".", label=f"{mode} seed "
                        f"{run['seed']}", linestyle=_LINES[k % 4])
                drawn = True
    target = (result["statistics"]["reach_times"].get("constant") or {}).get("target")
    if drawn and target is not None:
        ax.axhline(target, color="black", linewidth=0.8, linestyle=":",
                   label=f"constant's final {target:.3f}")
    ax.set(xlabel="wall time (s)", ylabel="validation pseudo-Dice", title="pseudo-Dice over time")
    return drawn


def _class_panels(fig, result: Mapping) -> list:
    """One axes per class, lesion classes' tinted and titled in red, as both plots show them."""
    axes = list(fig.subplots(1, len(result["classes"]), squeeze=False)[0])
    for ax, cls in zip(axes, result["classes"]):
        lesion = cls in result["lesion_classes"]
        ax.set_title(f"{cls} (lesion class)" if lesion else cls, fontweight="bold" if lesion
                     else "normal", color="#b00000" if lesion else "black")
        ax.set_facecolor("#fff3e0" if lesion else "white")
    return axes


def _draw_foreground(fig, result, modes, colours) -> bool:
    """Delivered foreground fraction per stage (mean over seeds), one panel per class."""
    from matplotlib.ticker import MaxNLocator

    drawn = False
    for ax, cls in zip(_class_panels(fig, result), result["classes"]):
        for j, mode in enumerate(modes):
            by_stage: dict[int, list[float]] = {}
            for entry in (e for run in mode_runs(result, mode) for e in run["foreground"]):
                if entry["fraction"].get(cls) is not None:
                    by_stage.setdefault(entry["stage"], []).append(entry["fraction"][cls])
            if by_stage:
                stages = sorted(by_stage)
                ax.plot(stages, [mean_of(by_stage[s]) for s in stages], marker="o", label=mode,
                        color=colours[mode], linestyle=_LINES[j % 4], linewidth=2)
                drawn = True
        ax.set(xlabel="stage", ylabel="foreground fraction of the crops")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return drawn


def _draw_final_dice(fig, result, modes, colours) -> bool:
    """Final Dice, a panel per class on its own scale: mean ± std over seeds, x = each seed."""
    drawn = False
    for ax, cls in zip(_class_panels(fig, result), result["classes"]):
        for j, mode in enumerate(modes):
            cell = dice_cell(result, mode, cls)
            if cell.get("mean") is not None:
                ax.errorbar(j, cell["mean"], yerr=cell.get("std") or 0, fmt="o", markersize=8,
                            capsize=6, color=colours[mode])
                seeds = [v for v in (cell.get("per_seed") or {}).values() if v is not None]
                ax.scatter([j + 0.2] * len(seeds), seeds, color=colours[mode], marker="x")
                drawn = True
        ax.set_xticks(range(len(modes)), modes)
        ax.set(xlim=(-0.5, len(modes) - 0.5), ylabel="final Dice (held-out cases)")
    return drawn
