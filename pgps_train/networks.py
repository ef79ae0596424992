"""The three segmentation networks and each one's patch lattice.

    net = build_network("unet", in_channels=1, num_classes=3, patch=(48, 96, 96),
                        spacing=(2.23, 0.78, 0.78))
    net.train(); outs = net(x)      # list: full-res logits first, deep-supervision heads after
    net.eval();  logits = net(x)    # (B, K, Z, Y, X)
    same = build_network(**net.config())

- ``unet``: MONAI DynUNet configured as nnU-Net plans it (:func:`~pgps_train.planning.
  unet_topology` on the final patch and the store's spacing): 3x3x3 kernels (1x3x3 on an axis
  still too coarse), 2 convs per stage, instance norm (affine), LeakyReLU 0.01, transposed
  conv upsampling, ``min(base_filters * 2**i, max_filters)`` filters, deep supervision with
  nnU-Net's outputs: stages - 1 tensors (full resolution, then 1/2, 1/4, ... down to the
  stage above the bottleneck; nnU-Net weights them 1/2**i with the coarsest at 0). Lattice
  step 2**pools per axis, no minimum. In train mode the heads are nearest-upsampled to full
  resolution (MONAI's DynUNet), so every element of the list is (B, K, Z, Y, X).
- ``unetr``: MONAI UNETR (16-voxel tokens). Its learned position embedding is built for the
  final patch and resampled trilinearly to a smaller input's token grid on every forward
  (exactly the stored embedding at the built size). Lattice step 16, minimum 16.
- ``swinunetr``: MONAI SwinUNETR. Lattice step 32, minimum 32: at 32 voxels its deepest
  stage is 1 voxel, which our single-voxel instance norm handles (measured: forward and
  backward at 32**3 are finite, see tests/test_networks.py).

All three replace torch's ``InstanceNorm3d`` by :class:`SingleVoxelInstanceNorm3d` (local to
these modules; torch is never patched): the journal minimum patch gives a UNet a 1x1x1
bottleneck, which torch refuses in training, and the published PGPS code trains through it.
In train mode every network returns a list (a one-element list for the transformers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks.patchembedding import PatchEmbeddingBlock
from monai.networks.nets import UNETR, DynUNet, SwinUNETR
from torch import Tensor, nn

from pgps_data.errors import PGPSInputError
from pgps_train.planning import check_network, lattice_step, snap_patch, unet_topology

UNETR_KNOBS = frozenset({"feature_size", "hidden_size", "mlp_dim", "num_heads", "dropout_rate",
                         "qkv_bias", "conv_block", "res_block"})
SWIN_KNOBS = frozenset({"feature_size", "depths", "num_heads", "window_size", "drop_rate",
                        "attn_drop_rate", "dropout_path_rate", "normalize", "use_checkpoint",
                        "use_v2"})
UNET_KNOBS = frozenset({"deep_supervision"})
_TINY = {
    "unet": {"base_filters": 4, "max_filters": 16},
    "unetr": {"feature_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_heads": 2},
    "swinunetr": {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]},
}


@dataclass(frozen=True)
class Lattice:
    """Valid patch sizes of a network: multiples of ``steps`` per axis, at least ``minimum``."""

    steps: tuple[int, int, int]
    minimum: tuple[int, int, int] | None


def network_lattice(
    name: str, patch: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> Lattice:
    """The lattice of ``name`` built for final patch ``patch`` at ``spacing`` (Z, Y, X).

    For ``unet`` the poolings (hence the steps) follow nnU-Net's rule on the patch and
    spacing; the transformers have a fixed step and minimum.
    """
    check_network(name)
    steps = tuple(lattice_step(name, _as_patch(patch), spacing))
    if name == "unet":
        return Lattice(steps, None)  # type: ignore[arg-type]
    return Lattice(steps, steps)  # type: ignore[arg-type]


def check_patch(name: str, patch: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> None:
    """Raise :class:`PGPSInputError` naming the nearest valid patches if ``patch`` is off
    the lattice of ``name`` (for unet: the lattice its own poolings define)."""
    check_network(name)
    patch = _as_patch(patch)
    steps = lattice_step(name, patch, spacing)
    if all(p % s == 0 for p, s in zip(patch, steps)):
        return
    below = snap_patch(name, patch, spacing)
    above = snap_patch(name, patch, spacing, up=True)
    why = f"step {_fmt(steps)}"
    if name == "unet":
        pools = unet_topology(patch, spacing).pools
        why += f" = 2**pools, pools {_fmt(pools)} at spacing {_fmt(spacing)}"
    raise PGPSInputError(
        f"patch {_fmt(patch)} is off the {name} lattice ({why}) "
        f"(use {_fmt(below)} or {_fmt(above)})"
    )


def tiny_kwargs(name: str) -> dict[str, Any]:
    """CPU-sized widths for ``build_network`` (demo, tests): ``build_network(name, ...,
    **tiny_kwargs(name))``."""
    check_network(name)
    return {k: list(v) if isinstance(v, list) else v for k, v in _TINY[name].items()}


def build_network(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    patch: Sequence[int],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    base_filters: int = 32,
    max_filters: int = 320,
    **kw: Any,
) -> SegNet:
    """Build ``name`` for final patch ``patch`` (Z, Y, X) at the store's ``spacing``.

    ``base_filters``/``max_filters`` are the unet's widths (nnU-Net: 32, 320; ignored by
    the transformers). ``kw``: unet ``deep_supervision`` (default True); unetr
    ``feature_size``, ``hidden_size``, ``mlp_dim``, ``num_heads``, ...; swinunetr
    ``feature_size``, ``depths``, ``num_heads``, ... (see ``UNETR_KNOBS``/``SWIN_KNOBS``).
    A patch off the lattice is refused (:func:`check_patch`).
    """
    check_network(name)
    patch = _as_patch(patch)
    spacing = tuple(float(s) for s in spacing)
    check_patch(name, patch, spacing)
    allowed = {"unet": UNET_KNOBS, "unetr": UNETR_KNOBS, "swinunetr": SWIN_KNOBS}[name]
    if unknown := sorted(set(kw) - allowed):
        raise PGPSInputError(f"{name} has no option {unknown} (use {sorted(allowed)})")
    if in_channels < 1 or num_classes < 1:
        raise PGPSInputError(f"in_channels {in_channels} / num_classes {num_classes} must be >= 1")
    config: dict[str, Any] = {"name": name, "in_channels": int(in_channels),
                              "num_classes": int(num_classes), "patch": list(patch),
                              "spacing": list(spacing)}
    kw = {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}  # JSON-ready
    if name == "unet":
        net = _build_unet(in_channels, num_classes, patch, spacing, base_filters, max_filters,
                          bool(kw.get("deep_supervision", True)))
        config.update(base_filters=int(base_filters), max_filters=int(max_filters))
    elif name == "unetr":
        net = _UNETR(in_channels=in_channels, out_channels=num_classes, img_size=patch, **kw)
    else:
        net = SwinUNETR(in_channels=in_channels, out_channels=num_classes, **kw)
    config.update(kw)
    use_single_voxel_norm(net)
    return SegNet(net, config=config, lattice=network_lattice(name, patch, spacing))


class SegNet(nn.Module):
    """A network with the uniform output contract and the config that rebuilds it.

    ``forward(x)`` with x (B, C, Z, Y, X): eval mode -> logits (B, K, Z, Y, X); train mode ->
    a list of such tensors, full-resolution output first (unet: deep-supervision heads after,
    nearest-upsampled to full resolution; transformers: one element).
    """

    def __init__(self, net: nn.Module, *, config: dict[str, Any], lattice: Lattice):
        super().__init__()
        self.net = net
        self.name: str = config["name"]
        self.in_channels: int = config["in_channels"]
        self.num_classes: int = config["num_classes"]
        self.patch: tuple[int, int, int] = tuple(config["patch"])  # type: ignore[assignment]
        self.lattice = lattice
        self._config = dict(config)

    def config(self) -> dict[str, Any]:
        """JSON-ready kwargs of :func:`build_network` that rebuild this network."""
        return {k: list(v) if isinstance(v, list) else v for k, v in self._config.items()}

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        out = self.net(x)
        if not self.training:
            return out
        if out.dim() == x.dim() + 1:  # DynUNet deep supervision: (B, 1 + heads, K, ...)
            return list(out.unbind(1))
        return [out]


class SingleVoxelInstanceNorm3d(nn.InstanceNorm3d):
    """``InstanceNorm3d`` that accepts a 1x1x1 feature map (torch raises in training).

    On one voxel the instance statistics are mean = the voxel, variance 0, so the output is
    0 * weight + bias (the value torch's kernel gives when the size check is skipped, as the
    published PGPS code does). Larger maps use torch's kernel unchanged.
    """

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (torch's name)
        if math.prod(input.shape[-3:]) > 1 or (self.track_running_stats and not self.training):
            return super().forward(input)
        dims = (-3, -2, -1)
        mean = input.mean(dims, keepdim=True)
        var = input.var(dims, keepdim=True, unbiased=False)
        y = (input - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            shape = (-1, 1, 1, 1)
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def use_single_voxel_norm(module: nn.Module) -> int:
    """Replace every ``nn.InstanceNorm3d`` inside ``module`` by a
    :class:`SingleVoxelInstanceNorm3d` with the same settings and parameters; returns how
    many were replaced."""
    count = 0
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is nn.InstanceNorm3d:
                new = SingleVoxelInstanceNorm3d(
                    child.num_features, eps=child.eps, momentum=child.momentum,
                    affine=child.affine, track_running_stats=child.track_running_stats,
                )
                new.load_state_dict(child.state_dict())
                setattr(parent, child_name, new)
                count += 1
    return count


def resample_position_embedding(
    embedding: Tensor, built_grid: Sequence[int], grid: Sequence[int]
) -> Tensor:
    """A (1, N, H) token position embedding on ``built_grid`` resampled trilinearly to
    ``grid`` (returned unchanged, the same tensor, when the grids agree)."""
    if tuple(grid) == tuple(built_grid):
        return embedding
    hidden = embedding.shape[-1]
    vol = embedding.reshape(1, *built_grid, hidden).permute(0, 4, 1, 2, 3)
    vol = F.interpolate(vol, size=tuple(grid), mode="trilinear", align_corners=False)
    return vol.flatten(2).transpose(1, 2)


class _GridAdaptivePatchEmbedding(PatchEmbeddingBlock):
    """UNETR's patch embedding whose learned position embedding follows the input's token
    grid (set on an existing block by class swap, so state_dict keys stay MONAI's)."""

    built_grid: tuple[int, ...]

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embeddings(x)  # conv projection: (B, H, gz, gy, gx)
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(-1, -2)
        pos = resample_position_embedding(self.position_embeddings, self.built_grid, grid)
        return self.dropout(tokens + pos)


class _UNETR(UNETR):
    """MONAI UNETR that runs on any multiple of 16 up to and beyond its built size."""

    def __init__(self, *, img_size: Sequence[int], **kw: Any):
        super().__init__(img_size=tuple(img_size), proj_type="conv", **kw)
        self.built_grid = tuple(int(s) // 16 for s in img_size)
        embedding = self.vit.patch_embedding
        embedding.__class__ = _GridAdaptivePatchEmbedding
        embedding.built_grid = self.built_grid

    def forward(self, x_in: Tensor) -> Tensor:
        shape = tuple(x_in.shape[2:])
        if any(s % 16 for s in shape):
            raise PGPSInputError(f"unetr input {_fmt(shape)} is not a multiple of 16 per axis "
                                 "(crop or pad it to the lattice)")
        self.proj_view_shape = [s // 16 for s in shape] + [self.hidden_size]
        return super().forward(x_in)


def _build_unet(in_channels: int, num_classes: int, patch: tuple[int, int, int],
                spacing: tuple[float, ...], base_filters: int, max_filters: int,
                deep_supervision: bool) -> DynUNet:
    topo = unet_topology(patch, spacing)
    if topo.n_stages < 3:
        raise PGPSInputError(
            f"patch {_fmt(patch)} allows {topo.n_stages - 1} pooling(s) at spacing "
            f"{_fmt(spacing)}; the unet needs 2 (use at least 16 voxels on the finest axes)"
        )
    filters = [min(base_filters * 2**i, max_filters) for i in range(topo.n_stages)]
    return DynUNet(
        spatial_dims=3, in_channels=in_channels, out_channels=num_classes,
        kernel_size=[list(k) for k in topo.kernels], strides=[list(s) for s in topo.strides],
        upsample_kernel_size=[list(s) for s in topo.strides[1:]], filters=filters,
        norm_name=("INSTANCE", {"affine": True, "eps": 1e-5}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision=deep_supervision, deep_supr_num=topo.n_stages - 2,
        res_block=False, trans_bias=True,
    )


def _as_patch(patch: Sequence[int]) -> tuple[int, int, int]:
    if len(patch) != 3 or any(int(p) != p or p < 1 for p in patch):
        raise PGPSInputError(f"patch {list(patch)} must be three positive integers (Z, Y, X)")
    return tuple(int(p) for p in patch)  # type: ignore[return-value]


def _fmt(values: Sequence[float]) -> str:
    return "×".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


