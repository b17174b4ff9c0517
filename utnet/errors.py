"""Errors a user can act on: the CLI prints them as one line each and exits non-zero."""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (a file, a path, a flag): one line, no traceback.

    The message should name the file or the config key at fault.
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(UserError):
    """An invalid experiment config: one `<dotted.path>: <message> (got <value>)` line per problem."""

    def __init__(self, lines: list[str]):
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))
