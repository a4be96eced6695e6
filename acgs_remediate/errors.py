"""One exception family; the CLI alone turns these into messages and exit codes."""

from __future__ import annotations

# Exit codes shared by every command (README "Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1  # a host failed, or a success criterion failed / is not verified
EXIT_USAGE = 2  # bad input or usage; nothing was changed anywhere
EXIT_PARTIAL = 3  # some hosts were unreachable
EXIT_LOCKED = 4  # hygiene: another run holds a host's lock; this run changed nothing


class RemediateError(Exception):
    """Base error: a one-line message, an optional hint, and the exit code it maps to."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(RemediateError):
    """Bad input (options, inventory, policy, patterns): exit 2, nothing changed."""

    exit_code = EXIT_USAGE


class EnvironmentProblem(UsageError):
    """The machine lacks something the command needs (root, dockerd, ...): exit 2."""


class EngineError(RemediateError):
    """A Docker engine could not be reached or answered with an error."""


class LockedError(RemediateError):
    """Another run holds the lock of one of the requested hosts."""

    exit_code = EXIT_USAGE
