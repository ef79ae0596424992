"""The devices a command runs on: ``--device``'s choices and the default.

The names live here, apart from the trainer, because the command-line parsers need them
before torch is imported (``--help`` and a usage error stay fast). :func:`choose_device`
imports torch only to ask whether CUDA is there.
"""

from __future__ import annotations

from pgps_data.errors import PGPSInputError

DEVICES = ("cuda", "cpu")


def choose_device(name: str | None) -> str:
    """``name``, or when None cuda if it is available, else cpu.

    ``--device cuda`` on a machine without CUDA is one line, before any work starts
    (torch would otherwise fail deep inside the first transfer).
    """
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in DEVICES:
        raise PGPSInputError(f"--device {name}: unknown device (use one of {', '.join(DEVICES)})")
    if name == "cuda" and not torch.cuda.is_available():
        raise PGPSInputError("--device cuda: no CUDA device is available (use --device cpu)")
    return name
