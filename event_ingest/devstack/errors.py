"""How `event-ingest dev` fails: one line for stderr, and an exit code (``event_ingest.exits``)."""

from ..exits import EXIT_CONFIG


class DevError(Exception):
    """One line for stderr, and an exit code."""

    def __init__(self, message: str, code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.code = code
