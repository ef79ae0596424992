"""Train/validation splits: nnU-Net's seeded 5-fold split, `all`, or its splits_final.json.

The default split reproduces nnU-Net v2's ``generate_crossval_split`` (scikit-learn KFold,
shuffle, random_state 12345, over the sorted case ids) without depending on scikit-learn,
so a fold here holds the same cases as the same fold in nnU-Net. Test cases (imagesTs) are
never in any split: they are not training cases of the store.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pgps_data.errors import PGPSInputError

NNUNET_SPLIT_SEED = 12345


def make_splits(case_ids: Sequence[str], folds: int = 5, seed: int = NNUNET_SPLIT_SEED) -> list[dict]:
    """``[{"train": [...], "val": [...]}, ...]`` like nnU-Net's splits_final.json."""
    keys = np.sort(np.asarray(list(case_ids), dtype=object))
    n = len(keys)
    if n < folds:
        raise PGPSInputError(
            f"{n} training case(s) cannot be split into {folds} folds; use --fold all"
        )
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(folds, n // folds, dtype=int)
    sizes[: n % folds] += 1
    out, start = [], 0
    for size in sizes:
        test = np.zeros(n, bool)
        test[order[start:start + size]] = True
        start += size
        out.append({"train": [str(k) for k in keys[~test]], "val": [str(k) for k in keys[test]]})
    return out


def load_splits(path: str | os.PathLike, case_ids: Sequence[str]) -> list[dict]:
    """Read an nnU-Net ``splits_final.json`` and check it against the store's cases."""
    path = Path(path)
    try:
        splits = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PGPSInputError(f"{path}: cannot read splits ({exc})") from None
    if not isinstance(splits, list) or not all(
        isinstance(s, dict) and {"train", "val"} <= set(s) for s in splits
    ):
        raise PGPSInputError(f'{path}: expected a list of {{"train": [...], "val": [...]}}')
    known = set(case_ids)
    for i, split in enumerate(splits):
        unknown = sorted((set(split["train"]) | set(split["val"])) - known)
        if unknown:
            raise PGPSInputError(
                f"{path}: fold {i} names case(s) not among the store's training cases: "
                f"{unknown[:5]}"
            )
    return splits


def fold_cases(
    case_ids: Sequence[str],
    fold: int | str = 0,
    splits: list[dict] | None = None,
) -> tuple[list[str], list[str]]:
    """(train, val) case ids of ``fold``; ``"all"`` trains and validates on every case."""
    if fold == "all":
        ids = sorted(case_ids)
        return ids, ids
    splits = make_splits(case_ids) if splits is None else splits
    k = int(fold)
    if not 0 <= k < len(splits):
        raise PGPSInputError(f"--fold {fold}: there are {len(splits)} folds (0..{len(splits) - 1})")
    return sorted(splits[k]["train"]), sorted(splits[k]["val"])
