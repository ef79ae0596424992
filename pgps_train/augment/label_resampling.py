"""Labels resampled as batchgeneratorsv2 0.3.6 resamples them, from the 2^d corners of each point.

bgv2's ``SpatialTransform`` (``mode_seg='bilinear'``, ``border_mode_seg='constant'``,
``padding_value_seg=-1``) resamples a label map by interpolating one indicator map per
label value, ``grid_sample(indicator × 1000)``, and giving each output voxel the label whose
float16 score is largest (the first in its sorted order on a tie; ``seg_tiebreak='nearest'``
then lets the nearest-neighbour label win when it holds the top score). The padding label −1
(our ``outside``, 255) takes part: it is sampled as ``(indicator − 1) × 1000`` with zero
padding and 1000 added back, and sorts first.

That is K full-grid interpolations for K labels. Here the same answer comes from the 2^d
input voxels around each output point, which is all a bilinear kernel reads:

* every point gathers its corner labels from the box padded with ``outside`` (one gather per
  corner, no float copy of the box); where all corners agree, that label is the answer (its
  score is 1000, every other label's is 0);
* at the other points (mixed cells: a thin shell along label borders) the score of each
  corner's label is the sum of the weights of the corners holding it, accumulated as
  ``grid_sample``'s own CPU kernels accumulate (3D: the scalar kernel's weights and order;
  2D, which dummy-2D samples use: the vectorised kernel's, with its fused multiply-adds on
  AVX2/AVX-512), so the scores are the same float32 bits as bgv2's and the float16 ties
  resolve alike. A label held by no corner scores 0 (``outside``: ≈ 0) and cannot win.

The cost is one pass over the output points whatever the number of labels, instead of one
interpolation of the whole box per label. On the CPU only the mixed points are scored
(packed: one host-side count per call); on an accelerator every point is, with no host sync.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["resample_labels"]

_SCORE = 1000.0  # bgv2's scale_factor: indicator × 1000, scores compared in float16
_PAD = 2  # outside voxels added on each side: a clamped corner pair always lands in padding


def _fused_2d(device: torch.device) -> bool:
    """Whether ``grid_sample``'s 2D bilinear kernel fuses its multiply-adds on ``device``
    (ATen's AVX2 and AVX-512 CPU kernels are compiled with FMA contraction)."""
    return device.type == "cpu" and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def _fma(a: torch.Tensor, b: torch.Tensor | float, c: torch.Tensor | float) -> torch.Tensor:
    """float32 ``a·b + c`` with one rounding, through float64 (a float32 product is exact there)."""
    if not torch.is_tensor(b):
        b = torch.tensor(b, dtype=torch.float64, device=a.device)
    return (a.double() * b.double() + (c.double() if torch.is_tensor(c) else c)).float()


def _source(coord: torch.Tensor, n: int, planar: bool, fused: bool) -> torch.Tensor:
    """A normalised grid coordinate as ``grid_sample`` unnormalises it (align_corners=False):
    the 3D scalar kernel computes ``((g + 1)·n − 1) / 2``, the 2D vectorised one
    ``(g + 1)·(n/2) − 0.5``, fused on AVX2/AVX-512."""
    if not planar:
        return ((coord + 1) * n - 1) / 2
    if fused:
        return _fma(coord + 1, n / 2, -0.5)
    return (coord + 1) * (n / 2) - 0.5


def _weights(x: list[torch.Tensor], x0: list[torch.Tensor], planar: bool) -> list[torch.Tensor]:
    """The 2^d corner weights in ``grid_sample``'s order (axis 0 slowest), with its formulas:
    3D ``(x1 − x)·(y1 − y)·(z1 − z)`` and the like (x factor first); 2D ``s·e`` where
    ``e = 1 − (x − x0)`` (the row factor first)."""
    d = len(x)
    if planar:
        far = [xi - x0i for xi, x0i in zip(x, x0)]
        near = [1 - f for f in far]
        (ny, nx), (fy, fx) = near, far
        return [ny * nx, ny * fx, fy * nx, fy * fx]
    near = [(x0i + 1) - xi for xi, x0i in zip(x, x0)]
    far = [xi - x0i for xi, x0i in zip(x, x0)]
    out = []
    for corner in range(1 << d):
        bits = [(corner >> (d - 1 - a)) & 1 for a in range(d)]  # axis 0 is the slowest bit
        w = None
        for a in reversed(range(d)):  # x factor first, then y, then z
            f = far[a] if bits[a] else near[a]
            w = f if w is None else w * f
        out.append(w)
    return out


def _accumulate(terms: list[torch.Tensor], scaled: list[torch.Tensor],
                wide: list[torch.Tensor] | None, negate: bool) -> torch.Tensor:
    """``grid_sample``'s sum over the corners of value × weight, value = ±1000 where
    ``terms[k]`` and 0 elsewhere (a 0 term leaves the sum as it is): the products rounded
    and added in corner order, or (``wide``: the 2D kernel's fused multiply-adds) the first
    product rounded and each later one added with a single rounding."""
    acc = None
    for k, take in enumerate(terms):
        if acc is None:
            acc = torch.where(take, -scaled[k] if negate else scaled[k], 0.0)
        elif wide is not None:
            step = (acc.double() - wide[k] if negate else acc.double() + wide[k]).float()
            acc = torch.where(take, step, acc)
        else:
            acc = acc + torch.where(take, -scaled[k] if negate else scaled[k], 0.0)
    return acc


def _pick(labels: list[torch.Tensor], scores: list[torch.Tensor],
          nearest: torch.Tensor) -> torch.Tensor:
    """bgv2's choice among candidate labels with float32 scores: the top float16 score, the
    first label in bgv2's order (outside first, then ascending) on a tie, and the
    ``nearest`` label instead whenever its score is the top one (seg_tiebreak='nearest')."""
    keys = []  # float16 score × 4096 + 255 − rank: exact where a score can win (≥ 1000/8)
    for label, score in zip(labels, scores):
        rank = label.to(torch.int32).add_(1).bitwise_and_(255)
        keys.append(score.to(torch.float16).to(torch.float32).mul_(4096.0).sub_(rank).add_(255.0))
    best, nn_key = keys[0], keys[0]
    for label, key in zip(labels[1:], keys[1:]):
        best = torch.maximum(best, key)
        nn_key = torch.where(label == nearest, key, nn_key)
    code = torch.where(nn_key.div(256).floor_() == best.div(256).floor_(), nn_key, best)
    code = code.sub_(code.div(256).floor_().mul_(256))  # 255 − rank
    return (255 - code).to(torch.int32).sub_(1).bitwise_and_(255).to(torch.uint8)


def _choose(corners: list[torch.Tensor], weights: list[torch.Tensor], nearest: torch.Tensor,
            outside: int, fused: bool) -> torch.Tensor:
    """bgv2's label at each mixed point from its corner labels and weights.

    Candidates are taken in corner order: A (corner 0's label), B (the first other one) and,
    where a cell holds more, C; each scores the sum of its corners' weights. ``outside``
    scores 1000 minus the sum over the corners holding a real label: with two labels that
    is 1000 − the other's score (the same terms negated round alike), with more it is
    summed on its own. Cells with four or more labels score every corner's label."""
    scaled = [w * _SCORE for w in weights]
    wide = [w.double() * _SCORE for w in weights] if fused else None
    first = corners[0]
    second = _next_label(corners, [first])
    score_a = _accumulate([c == first for c in corners], scaled, wide, False)
    score_b = _accumulate([c == second for c in corners], scaled, wide, False)
    chosen = _pick([first, second],
                   [torch.where(first == outside, _SCORE - score_b, score_a),
                    torch.where(second == outside, _SCORE - score_a, score_b)], nearest)
    third = _outside_of(corners, [first, second])
    many = third.nonzero().squeeze(1)
    if many.numel() == 0:
        return chosen
    sub = [c[many] for c in corners]
    sub_scaled = [w[many] for w in scaled]
    sub_wide = [w[many] for w in wide] if wide is not None else None
    labels = [first[many], second[many]]
    labels.append(_next_label(sub, labels))
    scores = [score_a[many], score_b[many],
              _accumulate([c == labels[2] for c in sub], scaled=sub_scaled, wide=sub_wide,
                          negate=False)]
    if any(bool((lab == outside).any()) for lab in labels):
        out_score = _accumulate([c != outside for c in sub], sub_scaled, sub_wide, True)
        out_score = out_score.add_(_SCORE)
        scores = [torch.where(lab == outside, out_score, sc) for lab, sc in zip(labels, scores)]
    near = nearest[many]
    picked = _pick(labels, scores, near)
    fourth = _outside_of(sub, labels).nonzero().squeeze(1)
    if fourth.numel():
        rest = [c[fourth] for c in sub]
        rest_wide = [w[fourth] for w in sub_wide] if sub_wide is not None else None
        picked[fourth] = _pick(rest, _full_scores(rest, [w[fourth] for w in sub_scaled],
                                                  rest_wide, outside), near[fourth])
    chosen[many] = picked
    return chosen


def _next_label(corners: list[torch.Tensor], taken: list[torch.Tensor]) -> torch.Tensor:
    """Per entry, the first corner label (in corner order) not among ``taken`` (taken[0]
    where there is none)."""
    out = taken[0]
    for c in reversed(corners[1:]):
        new = c != taken[0]
        for t in taken[1:]:
            new &= c != t
        out = torch.where(new, c, out)
    return out


def _outside_of(corners: list[torch.Tensor], taken: list[torch.Tensor]) -> torch.Tensor:
    """Whether an entry has a corner label not among ``taken``."""
    found = None
    for c in corners[1:]:
        new = c != taken[0]
        for t in taken[1:]:
            new &= c != t
        found = new if found is None else found.logical_or_(new)
    return found


def _full_scores(corners: list[torch.Tensor], scaled: list[torch.Tensor],
                 wide: list[torch.Tensor] | None, outside: int) -> list[torch.Tensor]:
    """Per corner, the float32 score of its label: ``grid_sample`` of the label's indicator
    × 1000 (``outside``'s: of (indicator − 1) × 1000, plus 1000)."""
    is_out = [c == outside for c in corners]
    outside_score = _accumulate([~o for o in is_out], scaled, wide, True).add_(_SCORE)
    out = []
    for c, mine in enumerate(corners):
        terms = [other == mine for other in corners]
        out.append(torch.where(is_out[c], outside_score, _accumulate(terms, scaled, wide, False)))
    return out


@torch.no_grad()
def resample_labels(label: torch.Tensor, grid: torch.Tensor, outside: int = 255, *,
                    pixels: Sequence[torch.Tensor] | None = None,
                    pack: bool | None = None) -> torch.Tensor:
    """bgv2's label resampling of ``label`` (W, K, *box) uint8 at ``grid`` (W, *points, d).

    ``grid`` is ``grid_sample``'s (x, y[, z]) grid, align_corners=False, shared by the K
    channels of a sample (a 2D grid over K = C·Z slices is dummy 2D). ``outside`` marks
    voxels beyond the case and pads the box; it competes as a label and stays ``outside``.
    Returns (W, K, *points) uint8. ``pack`` (default: on the CPU) scores only the points
    whose corners disagree, found from ``pixels``: per box axis, the (W, P) source pixel
    coordinates of the points (:func:`~pgps_train.augment.spatial.pixel_rows`; any float
    error is harmless), derived from ``grid`` when not given.
    """
    w, k = label.shape[:2]
    box, d = tuple(label.shape[2:]), grid.shape[-1]
    if len(box) != d or grid.shape[0] != w:
        raise ValueError(f"resample_labels: label {tuple(label.shape)} vs grid {tuple(grid.shape)}")
    points = tuple(grid.shape[1:-1])
    device = label.device
    planar = d == 2
    fused = planar and _fused_2d(device)
    if pack is None:
        pack = device.type == "cpu"
    flat_grid = grid.reshape(-1, d)  # (W·P, d)
    p = flat_grid.shape[0] // w
    padded = torch.nn.functional.pad(label, (_PAD, _PAD) * d, value=outside)
    sizes = padded.shape[2:]
    strides = [1] * d
    for a in reversed(range(d - 1)):
        strides[a] = strides[a + 1] * sizes[a + 1]
    volume = strides[0] * sizes[0]
    index_dtype = torch.int32 if w * k * volume < 2**31 else torch.int64
    source = padded.reshape(-1)
    offsets = _corner_offsets(strides)

    def rows_of(entry: torch.Tensor) -> torch.Tensor:
        """The flat offset of the (sample, channel) row of each (W·K·P) entry."""
        return (entry // p).to(index_dtype).mul_(volume)

    def gather(base: torch.Tensor) -> list[torch.Tensor]:
        return [source[off:].index_select(0, base) for off in offsets]

    if pack:
        # every point: its cell from the grid in one pass (the kernel's own arithmetic
        # can differ where a coordinate lies within float error of a voxel centre; then
        # the corners across that centre weigh ~1e-5, the heavy corners are shared by
        # both cells, and a uniform cell's label is the answer either way)
        if pixels is None:
            coords = flat_grid.t().reshape(d, w, p)
            pixels = [coords[d - 1 - a].mul(box[a] / 2).add_(box[a] / 2 - 0.5) for a in range(d)]
        base = None
        for a in range(d):
            i = pixels[a].reshape(w, p).add(_PAD).floor_().clamp_(0, box[a] + _PAD)
            i = i.to(index_dtype).mul_(strides[a])
            base = i if base is None else base.add_(i)
        if w * k > 1:
            rows = torch.arange(w * k, device=device, dtype=index_dtype).mul_(volume)
            base = base.view(w, 1, p) + rows.view(w, k, 1)
        base = base.reshape(-1)
        corners = gather(base)
        first = corners[0]
        mixed = corners[1] ^ first  # non-zero where a corner differs (uint8: faster than bool)
        for other in corners[2:]:
            mixed |= other ^ first
        entry = mixed.nonzero().squeeze(1)
        if entry.numel() == 0:
            return first.view(w, k, *points)
    else:
        entry = torch.arange(w * k * p, device=device)
    point = (entry // (k * p)) * p + entry % p  # the (sample, point) of each (W·K·P) entry
    g = flat_grid[point]
    xs = [_source(g[:, d - 1 - a], box[a], planar, fused) for a in range(d)]
    x0s = [xi.floor() for xi in xs]
    base = rows_of(entry) if w * k > 1 else torch.zeros_like(entry, dtype=index_dtype)
    for a in range(d):
        base += x0s[a].clamp(-_PAD, box[a]).to(index_dtype).add_(_PAD).mul_(strides[a])
    corners = gather(base)
    if not pack:
        first = corners[0]
        mixed = corners[1] != first
        for other in corners[2:]:
            mixed |= other != first  # bool: the accelerator's torch.where below takes it
    nearest = None  # the corner nearest the point (round half to even, as the kernels)
    for a in range(d):
        bit = (xs[a].round() - x0s[a]).to(torch.int64) * (1 << (d - 1 - a))
        nearest = bit if nearest is None else nearest + bit
    nearest = torch.stack(corners).gather(0, nearest.view(1, -1)).view(-1)  # its label
    chosen = _choose(corners, _weights(xs, x0s, planar), nearest, outside, fused)
    if pack:
        first[entry] = chosen  # first is the gather's own output
        return first.view(w, k, *points)
    return torch.where(mixed, chosen, first).view(w, k, *points)


def _corner_offsets(strides: Sequence[int]) -> list[int]:
    """Flat offsets of the 2^d corners of a cell (axis 0 the slowest bit)."""
    d = len(strides)
    return [sum(((c >> (d - 1 - a)) & 1) * strides[a] for a in range(d)) for c in range(1 << d)]
