"""The PGPS schedule: which patch size and batch size each training step uses.

Everything here is a pure function of its inputs (no torch, no I/O), so the loader, the
trainer and the ``pgps-schedule`` CLI all see the same schedule, and a checkpoint can store
it as plain JSON and refuse a loader state that was made under a different one.

Two published rule sets are implemented exactly as written in DESIGN.md ("The schedule"):

* ``journal-2025`` (default): start at one lattice step per axis; each stage grows the axis
  whose next size (``size + step``, before clipping) is smallest, ties to the lowest axis.
  Performance batch ``int(B * V_final / V)``; the loader groups crops by case.
* ``miccai-2024``: start at ``(2*step_z, step_y, step_x)``; a run-wide counter starting at 1
  picks the axis (``counter % 3``: Y, X, Z, Y, ...) and advances after every try.
  Performance ("PGPS+") batches walk back from the last stage in floating point, then are
  raised to at least B; the loader uses nnU-Net's slot rule.

Modes: ``constant`` (P and B throughout, the baseline), ``efficiency`` (growing patch,
batch B), ``performance`` (growing patch, larger batches early), ``random`` (RPSS: every
step draws one of the rule set's S patches, batch B). Axis order is (Z, Y, X); epoch and
iteration ends are exclusive.

    cur = Curriculum.from_pools(patch=(80, 192, 160), pools=(4, 5, 5), epochs=1000,
                                iterations_per_epoch=250, batch=2, mode="performance")
    cur.stage_at(step).patch, cur.stage_at(step).batch
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pgps_data.errors import PGPSInputError
from pgps_data.schedule.oversampling import FOREGROUND_P, case_grouping, forced_slots  # noqa: F401
from pgps_data.schedule.oversampling import check_positive as _positive

Patch = tuple[int, int, int]
MODES = ("constant", "efficiency", "performance", "random")
RULES = ("journal-2025", "miccai-2024")
_DICT_VERSION = 1


@dataclass(frozen=True)
class Stage:
    """One stretch of training at a fixed patch and batch size (ends exclusive)."""

    index: int
    patch: Patch
    batch: int
    start_epoch: int
    end_epoch: int
    start_iter: int
    end_iter: int

    @property
    def voxels(self) -> int:
        """Voxels in one crop of this stage."""
        return math.prod(self.patch)

    @property
    def iterations(self) -> int:
        return self.end_iter - self.start_iter


class Curriculum:
    """A whole training schedule: stages, and the stage of any step.

    Build it with :meth:`from_pools` (nnU-Net-style pooling counts, step = 2**pools) or
    :meth:`from_steps` (lattice step per axis). ``min_size`` is the network's minimum per
    axis; it only raises the rule set's minimum (to the next lattice size, never above P).
    ``max_voxels_per_step`` caps the performance batch so ``batch * V <= cap``, never below
    B; it is our addition, off by default, and does nothing in other modes. (The published
    performance batches never exceed ``B * V_final`` voxels, so only a cap below that binds,
    and then only on the early, large-batch stages.)
    """

    def __init__(
        self,
        patch: Sequence[int],
        steps: Sequence[int],
        *,
        epochs: int,
        iterations_per_epoch: int,
        batch: int,
        mode: str = "performance",
        rules: str = "journal-2025",
        min_size: Sequence[int] | None = None,
        max_voxels_per_step: int | None = None,
        seed: int = 0,
    ):
        self.final_patch: Patch = _triple(patch, "patch", minimum=1)
        self.steps: Patch = _triple(steps, "lattice steps", minimum=1)
        self.min_size: Patch | None = (
            None if min_size is None else _triple(min_size, "network minimum", minimum=1)
        )
        self.epochs = _positive(epochs, "epochs")
        self.iterations_per_epoch = _positive(iterations_per_epoch, "iterations per epoch")
        self.final_batch = _positive(batch, "batch")
        if mode not in MODES:
            raise PGPSInputError(f"unknown mode {mode!r} (use one of {', '.join(MODES)})")
        if rules not in RULES:
            raise PGPSInputError(f"unknown rules {rules!r} (use one of {', '.join(RULES)})")
        self.mode: str = mode
        self.rules: str = rules
        self.max_voxels_per_step = (
            None
            if max_voxels_per_step is None
            else _positive(max_voxels_per_step, "max voxels per step")
        )
        self.seed = operator.index(seed)
        self.minimum: Patch = minimum_patch(self.final_patch, self.steps, rules, self.min_size)
        self._rule_patches = grow_patches(self.final_patch, self.steps, self.minimum, rules)
        expected = stage_count(self.final_patch, self.steps, self.minimum)
        if len(self._rule_patches) != expected:  # the written rules guarantee equality
            raise RuntimeError(f"{rules} grew {len(self._rule_patches)} stages, not S={expected}")
        self.stages: list[Stage] = self._build_stages()
        self._ends = [s.end_iter for s in self.stages]

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_pools(cls, patch: Sequence[int], pools: Sequence[int], **kwargs: Any) -> Curriculum:
        """Curriculum for a UNet with ``pools[a]`` poolings on axis a (step = 2**pools)."""
        pools_t = _triple(pools, "pools", minimum=0)
        return cls(patch, tuple(2**p for p in pools_t), **kwargs)

    @classmethod
    def from_steps(cls, patch: Sequence[int], steps: Sequence[int], **kwargs: Any) -> Curriculum:
        """Curriculum from the lattice step per axis directly."""
        return cls(patch, steps, **kwargs)

    # ---- queries ------------------------------------------------------------------------
    @property
    def total_iterations(self) -> int:
        return self.epochs * self.iterations_per_epoch

    @property
    def patch_sizes(self) -> list[Patch]:
        """Patches this run trains with, in stage order: the rule set's S patches in
        efficiency, performance and random mode; just ``[P]`` in constant mode."""
        if self.mode == "constant":
            return [self.final_patch]
        return list(self._rule_patches)

    @property
    def oversampling(self) -> Literal["slot", "case_grouping"]:
        """How the loader forces foreground: the journal's case grouping in journal-2025
        performance mode, nnU-Net's slot rule everywhere else (see :func:`forced_slots`)."""
        if self.mode == "performance" and self.rules == "journal-2025":
            return "case_grouping"
        return "slot"

    def stage_at(self, step: int) -> Stage:
        """The stage that training step ``step`` (0-based, global) belongs to.

        In random mode this is the whole-run stage of the patch drawn for this step, a pure
        function of ``(seed, step)``: same seed, same patch, on any worker.
        """
        step = operator.index(step)
        if not 0 <= step < self.total_iterations:
            raise PGPSInputError(
                f"step {step} is outside this curriculum's {self.total_iterations} iterations "
                "(check epochs and iterations per epoch)"
            )
        if self.mode == "random":
            return self.stages[random_patch_index(self.seed, step, len(self.stages))]
        return self.stages[bisect.bisect_right(self._ends, step)]

    def stage_share(self, stage: Stage) -> float:
        """This stage's compute (iterations x batch x voxels) relative to a constant run.

        In random mode each patch is drawn with probability 1/S, so its expected share is
        reported.
        """
        iterations = (
            self.total_iterations / len(self.stages) if self.mode == "random" else stage.iterations
        )
        constant = self.total_iterations * self.final_batch * math.prod(self.final_patch)
        return iterations * stage.batch * stage.voxels / constant

    def compute_share(self) -> float:
        """Total compute relative to constant mode (1.0 for constant)."""
        return sum(self.stage_share(s) for s in self.stages)

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (inputs, stages, fingerprint) for checkpoints."""
        return {**self._payload(), "fingerprint": self.fingerprint()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Curriculum:
        """Rebuild from :meth:`to_dict`; refuses a dict whose stages or fingerprint differ
        from what these rules compute (a checkpoint from other rules or another version)."""
        if d.get("version") != _DICT_VERSION:
            raise PGPSInputError(
                f"curriculum format version {d.get('version')!r} is not {_DICT_VERSION} "
                "(rebuild the schedule with this version of pgps)"
            )
        keys = "epochs iterations_per_epoch batch mode rules min_size max_voxels_per_step seed"
        try:
            cur = cls(d["patch"], d["steps"], **{k: d[k] for k in keys.split()})
        except KeyError as e:
            raise PGPSInputError(
                f"curriculum dict lacks {e.args[0]!r} (store cur.to_dict())"
            ) from None
        expected = cur.to_dict()
        if any(k in d and d[k] != expected[k] for k in ("stages", "fingerprint")):
            raise PGPSInputError(
                f"stored curriculum {d.get('fingerprint')} differs from {cur.fingerprint()} that "
                "these rules compute (it was made by another version; start a new run)"
            )
        return cur

    def fingerprint(self) -> str:
        """Stable 16-hex-digit digest of the inputs and the resulting stages."""
        blob = json.dumps(self._payload(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Curriculum) and self._payload() == other._payload()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Curriculum(mode={self.mode!r}, rules={self.rules!r}, patch={self.final_patch}, "
            f"steps={self.steps}, stages={len(self.stages)}, fingerprint={self.fingerprint()})"
        )

    # ---- internals ----------------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        return {
            "version": _DICT_VERSION,
            "patch": list(self.final_patch),
            "steps": list(self.steps),
            "min_size": None if self.min_size is None else list(self.min_size),
            "epochs": self.epochs,
            "iterations_per_epoch": self.iterations_per_epoch,
            "batch": self.final_batch,
            "mode": self.mode,
            "rules": self.rules,
            "max_voxels_per_step": self.max_voxels_per_step,
            "seed": self.seed,
            "stages": [_stage_json(s) for s in self.stages],
        }

    def _build_stages(self) -> list[Stage]:
        E, ipe, B = self.epochs, self.iterations_per_epoch, self.final_batch
        if self.mode == "constant":
            return [Stage(0, self.final_patch, B, 0, E, 0, E * ipe)]
        patches = self._rule_patches
        if self.mode == "random":  # every patch may be drawn at any step: each spans the run
            return [Stage(k, p, B, 0, E, 0, E * ipe) for k, p in enumerate(patches)]
        S = len(patches)
        if E < S:
            raise PGPSInputError(
                f"{E} epochs cannot hold the {S} stages of {self.rules} {self.mode} mode "
                f"(use at least {S} epochs, or a larger minimum patch)"
            )
        if self.mode == "performance":
            batches = performance_batches(patches, B, self.rules)
            if self.max_voxels_per_step is not None:
                batches = _cap_batches(patches, batches, B, self.max_voxels_per_step)
        else:
            batches = [B] * S
        per = E // S  # int(E / S) epochs each; the remainder goes to the last stage
        stages = []
        for k, (p, b) in enumerate(zip(patches, batches)):
            e0, e1 = k * per, (E if k == S - 1 else (k + 1) * per)
            stages.append(Stage(k, p, b, e0, e1, e0 * ipe, e1 * ipe))
        return stages


# ---- the published rules as pure functions ----------------------------------------------
def minimum_patch(
    final: Sequence[int], steps: Sequence[int], rules: str, network_min: Sequence[int] | None
) -> Patch:
    """The first stage's patch m: the rule set's minimum, raised where the network's
    minimum is larger to the next lattice size (multiple of the step), never above P."""
    if rules == "journal-2025":
        m = list(steps)
    elif rules == "miccai-2024":
        m = [2 * steps[0], steps[1], steps[2]]
    else:
        raise PGPSInputError(f"unknown rules {rules!r} (use one of {', '.join(RULES)})")
    if network_min is not None:
        for a in range(3):
            if network_min[a] > m[a]:
                m[a] = -(-network_min[a] // steps[a]) * steps[a]
    return (min(m[0], final[0]), min(m[1], final[1]), min(m[2], final[2]))


def stage_count(final: Sequence[int], steps: Sequence[int], minimum: Sequence[int]) -> int:
    """S = sum over axes of ceil((P_a - m_a) / step_a) + 1."""
    return sum(-(-(final[a] - minimum[a]) // steps[a]) for a in range(3)) + 1


def grow_patches(
    final: Sequence[int], steps: Sequence[int], minimum: Sequence[int], rules: str
) -> list[Patch]:
    """The rule set's S patches from ``minimum`` to ``final``, one axis grown per stage."""
    size = list(minimum)
    patches: list[Patch] = [(size[0], size[1], size[2])]
    counter = 1  # miccai-2024: one counter for the whole run, starting at 1
    while any(size[a] < final[a] for a in range(3)):
        if rules == "journal-2025":
            below = [a for a in range(3) if size[a] < final[a]]
            axis = min(below, key=lambda a: (size[a] + steps[a], a))  # unclipped; ties: lowest
        else:
            axis = counter % 3
            counter += 1
            if size[axis] >= final[axis]:  # a try on an axis at P changes nothing
                continue
        size[axis] = min(size[axis] + steps[axis], final[axis])
        patches.append((size[0], size[1], size[2]))
    return patches


def performance_batches(patches: Sequence[Sequence[int]], batch: int, rules: str) -> list[int]:
    """Performance-mode batch per stage (the last stage of ``patches`` is the final patch).

    journal-2025: ``int(B * V_final / V)`` (exact integer floor). miccai-2024: the last stage
    gets B; walking back, ``int(V[k+1] / V[k] * batch[k+1])`` in floating point as the
    published code does; then every batch is raised to at least B.
    """
    vols = [math.prod(p) for p in patches]
    if rules == "journal-2025":
        return [batch * vols[-1] // v for v in vols]
    out = [batch] * len(vols)
    for k in range(len(vols) - 2, -1, -1):
        out[k] = int(vols[k + 1] / vols[k] * out[k + 1])
    return [max(b, batch) for b in out]


def random_patch_index(seed: int, step: int, n: int) -> int:
    """Random mode's draw: an index in [0, n), a pure function of (seed, step)."""
    digest = hashlib.blake2b(f"pgps-rpss:{seed}:{step}".encode(), digest_size=16).digest()
    return int.from_bytes(digest, "big") % n


# ---- helpers ----------------------------------------------------------------------------
def _cap_batches(patches: Sequence[Patch], batches: list[int], B: int, cap: int) -> list[int]:
    """Our memory cap: ``batch * V <= cap`` where possible, never below B (the final batch)."""
    return [max(B, min(b, cap // math.prod(p))) for p, b in zip(patches, batches)]


def _stage_json(s: Stage) -> dict[str, Any]:
    d = asdict(s)
    d["patch"] = list(s.patch)
    return d


def _triple(values: Sequence[int] | None, name: str, *, minimum: int) -> Patch:
    try:
        t = tuple(operator.index(v) for v in values)  # type: ignore[union-attr]
    except TypeError:
        t = ()
    if len(t) != 3:
        raise PGPSInputError(f"{name} must be 3 integers (Z Y X), got {values!r}")
    if any(v < minimum for v in t):
        what = "positive" if minimum == 1 else f"at least {minimum}"
        raise PGPSInputError(f"{name} must be {what} on every axis, got {t}")
    return (t[0], t[1], t[2])
