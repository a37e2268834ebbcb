"""The command's own error: one line for stderr, and an exit code (``main`` prints it and exits)."""

from __future__ import annotations

from ..exits import EXIT_CONFIG


class CliError(Exception):
    """One line for stderr, and an exit code."""

    def __init__(self, message: str, code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.code = code
