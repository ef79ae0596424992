"""The geometry of nnU-Net's spatial augmentation, decided before anything is read.

nnU-Net 2.8.1 (``configure_rotation_dummyDA_mirroring_and_inital_patch_size`` and
``compute_initial_patch_size.get_patch_size``) derives three things from the patch it
trains with: whether to augment a 3D patch as a stack of 2D slices ("dummy 2D": when
``max(patch) / patch[0] > 3``), the rotation range (+-180 degrees in dummy 2D, +-30
otherwise), and the enlarged box its loader reads (the *initial* patch) so that a rotated
or scaled sample still has data around the final patch. batchgeneratorsv2 0.3.6's
``SpatialTransform`` (as nnU-Net configures it) then rotates with probability 0.2 and
scales with probability 0.2, independently; only those ~36 % of the samples are
resampled, the others are a plain centre crop of the box.

This module is that geometry and that law, as pure functions: :func:`geometry_of` (per
patch), :func:`draw_spatial` (one sample's spatial parameters from a seeded generator)
and :class:`AugmentSpec` (what the loader needs to know; part of its state identity). The
loader draws the parameters with each crop request, so it reads the whole box only for the
samples that are warped. No torch here: loader workers import this module.

Axes are (Z, Y, X) = nnU-Net's (0, 1, 2). Angles are radians.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ANISO_THRESHOLD = 3  # nnunetv2.configuration: dummy 2D when max(patch) / patch[0] > this
OUTSIDE = 255  # uint8 label the loader writes outside the case (nnU-Net pads its seg with -1)
GEOMETRIES = ("stage", "final")

# nnU-Net writes its ranges as degrees / 360 * 2 * pi; the same expressions give the same
# floats, so the initial patch below matches its to the last bit.
_ROT_2D = (-180.0 / 360 * 2.0 * np.pi, 180.0 / 360 * 2.0 * np.pi)
_ROT_3D = (-30.0 / 360 * 2.0 * np.pi, 30.0 / 360 * 2.0 * np.pi)
_ROT_CLIP = 90 / 360 * 2.0 * np.pi
_INITIAL_SCALE_RANGE = (0.85, 1.25)  # what nnU-Net passes to get_patch_size (not 0.7-1.4)


@dataclass(frozen=True)
class Geometry:
    """nnU-Net's augmentation geometry for one (final, output) patch."""

    patch: tuple[int, int, int]  # the final (output) patch of the stage
    dummy_2d: bool  # max(patch) / patch[0] > ANISO_THRESHOLD
    rotation: tuple[float, float]  # radians: (-pi, pi) in dummy 2D, (-pi/6, pi/6) in 3D
    initial: tuple[int, int, int]  # the enlarged box nnU-Net's loader reads

    @property
    def centre(self) -> tuple[int, int, int]:
        """Where the patch starts inside the box when it is not warped: floor(I/2) - F//2
        per axis (bgv2's centre crop; the loader reads unwarped slots there)."""
        return tuple(i // 2 - f // 2 for i, f in zip(self.initial, self.patch))  # type: ignore


def geometry_of(patch: Sequence[int], dummy_2d: bool | None = None) -> Geometry:
    """nnU-Net's dummy-2D switch, rotation range and initial patch for a 3D ``patch``.

    The initial patch is ``get_patch_size``: the patch's extent vector rotated about axis
    0, 1 and 2 in turn by the largest |angle| of the range (clipped to 90 degrees), the
    element-wise max of the absolute results and the patch, divided by 0.85 and truncated;
    in dummy 2D axis 0 is then reset to the patch's. ``dummy_2d`` given overrides nnU-Net's
    switch (``--augment-geometry final``: the final patch's decision, and the rotation
    range that follows from it, for every stage).
    """
    p = tuple(int(v) for v in patch)
    if len(p) != 3 or min(p) < 1:
        raise ValueError(f"a 3D patch of positive sizes is needed, not {tuple(patch)}")
    if dummy_2d is None:
        dummy_2d = bool(max(p) / p[0] > ANISO_THRESHOLD)
    rotation = _ROT_2D if dummy_2d else _ROT_3D
    angle = min(_ROT_CLIP, float(max(np.abs(rotation))))
    coords = np.array(p)
    final = np.copy(coords)
    for axis in range(3):
        angles = [0.0, 0.0, 0.0]
        angles[axis] = angle
        final = np.max(np.vstack((np.abs(_rotate_coords(coords, *angles)), final)), 0)
    final = final / min(_INITIAL_SCALE_RANGE)
    initial = [int(v) for v in final.astype(int)]
    if dummy_2d:
        initial[0] = p[0]
    return Geometry(patch=p, dummy_2d=dummy_2d, rotation=(float(rotation[0]), float(rotation[1])),
                    initial=(initial[0], initial[1], initial[2]))


def _rotate_coords(coords: np.ndarray, ax: float, ay: float, az: float) -> np.ndarray:
    """batchgenerators' rotate_coords_3d for one point: coords @ (I Rx Ry Rz), same products."""
    m = np.identity(3)
    m = np.dot(m, np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]]))
    m = np.dot(m, np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]]))
    m = np.dot(m, np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]]))
    return np.dot(coords.reshape(3, -1).transpose(), m).transpose().reshape(coords.shape)


@dataclass(frozen=True)
class SpatialDraw:
    """One sample's spatial augmentation parameters (what decides the loader's read)."""

    rotate: bool
    scale: bool
    # Radians about axes (0, 1, 2) as bgv2 draws them; 0 when not rotated. Dummy 2D: bgv2
    # sees a 2D sample, draws two angles and uses the last; it is stored at index 0
    # (rotation in the plane of axes 1, 2) and the others are 0.
    angles: tuple[float, float, float]
    # One factor U(scaling) for all axes (p_synchronize_scaling_across_axes = 1); 1 when not
    # scaled. Dummy 2D: axis 0's factor is 1.
    scales: tuple[float, float, float]

    @property
    def warped(self) -> bool:
        """Resampled (rotated or scaled): the loader reads the whole initial box."""
        return self.rotate or self.scale


PLAIN = SpatialDraw(False, False, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@dataclass(frozen=True)
class AugmentSpec:
    """What the loader needs to know of the spatial augmentation (part of its identity).

    ``geometry``: "stage" recomputes :func:`geometry_of` at every stage's patch (what the
    PGPS authors' trainers do, by rebuilding nnU-Net's loader per stage); "final" freezes
    the dummy-2D decision and the rotation range at the curriculum's final patch (the crops
    are still the stage's patch, read from the box that range needs around it).
    The probabilities and the scaling range are nnU-Net's defaults.
    """

    geometry: str = "stage"
    p_rotation: float = 0.2
    p_scaling: float = 0.2
    scaling: tuple[float, float] = (0.7, 1.4)

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, not {self.geometry!r}")
        for name in ("p_rotation", "p_scaling"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], not {getattr(self, name)}")
        lo, hi = (float(v) for v in self.scaling)
        if not 0 < lo <= hi:
            raise ValueError(f"scaling must be (low, high) with 0 < low <= high, not {self.scaling}")
        object.__setattr__(self, "scaling", (lo, hi))
        object.__setattr__(self, "p_rotation", float(self.p_rotation))
        object.__setattr__(self, "p_scaling", float(self.p_scaling))

    def geometry_for(self, patch: Sequence[int], final_patch: Sequence[int]) -> Geometry:
        """The Geometry a stage with ``patch`` uses under this spec.

        "final" takes the final patch's dummy-2D decision and rotation range; the enlarged
        box is still the one that range needs around this stage's patch (the final patch's
        box would read up to 30x the voxels an early stage needs, and in dummy 2D its axis 0
        would not be the stage's).
        """
        if self.geometry == "stage":
            return geometry_of(patch)
        return geometry_of(patch, dummy_2d=geometry_of(final_patch).dummy_2d)

    @property
    def p_warp(self) -> float:
        """The probability that a sample is resampled: 1 - (1 - p_rot)(1 - p_scale)."""
        return 1.0 - (1.0 - self.p_rotation) * (1.0 - self.p_scaling)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scaling"] = list(self.scaling)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AugmentSpec:
        return cls(geometry=str(d["geometry"]), p_rotation=float(d["p_rotation"]),
                   p_scaling=float(d["p_scaling"]), scaling=tuple(d["scaling"]))  # type: ignore[arg-type]


def draw_spatial(rng: np.random.Generator, geometry: Geometry,
                 spec: AugmentSpec | None = None) -> SpatialDraw:
    """One sample's spatial parameters, by bgv2 0.3.6 ``SpatialTransform.get_parameters``'
    law as nnU-Net configures it (``spec`` None: nnU-Net's defaults).

    Draw order (fixed, documented; bgv2's own global-RNG order): u_rotate, u_scale, then
    the angles if rotated (one U(rotation) per axis bgv2 sees: 3, or 2 in dummy 2D), then
    the scale factor if scaled. bgv2's elastic and synchronise draws are constants here
    (p_elastic_deform 0; p_synchronize_scaling_across_axes 1) and are not drawn.
    """
    spec = spec or AugmentSpec()
    rotate = bool(rng.random() < spec.p_rotation)
    scale = bool(rng.random() < spec.p_scaling)
    angles = (0.0, 0.0, 0.0)
    scales = (1.0, 1.0, 1.0)
    if rotate:
        lo, hi = geometry.rotation
        if geometry.dummy_2d:
            drawn = rng.uniform(lo, hi, size=2)
            angles = (float(drawn[-1]), 0.0, 0.0)
        else:
            drawn = rng.uniform(lo, hi, size=3)
            angles = (float(drawn[0]), float(drawn[1]), float(drawn[2]))
    if scale:
        f = float(rng.uniform(*spec.scaling)) if spec.scaling[0] < spec.scaling[1] else spec.scaling[0]
        scales = (1.0, f, f) if geometry.dummy_2d else (f, f, f)
    return SpatialDraw(rotate=rotate, scale=scale, angles=angles, scales=scales)


__all__ = ["ANISO_THRESHOLD", "OUTSIDE", "Geometry", "geometry_of", "SpatialDraw", "PLAIN",
           "draw_spatial", "AugmentSpec"]
