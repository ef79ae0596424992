"""What a store holds, for people and machines (what ``pgps-inspect`` prints).

Prints the dataset (layout, channels, labels, target spacing, chunk and shard shapes,
codec, size on disk, per-label foreground fraction, whether the conversion finished and
which cases are missing) and one row per case (shape, source spacing, per-label
foreground fraction; an absent label shows as "absent"). ``--verify`` then reads every
chunk of every array and checks its crc32c (:mod:`pgps_data.store.verify`): one line per
bad chunk, a summary, exit status 1 if anything is bad.

Table cells are plain text, never Rich markup: "[conversion incomplete]", or a case id
with brackets, prints as written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pgps_data.store.store import Store


def describe(store: Store) -> dict[str, Any]:
    """A JSON-ready description of the store (what ``--json`` prints)."""
    meta = store.meta
    layout = meta.get("layout") or {}
    cases = []
    for cid in store.case_ids + store.test_ids:
        case = store[cid]
        counts = case.meta.get("label_counts", {})
        voxels = int(case.meta.get("voxels", 1)) or 1
        cases.append({
            "case_id": cid,
            "split": "test" if case.is_test else "train",
            "shape": list(case.shape),
            "channels": case.channels,
            "source_spacing": case.meta.get("geometry", {}).get("spacing"),
            "foreground_fraction": {v: int(n) / voxels for v, n in counts.items()},
            "foreground_voxels": {v: int(n) for v, n in counts.items()},
            "indices": {
                name: int(case.group[name].shape[0])
                for name in case.meta.get("index_arrays", [])
            },
        })
    return {
        "store": str(store.path),
        "dataset_name": meta.get("dataset_name"),
        "source_layout": meta.get("source_layout"),
        "complete": store.complete,
        "missing_cases": store.missing_cases,
        "broken_cases": store.broken_cases,
        "training_cases": len(store.case_ids),
        "test_cases": len(store.test_ids),
        "channel_names": meta.get("channel_names"),
        "modalities": meta.get("modalities"),
        "labels": meta.get("labels"),
        "ignore_label": meta.get("ignore_label"),
        "target_spacing": meta.get("target_spacing"),
        "layout": layout,
        "chunk_shape": layout.get("chunk"),
        "shard_shape": layout.get("shard"),
        "codec": layout.get("codec"),
        "compressor": layout.get("compressor"),
        "foreground_fraction": meta.get("foreground_fraction", {}),
        "intensity_statistics": meta.get("intensity_statistics"),
        "size_on_disk_bytes": None if store.remote else _disk_usage(store.path),
        "cases": cases,
    }


def print_table(desc: dict[str, Any]) -> None:
    """Render :func:`describe`'s output as rich tables."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    layout = desc["layout"] or {}
    names = _label_names(desc["labels"] or {})
    head = Table(title=Text(f"pgps store {desc['store']}"), show_header=False)
    missing = desc["missing_cases"] + sorted(set(desc["broken_cases"]) - set(desc["missing_cases"]))
    for key, value in [
        ("dataset", f"{desc['dataset_name']} (from {desc['source_layout']} layout)"),
        ("cases", f"{desc['training_cases']} training, {desc['test_cases']} test"
                  + ("" if desc["complete"] else "  [conversion incomplete]")),
        *([("missing cases", f"{len(missing)}: {', '.join(missing)} (rerun pgps-convert with "
                             "the same arguments to finish them)")] if missing else []),
        ("channels", ", ".join(f"{n} ({m})" for n, m in
                               zip(desc["channel_names"], desc["modalities"]))),
        ("labels", json.dumps(desc["labels"]) +
         (f", ignore {desc['ignore_label']}" if desc["ignore_label"] is not None else "")),
        ("target spacing", " × ".join(f"{s:.3g}" for s in desc["target_spacing"]) + " mm"),
        ("chunks / shards", f"{_shape(desc['chunk_shape'])} / {_shape(desc['shard_shape'])}"),
        ("codec", f"{desc['codec']}: {desc['compressor']} ({layout.get('image_dtype')} image)"),
        ("size on disk", _human(desc["size_on_disk_bytes"])),
        ("foreground fraction", ", ".join(
            f"{names.get(v, v)} {f:.4%}" for v, f in desc["foreground_fraction"].items())),
    ]:
        head.add_row(Text(key), Text(str(value)))
    console.print(head)
    label_keys = sorted({v for c in desc["cases"] for v in c["foreground_fraction"]}, key=int)
    table = Table(title="cases")
    table.add_column("case")
    table.add_column("split")
    table.add_column("shape (Z, Y, X)")
    table.add_column("source spacing (mm)")
    for v in label_keys:
        table.add_column(Text(f"{names.get(v, v)} %"), justify="right")
    for c in desc["cases"]:
        sp = c["source_spacing"]
        row = [c["case_id"], c["split"], "×".join(map(str, c["shape"])),
               "×".join(f"{s:.2f}" for s in sp) if sp else "-"]
        for v in label_keys:
            n = c["foreground_voxels"].get(v)
            row.append("-" if n is None else ("absent" if n == 0 else
                                               f"{100 * c['foreground_fraction'][v]:.3f}"))
        table.add_row(*map(Text, row))
    console.print(table)


def _shape(shape: list[int] | None) -> str:
    return "none" if not shape else "×".join(str(s) for s in shape)


def _label_names(labels: dict[str, Any]) -> dict[str, str]:
    out = {}
    for name, value in labels.items():
        if isinstance(value, int):
            out[str(value)] = name
    return out


def _disk_usage(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


def _human(n: float | None) -> str:
    if n is None:
        return "- (remote)"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
