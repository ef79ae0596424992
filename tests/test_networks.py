"""The three networks at tiny widths: lattice, output contract, single-voxel norm, UNETR
position-embedding resampling, config round trip."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from pgps_data.errors import PGPSInputError
from pgps_train.networks import (
    SegNet,
    SingleVoxelInstanceNorm3d,
    build_network,
    check_patch,
    network_lattice,
    resample_position_embedding,
    tiny_kwargs,
)

ANISO = (2.5, 1.0, 1.0)  # unet at (16, 32, 32): pools (2, 3, 3), step (4, 8, 8)
FIX_SPACING = (2.226199984550476, 0.7795499861240387, 0.7795499861240387)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny(name: str, patch, spacing=(1.0, 1.0, 1.0), num_classes: int = 3) -> SegNet:
    return build_network(name, in_channels=1, num_classes=num_classes, patch=patch,
                         spacing=spacing, **tiny_kwargs(name))


def train_step(net: SegNet, shape) -> list[torch.Tensor]:
    """One train-mode forward + backward on a (1, C, *shape) input; returns the outputs."""
    net.train()
    net.zero_grad()
    outs = net(torch.randn(1, net.in_channels, *shape))
    assert isinstance(outs, list)
    sum(o.square().mean() for o in outs).backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    return outs


@pytest.mark.parametrize(
    "name,patch,spacing,sizes",
    [
        ("unet", (16, 32, 32), ANISO, [(4, 8, 8), (8, 16, 24)]),  # smallest, middle
        ("unetr", (32, 16, 32), (1, 1, 1), [(16, 16, 16), (32, 16, 16)]),
    ],  # swinunetr: test_swinunetr_at_declared_minimum / _middle_size (CPU time)
)
def test_forward_backward_on_lattice_sizes(name, patch, spacing, sizes) -> None:
    net = tiny(name, patch, spacing)
    n_out = 3 if name == "unet" else 1  # unet: 4 stages -> full res + 2 heads
    for shape in sizes:
        outs = train_step(net, shape)
        assert len(outs) == n_out
        assert all(o.shape == (1, 3, *shape) for o in outs)
        net.eval()
        with torch.no_grad():
            logits = net(torch.randn(2, 1, *shape))
        assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3, *shape)


def test_unet_deep_supervision_heads_order() -> None:
    """Heads follow the full-resolution output, coarsest last, nearest-upsampled to full
    resolution: head i is constant over blocks of its stage's total stride."""
    net = tiny("unet", (16, 32, 32), ANISO)  # strides 1, (1,2,2), (2,2,2), (2,2,2)
    outs = train_step(net, (8, 16, 16))
    for out, factor in zip(outs[1:], [(1, 2, 2), (2, 4, 4)]):
        coarse = out[:, :, :: factor[0], :: factor[1], :: factor[2]]
        for axis, f in enumerate(factor):
            coarse = coarse.repeat_interleave(f, dim=2 + axis)
        assert torch.equal(out, coarse)
    assert not torch.equal(outs[0][:, :, :, ::2, ::2].repeat_interleave(2, 3).repeat_interleave(2, 4),
                           outs[0])


def test_swinunetr_middle_size() -> None:
    """Built at 64x32x64, run at the middle size 64x32x32 (forward only: CPU time)."""
    net = tiny("swinunetr", (64, 32, 64)).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 64, 32, 32))
    assert out.shape == (1, 3, 64, 32, 32) and torch.isfinite(out).all()


def test_unet_follows_nnunet_plans() -> None:
    """Full nnU-Net widths at the fixture's patch/spacing: the same stages as its plans."""
    net = build_network("unet", in_channels=1, num_classes=3, patch=(48, 96, 96),
                        spacing=FIX_SPACING)
    dyn = net.net
    assert [list(k) for k in dyn.kernel_size] == [[1, 3, 3]] + [[3, 3, 3]] * 4
    assert [list(s) for s in dyn.strides] == [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * 3
    assert list(dyn.filters) == [32, 64, 128, 256, 320]
    assert dyn.deep_supr_num == 3
    assert net.lattice == network_lattice("unet", (48, 96, 96), FIX_SPACING)
    assert net.lattice.steps == (8, 16, 16) and net.lattice.minimum is None
    assert not any(type(m) is nn.InstanceNorm3d for m in net.modules())
    assert sum(isinstance(m, SingleVoxelInstanceNorm3d) for m in net.modules()) == 18


def test_single_voxel_bottleneck_trains() -> None:
    """Journal minimum patch (one step per axis): the bottleneck is 1x1x1."""
    net = tiny("unet", (16, 32, 32), ANISO)
    seen = []
    net.net.bottleneck.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[2:])))
    outs = train_step(net, net.lattice.steps)
    assert seen == [(1, 1, 1)]
    assert outs[0].shape == (1, 3, 4, 8, 8)
    # torch's own InstanceNorm3d refuses exactly this in training mode
    plain = nn.InstanceNorm3d(16, affine=True).train()
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        plain(torch.randn(1, 16, 1, 1, 1))


def test_single_voxel_norm_values() -> None:
    ours = SingleVoxelInstanceNorm3d(4, affine=True).train()
    with torch.no_grad():
        ours.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        ours.weight.fill_(3.0)
    one = ours(torch.randn(2, 4, 1, 1, 1))
    assert torch.equal(one, ours.bias.view(1, 4, 1, 1, 1).expand(2, 4, 1, 1, 1))
    x = torch.randn(2, 4, 3, 2, 5)
    ref = nn.InstanceNorm3d(4, affine=True)
    ref.load_state_dict(ours.state_dict())
    assert torch.allclose(ours(x), ref(x))
    ours.eval()  # torch also refuses one voxel in eval (input statistics without running stats)
    assert torch.equal(ours(torch.randn(1, 4, 1, 1, 1))[0, :, 0, 0, 0], ours.bias.detach())


def test_swinunetr_at_declared_minimum() -> None:
    """32 voxels leave SwinUNETR's deepest stage at one voxel, where MONAI's own block
    (torch InstanceNorm3d) raises in training; ours trains with finite gradients, so the
    declared minimum is 32."""
    lat = network_lattice("swinunetr", (64, 64, 64))
    assert lat.steps == (32, 32, 32) and lat.minimum == (32, 32, 32)
    net = tiny("swinunetr", lat.minimum, num_classes=2)
    seen = []
    net.net.encoder10.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    outs = train_step(net, lat.minimum)
    assert outs[0].shape == (1, 2, 32, 32, 32) and torch.isfinite(outs[0]).all()
    assert seen[0][2:] == (1, 1, 1)
    plain = copy.deepcopy(net.net.encoder10)  # the same block with torch's InstanceNorm3d
    for block in plain.modules():
        for key, child in list(block.named_children()):
            if isinstance(child, SingleVoxelInstanceNorm3d):
                setattr(block, key, nn.InstanceNorm3d(child.num_features))
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        plain.train()(torch.randn(seen[0]))


def test_unetr_one_set_of_weights_two_sizes() -> None:
    net = tiny("unetr", (32, 32, 48))  # token grid 2x2x3
    emb = net.net.vit.patch_embedding
    pos = emb.position_embeddings
    assert pos.shape[1] == 2 * 2 * 3
    # at the built grid the embedding is the stored parameter itself
    assert resample_position_embedding(pos, (2, 2, 3), (2, 2, 3)) is pos
    small = resample_position_embedding(pos, (2, 2, 3), (1, 2, 1))
    assert small.shape == (1, 2, pos.shape[2])
    # trilinear to a 1-wide axis samples the centre: mean of the built grid along that axis
    full = pos.reshape(2, 2, 3, -1)
    assert torch.allclose(small.reshape(1, 2, 1, -1)[0, :, 0], full.mean(0)[:, 1], atol=1e-6)
    outs = train_step(net, (16, 32, 16))  # smaller: gradients reach the stored embedding
    assert outs[0].shape == (1, 3, 16, 32, 16)
    assert pos.grad is not None and pos.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        built = net(torch.randn(1, 1, 32, 32, 48))
    assert built.shape == (1, 3, 32, 32, 48)
    assert "vit.patch_embedding.position_embeddings" in dict(net.net.named_parameters())
    with pytest.raises(PGPSInputError, match="multiple of 16"):
        net(torch.randn(1, 1, 16, 16, 20))


@pytest.mark.parametrize(
    "name,patch,spacing,expect",
    [
        ("unet", (50, 96, 96), FIX_SPACING, "use 48×96×96 or 56×96×96"),
        ("unet", (60, 64, 64), (1, 1, 1), "use 48×64×64 or 64×64×64"),
        ("unetr", (40, 32, 32), (1, 1, 1), "use 32×32×32 or 48×32×32"),
        ("swinunetr", (48, 64, 100), (1, 1, 1), "use 32×64×96 or 64×64×128"),
        ("swinunetr", (16, 64, 64), (1, 1, 1), "use 32×64×64 or 32×64×64"),
    ],
)
def test_lattice_refusal_names_nearest_valid(name, patch, spacing, expect) -> None:
    with pytest.raises(PGPSInputError) as e:
        check_patch(name, patch, spacing)
    msg = str(e.value)
    assert expect in msg and "\n" not in msg
    for valid in expect.removeprefix("use ").split(" or "):
        check_patch(name, tuple(int(v) for v in valid.split("×")), spacing)  # no raise
    with pytest.raises(PGPSInputError, match=expect):
        build_network(name, in_channels=1, num_classes=2, patch=patch, spacing=spacing)


def test_build_refusals() -> None:
    with pytest.raises(PGPSInputError, match="unknown network"):
        network_lattice("vnet", (32, 32, 32))
    with pytest.raises(PGPSInputError, match="no option"):
        build_network("unetr", in_channels=1, num_classes=2, patch=(16, 16, 16), filters=3)
    with pytest.raises(PGPSInputError, match="needs 2"):
        build_network("unet", in_channels=1, num_classes=2, patch=(8, 8, 8))


@pytest.mark.parametrize(
    "name,patch,spacing",
    [("unet", (16, 32, 32), ANISO), ("unetr", (16, 32, 32), (1, 1, 1)),
     ("swinunetr", (32, 32, 32), (1, 1, 1))],  # build only
)
def test_config_round_trip(name, patch, spacing) -> None:
    net = tiny(name, patch, spacing)
    cfg = json.loads(json.dumps(net.config()))  # JSON-ready, as the trainer's model.json
    assert cfg["name"] == name and cfg["patch"] == list(patch)
    again = build_network(**cfg)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in again.state_dict().items()} == shapes
    again.load_state_dict(net.state_dict())
    assert (again.name, again.lattice, again.in_channels, again.num_classes) == (
        net.name, net.lattice, net.in_channels, net.num_classes)
    assert again.config() == net.config()
