"""Where the command-line tools write: progress on stderr, results on stdout; either may close.

Long jobs (convert, train, predict) must not die because a reader of their output went
away (``pgps-convert ... | head``, a log pipe whose reader was killed). Rich's own
broken-pipe handler ends the process with status 1 and no message, and a plain ``print``
raises ``BrokenPipeError``. So:

- progress bars and live status go to :func:`progress_console` (stderr);
- every CLI's ``main`` calls :func:`protect_output` first: from the first write that finds
  stdout (or stderr: ``2>&1 | tee log`` whose tee died) closed on, that stream is sent to
  ``/dev/null`` and the job goes on.
"""

from __future__ import annotations

import errno
import io
import os
import sys
from typing import Any

__all__ = ["progress_console", "protect_output"]


def progress_console() -> Any:
    """A rich Console on stderr for progress bars (never the results' stdout)."""
    from rich.console import Console

    return Console(stderr=True)


class _ClosedSafe(io.TextIOBase):
    """A text stream that forwards to ``inner`` until a write finds the pipe closed."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.closed_pipe = False

    def _gone(self) -> None:
        # Point fd 1 at /dev/null so the interpreter's final flush does not fail either.
        self.closed_pipe = True
        try:
            fd = self.inner.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
        except (OSError, ValueError, io.UnsupportedOperation):
            pass

    def _forward(self, call: Any, *args: Any) -> Any:
        """``call(*args)`` on the inner stream, unless the pipe is (or now turns out) closed."""
        if self.closed_pipe:
            return None
        try:
            return call(*args)
        except OSError as exc:  # BrokenPipeError is the EPIPE OSError
            if exc.errno != errno.EPIPE:
                raise
            self._gone()
            return None

    def write(self, text: str) -> int:
        written = self._forward(self.inner.write, text)
        return len(text) if written is None else written

    def flush(self) -> None:
        self._forward(self.inner.flush)

    def fileno(self) -> int:
        return self.inner.fileno()

    def isatty(self) -> bool:
        return False if self.closed_pipe else self.inner.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", "utf-8")

    def writable(self) -> bool:
        return True


def protect_output() -> None:
    """Make a closed stdout or stderr harmless for the rest of this process (idempotent).

    Rich's consoles look ``sys.stdout`` / ``sys.stderr`` up at each write, so progress bars
    drawn after this call go through the guard too.
    """
    if sys.stdout is not None and not isinstance(sys.stdout, _ClosedSafe):
        sys.stdout = _ClosedSafe(sys.stdout)
    if sys.stderr is not None and not isinstance(sys.stderr, _ClosedSafe):
        sys.stderr = _ClosedSafe(sys.stderr)
