"""How a schedule is shown: its stages as JSON rows, a rich table, and a PNG plot.

Used by ``pgps-schedule`` and by the trainer's run log (the table at the start of a run).
Torch-free: rich and matplotlib only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pgps_data.errors import PGPSInputError
from pgps_data.schedule.curriculum import Curriculum


def stages_json(cur: Curriculum) -> list[dict[str, Any]]:
    """``--json`` output: one dict per stage (ends exclusive). In random mode, the patch
    list, each entry spanning the whole run."""
    keys = ("start_epoch", "end_epoch", "start_iter", "end_iter")
    return [
        {"patch": list(s.patch), "batch": s.batch, **{k: getattr(s, k) for k in keys}}
        for s in cur.stages
    ]


def print_table(cur: Curriculum, console: Any | None = None) -> None:
    """Rich table of the stages with voxels per step and compute share, plus a total."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(Console().width, 110))
    S = len(cur.patch_sizes)
    title = (
        f"PGPS schedule: {cur.mode}, {cur.rules}, {S} patch size{'s' * (S != 1)}, "
        f"min {_fmt(cur.minimum)}, steps {_fmt(cur.steps)}"
    )
    table = Table(title=title, caption=_caption(cur), show_footer=True)
    total_share = cur.compute_share()
    E, T = cur.epochs, cur.total_iterations
    for name, footer, justify in [
        ("#", "total", "right"),
        ("patch Z×Y×X", "", "left"),
        ("batch", "", "right"),
        ("epochs", f"{0}–{E}", "right"),
        ("iterations", f"{0}–{T}", "right"),
        ("voxels/step", "", "right"),
        ("compute vs constant", f"{total_share:.1%}", "right"),
    ]:
        table.add_column(name, footer=footer, justify=justify)  # type: ignore[arg-type]
    for s in cur.stages:
        table.add_row(
            str(s.index),
            _fmt(s.patch),
            str(s.batch),
            f"{s.start_epoch}–{s.end_epoch}",
            f"{s.start_iter}–{s.end_iter}",
            f"{s.batch * s.voxels:,}",
            f"{cur.stage_share(s):.1%}",
        )
    console.print(table)


def plot_schedule(cur: Curriculum, path: str | Path) -> Path:
    """Write a PNG of patch size (per axis and voxels) and batch over the epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax_axes, ax_vox, ax_batch) = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    if cur.mode == "random":  # one dot per sampled step: the drawn patch
        n = min(cur.total_iterations, 2000)
        steps = [i * cur.total_iterations // n for i in range(n)]
        drawn = [cur.stage_at(t) for t in steps]
        x = [t / cur.iterations_per_epoch for t in steps]
        for a, name in enumerate("ZYX"):
            ax_axes.plot(x, [s.patch[a] for s in drawn], ".", ms=2, label=name)
        ax_vox.plot(x, [s.voxels for s in drawn], ".", ms=2, label="voxels per crop")
        ax_batch.plot(x, [s.batch for s in drawn], ".", ms=2)
    else:
        x = [s.start_epoch for s in cur.stages] + [cur.epochs]

        def edges(values: list[int]) -> list[int]:
            return values + values[-1:]

        for a, name in enumerate("ZYX"):
            ax_axes.step(x, edges([s.patch[a] for s in cur.stages]), where="post", label=name)
        ax_vox.step(x, edges([s.voxels for s in cur.stages]), where="post", label="per crop")
        per_step = [s.voxels * s.batch for s in cur.stages]
        ax_vox.step(x, edges(per_step), where="post", label="per step (× batch)")
        ax_batch.step(x, edges([s.batch for s in cur.stages]), where="post")
    ax_axes.set_ylabel("patch size (voxels)")
    ax_vox.set_ylabel("voxels")
    ax_batch.set_ylabel("batch")
    batches = [s.batch for s in cur.stages]
    if max(batches) >= 10 * min(batches):
        ax_batch.set_yscale("log")
    ax_batch.set_xlabel("epoch")
    ax_axes.legend()
    ax_vox.legend()
    share = cur.compute_share()
    fig.suptitle(f"PGPS {cur.mode}, {cur.rules}: {share:.1%} of constant compute")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise PGPSInputError(f"{path}: cannot write the plot ({e.strerror})") from None
    finally:
        plt.close(fig)
    return path


def _fmt(patch: Sequence[int]) -> str:
    return "×".join(str(v) for v in patch)


def _caption(cur: Curriculum) -> str:
    V, B = math.prod(cur.final_patch), cur.final_batch
    lines = [f"constant: {_fmt(cur.final_patch)} × {B} = {V * B:,} voxels per step"]
    if cur.mode == "random":
        lines.append("random: each step draws one patch uniformly; compute is the expected share")
    grouping = "B cases per batch (journal case grouping)"
    lines.append(f"oversampling: {grouping if cur.oversampling != 'slot' else 'nnU-Net slots'}")
    return "\n".join(lines)
