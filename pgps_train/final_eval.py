"""The end of a run: predict the validation fold from its raw files and score it.

Each validation case is predicted from its raw image files exactly as `pgps-predict`
would (preprocessed like the store, sliding window at the final patch, mapped back to the
source geometry) and scored against its raw label with `pgps-evaluate`'s Dice. When the
raw dataset is no longer where the store was made from, the store's own preprocessed
arrays are scored instead (target space), and the summary says so. The model.json labels
decide the nonlinearity, the label map and what is scored (a region scores the union of
its values), as for pgps-predict and pgps-evaluate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgps_data.raw.readers import read_volume, write_volume
from pgps_train.comparison.metrics import case_scores
from pgps_train.evaluate import dice_scores, print_table, summarise
from pgps_train.inference import model_labels, predict_case, predict_volume


def evaluate_run(out: Path, net: torch.nn.Module, store: Any, case_ids: list[str],
                 device: torch.device, *, log=print, quiet: bool = False) -> dict[str, Any]:  # noqa: ANN001
    """Validation Dice of ``net`` on ``case_ids``; predictions go to ``out/validation``."""
    config = json.loads((out / "model.json").read_text())
    labels = model_labels(config)
    folder = out / "validation"
    folder.mkdir(exist_ok=True)
    root = Path(store.meta.get("source_root") or "")
    per_case: dict[str, dict[str, float | None]] = {}
    extra: dict[str, dict[str, dict[str, float | None]]] = {}
    space = "source"
    for cid in case_ids:
        case = store[cid]
        files = case.meta["source_files"]
        image_paths = [root / p for p in files["image"]]
        label_path = root / files["label"]
        if root.parts and all(p.exists() for p in [*image_paths, label_path]):
            pred, _, geometry = predict_case(net, config, image_paths, device=device)
            write_volume(folder / f"{cid}.nii.gz", pred, geometry)
            volume = read_volume(label_path, channels=1)
            ref, spacing = volume.data.astype(np.uint8), volume.spacing
        else:  # raw data moved away: score in the store's (target) space
            space = "store"
            probs = predict_volume(net, np.asarray(case.image[...]), config["patch"],
                                   device=device, nonlin=labels.nonlinearity)
            pred = labels.label_map(probs)
            ref, spacing = np.asarray(case.label[...]), store.spacing
        per_case[cid] = dice_scores(pred, ref, labels)
        for key, scores in case_scores(pred, ref, labels, spacing).items():
            extra.setdefault(key, {})[cid] = scores
    results = {**summarise(per_case), "space": space, "cases": len(case_ids),
               # lesion-wise detection F1 and surface Dice (1 mm) per case, for pgps-compare
               **{key: by_case for key, by_case in extra.items()}}
    (folder / "summary.json").write_text(json.dumps(results, indent=1))
    if not quiet:
        print_table(results, title=f"validation Dice ({space} space)")
    return results
