"""The choices of ``pgps-train --augment`` and ``--augment-geometry`` (torch-free, so the
command line parses without importing torch)."""

from pgps_data.schedule.augment_geometry import GEOMETRIES  # stage | final: the loader's rule

AUGMENTS = ("nnunet", "none")  # nnU-Net 2.8.1's default training transforms, or none

__all__ = ["AUGMENTS", "GEOMETRIES"]
