"""Errors a user can cause.

Every problem that comes from the user's input (a file, a flag, a store) is raised as
:class:`PGPSInputError` with one line that names the file, the problem and what to do, so
command-line tools can print it without a traceback.
"""

from __future__ import annotations


class PGPSInputError(Exception):
    """One-line, user-facing error: ``<file>: <problem> (<what to do>)``."""

    def __init__(self, message: str, *, path: object | None = None):
        message = " ".join(str(message).split())  # always one line
        if path is not None and not message.startswith(str(path)):
            message = f"{path}: {message}"
        super().__init__(message)
        self.path = None if path is None else str(path)


def read_json(path: object, missing_hint: str) -> object:
    """The JSON document at ``path``; a missing or invalid file is one PGPSInputError line.

    ``missing_hint`` says what the file should have been, e.g. "an MSD or nnU-Net raw
    dataset needs one".
    """
    import json
    from pathlib import Path

    path = Path(str(path))
    if not path.is_file():
        raise PGPSInputError(f"{path}: missing ({missing_hint})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PGPSInputError(f"{path}: not valid JSON ({exc})") from exc
