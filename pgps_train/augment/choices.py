"""The choices of ``pgps-train --augment`` and ``--augment-geometry`` (torch-free, so the
command line parses without importing torch)."""

AUGMENTS = ("nnunet", "none")  # nnU-Net 2.8.1's default training transforms, or none
GEOMETRIES = ("stage", "final")  # rotation range, dummy 2D and read box: per stage, or frozen
MIRROR_AXES = (0, 1, 2)
