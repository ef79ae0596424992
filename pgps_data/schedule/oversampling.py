"""Foreground oversampling rules of the schedule (pure functions, no I/O).

nnU-Net's slot rule decides which crops of a batch are centred on foreground; the
journal's performance mode instead takes only B cases per batch and groups the crops by
case. :mod:`pgps_data.loader.sampling` applies them; :mod:`pgps_data.schedule.curriculum` re-exports them.
"""

from __future__ import annotations

import operator

from pgps_data.errors import PGPSInputError

FOREGROUND_P = 0.5  # foreground oversampling share, fixed by the published rules


def forced_slots(b: int, p: float = FOREGROUND_P) -> list[bool]:
    """nnU-Net's slot rule: slot j of a batch of b is foreground-forced iff
    ``j >= round(b * (1 - p))`` (Python's round, ties to even, as nnU-Net)."""
    b, p = check_positive(b, "batch"), check_share(p)
    first_forced = round(b * (1 - p))
    return [j >= first_forced for j in range(b)]


def case_grouping(b: int, B: int, p: float = FOREGROUND_P) -> list[tuple[bool, int]]:
    """Journal performance mode: b crops from only B cases, as ``(forced, n_crops)`` per case.

    The first ``round(B * (1 - p))`` cases give random crops, the others foreground-forced
    crops. The b crops are split as evenly as possible; the extra ``b % B`` crops fill cases
    from the last one backwards, so forced cases take them first (B=2, b=5: one random
    case with 2 crops, one forced case with 3).
    """
    b, B, p = check_positive(b, "batch"), check_positive(B, "cases per batch"), check_share(p)
    n_random = round(B * (1 - p))
    base, extra = divmod(b, B)
    return [(c >= n_random, base + (1 if c >= B - extra else 0)) for c in range(B)]


def check_positive(value: int, name: str, minimum: int = 1) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        raise PGPSInputError(f"{name} must be an integer, got {value!r}") from None
    if v < minimum:
        raise PGPSInputError(f"{name} must be at least {minimum}, got {v}")
    return v


def check_share(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise PGPSInputError(f"foreground share p must be in [0, 1], got {p}")
    return p
