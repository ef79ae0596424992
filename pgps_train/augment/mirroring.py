"""nnU-Net's MirrorTransform (batchgeneratorsv2 0.3.6), batched over samples: the last
transform of nnU-Net's default pipeline that moves voxels (image and label together)."""

from __future__ import annotations

import torch

__all__ = ["mirror"]


@torch.no_grad()
def mirror(image: torch.Tensor, label: torch.Tensor, flips: torch.Tensor, *,
           inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """nnU-Net's MirrorTransform per sample: flip spatial axis a of sample b where flips[b, a].

    ``image`` (B, C, Z, Y, X), ``label`` (B, K, Z, Y, X), ``flips`` bool (B, 3); the inputs
    are not modified. With ``flips`` on the CPU (the host knows the draws): the samples are
    grouped by flip pattern (≤ 8) and each group is selected, flipped over all its axes at
    once and copied back — every sample moves about three times, however many axes it flips,
    and there is no device sync (the group indices go to the device). With ``flips`` on an
    accelerator: per axis one flip of the batch and a ``torch.where`` on the selected
    samples, sync-free (the whole batch moves ~2× per axis, which is bandwidth there). Flips
    commute, so both equal bgv2's single ``torch.flip`` over the chosen axes.

    ``inplace`` (host flags): the flipped samples are written back into ``image`` and
    ``label`` and the others are not touched (no copy of the batch), a group that is one
    run of samples through a view; the augmenter owns its batch, so it mirrors so.
    """
    if flips.shape != (image.shape[0], 3):
        raise ValueError(f"mirror: flips {tuple(flips.shape)} must be (B, 3)")
    flips = flips.to(torch.bool)
    if flips.device.type != "cpu":
        for axis in range(3):
            column = flips[:, axis].to(image.device)
            dim = axis + 2
            image = torch.where(column.view(-1, *[1] * (image.ndim - 1)), image.flip(dim), image)
            label = torch.where(column.view(-1, *[1] * (label.ndim - 1)), label.flip(dim), label)
        return image, label
    code = (flips.to(torch.int64) * torch.tensor([1, 2, 4])).sum(1)
    counts = torch.bincount(code, minlength=8).tolist()
    if counts[0] == len(code):
        return image, label
    if inplace:
        return _mirror_in_place(image, label, code, counts)
    keep = 2 * counts[0] > len(code)  # mostly unflipped: copy all, then overwrite the flipped
    outs = [t.clone() if keep else torch.empty_like(t) for t in (image, label)]
    for rows, dims in _groups(code, counts, unflipped=not keep):
        rows = rows.to(image.device)
        for src, dst in zip((image, label), outs):
            part = src.index_select(0, rows)
            dst.index_copy_(0, rows, part.flip(dims) if dims else part)
    return outs[0], outs[1]


def _groups(code: torch.Tensor, counts: list[int], *, unflipped: bool):  # noqa: ANN202
    """(rows, dims) per flip pattern present: the samples (ascending, host) and the axes
    they flip; the unflipped pattern only when ``unflipped``."""
    order = torch.argsort(code, stable=True)
    start = 0
    for pattern, n in enumerate(counts):
        rows, start = order[start:start + n], start + n
        if n and (pattern or unflipped):
            yield rows, [a + 2 for a in range(3) if pattern >> a & 1]


def _mirror_in_place(image: torch.Tensor, label: torch.Tensor, code: torch.Tensor,
                     counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`mirror` with ``inplace``: per flip pattern, its samples flipped and written back."""
    for rows, dims in _groups(code, counts, unflipped=False):
        n = len(rows)
        first, last = int(rows[0]), int(rows[-1])  # stable sort: ascending within a pattern
        for t in (image, label):
            if last - first + 1 == n:  # one run of samples: flip the view, copy it back
                view = t[first:last + 1]
                view.copy_(view.flip(dims))
            else:
                index = rows.to(t.device)
                t.index_copy_(0, index, t.index_select(0, index).flip(dims))
    return image, label
