"""One line for every way a long command can stop that the user can continue from.

`pgps-train` and `pgps-compare run` both run for hours; a bad input, a failed loader
worker, SIGINT/SIGTERM (the trainer checkpoints first), Ctrl-C or a full disk ends them
with one line on stderr that says how to continue, and an exit status, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from pgps_data.errors import PGPSInputError
from pgps_data.loader.watchdog import LoaderWorkerError
from pgps_train.distributed import FollowerStop, RankFailure
from pgps_train.interrupts import Interrupted, WorkerDataError

T = TypeVar("T")


def run_or_explain(prog: str, work: Callable[[], T], *, again: str, fix_then: str,
                   where: str, rank: int = 0) -> tuple[T | None, int]:
    """``(work(), 0)``, or ``(None, status)`` after one line naming the stop and ``again``
    (how to continue); a write error says ``fix it, then {fix_then}``, naming its file or
    else ``where``.

    ``rank`` > 0 (a data-parallel follower): its lines start ``[rank K]``, and it says
    nothing of what rank 0 says for the job (a refused input, a signal's stop)."""
    follower = rank > 0
    tag = f"[rank {rank}] " if follower else ""

    def say(line: str) -> None:
        print(f"{tag}{prog}: {line}", file=sys.stderr)

    try:
        return work(), 0
    except FollowerStop as exc:  # rank 0 refused the run and printed why
        return None, exc.status
    except PGPSInputError as exc:
        if not follower or isinstance(exc, WorkerDataError):  # the same line on rank 0
            say(f"error: {exc}")
        return None, 2
    except (LoaderWorkerError, RankFailure) as exc:
        say(f"error: {exc}; {again}")
        return None, 1
    except Interrupted as exc:
        if not follower:
            say(f"{exc}; {again}")
        return None, exc.exit_code
    except KeyboardInterrupt:
        if not follower:
            say(f"interrupted; {again}")
        return None, 130
    except OSError as exc:  # disk full or a folder gone while writing logs (not checkpoints)
        say(f"error: {exc.filename or where}: {exc.strerror or exc}; fix it, then {fix_then}")
        return None, 2
