"""Which final patch a run trains towards: given, planned from the store, or nnU-Net's.

``--patch Z Y X`` is taken as given (and must lie on the network's lattice);
``--nnunet-plans nnUNetPlans.json`` takes 3d_fullres's patch (its spacing must match the
store's); otherwise the patch is planned from the median case shape at the store's target
spacing within ``--patch-budget`` voxels, as nnU-Net's planner does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pgps_train.networks import check_patch
from pgps_train.planning import load_nnunet_plans, plan_patch


def resolve_patch(cfg: Any, store: Any) -> tuple[int, int, int]:
    """The final patch for ``cfg`` (a TrainConfig) on ``store``; refuses off-lattice ones."""
    if cfg.patch is not None:
        patch = tuple(int(p) for p in cfg.patch)
    elif cfg.nnunet_plans:
        patch = tuple(load_nnunet_plans(cfg.nnunet_plans, store.spacing)["patch"])
    else:
        shapes = np.array([store[c].shape for c in store.case_ids])
        median = tuple(int(s) for s in np.median(shapes, axis=0))
        patch = tuple(plan_patch(median, store.spacing, budget=cfg.patch_budget, name=cfg.net))
    check_patch(cfg.net, patch, store.spacing)
    return patch  # type: ignore[return-value]
