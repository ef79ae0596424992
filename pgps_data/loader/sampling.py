"""Crop requests: which case, which crops, forced to foreground or not — per step.

The main process turns each training step into a few :class:`CropRequest` items (one per
case drawn for that step, holding every crop of that case), a pure function of (global
seed, step, global slot). Workers turn a request into crop origins with
:func:`plan_origins` — again seeded by (seed, step, global slot) — and read them. So the
same seed gives the same crops on any number of workers, and a resumed run continues
exactly.

Data-parallel training (``world`` processes): the curriculum's batch is the global batch,
every draw is made for the global batch, and rank r serves the contiguous share of slots
``[r·b//world, (r+1)·b//world)`` as its local rows 0, 1, ... (``CropRequest.offset`` is the
share's first global slot). The union of the ranks' crops for a step is the
single-process batch, whatever the world size, so a run resumes on another one.

Oversampling follows DESIGN.md: nnU-Net's slot rule (slot j of b forced when
j >= round(b * (1 - p))) for constant, efficiency, random and miccai performance mode; the
journal's case grouping for journal-2025 performance mode (B cases; the first
round(B * (1 - p)) give random crops, the others forced crops; the b crops split as evenly
as possible, extra crops to the forced cases); or, optionally, each crop forced with
probability p.

With spatial augmentation (:class:`~pgps_data.schedule.augment_geometry.AugmentSpec`),
each slot's spatial draw (rotate? scale? angles, factor) is made here too, keyed by
(seed, 0, step, global slot) and never by worker, because it decides what is read: crop
origins place nnU-Net's initial box I (its loader's rule); a warped slot reads that whole
box, an unwarped one only the final patch at its centre. A case's crops then become at most
two requests (plain, warped), so every request keeps one read shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pgps_data.schedule.augment_geometry import AugmentSpec, Geometry, SpatialDraw, draw_spatial
from pgps_data.schedule.curriculum import Curriculum
from pgps_data.schedule.oversampling import case_grouping, forced_slots

OVERSAMPLING = ("auto", "slot", "case_grouping", "probabilistic")
_CASE_STREAM = 0x0CA5E  # keeps the case-choice draws apart from the crop draws
_CROP_STREAM = 0xC209
_SPATIAL_STREAM = 0x5BA7  # the spatial augmentation draws (module doc)


@dataclass(frozen=True)
class CropRequest:
    """Everything a worker needs to produce the crops of one case for one step."""

    case_id: str
    step: int
    stage: int
    patch: tuple[int, int, int]
    slots: tuple[int, ...]  # batch positions of this request's crops
    forced: tuple[bool, ...]  # per crop: centred on foreground?
    seed: int
    rank: int = 0  # the data-parallel rank serving it (information: no draw depends on it)
    part: int = 0  # index of this request within its step
    parts: int = 1  # requests in this step (of this rank)
    batch: int = 1  # crops in this step (this rank's share of the global batch)
    offset: int = 0  # global slot of local row 0 (draws are keyed by global slots)
    margin: tuple[int, int, int] = (0, 0, 0)
    # With augmentation: the slot's geometry (its initial box places the crop origins),
    # whether these crops are warped (read the whole box) and each crop's spatial draw.
    geometry: Geometry | None = None
    warped: bool = False
    spatial: tuple[SpatialDraw, ...] = ()

    @property
    def box(self) -> tuple[int, int, int]:
        """The box the origin rule places: nnU-Net's initial patch, else the patch."""
        return self.patch if self.geometry is None else self.geometry.initial

    @property
    def read_offset(self) -> tuple[int, int, int]:
        """Start of the box read, relative to a crop's origin (of :attr:`box`).

        Without augmentation: minus the margin. With it: 0 for warped crops (the whole
        box), floor(I/2) - F//2 for the others (bgv2's centre crop of the box).
        """
        if self.geometry is None:
            return tuple(-m for m in self.margin)  # type: ignore[return-value]
        if self.warped:
            return (0, 0, 0)
        return self.geometry.centre

    @property
    def read_shape(self) -> tuple[int, int, int]:
        """The box actually read: the patch plus the margin on both sides; with
        augmentation the initial box (warped) or the patch."""
        if self.geometry is not None:
            return self.box if self.warped else self.patch
        return tuple(p + 2 * m for p, m in zip(self.patch, self.margin))  # type: ignore


def share(batch: int, rank: int, world: int) -> range:
    """The global slots rank ``rank`` of ``world`` serves of a ``batch``-crop step."""
    return range(rank * batch // world, (rank + 1) * batch // world)


class Sampler:
    """Turns steps into crop requests; a pure function of (seed, step) and the rank's share.

    ``rank``/``world``: serve rank ``rank``'s share of each global batch (module doc); a
    stage whose batch is smaller than ``world`` is refused (a rank would have no crop).
    """

    def __init__(
        self,
        case_ids: Sequence[str],
        curriculum: Curriculum,
        *,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        p: float = 0.5,
        oversampling: str = "auto",
        margin: Sequence[int] = (0, 0, 0),
        augment: AugmentSpec | None = None,
    ):
        if not case_ids:
            raise ValueError("the sampler needs at least one case")
        if oversampling not in OVERSAMPLING:
            raise ValueError(f"oversampling must be one of {OVERSAMPLING}, not {oversampling!r}")
        self.case_ids = list(case_ids)
        self.curriculum = curriculum
        self.seed = int(seed)
        self.rank, self.world = int(rank), int(world)
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        small = [st for st in curriculum.stages if st.batch < self.world]
        if small:
            raise ValueError(
                f"stage {small[0].index} has a global batch of {small[0].batch}, smaller than "
                f"the {self.world} processes (every rank needs a crop per step); use fewer "
                "processes or a larger --batch")
        self.p = float(p)
        self.oversampling = curriculum.oversampling if oversampling == "auto" else oversampling
        self.margin = tuple(int(m) for m in margin)
        if augment is not None and any(self.margin):
            raise ValueError("margin and augment are exclusive (augment reads nnU-Net's box)")
        self.augment = augment
        self._geometries: dict[tuple[int, ...], Geometry] = {}

    def requests(self, step: int) -> list[CropRequest]:
        """The requests of one step for this rank, in batch order (its first slot first)."""
        stage = self.curriculum.stage_at(step)
        b = stage.batch
        groups = self._groups(step, b)
        mine = share(b, self.rank, self.world)
        if self.augment is not None:
            return self._augmented(step, stage.index, tuple(stage.patch), groups, mine)
        groups = _within(groups, mine)
        return [
            CropRequest(
                case_id=case,
                step=step,
                stage=stage.index,
                patch=tuple(stage.patch),
                slots=tuple(slots),
                forced=tuple(forced),
                seed=self.seed,
                rank=self.rank,
                part=i,
                parts=len(groups),
                batch=len(mine),
                offset=mine.start,
                margin=self.margin,
            )
            for i, (case, slots, forced) in enumerate(groups)
        ]

    def _groups(self, step: int, b: int) -> list[tuple[str, list[int], list[bool]]]:
        """The global batch's crops grouped by case: (case, global slots, forced)."""
        groups: list[tuple[str, list[int], list[bool]]] = []
        if self.oversampling == "case_grouping":
            slot = 0
            for k, (forced, n) in enumerate(case_grouping(b, self.curriculum.final_batch, self.p)):
                case = self._draw_case(step, k)
                groups.append((case, list(range(slot, slot + n)), [forced] * n))
                slot += n
        else:
            if self.oversampling == "slot":
                forced_of = forced_slots(b, self.p)
            else:  # probabilistic: each crop forced with probability p
                forced_of = [self._rng(step, j, 1).random() < self.p for j in range(b)]
            by_case: dict[str, tuple[list[int], list[bool]]] = {}
            for j in range(b):
                slots, forced = by_case.setdefault(self._draw_case(step, j), ([], []))
                slots.append(j)
                forced.append(bool(forced_of[j]))
            groups = [(c, s, f) for c, (s, f) in by_case.items()]
        return groups

    def geometry(self, patch: tuple[int, ...]) -> Geometry:
        """The augmentation geometry of a stage patch (cached; needs ``augment``)."""
        g = self._geometries.get(patch)
        if g is None:
            g = self._geometries[patch] = self.augment.geometry_for(  # type: ignore[union-attr]
                patch, self.curriculum.final_patch)
        return g

    def spatial_draw(self, step: int, slot: int, geometry: Geometry) -> SpatialDraw:
        """Global slot ``slot``'s spatial draw: keyed by (seed, 0, step, slot), so it never
        depends on the worker, the rank or the world size."""
        rng = np.random.default_rng([self.seed, 0, step, slot, _SPATIAL_STREAM])
        return draw_spatial(rng, geometry, self.augment)

    def _augmented(self, step: int, stage: int, patch: tuple[int, ...],
                   groups: list[tuple[str, list[int], list[bool]]],
                   mine: range) -> list[CropRequest]:
        """Each case's crops split into a plain and a warped request (either may be absent)."""
        geometry = self.geometry(patch)
        draws = {j: self.spatial_draw(step, j, geometry) for j in mine}
        split = []
        for case, slots, forced in _within(groups, mine):
            for warped in (False, True):
                keep = [k for k, j in enumerate(slots) if draws[j + mine.start].warped == warped]
                if keep:
                    split.append((case, [slots[k] for k in keep], [forced[k] for k in keep],
                                  warped))
        return [
            CropRequest(
                case_id=case, step=step, stage=stage, patch=patch,  # type: ignore[arg-type]
                slots=tuple(slots), forced=tuple(forced), seed=self.seed, rank=self.rank,
                part=i, parts=len(split), batch=len(mine), offset=mine.start,
                geometry=geometry, warped=warped,
                spatial=tuple(draws[j + mine.start] for j in slots),
            )
            for i, (case, slots, forced, warped) in enumerate(split)
        ]

    def _draw_case(self, step: int, k: int) -> str:
        """Cases are drawn uniformly with replacement, as nnU-Net does."""
        return self.case_ids[int(self._rng(step, k, _CASE_STREAM).integers(len(self.case_ids)))]

    def _rng(self, step: int, slot: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 0, step, slot, stream])


def _within(groups: list[tuple[str, list[int], list[bool]]],
            mine: range) -> list[tuple[str, list[int], list[bool]]]:
    """The groups' crops in the share ``mine``, as local rows (global slot − its start)."""
    out = []
    for case, slots, forced in groups:
        keep = [k for k, j in enumerate(slots) if j in mine]
        if keep:
            out.append((case, [slots[k] - mine.start for k in keep], [forced[k] for k in keep]))
    return out


def crop_rng(request: CropRequest, slot: int) -> np.random.Generator:
    """The generator of the crop in local row ``slot``: seeded by (seed, step, global slot)
    only (the 0 stands where a rank once was, so every earlier stream is unchanged)."""
    return np.random.default_rng(
        [request.seed, 0, request.step, request.offset + slot, _CROP_STREAM]
    )


def plan_origins(
    request: CropRequest,
    shape: Sequence[int],
    locations: dict[tuple[int, ...], np.ndarray],
    annotated: np.ndarray | None = None,
) -> tuple[list[tuple[int, int, int]], list[int]]:
    """Crop origins (of the patch, not the margin) and the class index picked per crop.

    With augmentation (``request.geometry``) the origins are those of the initial box I,
    by nnU-Net's ``get_bbox`` exactly: need_to_pad n = I - F, raised to I - S where the
    case is smaller than I; random origins uniform in [(-n)//2, S + n//2 + n%2 - I];
    forced ones max((-n)//2, voxel - I//2). Without it (unchanged, every existing run):

    nnU-Net's loader rule: with the patch P and the case shape S, a random crop's origin
    is uniform in [-pad//2, S + pad//2 + pad%2 - P] where pad = max(P - S, 0); a forced
    crop picks a class uniformly among those present and centres on one of its stored
    voxels (origin = max(lower bound, voxel - P//2)). A case with no foreground falls
    back to a random crop. With an ignore label, unforced crops centre on annotated voxels.
    ``locations`` maps each class to its (N, 3) voxel coordinates; the picked class is
    reported as its index into ``locations`` (-1 for an unforced crop).
    """
    patch = request.patch
    if request.geometry is None:
        pad = [max(p - s, 0) for p, s in zip(patch, shape)]
        lbs = [-(n // 2) for n in pad]
    else:  # nnU-Net's get_bbox on the initial box (module doc of plan_origins)
        box = request.box
        pad = [i - f if i - f + s >= i else i - s for i, f, s in zip(box, patch, shape)]
        lbs = [(-n) // 2 for n in pad]
        patch = box
    ubs = [s + n // 2 + n % 2 - p for s, n, p in zip(shape, pad, patch)]
    classes = list(locations)
    eligible = [i for i, c in enumerate(classes) if len(locations[c]) > 0]
    origins, picked = [], []
    for slot, forced in zip(request.slots, request.forced):
        rng = crop_rng(request, slot)
        voxels = None
        choice = -1
        if forced and eligible:
            choice = eligible[int(rng.integers(len(eligible)))]
            voxels = locations[classes[choice]]
        elif not forced and annotated is not None and len(annotated):
            voxels = annotated
        if voxels is not None:
            v = voxels[int(rng.integers(len(voxels)))]
            origin = tuple(max(lb, int(c) - p // 2) for lb, c, p in zip(lbs, v, patch))
        else:
            origin = tuple(int(rng.integers(lb, ub + 1)) for lb, ub in zip(lbs, ubs))
        origins.append(origin)
        picked.append(choice)
    return origins, picked
