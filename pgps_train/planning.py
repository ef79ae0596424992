"""Patch and topology planning the nnU-Net way, and import of nnU-Net v2 plans.

- :func:`unet_topology`: nnU-Net's ``get_pool_and_conv_props`` rule for a given patch and
  spacing (pool an axis while its feature map stays >= 2*4 voxels and its current spacing is
  within 2x of the finest; a lone poolable axis needs >= 3*4 voxels; 3-kernels once an axis
  is within 2x of the finest spacing, 1 before). Unlike nnU-Net it never pads the patch: a
  patch that is not a multiple of ``2**pools`` is reported, not silently enlarged.
- :func:`plan_patch`: nnU-Net's patch-size loop with a voxel budget instead of a VRAM model.
- :func:`load_nnunet_plans`: patch, spacing, pools and batch of a ``nnUNetPlans.json``
  configuration, mapped back to our (Z, Y, X) axes.

Axis order is (Z, Y, X) everywhere; spacings in mm in the same order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgps_data.errors import PGPSInputError

MIN_FEATURE_MAP = 4  # nnU-Net's UNet_featuremap_min_edge_length
TRANSFORMER_STEPS = {"unetr": 16, "swinunetr": 32}
#: The networks a run can train (``--net``'s choices): named here, not in networks.py,
#: because this module imports no torch and ``pgps-schedule --pools`` must not either.
NETWORKS = ("unet", *TRANSFORMER_STEPS)
UNET_FLOOR = 2 * MIN_FEATURE_MAP  # plan_patch never shrinks a unet axis below one pooling


@dataclass(frozen=True)
class UnetTopology:
    """A DynUNet/PlainConvUNet topology: per-stage strides and kernels (stage 0 first).

    ``strides[0]`` is always (1, 1, 1); ``kernels`` has one entry per stage, the bottleneck
    last (always 3x3x3, as nnU-Net).
    """

    pools: tuple[int, int, int]
    strides: tuple[tuple[int, int, int], ...]
    kernels: tuple[tuple[int, int, int], ...]

    @property
    def step(self) -> tuple[int, int, int]:
        """Lattice step per axis: a valid patch is a multiple of ``2**pools``."""
        return tuple(2**p for p in self.pools)  # type: ignore[return-value]

    @property
    def n_stages(self) -> int:
        return len(self.strides)


def unet_topology(
    patch: Sequence[int], spacing: Sequence[float], min_feature_map: int = MIN_FEATURE_MAP
) -> UnetTopology:
    """nnU-Net's ``get_pool_and_conv_props`` (v2) for ``patch`` at ``spacing``, no padding.

    Each loop adds one stage: the axes that are large enough (>= 2*min_feature_map), whose
    current spacing is within 2x of the finest among them, are halved (ceil) and their
    spacing doubled. A single remaining axis is only pooled if it is >= 3*min_feature_map.
    """
    dim = len(spacing)
    cur_spacing = [float(s) for s in spacing]
    cur_size = [int(s) for s in patch]
    pools = [0] * dim
    kernel = [1] * dim
    strides: list[tuple[int, ...]] = [(1,) * dim]
    kernels: list[tuple[int, ...]] = []
    while True:
        valid = [i for i in range(dim) if cur_size[i] >= 2 * min_feature_map]
        if not valid:
            break
        finest = min(cur_spacing[i] for i in valid)
        valid = [i for i in valid if cur_spacing[i] / finest < 2]
        if len(valid) == 1 and cur_size[valid[0]] < 3 * min_feature_map:
            break
        if not valid:
            break
        finest_all = min(cur_spacing)
        for d in range(dim):  # once 3, stays 3
            if kernel[d] != 3 and cur_spacing[d] / finest_all < 2:
                kernel[d] = 3
        stride = [1] * dim
        for v in valid:
            stride[v] = 2
            pools[v] += 1
            cur_spacing[v] *= 2
            cur_size[v] = math.ceil(cur_size[v] / 2)
        strides.append(tuple(stride))
        kernels.append(tuple(kernel))
    kernels.append((3,) * dim)  # the bottleneck
    return UnetTopology(tuple(pools), tuple(strides), tuple(kernels))  # type: ignore[arg-type]


def check_network(name: str) -> str:
    """``name`` if it is one of :data:`NETWORKS`; else one line naming the choices."""
    if name not in NETWORKS:
        raise PGPSInputError(f"unknown network {name!r} (use one of {', '.join(NETWORKS)})")
    return name


def lattice_step(name: str, patch: Sequence[int], spacing: Sequence[float]) -> tuple[int, ...]:
    """The lattice step per axis of network ``name`` for final patch ``patch``."""
    if check_network(name) == "unet":
        return unet_topology(patch, spacing).step
    return (TRANSFORMER_STEPS[name],) * len(patch)


def snap_patch(
    name: str, patch: Sequence[int], spacing: Sequence[float], *, up: bool = False
) -> tuple[int, int, int]:
    """The nearest valid patch at or below (``up=False``) / at or above ``patch`` per axis.

    For ``unet`` the step depends on the patch itself, so rounding repeats until the patch
    is a multiple of its own ``2**pools`` (a fixed point; at most a few rounds). Never below
    one step per axis.
    """
    cur = [int(v) for v in patch]
    for _ in range(64):
        step = lattice_step(name, cur, spacing)
        if all(v % s == 0 for v, s in zip(cur, step)):
            return tuple(cur)  # type: ignore[return-value]
        if up:
            cur = [-(-v // s) * s for v, s in zip(cur, step)]
        else:
            cur = [max(v // s, 1) * s for v, s in zip(cur, step)]
    raise AssertionError(f"snap_patch did not settle for {patch}")  # pragma: no cover


def plan_patch(
    median_shape: Sequence[float],
    spacing: Sequence[float],
    budget: int = 2**21,
    name: str = "unet",
    *,
    round_up: bool = False,
) -> tuple[int, int, int]:
    """A final patch for ``name``: nnU-Net's patch-size loop with a voxel budget.

    Start from the spacing's aspect ratio (1/spacing) scaled to 256**3 voxels and clipped to
    the median case shape (nnU-Net v2), snap it to the lattice (down by default so the patch
    stays within the median case; ``round_up=True`` pads up as nnU-Net does), then while it
    has more than ``budget`` voxels shrink the axis that is largest relative to the median
    shape by one step (for unet with nnU-Net's re-derived step, so no valid size is skipped).
    An axis never goes below one pooling (unet: 8) or the network minimum (16/32).
    """
    if len(median_shape) != 3 or len(spacing) != 3 or min(spacing) <= 0:
        raise PGPSInputError(
            f"median_shape {list(median_shape)} / spacing {list(spacing)}: need three values "
            "each, spacing > 0 (pass (Z, Y, X))"
        )
    floor = UNET_FLOOR if name == "unet" else lattice_step(name, (1, 1, 1), spacing)[0]
    aspect = [1.0 / s for s in spacing]
    scale = (256**3 / math.prod(aspect)) ** (1 / 3)
    initial = [min(round(a * scale), m) for a, m in zip(aspect, median_shape)]
    initial = [max(int(v), floor) for v in initial]
    patch = list(snap_patch(name, initial, spacing, up=round_up))
    while math.prod(patch) > budget:
        ratios = [p / m for p, m in zip(patch, median_shape)]
        order = sorted(range(3), key=lambda a: ratios[a], reverse=True)
        for axis in order:
            step = lattice_step(name, patch, spacing)[axis]
            tmp = list(patch)
            tmp[axis] -= step  # nnU-Net: subtract, re-derive the step, subtract that instead
            if tmp[axis] < floor:
                continue
            step = lattice_step(name, tmp, spacing)[axis]
            patch[axis] -= step
            patch = list(snap_patch(name, patch, spacing))
            break
        else:  # every axis at its floor: cannot shrink further
            break
    return tuple(patch)  # type: ignore[return-value]


def load_nnunet_plans(
    path: str | Path,
    store_spacing: Sequence[float],
    configuration: str = "3d_fullres",
) -> dict[str, Any]:
    """Patch, spacing, pools and batch size of one configuration of an ``nnUNetPlans.json``.

    Axis mapping: nnU-Net reads images as (Z, Y, X) file order (SimpleITKIO and NibabelIO
    both; NibabelIOWithReorient reorients and is refused), then transposes every array
    and spacing by ``transpose_forward`` before planning, so plans axis j is our axis
    ``transpose_forward[j]``; we undo it: ours[a] = plans[transpose_backward[a]].
    Pools per axis come from ``architecture.arch_kwargs.strides`` (nnU-Net >= 2.2) or
    ``pool_op_kernel_sizes`` (older plans): the number of 2-strides on that axis.
    A plans spacing that differs from ``store_spacing`` (relative 1e-3) is refused with the
    ``pgps-convert`` command that writes a matching store.

    Returns ``{"patch", "spacing", "pools", "batch_size", "kernels", "strides"}`` in (Z, Y, X).
    """
    path = Path(path)
    try:
        plans = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PGPSInputError(f"cannot read nnU-Net plans ({e}); pass nnUNetPlans.json", path=path) from None
    reader = str(plans.get("image_reader_writer", "SimpleITKIO"))
    if "Reorient" in reader:
        raise PGPSInputError(
            f"plans use {reader}, whose axes are reoriented, not the file's (re-plan with "
            "SimpleITKIO or NibabelIO)",
            path=path,
        )
    configs = plans.get("configurations", {})
    if configuration not in configs:
        raise PGPSInputError(
            f"no configuration {configuration!r} (have {sorted(configs)}; pick one)", path=path
        )
    cfg = _resolve(configs, configuration)
    fwd = list(plans.get("transpose_forward", [0, 1, 2]))
    if sorted(fwd) != [0, 1, 2] or len(cfg.get("patch_size", [])) != 3:
        raise PGPSInputError(f"configuration {configuration!r} is not 3D (use 3d_fullres)", path=path)
    back = [fwd.index(a) for a in range(3)]  # == transpose_backward

    def ours(values: Sequence[Any]) -> list[Any]:
        return [values[back[a]] for a in range(3)]

    arch = cfg.get("architecture", {}).get("arch_kwargs", {})
    strides_t = arch.get("strides", cfg.get("pool_op_kernel_sizes"))
    kernels_t = arch.get("kernel_sizes", cfg.get("conv_kernel_sizes"))
    if strides_t is None:
        raise PGPSInputError(f"configuration {configuration!r} has no strides", path=path)
    strides = [tuple(int(v) for v in ours(s)) for s in strides_t]
    pools = tuple(sum(int(math.log2(s[a])) for s in strides) for a in range(3))
    spacing = tuple(float(v) for v in ours(cfg["spacing"]))
    store = tuple(float(v) for v in store_spacing)
    if any(abs(p - s) > 1e-3 * abs(p) for p, s in zip(spacing, store)):
        cmd = "pgps-convert RAW OUT --spacing " + " ".join(f"{v:.6g}" for v in spacing)
        raise PGPSInputError(
            f"plans spacing {list(spacing)} (Z, Y, X) differs from the store's {list(store)} "
            f"(rebuild the store at the plans spacing: {cmd})",
            path=path,
        )
    return {
        "patch": tuple(int(v) for v in ours(cfg["patch_size"])),
        "spacing": spacing,
        "pools": pools,
        "batch_size": int(cfg["batch_size"]),
        "strides": tuple(strides),
        "kernels": tuple(tuple(int(v) for v in ours(k)) for k in (kernels_t or [])),
    }


def _resolve(configs: dict[str, Any], name: str, depth: int = 0) -> dict[str, Any]:
    """A configuration with nnU-Net's ``inherits_from`` applied (child keys win)."""
    cfg = configs[name]
    parent = cfg.get("inherits_from")
    if parent is None or depth > 8 or parent not in configs:
        return cfg
    return {**_resolve(configs, parent, depth + 1), **cfg}
