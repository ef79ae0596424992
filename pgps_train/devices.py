"""The devices a command runs on: ``--device``'s choices and the default.

The names live here, apart from the trainer, because the command-line parsers need them
before torch is imported (``--help`` and a usage error stay fast). :func:`choose_device`
imports torch only to ask whether CUDA is there.
"""

from __future__ import annotations

import argparse
import re

from pgps_data.errors import PGPSInputError

DEVICES = ("cuda", "cpu")  # the kinds; "cuda:K" names GPU K (parallel folds, one per GPU)
DEVICE_METAVAR = "cuda|cuda:K|cpu"


def device_arg(name: str) -> str:
    """argparse ``type`` of every ``--device``: cpu, cuda, or cuda:K (K a GPU index)."""
    if name in DEVICES or re.fullmatch(r"cuda:\d+", name):
        return name
    raise argparse.ArgumentTypeError(f"unknown device {name!r} (use cuda, cuda:K or cpu)")


def choose_device(name: str | None) -> str:
    """``name``, or when None cuda if it is available, else cpu.

    ``--device cuda`` (or ``cuda:K``) on a machine without CUDA, or ``cuda:K`` beyond its
    GPUs, is one line, before any work starts (torch would otherwise fail deep inside the
    first transfer).
    """
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device_arg(name)
    except argparse.ArgumentTypeError:
        raise PGPSInputError(f"--device {name}: unknown device (use cuda, cuda:K or cpu)") from None
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PGPSInputError(f"--device {name}: no CUDA device is available (use --device cpu)")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise PGPSInputError(f"--device {name}: this machine has {count} CUDA device(s) "
                             f"(cuda:0 to cuda:{count - 1})")
    return name
