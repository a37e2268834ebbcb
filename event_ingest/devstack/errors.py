"""How `event-ingest dev` fails: one line for stderr, and an exit code."""

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


class DevError(Exception):
    """One line for stderr, and an exit code."""

    def __init__(self, message: str, code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.code = code


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived while starting up."""
