"""nnU-Net's default training augmentation over one loader batch, on the training device.

nnU-Net 2.8.1 augments each sample on the CPU in its loader processes (about a second of
CPU per sample at full size). Here the loader only reads crops (pgps_data/loader: the
enlarged box for the samples whose spatial transform fires, the final patch for the
others) and :class:`BatchAugmenter` runs the whole default pipeline over the batch once
it is on the device, in nnU-Net's order:

    spatial (warped samples only) → noise → blur → brightness → contrast → low resolution
    → gamma on the inverted image → gamma → mirroring → mask → outside (−1) → background

with per-sample parameters and no per-sample loop over voxels. Every draw is keyed by
(seed, step, global slot): the spatial draw by the loader's sampler (it decides what is
read), the others here from one generator per slot, so a step's augmentation is the same
on any number of loader workers and survives a resume exactly. It runs in float32 under
``torch.no_grad()`` and outside autocast (a float16 grid is a tenth of a voxel off at 257
voxels), with the same code on CPU torch and CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pgps_data.schedule.augment_geometry import OUTSIDE
from pgps_train.augment import intensity, spatial
from pgps_train.augment.mirroring import mirror
from pgps_train.augment.params import draw_intensity, stack_draws

_AUGMENT_STREAM = 0xA06  # keeps these draws apart from the loader's case, crop and spatial draws


class BatchAugmenter:
    """Applies nnU-Net's default training transforms to a loader batch on ``device``.

    ``mask_channels``: the channels normalised within a mask (nnU-Net's
    ``use_mask_for_norm``), set to 0 outside the case; ``mirror_axes``: the axes flipped
    with probability 0.5 each (drop an axis for lateralised labels).
    """

    def __init__(self, *, channels: int, seed: int, mask_channels: Sequence[int] = (),
                 mirror_axes: Sequence[int] = (0, 1, 2)):
        self.channels = int(channels)
        self.seed = int(seed)
        self.mask_channels = tuple(int(c) for c in mask_channels)
        self.mirror_axes = tuple(int(a) for a in mirror_axes)

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any], image: torch.Tensor,
                 label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment ``image`` (B, C, *F) float32 and ``label`` (B, 1, *F) uint8 in place
        of the warped rows; returns the augmented pair (label: outside → background)."""
        device = image.device
        with torch.autocast(device.type, enabled=False):
            dummy_2d = bool(batch.get("dummy_2d", False))
            image, label = self._spatial(batch, image.float(), label, device)
            first = int(batch.get("slot_offset", 0))  # a data-parallel rank's share
            draws = [draw_intensity(self.rng(batch["step"], first + row), self.channels,
                                    dummy_2d, mirror_axes=self.mirror_axes)
                     for row in range(image.shape[0])]
            p = stack_draws(draws, device)
            image = intensity.apply_all(image, p, dummy_2d=dummy_2d)
            image, label = mirror(image, label, p.mirror, inplace=True)  # host flags: no sync
            if self.mask_channels:
                image = intensity.mask_outside(image, label, self.mask_channels, OUTSIDE)
            label = intensity.remove_outside(label, OUTSIDE)
        return image, label

    def rng(self, step: int, slot: int) -> np.random.Generator:
        """The generator of one sample's non-spatial draws: (seed, 0, step, global slot)."""
        return np.random.default_rng([self.seed, 0, int(step), int(slot), _AUGMENT_STREAM])

    def _spatial(self, batch: dict[str, Any], image: torch.Tensor, label: torch.Tensor,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        slots = batch.get("warp_slots")
        if slots is None or len(slots) == 0:
            return image, label
        slots = slots.to(device)
        matrices = spatial.affine_matrices(batch["warp_angles"].to(device),
                                           batch["warp_scales"].to(device),
                                           bool(batch["dummy_2d"]))
        warped_image, warped_label = spatial.warp(
            batch["warp_image"].to(device, non_blocking=True).float(),
            batch["warp_label"].to(device, non_blocking=True), matrices,
            tuple(image.shape[2:]), bool(batch["dummy_2d"]), outside=OUTSIDE)
        image = image.index_copy(0, slots, warped_image)
        label = label.index_copy(0, slots, warped_label.to(label.dtype))
        return image, label


def mask_channels_of(store: Any) -> list[int]:
    """The channels nnU-Net normalises within a mask: every non-CT channel when the
    dataset's plan says ``use_mask_for_norm`` (CT channels never are)."""
    plan = store.attrs.get("plan", {}) if hasattr(store, "attrs") else {}
    if not plan.get("use_mask_for_norm"):
        return []
    modalities = list(store.attrs.get("modalities", []))
    return [c for c, m in enumerate(modalities) if str(m).upper() != "CT"]


def augmentation_for(cfg: Any, store: Any, labels: Any) -> tuple[Any, BatchAugmenter | None]:
    """The loader's AugmentSpec and the device-side augmenter of run ``cfg`` (both None for
    ``--augment none``); one-line refusals for settings that cannot work."""
    from pgps_data.errors import PGPSInputError
    from pgps_data.schedule.augment_geometry import AugmentSpec
    from pgps_train.augment.choices import AUGMENTS, GEOMETRIES

    if cfg.augment not in AUGMENTS:
        raise PGPSInputError(f"--augment {cfg.augment}: choose one of {', '.join(AUGMENTS)}")
    if cfg.augment_geometry not in GEOMETRIES:
        raise PGPSInputError(f"--augment-geometry {cfg.augment_geometry}: choose one of "
                             f"{', '.join(GEOMETRIES)}")
    if cfg.augment == "none":
        return None, None
    if OUTSIDE in labels.all_values:
        raise PGPSInputError(
            f"{store.path}: label value {OUTSIDE} marks voxels outside the case during "
            "augmentation, but this dataset uses it as a label; train with --augment none")
    spec = AugmentSpec(geometry=cfg.augment_geometry)
    return spec, BatchAugmenter(channels=store.channels, seed=cfg.seed,
                                mask_channels=mask_channels_of(store),
                                mirror_axes=cfg.mirror_axes)
