"""``main()``: run the chosen command, and turn what it raised into an exit code and one line on stderr.

The one place errors become exit codes (``event_ingest.exits``): the commands raise, ``exit_for`` maps the
exception's type. A refusal (the request cannot be done as asked, nothing changed) and bad configuration
or an unreachable service exit 2; a failed skip or requeue, or a store error in the middle of a command's
writes (``fails_as``), exits 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys

from ..config import ConfigError
from ..exits import EXIT_CONFIG, EXIT_FAILED
from .errors import CliError
from .parsing import build_parser


def exit_for(exc: Exception, fails_as: str | None) -> tuple[int, str] | None:
    """The exit code and the one stderr line for what a command raised; None: not an error of ours."""
    if isinstance(exc, CliError):
        return exc.code, str(exc)
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG, f"event-ingest: {exc}"
    # Only when something was raised: a command that needs no core does not import it.
    from ..core import RedisUnavailable, StoreError
    from ..core.quarantine import QuarantineRefused, RequeueFailed
    from ..core.replay import ReplayRefused
    from ..core.skip import SkipFailed, SkipRefused

    if isinstance(exc, SkipRefused | ReplayRefused | QuarantineRefused):
        return EXIT_CONFIG, f"event-ingest: refused: {exc}"
    if isinstance(exc, SkipFailed | RequeueFailed) or (isinstance(exc, StoreError) and fails_as):
        return EXIT_FAILED, f"event-ingest: {fails_as} failed: {exc}"
    if isinstance(exc, StoreError | RedisUnavailable):
        return EXIT_CONFIG, f"event-ingest: {exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser(argv)
    except CliError as exc:  # a tooling command without the local stack installed
        print(str(exc), file=sys.stderr)
        return exc.code
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Third-party request logs would drown the ingest's own lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        code: int = args.func(args)
    except Exception as exc:
        mapped = exit_for(exc, getattr(args, "fails_as", None))
        if mapped is None:
            raise
        code, line = mapped
        print(line, file=sys.stderr)
    return code
