"""Errors that stop a process on purpose, each with its exit code and a message that says what to do."""
from __future__ import annotations

EXIT_FATAL = 1
EXIT_CONFIG = 2
EXIT_POSITION_LOST = 3


class FatalError(Exception):
    """Stops the process with a clear message and a non-zero exit code; nothing is skipped."""

    exit_code = EXIT_FATAL


class PositionLostError(FatalError):
    """The saved position is no longer in the source's history (oplog rolled over, resume token expired)."""

    exit_code = EXIT_POSITION_LOST


class ConfigurationError(FatalError):
    exit_code = EXIT_CONFIG
