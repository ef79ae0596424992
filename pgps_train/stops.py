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
from pgps_train.interrupts import Interrupted

T = TypeVar("T")


def run_or_explain(prog: str, work: Callable[[], T], *, again: str, fix_then: str,
                   where: str) -> tuple[T | None, int]:
    """``(work(), 0)``, or ``(None, status)`` after one line naming the stop and ``again``
    (how to continue); a write error says ``fix it, then {fix_then}``, naming its file or
    else ``where``."""
    try:
        return work(), 0
    except PGPSInputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return None, 2
    except LoaderWorkerError as exc:
        print(f"{prog}: error: {exc}; {again}", file=sys.stderr)
        return None, 1
    except Interrupted as exc:
        print(f"{prog}: {exc}; {again}", file=sys.stderr)
        return None, exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {again}", file=sys.stderr)
        return None, 130
    except OSError as exc:  # disk full or a folder gone while writing logs (not checkpoints)
        print(f"{prog}: error: {exc.filename or where}: {exc.strerror or exc}; fix it, then "
              f"{fix_then}", file=sys.stderr)
        return None, 2
